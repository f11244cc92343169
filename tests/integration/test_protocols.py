"""The same operations over HTTP and over gRPC on a real tritonserver: same answers, same
errors (class and wording), comparable timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import pytest

from manager.triton import TritonControl
from tests.integration.conftest import TritonHandle

pytestmark = pytest.mark.integration

PROTOCOLS = ["http", "grpc"]


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
