"""ONNX files: tensors, dtypes and dims come from the graph.

A model that keeps tensors in external data files (``onnx.save(...,
save_as_external_data=True)``, needed past protobuf's 2 GB) is published with those files:
the version gets a folder ``model.onnx/`` holding ``model.onnx`` and the data files at the
same relative paths. Triton's onnxruntime backend loads a ``model.onnx`` folder from its path,
so ONNX Runtime finds the data beside the model file (a single file is read into memory
first, where relative data paths would not resolve); the runner opens the same file.

The graph is checked with ``onnx.checker`` without reading the external data: the checker
refuses a data file with more than one hard link (its guard against a planted link), and
hard links are legitimate here (``publish --link`` makes them, and a later publish of the
same source must work). Each data file is checked here instead: a regular file inside the
model's folder, long enough for the tensors it holds.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path, PurePosixPath

from manager.artifacts.base import Artifact
from manager.errors import ArtifactError, ConfigError
from manager.modelconfig import TensorSpec, numpy_to_triton_dtype

log = logging.getLogger(__name__)


SERVED_ONNX_TYPES = (
    "BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64 or STRING"
)


def _value_info_to_spec(value_info: object) -> TensorSpec:
    import onnx
    from onnx import helper

    vi: onnx.ValueInfoProto = value_info  # type: ignore[assignment]
    ttype = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise ArtifactError(f"ONNX value {vi.name!r} is not a tensor; only tensors can be served")
    if ttype.elem_type == onnx.TensorProto.STRING:
        dtype = "STRING"
    else:
        try:
            dtype = numpy_to_triton_dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        except (ConfigError, KeyError, ValueError):
            # BFLOAT16, FLOAT8*, INT4, COMPLEX*: no numpy type the runner and clients share
            type_name = onnx.TensorProto.DataType.Name(ttype.elem_type)
            raise ArtifactError(
                f"ONNX tensor {vi.name!r} is {type_name}, which tritonctl does not serve; "
                f"its tensors may be {SERVED_ONNX_TYPES} (cast it in the graph)"
            ) from None
    dims: list[int] = []
    if ttype.HasField("shape"):
        for d in ttype.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1)
    return TensorSpec(vi.name, dtype, tuple(dims))


def _load_graph(path: Path) -> object:
    """The model at ``path`` without its external data (the graph and tensors' locations)."""
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
    return model


def _graph_tensors(model: object) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import onnx

    proto: onnx.ModelProto = model  # type: ignore[assignment]
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [_value_info_to_spec(v) for v in proto.graph.input if v.name not in initializers]
    outputs = [_value_info_to_spec(v) for v in proto.graph.output]
    return inputs, outputs


def graph_tensors(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs the ONNX graph at ``path`` declares (full dims, ``-1`` for
    dynamic), read without the external data or any check of the model: cheap enough
    for ``validate`` to run on every version."""
    return _graph_tensors(_load_graph(path))


def inspect_onnx(path: Path) -> Artifact:
    import onnx

    model = _load_graph(path)
    external = _external_data_files(model, path)
    try:
        if external:
            _check_graph_apart_from_its_data(model, path, external)
        else:
            onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError, OSError) as exc:
        raise ArtifactError(f"{path} is not a valid ONNX model: {exc}") from exc
    inputs, outputs = _graph_tensors(model)
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
        _check_data_size(path, tensor, rel, data)
        files[rel.as_posix()] = data
    return files


def _check_graph_apart_from_its_data(model: object, path: Path, external: dict[str, Path]) -> None:
    """``onnx.checker`` on ``model`` (loaded without its external data) as if it sat in a
    folder of its own with an empty file in place of each data file: the checker then
    checks the graph and each tensor's location, not the data files themselves (which
    :func:`_external_data_files` has checked)."""
    import onnx

    proto: onnx.ModelProto = model  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="tritonctl-onnx-check-") as tmp:
        folder = Path(tmp)
        for rel in external:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).touch()
        checked = folder / path.name
        checked.write_bytes(proto.SerializeToString())
        onnx.checker.check_model(str(checked))


# Types packed several to a byte in raw data: how many.
_PACKED_TYPES = {"INT4": 2, "UINT4": 2, "FLOAT4E2M1": 2, "INT2": 4, "UINT2": 4}


def _tensor_bytes(tensor: object) -> int | None:
    """Bytes a tensor's raw data takes; None where that cannot be told (strings)."""
    import math

    import onnx
    from onnx import helper

    t: onnx.TensorProto = tensor  # type: ignore[assignment]
    count = math.prod(t.dims)
    type_name = onnx.TensorProto.DataType.Name(t.data_type)
    per_byte = _PACKED_TYPES.get(type_name)
    if per_byte is not None:
        return -(-count // per_byte)
    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        return count * int(helper.tensor_dtype_to_np_dtype(t.data_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return None


def _check_data_size(path: Path, tensor: object, rel: PurePosixPath, data: Path) -> None:
    """Refuse a data file too short for ``tensor``'s bytes (truncated, or another file),
    or a length that is not the tensor's size."""
    from onnx.external_data_helper import ExternalDataInfo

    info = ExternalDataInfo(tensor)  # type: ignore[arg-type]
    name = getattr(tensor, "name", "")
    offset = int(info.offset or 0)
    needed = _tensor_bytes(tensor)
    if info.length is not None:
        if needed is not None and int(info.length) != needed:
            raise ArtifactError(
                f"{path}: tensor {name!r} says its data is {info.length} bytes of {rel}; "
                f"its type and dims take {needed} bytes"
            )
        needed = int(info.length)
    if needed is None:
        return
    size = data.stat().st_size
    if offset + needed > size:
        raise ArtifactError(
            f"{path}: tensor {name!r} keeps {needed} bytes at offset {offset} of {rel}, but "
            f"{rel} is {size} bytes (truncated, or not this model's data?)"
        )
