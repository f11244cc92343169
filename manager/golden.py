"""Golden requests: inputs with expected outputs, checked against a served model.

A golden folder holds one file per case, either

* ``<case>.npz`` with arrays named ``inputs/<tensor>`` and ``outputs/<tensor>``, or
* ``<case>.json``: ``{"inputs": {"x": {"data": [...], "datatype": "FP32", "shape": [..]}},
  "outputs": {...same...}, "rtol": 1e-5, "atol": 1e-6}``.

Optional ``tolerance.json`` in the folder sets the default ``rtol``/``atol`` of
floating-point outputs; integer and boolean outputs must be equal, text outputs (BYTES)
are compared as UTF-8 bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from manager.errors import ConfigError, ManagerError

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5

_NP_FROM_TRITON = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
    "STRING": np.object_,
}


class GoldenMismatch(ManagerError):
    """A served model's answer differs from a golden expected output."""

    exit_code = 3


@dataclass
class GoldenCase:
    name: str
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL


def _array(spec: Mapping[str, object], where: str) -> np.ndarray:
    try:
        dtype = _NP_FROM_TRITON[str(spec.get("datatype", "FP32")).upper()]
        data = spec["data"]
    except KeyError as exc:
        raise ConfigError(f"{where}: needs 'data' and a known 'datatype'") from exc
    if dtype is np.object_:
        arr = np.array(
            [str(d).encode() for d in np.ravel(np.array(data, dtype=object))], dtype=object
        )
    else:
        arr = np.asarray(data, dtype=dtype)
    shape = spec.get("shape")
    return arr.reshape(shape) if shape is not None else arr  # type: ignore[call-overload]


def load_cases(folder: str | Path) -> list[GoldenCase]:
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"golden folder {root} does not exist")
    defaults = {"rtol": DEFAULT_RTOL, "atol": DEFAULT_ATOL}
    tol = root / "tolerance.json"
    if tol.is_file():
        defaults.update(json.loads(tol.read_text()))
    cases: list[GoldenCase] = []
    for path in sorted(root.iterdir()):
        if path.name == "tolerance.json":
            continue
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=True) as data:
                ins = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("inputs/")}
                outs = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("outputs/")}
            cases.append(GoldenCase(path.stem, ins, outs, defaults["rtol"], defaults["atol"]))
        elif path.suffix == ".json":
            try:
                doc = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
            ins = {k: _array(v, f"{path} input {k}") for k, v in doc.get("inputs", {}).items()}
            outs = {k: _array(v, f"{path} output {k}") for k, v in doc.get("outputs", {}).items()}
            cases.append(
                GoldenCase(
                    path.stem,
                    ins,
                    outs,
                    float(doc.get("rtol", defaults["rtol"])),
                    float(doc.get("atol", defaults["atol"])),
                )
            )
    if not cases:
        raise ConfigError(f"golden folder {root} holds no *.npz or *.json case")
    for case in cases:
        if not case.inputs or not case.expected:  # a golden case always has both
            raise ConfigError(f"golden case {case.name!r} needs inputs and expected outputs")
    return cases


def save_case(
    folder: Path, name: str, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
) -> Path:
    """Write a case as ``<name>.npz`` (how a pipeline records golden outputs)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"inputs/{k}": v for k, v in inputs.items()}
    arrays.update({f"outputs/{k}": v for k, v in outputs.items()})
    path = folder / f"{name}.npz"
    np.savez(path, **arrays)
    return path


def compare(case: GoldenCase, actual: Mapping[str, np.ndarray], *, model: str) -> None:
    """Raise GoldenMismatch naming the first tensor that differs."""
    for tensor, expected in case.expected.items():
        got = actual.get(tensor)
        if got is None:
            raise GoldenMismatch(
                f"{model}: golden case {case.name!r}: output {tensor!r} is missing"
            )
        if got.shape != expected.shape:
            raise GoldenMismatch(
                f"{model}: golden case {case.name!r}: output {tensor!r} has shape "
                f"{list(got.shape)}, expected {list(expected.shape)}"
            )
        if _is_text(expected) or _is_text(got):
            # BYTES answers come back as bytes; a golden file may hold them as str
            differ = as_utf8(got) != as_utf8(expected)
            equal = not bool(differ.any())
            worst = _first_difference(differ, got, expected)
        elif expected.dtype.kind in "biu" and got.dtype.kind in "biu":
            # integers and booleans are exact: a tolerance (relative, through float64)
            # would let an id or a count that is off by one pass
            differ = got != expected
            equal = not bool(differ.any())
            worst = _first_difference(differ, got, expected)
        else:
            equal = bool(np.allclose(got, expected, rtol=case.rtol, atol=case.atol))
            diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
            worst = f"max abs diff {diff:.3g}; rtol {case.rtol}, atol {case.atol}"
        if not equal:
            raise GoldenMismatch(
                f"{model}: golden case {case.name!r}: output {tensor!r} does not match ({worst})"
            )


def _is_text(array: np.ndarray) -> bool:
    return array.dtype.kind in "OSU"


def as_utf8(array: np.ndarray) -> np.ndarray:
    """Text as bytes objects (str encoded as UTF-8), to compare BYTES tensors."""
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1)):
        flat[i] = item.encode() if isinstance(item, str) else item
    return out


def _first_difference(differ: np.ndarray, got: np.ndarray, expected: np.ndarray) -> str:
    if not differ.any():
        return "values differ"
    at = tuple(int(i) for i in np.argwhere(differ)[0])
    return (
        f"{int(differ.sum())} of {differ.size} values differ; at {list(at)}: "
        f"{got[at]!r}, expected {expected[at]!r}"
    )


def check(
    cases: list[GoldenCase],
    run: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    *,
    model: str,
) -> int:
    """Run every case through ``run`` and compare; return the number of cases checked."""
    for case in cases:
        actual = run(case.inputs)
        if not case.expected and not actual:
            raise GoldenMismatch(f"{model}: case {case.name!r} returned no output")
        compare(case, actual, model=model)
    return len(cases)


def synthetic_case(config: ModelConfig) -> GoldenCase:
    """A request of ones for every input (dynamic dims as 1), with no expected values:
    it checks only that the model loads and answers with every output."""
    from manager.modelconfig import triton_dtype_name

    batch = [1] if config.max_batch_size > 0 else []
    inputs: dict[str, np.ndarray] = {}
    for spec in config.input:
        shape = batch + [d if d > 0 else 1 for d in spec.dims]
        dtype = triton_dtype_name(spec.data_type)
        if dtype == "STRING":
            inputs[spec.name] = np.full(shape, b"tritonctl synthetic request", dtype=object)
        else:
            inputs[spec.name] = np.ones(shape, dtype=_NP_FROM_TRITON[dtype])
    return GoldenCase("synthetic", inputs, {})


def _declared(spec: Any, batched: bool) -> tuple[str, list[int]]:
    """A config tensor's Triton data type and full shape (-1 for the batch dim)."""
    from manager.modelconfig import triton_dtype_name

    dims = ([-1] if batched else []) + [int(d) for d in spec.dims]
    return triton_dtype_name(spec.data_type), dims


def _dtype_fits(array: np.ndarray, dtype: str) -> bool:
    if dtype in ("STRING", "BYTES"):
        return array.dtype.kind in "OSU"
    return bool(array.dtype == np.dtype(_NP_FROM_TRITON[dtype]))


def _shape_fits(array: np.ndarray, declared: list[int]) -> bool:
    return len(array.shape) == len(declared) and all(
        d in (-1, n) for d, n in zip(declared, array.shape, strict=True)
    )


def check_inputs_match_config(config: ModelConfig, cases: list[GoldenCase]) -> None:
    """Refuse golden cases whose inputs the model cannot take (ConfigError naming the case
    and the tensor), before anything is loaded: an input the config does not declare, a
    required one missing, another data type or a shape that does not fit its dims."""
    batched = config.max_batch_size > 0
    specs = {spec.name: spec for spec in config.input}
    for case in cases:
        where = f"golden case {case.name!r}"
        for name in case.inputs:
            if name not in specs:
                raise ConfigError(
                    f"{where}: input {name!r} is not an input of {config.name!r} "
                    f"(it takes: {', '.join(specs) or 'none'})"
                )
        for name, spec in specs.items():
            if name not in case.inputs:
                if spec.optional:
                    continue
                raise ConfigError(f"{where}: input {name!r} is missing")
            array = np.asarray(case.inputs[name])
            dtype, declared = _declared(spec, batched)
            if not _dtype_fits(array, dtype):
                raise ConfigError(
                    f"{where}: input {name!r} is {array.dtype}, the model takes {dtype}"
                )
            if not _shape_fits(array, declared):
                raise ConfigError(
                    f"{where}: input {name!r} has shape {list(array.shape)}, the model takes "
                    f"{declared} (-1: any size)"
                )


def check_outputs_match_config(
    config: ModelConfig, outputs: Mapping[str, np.ndarray], *, model: str
) -> None:
    """Refuse answers whose tensors have another data type or shape than ``config`` declares
    (a runner or backend that converted or reshaped them would hide a wrong signature)."""
    batched = config.max_batch_size > 0
    for spec in config.output:
        if spec.name not in outputs:
            continue
        array = np.asarray(outputs[spec.name])
        dtype, declared = _declared(spec, batched)
        if not _dtype_fits(array, dtype):
            raise GoldenMismatch(
                f"{model}: output {spec.name!r} came back as {array.dtype}, the config "
                f"declares {dtype}"
            )
        if not _shape_fits(array, declared):
            raise GoldenMismatch(
                f"{model}: output {spec.name!r} came back with shape {list(array.shape)}, the "
                f"config declares {declared}"
            )
