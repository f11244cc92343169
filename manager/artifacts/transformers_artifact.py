"""Hugging Face transformers folders, served as text embedders or text classifiers by a
runner.

As an embedder, the runner pools the base model's last hidden state (mean pooling, or the
CLS-token or max pooling a sentence-transformers folder's Pooling module names) and
normalises it for sentence-transformers folders that say so. A sentence-transformers
pipeline the runner would not reproduce (another module, another pooling) is refused here by
the runner's own check, not first when Triton loads the version. A folder must hold its
tokenizer: without one the tokenizer the runner would fall back to maps every word to
``[UNK]``.

A folder whose ``architectures`` name a sequence-classification head
(``BertForSequenceClassification``) is served as a text classifier: its logits (``LOGITS``)
and, for a single-label classifier, the ``id2label`` name of the highest logit (``LABEL``);
a multi-label or regression head serves its logits only. Asked for (``as_embedder``), it is
served as an embedder of its base model instead. A folder with another task head (token
classification, question answering, multiple choice) is refused unless the user asks for
its base model's embeddings; one with a language-model head (masked or causal LM) is served
as an embedder with a notice that the head is not used.
"""

from __future__ import annotations

import json
from pathlib import Path

from manager.artifacts.base import Artifact, tree_size
from manager.errors import ArtifactError
from manager.modelconfig import TensorSpec

# One of these holds the vocabulary (tokenizer_config.json alone does not).
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
# The head served as a text classifier.
CLASSIFIER_HEAD = "ForSequenceClassification"
# Heads whose trained outputs the user wants, and which an embedder would drop.
TASK_HEADS = (
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMultipleChoice",
)
# Pretraining heads: their base model is what people embed with.
LM_HEADS = (
    "ForMaskedLM",
    "ForPreTraining",
    "ForCausalLM",
    "LMHeadModel",
    "ForConditionalGeneration",
    "ForNextSentencePrediction",
)

_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def inspect_transformers(path: Path, *, as_embedder: bool = False) -> Artifact:
    """The folder ``path`` as a text classifier when its head is a sequence classifier (and
    ``as_embedder`` is false), else as a text embedder (``task_head`` names a head that the
    embedder drops, for the publisher to refuse unless the user asked for that)."""
    if not path.is_dir():
        raise ArtifactError(f"transformers artifact {path} must be a folder")
    cfg_path = path / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} has no config.json") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{cfg_path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ArtifactError(f"{cfg_path} has no model_type: not a transformers model folder")
    if not any((path / w).is_file() for w in _WEIGHTS):
        raise ArtifactError(f"{path} holds no weights (expected one of: {', '.join(_WEIGHTS)})")
    if not any((path / t).is_file() for t in TOKENIZER_FILES):
        raise ArtifactError(
            f"{path} has no tokenizer (none of: {', '.join(TOKENIZER_FILES)}); without one "
            "every word would be [UNK] and the embeddings meaningless. Save it beside the "
            "model with tokenizer.save_pretrained(folder)"
        )
    _check_runner_reproduces(path)
    modules = path / "modules.json"
    task_head, notices = _heads(cfg, sentence_transformers=modules.is_file())
    if task_head.endswith(CLASSIFIER_HEAD) and not as_embedder:
        return _classifier(path, cfg, task_head)
    hidden = cfg.get("hidden_size") or cfg.get("d_model") or cfg.get("dim")
    if not isinstance(hidden, int):
        raise ArtifactError(f"{cfg_path} does not give hidden_size: cannot size the embedding")
    task = "feature-extraction"
    if modules.is_file():
        try:
            mods = json.loads(modules.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{modules} is not valid JSON: {exc}") from exc
        if any(str(m.get("type", "")).endswith("Normalize") for m in mods):
            task = "sentence-embedding"
    params = {"tritonctl.task": task}
    st_cfg = path / "sentence_bert_config.json"
    if st_cfg.is_file():
        try:
            st_settings = json.loads(st_cfg.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{st_cfg} is not valid JSON: {exc}") from exc
        if not isinstance(st_settings, dict):
            raise ArtifactError(f"{st_cfg}: expected an object of settings")
        max_len = st_settings.get("max_seq_length")
        if isinstance(max_len, int):
            params["tritonctl.max_length"] = str(max_len)
    return Artifact(
        format="transformers",
        source=path,
        inputs=[TensorSpec("TEXT", "STRING", (-1, 1))],
        outputs=[TensorSpec("EMBEDDING", "FP32", (-1, hidden))],
        files={"hf": path},
        native=None,
        runner="transformers",
        runner_artifact="hf",
        runner_parameters=params,
        default_max_batch_size=64,
        size_bytes=tree_size(path),
        task_head=task_head,
        notices=notices,
    )


def _classifier(path: Path, cfg: dict[str, object], head: str) -> Artifact:
    """The folder as a text classifier: TEXT -> LOGITS [num_labels] (+ LABEL [1])."""
    from triton_backends.transformers_runner.model import (
        CLASSIFICATION_TASK,
        classifier_outputs,
    )

    try:
        num_labels, single_label = classifier_outputs(cfg)
    except ValueError as exc:
        raise ArtifactError(f"{path / 'config.json'}: {exc}") from exc
    outputs = [TensorSpec("LOGITS", "FP32", (-1, num_labels))]
    if single_label:
        outputs.append(TensorSpec("LABEL", "STRING", (-1, 1)))
        notice = (
            f"{head} is served as a text classifier: LOGITS ({num_labels} per sentence) and "
            "LABEL (the id2label name of the highest logit); --as-embedder serves its base "
            "model's embeddings instead"
        )
    else:
        why = (
            "a multi-label classifier (apply a sigmoid to each logit)"
            if cfg.get("problem_type") == "multi_label_classification"
            else "a regression head"
        )
        notice = (
            f"{head} is {why}: served with LOGITS ({num_labels} per sentence) only, no "
            "LABEL, as it has no single predicted label"
        )
    return Artifact(
        format="transformers",
        source=path,
        inputs=[TensorSpec("TEXT", "STRING", (-1, 1))],
        outputs=outputs,
        files={"hf": path},
        native=None,
        runner="transformers",
        runner_artifact="hf",
        runner_parameters={"tritonctl.task": CLASSIFICATION_TASK},
        default_max_batch_size=64,
        size_bytes=tree_size(path),
        notices=[notice],
    )


def _check_runner_reproduces(path: Path) -> None:
    """Refuse a sentence-transformers folder the runner would refuse to load, with its reason."""
    from triton_backends.transformers_runner.model import sentence_transformers_pooling

    try:
        sentence_transformers_pooling(str(path))
    except (ValueError, OSError) as exc:
        raise ArtifactError(
            f"{path} cannot be served by tritonctl's transformers runner: {exc}"
        ) from exc


def _heads(cfg: dict[str, object], *, sentence_transformers: bool) -> tuple[str, list[str]]:
    """(a task-head architecture or "", notices) from config.json's ``architectures``."""
    if sentence_transformers:
        return "", []
    archs = cfg.get("architectures")
    names = [str(a) for a in archs] if isinstance(archs, list) else []
    for arch in names:
        if arch.endswith(TASK_HEADS):
            return arch, []
    for arch in names:
        if arch.endswith(LM_HEADS):
            return "", [
                f"{arch} is served as a text embedder: mean pooling of its base model's last "
                "hidden state; its language-model head is not used"
            ]
    return "", []
