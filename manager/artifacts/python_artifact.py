"""Folders holding a Python-backend ``model.py`` and, optionally, its config.pbtxt."""

from __future__ import annotations

from pathlib import Path

from manager.artifacts.base import Artifact, tree_size
from manager.errors import ArtifactError
from manager.filecopy import iter_files
from manager.modelconfig import TensorSpec, read_config, tensors_from_config


def inspect_python(path: Path) -> Artifact:
    if not path.is_dir():
        raise ArtifactError(f"python artifact {path} must be a folder holding model.py")
    model_py = path / "model.py"
    if not model_py.is_file():
        raise ArtifactError(f"{path} has no model.py")
    source = model_py.read_text()
    try:
        compile(source, str(model_py), "exec")
    except SyntaxError as exc:
        raise ArtifactError(f"{model_py} does not compile: {exc}") from exc
    if "TritonPythonModel" not in source:
        raise ArtifactError(f"{model_py} defines no class TritonPythonModel")
    config = None
    inputs = outputs = None
    cfg_path = path / "config.pbtxt"
    if cfg_path.is_file():
        config = read_config(cfg_path)
        if config.backend and config.backend != "python":
            raise ArtifactError(f"{cfg_path} names backend {config.backend!r}, expected python")
        batch = (-1,) if config.max_batch_size > 0 else ()
        # what the model takes and gives: a reshape in its config is its own shape
        inputs = [
            TensorSpec(s.name, s.dtype, batch + s.model_dims)
            for s in tensors_from_config(config.input)
        ]
        outputs = [
            TensorSpec(s.name, s.dtype, batch + s.model_dims)
            for s in tensors_from_config(config.output)
        ]
    # the folder's files as publish places them: a symlinked file's bytes, wherever it is
    files = {rel: p for rel, p in iter_files(path) if Path(rel).name != "config.pbtxt"}
    return Artifact(
        format="python",
        source=path,
        inputs=inputs or None,
        outputs=outputs or None,
        files=files,
        native=("backend", "python"),
        config=config,
        default_max_batch_size=config.max_batch_size if config is not None else 0,
        size_bytes=tree_size(path),
    )
