"""Hugging Face transformers folders, served as text-embedding models by a runner."""

from __future__ import annotations

import json
from pathlib import Path

from manager.artifacts.base import Artifact, tree_size
from manager.errors import ArtifactError
from manager.modelconfig import TensorSpec

_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def inspect_transformers(path: Path) -> Artifact:
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
    hidden = cfg.get("hidden_size") or cfg.get("d_model") or cfg.get("dim")
    if not isinstance(hidden, int):
        raise ArtifactError(f"{cfg_path} does not give hidden_size: cannot size the embedding")
    task = "feature-extraction"
    modules = path / "modules.json"
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
        max_len = json.loads(st_cfg.read_text()).get("max_seq_length")
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
    )
