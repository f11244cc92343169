"""ONNX files: tensors, dtypes and dims come from the graph.

A model that keeps tensors in external data files (``onnx.save(...,
save_as_external_data=True)``, needed past protobuf's 2 GB) is published with those files:
the version gets a folder ``model.onnx/`` holding ``model.onnx`` and the data files at the
same relative paths. Triton's onnxruntime backend loads a ``model.onnx`` folder from its path,
so ONNX Runtime finds the data beside the model file (a single file is read into memory
first, where relative data paths would not resolve); the runner opens the same file.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

from manager.artifacts.base import Artifact
from manager.errors import ArtifactError
from manager.modelconfig import TensorSpec, numpy_to_triton_dtype

log = logging.getLogger(__name__)


def _value_info_to_spec(value_info: object) -> TensorSpec:
    import onnx
    from onnx import helper

    vi: onnx.ValueInfoProto = value_info  # type: ignore[assignment]
    ttype = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise ArtifactError(f"ONNX value {vi.name!r} is not a tensor; only tensors can be served")
    np_dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type)
    dtype = (
        "STRING" if ttype.elem_type == onnx.TensorProto.STRING else numpy_to_triton_dtype(np_dtype)
    )
    dims: list[int] = []
    if ttype.HasField("shape"):
        for d in ttype.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1)
    return TensorSpec(vi.name, dtype, tuple(dims))


def inspect_onnx(path: Path) -> Artifact:
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise ArtifactError(f"ONNX artifact {path} is not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise ArtifactError(
            f"{path} is not a readable ONNX model (corrupt or truncated?): {exc}"
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise ArtifactError(f"{path} holds no ONNX graph (corrupt or truncated?)")
    external = _external_data_files(model, path)
    try:
        # by path: external data is then looked for beside the model, not in the cwd
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError, OSError) as exc:
        raise ArtifactError(f"{path} is not a valid ONNX model: {exc}") from exc
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_value_info_to_spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [_value_info_to_spec(v) for v in model.graph.output]
    if not inputs or not outputs:
        raise ArtifactError(f"{path}: the ONNX graph declares no inputs or no outputs")
    log.debug("onnx %s: inputs %s outputs %s", path, inputs, outputs)
    if external:
        files = {"model.onnx/model.onnx": path}
        files.update({f"model.onnx/{rel}": p for rel, p in external.items()})
        artifact = "model.onnx/model.onnx"
        digest_of = "model.onnx"
    else:
        files = {"model.onnx": path}
        artifact = "model.onnx"
        digest_of = ""
    return Artifact(
        format="onnx",
        source=path,
        inputs=inputs,
        outputs=outputs,
        files=files,
        native=("platform", "onnxruntime_onnx"),
        native_filename="model.onnx",
        runner="onnx",
        runner_artifact=artifact,
        size_bytes=sum(p.stat().st_size for p in files.values()),
        digest_of=digest_of,
    )


def _external_data_files(model: object, path: Path) -> dict[str, Path]:
    """The external data files ``model`` (loaded from ``path``) refers to, by their path
    relative to the model's folder; each must be a file inside that folder."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    folder = path.parent
    real_folder = folder.resolve()
    files: dict[str, Path] = {}
    for tensor in _get_all_tensors(model):  # type: ignore[arg-type]
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        rel = PurePosixPath(location.replace("\\", "/"))
        if not location or rel.is_absolute() or ".." in rel.parts:
            raise ArtifactError(
                f"{path}: tensor {tensor.name!r} keeps its data at {location!r}; external "
                "data must be a relative path inside the model's folder"
            )
        data = folder / rel
        if not data.is_file():
            raise ArtifactError(
                f"{path}: tensor {tensor.name!r} keeps its data in {rel}, which is not a file "
                f"beside the model ({data} is missing)"
            )
        if real_folder not in data.resolve().parents:
            raise ArtifactError(f"{path}: external data {data} resolves outside {folder}")
        if rel.as_posix() == "model.onnx":
            raise ArtifactError(f"{path}: external data may not be named model.onnx")
        files[rel.as_posix()] = data
    return files
