"""A restarted server serves nothing (explicit mode); `server start --restore` brings the
repository's endpoints back."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from click.testing import CliRunner

from manager.cli import main
from manager.endpoints import Endpoints
from manager.publish import publish
from manager.repository import Repository
from manager.server import EmbeddedServer, free_ports, read_record
from manager.triton import TritonControl
from tests.modelfactory import write_python_model

pytestmark = pytest.mark.integration


def call(url: str, model: str) -> np.ndarray:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        t = httpclient.InferInput("X", [2], "FP32")
        t.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
        return client.infer(model, [t]).as_numpy("Y")
    finally:
        client.close()


def test_server_start_restore_serves_endpoints_again(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    publish(repo, "addone", write_python_model(tmp_path / "addone"))
    ports = [str(p) for p in free_ports(3)]
    server = EmbeddedServer(repo.path)
    info = server.start(*map(int, ports), tied=True)
    try:
        with TritonControl.for_server(info) as control:
            Endpoints(repo, control).switch("plus", "addone", 1)
        np.testing.assert_allclose(call(info.http_url, "plus"), [2.0, 3.0])
    finally:
        server.stop()
    runner = CliRunner()
    args = [
        "--repo",
        str(repo.path),
        "server",
        "start",
        "--http-port",
        ports[0],
        "--grpc-port",
        ports[1],
        "--metrics-port",
        ports[2],
        "--restore",
    ]
    try:
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
        assert "endpoint plus serving addone:1" in result.stdout
        np.testing.assert_allclose(call(f"http://127.0.0.1:{ports[0]}", "plus"), [2.0, 3.0])
        # loaded before the server took any request: no client found it up without them
        log = (repo.meta_dir / "server.log").read_text()
        opened = log.index("Started HTTPService")
        for model in ("plus", "addone"):
            assert -1 < log.find(f"successfully loaded '{model}'") < opened, model
    finally:
        runner.invoke(main, ["--repo", str(repo.path), "server", "stop"])


def _one_endpoint_broken(tmp_path: Path) -> tuple[Repository, list[int]]:
    """Endpoints ``plus`` (serves) and ``breaks`` (its model's file broken while the
    server was down); the server stopped. Returns the repository and the ports it used."""
    repo = Repository(tmp_path / "repo")
    publish(repo, "addone", write_python_model(tmp_path / "addone"))
    publish(repo, "fragile", write_python_model(tmp_path / "fragile"))
    server = EmbeddedServer(repo.path)
    ports = free_ports(3)
    info = server.start(*ports, tied=True)
    try:
        with TritonControl.for_server(info) as control:
            Endpoints(repo, control).switch("plus", "addone", 1)
            Endpoints(repo, control).switch("breaks", "fragile", 1)
    finally:
        server.stop()
    (repo.path / "fragile" / "1" / "model.py").write_text("raise RuntimeError('broken')\n")
    return repo, ports


def test_a_target_that_no_longer_loads_does_not_keep_the_others_down(tmp_path: Path) -> None:
    repo, ports = _one_endpoint_broken(tmp_path)
    runner = CliRunner()
    argv = ["--repo", str(repo.path), "server", "start", "--restore"]
    ports_args = ["--http-port", str(ports[0]), "--grpc-port", str(ports[1])]
    try:
        result = runner.invoke(main, [*argv, *ports_args, "--metrics-port", str(ports[2])])
        assert result.exit_code == 1, result.output
        assert "breaks: " in result.output and "broken" in result.output
        assert "(serving again: plus)" in result.output
        np.testing.assert_allclose(call(f"http://127.0.0.1:{ports[0]}", "plus"), [2.0, 3.0])
    finally:
        runner.invoke(main, ["--repo", str(repo.path), "server", "stop"])


def test_a_foreground_server_serves_on_when_an_endpoint_does_not_restore(tmp_path: Path) -> None:
    """As a container's entrypoint: one broken endpoint must not take the others down."""
    repo, ports = _one_endpoint_broken(tmp_path)
    tritonctl = Path(sys.executable).parent / "tritonctl"
    cmd = [str(tritonctl), "--repo", str(repo.path), "server", "start", "--foreground"]
    cmd += ["--restore", "--http-port", str(ports[0]), "--grpc-port", str(ports[1])]
    cmd += ["--metrics-port", str(ports[2])]
    err = tmp_path / "stderr"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        while "not restored: breaks" not in err.read_text():
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1)
        assert proc.poll() is None, err.read_text()[-3000:]
        np.testing.assert_allclose(call(f"http://127.0.0.1:{ports[0]}", "plus"), [2.0, 3.0])
        served = read_record(repo.path)
        assert served is not None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert read_record(repo.path) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        EmbeddedServer(repo.path).stop(timeout=10)
