"""The same operations over HTTP and over gRPC on a real tritonserver: same answers, same
errors (class and wording), comparable timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from manager import golden
from manager.errors import LoadError, TritonUnreachableError, UnloadError
from manager.infer import InferenceError, infer
from manager.modelconfig import TensorSpec
from manager.server import EmbeddedServer, ServerInfo, free_ports
from manager.triton import TritonControl
from tests.integration.conftest import TritonHandle
from tests.integration.helpers import write_python_model

pytestmark = pytest.mark.integration

PROTOCOLS = ["http", "grpc"]


# Sleeps 3 s before echoing INPUT0: a model slower than a client's timeout.
SLOW_MODEL_PY = textwrap.dedent(
    """
    import time
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            time.sleep(3)
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                out = pb_utils.Tensor("OUTPUT0", x.astype(np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            return responses
    """
)

# Reverses each (UTF-8) string of TEXT into OUT.
REVERSE_MODEL_PY = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
                y = [s.decode()[::-1].encode() for s in x.reshape(-1)]
                y = np.array(y, dtype=object).reshape(x.shape)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", y)]))
            return responses
    """
)


def url_of(triton: TritonHandle, protocol: str) -> str:
    return triton.http_url if protocol == "http" else triton.grpc_url


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def lagging_proxy(target_port: int, delay_s: float) -> Iterator[int]:
    """A TCP proxy to ``127.0.0.1:target_port`` that holds every chunk ``delay_s`` in each
    direction (a server far away); yields its port."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(delay_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # cancelled when the proxy stops
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await asyncio.sleep(delay_s)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    ports: list[int] = []
    started = threading.Event()
    stopping: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def serve() -> None:
        stop = asyncio.Event()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        ports.append(int(server.sockets[0].getsockname()[1]))
        stopping.append((asyncio.get_running_loop(), stop))
        started.set()
        async with server:
            await stop.wait()
        # asyncio.run cancels the connections' tasks left

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield ports[0]
    finally:
        loop, stop = stopping[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_server_with_a_slow_network_path_answers_over_both_protocols(
    triton: TritonHandle, protocol: str
) -> None:
    """Connecting takes over 200 ms here (as to a server on another continent): the
    control still reaches the server, over gRPC as over HTTP."""
    port = triton.info.http_port if protocol == "http" else triton.info.grpc_port
    with (
        lagging_proxy(port, 0.15) as proxy_port,
        TritonControl(f"{protocol}://127.0.0.1:{proxy_port}", timeout=30) as control,
    ):
        assert control.is_live() is True
        assert isinstance(control.repository_index(), list)


@pytest.fixture(scope="module")
def slow_and_reverse(triton: TritonHandle) -> tuple[str, str]:
    """The names of the slow model and of the string model, loaded."""
    write_python_model(triton.repo, "proto_slow", SLOW_MODEL_PY)
    text = [TensorSpec("TEXT", "STRING", (-1,))]
    out = [TensorSpec("OUT", "STRING", (-1,))]
    write_python_model(triton.repo, "proto_reverse", REVERSE_MODEL_PY, inputs=text, outputs=out)
    with TritonControl(triton.grpc_url) as control:
        control.load_model("proto_slow")
        control.load_model("proto_reverse")
    return "proto_slow", "proto_reverse"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_inference_on_a_closed_port_is_unreachable_over_both_protocols(protocol: str) -> None:
    url = f"{protocol}://127.0.0.1:{closed_port()}"
    x = np.ones(2, dtype=np.float32)
    with pytest.raises(TritonUnreachableError, match=f"no Triton server answers at {url}"):
        infer(url, "m", {"INPUT0": x}, timeout=5)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_inference_slower_than_the_timeout_fails_alike_over_both_protocols(
    triton: TritonHandle, slow_and_reverse: tuple[str, str], protocol: str
) -> None:
    url = url_of(triton, protocol)
    x = np.ones(2, dtype=np.float32)
    with pytest.raises(InferenceError) as raised:
        infer(url, slow_and_reverse[0], {"INPUT0": x}, timeout=1)
    assert str(raised.value) == (
        f"inference on 'proto_slow' failed: no answer from {url} within 1 s"
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "text",
    [
        np.array(["abc", "h\u00e9llo"]),  # numpy's own unicode strings, as np.array makes them
        np.array(["abc", "h\u00e9llo"], dtype=object),
        np.array([b"abc", "h\u00e9llo".encode()], dtype=object),
        np.array([b"abc", "h\u00e9llo".encode()]),
    ],
)
def test_string_tensors_of_every_numpy_kind_go_over_both_protocols(
    triton: TritonHandle, slow_and_reverse: tuple[str, str], protocol: str, text: np.ndarray
) -> None:
    out = infer(url_of(triton, protocol), slow_and_reverse[1], {"TEXT": text})["OUT"]
    assert out.dtype == np.object_
    assert out.tolist() == [b"cba", "oll\u00e9h".encode()]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_golden_case_of_numpy_strings_passes_over_both_protocols(
    triton: TritonHandle, slow_and_reverse: tuple[str, str], protocol: str, tmp_path: Path
) -> None:
    """A case recorded with numpy's own strings (``np.array(["abc"])``, as a pipeline
    writes them) is sent as strings, and its expected strings match Triton's bytes."""
    text = np.array(["abc", "h\u00e9llo"])
    golden.save_case(tmp_path, "case", {"TEXT": text}, {"OUT": np.array(["cba", "oll\u00e9h"])})
    cases = golden.load_cases(tmp_path)
    url, model = url_of(triton, protocol), slow_and_reverse[1]
    assert golden.check(cases, lambda inputs: infer(url, model, inputs), model=model) == 1

    golden.save_case(tmp_path, "case", {"TEXT": text}, {"OUT": np.array(["abc", "oll\u00e9h"])})
    with pytest.raises(golden.GoldenMismatch, match="output 'OUT' does not match"):
        golden.check(golden.load_cases(tmp_path), lambda i: infer(url, model, i), model=model)


def _server_without_model_control(repo: Path) -> tuple[EmbeddedServer, ServerInfo]:
    """A server on ``repo`` started without explicit model control (mode none)."""
    repo.mkdir(exist_ok=True)
    server = EmbeddedServer(repo)
    info = server.start(
        *free_ports(3),
        wait_timeout=120,
        tied=True,
        # its own .tritonctl folder is no model: not a reason to stop
        extra_args=["--model-control-mode=none", "--exit-on-error=false"],
    )
    return server, info


def test_a_server_not_in_explicit_mode_refuses_loads_alike_over_both_protocols(
    tmp_path: Path,
) -> None:
    """Triton started without explicit model control answers a load or an unload with
    an error (gRPC's UNAVAILABLE status): that is its answer, not a server missing."""
    server, info = _server_without_model_control(tmp_path)
    try:
        for url in (info.http_url, info.grpc_url):
            with TritonControl(url) as control:
                with pytest.raises(LoadError, match="not allowed if polling is enabled"):
                    control.load_model("m")
                with pytest.raises(UnloadError, match="not allowed if polling is enabled"):
                    control.unload_model("m")
    finally:
        server.stop(timeout=30)


def test_a_smoke_test_on_a_staging_server_not_in_explicit_mode_fails_alike(
    tmp_path: Path,
) -> None:
    from manager.modelconfig import build_config
    from manager.smoke import smoke_test

    server, info = _server_without_model_control(tmp_path / "staging")
    spec = TensorSpec("INPUT0", "FP32", (-1,))
    config = build_config("m", [spec], [spec], backend="python", kind="cpu")
    staged = tmp_path / "m"
    (staged / "1").mkdir(parents=True)
    try:
        for url in (info.http_url, info.grpc_url):
            with pytest.raises(LoadError, match="not allowed if polling is enabled"):
                smoke_test(staged, config, 1, [], url=url)
    finally:
        server.stop(timeout=30)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_health_needs_no_worker_thread(triton: TritonHandle, protocol: str) -> None:
    """The asyncio control's health checks answer while every worker thread of the loop
    is busy (with long loads, say), over HTTP as over gRPC."""
    from concurrent.futures import ThreadPoolExecutor

    from manager.triton import AsyncTritonControl

    async def check() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        release = threading.Event()
        busy = loop.run_in_executor(None, release.wait)
        try:
            async with AsyncTritonControl(url_of(triton, protocol)) as control:
                assert await asyncio.wait_for(control.is_live(), 10) is True
                assert await asyncio.wait_for(control.is_ready(), 10) is True
        finally:
            release.set()
            await busy

    asyncio.run(check())


@pytest.fixture
def proxy_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proxy variables naming a proxy that is not there, and none excepted."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("http_proxy", "https_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("no_proxy", "NO_PROXY", "no_grpc_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # one made now reads the proxies


@pytest.mark.usefixtures("proxy_everywhere")
def test_the_embedded_server_is_seen_live_whatever_proxy_the_environment_names(
    triton: TritonHandle,
) -> None:
    from manager.server import probe_live

    assert probe_live(triton.http_url) is True


@pytest.mark.usefixtures("proxy_everywhere")
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_proxy_variables_of_the_environment_are_not_used(
    triton: TritonHandle, protocol: str
) -> None:
    """tritonctl connects to Triton directly over HTTP; so it does over gRPC (which would
    otherwise go through $http_proxy / $https_proxy / $grpc_proxy) and for its metrics."""
    url = url_of(triton, protocol)
    with TritonControl(url, metrics_url=triton.metrics_url) as control:
        assert control.is_live() is True
        assert isinstance(control.repository_index(), list)
        assert "nv_cpu_memory_used_bytes" in control.metrics_text()
    with pytest.raises(InferenceError, match="unknown model"):
        infer(url, "no_such_model", {"INPUT0": np.ones(2, dtype=np.float32)})
