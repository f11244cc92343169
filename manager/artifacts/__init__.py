"""Artifacts a model can be published from, and what the publisher learns from them.

Each format module inspects its artifact and returns an :class:`Artifact`: the tensors
it declares (when it declares them), the files that go into the version folder, and how
each runtime serves it.
"""

from __future__ import annotations

from pathlib import Path

from manager.artifacts.base import FORMATS, Artifact
from manager.errors import ArtifactError


def detect_format(path: Path) -> str:
    """Guess the artifact format from what is at ``path``."""
    if not path.exists():
        raise ArtifactError(f"artifact {path} does not exist")
    if path.is_dir():
        if (path / "model.py").is_file():
            return "python"
        if (path / "config.json").is_file():
            return "transformers"
        raise ArtifactError(
            f"cannot tell the format of folder {path}: expected model.py (python) "
            "or config.json with weights (transformers)"
        )
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".pth", ".torchscript", ".ts"):
        return "torchscript"
    with path.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):
        return "torchscript"  # TorchScript archives are zip files
    raise ArtifactError(
        f"cannot tell the format of {path}: name it *.onnx or *.pt, or pass --format"
    )


def inspect_artifact(path: Path, fmt: str = "auto", *, as_embedder: bool = False) -> Artifact:
    """Inspect ``path`` as format ``fmt`` (``auto`` detects it). ``as_embedder``: a
    transformers folder with a task head is described as a text embedder of its base model
    (a sequence classifier is otherwise described as a text classifier)."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise ArtifactError(f"unknown format {fmt!r} (known: auto, {', '.join(FORMATS)})")
    if not path.exists():
        raise ArtifactError(f"artifact {path} does not exist")
    if fmt == "onnx":
        from manager.artifacts.onnx_artifact import inspect_onnx

        return inspect_onnx(path)
    if fmt == "torchscript":
        from manager.artifacts.torchscript_artifact import inspect_torchscript

        return inspect_torchscript(path)
    if fmt == "transformers":
        from manager.artifacts.transformers_artifact import inspect_transformers

        return inspect_transformers(path, as_embedder=as_embedder)
    from manager.artifacts.python_artifact import inspect_python

    return inspect_python(path)


__all__ = ["FORMATS", "Artifact", "detect_format", "inspect_artifact"]
