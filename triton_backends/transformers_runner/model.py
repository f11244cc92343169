"""tritonctl transformers runner: text embeddings, or a text classifier's predictions,
from a Hugging Face model folder.

The publisher copies this file verbatim into a version folder next to the artifact (a
Hugging Face model folder, usually ``hf/``), so it is self-contained: at module level it
imports only the standard library, numpy and ``triton_python_backend_utils``; torch and
transformers are imported in ``initialize``, with the Hugging Face hub switched offline.

The config has one STRING input (usually ``TEXT``; each element is one UTF-8 sentence,
e.g. shape ``[B, 1]`` with ``max_batch_size > 0``). An embedder has one output (usually
``EMBEDDING``, FP32) that receives one embedding per sentence, shape ``[number of
sentences, hidden]``. A classifier (``tritonctl.task`` ``text-classification``: the folder's
``AutoModelForSequenceClassification``) has one float output (usually ``LOGITS``) that
receives the head's logits, ``[number of sentences, num_labels]``, and, for a single-label
classifier only, one STRING output (usually ``LABEL``) that receives the config's
``id2label`` name of each sentence's highest logit, ``[number of sentences, 1]``. A
multi-label classifier (``problem_type`` ``multi_label_classification``) or a regression
head (``regression``, or one label) has no single predicted label: it serves its logits only
(see :func:`classifier_outputs`).

config.pbtxt parameters read here:

- ``tritonctl.artifact``: the model folder, relative to the version folder (``hf``).
- ``tritonctl.task``: ``sentence-embedding`` (pooling, then L2 normalisation: what
  sentence-transformers does for all-MiniLM-L6-v2), ``feature-extraction`` (pooling, no
  normalisation) or ``text-classification`` (the sequence-classification head's logits and
  label). Default: feature-extraction.
- ``tritonctl.max_length``: tokens per sentence before truncation. Default for an
  embedder: the folder's ``sentence_bert_config.json`` ``max_seq_length``, else 256 (or the
  tokenizer's limit when that is lower); for a classifier: the tokenizer's limit
  (``model_max_length``, what the tokenizer truncates to by itself), else the model's
  ``max_position_embeddings`` (at most 512).
- ``tritonctl.threads``: torch CPU threads (default 1).
- ``tritonctl.batch_size``: sentences per forward pass (default 32).

The pooling is mean pooling over the attention mask, or what a sentence-transformers
folder's Pooling module names: the CLS token's embedding, or the maximum over the tokens
(:data:`POOLING_MODES`). tritonctl's publisher runs :func:`sentence_transformers_pooling`
and :func:`classifier_outputs` on the folder too, so a folder this runner would refuse is
refused at publish.

All sentences of all requests in one ``execute`` call are encoded together (sorted by
length, in chunks of ``tritonctl.batch_size``) and split back per request. A request that
cannot be decoded (text that is not UTF-8) gets its own error, as Triton's INVALID_ARG (HTTP
400: the client's mistake); the others their answers.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: tritonctl imports this file for its folder check
    pb_utils = None

RUNNER = "transformers"
DEFAULT_ARTIFACT = "hf"
EMBEDDING_TASKS = ("sentence-embedding", "feature-extraction")
CLASSIFICATION_TASK = "text-classification"
TASKS = (*EMBEDDING_TASKS, CLASSIFICATION_TASK)
DEFAULT_MAX_LENGTH = 256
# A classifier's longest input when neither the tokenizer nor the config says otherwise.
CLASSIFIER_MAX_LENGTH = 512
# Tokenizers without a limit of their own report a huge one (transformers' VERY_LARGE_INTEGER).
_NO_LIMIT = 1_000_000
# problem_type values whose predictions are not one label per sentence.
NO_SINGLE_LABEL = ("multi_label_classification", "regression")
# sentence-transformers modules this runner reproduces exactly.
_ST_MODULES = ("Transformer", "Pooling", "Normalize")
# The sentence-transformers pooling modes this runner reproduces (one at a time): the key in
# the Pooling module's config.json and this runner's name for it.
POOLING_MODES = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}

_TRITON_TO_NUMPY: dict[str, Any] = {
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
}


def _log(level: str, message: str) -> None:
    """Log through Triton's logger (``pb_utils.Logger``); print where it is missing."""
    text = f"tritonctl {RUNNER} runner: {message}"
    logger = getattr(pb_utils, "Logger", None)
    emit = getattr(logger, f"log_{level}", None) if logger is not None else None
    if emit is None:
        print(text, flush=True)
    else:
        emit(text)


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    params = config.get("parameters") or {}
    return {str(k): str((v or {}).get("string_value", "")) for k, v in params.items()}


def _artifact_path(args: dict[str, str], params: dict[str, str], default: str) -> str:
    artifact = params.get("tritonctl.artifact") or default
    path = os.path.join(args["model_repository"], str(args["model_version"]), artifact)
    if not os.path.exists(path):
        raise FileNotFoundError(f"artifact {path} does not exist (tritonctl.artifact={artifact!r})")
    return path


def _int_parameter(params: dict[str, str], key: str, default: int) -> int:
    text = params.get(key, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError as exc:
        raise ValueError(f"parameter {key} must be an integer, got {text!r}") from exc
    if value < 1:
        raise ValueError(f"parameter {key} must be >= 1, got {value}")
    return value


class RequestError(ValueError):
    """What the client sent cannot be served (Triton answers it as INVALID_ARG: HTTP 400)."""


def _error_response(exc: BaseException) -> Any:
    message = f"tritonctl {RUNNER} runner: {type(exc).__name__}: {exc}"
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    if isinstance(exc, RequestError) and code is not None:
        error = pb_utils.TritonError(message, code)
    else:
        error = pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sentence_transformers_pooling(folder: str) -> str:
    """The pooling of the model folder ``folder`` (a value of :data:`POOLING_MODES`): its
    sentence-transformers Pooling module's, else mean. A sentence-transformers folder whose
    pipeline this runner would not reproduce raises ValueError saying why."""
    modules_path = os.path.join(folder, "modules.json")
    if not os.path.isfile(modules_path):
        return "mean"
    pooling_mode = "mean"
    modules = _read_json(modules_path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ValueError(f"{modules_path}: expected a list of modules (objects)")
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _ST_MODULES:
            raise ValueError(
                f"{modules_path}: module {kind!r} is not supported (only Transformer, "
                "Pooling and Normalize are reproduced by this runner)"
            )
        if kind == "Pooling":
            pooling_config = os.path.join(folder, str(module.get("path", "")), "config.json")
            if os.path.isfile(pooling_config):
                pooling = _read_json(pooling_config)
                if not isinstance(pooling, dict):
                    raise ValueError(f"{pooling_config}: expected an object of pooling modes")
                modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
                if len(modes) != 1 or modes[0] not in POOLING_MODES:
                    raise ValueError(
                        f"{pooling_config}: pooling {modes} is not supported (one of "
                        f"{', '.join(POOLING_MODES)} only)"
                    )
                pooling_mode = POOLING_MODES[modes[0]]
    return pooling_mode


def classifier_outputs(config: dict[str, Any]) -> tuple[int, bool]:
    """(number of labels, whether a LABEL output is served) for a sequence classifier's
    ``config.json`` ``config``, as transformers reads it: the labels are ``id2label``'s
    (``num_labels`` where that is absent; 2 where both are, transformers' default). A
    classifier has one predicted label per sentence (the ``id2label`` name of the highest
    logit, what transformers' text-classification pipeline answers) unless its
    ``problem_type`` is ``multi_label_classification`` (each label is independent: a
    sigmoid per logit, not an argmax) or ``regression`` (or it has one label, which
    transformers treats as regression). A config this runner cannot size raises
    ValueError."""
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        count = len(id2label)
    elif id2label is None or id2label == {}:
        count = config.get("num_labels", 2)
    else:
        raise ValueError(f"config.json id2label must be an object, got {id2label!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"config.json gives {count!r} labels: expected at least 1")
    problem = config.get("problem_type")
    return count, problem not in NO_SINGLE_LABEL and count > 1


def _sentences(array: np.ndarray) -> list[str]:
    texts = []
    for index, item in enumerate(array.reshape(-1)):
        if isinstance(item, (bytes, np.bytes_)):
            try:
                texts.append(bytes(item).decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise RequestError(
                    f"sentence {index} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
                ) from None
        elif isinstance(item, str):
            texts.append(item)
        else:
            raise RequestError(f"expected UTF-8 strings, got {type(item).__name__}")
    return texts


class TritonPythonModel:
    """Triton's entry point: one instance per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = _parameters(config)
        inputs = config.get("input", [])
        if len(inputs) != 1 or inputs[0].get("data_type") != "TYPE_STRING":
            raise ValueError("the model config must declare exactly one STRING input")
        self.input_name = str(inputs[0]["name"])
        self.task = params.get("tritonctl.task") or "feature-extraction"
        if self.task not in TASKS:
            raise ValueError(f"tritonctl.task {self.task!r} is not one of {', '.join(TASKS)}")
        self.classifier = self.task == CLASSIFICATION_TASK
        output, self.label_name = self._outputs(config.get("output", []))
        self.output_name = str(output["name"])
        self.output_dtype = np.dtype(_TRITON_TO_NUMPY[output["data_type"]])
        output_dims = [int(d) for d in output.get("dims", [])]

        path = _artifact_path(args, params, DEFAULT_ARTIFACT)
        self.pooling = sentence_transformers_pooling(path)
        threads = _int_parameter(params, "tritonctl.threads", 1)
        self.batch_size = _int_parameter(params, "tritonctl.batch_size", 32)
        st_config_path = os.path.join(path, "sentence_bert_config.json")
        st_config = _read_json(st_config_path) if os.path.isfile(st_config_path) else {}
        self.lower_case = bool(st_config.get("do_lower_case", False))
        num_labels = 0
        if self.classifier:
            hf_config = _read_json(os.path.join(path, "config.json"))
            if not isinstance(hf_config, dict):
                raise ValueError(f"{path}/config.json: expected an object")
            num_labels, single_label = classifier_outputs(hf_config)
            if self.label_name and not single_label:
                raise ValueError(
                    f"output {self.label_name!r}: this classifier has no single predicted label "
                    "(multi-label or regression): serve its logits only"
                )

        # Nothing may be downloaded at run time.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device_id = int(args.get("model_instance_device_id", 0) or 0)
            if torch.cuda.is_available():
                device = f"cuda:{device_id}"
            else:
                _log("warn", "instance kind is GPU but torch sees no CUDA device; running on CPU")
        if device == "cpu":
            torch.set_num_threads(threads)
            # only allowed before the first parallel work: best effort
            with contextlib.suppress(RuntimeError):
                torch.set_num_interop_threads(1)
        self.device = torch.device(device)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path, local_files_only=True)
        auto = AutoModelForSequenceClassification if self.classifier else AutoModel
        self.model: Any = auto.from_pretrained(path, local_files_only=True)
        self.model.to(self.device)
        self.model.eval()

        limit = getattr(self.tokenizer, "model_max_length", None)
        if not (isinstance(limit, int) and 0 < limit < _NO_LIMIT):
            limit = None
        if params.get("tritonctl.max_length", "").strip():
            max_length = _int_parameter(params, "tritonctl.max_length", DEFAULT_MAX_LENGTH)
        elif self.classifier:
            positions = getattr(self.model.config, "max_position_embeddings", None)
            fallback = min(int(positions or CLASSIFIER_MAX_LENGTH), CLASSIFIER_MAX_LENGTH)
            max_length = limit or fallback
        else:
            max_length = int(st_config.get("max_seq_length") or DEFAULT_MAX_LENGTH)
            if limit is not None:
                max_length = min(max_length, limit)
        self.max_length = max_length
        if self.classifier:
            self.width = int(self.model.config.num_labels)
            if self.width != num_labels:
                raise ValueError(
                    f"config.json gives {num_labels} labels, the loaded model has {self.width}"
                )
            id2label = self.model.config.id2label
            self.labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(self.width)]
            what = "number of labels"
        else:
            self.width = int(self.model.config.hidden_size)
            self.labels = []
            what = "hidden size"
        if output_dims and output_dims[-1] not in (-1, self.width):
            raise ValueError(
                f"output {self.output_name!r} has dims {output_dims}; the model's {what} "
                f"is {self.width}"
            )
        shape = (
            f"{self.width} labels{', with LABEL' if self.label_name else ', logits only'}"
            if self.classifier
            else f"{self.pooling} pooling, hidden {self.width}"
        )
        _log(
            "info",
            f"loaded {path} on {self.device} (task {self.task}, {shape}, "
            f"max_length {self.max_length}, {torch.get_num_threads()} thread(s))",
        )

    def _outputs(self, outputs: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
        """The config's float output, and the name of its label output ("" if none)."""
        floats = [o for o in outputs if o.get("data_type") in _TRITON_TO_NUMPY]
        strings = [o for o in outputs if o.get("data_type") == "TYPE_STRING"]
        if not self.classifier:
            if len(outputs) != 1 or len(floats) != 1:
                raise ValueError(
                    "the model config must declare exactly one FP16, FP32 or FP64 output"
                )
            return floats[0], ""
        if len(floats) != 1 or len(strings) > 1 or len(outputs) != len(floats) + len(strings):
            raise ValueError(
                "a text-classification config must declare one FP16, FP32 or FP64 output "
                "(the logits) and at most one STRING output (the label)"
            )
        return floats[0], str(strings[0]["name"]) if strings else ""

    def _encode(self, texts: list[str]) -> np.ndarray:
        """One row per text, in order, as float32: its embedding ([len(texts), hidden]) or
        its logits ([len(texts), num_labels])."""
        torch = self.torch
        result = np.zeros((len(texts), self.width), dtype=np.float32)
        if self.lower_case:
            texts = [t.lower() for t in texts]
        # Longest first, as sentence-transformers does, so each chunk pads little.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.inference_mode():
                output = self.model(**batch)
                if self.classifier:
                    rows = output[0] if isinstance(output, tuple) else output.logits
                else:
                    tokens = output[0] if isinstance(output, tuple) else output.last_hidden_state
                    rows = self._pool(tokens, batch["attention_mask"])
                    if self.task == "sentence-embedding":
                        rows = torch.nn.functional.normalize(rows, p=2, dim=1)
            result[chunk] = rows.float().cpu().numpy()
        return result

    def _pool(self, tokens: Any, attention_mask: Any) -> Any:
        """One embedding per sentence from its tokens' (as sentence-transformers pools)."""
        if self.pooling == "cls":
            return tokens[:, 0]
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        if self.pooling == "max":
            # padding can never be the maximum
            return tokens.masked_fill(mask == 0, float("-inf")).max(dim=1).values
        summed = (tokens * mask).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1e-9)

    def _respond(self, rows: np.ndarray) -> Any:
        array = np.ascontiguousarray(rows.astype(self.output_dtype, copy=False))
        tensors = [pb_utils.Tensor(self.output_name, array)]
        if self.label_name:
            labels = np.empty((rows.shape[0], 1), dtype=np.object_)
            for row, best in enumerate(rows.argmax(axis=1)):
                labels[row, 0] = self.labels[int(best)].encode("utf-8")
            tensors.append(pb_utils.Tensor(self.label_name, labels))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        ready: list[tuple[int, list[str]]] = []
        for index, request in enumerate(requests):
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
                if tensor is None:
                    raise RequestError(f"request has no input {self.input_name!r}")
                ready.append((index, _sentences(tensor.as_numpy())))
            except Exception as exc:
                responses[index] = _error_response(exc)
        try:
            rows = self._encode([t for _, texts in ready for t in texts])
        except Exception as exc:
            if len(ready) > 1:
                _log("warn", f"{len(ready)} requests failed together ({exc}); one by one now")
            for index, texts in ready:
                try:
                    responses[index] = self._respond(self._encode(texts))
                except Exception as exc_one:
                    responses[index] = _error_response(exc_one)
            return responses
        at = 0
        for index, texts in ready:
            responses[index] = self._respond(rows[at : at + len(texts)])
            at += len(texts)
        return responses

    def finalize(self) -> None:
        self.model = None
        self.tokenizer = None
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
        _log("info", "model released")
