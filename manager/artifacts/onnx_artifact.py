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

A model that keeps its tensors inline (a single file, up to protobuf's 2 GB) is read without
the initializers' bytes: ``onnx.load`` and ``onnx.checker`` read a file whole and parse it,
holding two or three copies of the weights at once. The file is mapped and its protobuf
wire format copied without the initializers' ``raw_data``; the graph is checked as for
external data (each stripped tensor pointing at an empty file), and each stripped length
is checked against the tensor's type and dims.
"""

from __future__ import annotations

import logging
import mmap
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from manager.artifacts.base import Artifact
from manager.errors import ArtifactError, ConfigError
from manager.modelconfig import TensorSpec, numpy_to_triton_dtype

if TYPE_CHECKING:
    import onnx

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
    return _load_stripped(path)[0]


def _load_stripped(path: Path) -> tuple[object, list[int | None]]:
    """The model at ``path`` without its external data and without the bytes of its
    graph's initializers; and, per initializer in order, how many bytes of ``raw_data``
    were left out (None where it had none)."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise ArtifactError(f"ONNX artifact {path} is not a file")
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                wire, stripped = _strip_model(view)
            finally:
                view.release()
        model = onnx.ModelProto()
        model.ParseFromString(wire)
    except (DecodeError, ValueError, OSError) as exc:
        raise ArtifactError(
            f"{path} is not a readable ONNX model (corrupt or truncated?): {exc}"
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise ArtifactError(f"{path} holds no ONNX graph (corrupt or truncated?)")
    if len(stripped) != len(model.graph.initializer):
        raise ArtifactError(f"{path} is not a readable ONNX model (corrupt or truncated?)")
    return model, stripped


# Protobuf field numbers: ModelProto.graph, GraphProto.initializer, TensorProto.raw_data.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9
_LEN = 2  # the wire type of bytes, strings and messages


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise ValueError("the protobuf data ends inside a number")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("a malformed protobuf number")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, start of the field, start of its value, end) of each field
    of the message in ``buf[pos:end]``."""
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        value = pos
        if wire_type == 0:
            _, pos = _varint(buf, pos, end)
        elif wire_type == 1:
            pos += 8
        elif wire_type == _LEN:
            length, value = _varint(buf, pos, end)
            pos = value + length
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"protobuf wire type {wire_type} is not used by ONNX")
        if pos > end:
            raise ValueError("the protobuf data ends inside a field")
        yield number, wire_type, start, value, pos


def _strip_model(buf: memoryview) -> tuple[bytes, list[int | None]]:
    """The ModelProto in ``buf`` re-encoded without its graph's initializers' raw_data,
    and the lengths left out (see :func:`_load_stripped`)."""
    out = bytearray()
    stripped: list[int | None] = []
    for number, wire_type, start, value, end in _fields(buf, 0, len(buf)):
        if number == _MODEL_GRAPH and wire_type == _LEN:
            graph = bytearray()
            for g_number, g_wire, g_start, g_value, g_end in _fields(buf, value, end):
                if g_number == _GRAPH_INITIALIZER and g_wire == _LEN:
                    tensor = bytearray()
                    left_out: int | None = None
                    for t_number, t_wire, t_start, t_value, t_end in _fields(buf, g_value, g_end):
                        if t_number == _TENSOR_RAW_DATA and t_wire == _LEN:
                            left_out = t_end - t_value  # the last one counts
                        else:
                            tensor += buf[t_start:t_end]
                    stripped.append(left_out)
                    graph += _encode_varint(_GRAPH_INITIALIZER << 3 | _LEN)
                    graph += _encode_varint(len(tensor)) + tensor
                else:
                    graph += buf[g_start:g_end]
            out += _encode_varint(_MODEL_GRAPH << 3 | _LEN)
            out += _encode_varint(len(graph)) + graph
        else:
            out += buf[start:end]
    return bytes(out), stripped


def _graph_tensors(model: object) -> tuple[list[TensorSpec], list[TensorSpec]]:

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

    model, stripped = _load_stripped(path)
    external = _external_data_files(model, path)
    _check_inline_sizes(model, path, stripped)
    try:
        _check_graph_apart_from_its_data(model, path, external, stripped)
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


def _check_graph_apart_from_its_data(
    model: object, path: Path, external: dict[str, Path], stripped: list[int | None]
) -> None:
    """``onnx.checker`` on ``model`` (loaded without its external data, and without its
    initializers' inline bytes) as if it sat in a folder of its own with an empty file in
    place of each data file: the checker then checks the graph and each tensor's location,
    not the data itself (which :func:`_external_data_files` and
    :func:`_check_inline_sizes` have checked). An initializer whose inline bytes were left
    out points at an empty file of its own there."""
    import onnx

    proto: onnx.ModelProto = model  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="tritonctl-onnx-check-") as tmp:
        folder = Path(tmp)
        for rel in external:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).touch()
        if any(n is not None for n in stripped):
            proto = _pointing_at_placeholders(proto, stripped, folder, external)
        checked = folder / path.name
        checked.write_bytes(proto.SerializeToString())
        onnx.checker.check_model(str(checked))


def _pointing_at_placeholders(
    model: onnx.ModelProto, stripped: list[int | None], folder: Path, external: dict[str, Path]
) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers left without their inline bytes keep them in
    an empty file in ``folder`` instead (the checker refuses a tensor with no data)."""
    import onnx

    placeholder = "tritonctl-inline-data"
    while placeholder in external:
        placeholder += "_"
    (folder / placeholder).touch()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor, length in zip(copy.graph.initializer, stripped, strict=True):
        if length is None:
            continue
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", placeholder), ("offset", "0"), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return copy


def _check_inline_sizes(model: object, path: Path, stripped: list[int | None]) -> None:
    """Refuse an initializer whose inline bytes are not what its type and dims take (ONNX
    Runtime refuses to load it)."""
    initializers = model.graph.initializer  # type: ignore[attr-defined]
    for tensor, length in zip(initializers, stripped, strict=True):
        if length is None:
            continue
        needed = _tensor_bytes(tensor)
        if needed is not None and needed != length:
            raise ArtifactError(
                f"{path}: tensor {tensor.name!r} holds {length} bytes of data; its type and "
                f"dims take {needed} bytes (corrupt, or not a valid ONNX model?)"
            )


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
