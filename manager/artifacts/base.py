"""The description of an inspected artifact."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from manager.filecopy import total_bytes
from manager.modelconfig import TensorSpec

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "transformers", "python")


@dataclass
class Artifact:
    """What the publisher knows about an artifact.

    ``inputs``/``outputs`` hold full dims as the artifact declares them (a batch dim
    included, ``-1`` for dynamic); ``None`` when the artifact does not declare them
    (TorchScript) and the user must say.
    ``files`` maps a path inside the version folder to the source path to copy there.
    """

    format: str
    source: Path
    inputs: list[TensorSpec] | None
    outputs: list[TensorSpec] | None
    files: dict[str, Path]
    # How the native runtime serves it on NVIDIA's image: ("platform", value) or
    # ("backend", value); None when only the Python runtime can.
    native: tuple[str, str] | None = None
    native_filename: str = ""
    runner: str = ""
    runner_artifact: str = ""
    runner_parameters: dict[str, str] = field(default_factory=dict)
    # A config.pbtxt that came with the artifact (Python models).
    config: mc.ModelConfig | None = None
    # What a signature-less artifact (TorchScript) says of its tensors where it can be read:
    # how many inputs forward() takes (low, high: arguments with defaults may be left out)
    # and how many outputs it returns; ``signature`` shows it in messages.
    input_count: tuple[int, int] | None = None
    output_count: int | None = None
    signature: str = ""
    # A transformers model whose config names a task head (BertForSequenceClassification):
    # served as an embedder only when the user asks for that.
    task_head: str = ""
    # What the user should know about how the artifact will be served.
    notices: list[str] = field(default_factory=list)
    # The path in the version folder whose sha256 is recorded, when it is not the artifact
    # itself (an ONNX model with its external data: the ``model.onnx`` folder).
    digest_of: str = ""
    # Suggested defaults when the user gives none.
    default_max_batch_size: int = 0
    size_bytes: int = 0


def tree_size(path: Path) -> int:
    """Bytes of the files a version gets from ``path`` (links followed as publish does)."""
    if path.is_file():
        return path.stat().st_size
    return total_bytes(path)
