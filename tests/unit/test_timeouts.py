"""The Triton timeouts a user sets: --load-timeout, --call-timeout, --connect-timeout, the
TRITONCTL_*_TIMEOUT variables and tritonctl.yaml's ``timeouts:``; their order of
precedence, their checks, and that every control made for a load gets them."""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from manager import rollout_service
from manager.api import ControlPlane, create_app
from manager.budget import load_serving_config, parse_serving_config, resolve_control_timeouts
from manager.cli import main
from manager.controller import Controller
from manager.errors import ConfigError, ManagerError
from manager.repository import Repository
from manager.timeouts import Timeouts, env_timeouts, parse_timeout
from manager.triton import AsyncTritonControl, TritonControl
from tests.localhttp import local_http_server

ENV = ("TRITONCTL_LOAD_TIMEOUT", "TRITONCTL_CALL_TIMEOUT", "TRITONCTL_CONNECT_TIMEOUT")
URL = "http://127.0.0.1:9"  # nothing is ever asked of it: the controls are only made
KEYWORDS = ("timeout", "call_timeout", "connect_timeout")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*ENV, "TRITONCTL_URL", "TRITONCTL_REPO", "TRITONCTL_METRICS_URL"):
        monkeypatch.delenv(name, raising=False)


def write_settings(repo: Path, text: str) -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    path = repo / "tritonctl.yaml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(("value", "seconds"), [(900, 900.0), (0.5, 0.5), ("1800", 1800.0)])
def test_a_timeout_is_a_positive_number_of_seconds(value: Any, seconds: float) -> None:
    assert parse_timeout(value, "x") == seconds


@pytest.mark.parametrize("value", [0, -1, "0", "-5", "abc", "", "nan", "inf", math.inf, True, [1]])
def test_anything_else_is_refused_naming_where_it_came_from(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^the setting must be a positive"):
        parse_timeout(value, "the setting")


def test_the_environment_sets_timeouts_and_a_bad_value_names_its_variable() -> None:
    env = {"TRITONCTL_LOAD_TIMEOUT": "1800", "TRITONCTL_CONNECT_TIMEOUT": " 12.5 "}
    assert env_timeouts(env) == Timeouts(load=1800, connect=12.5)
    assert env_timeouts({"TRITONCTL_CALL_TIMEOUT": ""}) == Timeouts()  # empty: unset
    with pytest.raises(ConfigError, match=r"^TRITONCTL_CALL_TIMEOUT must be a positive"):
        env_timeouts({"TRITONCTL_CALL_TIMEOUT": "30s"})
    with pytest.raises(ConfigError, match=r"TRITONCTL_LOAD_TIMEOUT .*'-1'"):
        env_timeouts({"TRITONCTL_LOAD_TIMEOUT": "-1"})


def test_tritonctl_yaml_takes_a_timeouts_section(tmp_path: Path) -> None:
    path = write_settings(tmp_path, "timeouts:\n  load: 1800\n  connect: 10\n")
    assert load_serving_config(path).timeouts == Timeouts(load=1800, connect=10)
    assert parse_serving_config({}).timeouts == Timeouts()
    assert parse_serving_config({"timeouts": None}).timeouts == Timeouts()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"load": 0}, "timeouts.load must be a positive"),
        ({"call": "soon"}, "timeouts.call must be a positive"),
        ({"connect": float("nan")}, "timeouts.connect must be a positive"),
        ({"lode": 900}, "unknown timeout lode"),
        (900, "timeouts must be a mapping"),
    ],
)
def test_a_bad_timeouts_section_is_refused(tmp_path: Path, section: Any, message: str) -> None:
    with pytest.raises(
        ConfigError, match=f"^{re.escape(str(tmp_path / 'tritonctl.yaml'))}: {message}"
    ):
        parse_serving_config({"timeouts": section}, source=tmp_path / "tritonctl.yaml")


# --------------------------------------------------------------------------- precedence


def test_options_beat_the_environment_which_beats_the_file_which_beats_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_settings(tmp_path, "timeouts: {load: 1000, call: 40, connect: 8}\n")
    assert resolve_control_timeouts(None, tmp_path) == Timeouts(1000, 40, 8)
    monkeypatch.setenv("TRITONCTL_LOAD_TIMEOUT", "2000")
    monkeypatch.setenv("TRITONCTL_CALL_TIMEOUT", "50")
    assert resolve_control_timeouts(None, tmp_path) == Timeouts(2000, 50, 8)
    given = Timeouts(load=3000)
    assert resolve_control_timeouts(given, tmp_path) == Timeouts(3000, 50, 8)
    assert resolve_control_timeouts(None, tmp_path / "elsewhere") == Timeouts(2000, 50, 5)
    monkeypatch.delenv("TRITONCTL_LOAD_TIMEOUT")
    monkeypatch.delenv("TRITONCTL_CALL_TIMEOUT")
    assert resolve_control_timeouts(None, None) == Timeouts(600, 30, 5)


def test_a_config_file_given_is_read_instead_of_the_repositorys(tmp_path: Path) -> None:
    write_settings(tmp_path / "repo", "timeouts: {load: 1000}\n")
    other = write_settings(tmp_path / "other", "timeouts: {load: 1500}\n")
    assert resolve_control_timeouts(None, tmp_path / "repo", other).load == 1500
    config = parse_serving_config({"timeouts": {"load": 1700}})
    assert resolve_control_timeouts(None, tmp_path / "repo", config=config).load == 1700


def test_the_file_is_not_read_when_options_and_environment_set_every_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_settings(tmp_path, "timeouts: {load: -1}\n")
    with pytest.raises(ConfigError, match=r"timeouts\.load"):
        resolve_control_timeouts(Timeouts(load=1), tmp_path)
    monkeypatch.setenv("TRITONCTL_CONNECT_TIMEOUT", "3")
    assert resolve_control_timeouts(Timeouts(1, 1), tmp_path) == Timeouts(1, 1, 3)


# --------------------------------------------------------------------------- controls


@pytest.mark.parametrize("cls", [TritonControl, AsyncTritonControl])
def test_connect_resolves_the_timeouts_and_keeps_those_given(
    cls: type[TritonControl], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_settings(tmp_path, "timeouts: {load: 1800, call: 60}\n")
    monkeypatch.setenv("TRITONCTL_CONNECT_TIMEOUT", "20")
    control = cls.connect(URL, tmp_path)
    assert (control.timeout, control.call_timeout, control.connect_timeout) == (1800, 60, 20)
    control = cls.connect(URL, tmp_path, timeout=900, call_timeout=None)
    assert (control.timeout, control.call_timeout, control.connect_timeout) == (900, 60, 20)
    control = cls.connect(URL, tmp_path, timeout=10)
    assert control.call_timeout == 10  # never more than a load may take


@pytest.mark.parametrize("option", ["timeout", "call_timeout", "connect_timeout"])
@pytest.mark.parametrize("value", [0, -3, math.nan, math.inf])
def test_a_control_refuses_a_timeout_that_is_no_positive_number(option: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"^{option} must be a positive"):
        TritonControl(URL, **{option: value})


def test_a_controllers_loads_wait_as_long_as_its_control_lets_a_load_take(tmp_path: Path) -> None:
    control = TritonControl(URL, metrics_url="http://127.0.0.1:9", timeout=1800)
    assert Controller(control, tmp_path).load_timeout == 1800
    assert Controller(control, tmp_path, load_timeout=20).load_timeout == 20


# --------------------------------------------------------------------------- the CLI


class Made:
    """Records the timeouts of every control made, and refuses to go on (nothing answers)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.timeouts: list[tuple[float, float, float]] = []
        real = TritonControl.__init__

        def init(control: TritonControl, url: str, **options: Any) -> None:
            real(control, url, **options)
            self.timeouts.append((control.timeout, control.call_timeout, control.connect_timeout))
            raise ManagerError("made")

        monkeypatch.setattr(TritonControl, "__init__", init)


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> Made:
    return Made(monkeypatch)


def cli(repo: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    argv = ["--repo", str(repo), "--url", URL, *args]
    result = CliRunner().invoke(main, argv, env=env)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "command",
    [
        ("ls",),
        ("load", "m"),
        ("unload", "m"),
        ("evict", "m"),
        ("endpoint", "switch", "ep", "--to", "m"),
        ("rollout", "start", "ep", "--to", "2"),
        ("rollout", "run", "ep"),
        ("controller", "run", "--iterations", "1"),
        ("prune", "m", "--keep", "1"),
    ],
)
def test_every_command_that_calls_triton_gets_the_timeouts_set(
    tmp_path: Path, made: Made, command: tuple[str, ...]
) -> None:
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n')
    write_settings(repo, "timeouts: {connect: 9}\n")
    code, out = cli(repo, "--load-timeout", "1800", *command, env={"TRITONCTL_CALL_TIMEOUT": "45"})
    assert made.timeouts == [(1800, 45, 9)], out
    assert code == 1 and "error: made" in out


def test_without_settings_the_cli_uses_the_defaults(tmp_path: Path, made: Made) -> None:
    cli(tmp_path, "ls")
    assert made.timeouts == [(600, 30, 5)]


def test_load_waits_for_the_load_timeout_and_a_longer_wait_lets_the_load_take_as_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[tuple[float, float]] = []

    def load_model(control: TritonControl, *args: Any, wait_timeout: float) -> None:
        waits.append((control.timeout, wait_timeout))
        raise ManagerError("stop")

    from manager.cli import serving_cmds

    monkeypatch.setattr(serving_cmds, "load_model", load_model)
    cli(tmp_path, "--load-timeout", "1800", "load", "m")
    cli(tmp_path, "load", "m", "--wait-timeout", "1200")
    cli(tmp_path, "--load-timeout", "1800", "load", "m", "--wait-timeout", "60")
    assert waits == [(1800, 1800), (1200, 1200), (1800, 60)]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--load-timeout", "0"), {}, "Invalid value for '--load-timeout'"),
        (("--call-timeout", "-1"), {}, "Invalid value for '--call-timeout'"),
        (("--connect-timeout", "nan"), {}, "Invalid value for '--connect-timeout'"),
        (("--load-timeout", "10m"), {}, "Invalid value for '--load-timeout'"),
        ((), {"TRITONCTL_LOAD_TIMEOUT": "abc"}, "error: TRITONCTL_LOAD_TIMEOUT must be"),
        ((), {"TRITONCTL_CONNECT_TIMEOUT": "0"}, "error: TRITONCTL_CONNECT_TIMEOUT must be"),
    ],
)
def test_a_bad_timeout_fails_every_command_before_anything_is_done(
    tmp_path: Path, made: Made, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    code, out = cli(tmp_path, *args, "ls", env=env)
    assert code == 2
    assert message in out
    assert made.timeouts == []


def test_a_bad_timeouts_section_fails_a_command_with_the_files_name(
    tmp_path: Path, made: Made
) -> None:
    write_settings(tmp_path, "timeouts: {call: 0}\n")
    code, out = cli(tmp_path, "ls")
    assert code == 2
    assert f"error: {tmp_path / 'tritonctl.yaml'}: timeouts.call must be a positive" in out
    assert made.timeouts == []


def test_server_start_restore_serves_the_endpoints_within_the_timeouts(
    tmp_path: Path, made: Made
) -> None:
    from manager.cli import server_cmds
    from manager.server import ServerInfo

    info = ServerInfo(
        pid=1,
        create_time=0.0,
        log_file=None,
        http_port=1,
        grpc_port=2,
        metrics_port=3,
        repo=str(tmp_path),
        started_at="",
        binary="tritonserver",
    )
    from manager.cli.common import Context

    obj = Context(repo=tmp_path, load_timeout=1800)
    with pytest.raises(ManagerError, match="made"):
        server_cmds._restore_endpoints(obj, info)
    assert made.timeouts == [(1800, 30, 5)]


# --------------------------------------------------------------------------- the rollout worker


def test_a_background_rollout_worker_is_given_the_timeouts_and_metrics_url_of_its_starter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []

    class Proc:
        pid = 4242

    def popen(argv: list[str], **options: Any) -> Proc:
        started.append(argv)
        return Proc()

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(rollout_service, "_wait_for_worker", lambda *a: None)
    repo = Repository(tmp_path)
    control = TritonControl(
        URL,
        metrics_url="http://metrics.example:9102",
        timeout=1800,
        call_timeout=45,
        connect_timeout=9,
    )
    assert rollout_service._spawn_for(repo, control, "ep") == 4242
    argv = started[0]
    worker = argv[argv.index("manager.cli") + 1 :]
    assert worker[: worker.index("rollout")] == [
        "--repo",
        str(tmp_path),
        "--url",
        URL,
        "--metrics-url",
        "http://metrics.example:9102",
        "--load-timeout",
        "1800.0",
        "--call-timeout",
        "45.0",
        "--connect-timeout",
        "9.0",
        "-v",
    ]
    # what the worker's command line makes of them
    made = Made(monkeypatch)
    result = CliRunner().invoke(main, worker)
    assert made.timeouts == [(1800, 45, 9)], result.output


# --------------------------------------------------------------------------- the REST plane


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The options of every control the control plane makes (which then refuses)."""
    seen: list[dict[str, Any]] = []

    def connect(cls: type, *args: Any, **options: Any) -> TritonControl:
        control = TritonControl(URL, **{k: options[k] for k in KEYWORDS})
        seen.append(
            {
                "timeout": control.timeout,
                "call_timeout": control.call_timeout,
                "connect_timeout": control.connect_timeout,
            }
        )
        raise ManagerError("made")

    monkeypatch.setattr(TritonControl, "connect", classmethod(connect))
    yield seen


def test_the_control_plane_takes_the_timeouts_and_checks_them_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connects: list[dict[str, Any]]
) -> None:
    write_settings(tmp_path, "timeouts: {call: 40}\n")
    monkeypatch.setenv("TRITONCTL_CONNECT_TIMEOUT", "8")
    plane = ControlPlane(tmp_path, URL, load_timeout=1800)
    with pytest.raises(ManagerError), plane.control():
        pass
    assert connects[-1] == {"timeout": 1800, "call_timeout": 40, "connect_timeout": 8}
    # the health check and the metrics scrape stay quick whatever is set
    with pytest.raises(ManagerError), plane.control(timeout=5):
        pass
    assert connects[-1] == {"timeout": 5, "call_timeout": 5, "connect_timeout": 5}

    monkeypatch.setenv("TRITONCTL_LOAD_TIMEOUT", "never")
    with pytest.raises(ConfigError, match="TRITONCTL_LOAD_TIMEOUT"):
        ControlPlane(tmp_path, URL)
    monkeypatch.delenv("TRITONCTL_LOAD_TIMEOUT")
    write_settings(tmp_path, "timeouts: {load: 0}\n")
    with pytest.raises(ConfigError, match=r"timeouts\.load"):
        ControlPlane(tmp_path, URL)


def test_a_rest_load_waits_for_the_load_timeout_unless_asked_to_wait_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connects: list[dict[str, Any]]
) -> None:
    from manager.api import routes_models

    def load_model(control: Any, *args: Any, wait_timeout: float) -> None:
        raise AssertionError("the control was made")

    monkeypatch.setattr(routes_models, "load_model", load_model)
    client = TestClient(create_app(tmp_path, URL, load_timeout=1800))
    client.post("/v1/models/m/load", json={})
    client.post("/v1/models/m/load", json={"wait_timeout": 2400})
    assert [c["timeout"] for c in connects] == [1800, 2400]


def test_api_serve_hands_the_global_timeouts_to_the_control_plane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from manager.cli import api_cmds

    planes: list[ControlPlane] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **k: planes.append(app.state.plane))
    monkeypatch.setattr(api_cmds, "_check_listen", lambda host, port: None)
    monkeypatch.setenv("TRITONCTL_LOAD_TIMEOUT", "1800")
    result = CliRunner().invoke(
        main, ["--repo", str(tmp_path), "--url", URL, "--call-timeout", "45", "api", "serve"]
    )
    assert result.exit_code == 0, result.output
    assert planes[0].timeouts() == Timeouts(1800, 45, 5)


# --------------------------------------------------------------------------- smoke tests


@pytest.fixture
def load_hangs() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a Triton that is live and never answers a load."""
    import http.server
    import threading

    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def do_GET(self) -> None:
            self._answer(200 if self.path == "/v2/health/live" else 404)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.endswith("/load"):
                release.wait(60)
            self._answer(200)

        def log_message(self, *args: object) -> None:
            pass

    with local_http_server(Handler) as url:
        try:
            yield url
        finally:
            release.set()


def test_a_smoke_tests_load_takes_the_load_timeout_it_is_given(
    load_hangs: str, tmp_path: Path
) -> None:
    import time

    from manager.errors import LoadError
    from manager.modelconfig import TensorSpec, build_config
    from manager.smoke import smoke_test

    spec = TensorSpec("x", "FP32", (-1,))
    config = build_config("m", [spec], [spec], backend="python", kind="cpu")
    started = time.monotonic()
    with pytest.raises(LoadError, match=f"no answer from {load_hangs} within 1 s"):
        smoke_test(tmp_path, config, 1, [], url=load_hangs, timeouts=Timeouts(load=1))
    assert time.monotonic() - started < 10


def test_publish_smoke_tests_within_the_timeouts_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from manager import publish as publish_module
    from manager import smoke

    given: list[Timeouts | None] = []

    def smoke_test(*args: Any, timeouts: Timeouts | None = None, **options: Any) -> int:
        given.append(timeouts)
        raise ManagerError("smoke tested")

    monkeypatch.setattr(smoke, "smoke_test", smoke_test)
    verify = publish_module.smoke_verifier(True, timeouts=Timeouts(1800, 45, 9))
    assert verify is not None
    (tmp_path / "1").mkdir()
    with pytest.raises(ManagerError, match="smoke tested"):
        verify(tmp_path, None)  # type: ignore[arg-type]
    assert given == [Timeouts(1800, 45, 9)]

    from manager.cli import publish_cmds

    verifiers: list[Timeouts | None] = []

    def smoke_verifier(*args: Any, timeouts: Timeouts | None = None) -> None:
        verifiers.append(timeouts)
        raise ManagerError("stop")

    monkeypatch.setattr(publish_cmds, "smoke_verifier", smoke_verifier)
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"")
    code, out = cli(
        tmp_path / "repo", "--load-timeout", "1800", "publish", "m", str(artifact), "--smoke-test"
    )
    assert code == 1 and "error: stop" in out
    assert verifiers == [Timeouts(1800, 30, 5)], out
