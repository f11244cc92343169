"""Load, unload and list models on a real tritonserver, over HTTP and gRPC."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from click.testing import CliRunner

from manager import serving
from manager.cli import main
from manager.errors import (
    LoadError,
    ModelNotFoundError,
    TritonTimeoutError,
    TritonUnreachableError,
)
from manager.metrics import read_memory
from manager.triton import AsyncTritonControl, TritonControl
from tests.integration.conftest import TritonHandle
from tests.integration.helpers import (
    DOUBLE_MODEL_PY,
    FAILING_MODEL_PY,
    write_add_model,
    write_python_model,
)

pytestmark = pytest.mark.integration


def infer(http_url: str, model: str, x: np.ndarray, version: int | None = None) -> np.ndarray:
    """One request with plain tritonclient (no manager code in the data path)."""
    client = httpclient.InferenceServerClient(http_url.removeprefix("http://"))
    try:
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(model, [inp], model_version=str(version or ""))
        out = result.as_numpy("OUTPUT0")
        assert out is not None
        return out
    finally:
        client.close()


def states(control: TritonControl, name: str) -> dict[int | None, str]:
    return {e.version: e.state for e in control.repository_index() if e.name == name}


@pytest.fixture(params=["http", "grpc"])
def control(request: pytest.FixtureRequest, triton: TritonHandle) -> Iterator[TritonControl]:
    url = triton.http_url if request.param == "http" else triton.grpc_url
    with TritonControl(url, metrics_url=triton.metrics_url) as c:
        yield c


def test_load_infer_unload_round_trip(triton: TritonHandle, control: TritonControl) -> None:
    name = f"double_{control.endpoint.protocol}"
    write_python_model(triton.repo, name)

    result = serving.load(control, name)
    assert result.versions == (1,)
    assert not result.cache_hit
    assert states(control, name) == {1: "READY"}
    x = np.array([1.0, 2.5, -3.0], dtype=np.float32)
    np.testing.assert_allclose(infer(triton.http_url, name, x), x * 2)

    assert serving.load(control, name).cache_hit

    unloaded = serving.unload(control, name)
    assert unloaded.was_loaded
    assert states(control, name) == {1: "UNAVAILABLE"}
    reason = next(e.reason for e in control.repository_index() if e.name == name)
    assert reason == "unloaded"
    assert not serving.unload(control, name).was_loaded


def test_load_of_one_version_serves_only_that_version(
    triton: TritonHandle, control: TritonControl
) -> None:
    name = f"adder_{control.endpoint.protocol}"
    write_add_model(triton.repo, name, {1: 1.0, 2: 100.0})
    x = np.array([1.0, 2.0], dtype=np.float32)
    try:
        one = serving.load(control, name, version=1, repo=triton.repo)
        assert one.versions == (1,)
        np.testing.assert_allclose(infer(triton.http_url, name, x), x + 1)

        two = serving.load(control, name, version=2, repo=triton.repo)
        assert two.versions == (2,)
        assert states(control, name)[2] == "READY"
        np.testing.assert_allclose(infer(triton.http_url, name, x, version=2), x + 100)
    finally:
        serving.unload(control, name)


def test_failed_load_names_model_and_cause_and_others_keep_serving(
    triton: TritonHandle, control: TritonControl
) -> None:
    proto = control.endpoint.protocol
    good, bad = f"steady_{proto}", f"broken_{proto}"
    write_python_model(triton.repo, good)
    write_python_model(triton.repo, bad, FAILING_MODEL_PY)
    serving.load(control, good)
    try:
        with pytest.raises(LoadError) as err:
            serving.load(control, bad)
        message = str(err.value)
        assert f"'{bad}'" in message
        assert "initialize refused on purpose" in message
        assert "\n" not in message
        assert states(control, bad) == {1: "UNAVAILABLE"}

        x = np.array([4.0], dtype=np.float32)
        np.testing.assert_allclose(infer(triton.http_url, good, x), x * 2)
        assert states(control, good) == {1: "READY"}
        # the server stays ready for the models it serves (a load balancer keeps it)
        assert control.is_ready()
    finally:
        serving.unload(control, good)


def test_unknown_model_is_model_not_found(control: TritonControl) -> None:
    with pytest.raises(ModelNotFoundError, match="'no_such_model'"):
        serving.load(control, "no_such_model")
    with pytest.raises(ModelNotFoundError):
        serving.unload(control, "no_such_model")


def test_index_hides_the_managers_own_folder(control: TritonControl) -> None:
    assert all(not e.name.startswith(".") for e in control.repository_index())
    assert all(not r.name.startswith(".") for r in serving.list_models(control))


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_server_not_running_is_unreachable_and_names_the_url(scheme: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"{scheme}://127.0.0.1:{port}"
    with TritonControl(url, timeout=5, connect_timeout=2) as control:
        assert not control.is_live()
        with pytest.raises(TritonUnreachableError, match=url):
            control.repository_index()
        with pytest.raises(TritonUnreachableError, match=url):
            serving.load(control, "anything")


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The server ``pid`` stopped (SIGSTOP): it takes connections and answers nothing, as
    a Triton that hangs; continued (SIGCONT) after, whatever happened."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


QUICK_CALLS: list[tuple[str, Callable[[Any], Any]]] = [
    ("repository index", lambda c: c.repository_index()),
    ("statistics", lambda c: c.statistics()),
    ("config of 'hung'", lambda c: c.model_config("hung")),
    ("unload 'hung'", lambda c: c.unload_model("hung")),
]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_calls_other_than_loads_to_a_hung_server_give_up_after_the_call_timeout(
    triton: TritonHandle, protocol: str
) -> None:
    """The load timeout is long (loads take minutes); an index, statistics, a config or an
    unload, which Triton answers at once, give up after the short call timeout."""
    url = triton.http_url if protocol == "http" else triton.grpc_url
    with TritonControl(url, timeout=60, call_timeout=1) as control:
        control.repository_index()  # connected while the server answers
        with stopped(triton.pid):
            for action, call in QUICK_CALLS:
                started = time.monotonic()
                with pytest.raises(TritonTimeoutError) as raised:
                    call(control)
                assert time.monotonic() - started < 10, action
                assert str(raised.value) == f"{action}: no answer from {url} within 1 s"
        assert isinstance(control.repository_index(), list)  # answers again


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_calls_other_than_loads_to_a_hung_server_give_up_after_the_call_timeout_async(
    triton: TritonHandle, protocol: str
) -> None:
    url = triton.http_url if protocol == "http" else triton.grpc_url

    async def scenario() -> None:
        async with AsyncTritonControl(url, timeout=60, call_timeout=1) as control:
            await control.repository_index()
            with stopped(triton.pid):
                for action, call in QUICK_CALLS:
                    started = time.monotonic()
                    with pytest.raises(TritonTimeoutError) as raised:
                        await asyncio.wait_for(call(control), 30)
                    assert time.monotonic() - started < 10, action
                    assert str(raised.value) == f"{action}: no answer from {url} within 1 s"
            assert isinstance(await control.repository_index(), list)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("protocol", "how"), [("http", "option"), ("grpc", "option"), ("http", "environment")]
)
def test_the_cli_gives_up_on_a_hung_server_after_the_call_timeout_it_is_given(
    triton: TritonHandle, protocol: str, how: str
) -> None:
    """``--call-timeout`` (or TRITONCTL_CALL_TIMEOUT) reaches the command's control: `ls`
    of a server that hangs fails after 1 s, not the default 30."""
    url = triton.http_url if protocol == "http" else triton.grpc_url
    argv = ["--repo", str(triton.repo), "--url", url, "ls"]
    env = {}
    if how == "option":
        argv[:0] = ["--call-timeout", "1"]
    else:
        env["TRITONCTL_CALL_TIMEOUT"] = "1"
    with stopped(triton.pid):
        started = time.monotonic()
        result = CliRunner().invoke(main, argv, env=env)
        took = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert f"error: repository index: no answer from {url} within 1 s" in result.output
    assert took < 10
    assert CliRunner().invoke(main, argv, env=env).exit_code == 0  # answers again


SLOW_INIT_MODEL_PY = DOUBLE_MODEL_PY.replace(
    "class TritonPythonModel:\n",
    "class TritonPythonModel:\n    def initialize(self, args):\n"
    "        import time\n        time.sleep(4)\n\n",
)


def test_an_unload_asked_during_a_load_of_the_model_waits_for_it_and_still_happens(
    triton: TritonHandle,
) -> None:
    """Triton holds an unload back while a load of the same model runs: asked then, it
    gets no answer within a call timeout shorter than the load, and Triton unloads the
    model once the load is done."""
    name = "slow_init"
    write_python_model(triton.repo, name, SLOW_INIT_MODEL_PY)
    with (
        TritonControl(triton.grpc_url) as loader,
        TritonControl(triton.http_url, call_timeout=1) as control,
    ):
        loading = threading.Thread(target=loader.load_model, args=(name,))
        loading.start()
        try:
            time.sleep(1)  # the load has started
            assert states(control, name) == {1: "LOADING"}
            with pytest.raises(TritonTimeoutError, match="within 1 s"):
                control.unload_model(name)
        finally:
            loading.join(30)
        deadline = time.monotonic() + 10
        while states(control, name) != {1: "UNAVAILABLE"} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert states(control, name) == {1: "UNAVAILABLE"}


def test_wrong_host_is_unreachable() -> None:
    with (
        TritonControl("http://no-such-host.invalid:8000", connect_timeout=2) as control,
        pytest.raises(TritonUnreachableError, match=r"no-such-host\.invalid"),
    ):
        control.repository_index()


def test_list_models_shows_statistics_and_memory_after_inference(triton: TritonHandle) -> None:
    name = "listed"
    write_python_model(triton.repo, name)
    with TritonControl(triton.grpc_url, metrics_url=triton.metrics_url) as control:
        serving.load(control, name)
        try:
            for _ in range(3):
                infer(triton.http_url, name, np.ones(2, dtype=np.float32))
            # Triton records a request's statistics just after it has answered it
            deadline = time.monotonic() + 10
            while True:
                rows = {(r.name, r.version): r for r in serving.list_models(control, triton.repo)}
                row = rows[(name, 1)]
                if row.inference_count >= 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert row.state == "READY"
            assert row.inference_count == 3
            assert row.success_count == 3
            assert row.fail_count == 0
            assert row.last_inference_ms is not None and row.last_inference_ms > 1e12

            stats = control.statistics(name)
            assert [s.version for s in stats] == [1]
            assert stats[0].compute_infer_ns > 0

            memory = read_memory(control)
            assert memory.cpu is not None
            assert 0 < memory.cpu.used_bytes <= memory.cpu.total_bytes
            view = serving.overview(control, triton.repo)
            assert view.memory is not None
        finally:
            serving.unload(control, name)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_async_load_list_unload(triton: TritonHandle, scheme: str) -> None:
    name = f"async_{scheme}"
    write_python_model(triton.repo, name)
    url = triton.http_url if scheme == "http" else triton.grpc_url

    async def scenario() -> None:
        async with AsyncTritonControl(url, metrics_url=triton.metrics_url) as control:
            assert await control.is_live()
            loaded = await serving.aload(control, name)
            assert loaded.versions == (1,)
            assert (await serving.aload(control, name)).cache_hit
            rows = await serving.alist_models(control)
            assert any(r.name == name and r.state == "READY" for r in rows)
            assert "nv_cpu_memory_used_bytes" in await control.metrics_text()
            with pytest.raises(ModelNotFoundError):
                await serving.aload(control, "no_such_model")
            assert (await serving.aunload(control, name)).was_loaded
            index = await control.repository_index()
            assert {e.state for e in index if e.name == name} == {"UNAVAILABLE"}

    asyncio.run(scenario())


def test_dynamic_manager_over_http_loads_from_its_worker_threads(triton: TritonHandle) -> None:
    """Each call runs in a worker thread (asyncio.to_thread): over HTTP, whose client runs
    on gevent, every thread needs a client of its own ("Cannot switch to a different
    thread" otherwise), one load after another as well as several at once."""
    from manager.dynamic import DynamicModelManager

    names = [f"dyn_http_{n}" for n in "abcdefgh"]
    for name in names:
        write_python_model(triton.repo, name)

    # the session's server serves other tests' models too: they keep their slots, pinned
    from manager.budget import MemoryBudget, ServingConfig
    from manager.controller import Controller

    with TritonControl(triton.http_url) as control:
        before = {e.name for e in control.repository_index() if e.state == "READY"}
        config = ServingConfig(budget=MemoryBudget(max_models=10_000))
        slots = Controller(control, triton.repo, config).plan().loaded  # as the budget counts

    async def scenario() -> dict[str, float]:
        async with DynamicModelManager(
            triton.http_url, repo=triton.repo, max_models=slots + 3, pinned=before
        ) as m:
            for name in names[:4]:  # the 4th evicts
                result = await m.load_model(name)
                assert result.versions == (1,)
            results = await asyncio.gather(
                *(m.load_model(name) for name in names[4:]), return_exceptions=True
            )
            assert [r for r in results if isinstance(r, BaseException)] == []
            await m.unload_model(names[-1])
            return m.stats()

    try:
        stats = asyncio.run(scenario())
        assert stats["failures"] == 0 and stats["loads"] == len(names)
        with TritonControl(triton.http_url) as control:
            ready = {e.name for e in control.repository_index() if e.state == "READY"}
        assert len(ready & set(names)) <= 3 and before <= ready
    finally:
        with TritonControl(triton.http_url) as control:
            for name in names:
                serving.unload(control, name)


def test_dynamic_manager_points_an_endpoint_at_a_model_within_its_budget(
    triton: TritonHandle,
) -> None:
    from manager.budget import MemoryBudget, ServingConfig
    from manager.controller import Controller
    from manager.dynamic import DynamicModelManager
    from manager.endpoints import Endpoints, Target
    from manager.repository import Repository

    first, second, third = "dyn_ep_first", "dyn_ep_second", "dyn_ep_third"
    for name in (first, second, third):
        write_python_model(triton.repo, name)
    with TritonControl(triton.grpc_url) as control:
        before = {e.name for e in control.repository_index() if e.state == "READY"}
        config = ServingConfig(budget=MemoryBudget(max_models=10_000))
        slots = Controller(control, triton.repo, config).plan().loaded

    async def scenario() -> list[list[Target]]:
        async with DynamicModelManager(
            triton.grpc_url, repo=triton.repo, max_models=slots + 2, pinned=before
        ) as m:
            one = await m.switch_active_model("dyn_ep", first)
            two = await m.switch_active_model("dyn_ep", second)
            # no longer a target, so no longer protected: room for a third is made from it
            await m.load_model(third)
            return [one.targets, two.targets]

    try:
        assert asyncio.run(scenario()) == [[Target(first, 1, 100.0)], [Target(second, 1, 100.0)]]
        x = np.array([3.0], dtype=np.float32)
        np.testing.assert_allclose(infer(triton.http_url, "dyn_ep", x), x * 2)
        with TritonControl(triton.grpc_url) as control:
            assert states(control, first) == {1: "UNAVAILABLE"}
    finally:
        with TritonControl(triton.grpc_url) as control:
            Endpoints(Repository(triton.repo), control).delete("dyn_ep")
            for name in (first, second, third):
                serving.unload(control, name)


# Takes a while to load, as a large model does.
SLOW_LOAD_PY = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(3.0)

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())]
            )
            for r in requests
        ]
"""


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_load_does_not_hold_up_http_inference_on_the_embedded_server(
    triton: TritonHandle, flavour: str
) -> None:
    # Triton's HTTP server runs a load on the thread that took it, and HTTP inference
    # requests wait behind it; tritonctl loads over gRPC where it knows the server's
    # gRPC port (its embedded server), whatever URL it was given
    busy, slow = f"stall_busy_{flavour}", f"stall_slow_{flavour}"
    write_add_model(triton.repo, busy, {1: 1.0})
    write_python_model(triton.repo, slow, SLOW_LOAD_PY)
    latencies: list[float] = []
    stop = threading.Event()

    def calls() -> None:
        client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
        inp = httpclient.InferInput("INPUT0", [2], "FP32")
        inp.set_data_from_numpy(np.zeros(2, np.float32))
        try:
            while not stop.is_set():
                start = time.monotonic()
                client.infer(busy, [inp])
                latencies.append(time.monotonic() - start)
        finally:
            client.close()

    async def load_async() -> None:
        async with AsyncTritonControl.connect(triton.http_url, triton.repo) as control:
            assert control.endpoint.control_url == triton.grpc_url
            await control.load_model(slow)
            await control.unload_model(slow)

    with TritonControl.connect(triton.http_url, triton.repo) as control:
        assert control.url == triton.http_url
        assert control.endpoint.control_url == triton.grpc_url
        control.load_model(busy)
        caller = threading.Thread(target=calls, daemon=True)
        caller.start()
        try:
            while len(latencies) < 20:
                time.sleep(0.01)
            started = time.monotonic()
            if flavour == "sync":
                control.load_model(slow)
                control.unload_model(slow)
            else:
                asyncio.run(load_async())
            assert time.monotonic() - started >= 3.0  # the load took its time
            count = len(latencies)
            time.sleep(0.2)
            assert len(latencies) > count  # still answering
        finally:
            stop.set()
            caller.join(30)
            control.unload_model(busy)
    # served throughout: no request waited for the 3 s load
    assert max(latencies) < 1.5, max(latencies)
