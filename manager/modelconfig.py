"""Reading and writing ``config.pbtxt`` through the protobuf ``ModelConfig``.

Every config the manager writes goes through :func:`config_to_text` and is parsed
back with :func:`config_from_text`; nothing is produced by string formatting of the
config's fields.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from manager.errors import ConfigError
from manager.repository import write_text_atomic

ModelConfig = mc.ModelConfig

# Triton data type names (as in the inference protocol, without the TYPE_ prefix).
DTYPES: tuple[str, ...] = tuple(
    n.removeprefix("TYPE_") for n, _ in mc.DataType.items() if n != "TYPE_INVALID"
)

_NUMPY_TO_TRITON: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "object": "STRING",
    "bytes": "STRING",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, Triton dtype (``FP32``...) and dims.

    ``dims`` never includes the batch dimension; ``-1`` is a dynamic dimension.
    ``STRING`` is Triton's ``BYTES``. ``reshape`` is the shape the model itself takes or
    gives when it differs from ``dims`` (config.pbtxt's ``reshape``): a scalar is
    ``dims [1]`` with ``reshape []``, since Triton needs at least one dim.
    """

    name: str
    dtype: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("tensor name must not be empty")
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"tensor {self.name!r}: unknown data type {self.dtype!r} "
                f"(known: {', '.join(DTYPES)})"
            )
        for d in self.dims:
            if isinstance(d, bool) or not isinstance(d, int) or (d < 1 and d != -1):
                raise ConfigError(
                    f"tensor {self.name!r}: dims must be positive integers or -1, got {self.dims}"
                )
        for d in self.reshape or ():
            if isinstance(d, bool) or not isinstance(d, int) or (d < 1 and d != -1):
                raise ConfigError(
                    f"tensor {self.name!r}: reshape must be positive integers or -1, got "
                    f"{self.reshape}"
                )

    @property
    def model_dims(self) -> tuple[int, ...]:
        """The dims the model itself has: ``reshape`` where given, else ``dims``."""
        return self.dims if self.reshape is None else self.reshape

    @classmethod
    def parse(cls, text: str) -> TensorSpec:
        """Parse ``NAME:DTYPE:DIMS`` as given on the command line, e.g. ``x:FP32:-1,4``.

        ``BYTES`` is accepted for ``STRING``. DIMS may not be empty: Triton needs at least
        one dim (a scalar per batch item is ``1``).
        """
        parts = text.split(":")
        if len(parts) != 3:
            raise ConfigError(f"tensor {text!r}: expected NAME:DTYPE:DIMS, e.g. x:FP32:-1,4")
        name, dtype, dims_text = parts
        dtype = dtype.upper().removeprefix("TYPE_")
        if dtype == "BYTES":
            dtype = "STRING"
        try:
            dims = tuple(int(d) for d in dims_text.split(",") if d.strip() != "")
        except ValueError as exc:
            raise ConfigError(f"tensor {text!r}: dims must be integers") from exc
        if not dims:
            raise ConfigError(
                f"tensor {text!r}: no dims; Triton needs at least one (e.g. {name}:{dtype}:1 "
                "for a scalar per batch item, -1 for any length)"
            )
        return cls(name=name, dtype=dtype, dims=dims)

    def describe(self) -> str:
        reshape = "" if self.reshape is None else f" reshape {list(self.reshape)}"
        return f"{self.name} {self.dtype}{list(self.dims)}{reshape}"


def numpy_to_triton_dtype(dtype: np.dtype | type | str) -> str:
    """Map a numpy dtype to a Triton dtype name (``float32`` -> ``FP32``)."""
    key = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if key.startswith(("bytes", "str")):
        return "STRING"
    try:
        return _NUMPY_TO_TRITON[key]
    except KeyError as exc:
        raise ConfigError(f"no Triton data type for numpy dtype {key!r}") from exc


def triton_dtype_enum(dtype: str) -> int:
    return int(mc.DataType.Value("TYPE_" + dtype))


def triton_dtype_name(value: int) -> str:
    return str(mc.DataType.Name(value)).removeprefix("TYPE_")


def protocol_dtype(dtype: str) -> str:
    """The datatype string of the inference protocol (``STRING`` is ``BYTES`` there)."""
    return "BYTES" if dtype == "STRING" else dtype


def config_to_text(config: mc.ModelConfig) -> str:
    """Serialise a ModelConfig to pbtxt.

    proto3 drops scalar fields equal to their default, so ``max_batch_size: 0`` would
    vanish and Triton's auto-complete could then pick a batch size of its own. The
    field is therefore always written, also when it is 0.
    """
    body = text_format.MessageToString(config)
    if config.max_batch_size == 0:
        lines = body.splitlines(keepends=True)
        # keep `name`/`platform`/`backend` first for readability
        at = 0
        while at < len(lines) and lines[at].split(":")[0] in ("name", "platform", "backend"):
            at += 1
        lines.insert(at, "max_batch_size: 0\n")
        body = "".join(lines)
    return body


def config_from_text(text: str, *, source: str = "config.pbtxt") -> mc.ModelConfig:
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"{source}: cannot parse: {exc}") from exc
    return config


def read_config(path: str | os.PathLike[str]) -> mc.ModelConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror or exc}") from exc
    return config_from_text(text, source=str(p))


def write_config(path: str | os.PathLike[str], config: mc.ModelConfig) -> None:
    """Write ``config`` to ``path`` atomically, after checking that its text parses back
    to the same message."""
    text = config_to_text(config)
    if (
        config_from_text(text, source=str(path)) != config
    ):  # pragma: no cover - protobuf guarantees this
        raise ConfigError(f"config for {config.name!r} does not survive a round trip")
    write_text_atomic(Path(path), text)


def tensor_to_proto(spec: TensorSpec, cls: type) -> object:
    t = cls()
    t.name = spec.name
    t.data_type = triton_dtype_enum(spec.dtype)
    t.dims.extend(spec.dims)
    if spec.reshape is not None:
        t.reshape.SetInParent()  # an empty shape (a scalar) is a reshape too
        t.reshape.shape.extend(spec.reshape)
    return t


def tensors_from_config(
    entries: Iterable[mc.ModelInput] | Iterable[mc.ModelOutput],
) -> list[TensorSpec]:
    specs = []
    for e in entries:
        dims = tuple(int(d) for d in e.dims)
        reshape = tuple(int(d) for d in e.reshape.shape) if e.HasField("reshape") else None
        specs.append(TensorSpec(e.name, triton_dtype_name(e.data_type), dims, reshape))
    return specs


def build_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch_size: int = 0,
    platform: str = "",
    backend: str = "",
    instance_count: int = 1,
    kind: str = "auto",
    default_model_filename: str = "",
    parameters: dict[str, str] | None = None,
    dynamic_batching: bool = False,
) -> mc.ModelConfig:
    """Build a ModelConfig for a single model (not an ensemble)."""
    if max_batch_size < 0:
        raise ConfigError(f"max_batch_size must be >= 0, got {max_batch_size}")
    if instance_count < 1:
        raise ConfigError(f"instance count must be >= 1, got {instance_count}")
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    if platform:
        config.platform = platform
    if backend:
        config.backend = backend
    for spec in inputs:
        config.input.append(tensor_to_proto(spec, mc.ModelInput))
    for spec in outputs:
        config.output.append(tensor_to_proto(spec, mc.ModelOutput))
    group = config.instance_group.add()
    group.count = instance_count
    kinds = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
    try:
        group.kind = mc.ModelInstanceGroup.Kind.Value(kinds[kind])
    except KeyError as exc:
        raise ConfigError(f"unknown instance kind {kind!r} (auto, cpu or gpu)") from exc
    if default_model_filename:
        config.default_model_filename = default_model_filename
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    if dynamic_batching and max_batch_size > 0:
        config.dynamic_batching.SetInParent()
    return config


def config_parameters(config: mc.ModelConfig) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def is_decoupled(config: mc.ModelConfig) -> bool:
    """Whether a model answers each request with a stream of responses (its
    ``model_transaction_policy`` is decoupled): its clients call it with a gRPC stream."""
    return bool(config.model_transaction_policy.decoupled)


def sequence_idle_seconds(config: mc.ModelConfig) -> float:
    """How long a stateful model's sequence batcher keeps a sequence that gets no request
    (``max_sequence_idle_microseconds``, Triton's default 1 s); 0 for a stateless model."""
    if not config.HasField("sequence_batching"):
        return 0.0
    return (config.sequence_batching.max_sequence_idle_microseconds or 1_000_000) / 1e6
