"""The embedded server without starting one: binary search, records, ports, stop safety."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import sysconfig
import time
from pathlib import Path

import psutil
import pytest

from manager import server as srv
from manager.errors import RepositoryError, ServerError
from manager.server import (
    EmbeddedServer,
    ServerInfo,
    find_tritonserver,
    free_port,
    free_ports,
    port_in_use,
    read_record,
    running_server,
)

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def _fake_bundled(tmp_path: Path, stub_versions: tuple[str, ...] = (PY,)) -> Path:
    """A site-packages-like tree: pytriton/tritonserver/{bin,backends,python_backend_stubs}."""
    root = tmp_path / "site" / "pytriton" / "tritonserver"
    _exe(root / "bin" / "tritonserver")
    backend = root / "backends" / "python"
    backend.mkdir(parents=True)
    (backend / "libtriton_python.so").write_bytes(b"")
    (backend / "triton_python_backend_utils.py").write_text("")
    for v in stub_versions:
        _exe(root / "python_backend_stubs" / v / "triton_python_backend_stub")
    (tmp_path / "site" / "nvidia_pytriton.libs").mkdir()
    return root


@pytest.fixture
def no_binaries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No TRITONSERVER, nothing on PATH, no /opt binary, no nvidia-pytriton."""
    monkeypatch.delenv(srv.BINARY_ENV, raising=False)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(srv, "SYSTEM_BINARY", tmp_path / "opt" / "tritonserver")
    monkeypatch.setattr(srv, "_bundled_root", lambda: None)


def _info(repo: Path, pid: int, create_time: float) -> ServerInfo:
    return ServerInfo(
        pid=pid,
        create_time=create_time,
        http_port=18000,
        grpc_port=18001,
        metrics_port=18002,
        binary="/bin/tritonserver",
        repo=str(repo),
        log_file=None,
        started_at="2026-01-01T00:00:00+00:00",
    )


def _write(repo: Path, info: ServerInfo) -> None:
    (repo / ".tritonctl").mkdir(parents=True, exist_ok=True)
    srv._write_record(repo, info)


def _dead_pid() -> int:
    proc = psutil.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return int(proc.pid)


# --------------------------------------------------------------------- binary search


def test_explicit_binary_wins_over_everything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    explicit = _exe(tmp_path / "a" / "tritonserver")
    monkeypatch.setenv(srv.BINARY_ENV, str(_exe(tmp_path / "b" / "tritonserver")))
    binary = find_tritonserver(str(explicit))
    assert binary.path == explicit
    assert binary.source == "option"
    assert not binary.bundled


def test_environment_variable_comes_before_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from_env = _exe(tmp_path / "env" / "tritonserver")
    on_path = _exe(tmp_path / "bin" / "tritonserver")
    monkeypatch.setenv(srv.BINARY_ENV, str(from_env))
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert find_tritonserver().path == from_env


def test_path_comes_before_opt_and_bundled(
    no_binaries: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    on_path = _exe(tmp_path / "bin" / "tritonserver")
    monkeypatch.setenv("PATH", str(on_path.parent))
    _exe(srv.SYSTEM_BINARY)
    root = _fake_bundled(tmp_path)
    monkeypatch.setattr(srv, "_bundled_root", lambda: root)
    binary = find_tritonserver()
    assert binary.path == on_path
    assert binary.source == "PATH"


def test_opt_tritonserver_comes_before_bundled(
    no_binaries: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _exe(srv.SYSTEM_BINARY)
    root = _fake_bundled(tmp_path)
    monkeypatch.setattr(srv, "_bundled_root", lambda: root)
    assert find_tritonserver().path == srv.SYSTEM_BINARY


def test_bundled_binary_gets_its_libraries_stub_and_this_python_first_on_path(
    no_binaries: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = _fake_bundled(tmp_path)
    monkeypatch.setattr(srv, "_bundled_root", lambda: root)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/local/lib")
    binary = find_tritonserver()
    assert binary.bundled
    assert binary.source == "nvidia-pytriton"
    libs = str(tmp_path / "site" / "nvidia_pytriton.libs")
    # this interpreter's own libpython (when it has a shared one) precedes the bundled libs
    pylib = sysconfig.get_config_var("LIBDIR")
    own = [pylib] if pylib and (Path(pylib) / f"libpython{PY}.so.1.0").exists() else []
    assert binary.env["LD_LIBRARY_PATH"].split(os.pathsep) == [*own, libs, "/usr/local/lib"]
    assert binary.env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert binary.python_stub == root / "python_backend_stubs" / PY / "triton_python_backend_stub"
    env = binary.environment({"HOME": "/root"})
    assert env["HOME"] == "/root"
    assert env["LD_LIBRARY_PATH"].startswith(os.pathsep.join([*own, libs]))


def test_explicit_path_to_the_bundled_binary_is_treated_as_bundled(
    no_binaries: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = _fake_bundled(tmp_path)
    monkeypatch.setattr(srv, "_bundled_root", lambda: root)
    binary = find_tritonserver(root / "bin" / "tritonserver")
    assert binary.bundled
    assert binary.source == "option"


def test_bundled_backend_dir_links_library_utils_and_the_stub_of_this_python(
    no_binaries: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = _fake_bundled(tmp_path)
    monkeypatch.setattr(srv, "_bundled_root", lambda: root)
    binary = find_tritonserver()
    backends = tmp_path / "repo" / ".tritonctl" / "backends"
    assert binary.prepare_backend_dir(backends) == backends
    assert binary.prepare_backend_dir(backends) == backends  # idempotent
    links = {p.name: p for p in (backends / "python").iterdir()}
    assert sorted(links) == [
        "libtriton_python.so",
        "triton_python_backend_stub",
        "triton_python_backend_utils.py",
    ]
    assert all(p.is_symlink() for p in links.values())
    assert links["triton_python_backend_stub"].resolve() == binary.python_stub


def test_missing_stub_for_this_python_is_a_clear_error(
    no_binaries: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = _fake_bundled(tmp_path, stub_versions=("3.8",))
    monkeypatch.setattr(srv, "_bundled_root", lambda: root)
    with pytest.raises(ServerError, match=rf"no Python-backend stub for Python {PY}.*3\.8"):
        find_tritonserver()


def test_no_binary_anywhere_names_what_was_tried(no_binaries: None) -> None:
    with pytest.raises(ServerError) as err:
        find_tritonserver()
    message = str(err.value)
    for tried in ("TRITONSERVER", "PATH", "/opt/tritonserver", "nvidia-pytriton"):
        assert tried in message


def test_explicit_binary_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="not an executable"):
        find_tritonserver(tmp_path / "nope")


def test_non_bundled_binary_needs_no_backend_dir(tmp_path: Path) -> None:
    binary = find_tritonserver(_exe(tmp_path / "tritonserver"))
    assert binary.prepare_backend_dir(tmp_path / "backends") is None
    assert binary.env == {}


def test_the_installed_nvidia_pytriton_is_found_through_importlib() -> None:
    pytest.importorskip("pytriton")
    root = srv._bundled_root()
    assert root is not None
    assert (root / "bin" / "tritonserver").is_file()


# --------------------------------------------------------------------- command line


def test_command_line_is_explicit_mode_on_the_repository(tmp_path: Path) -> None:
    binary = find_tritonserver(_exe(tmp_path / "tritonserver"))
    repo = tmp_path / "repo"
    cmd = EmbeddedServer(repo).command(
        binary, 1, 2, 3, metrics_interval_ms=200, exit_timeout_s=5, extra_args=["--x"]
    )
    assert cmd[0] == str(binary.path)
    assert f"--model-repository={repo}" in cmd
    assert "--model-control-mode=explicit" in cmd
    assert {"--http-port=1", "--grpc-port=2", "--metrics-port=3"} <= set(cmd)
    assert "--metrics-interval-ms=200" in cmd
    assert "--exit-timeout-secs=5" in cmd
    assert not any(a.startswith("--load-model") for a in cmd)
    assert cmd[-1] == "--x"
    # a failed load does not make the whole server "not ready", unless asked
    assert "--strict-readiness=false" in cmd
    strict = EmbeddedServer(repo).command(binary, 1, 2, 3, extra_args=["--strict-readiness=true"])
    assert [a for a in strict if a.startswith("--strict-readiness")] == ["--strict-readiness=true"]


# --------------------------------------------------------------------- ports


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(3)
    assert len(set(ports)) == 3
    assert not any(port_in_use(p) for p in ports)
    assert isinstance(free_port(), int)


def test_a_listening_port_is_in_use() -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        assert port_in_use(sock.getsockname()[1])


def test_start_refuses_a_busy_port_before_spawning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_spawn(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not look for a binary or spawn")

    monkeypatch.setattr(srv, "find_tritonserver", no_spawn)
    http, grpc = free_ports(2)
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        with pytest.raises(ServerError, match=rf"port {busy} \(metrics\) is already in use"):
            EmbeddedServer(tmp_path).start(http, grpc, busy)


def test_start_refuses_the_same_port_twice(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="must differ"):
        EmbeddedServer(tmp_path).start(18000, 18000, 18002)


def test_start_on_a_missing_repository_is_a_repository_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="does not exist"):
        EmbeddedServer(tmp_path / "missing").start(*free_ports(3))


# --------------------------------------------------------------------- records


def test_server_info_round_trips_through_json(tmp_path: Path) -> None:
    info = _info(tmp_path, 123, 456.0)
    _write(tmp_path, info)
    assert read_record(tmp_path) == info
    data = info.to_json()
    assert data["http_url"] == "http://127.0.0.1:18000"
    assert data["grpc_url"] == "grpc://127.0.0.1:18001"
    assert data["metrics_url"] == "http://127.0.0.1:18002"


def test_unreadable_record_is_ignored(tmp_path: Path) -> None:
    (tmp_path / ".tritonctl").mkdir()
    (tmp_path / ".tritonctl" / "server.json").write_text("{not json")
    assert read_record(tmp_path) is None
    (tmp_path / ".tritonctl" / "server.json").write_text('{"pid": 1}')
    assert read_record(tmp_path) is None


def test_status_cleans_up_a_record_whose_pid_is_dead(tmp_path: Path) -> None:
    _write(tmp_path, _info(tmp_path, _dead_pid(), 1.0))
    assert EmbeddedServer(tmp_path).status() is None
    assert not (tmp_path / ".tritonctl" / "server.json").exists()


def test_a_reused_pid_is_not_the_recorded_server(tmp_path: Path) -> None:
    me = psutil.Process()
    _write(tmp_path, _info(tmp_path, me.pid, me.create_time() - 1000))
    assert running_server(tmp_path) is None
    assert EmbeddedServer(tmp_path).status() is None


def test_stop_never_signals_a_process_that_is_not_the_recorded_one(tmp_path: Path) -> None:
    me = psutil.Process()
    _write(tmp_path, _info(tmp_path, me.pid, me.create_time() + 5))
    assert EmbeddedServer(tmp_path).stop(timeout=1) is None  # and we are still alive
    assert not (tmp_path / ".tritonctl" / "server.json").exists()


def test_a_live_recorded_process_is_running(tmp_path: Path) -> None:
    me = psutil.Process()
    info = _info(tmp_path, me.pid, me.create_time())
    _write(tmp_path, info)
    assert running_server(tmp_path) == info
    assert EmbeddedServer(tmp_path).status() == info


def test_start_refuses_while_the_recorded_server_runs(tmp_path: Path) -> None:
    me = psutil.Process()
    _write(tmp_path, _info(tmp_path, me.pid, me.create_time()))
    with pytest.raises(ServerError, match=rf"already running .*pid {me.pid}, http://"):
        EmbeddedServer(tmp_path).start(*free_ports(3))


def test_stop_terminates_the_recorded_process_and_removes_the_record(tmp_path: Path) -> None:
    proc = psutil.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write(tmp_path, _info(tmp_path, proc.pid, proc.create_time()))
        stopped = EmbeddedServer(tmp_path).stop(timeout=10)
        assert stopped is not None and stopped.pid == proc.pid
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
        assert not (tmp_path / ".tritonctl" / "server.json").exists()
    finally:
        if proc.is_running():
            proc.kill()


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
    proc = psutil.Popen([sys.executable, "-c", code], stdout=-1, start_new_session=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the handler is installed
        _write(tmp_path, _info(tmp_path, proc.pid, proc.create_time()))
        assert EmbeddedServer(tmp_path).stop(timeout=0.5) is not None
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.is_running():
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()


def test_stop_without_a_record_does_nothing(tmp_path: Path) -> None:
    assert EmbeddedServer(tmp_path).stop() is None


def _fake_stub(tmp_path: Path, repo: Path, name: str, code: str) -> tuple[str, Path]:
    """A shell command that starts, in the background, a process that looks like a
    Python-backend stub of ``repo`` (its argv: the stub, the model file running ``code``,
    the shared-memory region), and that fake shared-memory region."""
    stub = tmp_path / "bin" / "triton_python_backend_stub"
    stub.parent.mkdir(exist_ok=True)
    if not stub.exists():
        stub.symlink_to(sys.executable)
    model = repo / name / "1" / "model.py"
    model.parent.mkdir(parents=True)
    model.write_text(code)
    region = f"triton_python_backend_shm_region_test-{tmp_path.name}-{repo.name}-{name}"
    shm = Path("/dev/shm") / region
    shm.write_bytes(b"\0" * 16)
    return f'"{stub}" "{model}" {region} </dev/null >/dev/null 2>&1 &', shm


def _orphan_stub(tmp_path: Path, repo: Path, name: str) -> tuple[int, int, Path]:
    """A fake stub of ``repo`` (:func:`_fake_stub`) left running by a process-group
    leader that has already exited, as a SIGKILLed tritonserver leaves its stubs. Returns
    the leader's pid (the group id), the stub's pid and its fake shared-memory region."""
    import subprocess

    start, shm = _fake_stub(tmp_path, repo, name, "import time\ntime.sleep(600)\n")
    leader = subprocess.Popen(
        ["/bin/sh", "-c", f"{start} echo $!"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    out, _ = leader.communicate(timeout=10)
    return leader.pid, int(out.strip()), shm


def test_stop_kills_the_stubs_that_outlive_the_server(tmp_path: Path) -> None:
    """A stub hung in its model's code does not exit with tritonserver: stop kills it."""
    import subprocess

    repo = tmp_path / "repo"
    hangs = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)\n"
    start, shm = _fake_stub(tmp_path, repo, "m", hangs)
    # the server: leads its own session, exits on SIGTERM, leaves its stub running
    server = subprocess.Popen(["/bin/sh", "-c", f"{start} wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not srv.leftover_stubs(repo, server.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        [hung] = srv.leftover_stubs(repo, server.pid)
        _write(repo, _info(repo, server.pid, psutil.Process(server.pid).create_time()))
        assert EmbeddedServer(repo).stop(timeout=5) is not None
        assert server.wait(timeout=5) is not None
        assert not psutil.pid_exists(hung.pid) or hung.status() == psutil.STATUS_ZOMBIE
        assert not shm.exists()
        assert read_record(repo) is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        shm.unlink(missing_ok=True)


def test_a_dead_server_s_leftover_stubs_are_stopped_and_their_shared_memory_removed(
    tmp_path: Path,
) -> None:
    import psutil

    from manager.server import leftover_stubs, stop_leftover_stubs

    repo = tmp_path / "repo"
    other_repo = tmp_path / "other"
    group, stub_pid, shm = _orphan_stub(tmp_path, repo, "m")
    other_group, other_pid, other_shm = _orphan_stub(tmp_path, other_repo, "m")
    try:
        assert [p.pid for p in leftover_stubs(repo, group)] == [stub_pid]
        assert leftover_stubs(repo, other_group) == []  # another group: not this server's
        assert stop_leftover_stubs(repo, group) == 1
        assert not psutil.pid_exists(stub_pid) or (
            psutil.Process(stub_pid).status() == psutil.STATUS_ZOMBIE
        )
        assert not shm.exists()
        assert psutil.Process(other_pid).is_running() and other_shm.exists()
    finally:
        for pid in (stub_pid, other_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for path in (shm, other_shm):
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------- foreground

FAKE_TRITONSERVER = f"""#!{sys.executable}
import http.server, sys
port = int([a for a in sys.argv if a.startswith("--http-port=")][0].split("=")[1])
class Live(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Live).serve_forever()
"""


def test_a_foreground_server_is_stopped_when_on_ready_fails(tmp_path: Path) -> None:
    """Nothing would wait on it, forward signals to it or remove its record."""
    binary = tmp_path / "bin" / "tritonserver"
    binary.parent.mkdir()
    binary.write_text(FAKE_TRITONSERVER)
    binary.chmod(0o755)
    repo = tmp_path / "repo"
    repo.mkdir()
    started: list[ServerInfo] = []

    def fail(info: ServerInfo) -> None:
        started.append(info)
        raise RuntimeError("on_ready failed")

    try:
        with pytest.raises(RuntimeError, match="on_ready failed"):
            EmbeddedServer(repo, binary=binary).start(
                *free_ports(3), foreground=True, on_ready=fail, wait_timeout=30
            )
        (info,) = started
        assert not psutil.pid_exists(info.pid) or (
            psutil.Process(info.pid).status() == psutil.STATUS_ZOMBIE
        )
        assert read_record(repo) is None
    finally:
        for info in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)


def test_stop_of_another_user_s_server_is_a_clear_error_and_keeps_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = psutil.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = _info(tmp_path, proc.pid, proc.create_time())
        _write(tmp_path, info)

        def denied(self: psutil.Process) -> None:  # as os.kill answers for another user's
            raise psutil.AccessDenied(self.pid)

        monkeypatch.setattr(psutil.Process, "terminate", denied)
        with pytest.raises(ServerError, match=rf"not allowed to stop tritonserver pid {proc.pid}"):
            EmbeddedServer(tmp_path).stop(timeout=1)
        assert proc.is_running()
        assert read_record(tmp_path) == info  # it still runs: still the repository's server
    finally:
        proc.kill()
        proc.wait()
