"""Memory footprints of model versions: measured across loads, estimated before the first.

A footprint is what a model version holds while it is loaded. It is measured as the
change of used memory across the version's load (loads are serialized by the controller,
so deltas are clean), after a *fresh* sample of Triton's metrics, and stored in the
repository metadata, ``<repo>/.tritonctl/footprints.json``, keyed ``model:version``, with
how long the load took, when, and how it was measured (``method``):

- ``gpu-metric``: the change of ``nv_gpu_memory_used_bytes`` (per ``gpu_uuid``, summed);
- ``cpu-stub-rss``: on a CPU host with the server on this machine, the resident memory
  (USS where readable, else RSS) of the model's ``triton_python_backend_stub`` processes,
  plus any growth of the server process itself (see ``manager.procmem``);
- ``cpu-process-rss``: the same for a model without stubs (a native backend): the growth
  of the server process;
- ``cpu-metric``: the change of the host-wide ``nv_cpu_memory_used_bytes`` (a remote
  CPU server; noisy, since it moves with everything else on that host);
- ``estimate``: never measured (see :meth:`FootprintStore.estimate`).

Used memory (:class:`Usage`) is read the same way: the GPU metric, the server's process
tree (its processes' PSS summed, each shared page counted once), or the host metric.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
from filelock import FileLock

from manager.errors import ManagerError, RepositoryError
from manager.metrics import MemoryReading, MetricsSource, parse_memory
from manager.modelconfig import read_config
from manager.procmem import (
    DEFAULT_METRICS_INTERVAL_S,
    ProcessMemory,
    host_total_bytes,
    metrics_interval_s,
    read_process_memory,
    wait_stubs_gone,
)
from manager.repository import (
    PROVENANCE_FILE,
    read_json_entries,
    read_provenance,
    write_json_atomic,
)
from manager.server import ServerInfo, running_server
from manager.settings import META_DIR
from manager.versionpolicy import owner_policy, selected_versions

log = logging.getLogger(__name__)

FOOTPRINTS_FILE = "footprints.json"
GPU_METRIC = "gpu-metric"
CPU_STUB_RSS = "cpu-stub-rss"
CPU_PROCESS_RSS = "cpu-process-rss"
CPU_METRIC = "cpu-metric"
ESTIMATE = "estimate"
METHODS = (GPU_METRIC, CPU_STUB_RSS, CPU_PROCESS_RSS, CPU_METRIC, ESTIMATE)

DEFAULT_FACTOR = 1.2
"""Footprint / artifact size assumed before anything was measured (weights + runtime)."""
MIN_FACTOR, MAX_FACTOR = 0.5, 10.0
SMALL_ARTIFACT_BYTES = 2**20
"""Below this an artifact is code (a Python model that builds its state in ``initialize``):
its size says nothing about its memory."""
DEFAULT_CODE_ONLY_BYTES = 32 * 2**20
"""Estimate for a code-only model before any was measured: a Python-backend stub."""


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Footprint:
    """The memory one model version holds while loaded, and how that was found."""

    model: str
    version: int
    bytes: int
    method: str
    measured_at: str | None = None
    load_seconds: float | None = None
    size_bytes: int | None = None
    """The artifact's size when measured (for the estimate of other models)."""
    devices: Mapping[str, int] = field(default_factory=dict)
    """Per-device change (GPU uuid -> bytes) for ``gpu-metric``."""
    host_bytes: int | None = None
    """On a GPU host: the host memory of the model's stubs, for information."""
    basis: str = ""
    """For an estimate: what it was derived from."""

    @property
    def key(self) -> str:
        return f"{self.model}:{self.version}"

    @property
    def measured(self) -> bool:
        return self.method != ESTIMATE

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "bytes": self.bytes,
            "method": self.method,
            "measured_at": self.measured_at,
            "load_seconds": self.load_seconds,
            "size_bytes": self.size_bytes,
        }
        if self.devices:
            data["devices"] = dict(self.devices)
        if self.host_bytes is not None:
            data["host_bytes"] = self.host_bytes
        if self.basis:
            data["basis"] = self.basis
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Footprint:
        try:
            load_seconds = data.get("load_seconds")
            size = data.get("size_bytes")
            host = data.get("host_bytes")
            return cls(
                model=str(data["model"]),
                version=int(data["version"]),
                bytes=int(data["bytes"]),
                method=str(data["method"]),
                measured_at=data.get("measured_at"),
                load_seconds=None if load_seconds is None else float(load_seconds),
                size_bytes=None if size is None else int(size),
                devices={str(k): int(v) for k, v in (data.get("devices") or {}).items()},
                host_bytes=None if host is None else int(host),
                basis=str(data.get("basis") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RepositoryError(f"malformed footprint record {dict(data)!r}: {exc}") from exc


def artifact_size(repo: Path, model: str, version: int) -> int | None:
    """The artifact's size: ``size_bytes`` from the version's provenance, else the size of
    the files in its folder; None if the version folder does not exist."""
    vdir = Path(repo) / model / str(version)
    if not vdir.is_dir():
        return None
    try:
        size = read_provenance(vdir).get("size_bytes")
    except RepositoryError:
        size = None
    if isinstance(size, int) and size > 0:
        return size
    total = 0
    for path in vdir.rglob("*"):
        if path.is_file() and path.name != PROVENANCE_FILE:
            try:
                total += path.stat().st_size
            except OSError:
                continue
    return total


# --------------------------------------------------------------------------- store


class FootprintStore:
    """``<repo>/.tritonctl/footprints.json``: measured footprints and load times.

    Each record also says when that load finished (``loaded_at``, epoch seconds); the
    load times the policies use are kept for every load in :mod:`manager.loadtimes`.
    """

    def __init__(self, repo: Path) -> None:
        self.repo = Path(repo)

    @property
    def path(self) -> Path:
        return self.repo / META_DIR / FOOTPRINTS_FILE

    def _lock(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path.with_name(FOOTPRINTS_FILE + ".lock")), timeout=60)

    def _read(self) -> dict[str, dict[str, Any]]:
        return read_json_entries(self.path, "footprints", "footprints")

    def _update(self, change: Callable[[dict[str, dict[str, Any]]], None]) -> None:
        with self._lock():
            entries = self._read()
            change(entries)
            write_json_atomic(self.path, {"footprints": entries})

    def all(self) -> list[Footprint]:
        """Every measured footprint, sorted by model and version."""
        out = []
        for entry in self._read().values():
            if "bytes" not in entry:
                continue
            try:
                out.append(Footprint.from_json(entry))
            except RepositoryError as exc:
                log.warning("%s: %s", self.path, exc)
        return sorted(out, key=lambda f: (f.model, f.version))

    def get(self, model: str, version: int) -> Footprint | None:
        """The measured footprint of ``model:version``, None if never measured."""
        entry = self._read().get(f"{model}:{version}")
        if not entry or "bytes" not in entry:
            return None
        try:
            return Footprint.from_json(entry)
        except RepositoryError as exc:
            log.warning("%s: %s", self.path, exc)
            return None

    def record(self, footprint: Footprint, *, loaded_at: float | None = None) -> None:
        """Store a measured footprint (replacing the previous one of that version)."""
        if not footprint.measured:
            raise ManagerError("only measured footprints are stored")

        def change(entries: dict[str, dict[str, Any]]) -> None:
            entry = footprint.to_json()
            entry["loaded_at"] = loaded_at if loaded_at is not None else time.time()
            entries[footprint.key] = entry

        self._update(change)
        log.info(
            "footprint of %s: %d bytes (%s, load %.2f s)",
            footprint.key,
            footprint.bytes,
            footprint.method,
            footprint.load_seconds or 0.0,
        )

    def loaded_at(self) -> dict[tuple[str, int], float]:
        """When the manager last loaded each version it measured."""
        out = {}
        for key, entry in self._read().items():
            model, _, version = key.rpartition(":")
            at = entry.get("loaded_at")
            if model and version.isdigit() and isinstance(at, int | float):
                out[(model, int(version))] = float(at)
        return out

    def forget(self, model: str, version: int | None = None) -> None:
        """Drop the records of ``model`` (one version, or all)."""

        def change(entries: dict[str, dict[str, Any]]) -> None:
            for key in list(entries):
                name, _, v = key.rpartition(":")
                if name == model and (version is None or v == str(version)):
                    del entries[key]

        self._update(change)

    # ---------------------------------------------------------------- estimates

    def factor(self, measured: Sequence[Footprint] | None = None) -> float:
        """Footprint / artifact size: the median over measured versions whose artifact is
        at least ``SMALL_ARTIFACT_BYTES`` (``DEFAULT_FACTOR`` before any), clamped."""
        rows = self.all() if measured is None else measured
        ratios = [
            f.bytes / f.size_bytes
            for f in rows
            if f.measured and f.size_bytes and f.size_bytes >= SMALL_ARTIFACT_BYTES
        ]
        if not ratios:
            return DEFAULT_FACTOR
        return min(max(statistics.median(ratios), MIN_FACTOR), MAX_FACTOR)

    def estimate(self, model: str, version: int) -> Footprint:
        """A footprint for a version never measured, from what was measured for others.

        In order: another measured version of the same model (scaled by artifact size when
        both sizes are known); for an artifact of at least 1 MiB, its size x the median
        footprint/size ratio of the measured models (:meth:`factor`); for a code-only
        artifact, the median footprint of the measured code-only models
        (``DEFAULT_CODE_ONLY_BYTES`` before any).
        """
        rows = self.all()
        size = artifact_size(self.repo, model, version)
        same = sorted(
            (f for f in rows if f.model == model and f.version != version),
            key=lambda f: abs(f.version - version),
        )
        if same:
            ref = same[0]
            value = ref.bytes
            basis = f"measured {ref.key}"
            if ref.size_bytes and size and ref.size_bytes >= SMALL_ARTIFACT_BYTES:
                value = int(ref.bytes * size / ref.size_bytes)
                basis += " scaled by artifact size"
            return Footprint(model, version, max(value, 0), ESTIMATE, size_bytes=size, basis=basis)
        if size is not None and size >= SMALL_ARTIFACT_BYTES:
            factor = self.factor(rows)
            return Footprint(
                model,
                version,
                int(size * factor),
                ESTIMATE,
                size_bytes=size,
                basis=f"artifact {size} bytes x {factor:.2f}",
            )
        code_only = [
            f.bytes
            for f in rows
            if f.size_bytes is not None and f.size_bytes < SMALL_ARTIFACT_BYTES
        ]
        if code_only:
            return Footprint(
                model,
                version,
                int(statistics.median(code_only)),
                ESTIMATE,
                size_bytes=size,
                basis=f"median of {len(code_only)} measured code-only models",
            )
        return Footprint(
            model,
            version,
            DEFAULT_CODE_ONLY_BYTES,
            ESTIMATE,
            size_bytes=size,
            basis="default for a code-only model",
        )

    def footprint(self, model: str, version: int) -> Footprint:
        """The measured footprint if there is one, else :meth:`estimate`."""
        return self.get(model, version) or self.estimate(model, version)

    def known(self, model: str, version: int) -> Footprint | None:
        """The measured footprint, else an estimate if the version is in the repository,
        else None (what ``ls`` and ``versions`` show)."""
        measured = self.get(model, version)
        if measured is not None:
            return measured
        if (self.repo / model / str(version)).is_dir() and not _is_ensemble(self.repo / model):
            return self.estimate(model, version)
        return None


LIVE_BASIS = "live"
"""The ``basis`` of a footprint read from the memory a loaded version holds now."""


def loaded_footprint(
    store: FootprintStore,
    model: str,
    version: int,
    live: Mapping[tuple[str, int | None], int] | None = None,
) -> Footprint | None:
    """The memory a *loaded* version holds, as ``ls`` and the eviction plan both show it.

    ``live``: bytes per loaded version read now (:attr:`Usage.per_version`, the resident
    memory of Python-backend stubs on a local CPU server); a version found there is what
    evicting it frees. Otherwise the measured footprint, else the estimate (None for an
    ensemble, which holds nothing of its own).
    """
    live = live or {}
    if (model, version) in live or (model, None) in live:
        return Footprint(
            model,
            version,
            live.get((model, version), 0) + live.get((model, None), 0),
            CPU_STUB_RSS,
            measured_at=_now_iso(),
            basis=LIVE_BASIS,
        )
    return store.known(model, version)


def _is_ensemble(model_dir: Path) -> bool:
    """An ensemble holds no memory of its own: its steps' models do."""
    try:
        return read_config(model_dir / "config.pbtxt").platform == "ensemble"
    except ManagerError:
        return False


def footprint_fields(footprint: Footprint | None) -> dict[str, Any]:
    """The JSON keys ``ls --json`` and ``versions --json`` add to a model version."""
    if footprint is None:
        return {
            "footprint_bytes": None,
            "footprint_method": None,
            "footprint_measured_at": None,
            "load_seconds": None,
        }
    return {
        "footprint_bytes": footprint.bytes,
        "footprint_method": footprint.method,
        "footprint_measured_at": footprint.measured_at,
        "load_seconds": footprint.load_seconds,
    }


def predicted_versions(
    repo: Path, model: str, version: int | None, *, as_written: bool = False
) -> list[int]:
    """The versions a load of ``model`` (``version`` only, if given) will bring up.

    Follows the version policy of the model's owner (see :mod:`manager.versionpolicy`:
    while endpoints manage ``<repo>/<model>/config.pbtxt``'s policy, the one it had before)
    or, ``as_written``, the policy in config.pbtxt now (what Triton reads): latest N
    (default 1), all, or specific; versions are the integer folders on disk.
    """
    if version is not None:
        return [version]
    folder = Path(repo) / model
    try:
        on_disk = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    except OSError:
        return []
    config_path = folder / "config.pbtxt"
    if not config_path.is_file():
        return on_disk[-1:]
    try:
        config = read_config(config_path)
    except ManagerError:
        return on_disk[-1:]
    policy = config.version_policy if as_written else owner_policy(repo, model, config)
    return selected_versions(policy, on_disk)


# --------------------------------------------------------------------------- meter


@dataclass(frozen=True)
class Usage:
    """Used and total memory as the budget sees it, and how it was read."""

    used_bytes: int
    total_bytes: int
    method: str
    per_version: Mapping[tuple[str, int | None], int] = field(default_factory=dict)
    """Live bytes per loaded model version where they can be read (stubs)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "used_bytes": self.used_bytes,
            "total_bytes": self.total_bytes,
            "method": self.method,
        }


@dataclass(frozen=True)
class Baseline:
    """Memory before a load, to take the footprint from."""

    reading: MemoryReading | None
    processes: ProcessMemory | None


def _gpu_value(reading: MemoryReading) -> tuple[int, ...]:
    return tuple(reading.gpus[k].used_bytes for k in sorted(reading.gpus))


def _cpu_value(reading: MemoryReading) -> tuple[int, ...]:
    return (reading.cpu.used_bytes,) if reading.cpu is not None else ()


def _server_for(repo: Path | None, url: str) -> ServerInfo | None:
    """The embedded server of ``repo`` if ``url`` is one of its endpoints (a local pid)."""
    if repo is None:
        return None
    info = running_server(repo)
    if info is None:
        return None
    from manager.triton import parse_url

    try:
        ep = parse_url(url)
    except ManagerError:
        return None
    local = ep.host in ("127.0.0.1", "localhost", info.host, "[::1]")
    return info if local and ep.port in (info.http_port, info.grpc_port) else None


class MemoryMeter:
    """Reads used memory and measures footprints across loads on one Triton server.

    With a GPU it uses Triton's GPU metric; on a CPU host with ``server_pid`` (a local
    server) the server's process tree; otherwise the host-wide CPU metric. Metrics are
    sampled by Triton every ``metrics_interval_s``: a footprint taken from them waits for
    a fresh sample (the value settled, or more than two intervals).
    """

    def __init__(
        self,
        source: MetricsSource,
        *,
        server_pid: int | None = None,
        metrics_interval_s: float = DEFAULT_METRICS_INTERVAL_S,
        release_timeout_s: float = 60.0,
    ) -> None:
        self.source = source
        self.server_pid = server_pid
        self.interval_s = metrics_interval_s
        self.release_timeout_s = release_timeout_s
        self._has_gpu: bool | None = None

    @classmethod
    def for_control(cls, control: MetricsSource, url: str, repo: Path | None) -> MemoryMeter:
        """A meter for ``control``; finds the server's pid when ``url`` is the embedded
        server recorded in ``repo`` (so stubs can be read)."""
        info = _server_for(repo, url)
        if info is None:
            return cls(control)
        return cls(control, server_pid=info.pid, metrics_interval_s=metrics_interval_s(info.pid))

    # ---------------------------------------------------------------- readings

    def reading(self) -> MemoryReading:
        return parse_memory(self.source.metrics_text())

    @property
    def has_gpu(self) -> bool:
        if self._has_gpu is None:
            try:
                self._has_gpu = self.reading().has_gpu
            except ManagerError:
                if self.server_pid is None:
                    raise
                self._has_gpu = False
        return self._has_gpu

    @property
    def mode(self) -> str:
        """How used memory is read: ``gpu-metric``, ``cpu-process-rss`` or ``cpu-metric``."""
        if self.has_gpu:
            return GPU_METRIC
        return CPU_PROCESS_RSS if self.server_pid is not None else CPU_METRIC

    def processes(self) -> ProcessMemory | None:
        if self.server_pid is None:
            return None
        try:
            return read_process_memory(self.server_pid)
        except psutil.NoSuchProcess:
            log.warning("tritonserver pid %d is gone; no process memory", self.server_pid)
            return None

    def fresh_reading(self, previous: MemoryReading | None = None) -> MemoryReading:
        """A metrics reading taken after a sample newer than now.

        Returns once the value differs from ``previous`` and has not changed for more than
        one sampling interval, or after two intervals (plus a margin) in any case.
        """
        value = _gpu_value if self.has_gpu else _cpu_value
        start = time.monotonic()
        limit = 2 * self.interval_s + min(0.1, self.interval_s)
        poll = min(max(self.interval_s / 4, 0.02), 0.25)
        base = value(previous) if previous is not None else None
        last = self.reading()
        last_change = time.monotonic()
        while time.monotonic() - start < limit:
            time.sleep(poll)
            current = self.reading()
            if value(current) != value(last):
                last, last_change = current, time.monotonic()
            elif (
                base is not None
                and value(last) != base
                and time.monotonic() - last_change > self.interval_s
            ):
                return current
            last = current
        return last

    def usage(self, *, fresh: bool = False) -> Usage:
        """Used and total bytes (see the class docstring for the source)."""
        if self.has_gpu:
            reading = self.fresh_reading() if fresh else self.reading()
            return Usage(reading.gpu_used_bytes, reading.gpu_total_bytes, GPU_METRIC)
        procs = self.processes()
        if procs is not None:
            total = 0
            try:
                cpu = self.reading().cpu
                total = cpu.total_bytes if cpu is not None else 0
            except ManagerError:
                total = 0
            return Usage(
                procs.total_bytes,
                total or host_total_bytes(),
                CPU_PROCESS_RSS,
                per_version=procs.per_version(),
            )
        reading = self.fresh_reading() if fresh else self.reading()
        deadline = time.monotonic() + 2 * self.interval_s + 1
        while (reading.cpu is None or reading.cpu.total_bytes <= 0) and (
            time.monotonic() < deadline
        ):
            time.sleep(min(self.interval_s, 0.5))
            reading = self.reading()
        if reading.cpu is None or reading.cpu.total_bytes <= 0:
            raise ManagerError("Triton reports no GPU and no host memory in its metrics")
        return Usage(reading.cpu.used_bytes, reading.cpu.total_bytes, CPU_METRIC)

    # ---------------------------------------------------------------- measuring

    def baseline(self) -> Baseline:
        """Memory before a load. Metric readings are taken fresh (nothing may be pending)."""
        procs = self.processes()
        reading: MemoryReading | None = None
        if self.has_gpu or procs is None:
            reading = self.reading()
        return Baseline(reading, procs)

    def measure(
        self,
        model: str,
        versions: Sequence[int],
        before: Baseline,
        *,
        load_seconds: float,
        sizes: Mapping[int, int | None] | None = None,
    ) -> list[Footprint]:
        """Footprints of the ``versions`` of ``model`` that a load just brought up."""
        if not versions:
            return []
        sizes = sizes or {}
        at = _now_iso()
        share_load = load_seconds
        procs = self.processes()
        if self.has_gpu:
            after = self.fresh_reading(before.reading)
            devices: dict[str, int] = {}
            for uuid, dev in after.gpus.items():
                prior = before.reading.gpus.get(uuid) if before.reading is not None else None
                delta = dev.used_bytes - (prior.used_bytes if prior is not None else 0)
                if delta:
                    devices[uuid] = delta
            total = max(sum(d for d in devices.values() if d > 0), 0)
            host = procs.model_bytes(model) if procs is not None else None
            return [
                Footprint(
                    model,
                    v,
                    total // len(versions),
                    GPU_METRIC,
                    measured_at=at,
                    load_seconds=share_load,
                    size_bytes=sizes.get(v),
                    devices={k: d // len(versions) for k, d in devices.items()},
                    host_bytes=None if host is None else host // len(versions),
                )
                for v in versions
            ]
        if procs is not None and before.processes is not None:
            server_growth = max(procs.server_bytes - before.processes.server_bytes, 0)
            if procs.has_model(model):
                unversioned = procs.model_bytes(model) - sum(
                    s.resident_bytes for s in procs.stubs if s.model == model and s.version
                )
                return [
                    Footprint(
                        model,
                        v,
                        sum(
                            s.resident_bytes
                            for s in procs.stubs
                            if s.model == model and s.version == v
                        )
                        + (unversioned + server_growth) // len(versions),
                        CPU_STUB_RSS,
                        measured_at=at,
                        load_seconds=share_load,
                        size_bytes=sizes.get(v),
                    )
                    for v in versions
                ]
            return [
                Footprint(
                    model,
                    v,
                    server_growth // len(versions),
                    CPU_PROCESS_RSS,
                    measured_at=at,
                    load_seconds=share_load,
                    size_bytes=sizes.get(v),
                )
                for v in versions
            ]
        after = self.fresh_reading(before.reading)
        prior_cpu = before.reading.cpu if before.reading is not None else None
        delta = 0
        if after.cpu is not None and prior_cpu is not None:
            delta = max(after.cpu.used_bytes - prior_cpu.used_bytes, 0)
        return [
            Footprint(
                model,
                v,
                delta // len(versions),
                CPU_METRIC,
                measured_at=at,
                load_seconds=share_load,
                size_bytes=sizes.get(v),
            )
            for v in versions
        ]

    def wait_released(
        self, models: Iterable[str | tuple[str, int]], before: MemoryReading | None = None
    ) -> bool:
        """After an unload: wait until the stubs of ``models`` (names, or ``(name,
        version)`` for one version) exited and, where memory comes from the metrics, for a
        fresh sample (``before``: the reading before the unload). False if stubs were
        still there at the timeout."""
        names = list(models)
        gone = True
        if self.server_pid is not None:
            gone = wait_stubs_gone(self.server_pid, names, timeout=self.release_timeout_s)
            if not gone:
                log.warning("stubs of %s still running after %.0f s", names, self.release_timeout_s)
        if self.has_gpu or self.server_pid is None:
            self.fresh_reading(before)
        return gone
