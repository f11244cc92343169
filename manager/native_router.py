"""The native endpoint router: a small Triton backend in C++ (``triton_backends/router_native``).

While an endpoint's traffic is split, the endpoint model is a router. The native router
hands each request to its target inside the tritonserver process (Triton's
in-process inference API, the request's input buffers passed on without a copy), so the
split costs a few microseconds per request instead of two trips through a Python-backend
stub process. The Python-backend router (``triton_backends/router/model.py``) does the
same job where no native router can be built.

The library is built from source on first use with the host's C++ compiler (``$CXX``,
else ``c++``/``g++``/``clang++``), into ``$TRITONCTL_CACHE_DIR`` (default
``~/.cache/tritonctl``) under a name that carries the digest of its source and flags, and
copied into the endpoint's version folder (``NAME/1/``), where Triton looks for a
model's backend library first. The copy is named after the library's own digest (backend
``tritonctl_router_<digest>``): Triton keeps a backend loaded by its library path for as
long as the server runs, so a rebuilt router must come under a new path to be used. ``$TRITONCTL_ROUTER_LIBRARY`` names a library built
elsewhere (the Docker image builds it when the image is built). ``tritonctl router build``
builds it ahead of time.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from filelock import FileLock

from manager.errors import EndpointError
from manager.filecopy import sha256_of

log = logging.getLogger(__name__)

BACKEND_NAME = "tritonctl_router"
LIBRARY_NAME = f"libtriton_{BACKEND_NAME}.so"
LIBRARY_ENV = "TRITONCTL_ROUTER_LIBRARY"
CACHE_ENV = "TRITONCTL_CACHE_DIR"
SOURCES = ("router.cc", "triton_api.h", "exports.map")
# static libstdc++: the library does not depend on the C++ runtime of the server's image
FLAGS = (
    "-std=c++17",
    "-O2",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    "-fno-gnu-unique",  # a library with unique symbols could never be unloaded
    "-pthread",
    "-static-libstdc++",
    "-static-libgcc",
)
BUILD_TIMEOUT_S = 300.0


class RouterBuildError(EndpointError):
    """The native router library cannot be built or found."""


def library_digest(library: Path) -> str:
    """sha256 of ``library``; computed once per file version (path, inode, size, mtime:
    builds replace the file, so a new build is a new inode), as a split asks for it more
    than once."""
    st = Path(library).stat()
    return _digest(str(Path(library).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest(path: str, inode: int, size: int, mtime_ns: int) -> str:
    return sha256_of(Path(path))


def backend_name(library: Path) -> str:
    """The backend name an endpoint uses ``library`` under: the base name and the
    library's digest, so that each build has its own path in the endpoint's folder."""
    return f"{BACKEND_NAME}_{library_digest(library)[:16]}"


def library_file(backend: str) -> str:
    """The file name Triton looks for when a model's backend is ``backend``."""
    return f"libtriton_{backend}.so"


def is_native_backend(backend: str) -> bool:
    """Whether a model config's ``backend`` is the native router (any build)."""
    return backend == BACKEND_NAME or backend.startswith(BACKEND_NAME + "_")


def source_dir() -> Path:
    """``triton_backends/router_native`` of this installation."""
    path = Path(str(resources.files("triton_backends").joinpath("router_native")))
    missing = [name for name in SOURCES if not (path / name).is_file()]
    if missing:
        raise RouterBuildError(f"the native router's source is missing from {path}: {missing}")
    return path


def source_digest() -> str:
    """A digest of the router's source and build flags (names the cached library)."""
    digest = hashlib.sha256()
    src = source_dir()
    for name in SOURCES:
        digest.update(name.encode())
        digest.update((src / name).read_bytes())
    digest.update(" ".join(FLAGS).encode())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tritonctl"


def cached_library() -> Path:
    """Where the library built from this installation's source lives."""
    return cache_dir() / f"router-{source_digest()}" / LIBRARY_NAME


def find_compiler() -> str | None:
    explicit = os.environ.get("CXX")
    if explicit:
        return shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def build(output: Path | None = None, *, compiler: str | None = None, reuse: bool = False) -> Path:
    """Compile the router into ``output`` (default :func:`cached_library`); returns it.

    The library is written to a temporary name and renamed into place, under a file lock,
    so concurrent builders and a server loading the library never see half a file. With
    ``reuse``, a library another process finished while this one waited for the lock is
    kept as it is.
    """
    target = Path(output) if output is not None else cached_library()
    cxx = compiler or find_compiler()
    if cxx is None:
        raise RouterBuildError(
            "no C++ compiler found (set CXX, or install g++) to build the native router"
        )
    src = source_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if reuse and target.is_file():
            return target
        fd, tmp_name = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
        os.close(fd)
        # exports.map: only the TRITONBACKEND_* entry points are exported
        command = [
            cxx,
            *FLAGS,
            f"-Wl,--version-script={src / 'exports.map'}",
            "-o",
            tmp_name,
            str(src / "router.cc"),
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
            )
            if result.returncode != 0:
                detail = (result.stderr or result.stdout).strip()[-2000:]
                raise RouterBuildError(
                    f"building the native router failed ({' '.join(command)}):\n{detail}"
                )
            os.chmod(tmp_name, 0o755)
            os.replace(tmp_name, target)
        except subprocess.TimeoutExpired as exc:
            raise RouterBuildError(f"building the native router took over {exc.timeout} s") from exc
        finally:
            Path(tmp_name).unlink(missing_ok=True)
    log.info("native router built: %s", target)
    return target


def find_library(*, build_if_missing: bool = True) -> Path:
    """The native router library: ``$TRITONCTL_ROUTER_LIBRARY``, else the cached build of
    this installation's source (built now if missing and ``build_if_missing``)."""
    explicit = os.environ.get(LIBRARY_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise RouterBuildError(f"{LIBRARY_ENV}={explicit} is not a file")
        return path
    path = cached_library()
    if path.is_file():
        return path
    if not build_if_missing:
        raise RouterBuildError(f"the native router is not built ({path})")
    return build(path, reuse=True)


def available() -> Path | None:
    """The library if there is one or it can be built now; None (logged) otherwise."""
    try:
        return find_library()
    except RouterBuildError as exc:
        log.warning("native router unavailable, using the Python-backend router: %s", exc)
        return None


__all__ = [
    "BACKEND_NAME",
    "LIBRARY_ENV",
    "LIBRARY_NAME",
    "RouterBuildError",
    "available",
    "backend_name",
    "build",
    "cached_library",
    "find_compiler",
    "find_library",
    "is_native_backend",
    "library_digest",
    "library_file",
    "source_digest",
]
