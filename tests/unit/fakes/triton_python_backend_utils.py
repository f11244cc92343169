"""A fake ``triton_python_backend_utils`` for unit tests of Python-backend models.

Inside Triton the stub process provides this module. The fake mirrors the parts the
runners use and is stricter where the real one would fail later: tensors must be numpy
arrays of a type Triton can carry, input arrays are read-only (Triton hands out views
of its buffers), and a response carries either outputs or an error.

Install it with :func:`install` (puts it into ``sys.modules`` under the real name).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

_TRITON_DTYPES = (
    np.bool_,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
    np.object_,
    np.bytes_,
)


class Tensor:
    """A named numpy array, as ``pb_utils.Tensor``."""

    def __init__(self, name: str, array: np.ndarray) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError("a Tensor needs a non-empty name")
        if not isinstance(array, np.ndarray):
            raise TypeError(f"Tensor {name!r}: expected a numpy array, got {type(array).__name__}")
        if array.dtype.type not in _TRITON_DTYPES:
            raise TypeError(f"Tensor {name!r}: Triton has no data type for numpy {array.dtype}")
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True


def input_tensor(name: str, array: Any) -> Tensor:
    """A request input as Triton delivers it: a read-only array."""
    data = np.array(array, copy=True)
    data.flags.writeable = False
    return Tensor(name, data)


class InferenceRequest:
    """Holds input tensors; what ``execute`` receives."""

    def __init__(
        self,
        inputs: Iterable[Tensor] = (),
        requested_output_names: Sequence[str] = (),
        request_id: str = "",
    ) -> None:
        self._inputs = list(inputs)
        self._requested = list(requested_output_names)
        self._id = request_id

    @classmethod
    def of(cls, **arrays: Any) -> InferenceRequest:
        """``InferenceRequest.of(x=np.ones((1, 4)))``."""
        return cls([input_tensor(name, value) for name, value in arrays.items()])

    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def requested_output_names(self) -> list[str]:
        return list(self._requested)

    def request_id(self) -> str:
        return self._id


class TritonError:
    """An error carried by a response."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = 0) -> None:
        self._message = str(message)
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r})"


class TritonModelException(Exception):
    """Raised by the real module for errors inside the backend utilities."""


class InferenceResponse:
    """Output tensors, or an error."""

    def __init__(
        self, output_tensors: Sequence[Tensor] | None = None, error: TritonError | None = None
    ) -> None:
        tensors = list(output_tensors or [])
        for t in tensors:
            if not isinstance(t, Tensor):
                raise TypeError(f"output_tensors must hold Tensors, got {type(t).__name__}")
        if error is not None and not isinstance(error, TritonError):
            raise TypeError(f"error must be a TritonError, got {type(error).__name__}")
        self._tensors = tensors
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return list(self._tensors)

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


class Logger:
    """Collects log lines (``Logger.records``) instead of writing to Triton's log."""

    records: list[tuple[str, str]] = []

    @classmethod
    def log(cls, message: str, level: str = "info") -> None:
        cls.records.append((level, message))

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.records.append(("info", message))

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls.records.append(("warn", message))

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.records.append(("error", message))

    @classmethod
    def log_verbose(cls, message: str) -> None:
        cls.records.append(("verbose", message))


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    for entry in model_config.get("input", []):
        if entry["name"] == name:
            return dict(entry)
    return None


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    for entry in model_config.get("output", []):
        if entry["name"] == name:
            return dict(entry)
    return None


# the flag of a decoupled model's last response (``ResponseSender.send(flags=...)``)
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

TRITON_STRING_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": bool,
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


def triton_string_to_numpy(triton_type_string: str) -> Any:
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def install() -> Any:
    """Make ``import triton_python_backend_utils`` return this module; returns it."""
    module = sys.modules[__name__]
    sys.modules["triton_python_backend_utils"] = module
    return module


def load_backend_module(path: Path, name: str) -> ModuleType:
    """Import the Python-backend file ``path`` as module ``name`` against this fake (the
    real ``triton_python_backend_utils`` only exists inside Triton); sys.modules is left
    as it was."""
    saved = sys.modules.get("triton_python_backend_utils")
    install()
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        if saved is None:
            sys.modules.pop("triton_python_backend_utils", None)
        else:
            sys.modules["triton_python_backend_utils"] = saved
