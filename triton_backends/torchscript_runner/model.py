"""tritonctl TorchScript runner: serves ``model.pt`` with torch inside Triton's Python backend.

The publisher copies this file verbatim into a version folder next to the artifact, so it
is self-contained: at module level it imports only the standard library, numpy and
``triton_python_backend_utils``; torch is imported in ``initialize``.

config.pbtxt parameters read here:

- ``tritonctl.artifact``: the TorchScript file, relative to the version folder (``model.pt``).
- ``tritonctl.threads``: torch CPU threads (``torch.set_num_threads``, default 1).

A TorchScript module carries no tensor names: the config's inputs are passed to
``forward`` positionally in config order, and the outputs are taken by position in config
order from what ``forward`` returns (a tensor, or a tuple/list of tensors; a dict is read
by output name). Each output must have the shape the config declares and its data type,
or one numpy converts to it without changing a value (FP32 to FP64): a model that answers
otherwise gets an error naming the output, never a truncated or reshaped answer. With
``max_batch_size > 0`` the requests of one ``execute`` call whose tensors agree past the
batch dimension run as one batch and the outputs are split back; a failure in such a batch
is retried request by request, so one bad request gets its own error and the others their
answers.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

RUNNER = "torchscript"
DEFAULT_ARTIFACT = "model.pt"

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


# --- the TorchScript runner -----------------------------------------------------------------


class TritonPythonModel:
    """Triton's entry point: one instance per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = _parameters(config)
        self.inputs = [_Tensor(e) for e in config.get("input", [])]
        self.outputs = [_Tensor(e) for e in config.get("output", [])]
        if not self.inputs or not self.outputs:
            raise ValueError("the model config must declare inputs and outputs")
        for spec in self.inputs + self.outputs:
            if spec.dtype == np.object_:
                raise ValueError(f"{spec.name!r}: torch cannot take or give STRING tensors")
        for spec in self.inputs:
            # Inputs are positional: a missing one would shift the others.
            spec.optional = False
        self.batched = int(config.get("max_batch_size", 0) or 0) > 0
        path = _artifact_path(args, params, DEFAULT_ARTIFACT)
        threads = _int_parameter(params, "tritonctl.threads", 1)

        import torch

        self.torch = torch
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device_id = int(args.get("model_instance_device_id", 0) or 0)
            if torch.cuda.is_available():
                device = f"cuda:{device_id}"
            else:
                _log("warn", "instance kind is GPU but torch sees no CUDA device; running on CPU")
        if device == "cpu":
            torch.set_num_threads(threads)
            # only allowed before the first parallel work: best effort
            with contextlib.suppress(RuntimeError):
                torch.set_num_interop_threads(1)
        self.device = torch.device(device)
        self.module = torch.jit.load(path, map_location=self.device)
        self.module.eval()
        _log(
            "info",
            f"loaded {path} on {self.device} ({torch.get_num_threads()} thread(s), "
            f"{'batched' if self.batched else 'unbatched'})",
        )

    def _to_numpy(self, value: Any) -> np.ndarray:
        torch = self.torch
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if value.dtype == torch.bfloat16:
                value = value.float()
            return value.cpu().numpy()
        return np.asarray(value)

    def _run(self, feeds: Feeds) -> Feeds:
        torch = self.torch
        args = []
        for spec in self.inputs:
            array = np.ascontiguousarray(feeds[spec.name])
            if not array.flags.writeable:
                array = array.copy()
            args.append(torch.from_numpy(array).to(self.device))
        with torch.inference_mode():
            result = self.module(*args)
        names = [spec.name for spec in self.outputs]
        if isinstance(result, dict):
            missing = [n for n in names if n not in result]
            if missing:
                raise ValueError(f"forward returned a dict without outputs {missing}")
            values = [result[n] for n in names]
        elif isinstance(result, (tuple, list)):
            values = list(result)
        else:
            values = [result]
        if len(values) != len(names):
            raise ValueError(
                f"forward returned {len(values)} value(s), the config declares "
                f"{len(names)} output(s) {names}"
            )
        return {name: self._to_numpy(v) for name, v in zip(names, values, strict=True)}

    def execute(self, requests: list[Any]) -> list[Any]:
        return _execute(requests, self.inputs, self.outputs, self.batched, self._run)

    def finalize(self) -> None:
        self.module = None
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
        _log("info", "module released")
