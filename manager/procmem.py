"""Memory of a local tritonserver's processes: the server and its Python-backend stubs.

On a CPU-only host Triton reports the used memory of the *whole host*
(``nv_cpu_memory_used_bytes``), which moves with everything else that runs there. When the
server runs on this machine (its pid is recorded in ``<repo>/.tritonctl/server.json``) the
manager reads its processes instead:

- every instance of a Python-backend model runs in its own ``triton_python_backend_stub``
  process, a child of the server, whose command line names the model file
  (``<repo>/<model>/<version>/model.py``) and the instance (``<model>_<group>_<n>``); the
  memory a model holds is the resident memory of its stubs, and it is freed when they exit;
- the server process itself holds what native backends load.

Each process is read twice over, where the kernel lets us (else both are its RSS):

- its USS (the pages only that process maps): what its exit frees, the memory a model's
  stubs hold;
- its PSS (each page divided among the processes that map it): the sum over the tree is
  its physical memory, each page counted once. This is the tree's used memory. A sum of
  USS would leave out the pages two stubs share (the libraries of the same runtime), and
  those would then appear in it when one of the two exits, as if an unload freed nothing.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

STUB_NAME = "triton_python_backend_stub"
DEFAULT_METRICS_INTERVAL_S = 2.0
_INSTANCE_RE = re.compile(r"^(?P<model>.+)_\d+_\d+$")


@dataclass(frozen=True)
class StubProcess:
    """One Python-backend stub: the model version it serves and its resident bytes."""

    pid: int
    model: str
    version: int | None
    instance: str
    resident_bytes: int
    proportional_bytes: int = 0


@dataclass(frozen=True)
class ProcessMemory:
    """One reading of a server's process tree."""

    server_bytes: int
    stubs: tuple[StubProcess, ...]
    taken_at: float
    server_proportional_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        """The tree's physical memory: PSS summed (see the module's docstring)."""
        return self.server_proportional_bytes + sum(s.proportional_bytes for s in self.stubs)

    def model_bytes(self, model: str, version: int | None = None) -> int:
        """Bytes of the stubs of ``model`` (of ``version`` only, if given)."""
        return sum(
            s.resident_bytes
            for s in self.stubs
            if s.model == model and (version is None or s.version in (version, None))
        )

    def has_model(self, model: str) -> bool:
        return any(s.model == model for s in self.stubs)

    def per_version(self) -> dict[tuple[str, int | None], int]:
        out: dict[tuple[str, int | None], int] = {}
        for s in self.stubs:
            out[(s.model, s.version)] = out.get((s.model, s.version), 0) + s.resident_bytes
        return out


def resident_bytes(proc: psutil.Process) -> tuple[int, int]:
    """(USS, PSS) of ``proc`` if readable, else its RSS twice."""
    try:
        full = proc.memory_full_info()
        return int(full.uss), int(full.pss)
    except (psutil.AccessDenied, AttributeError):
        rss = int(proc.memory_info().rss)
        return rss, rss


def parse_stub_cmdline(cmdline: list[str]) -> tuple[str, int | None, str] | None:
    """(model, version, instance) from a stub's command line; None if it is not a stub.

    The stub is started as ``triton_python_backend_stub <model.py path> <shm region>
    <shm size> <shm growth> <parent pid> <backend dir> <ipc size> <instance> <kind> ...``;
    the model file sits in ``<repo>/<model>/<version>/``.
    """
    if not cmdline or Path(cmdline[0]).name != STUB_NAME or len(cmdline) < 2:
        return None
    model_file = Path(cmdline[1])
    instance = cmdline[8] if len(cmdline) > 8 else ""
    version_dir = model_file.parent
    if version_dir.name.isdigit() and version_dir.parent.name:
        return version_dir.parent.name, int(version_dir.name), instance
    match = _INSTANCE_RE.match(instance)
    if match:
        return match["model"], None, instance
    return None


def read_process_memory(server_pid: int) -> ProcessMemory:
    """The server's own resident bytes and every stub below it.

    Raises ``psutil.NoSuchProcess`` if the server is gone.
    """
    server = psutil.Process(server_pid)
    server_bytes, server_pss = resident_bytes(server)
    stubs = []
    for child in server.children(recursive=True):
        try:
            parsed = parse_stub_cmdline(child.cmdline())
            if parsed is None:
                continue
            model, version, instance = parsed
            stubs.append(StubProcess(child.pid, model, version, instance, *resident_bytes(child)))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.AccessDenied:
            log.debug("cannot read process %d below tritonserver %d", child.pid, server_pid)
    return ProcessMemory(server_bytes, tuple(stubs), time.time(), server_pss)


def wait_stubs_gone(
    server_pid: int,
    models: Iterable[str | tuple[str, int]],
    *,
    timeout: float = 60.0,
    poll: float = 0.05,
) -> bool:
    """Wait until no stub of ``models`` (a name: every version; ``(name, version)``: that
    version) runs below the server; False on timeout."""
    wanted = list(models)
    names = {m for m in wanted if isinstance(m, str)}
    versions = {m for m in wanted if not isinstance(m, str)}

    def matches(stub: StubProcess) -> bool:
        if stub.model in names:
            return True
        # a stub whose version is unknown might be the one going
        return any(stub.model == m and stub.version in (v, None) for m, v in versions)

    deadline = time.monotonic() + timeout
    while True:
        try:
            current = read_process_memory(server_pid)
        except psutil.NoSuchProcess:
            return True
        if not any(matches(s) for s in current.stubs):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)


def metrics_interval_s(server_pid: int) -> float:
    """The ``--metrics-interval-ms`` the server was started with, in seconds."""
    try:
        args = psutil.Process(server_pid).cmdline()
    except psutil.Error:
        return DEFAULT_METRICS_INTERVAL_S
    return parse_metrics_interval(args)


def parse_metrics_interval(args: list[str]) -> float:
    """``--metrics-interval-ms=N`` or ``--metrics-interval-ms N`` -> N / 1000; default 2 s."""
    for i, arg in enumerate(args):
        value: str | None = None
        if arg.startswith("--metrics-interval-ms="):
            value = arg.split("=", 1)[1]
        elif arg == "--metrics-interval-ms" and i + 1 < len(args):
            value = args[i + 1]
        if value is not None:
            try:
                return max(int(value), 1) / 1000.0
            except ValueError:
                return DEFAULT_METRICS_INTERVAL_S
    return DEFAULT_METRICS_INTERVAL_S


def host_total_bytes() -> int:
    return int(psutil.virtual_memory().total)
