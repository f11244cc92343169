"""TorchScript files: loadable by torch, but they carry no tensor signature."""

from __future__ import annotations

import zipfile
from pathlib import Path

from manager.artifacts.base import Artifact
from manager.errors import ArtifactError


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
    )
