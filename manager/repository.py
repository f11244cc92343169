"""The model repository on disk: models, integer versions, and their provenance.

Layout::

    <repo>/<model>/config.pbtxt          one config per model, as Triton reads it
    <repo>/<model>/<N>/...               integer version folders
    <repo>/<model>/<N>/tritonctl.json    provenance of that version
    <repo>/.tritonctl/                   the manager's own folder (locks, staging, state)

Triton lists every folder of the repository in its index, the manager's own included;
names starting with ``.`` are never models.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from manager.errors import InvalidNameError, ModelNotFoundError, RepositoryError
from manager.names import validate_model_name
from manager.settings import META_DIR

log = logging.getLogger(__name__)

PROVENANCE_FILE = "tritonctl.json"
CONFIG_FILE = "config.pbtxt"
LOCK_TIMEOUT_S = 600.0
# the file in a staging folder whose lock its publisher holds while it runs
STAGING_CLAIM = ".publishing.lock"
ASYNC_LOCK_POLL_S = 0.05
# the model locks each thread holds (path -> depth): Repository.lock is reentrant per thread
_HELD = threading.local()


@dataclass
class VersionInfo:
    """One version folder and what the manager recorded about it."""

    model: str
    version: int
    path: Path
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "path": str(self.path),
            **self.provenance,
        }


def read_json_entries(path: Path, key: str, what: str) -> dict[str, dict[str, Any]]:
    """The objects under ``key`` in the JSON file ``path`` (the manager's own records):
    {} when the file is missing, or unreadable (logged, naming it ``what``)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s %s: %s", what, path, exc)
        return {}
    entries = data.get(key) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        return {}
    return {str(k): v for k, v in entries.items() if isinstance(v, dict)}


@contextmanager
def held_if_free(lock: FileLock) -> Iterator[bool]:
    """Hold ``lock`` for the block if no one else holds it (never waits); yields whether
    this process holds it."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


class Repository:
    """A Triton model repository folder."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Repository({str(self.path)!r})"

    # -- layout -------------------------------------------------------------------------
    @property
    def meta_dir(self) -> Path:
        return self.path / META_DIR

    def require(self) -> None:
        """Raise unless the repository folder exists."""
        if not self.path.is_dir():
            raise RepositoryError(f"model repository {self.path} does not exist")

    def ensure(self) -> None:
        """Create the repository and its manager folder if they do not exist."""
        if self.path.exists() and not self.path.is_dir():
            raise RepositoryError(f"model repository {self.path} is not a folder")
        self.meta_dir.mkdir(parents=True, exist_ok=True)

    def model_dir(self, name: str) -> Path:
        return self.path / validate_model_name(name)

    def config_path(self, name: str) -> Path:
        return self.model_dir(name) / CONFIG_FILE

    def version_dir(self, name: str, version: int) -> Path:
        return self.model_dir(name) / str(version)

    # -- reading ------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Names of the models in the repository, sorted."""
        if not self.path.is_dir():
            return []
        return sorted(
            p.name for p in self.path.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def has_model(self, name: str) -> bool:
        return self.model_dir(name).is_dir()

    def versions(self, name: str) -> list[int]:
        """Integer versions of ``name``, ascending. Raises if the model is unknown."""
        mdir = self.model_dir(name)
        if not mdir.is_dir():
            raise ModelNotFoundError(f"model {name!r} is not in repository {self.path}")
        return sorted(int(p.name) for p in mdir.iterdir() if p.is_dir() and is_version_name(p.name))

    def version_info(self, name: str) -> list[VersionInfo]:
        return [self.get_version(name, v) for v in self.versions(name)]

    def get_version(self, name: str, version: int) -> VersionInfo:
        vdir = self.version_dir(name, version)
        if not vdir.is_dir():
            raise ModelNotFoundError(f"model {name!r} has no version {version} in {self.path}")
        return VersionInfo(name, version, vdir, read_provenance(vdir))

    # -- locking and staging -----------------------------------------------------------
    @contextmanager
    def lock(self, name: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the per-model write lock (publishers, pruners, loads of ``name`` and the
        endpoint changes that serve it take turns). A thread that holds it already takes
        it again at once (an endpoint change that loads the model holds it throughout)."""
        self.ensure()
        path = self._lock_path(name)
        held: dict[str, int] = _HELD.__dict__.setdefault("counts", {})
        if held.get(path):
            held[path] += 1
            try:
                yield
            finally:
                held[path] -= 1
            return
        lock = FileLock(path)
        try:
            with lock.acquire(timeout=timeout):
                held[path] = 1
                try:
                    yield
                finally:
                    held[path] = 0
        except Timeout as exc:
            raise RepositoryError(
                f"model {name!r} is locked by another tritonctl process (waited {timeout:.0f} s)"
            ) from exc

    @asynccontextmanager
    async def alock(self, name: str, timeout: float = LOCK_TIMEOUT_S) -> AsyncIterator[None]:
        """The asyncio form of :meth:`lock`: the event loop runs on while it waits (each
        try is a non-blocking one), and a cancelled wait holds nothing."""
        self.ensure()
        lock = FileLock(self._lock_path(name))
        deadline = time.monotonic() + timeout
        while True:
            try:
                lock.acquire(timeout=0)
                break
            except Timeout:
                if time.monotonic() >= deadline:
                    raise RepositoryError(
                        f"model {name!r} is locked by another tritonctl process "
                        f"(waited {timeout:.0f} s)"
                    ) from None
                await asyncio.sleep(ASYNC_LOCK_POLL_S)
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def try_lock(self, name: str) -> Iterator[bool]:
        """Hold ``name``'s write lock if no one else does; yields whether it is held."""
        with held_if_free(FileLock(self._lock_path(name))) as held:
            yield held

    def _lock_path(self, name: str) -> str:
        """The file of model ``name``'s write lock (its folder made if need be)."""
        lock_dir = self.meta_dir / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        return str((lock_dir / f"{validate_model_name(name)}.lock").resolve())

    def staging_leftovers(self) -> list[tuple[str, Path]]:
        """(model name, folder) of everything in the staging folder, sorted. A folder whose
        model's lock is free is what a killed publisher left; one whose lock is held may
        be a publish in progress."""
        root = self.meta_dir / "staging"
        if not root.is_dir():
            return []
        return sorted((p.name.rsplit(".", 1)[0], p) for p in root.iterdir())

    def clear_abandoned_staging(self) -> list[Path]:
        """Remove the staging folders of every model that no publisher holds the lock of,
        and that no publisher has claimed (killed publishes can leave gigabytes there);
        return what was removed."""
        removed = []
        by_model: dict[str, list[Path]] = {}
        for model, path in self.staging_leftovers():
            by_model.setdefault(model, []).append(path)
        for model, paths in by_model.items():
            try:
                validate_model_name(model)
            except InvalidNameError:
                continue  # not a folder tritonctl made: leave it to a person
            with self.try_lock(model) as held:
                if not held:
                    continue  # a publish of that model is running
                for path in paths:
                    if _remove_unclaimed(path):
                        removed.append(path)
        return removed

    def staging_dir(self, name: str) -> Path:
        """A fresh folder on the repository's filesystem to build into (renames are atomic)."""
        root = self.meta_dir / "staging"
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"{name}.{uuid.uuid4().hex[:12]}"
        path.mkdir()
        return path

    @contextmanager
    def claimed_staging(self, name: str) -> Iterator[Path]:
        """A fresh staging folder for ``name``, claimed while the block runs (the cleaners
        leave a claimed folder alone, even while no one holds the model's lock: a publish
        copies its artifact without the lock) and removed when it ends. Enter it under
        ``lock(name)``, so that no cleaner sees the folder before its claim."""
        path = self.staging_dir(name)
        claim = FileLock(str(path / STAGING_CLAIM))
        claim.acquire(timeout=0)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            claim.release()

    def clear_stale_staging(self, name: str) -> None:
        """Remove what killed publishers of ``name`` left behind (not the folders that
        running publishers claimed). Call under ``lock(name)``."""
        root = self.meta_dir / "staging"
        if not root.is_dir():
            return
        for p in root.glob(f"{name}.*"):
            if p.name.rsplit(".", 1)[0] == name:
                _remove_unclaimed(p)

    def remove_version(self, name: str, version: int) -> None:
        """Take a version out of the repository in one rename, then delete it."""
        self.discard(self.version_dir(name, version))

    def discard(self, path: Path) -> None:
        """Take ``path`` out of the repository in one rename (readers see it whole or not
        at all), then delete it."""
        trash = self.meta_dir / "trash"
        trash.mkdir(parents=True, exist_ok=True)
        target = trash / f"{path.name}.{uuid.uuid4().hex[:8]}"
        os.rename(path, target)
        shutil.rmtree(target, ignore_errors=True)


def staging_claimed(path: Path) -> bool:
    """Whether a running publisher has claimed the staging folder ``path``."""
    try:
        with held_if_free(FileLock(str(path / STAGING_CLAIM))) as free:
            return not free
    except OSError:  # gone meanwhile, or not a folder
        return False


def _remove_unclaimed(path: Path) -> bool:
    """Remove the staging folder ``path`` unless a running publisher claimed it."""
    if staging_claimed(path):
        return False
    log.info("removing stale staging folder %s", path)
    shutil.rmtree(path, ignore_errors=True)
    return True


def is_version_name(text: str) -> bool:
    return text.isdigit() and text.isascii() and int(text) > 0 and not text.startswith("0")


def read_provenance(version_dir: Path) -> dict[str, Any]:
    path = version_dir / PROVENANCE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"cannot read provenance {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise RepositoryError(f"provenance {path} is not a JSON object")
    return data


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` so that readers see the old or the new file, never half."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a synced temporary file and a rename."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename (a process
    that has the old file open or mapped keeps it)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
