"""TorchScript files: loadable by torch, but they carry no tensor signature.

The names, data types and dims come from the user; how many inputs ``forward()`` takes and
how many outputs it returns are read from its schema where torch can load the module.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

from manager.artifacts.base import Artifact
from manager.errors import ArtifactError

log = logging.getLogger(__name__)


def forward_signature(path: Path) -> tuple[tuple[int, int], int | None, str] | None:
    """(input count range, output count or None, schema text) of the module's forward(),
    or None where torch cannot tell (torch missing, or the module does not load here)."""
    try:
        import torch

        module = torch.jit.load(str(path), map_location="cpu")
        schema = module.forward.schema
    except Exception as exc:  # torch missing, or a module that only loads elsewhere
        log.debug("cannot read the forward() schema of %s: %s", path, exc)
        return None
    # a method's first argument is its module, whatever the source named it ("self", "s")
    args = list(schema.arguments)
    if args and args[0].type.kind() == "ClassType":
        args = args[1:]
    required = sum(1 for a in args if not a.has_default_value())
    outputs: int | None = None
    if len(schema.returns) == 1:
        returned = schema.returns[0].type
        if returned.kind() == "TensorType":
            outputs = 1
        elif returned.kind() == "TupleType" and all(
            e.kind() == "TensorType" for e in returned.elements()
        ):
            outputs = len(returned.elements())
    return (required, len(args)), outputs, str(schema)


def inspect_torchscript(path: Path) -> Artifact:
    if not path.is_file():
        raise ArtifactError(f"TorchScript artifact {path} is not a file")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArtifactError(
            f"{path} is not a TorchScript archive (corrupt or truncated?): {exc}"
        ) from exc
    if bad is not None:
        raise ArtifactError(f"{path} is corrupt: member {bad!r} fails its checksum")
    if not any("/code/" in n for n in names) or not any(n.endswith("constants.pkl") for n in names):
        raise ArtifactError(
            f"{path} is a zip file but not a TorchScript module (no code/ or constants.pkl); "
            "save it with torch.jit.save"
        )
    signature = forward_signature(path)
    return Artifact(
        format="torchscript",
        source=path,
        inputs=None,
        outputs=None,
        files={"model.pt": path},
        native=("platform", "pytorch_libtorch"),
        native_filename="model.pt",
        runner="torchscript",
        runner_artifact="model.pt",
        size_bytes=path.stat().st_size,
        input_count=signature[0] if signature else None,
        output_count=signature[1] if signature else None,
        signature=signature[2] if signature else "",
    )
