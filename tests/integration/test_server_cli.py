"""``tritonctl server start|status|stop`` and the embedded server's lifecycle, for real."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from manager.cli import main
from manager.errors import ServerError
from manager.server import EmbeddedServer, free_ports, probe_live, read_record

pytestmark = pytest.mark.integration


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    """A second, empty repository; whatever server a test left on it is stopped."""
    path = tmp_path / "repo2"
    path.mkdir()
    yield path
    EmbeddedServer(path).stop(timeout=10)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_server_start_status_stop_on_free_ports(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    http, grpc, metrics = free_ports(3)
    ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]

    code, out = run("--repo", str(repo), "server", "start", *ports)
    assert code == 0, out
    assert f"http://127.0.0.1:{http}" in out
    assert f"grpc://127.0.0.1:{grpc}" in out
    assert "curl" in out
    info = read_record(repo)
    assert info is not None and psutil.pid_exists(info.pid)
    assert probe_live(info.http_url)

    # the commands it suggests work as printed from another directory
    (hint,) = [line for line in out.splitlines() if "tritonctl" in line and " ls" in line]
    ls_command = shlex.split(hint.split("&&")[1])
    assert ls_command[0] == "tritonctl" and ls_command[-1] == "ls", hint
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRITONCTL_REPO", raising=False)
    monkeypatch.setenv("TRITONCTL_URL", "http://127.0.0.1:9")
    code, listed = run(*ls_command[1:])
    assert code == 0 and f"models on http://127.0.0.1:{http}" in listed, (hint, listed)

    code, out = run("--repo", str(repo), "server", "status", "--json")
    assert code == 0, out
    status = json.loads(out)
    assert status["running"] and status["live"]
    assert status["pid"] == info.pid
    assert status["http_url"] == f"http://127.0.0.1:{http}"

    code, out = run("--repo", str(repo), "server", "start", *ports)
    assert code == 1
    assert "already running" in out and f"pid {info.pid}" in out
    assert len(out.strip().splitlines()) == 1

    code, out = run("--repo", str(repo), "server", "stop")
    assert code == 0, out
    assert f"stopped tritonserver pid {info.pid}" in out
    assert not psutil.pid_exists(info.pid) or psutil.Process(info.pid).status() == "zombie"
    assert read_record(repo) is None

    code, out = run("--repo", str(repo), "server", "status")
    assert code == 1
    assert "no tritonserver is running" in out
    code, out = run("--repo", str(repo), "server", "status", "--json")
    assert code == 1 and json.loads(out)["running"] is False


def test_server_start_refuses_a_busy_port(repo: Path) -> None:
    grpc, metrics = free_ports(2)
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        code, out = run(
            "--repo", str(repo), "server", "start", "--http-port", str(busy),
            "--grpc-port", str(grpc), "--metrics-port", str(metrics),
        )  # fmt: skip
    assert code == 1
    assert f"port {busy} (http) is already in use" in out
    assert read_record(repo) is None


def test_a_stale_record_does_not_block_a_new_start(repo: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (repo / ".tritonctl").mkdir()
    (repo / ".tritonctl" / "server.json").write_text(
        json.dumps(
            {
                "pid": dead.pid, "create_time": 1.0, "http_port": 1, "grpc_port": 2,
                "metrics_port": 3, "binary": "x", "repo": str(repo), "log_file": None,
                "started_at": "",
            }
        )
    )  # fmt: skip
    server = EmbeddedServer(repo)
    info = server.start(*free_ports(3), tied=True)
    assert info.pid != dead.pid
    assert server.status() == info
    assert server.stop() == info


def test_a_server_that_exits_while_starting_reports_its_log(repo: Path) -> None:
    with pytest.raises(ServerError, match="exited with code") as err:
        EmbeddedServer(repo).start(*free_ports(3), extra_args=["--no-such-option=1"])
    assert "last lines of" in str(err.value)
    assert "no-such-option" in str(err.value)
    assert read_record(repo) is None


def test_foreground_server_records_itself_and_stops_on_sigterm(repo: Path) -> None:
    http, grpc, metrics = free_ports(3)
    tritonctl = Path(sys.executable).parent / "tritonctl"
    cmd = [str(tritonctl), "--repo", str(repo), "server", "start", "--foreground"]
    cmd += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not probe_live(f"http://127.0.0.1:{http}"):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline
            time.sleep(0.2)
        info = read_record(repo)
        assert info is not None and info.http_port == http
        assert info.pid != proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert read_record(repo) is None
        assert not psutil.pid_exists(info.pid) or psutil.Process(info.pid).status() == "zombie"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


TIED_SERVER = """
import sys, time
from pathlib import Path
from manager.server import EmbeddedServer, free_ports
info = EmbeddedServer(Path(sys.argv[1])).start(*free_ports(3), tied=True)
print(info.pid, flush=True)
time.sleep(120)
"""


def test_a_tied_server_dies_with_the_process_that_started_it(repo: Path) -> None:
    """A throwaway server (a publish's smoke test) must not outlive a caller killed
    outright, as a cancelled CI job is."""
    proc = subprocess.Popen(
        [sys.executable, "-c", TIED_SERVER, str(repo)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        server_pid = int(proc.stdout.readline())
        assert psutil.pid_exists(server_pid)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        while psutil.pid_exists(server_pid):
            if psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE:
                break
            assert time.monotonic() < deadline, "the server outlived its caller"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_endpoint_show_says_when_a_crashed_server_cannot_tell_what_it_serves(
    repo: Path, tmp_path: Path
) -> None:
    from manager.endpoints import Endpoints
    from manager.publish import publish
    from manager.repository import Repository
    from manager.triton import TritonControl
    from tests.modelfactory import write_python_model

    publish(Repository(repo), "addone", write_python_model(tmp_path / "addone"))
    server = EmbeddedServer(repo)
    info = server.start(*free_ports(3), tied=True)
    with TritonControl.for_server(info) as control:
        Endpoints(Repository(repo), control).switch("plus", "addone", 1)
    os.kill(info.pid, signal.SIGKILL)  # a crash: its record stays
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(info.pid).wait(timeout=10)
    result = CliRunner().invoke(main, ["--repo", str(repo), "endpoint", "show", "plus"])
    assert result.exit_code == 0, result.output
    assert "addone:1" in result.stdout
    assert f"Triton does not answer at {info.http_url}" in result.stderr
    assert "not known" in result.stderr
