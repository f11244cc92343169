"""tritonctl ONNX runner: serves ``model.onnx`` with onnxruntime inside Triton's Python backend.

The publisher copies this file verbatim into a version folder next to the artifact, so it
is self-contained: at module level it imports only the standard library, numpy and
``triton_python_backend_utils``; onnxruntime is imported in ``initialize``.

config.pbtxt parameters read here:

- ``tritonctl.artifact``: the ONNX file, relative to the version folder (``model.onnx``).
- ``tritonctl.threads``: onnxruntime intra-op threads (default 1; inter-op is always 1).

Inputs are fed to the session by name and outputs are taken by name; every config input
and output must be a graph input/output, and each output must have the shape and data type
the config declares (or one numpy converts to without changing a value). A ``reshape`` in
the config is the shape the model takes or gives; with ``max_batch_size 0`` a graph scalar
is served as dims ``[1]`` (Triton refuses an empty reshape without batching). With ``max_batch_size > 0`` the requests of one
``execute`` call whose tensors agree past the batch dimension run as one batch and the
outputs are split back; a failure in such a batch is retried request by request, so one
bad request gets its own error and the others their answers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

RUNNER = "onnx"
DEFAULT_ARTIFACT = "model.onnx"

# --- shared by the tritonctl runners (each runner file is self-contained) ---------------

_TRITON_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}

Feeds = dict[str, np.ndarray]


def _log(level: str, message: str) -> None:
    """Log through Triton's logger (``pb_utils.Logger``); print where it is missing."""
    text = f"tritonctl {RUNNER} runner: {message}"
    logger = getattr(pb_utils, "Logger", None)
    emit = getattr(logger, f"log_{level}", None) if logger is not None else None
    if emit is None:
        print(text, flush=True)
    else:
        emit(text)


class _Tensor:
    """One input or output of the model config."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.name = str(entry["name"])
        data_type = str(entry.get("data_type", "TYPE_INVALID"))
        if data_type not in _TRITON_TO_NUMPY:
            raise ValueError(
                f"{self.name!r} has data type {data_type}, which this runner cannot serve"
            )
        self.data_type = data_type
        self.dtype = np.dtype(_TRITON_TO_NUMPY[data_type])
        self.dims = tuple(int(d) for d in entry.get("dims", []))
        self.optional = bool(entry.get("optional", False))
        # config.pbtxt's reshape: the shape the model itself takes or gives, when it differs
        # from dims (a scalar is dims [1], reshape []: an empty reshape is still a reshape)
        reshape = entry.get("reshape")
        self.reshape = (
            None if reshape is None else tuple(int(d) for d in (reshape or {}).get("shape", []))
        )


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    params = config.get("parameters") or {}
    return {str(k): str((v or {}).get("string_value", "")) for k, v in params.items()}


def _artifact_path(args: dict[str, str], params: dict[str, str], default: str) -> str:
    artifact = params.get("tritonctl.artifact") or default
    path = os.path.join(args["model_repository"], str(args["model_version"]), artifact)
    if not os.path.exists(path):
        raise FileNotFoundError(f"artifact {path} does not exist (tritonctl.artifact={artifact!r})")
    return path


def _int_parameter(params: dict[str, str], key: str, default: int) -> int:
    text = params.get(key, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError as exc:
        raise ValueError(f"parameter {key} must be an integer, got {text!r}") from exc
    if value < 1:
        raise ValueError(f"parameter {key} must be >= 1, got {value}")
    return value


def _reshaped(array: np.ndarray, shape: tuple[int, ...], batched: bool, what: str) -> np.ndarray:
    """``array`` in ``shape``, past the batch dim when batching: config.pbtxt's reshape,
    between what clients send and receive (dims) and what the model takes and gives."""
    target = ((array.shape[0],) if batched and array.ndim else ()) + shape
    try:
        return array.reshape(target)
    except ValueError:
        raise ValueError(
            f"{what} has shape {list(array.shape)}, which cannot be reshaped to {list(target)}"
        ) from None


def _read_inputs(request: Any, inputs: list[_Tensor], batched: bool) -> Feeds:
    feeds: Feeds = {}
    for spec in inputs:
        tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
        if tensor is None:
            if spec.optional:
                continue
            raise ValueError(f"request has no input {spec.name!r}")
        array = tensor.as_numpy()
        if spec.reshape is not None:
            array = _reshaped(array, spec.reshape, batched, f"input {spec.name!r}")
        feeds[spec.name] = array
    return feeds


def _cast(array: Any, spec: _Tensor, batched: bool) -> np.ndarray:
    """``array`` as output ``spec``; a shape the config does not declare, or a data type
    that cannot be converted without changing values, is refused (never truncated)."""
    array = np.asarray(array)
    if spec.reshape is not None:  # the model gives the reshape; clients get the dims
        array = _reshaped(array, spec.dims, batched, f"output {spec.name!r}")
    declared = ((-1,) if batched else ()) + spec.dims
    if len(array.shape) != len(declared) or any(
        d not in (-1, n) for d, n in zip(declared, array.shape, strict=False)
    ):
        raise ValueError(
            f"output {spec.name!r} has shape {list(array.shape)}, the config declares "
            f"{list(declared)}{' (batch dim first)' if batched else ''}"
        )
    if spec.dtype == np.object_:
        if array.dtype.kind not in "OSU":
            raise TypeError(
                f"output {spec.name!r} is {array.dtype}, the config declares {spec.data_type}"
            )
        return np.ascontiguousarray(array.astype(np.object_, copy=False))
    if array.dtype != spec.dtype and not np.can_cast(array.dtype, spec.dtype, "safe"):
        raise TypeError(
            f"output {spec.name!r} is {array.dtype}, the config declares {spec.data_type} "
            f"({spec.dtype}): converting would change its values"
        )
    return np.ascontiguousarray(array.astype(spec.dtype, copy=False))


def _response(outputs: Feeds, specs: list[_Tensor], batched: bool) -> Any:
    tensors = [
        pb_utils.Tensor(spec.name, _cast(outputs[spec.name], spec, batched)) for spec in specs
    ]
    return pb_utils.InferenceResponse(output_tensors=tensors)


def _error_response(exc: BaseException) -> Any:
    message = f"tritonctl {RUNNER} runner: {type(exc).__name__}: {exc}"
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def _batch_key(feeds: Feeds) -> tuple[Any, ...] | None:
    """What requests must share to be concatenated; None when this one cannot be."""
    if not feeds:
        return None
    sizes = set()
    key = []
    for name in sorted(feeds):
        array = feeds[name]
        if array.ndim == 0:
            return None
        sizes.add(array.shape[0])
        key.append((name, array.dtype.str, array.shape[1:]))
    if len(sizes) != 1:
        return None
    return tuple(key)


def _groups(ready: list[tuple[int, Feeds]], batched: bool) -> list[list[tuple[int, Feeds]]]:
    if not batched:
        return [[item] for item in ready]
    groups: dict[Any, list[tuple[int, Feeds]]] = {}
    for item in ready:
        key = _batch_key(item[1])
        groups.setdefault(key if key is not None else ("alone", item[0]), []).append(item)
    return list(groups.values())


def _run_concatenated(
    group: list[tuple[int, Feeds]], run: Callable[[Feeds], Feeds], specs: list[_Tensor]
) -> list[Feeds]:
    names = list(group[0][1])
    sizes = [next(iter(feeds.values())).shape[0] for _, feeds in group]
    joined = {name: np.concatenate([feeds[name] for _, feeds in group]) for name in names}
    outputs = run(joined)
    total = sum(sizes)
    bounds = np.cumsum(sizes)[:-1]
    parts: list[Feeds] = [{} for _ in group]
    for spec in specs:
        array = np.asarray(outputs[spec.name])
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(
                f"output {spec.name!r} has shape {array.shape}, not a batch of {total}: "
                "cannot split it between requests"
            )
        for part, piece in zip(parts, np.split(array, bounds), strict=True):
            part[spec.name] = piece
    return parts


def _execute(
    requests: list[Any],
    inputs: list[_Tensor],
    outputs: list[_Tensor],
    batched: bool,
    run: Callable[[Feeds], Feeds],
) -> list[Any]:
    responses: list[Any] = [None] * len(requests)
    ready: list[tuple[int, Feeds]] = []
    for index, request in enumerate(requests):
        try:
            ready.append((index, _read_inputs(request, inputs, batched)))
        except Exception as exc:
            responses[index] = _error_response(exc)
    for group in _groups(ready, batched):
        if len(group) > 1:
            try:
                parts = _run_concatenated(group, run, outputs)
            except Exception as exc:
                _log("warn", f"a batch of {len(group)} requests failed ({exc}); one by one now")
            else:
                for (index, _), part in zip(group, parts, strict=True):
                    try:
                        responses[index] = _response(part, outputs, batched)
                    except Exception as exc:
                        responses[index] = _error_response(exc)
                continue
        for index, feeds in group:
            try:
                responses[index] = _response(run(feeds), outputs, batched)
            except Exception as exc:
                responses[index] = _error_response(exc)
    return responses


# --- the ONNX runner ----------------------------------------------------------------------


def _as_text(array: np.ndarray, name: str) -> np.ndarray:
    """A BYTES tensor (bytes objects, as Triton hands them over) as the str objects that
    ONNX Runtime takes for a string tensor: it would make ``"b'...'"`` of a bytes object.
    Bytes that are not UTF-8 are refused (naming the input), never altered."""
    text = np.empty(array.shape, dtype=object)
    flat = text.reshape(-1)
    for i, item in enumerate(array.reshape(-1)):
        if isinstance(item, (bytes, np.bytes_)):
            try:
                item = bytes(item).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"input {name!r}: element {i} is not UTF-8 text ({exc.reason}); the "
                    "model's string tensor takes text"
                ) from None
        flat[i] = item
    return text


_ORT_TO_NUMPY: dict[str, Any] = {
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(float16)": np.float16,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(string)": np.object_,
}


class TritonPythonModel:
    """Triton's entry point: one instance per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = _parameters(config)
        self.inputs = [_Tensor(e) for e in config.get("input", [])]
        self.outputs = [_Tensor(e) for e in config.get("output", [])]
        if not self.inputs or not self.outputs:
            raise ValueError("the model config must declare inputs and outputs")
        self.batched = int(config.get("max_batch_size", 0) or 0) > 0
        path = _artifact_path(args, params, DEFAULT_ARTIFACT)
        threads = _int_parameter(params, "tritonctl.threads", 1)

        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers: list[Any] = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU":
            device_id = int(args.get("model_instance_device_id", 0) or 0)
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers = [("CUDAExecutionProvider", {"device_id": device_id}), *providers]
            else:
                _log(
                    "warn",
                    "instance kind is GPU but onnxruntime has no CUDAExecutionProvider "
                    f"(available: {ort.get_available_providers()}); running on CPU",
                )
        self.session = ort.InferenceSession(path, sess_options=options, providers=providers)

        graph_inputs = {i.name: i for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        for spec in self.inputs:
            if spec.name not in graph_inputs:
                raise ValueError(
                    f"config input {spec.name!r} is not an input of {path} "
                    f"(graph inputs: {sorted(graph_inputs)})"
                )
        missing = sorted(set(graph_inputs) - {s.name for s in self.inputs})
        if missing:
            raise ValueError(f"graph inputs {missing} of {path} are not in the model config")
        for spec in self.outputs:
            if spec.name not in graph_outputs:
                raise ValueError(
                    f"config output {spec.name!r} is not an output of {path} "
                    f"(graph outputs: {sorted(graph_outputs)})"
                )
        if not self.batched:
            # Triton has no scalar tensor without batching (it refuses an empty reshape
            # there): dims [1] carries a scalar of the graph, which the model gets as one
            shapes = {i.name: i.shape for i in self.session.get_inputs()}
            shapes.update({o.name: o.shape for o in self.session.get_outputs()})
            for spec in (*self.inputs, *self.outputs):
                if spec.reshape is None and spec.dims == (1,) and shapes.get(spec.name) == []:
                    spec.reshape = ()
        self.feed_dtypes = {
            name: np.dtype(_ORT_TO_NUMPY[i.type])
            for name, i in graph_inputs.items()
            if i.type in _ORT_TO_NUMPY
        }
        self.output_names = [spec.name for spec in self.outputs]
        _log(
            "info",
            f"loaded {path} (providers {self.session.get_providers()}, {threads} thread(s), "
            f"{'batched' if self.batched else 'unbatched'})",
        )

    def _run(self, feeds: Feeds) -> Feeds:
        converted = {}
        for name, array in feeds.items():
            want = self.feed_dtypes.get(name)
            if want == np.object_:
                array = _as_text(array, name)
            elif want is not None and array.dtype != want:
                array = array.astype(want)
            converted[name] = array
        results = self.session.run(self.output_names, converted)
        return dict(zip(self.output_names, results, strict=True))

    def execute(self, requests: list[Any]) -> list[Any]:
        return _execute(requests, self.inputs, self.outputs, self.batched, self._run)

    def finalize(self) -> None:
        self.session = None
        _log("info", "session released")
