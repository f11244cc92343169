"""Which runtime serves a published artifact: Triton's native backends, or a Python runner."""

from __future__ import annotations

import os
from pathlib import Path

from manager.errors import ConfigError

RUNTIME_ENV = "TRITONCTL_RUNTIME"
RUNTIMES = ("auto", "native", "python")
_NATIVE_BACKENDS = ("onnxruntime", "pytorch")


def native_backends_available(backends_dir: Path | None = None) -> bool:
    """True when a server with Triton's native ONNX Runtime/PyTorch backends is installed.

    NVIDIA's production image has them under /opt/tritonserver/backends; the embedded
    server from nvidia-pytriton has only the Python backend.
    """
    roots = [backends_dir] if backends_dir else []
    env = os.environ.get("TRITONSERVER")
    if env:
        roots.append(Path(env).resolve().parent.parent / "backends")
    roots.append(Path("/opt/tritonserver/backends"))
    return any(root is not None and (root / b).is_dir() for root in roots for b in _NATIVE_BACKENDS)


def resolve_runtime(requested: str) -> str:
    """Turn ``auto`` into ``native`` or ``python`` for the server this host runs."""
    if requested not in RUNTIMES:
        raise ConfigError(f"unknown runtime {requested!r} (auto, native or python)")
    if requested != "auto":
        return requested
    env = os.environ.get(RUNTIME_ENV, "").strip().lower()
    if env in ("native", "python"):
        return env
    if env not in ("", "auto"):
        raise ConfigError(
            f"{RUNTIME_ENV}={os.environ[RUNTIME_ENV]!r} is not a runtime (native, python or auto)"
        )
    return "native" if native_backends_available() else "python"
