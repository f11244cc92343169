"""The embedded tritonserver: find a binary, start it on a repository, stop it.

One server per repository. A background server runs in its own session, writes its
output to ``<repo>/.tritonctl/server.log`` and is recorded in
``<repo>/.tritonctl/server.json`` (pid, process create time, ports, binary), so that a
later ``tritonctl`` process can find it, check that the pid is still that server, and
stop it. The server always runs in explicit model-control mode with no model loaded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
from filelock import FileLock

from manager.errors import RepositoryError, ServerError
from manager.loadtimes import forget_every_load
from manager.settings import META_DIR

log = logging.getLogger(__name__)

BINARY_ENV = "TRITONSERVER"
SYSTEM_BINARY = Path("/opt/tritonserver/bin/tritonserver")
HOST = "127.0.0.1"
RECORD_FILE = "server.json"
LOG_FILE = "server.log"
LOCK_FILE = "server.lock"
BACKENDS_DIR = "backends"
DEFAULT_EXIT_TIMEOUT_S = 10
_LOG_TAIL_LINES = 25
# psutil's create_time is derived from boot time and clock ticks; allow rounding slack.
_CREATE_TIME_SLACK_S = 0.05


# --------------------------------------------------------------------------- binary


@dataclass(frozen=True)
class TritonBinary:
    """A tritonserver binary and what it needs to run.

    ``env`` holds variables to set (``LD_LIBRARY_PATH``, ``PATH``), already merged with
    the current values of those variables. ``python_backend`` and ``python_stub`` are
    set only for the binary bundled in nvidia-pytriton, whose Python backend has to be
    assembled into a backend directory (see :meth:`prepare_backend_dir`).
    """

    path: Path
    source: str
    env: Mapping[str, str] = field(default_factory=dict)
    python_backend: Path | None = None
    python_stub: Path | None = None

    @property
    def bundled(self) -> bool:
        return self.python_backend is not None

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment to start the server with: ``base`` (default os.environ) + ``env``."""
        merged = dict(os.environ if base is None else base)
        merged.update(self.env)
        return merged

    def prepare_backend_dir(self, root: Path) -> Path | None:
        """Assemble ``<root>/python/`` for the bundled binary; return ``root`` (or None).

        The Python backend's stub must sit next to ``libtriton_python.so``; the bundled
        package keeps one stub per Python version elsewhere, so the backend directory is
        made of symlinks to the library, its utils module and this interpreter's stub.
        """
        if self.python_backend is None or self.python_stub is None:
            return None
        target = root / "python"
        target.mkdir(parents=True, exist_ok=True)
        links = {
            "libtriton_python.so": self.python_backend / "libtriton_python.so",
            "triton_python_backend_utils.py": self.python_backend
            / "triton_python_backend_utils.py",
            "triton_python_backend_stub": self.python_stub,
        }
        for name, source in links.items():
            link = target / name
            if link.is_symlink() or link.exists():
                if link.is_symlink() and Path(os.readlink(link)) == source:
                    continue
                link.unlink()
            link.symlink_to(source)
        return root


def _bundled_root() -> Path | None:
    """The ``pytriton/tritonserver`` folder of nvidia-pytriton, if it is installed."""
    try:
        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location) / "tritonserver"
        if (root / "bin" / "tritonserver").is_file():
            return root
    return None


def _prepend_path(value: str, current: str | None) -> str:
    return value if not current else f"{value}{os.pathsep}{current}"


def _describe_bundled(root: Path, path: Path, source: str) -> TritonBinary:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stubs = root / "python_backend_stubs"
    stub = stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        available = sorted(p.name for p in stubs.iterdir()) if stubs.is_dir() else []
        raise ServerError(
            f"the tritonserver bundled in nvidia-pytriton has no Python-backend stub for "
            f"Python {version} (it has: {', '.join(available) or 'none'}); run tritonctl "
            "with one of those Python versions or pass --binary"
        )
    libs = root.parent.parent / "nvidia_pytriton.libs"
    ld_path = str(libs)
    # The stub links against the system's libpython; the interpreter of this environment
    # may be a different build of the same version (pyenv, a venv over it), whose compiled
    # stdlib modules (_ssl, ...) then miss symbols. Its own libpython comes first.
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and (Path(libdir) / f"libpython{version}.so.1.0").exists():
        ld_path = f"{libdir}{os.pathsep}{ld_path}"
    env = {
        "LD_LIBRARY_PATH": _prepend_path(ld_path, os.environ.get("LD_LIBRARY_PATH")),
        # The stub takes its site-packages from the first `python3` on PATH.
        "PATH": _prepend_path(str(Path(sys.executable).parent), os.environ.get("PATH")),
    }
    return TritonBinary(
        path=path,
        source=source,
        env=env,
        python_backend=root / "backends" / "python",
        python_stub=stub,
    )


def _describe(path: Path, source: str) -> TritonBinary:
    root = _bundled_root()
    if root is not None:
        bundled = root / "bin" / "tritonserver"
        with contextlib.suppress(OSError):
            if path.resolve() == bundled.resolve():
                return _describe_bundled(root, path, source)
    return TritonBinary(path=path, source=source)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_tritonserver(explicit: str | os.PathLike[str] | None = None) -> TritonBinary:
    """Find a tritonserver binary.

    Order: ``explicit``, the ``TRITONSERVER`` environment variable, ``tritonserver`` on
    PATH, ``/opt/tritonserver/bin/tritonserver``, the one bundled in nvidia-pytriton.
    An explicit choice (argument or environment) that is not an executable is an error,
    not a reason to fall through to the next candidate.
    """
    tried: list[str] = []
    for value, source in ((explicit, "option"), (os.environ.get(BINARY_ENV), BINARY_ENV)):
        if value is None or str(value) == "":
            continue
        path = Path(value).expanduser()
        if not _is_executable(path):
            raise ServerError(f"tritonserver binary {path} (from {source}) is not an executable")
        log.debug("using tritonserver %s from %s", path, source)
        return _describe(path, source)
    tried.append(f"${BINARY_ENV} (unset)")

    on_path = shutil.which("tritonserver")
    if on_path:
        return _describe(Path(on_path), "PATH")
    tried.append("`tritonserver` on PATH")

    if _is_executable(SYSTEM_BINARY):
        return _describe(SYSTEM_BINARY, "system")
    tried.append(str(SYSTEM_BINARY))

    root = _bundled_root()
    if root is not None:
        return _describe_bundled(root, root / "bin" / "tritonserver", "nvidia-pytriton")
    tried.append("the nvidia-pytriton package (not installed)")
    raise ServerError(
        "no tritonserver binary found; tried "
        + ", ".join(tried)
        + ". Install tritonctl[embedded] or pass --binary"
    )


# --------------------------------------------------------------------------- ports


def port_in_use(port: int, host: str = "0.0.0.0") -> bool:
    """True if something listens on ``port`` (a bind with SO_REUSEADDR fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free right now (for tests and defaults)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("", 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


def free_port() -> int:
    """One TCP port that is free right now."""
    return free_ports(1)[0]


# --------------------------------------------------------------------------- record


@dataclass(frozen=True)
class ServerInfo:
    """A running (or just started) embedded server, as recorded in server.json."""

    pid: int
    create_time: float
    http_port: int
    grpc_port: int
    metrics_port: int
    binary: str
    repo: str
    log_file: str | None
    started_at: str
    host: str = HOST

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(http_url=self.http_url, grpc_url=self.grpc_url, metrics_url=self.metrics_url)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServerInfo:
        names = cls.__dataclass_fields__
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise ServerError(f"malformed server record: {exc}") from exc


def meta_dir(repo: Path) -> Path:
    return Path(repo) / META_DIR


def record_path(repo: Path) -> Path:
    return meta_dir(repo) / RECORD_FILE


def read_record(repo: Path) -> ServerInfo | None:
    """The recorded server of ``repo`` (alive or not), or None if there is no record."""
    path = record_path(repo)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable server record %s: %s", path, exc)
        return None
    if not isinstance(data, dict):
        log.warning("ignoring malformed server record %s", path)
        return None
    try:
        return ServerInfo.from_json(data)
    except ServerError as exc:
        log.warning("ignoring server record %s: %s", path, exc)
        return None


def _write_record(repo: Path, info: ServerInfo) -> None:
    path = record_path(repo)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2) + "\n")
    os.replace(tmp, path)


def _remove_record(repo: Path, pid: int) -> None:
    """Remove server.json if it still describes ``pid``."""
    current = read_record(repo)
    if current is not None and current.pid != pid:
        return
    with contextlib.suppress(FileNotFoundError):
        record_path(repo).unlink()


STUB_NAME = "triton_python_backend_stub"
SHM_PREFIX = "triton_python_backend_shm_region"


def leftover_stubs(repo: Path, server_pid: int) -> list[psutil.Process]:
    """Python-backend stubs that a dead server of ``repo`` left running: in the server's
    process group (it led its own session), serving a model of ``repo``. A stub whose
    server was killed mid-request can wait on it for ever, holding its memory and its
    shared-memory region."""
    roots = tuple({str(Path(repo).absolute()) + os.sep, str(Path(repo).resolve()) + os.sep})
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if not (proc.info["name"] or "").startswith(STUB_NAME[:15]):
                continue
            cmdline = proc.info["cmdline"] or []
            if len(cmdline) < 2 or not cmdline[0].endswith(STUB_NAME):
                continue
            if os.getpgid(proc.pid) != server_pid or not cmdline[1].startswith(roots):
                continue
        except (psutil.Error, ProcessLookupError):
            continue
        found.append(proc)
    return found


def stop_leftover_stubs(repo: Path, server_pid: int) -> int:
    """Kill the stubs :func:`leftover_stubs` finds, each by its own pid, and remove their
    shared-memory regions; returns how many were stopped."""
    stubs = leftover_stubs(repo, server_pid)
    for proc in stubs:
        with contextlib.suppress(psutil.Error):
            regions = [a for a in proc.cmdline() if a.startswith(SHM_PREFIX)]
            log.warning(
                "stopping Python-backend stub pid %d left by dead tritonserver pid %d",
                proc.pid,
                server_pid,
            )
            proc.kill()
            proc.wait(timeout=10)
            for region in regions:
                with contextlib.suppress(OSError):
                    (Path("/dev/shm") / region).unlink()
    return len(stubs)


def is_recorded_process(info: ServerInfo) -> bool:
    """True if ``info.pid`` is alive and is the very process that was recorded."""
    try:
        proc = psutil.Process(info.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - info.create_time) < _CREATE_TIME_SLACK_S
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def running_server(repo: Path) -> ServerInfo | None:
    """The embedded server recorded for ``repo`` if its process is alive; no side effects."""
    info = read_record(repo)
    if info is None or not is_recorded_process(info):
        return None
    return info


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def urlopen_direct(url: str, timeout: float) -> Any:
    """``urllib.request.urlopen(url)`` straight to the server, whatever proxy the
    environment names (``http_proxy``...): tritonctl talks to Triton directly, as
    tritonclient's HTTP client does (and its gRPC channels are told to)."""
    return _DIRECT.open(url, timeout=timeout)


def probe_live(http_url: str, timeout: float = 1.0) -> bool:
    """True if ``GET <http_url>/v2/health/live`` answers 200."""
    try:
        with urlopen_direct(f"{http_url}/v2/health/live", timeout=timeout) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of the server log; a usage text after the error is dropped."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    all_lines = text.splitlines()
    for i, line in enumerate(all_lines):
        if line.startswith("Usage: tritonserver"):
            all_lines = all_lines[:i]
            break
    return "\n".join(all_lines[-lines:])


# Background servers started by this process: kept referenced so that Popen does not
# warn about a still-running child when the EmbeddedServer object goes away.
_SPAWNED: list[subprocess.Popen[bytes]] = []


class EmbeddedServer:
    """The tritonserver serving one repository in explicit model-control mode."""

    def __init__(self, repo: Path, *, binary: str | os.PathLike[str] | None = None) -> None:
        self.repo = Path(repo).absolute()
        self._binary_option = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._tied = False

    @property
    def meta_dir(self) -> Path:
        return meta_dir(self.repo)

    @property
    def log_file(self) -> Path:
        return self.meta_dir / LOG_FILE

    @property
    def record_file(self) -> Path:
        return record_path(self.repo)

    # ------------------------------------------------------------------ start

    def command(
        self,
        binary: TritonBinary,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        *,
        metrics_interval_ms: int | None = None,
        exit_timeout_s: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> list[str]:
        """The tritonserver command line for this repository."""
        cmd = [
            str(binary.path),
            f"--model-repository={self.repo}",
            "--model-control-mode=explicit",
            f"--http-port={http_port}",
            f"--grpc-port={grpc_port}",
            f"--metrics-port={metrics_port}",
        ]
        if not any(a.startswith("--strict-readiness") for a in extra_args):
            # Triton's strict readiness answers "not ready" for as long as any version
            # it ever failed to load is on record (until that very version loads), so
            # one bad load would take the whole server out of a load balancer while its
            # other models serve. Ready here means up, with its startup loads done; a
            # model's own readiness is /v2/models/NAME/ready.
            cmd.append("--strict-readiness=false")
        backend_dir = binary.prepare_backend_dir(self.meta_dir / BACKENDS_DIR)
        if backend_dir is not None:
            cmd.append(f"--backend-directory={backend_dir}")
        if metrics_interval_ms is not None:
            cmd.append(f"--metrics-interval-ms={int(metrics_interval_ms)}")
        if exit_timeout_s is not None:
            cmd.append(f"--exit-timeout-secs={int(exit_timeout_s)}")
        cmd.extend(extra_args)
        return cmd

    def start(
        self,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        *,
        foreground: bool = False,
        metrics_interval_ms: int | None = None,
        exit_timeout_s: int | None = DEFAULT_EXIT_TIMEOUT_S,
        extra_args: Sequence[str] = (),
        wait_timeout: float = 60,
        on_ready: Callable[[ServerInfo], None] | None = None,
        tied: bool = False,
    ) -> ServerInfo:
        """Start the server and wait until it is live.

        In the background (default) this returns once ``/v2/health/live`` answers. With
        ``foreground=True`` it runs until the server exits or this process receives
        SIGINT/SIGTERM (forwarded to the server), calling ``on_ready`` once it is live (a
        foreground server is stopped if ``on_ready`` raises).
        ``exit_timeout_s`` bounds how long the server, asked to stop, waits for in-flight
        requests and open HTTP connections (Triton's own default is 30 s). ``tied``: the
        kernel kills the server when the thread that started it exits, however it ends
        (SIGKILL included), for a server that must not outlive its caller (Linux).
        """
        self._tied = tied
        if foreground:
            # Handlers go in before the server is spawned: a SIGTERM that arrives while it
            # starts must stop it too, not kill this process and orphan the server.
            self._stopping = False
            with _signal_handlers((signal.SIGINT, signal.SIGTERM), self._forward_signal):
                return self._start(
                    http_port,
                    grpc_port,
                    metrics_port,
                    foreground=True,
                    metrics_interval_ms=metrics_interval_ms,
                    exit_timeout_s=exit_timeout_s,
                    extra_args=extra_args,
                    wait_timeout=wait_timeout,
                    on_ready=on_ready,
                )
        return self._start(
            http_port,
            grpc_port,
            metrics_port,
            foreground=False,
            metrics_interval_ms=metrics_interval_ms,
            exit_timeout_s=exit_timeout_s,
            extra_args=extra_args,
            wait_timeout=wait_timeout,
            on_ready=on_ready,
        )

    def _forward_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        proc = self._proc
        log.info("received signal %d, stopping tritonserver", signum)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def _start(
        self,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        *,
        foreground: bool,
        metrics_interval_ms: int | None,
        exit_timeout_s: int | None,
        extra_args: Sequence[str],
        wait_timeout: float,
        on_ready: Callable[[ServerInfo], None] | None,
    ) -> ServerInfo:
        if not self.repo.is_dir():
            raise RepositoryError(f"model repository {self.repo} does not exist")
        self.meta_dir.mkdir(exist_ok=True)
        with FileLock(str(self.meta_dir / LOCK_FILE), timeout=wait_timeout):
            existing = read_record(self.repo)
            if existing is not None:
                if is_recorded_process(existing):
                    raise ServerError(
                        f"a tritonserver is already running for {self.repo} "
                        f"(pid {existing.pid}, {existing.http_url})"
                    )
                log.info("removing stale server record of pid %d", existing.pid)
                stop_leftover_stubs(self.repo, existing.pid)
                _remove_record(self.repo, existing.pid)
            ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
            if len(set(ports.values())) != len(ports):
                raise ServerError(f"the http, grpc and metrics ports must differ, got {ports}")
            for what, port in ports.items():
                if port_in_use(port):
                    raise ServerError(f"port {port} ({what}) is already in use")
            binary = find_tritonserver(self._binary_option)
            forget_every_load(self.repo)  # the new server has loaded nothing yet
            cmd = self.command(
                binary,
                http_port,
                grpc_port,
                metrics_port,
                metrics_interval_ms=metrics_interval_ms,
                exit_timeout_s=exit_timeout_s,
                extra_args=extra_args,
            )
            info = self._spawn(cmd, binary, http_port, grpc_port, metrics_port, foreground)
        self._wait_live(info, wait_timeout, foreground)
        log.info("tritonserver pid %d is live at %s", info.pid, info.http_url)
        if on_ready is not None and not self._stopping:
            try:
                on_ready(info)
            except BaseException:
                if foreground:
                    # Nothing would be left to wait on the server, forward signals to it
                    # or remove its record: it must not run on without this process.
                    self._terminate(info, timeout=30)
                    _remove_record(self.repo, info.pid)
                raise
        if foreground:
            self._run_foreground(info)
        return info

    def _spawn(
        self,
        cmd: list[str],
        binary: TritonBinary,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        foreground: bool,
    ) -> ServerInfo:
        log.info("starting %s", " ".join(cmd))
        env = binary.environment()
        preexec = _die_with_parent() if self._tied else None
        try:
            if foreground:
                proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=preexec)
            else:
                with open(self.log_file, "wb") as out:
                    proc = subprocess.Popen(
                        cmd,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        cwd=self.meta_dir,
                        preexec_fn=preexec,
                    )
        except OSError as exc:
            raise ServerError(f"cannot start {binary.path}: {exc.strerror or exc}") from exc
        self._proc = proc
        if not foreground:
            _SPAWNED.append(proc)
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = time.time()
        info = ServerInfo(
            pid=proc.pid,
            create_time=create_time,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            binary=str(binary.path),
            repo=str(self.repo),
            log_file=None if foreground else str(self.log_file),
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        _write_record(self.repo, info)
        return info

    def _wait_live(self, info: ServerInfo, timeout: float, foreground: bool) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None and self._stopping:
                return  # asked to stop while starting: _run_foreground reaps it
            if code is not None:
                _remove_record(self.repo, info.pid)
                where = (
                    "see its output above"
                    if foreground
                    else f"last lines of {self.log_file}:\n{_log_tail(self.log_file)}"
                )
                raise ServerError(f"tritonserver exited with code {code} while starting; {where}")
            if probe_live(info.http_url, timeout=1.0) or self._stopping:
                return
            if time.monotonic() > deadline:
                self._terminate(info, timeout=10)
                _remove_record(self.repo, info.pid)
                tail = "" if foreground else f"; last lines of its log:\n{_log_tail(self.log_file)}"
                raise ServerError(
                    f"tritonserver did not become live at {info.http_url} within "
                    f"{timeout:g} s{tail}"
                )
            time.sleep(0.1)

    def _run_foreground(self, info: ServerInfo) -> None:
        assert self._proc is not None
        proc = self._proc
        try:
            code = proc.wait()
        finally:
            _remove_record(self.repo, info.pid)
            self._proc = None
        if code != 0 and not self._stopping:
            raise ServerError(f"tritonserver exited with code {code}")

    # ------------------------------------------------------------------ status / stop

    def status(self) -> ServerInfo | None:
        """The running server of this repository, or None; cleans up a stale record."""
        info = read_record(self.repo)
        if info is None:
            return None
        if is_recorded_process(info):
            return info
        log.info("removing stale server record of pid %d", info.pid)
        stop_leftover_stubs(self.repo, info.pid)
        _remove_record(self.repo, info.pid)
        return None

    def stop(self, timeout: float = 30) -> ServerInfo | None:
        """Stop the recorded server: SIGTERM, then SIGKILL after ``timeout`` seconds.

        Only the recorded pid is signalled, and only if it is still the recorded process
        (same pid and create time). Python-backend stubs that outlive it (one whose
        model's code hangs does not exit with it) are killed then, each by its own pid,
        and their shared memory removed. Returns the stopped server's info, or None if
        none ran.
        """
        info = self.status()
        if info is None:
            return None
        self._terminate(info, timeout=timeout)
        stop_leftover_stubs(self.repo, info.pid)
        _remove_record(self.repo, info.pid)
        return info

    def _terminate(self, info: ServerInfo, timeout: float) -> None:
        try:
            proc = psutil.Process(info.pid)
            if abs(proc.create_time() - info.create_time) >= _CREATE_TIME_SLACK_S:
                return
            log.info("stopping tritonserver pid %d", info.pid)
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except psutil.TimeoutExpired:
                log.warning(
                    "tritonserver pid %d ignored SIGTERM for %g s; killing", info.pid, timeout
                )
                proc.kill()
                # The server leads its own session; its Python-backend stubs share the group.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if os.getpgid(info.pid) == info.pid:
                        os.killpg(info.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        except psutil.NoSuchProcess:
            pass
        except psutil.AccessDenied as exc:
            raise ServerError(
                f"not allowed to stop tritonserver pid {info.pid}{_owner(info.pid)}: "
                "stop it as that user"
            ) from exc
        except psutil.TimeoutExpired as exc:
            raise ServerError(f"tritonserver pid {info.pid} did not exit after SIGKILL") from exc
        finally:
            self._reap(info.pid)

    def _reap(self, pid: int) -> None:
        for proc in [p for p in _SPAWNED if p.pid == pid] + (
            [self._proc] if self._proc is not None and self._proc.pid == pid else []
        ):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.1)
            if proc.returncode is not None and proc in _SPAWNED:
                _SPAWNED.remove(proc)
        if self._proc is not None and self._proc.pid == pid and self._proc.returncode is not None:
            self._proc = None


def _owner(pid: int) -> str:
    """`` (run by USER)`` for ``pid``, or nothing where that cannot be read."""
    try:
        return f" (run by {psutil.Process(pid).username()})"
    except (psutil.Error, KeyError):
        return ""


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks the kernel to SIGKILL the child when the thread that
    spawned it exits (``prctl(PR_SET_PDEATHSIG)``); None where there is no such call.
    libc's function is looked up here, so the child only makes the system call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)

    return preexec


@contextlib.contextmanager
def _signal_handlers(
    signals: Sequence[signal.Signals], handler: Callable[[int, FrameType | None], None]
) -> Iterator[None]:
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
