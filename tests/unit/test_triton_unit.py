"""URL resolution, response parsing and error mapping of the Triton facade."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from tritonclient.utils import InferenceServerException

from manager import server as srv
from manager.errors import (
    LoadError,
    ManagerError,
    ModelNotFoundError,
    TritonTimeoutError,
    TritonUnreachableError,
    UnloadError,
)
from manager.settings import DEFAULT_URL, METRICS_URL_ENV, URL_ENV
from manager.triton import (
    CALL_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    AsyncTritonControl,
    TritonControl,
    parse_index,
    parse_statistics,
    parse_url,
    resolve_endpoint,
    resolve_url,
    translate_error,
)
from tests.localhttp import local_http_server


def _record(repo: Path, pid: int, create_time: float) -> srv.ServerInfo:
    info = srv.ServerInfo(
        pid=pid,
        create_time=create_time,
        http_port=18100,
        grpc_port=18101,
        metrics_port=18102,
        binary="tritonserver",
        repo=str(repo),
        log_file=None,
        started_at="",
    )
    (repo / ".tritonctl").mkdir(parents=True, exist_ok=True)
    srv._write_record(repo, info)
    return info


@pytest.fixture(autouse=True)
def _no_url_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)


# --------------------------------------------------------------------- resolve_url


def test_explicit_url_wins_over_env_and_embedded_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = psutil.Process()
    _record(tmp_path, me.pid, me.create_time())
    monkeypatch.setenv(URL_ENV, "grpc://env:1")
    assert resolve_url("http://explicit:9", tmp_path) == "http://explicit:9"


def test_env_url_wins_over_embedded_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    me = psutil.Process()
    _record(tmp_path, me.pid, me.create_time())
    monkeypatch.setenv(URL_ENV, "grpc://env:1")
    assert resolve_url(None, tmp_path) == "grpc://env:1"


def test_running_embedded_server_of_the_repo_is_used(tmp_path: Path) -> None:
    me = psutil.Process()
    info = _record(tmp_path, me.pid, me.create_time())
    assert resolve_url(None, tmp_path) == info.http_url
    ep = resolve_endpoint(None, tmp_path)
    assert ep.metrics_url == info.metrics_url


def test_a_dead_embedded_server_is_still_the_one_named_not_localhost(tmp_path: Path) -> None:
    # what answers on the default port may be another repository's server: a controller
    # of this repository must not evict there while its own server is down
    me = psutil.Process()
    info = _record(tmp_path, me.pid, me.create_time() - 100)
    assert resolve_url(None, tmp_path) == info.http_url
    assert resolve_url(None, None) == DEFAULT_URL
    (tmp_path / ".tritonctl" / "server.json").unlink()  # `server status` clears it
    assert resolve_url(None, tmp_path) == DEFAULT_URL


def test_metrics_url_of_embedded_server_applies_to_its_grpc_url_too(tmp_path: Path) -> None:
    me = psutil.Process()
    info = _record(tmp_path, me.pid, me.create_time())
    ep = resolve_endpoint(info.grpc_url, tmp_path)
    assert ep.protocol == "grpc"
    assert ep.metrics_url == info.metrics_url


def test_metrics_url_given_or_from_the_environment_else_port_8002_of_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(METRICS_URL_ENV, raising=False)
    assert resolve_endpoint("http://far:9000", tmp_path).metrics_url == "http://far:8002"
    monkeypatch.setenv(METRICS_URL_ENV, "http://far:19002/")
    assert resolve_endpoint("http://far:9000", tmp_path).metrics_url == "http://far:19002"
    given = resolve_endpoint("grpc://far:9001", tmp_path, "https://m.example:443/metrics")
    assert given.metrics_url == "https://m.example:443"
    with TritonControl.connect("http://far:9000", tmp_path, metrics_url="http://x:1") as c:
        assert c.metrics_url == "http://x:1"
    for bad in ("far:19002", "ftp://far:1", "http://far:port"):
        with pytest.raises(ManagerError, match="metrics URL"):
            resolve_endpoint("http://far:9000", tmp_path, bad)


def test_loads_on_the_embedded_server_go_over_its_grpc_url_whatever_url_is_given(
    tmp_path: Path,
) -> None:
    me = psutil.Process()
    info = _record(tmp_path, me.pid, me.create_time())
    assert resolve_endpoint(None, tmp_path).control_url == info.grpc_url
    assert resolve_endpoint(info.http_url, tmp_path).control_url == info.grpc_url
    # gRPC already, or another server: nothing to add
    assert resolve_endpoint(info.grpc_url, tmp_path).control_url is None
    assert resolve_endpoint("http://far:9000", tmp_path).control_url is None
    assert resolve_endpoint(info.http_url, None).control_url is None
    with TritonControl.connect(None, tmp_path, metrics_url="http://x:1") as control:
        assert control.url == info.http_url and control.endpoint.control_url == info.grpc_url
    with TritonControl.for_server(info) as control:
        assert control.endpoint.control_url == info.grpc_url
    with pytest.raises(ManagerError, match="grpc://"):
        TritonControl("http://h:1", control_url="http://h:2")


def test_the_grpc_url_of_a_server_is_its_url_or_its_control_url() -> None:
    with TritonControl("grpc://h:1") as control:
        assert control.grpc_url == "grpc://h:1"
    with TritonControl("http://h:1", control_url="grpc://h:2") as control:
        assert control.grpc_url == "grpc://h:2"
    with TritonControl("http://h:1") as control:
        assert control.grpc_url is None


def test_connect_builds_a_control_for_the_resolved_endpoint(tmp_path: Path) -> None:
    me = psutil.Process()
    info = _record(tmp_path, me.pid, me.create_time())
    with TritonControl.connect(None, tmp_path) as control:
        assert control.url == info.http_url
        assert control.metrics_url == info.metrics_url


# --------------------------------------------------------------------- parse_url


@pytest.mark.parametrize(
    ("url", "protocol", "address", "metrics"),
    [
        ("http://h:9000", "http", "h:9000", "http://h:8002"),
        ("grpc://h:9001", "grpc", "h:9001", "http://h:8002"),
        ("h:9000", "http", "h:9000", "http://h:8002"),
        ("http://h", "http", "h:8000", "http://h:8002"),
        ("grpc://h", "grpc", "h:8001", "http://h:8002"),
        ("grpc://[::1]:5", "grpc", "[::1]:5", "http://[::1]:8002"),
        ("http://h:1/", "http", "h:1", "http://h:8002"),
        ("grpc://[::1]:5/", "grpc", "[::1]:5", "http://[::1]:8002"),
        ("[::1]:5", "http", "[::1]:5", "http://[::1]:8002"),
        (" HTTP://H:1 ", "http", "h:1", "http://h:8002"),
    ],
)
def test_parse_url_understands_http_grpc_and_bare_addresses(
    url: str, protocol: str, address: str, metrics: str
) -> None:
    ep = parse_url(url)
    assert (ep.protocol, ep.address, ep.metrics_url) == (protocol, address, metrics)


def test_parse_url_keeps_an_explicit_metrics_url() -> None:
    assert parse_url("grpc://h:1", metrics_url="http://m:2/").metrics_url == "http://m:2"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h:1",
        "http://:1",
        "http://h:notaport",
        "http://h:8000/triton",
        "grpc://h:8001/v2",
        "http://h:8000?timeout=1",
        "http://h:8000#x",
        "http://user:secret@h:8000",
    ],
)
def test_parse_url_rejects_what_is_not_a_triton_url(url: str) -> None:
    with pytest.raises(ManagerError):
        parse_url(url)


# --------------------------------------------------------------------- parsing


def test_index_drops_hidden_names_and_reads_versions() -> None:
    rows = [
        {"name": ".tritonctl"},
        {"name": "b", "version": "2", "state": "READY"},
        {"name": "a"},
        {"name": "b", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
    ]
    entries = parse_index(rows)
    assert [(e.name, e.version, e.state, e.reason) for e in entries] == [
        ("a", None, "UNAVAILABLE", ""),
        ("b", 1, "UNAVAILABLE", "unloaded"),
        ("b", 2, "READY", ""),
    ]
    assert entries[2].ready


def test_statistics_parse_http_json() -> None:
    data = {
        "model_stats": [
            {
                "name": "m",
                "version": "1",
                "last_inference": 1700000000123,
                "inference_count": 7,
                "execution_count": 5,
                "inference_stats": {
                    "success": {"count": 6, "ns": 600},
                    "fail": {"count": 1, "ns": 10},
                    "queue": {"count": 6, "ns": 60},
                    "compute_input": {"count": 6, "ns": 1},
                    "compute_infer": {"count": 6, "ns": 300},
                    "compute_output": {"count": 6, "ns": 2},
                },
            }
        ]
    }
    (s,) = parse_statistics(data)
    assert (s.name, s.version, s.last_inference_ms) == ("m", 1, 1700000000123)
    assert (s.inference_count, s.execution_count) == (7, 5)
    assert (s.success_count, s.success_ns, s.fail_count, s.fail_ns) == (6, 600, 1, 10)
    assert (s.queue_ns, s.compute_infer_ns) == (60, 300)


def test_statistics_parse_grpc_json_with_strings_and_missing_zeros() -> None:
    data = {
        "model_stats": [
            {
                "name": "m",
                "version": "2",
                "last_inference": "1700000000123",
                "inference_count": "3",
                "inference_stats": {"success": {"count": "3", "ns": "99"}, "fail": {}},
            },
            {"name": ".hidden", "version": "1"},
        ]
    }
    (s,) = parse_statistics(data)
    assert (s.version, s.last_inference_ms, s.inference_count) == (2, 1700000000123, 3)
    assert (s.success_count, s.success_ns, s.fail_count, s.execution_count) == (3, 99, 0, 0)


# --------------------------------------------------------------------- errors


def _tse(msg: str, status: str) -> InferenceServerException:
    return InferenceServerException(msg=msg, status=status)


def test_refused_connection_is_unreachable_and_names_the_url() -> None:
    err = translate_error(ConnectionRefusedError(111, "refused"), url="http://h:1", action="x")
    assert isinstance(err, TritonUnreachableError)
    assert "http://h:1" in str(err)


def test_grpc_unavailable_is_unreachable() -> None:
    err = translate_error(
        _tse("connect failed", "StatusCode.UNAVAILABLE"), url="grpc://h:1", action="x"
    )
    assert isinstance(err, TritonUnreachableError)


def test_a_load_refused_by_a_server_not_in_explicit_mode_is_a_load_error_over_grpc() -> None:
    # Triton answers this with gRPC's UNAVAILABLE status, which also means "no server"
    message = "explicit model load / unload is not allowed if polling is enabled"
    err = translate_error(
        _tse(message, "StatusCode.UNAVAILABLE"), url="grpc://h:1", action="x", error=LoadError
    )
    assert isinstance(err, LoadError) and str(err) == message


def test_load_failure_keeps_tritons_message_on_one_line() -> None:
    msg = "load failed for model 'bad': version 1 is at UNAVAILABLE state: Internal: boom\n\nAt:\n  f(1)\n;\n"
    err = translate_error(_tse(msg, "400"), url="u", action="load", error=LoadError)
    assert isinstance(err, LoadError)
    assert (
        str(err)
        == "load failed for model 'bad': version 1 is at UNAVAILABLE state: Internal: boom At: f(1)"
    )


def test_unknown_model_maps_to_model_not_found() -> None:
    err = translate_error(
        _tse("Request for unknown model: 'x' is not found", "StatusCode.NOT_FOUND"),
        url="u",
        action="unload",
        error=UnloadError,
    )
    assert isinstance(err, ModelNotFoundError)


def test_timeout_is_reported_as_the_action_failing() -> None:
    err = translate_error(TimeoutError(), url="u", action="load 'm'", error=LoadError, timeout=3)
    assert isinstance(err, LoadError)
    assert "within 3 s" in str(err)


@pytest.mark.parametrize(
    "late", [TimeoutError(), _tse("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED")]
)
def test_a_call_given_no_answer_in_time_can_be_a_timeout_of_the_server(late: Exception) -> None:
    err = translate_error(
        late,
        url="grpc://h:1",
        action="config of 'm'",
        error=ModelNotFoundError,
        timeout=30,
        unanswered=TritonTimeoutError,
    )
    assert type(err) is TritonTimeoutError
    assert isinstance(err, TritonUnreachableError)  # the server does not answer
    assert str(err) == "config of 'm': no answer from grpc://h:1 within 30 s"


def test_calls_to_a_closed_port_raise_unreachable_with_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with TritonControl(url, metrics_url=url, connect_timeout=2) as control:
        assert control.is_live() is False
        with pytest.raises(TritonUnreachableError, match=url):
            control.repository_index()
        with pytest.raises(TritonUnreachableError, match=f"{url}/metrics"):
            control.metrics_text()


@pytest.fixture
def hung_server() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a server that takes connections and never answers (a Triton
    that hangs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)  # the kernel takes the connections; nothing reads them
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_hung_server_is_not_live_within_the_connect_timeout(
    hung_server: str, protocol: str
) -> None:
    url = f"{protocol}://{hung_server}"
    with TritonControl(url, timeout=60, connect_timeout=1) as control:
        started = time.monotonic()
        assert control.is_live() is False
        assert control.is_ready() is False
        assert time.monotonic() - started < 10


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_hung_server_is_not_live_within_the_connect_timeout_async(
    hung_server: str, protocol: str
) -> None:
    async def check() -> None:
        async with AsyncTritonControl(
            f"{protocol}://{hung_server}", timeout=60, connect_timeout=1
        ) as control:
            assert await control.is_live() is False
            assert await control.is_ready() is False

    started = time.monotonic()
    asyncio.run(check())
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inference_on_a_hung_server_fails_alike_over_both_protocols(
    hung_server: str, protocol: str
) -> None:
    import numpy as np

    from manager.infer import InferenceError, infer

    url = f"{protocol}://{hung_server}"
    with pytest.raises(InferenceError) as raised:
        infer(url, "m", {"x": np.ones(2, dtype=np.float32)}, timeout=1)
    assert str(raised.value) == f"inference on 'm' failed: no answer from {url} within 1 s"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_smoke_test_on_a_hung_staging_server_gives_up_within_seconds(
    hung_server: str, protocol: str, tmp_path: Path
) -> None:
    from manager.modelconfig import TensorSpec, build_config
    from manager.smoke import smoke_test

    spec = TensorSpec("x", "FP32", (-1,))
    config = build_config("m", [spec], [spec], backend="python", kind="cpu")
    url = f"{protocol}://{hung_server}"
    started = time.monotonic()
    with pytest.raises(TritonUnreachableError, match=f"no Triton server answers at {url}"):
        smoke_test(tmp_path, config, 1, [], url=url)
    assert time.monotonic() - started < 15


# ----------------------------------------------------------- call timeout vs load timeout


def test_calls_other_than_loads_have_a_short_timeout_of_their_own() -> None:
    control = TritonControl("http://h:1")
    assert (control.timeout, control.call_timeout) == (DEFAULT_TIMEOUT_S, CALL_TIMEOUT_S)
    assert CALL_TIMEOUT_S < DEFAULT_TIMEOUT_S
    assert TritonControl("grpc://h:1", timeout=900, call_timeout=2).call_timeout == 2
    # never longer than the timeout: a control asked for 5 s calls gets them
    assert TritonControl("grpc://h:1", timeout=5).call_timeout == 5
    assert AsyncTritonControl("http://h:1", timeout=5).call_timeout == 5


def test_the_grpc_control_of_loads_and_unloads_has_the_same_timeouts() -> None:
    with TritonControl(
        "http://h:1", control_url="grpc://h:2", timeout=90, call_timeout=3, connect_timeout=2
    ) as control:
        grpc_control = control._model_control()
        assert grpc_control is not None
        assert (
            grpc_control.timeout,
            grpc_control.call_timeout,
            grpc_control.connect_timeout,
        ) == (90, 3, 2)
    asyncio_control = AsyncTritonControl(
        "http://h:1", control_url="grpc://h:2", timeout=90, call_timeout=3
    )._model_control()
    assert asyncio_control is not None
    assert (asyncio_control.timeout, asyncio_control.call_timeout) == (90, 3)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_calls_to_a_hung_server_give_up_after_the_call_timeout(
    hung_server: str, protocol: str
) -> None:
    url = f"{protocol}://{hung_server}"
    with TritonControl(url, timeout=60, call_timeout=1, connect_timeout=60) as control:
        for action, call in [
            ("repository index", control.repository_index),
            ("statistics of 'm'", lambda: control.statistics("m")),
            ("config of 'm'", lambda: control.model_config("m")),
            ("unload 'm'", lambda: control.unload_model("m")),
        ]:
            started = time.monotonic()
            with pytest.raises(TritonTimeoutError) as raised:
                call()
            assert time.monotonic() - started < 10, action
            assert str(raised.value) == f"{action}: no answer from {url} within 1 s"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_calls_to_a_hung_server_give_up_after_the_call_timeout_async(
    hung_server: str, protocol: str
) -> None:
    url = f"{protocol}://{hung_server}"

    async def check() -> None:
        async with AsyncTritonControl(
            url, timeout=60, call_timeout=1, connect_timeout=60
        ) as control:
            for action, call in [
                ("repository index", control.repository_index()),
                ("statistics", control.statistics()),
                ("config of 'm'", control.model_config("m")),
                ("unload 'm'", control.unload_model("m")),
            ]:
                with pytest.raises(TritonTimeoutError) as raised:
                    await asyncio.wait_for(call, 10)
                assert str(raised.value) == f"{action}: no answer from {url} within 1 s"

    started = time.monotonic()
    asyncio.run(check())
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_load_waits_the_load_timeout_not_the_call_timeout(
    hung_server: str, protocol: str
) -> None:
    url = f"{protocol}://{hung_server}"
    with TritonControl(url, timeout=3, call_timeout=1, connect_timeout=60) as control:
        started = time.monotonic()
        with pytest.raises(LoadError, match=f"load 'm': no answer from {url} within 3 s"):
            control.load_model("m")
        assert time.monotonic() - started >= 2.5


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_load_waits_the_load_timeout_not_the_call_timeout_async(
    hung_server: str, protocol: str
) -> None:
    url = f"{protocol}://{hung_server}"

    async def check() -> None:
        async with AsyncTritonControl(
            url, timeout=3, call_timeout=1, connect_timeout=60
        ) as control:
            with pytest.raises(LoadError, match=f"load 'm': no answer from {url} within 3 s"):
                await control.load_model("m")
            # and the other calls keep their own timeout
            with pytest.raises(TritonTimeoutError, match="within 1 s"):
                await control.repository_index()

    started = time.monotonic()
    asyncio.run(check())
    assert time.monotonic() - started >= 3.5


def test_an_unload_the_grpc_control_got_no_answer_to_is_not_asked_again_over_http(
    hung_server: str,
) -> None:
    """Asked over gRPC and not answered: the server hangs, and asking it over HTTP would
    only wait again (a refused gRPC connection, where nothing was asked, does go over
    HTTP)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        http_url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # refuses: nothing listens
    grpc_url = f"grpc://{hung_server}"
    with (
        TritonControl(
            http_url, control_url=grpc_url, call_timeout=1, connect_timeout=60
        ) as control,
        pytest.raises(TritonTimeoutError, match=f"no answer from {grpc_url} within 1 s"),
    ):
        control.unload_model("m")

    async def check() -> None:
        async with AsyncTritonControl(
            http_url, control_url=grpc_url, call_timeout=1, connect_timeout=60
        ) as control:
            with pytest.raises(TritonTimeoutError, match=f"no answer from {grpc_url}"):
                await control.unload_model("m")

    asyncio.run(check())


@pytest.fixture
def loads_then_hangs() -> Iterator[tuple[str, list[str]]]:
    """``http://127.0.0.1:PORT`` of a Triton that is live, takes a load, fails inference
    and never answers an unload; and the paths it was asked, in order."""
    asked: list[str] = []
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes = b"{}") -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            asked.append(self.path)
            self._answer(200 if self.path == "/v2/health/live" else 404)

        def do_POST(self) -> None:
            asked.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.endswith("/unload"):
                release.wait(60)  # hangs
            elif self.path.endswith("/load"):
                self._answer(200)
            else:
                self._answer(400, b'{"error": "inference refused"}')

        def log_message(self, *args: object) -> None:
            pass

    with local_http_server(Handler) as url:
        try:
            yield url, asked
        finally:
            release.set()


def test_a_smoke_test_does_not_wait_a_loads_timeout_for_its_unload(
    loads_then_hangs: tuple[str, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Triton answers an unload at once: the smoke test's unload of its temporary model
    gives up after the call timeout, and the test's own failure is what is raised."""
    from manager import smoke
    from manager.infer import InferenceError
    from manager.modelconfig import TensorSpec, build_config

    monkeypatch.setattr(smoke, "UNLOAD_TIMEOUT_S", 1.0)
    url, asked = loads_then_hangs
    spec = TensorSpec("x", "FP32", (-1,))
    config = build_config("m", [spec], [spec], backend="python", kind="cpu")
    started = time.monotonic()
    with pytest.raises(InferenceError, match="inference refused"):
        smoke.smoke_test(tmp_path, config, 1, [], url=url)
    assert time.monotonic() - started < 10
    assert asked[-1].startswith("/v2/repository/models/m__smoke_")
    assert asked[-1].endswith("/unload")
    assert f"no answer from {url} within 1 s" in caplog.text
