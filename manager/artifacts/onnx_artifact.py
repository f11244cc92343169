"""ONNX files: tensors, dtypes and dims come from the graph."""

from __future__ import annotations

import logging
from pathlib import Path

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
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"{path} is not a valid ONNX model: {exc}") from exc
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_value_info_to_spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [_value_info_to_spec(v) for v in model.graph.output]
    if not inputs or not outputs:
        raise ArtifactError(f"{path}: the ONNX graph declares no inputs or no outputs")
    for ext in (t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL):
        raise ArtifactError(
            f"{path}: tensor {ext.name!r} keeps its data in an external file; "
            "publish a self-contained ONNX file"
        )
    log.debug("onnx %s: inputs %s outputs %s", path, inputs, outputs)
    return Artifact(
        format="onnx",
        source=path,
        inputs=inputs,
        outputs=outputs,
        files={"model.onnx": path},
        native=("platform", "onnxruntime_onnx"),
        native_filename="model.onnx",
        runner="onnx",
        runner_artifact="model.onnx",
        size_bytes=path.stat().st_size,
    )
