"""One TritonControl called from several threads over HTTP (a minimal local server).

tritonclient's HTTP client runs on gevent: its sockets and locks belong to the thread
that made them, so a client shared between threads fails ("Cannot switch to a different
thread") or hangs. The control gives each thread a client of its own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import http.server
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from manager import serving
from manager.triton import TritonControl
from tests.localhttp import local_http_server

CALL_TIMEOUT_S = 20.0
ANSWER_DELAY_S = 0.02  # as a real server: the client waits on its socket for the answer


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Triton: the client reuses its sockets

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, body: Any) -> None:
        time.sleep(ANSWER_DELAY_S)
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path.endswith("/repository/index"):
            self._answer([{"name": "a", "version": "1", "state": "READY"}])
        else:  # load / unload
            self._answer({})

    def do_GET(self) -> None:
        self._answer({"model_stats": []})


@pytest.fixture
def url() -> Iterator[str]:
    with local_http_server(_Handler) as address:
        yield address


def _in_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a new daemon thread; a hang fails the test instead of blocking it."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(CALL_TIMEOUT_S)
    assert not worker.is_alive(), "the call hung"
    if errors:
        raise errors[0]
    return result[0]


def _calls(control: TritonControl) -> list[Any]:
    control.unload_model("a")
    return [control.repository_index(), control.statistics()]


def test_http_calls_from_one_thread_after_another(url: str) -> None:
    """As asyncio.to_thread runs them: in threads that live on, one call at a time."""
    with TritonControl(url) as control:
        threads = [concurrent.futures.ThreadPoolExecutor(1) for _ in range(3)]
        try:
            for turn in range(6):
                future = threads[turn % len(threads)].submit(_calls, control)
                index, stats = future.result(timeout=CALL_TIMEOUT_S)
                assert [e.name for e in index] == ["a"]
                assert stats == []
        finally:
            for pool in threads:
                pool.shutdown(wait=False)
        assert [e.name for e in control.repository_index()] == ["a"]


def test_http_calls_from_threads_at_once(url: str) -> None:
    def many() -> list[Any]:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(_calls, control) for _ in range(24)]
            return [f.result(timeout=CALL_TIMEOUT_S) for f in futures]

    with TritonControl(url) as control:
        for index, _ in _in_thread(many):
            assert [e.name for e in index] == ["a"]


def test_close_closes_the_client_of_every_thread_and_calls_go_on_after(url: str) -> None:
    control = TritonControl(url)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        barrier = threading.Barrier(3)

        def first_call() -> list[Any]:
            barrier.wait(CALL_TIMEOUT_S)  # one call in each of the 3 threads
            return control.repository_index()

        for f in [pool.submit(first_call) for _ in range(3)]:
            f.result(timeout=CALL_TIMEOUT_S)
        made = [client for _, client in control._http_clients]
        assert len(made) == 3
        control.close()
        assert all(client._closed for client in made)
        # the threads' calls after close() get new clients
        again = pool.submit(control.repository_index).result(timeout=CALL_TIMEOUT_S)
        assert [e.name for e in again] == ["a"]
        assert all(client not in made for _, client in control._http_clients)
    control.close()


def test_clients_of_threads_that_ended_are_closed(url: str) -> None:
    with TritonControl(url) as control:
        _in_thread(control.repository_index)
        (ended,) = [client for _, client in control._http_clients]
        control.repository_index()  # a new client (this thread's) prunes the ended one
        assert ended._closed
        assert len(control._http_clients) == 1


def _event_descriptors() -> int:
    """Open epoll and eventfd descriptors of this process (a gevent hub holds one each)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own one)
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("anon_inode:")
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc")
def test_loads_over_http_leave_no_descriptors_behind(url: str) -> None:
    """Each load runs in a thread of its own; over HTTP that thread gets a gevent hub,
    whose descriptors must not outlive it (a control plane loads for months)."""
    with TritonControl(url) as control:
        serving.load(control, "a", refresh=True)
        gc.collect()
        before = _event_descriptors()
        for _ in range(5):
            assert not serving.load(control, "a", refresh=True).cache_hit
        gc.collect()
        assert _event_descriptors() <= before
