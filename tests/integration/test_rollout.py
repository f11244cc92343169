"""Full rollouts through the endpoint router on a real tritonserver, with a client
calling the endpoint the whole time."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from click.testing import CliRunner

from manager.cli import main
from manager.endpoints import Endpoints
from manager.errors import RolloutError
from manager.golden import save_case
from manager.modelconfig import read_config
from manager.publish import publish
from manager.repository import Repository
from manager.rollout import RolloutPolicy, RolloutState, RolloutStore
from manager.rollout_service import astart_rollout, begin_rollout, run_rollout
from manager.server import free_port
from manager.triton import TritonControl
from tests.integration.conftest import TritonHandle

pytestmark = pytest.mark.integration

VERSIONED_MODEL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.version = float(args["model_version"])

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", (x * 0 + self.version).astype(np.float32))]))
        return out
"""

BROKEN_MODEL_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        raise pb_utils.TritonModelException("version 3 is broken")
"""

CONFIG = (
    'backend: "python"\nmax_batch_size: 0\n'
    'input [{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }]\n'
    'output [{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }]\n'
    "instance_group [{ kind: KIND_CPU count: 1 }]\n"
)


def model_folder(tmp: Path, name: str, source: str) -> Path:
    folder = tmp / name
    folder.mkdir()
    (folder / "model.py").write_text(source)
    (folder / "config.pbtxt").write_text(CONFIG)
    return folder


class Client(threading.Thread):
    """Calls the endpoint in a loop; records (weight of the stage, answer or error)."""

    def __init__(self, url: str, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.url, self.endpoint = url, endpoint
        self.weight = 0
        self.answers: list[tuple[int, float]] = []
        self.errors: list[tuple[int, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url.removeprefix("grpc://"))
        x = np.ones(2, dtype=np.float32)
        t = grpcclient.InferInput("X", [2], "FP32")
        t.set_data_from_numpy(x)
        deadline = time.monotonic() + 240
        while not self.stop.is_set() and time.monotonic() < deadline:
            weight = self.weight
            try:
                y = client.infer(self.endpoint, [t]).as_numpy("Y")
                self.answers.append((weight, float(y[0])))
            except Exception as exc:  # every failure is recorded and asserted on
                self.errors.append((weight, str(exc)))
        client.close()


@pytest.fixture
def setup(triton: TritonHandle, tmp_path: Path) -> Iterator[tuple[Repository, TritonControl]]:
    repo = Repository(triton.repo)
    good = model_folder(tmp_path, "good", VERSIONED_MODEL_PY)
    broken = model_folder(tmp_path, "broken", BROKEN_MODEL_PY)
    for folder in (good, good, broken):
        publish(repo, "scorer", folder)
    with TritonControl(triton.grpc_url, metrics_url=triton.metrics_url) as control:
        Endpoints(repo, control).switch("score", "scorer", 1)
        yield repo, control
        Endpoints(repo, control).delete("score")


def test_full_rollout_with_zero_failed_requests_then_broken_version_rolls_back(
    triton: TritonHandle, setup: tuple[Repository, TritonControl], tmp_path: Path
) -> None:
    repo, control = setup
    client = Client(triton.grpc_url, "score")
    client.start()
    time.sleep(0.5)

    def on_stage(state: RolloutState) -> None:
        client.weight = state.weight

    policy = RolloutPolicy(
        stage_seconds=1.5, min_requests=10, max_error_rate=0.05, max_latency_ratio=20
    )
    state = run_rollout(
        repo, control, begin_rollout(repo, control, "score", 2, policy), on_stage=on_stage
    )
    client.weight = 100
    time.sleep(0.5)
    assert state.status == "promoted", state.reason
    assert client.errors == []
    assert {v for _, v in client.answers} <= {1.0, 2.0}
    for weight in (5, 15, 30, 50, 75, 90):
        got = [v for w, v in client.answers if w == weight]
        assert len(got) >= 20, f"stage {weight}: only {len(got)} answers"
        share = sum(1 for v in got if v == 2.0) / len(got)
        assert abs(share - weight / 100) <= 0.2, f"stage {weight} %: v2 share {share:.2f}"
    after = [v for w, v in client.answers[-20:]]
    assert after == [2.0] * 20  # pinned to v2
    endpoint = Endpoints(repo, control).get("score")
    assert endpoint.mode == "pinned" and endpoint.targets[0].version == 2
    assert read_config(repo.path / "score" / "config.pbtxt").platform == "ensemble"
    assert {e.version for e in control.repository_index() if e.name == "scorer" and e.ready} == {2}

    # broken v3: the gate rolls it back by itself and v2 keeps serving 100 % (no warm-up:
    # it would catch v3 before any client request, see the test below)
    client.answers.clear()
    policy = RolloutPolicy(
        stage_seconds=1.5,
        min_requests=10,
        max_error_rate=0.05,
        max_latency_ratio=20,
        warmup_requests=0,
    )
    state = run_rollout(
        repo, control, begin_rollout(repo, control, "score", 3, policy), on_stage=on_stage
    )
    client.weight = 0
    time.sleep(1.0)
    client.stop.set()
    client.join(30)
    assert state.status == "rolled_back"
    assert "error rate" in state.reason
    assert state.history[-1].weight == 5  # caught at the first stage
    # the only failures the client saw are the new version's, while the gate allowed them
    assert all(w == 5 for w, _ in client.errors), client.errors
    assert all("broken" in e for _, e in client.errors)
    assert len(client.errors) <= 0.25 * len([a for a in client.answers if a[0] == 5]) + 5
    assert [v for _, v in client.answers[-20:]] == [2.0] * 20
    assert {e.version for e in control.repository_index() if e.name == "scorer" and e.ready} == {2}
    assert RolloutStore(repo).load("score").status == "rolled_back"


def test_a_rollout_promotes_while_another_endpoint_keeps_calling_the_old_version(
    triton: TritonHandle, setup: tuple[Repository, TritonControl]
) -> None:
    """A second endpoint on scorer:1: the rollout of "score" to 2 is promoted and leaves
    version 1 serving for it; while the rollout runs, "score" cannot be changed by hand."""
    repo, control = setup
    Endpoints(repo, control).switch("score_b", "scorer", 1)
    other = Client(triton.grpc_url, "score_b")
    rolled = Client(triton.grpc_url, "score")
    other.start()
    rolled.start()
    try:
        policy = RolloutPolicy(
            stages=(50, 100), stage_seconds=1.0, min_requests=5, max_latency_ratio=20
        )
        state = begin_rollout(repo, control, "score", 2, policy)
        runner = threading.Thread(target=lambda: run_rollout(repo, control, state), daemon=True)
        runner.start()
        while RolloutStore(repo).load("score").status == "starting":
            time.sleep(0.05)
        argv = ["--repo", str(repo.path), "--url", triton.grpc_url]
        code = CliRunner().invoke(main, [*argv, "endpoint", "switch", "score", "--to", "scorer:1"])
        assert code.exit_code != 0 and "promote|abort" in code.output, code.output
        runner.join(60)
        time.sleep(0.5)
    finally:
        for client in (other, rolled):
            client.stop.set()
            client.join(30)
        Endpoints(repo, control).delete("score_b")
    final = RolloutStore(repo).load("score")
    assert final.status == "promoted", final.reason
    assert Endpoints(repo, control).get("score").targets[0].version == 2
    assert other.errors == [] and rolled.errors == []
    assert {v for _, v in other.answers} == {1.0} and len(other.answers) > 20
    assert {v for _, v in rolled.answers} == {1.0, 2.0}


def test_a_version_that_fails_every_warm_up_request_never_gets_client_traffic(
    triton: TritonHandle, setup: tuple[Repository, TritonControl]
) -> None:
    repo, control = setup
    client = Client(triton.grpc_url, "score")
    client.start()
    try:
        policy = RolloutPolicy(stage_seconds=1.0, min_requests=5, max_latency_ratio=20)
        with pytest.raises(RolloutError, match="warm-up failed: 0/10"):
            run_rollout(repo, control, begin_rollout(repo, control, "score", 3, policy))
        time.sleep(0.5)
    finally:
        client.stop.set()
        client.join(30)
    state = RolloutStore(repo).load("score")
    assert state.status == "rolled_back" and "scorer:1 answered the same requests" in state.reason
    assert "version 3 is broken" in state.warmup
    assert "\n" not in state.reason and "\n" not in state.warmup  # one line, for status
    assert state.history == []
    shown = CliRunner().invoke(main, ["--repo", str(repo.path), "rollout", "status", "score"])
    assert shown.exit_code == 0, shown.output
    assert "no stage ran" in shown.stdout and "ok/fail" not in shown.stdout, shown.stdout
    assert client.errors == []
    assert {v for _, v in client.answers} == {1.0}
    assert Endpoints(repo, control).get("score").targets[0].version == 1


def test_a_cancelled_async_rollout_stops_at_its_stage_and_is_resumed_later(
    triton: TritonHandle, setup: tuple[Repository, TritonControl]
) -> None:
    repo, control = setup
    policy = RolloutPolicy(stages=(30, 60), stage_seconds=3.0, min_requests=0, warmup_requests=0)

    async def cancelled() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(astart_rollout(repo, triton.grpc_url, "score", 2, policy), 1.5)

    started = time.monotonic()
    asyncio.run(cancelled())
    # the worker thread stopped with the cancellation: nothing drives the rollout on
    assert time.monotonic() - started < 5
    time.sleep(policy.stage_seconds + 0.5)  # a driver still at work would be past 30 % now
    state = RolloutStore(repo).load("score")
    assert state is not None and state.status == "running" and state.weight == 30
    assert not state.driver_alive()
    assert Endpoints(repo, control).get("score").mode == "routed"
    resumed = run_rollout(repo, control, begin_rollout(repo, control, "score", 2, policy))
    assert resumed.status == "promoted"
    assert Endpoints(repo, control).get("score").targets[0].version == 2


def test_golden_check_fails_before_any_traffic_reaches_the_new_version(
    triton: TritonHandle, setup: tuple[Repository, TritonControl], tmp_path: Path
) -> None:
    repo, control = setup
    golden = tmp_path / "golden"
    x = np.ones(2, dtype=np.float32)
    save_case(golden, "ones", {"X": x}, {"Y": np.full(2, 1.0, dtype=np.float32)})  # v1's answer
    result = CliRunner().invoke(
        main,
        [
            "--repo",
            str(repo.path),
            "--url",
            triton.grpc_url,
            "rollout",
            "start",
            "score",
            "--to",
            "2",
            "--stage-seconds",
            "1",
            "--golden",
            str(golden),
            "--wait",
        ],
    )
    assert result.exit_code != 0
    state = RolloutStore(repo).load("score")
    assert state.status == "rolled_back"
    assert "golden check failed" in state.reason and "'Y'" in state.reason
    assert state.history == []
    assert Endpoints(repo, control).get("score").targets[0].version == 1


def test_a_rollout_is_not_started_or_resumed_while_no_server_answers(
    setup: tuple[Repository, TritonControl],
) -> None:
    repo, _ = setup
    dead = f"http://127.0.0.1:{free_port()}"
    argv = ["--repo", str(repo.path), "--url", dead, "rollout"]
    for how in ([], ["--wait"]):
        result = CliRunner().invoke(main, [*argv, "start", "score", "--to", "2", *how])
        assert result.exit_code not in (0, 4), result.output
        assert "was not started" in result.output and dead.split("//")[1] in result.output
        assert RolloutStore(repo).load("score") is None  # nothing recorded, nothing blocked
    result = CliRunner().invoke(
        main, [*argv[:4], "endpoint", "switch", "score", "--to", "scorer:2"]
    )
    assert "rollout" not in result.output  # refused for the server, not for a rollout


def test_rollout_worker_killed_midway_keeps_serving_and_start_resumes_it(
    triton: TritonHandle, setup: tuple[Repository, TritonControl]
) -> None:
    import json
    import os
    import signal

    repo, control = setup
    client = Client(triton.grpc_url, "score")
    client.start()
    runner = CliRunner()
    args = [
        "--repo",
        str(repo.path),
        "--url",
        triton.grpc_url,
        "rollout",
        "start",
        "score",
        "--to",
        "2",
        "--stage-seconds",
        "2",
        "--min-requests",
        "5",
        "--max-latency-ratio",
        "20",
    ]
    started = runner.invoke(main, [*args, "--json"])
    assert started.exit_code == 0, started.output
    worker = json.loads(started.stdout)["worker_pid"]
    store = RolloutStore(repo)
    deadline = time.monotonic() + 60
    while (store.load("score").weight < 15) and time.monotonic() < deadline:
        time.sleep(0.2)
    driving = runner.invoke(main, ["--repo", str(repo.path), "rollout", "status", "score"])
    assert f"driver: pid {worker} on " in driving.stdout and "(here), last report" in driving.stdout
    os.kill(worker, signal.SIGKILL)  # the driver dies mid-rollout
    time.sleep(1.0)
    state = store.load("score")
    assert state.status == "running" and not state.driver_alive()
    status = runner.invoke(main, ["--repo", str(repo.path), "rollout", "status", "score"])
    assert "rollout resume score" in status.stdout
    errors_before = len(client.errors)
    time.sleep(1.0)  # the endpoint keeps serving with no driver
    assert len(client.errors) == errors_before == 0
    # resumed by `start` with only --to and one other option: the recorded settings stay,
    # and only the option given is reported as not applied (not every default)
    resume_args = [*args[:9], "--stage-seconds", "3", "--wait", "--json"]
    assert resume_args[6:9] == ["score", "--to", "2"]
    resumed = runner.invoke(main, resume_args)
    client.stop.set()
    client.join(30)
    assert resumed.exit_code == 0, resumed.output
    assert "not applied" in resumed.stderr and "stage_seconds: 3.0 (2.0)" in resumed.stderr
    assert "min_requests" not in resumed.stderr and "max_latency_ratio" not in resumed.stderr
    final = json.loads(resumed.stdout)
    assert final["status"] == "promoted"
    assert [h["weight"] for h in final["history"]][-1] == 90
    assert client.errors == []
    assert Endpoints(repo, control).get("score").targets[0].version == 2


COLD_START_MODEL_PY = """
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.version = float(args["model_version"])
        self.cold_calls = 3  # its first calls are slow, as with lazy initialization

    def execute(self, requests):
        if self.cold_calls:
            self.cold_calls -= 1
            time.sleep(0.3)
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", (x * 0 + self.version).astype(np.float32))]))
        return out
"""


def test_warm_up_keeps_a_slow_first_call_from_rolling_back_a_healthy_version(
    triton: TritonHandle, tmp_path: Path
) -> None:
    repo = Repository(triton.repo)
    publish(repo, "lazy", model_folder(tmp_path, "v1", VERSIONED_MODEL_PY))
    publish(repo, "lazy", model_folder(tmp_path, "v2", COLD_START_MODEL_PY))
    with TritonControl(triton.grpc_url) as control:
        Endpoints(repo, control).switch("lazy_ep", "lazy", 1)
        client = Client(triton.grpc_url, "lazy_ep")
        client.start()
        try:
            kwargs: dict[str, Any] = dict(
                stages=(5, 50, 100), stage_seconds=1.0, min_requests=10, max_latency_ratio=5
            )
            # without a warm-up the first stage pays for the slow first calls: rolled back
            cold = RolloutPolicy(warmup_requests=0, **kwargs)
            state = run_rollout(repo, control, begin_rollout(repo, control, "lazy_ep", 2, cold))
            assert state.status == "rolled_back" and "compute time" in state.reason, state.reason
            # with it (the default) the same version passes every stage
            warm = RolloutPolicy(**kwargs)
            state = run_rollout(repo, control, begin_rollout(repo, control, "lazy_ep", 2, warm))
            assert state.status == "promoted", state.reason
            assert state.warmup == "10/10 warm-up request(s) answered"
            assert client.errors == []
            assert Endpoints(repo, control).get("lazy_ep").targets[0].version == 2
        finally:
            client.stop.set()
            client.join(30)
            Endpoints(repo, control).delete("lazy_ep")


class StickyClient(Client):
    """Calls the endpoint as many users in turn (request parameter ``user``)."""

    users = [f"user{i}" for i in range(200)]

    def __init__(self, url: str, endpoint: str) -> None:
        super().__init__(url, endpoint)
        self.seen: list[tuple[str, float]] = []

    def run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url.removeprefix("grpc://"))
        t = grpcclient.InferInput("X", [2], "FP32")
        t.set_data_from_numpy(np.ones(2, dtype=np.float32))
        i = 0
        deadline = time.monotonic() + 240
        while not self.stop.is_set() and time.monotonic() < deadline:
            user = self.users[i % len(self.users)]
            i += 1
            try:
                y = client.infer(self.endpoint, [t], parameters={"user": user}).as_numpy("Y")
                self.seen.append((user, float(y[0])))
            except Exception as exc:  # every failure is recorded and asserted on
                self.errors.append((self.weight, str(exc)))
        client.close()


def test_a_sticky_rollout_moves_each_user_from_old_to_new_once(
    triton: TritonHandle, setup: tuple[Repository, TritonControl]
) -> None:
    repo, control = setup
    client = StickyClient(triton.grpc_url, "score")
    client.start()
    try:
        policy = RolloutPolicy(
            stages=(5, 30, 60, 100),
            stage_seconds=1.0,
            min_requests=10,
            max_latency_ratio=20,
            sticky_parameter="user",
        )
        state = run_rollout(repo, control, begin_rollout(repo, control, "score", 2, policy))
        time.sleep(0.5)
    finally:
        client.stop.set()
        client.join(30)
    assert state.status == "promoted", state.reason
    assert client.errors == []
    by_user: dict[str, list[float]] = {}
    for user, version in client.seen:
        by_user.setdefault(user, []).append(version)
    assert len(by_user) == len(StickyClient.users)
    for user, versions in by_user.items():
        # old, then new: a user never goes back once moved
        moved = versions.index(2.0)
        assert versions[moved:] == [2.0] * (len(versions) - moved), user
        assert set(versions[:moved]) <= {1.0}, user
    # users moved at different stages, not all at once
    first_new = sorted(
        next(i for i, (u, v) in enumerate(client.seen) if u == user and v == 2.0)
        for user in by_user
    )
    assert first_new[-1] - first_new[0] > 4 * len(StickyClient.users)


# A decoupled (streaming) model: two responses of its version per request.
STREAM_MODEL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.version = float(args["model_version"])

    def execute(self, requests):
        for r in requests:
            sender = r.get_response_sender()
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            for _ in range(2):
                y = (x * 0 + self.version).astype(np.float32)
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


def rollout_under_load(
    repo: Repository,
    control: TritonControl,
    endpoint: str,
    clients: list[Any],
    *,
    stage_seconds: float,
) -> RolloutState:
    """A rollout of ``endpoint`` to version 2 (stages 10, 50, 100) while ``clients``
    (threads with a ``stop`` event) call it the whole time; the endpoint is deleted
    after."""
    for client in clients:
        client.start()
    try:
        policy = RolloutPolicy(
            stages=(10, 50, 100), stage_seconds=stage_seconds, min_requests=5, max_latency_ratio=20
        )
        state = run_rollout(repo, control, begin_rollout(repo, control, endpoint, 2, policy))
        time.sleep(0.5)
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(30)
    Endpoints(repo, control).delete(endpoint)
    return state


class StreamClient(threading.Thread):
    """Calls a streaming endpoint over one gRPC stream, a request at a time; records the
    versions of each request's responses, or its error."""

    def __init__(self, url: str, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.url, self.endpoint = url, endpoint
        self.streams: list[list[float]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client = grpcclient.InferenceServerClient(self.url.removeprefix("grpc://"))
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        t = grpcclient.InferInput("X", [2], "FP32")
        t.set_data_from_numpy(np.ones(2, dtype=np.float32))
        deadline = time.monotonic() + 240
        while not self.stop.is_set() and time.monotonic() < deadline:
            client.async_stream_infer(self.endpoint, [t], enable_empty_final_response=True)
            versions: list[float] = []
            while True:
                result, error = answers.get(timeout=30)
                if error is not None:
                    self.errors.append(str(error))
                    break
                response = result.get_response()
                if response.outputs:
                    versions.append(float(result.as_numpy("Y")[0]))
                final = response.parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    self.streams.append(versions)
                    break
        client.stop_stream()
        client.close()


def test_a_streaming_model_is_rolled_out_with_every_stream_whole(
    triton: TritonHandle, tmp_path: Path
) -> None:
    repo = Repository(triton.repo)
    source = model_folder(tmp_path, "streamer", STREAM_MODEL_PY)
    config = (source / "config.pbtxt").read_text()
    (source / "config.pbtxt").write_text(config + "model_transaction_policy { decoupled: true }\n")
    for _ in range(2):
        publish(repo, "streamer", source)
    # as the CLI does for the embedded server: its HTTP URL, and its gRPC one for control
    with TritonControl(
        triton.http_url, metrics_url=triton.metrics_url, control_url=triton.grpc_url
    ) as control:
        Endpoints(repo, control).switch("stream_ep", "streamer", 1)
        client = StreamClient(triton.grpc_url, "stream_ep")
        state = rollout_under_load(repo, control, "stream_ep", [client], stage_seconds=1.0)
    assert state.status == "promoted", state.reason
    assert state.warmup == "10/10 warm-up request(s) answered"  # over a stream too
    assert client.errors == []
    assert len(client.streams) > 50
    # each stream from one version, whole; old first, new at the end
    assert all(s in ([1.0, 1.0], [2.0, 2.0]) for s in client.streams), client.streams
    assert [2.0, 2.0] in client.streams[: len(client.streams) - 10]
    assert client.streams[-10:] == [[2.0, 2.0]] * 10


# A stateful model: 1000 * version + the running sum of its sequence's inputs.
COUNTER_MODEL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.base = 1000.0 * float(args["model_version"])
        self.sums = {}

    def execute(self, requests):
        out = []
        for r in requests:
            cid, flags = r.correlation_id(), r.flags()
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            if flags & 1:
                self.sums[cid] = 0.0
            self.sums[cid] = self.sums.get(cid, 0.0) + float(x.flat[0])
            y = np.full(x.shape, self.base + self.sums[cid], dtype=np.float32)
            if flags & 2:
                self.sums.pop(cid, None)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
        return out
"""

COUNTER_CONFIG = (
    'backend: "python"\nmax_batch_size: 8\n'
    'input [{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
    'output [{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
    "sequence_batching { max_sequence_idle_microseconds: 1000000 "
    "oldest { max_candidate_sequences: 32 } }\n"
    "instance_group [{ kind: KIND_CPU count: 1 }]\n"
)


class SequenceClient(threading.Thread):
    """Sends sequences of 8 requests of 1 to the endpoint, one after another; records each
    sequence's answers, or the error that broke it."""

    def __init__(self, url: str, endpoint: str, first_id: int) -> None:
        super().__init__(daemon=True)
        self.url, self.endpoint, self.next_id = url, endpoint, first_id
        self.sequences: list[list[float]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url.removeprefix("grpc://"))
        t = grpcclient.InferInput("X", [1, 1], "FP32")
        t.set_data_from_numpy(np.ones((1, 1), dtype=np.float32))
        deadline = time.monotonic() + 240
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.next_id += 1
            answers: list[float] = []
            try:
                for k in range(8):
                    y = client.infer(
                        self.endpoint,
                        [t],
                        sequence_id=self.next_id,
                        sequence_start=k == 0,
                        sequence_end=k == 7,
                    ).as_numpy("Y")
                    answers.append(float(y[0, 0]))
                    time.sleep(0.01)
            except Exception as exc:  # every failure is recorded and asserted on
                self.errors.append(str(exc))
                continue
            self.sequences.append(answers)
        client.close()


def test_a_stateful_model_is_rolled_out_without_breaking_a_sequence(
    triton: TritonHandle, tmp_path: Path
) -> None:
    repo = Repository(triton.repo)
    source = tmp_path / "counter"
    source.mkdir()
    (source / "model.py").write_text(COUNTER_MODEL_PY)
    (source / "config.pbtxt").write_text(COUNTER_CONFIG)
    for _ in range(2):
        publish(repo, "counter", source)
    with TritonControl(triton.grpc_url, metrics_url=triton.metrics_url) as control:
        Endpoints(repo, control).switch("count", "counter", 1)
        clients = [SequenceClient(triton.grpc_url, "count", first) for first in (0, 10**6)]
        state = rollout_under_load(repo, control, "count", clients, stage_seconds=1.5)
    assert state.status == "promoted", state.reason
    assert state.warmup == "10/10 warm-up request(s) answered"  # each a sequence of its own
    assert [c.errors for c in clients] == [[], []]
    sequences = [s for c in clients for s in c.sequences]
    assert len(sequences) > 20
    # every sequence whole on one version, from its start to its end
    v1, v2 = [1001.0 + k for k in range(8)], [2001.0 + k for k in range(8)]
    assert all(s in (v1, v2) for s in sequences), [s for s in sequences if s not in (v1, v2)]
    assert v1 in sequences and v2 in sequences
    assert all(c.sequences[-1] == v2 for c in clients)


def test_a_rollout_outlives_a_server_crash_and_restart(tmp_path: Path) -> None:
    """The server dies mid-rollout (SIGKILL) and comes back with its endpoints restored:
    the driver waits, warms the new version up again and goes on to promote it."""
    import os
    import signal

    import psutil

    from manager.endpoints import Endpoints
    from manager.server import EmbeddedServer, free_ports, leftover_stubs

    repo = Repository(tmp_path / "repo")
    repo.path.mkdir()
    good = model_folder(tmp_path, "good", VERSIONED_MODEL_PY)
    publish(repo, "scorer", good)
    publish(repo, "scorer", good)
    server = EmbeddedServer(repo.path)
    ports = free_ports(3)
    info = server.start(*ports, exit_timeout_s=5, wait_timeout=120, tied=True)
    client = Client(info.grpc_url, "score")
    try:
        with TritonControl(info.grpc_url) as control:
            Endpoints(repo, control).switch("score", "scorer", 1)
            client.start()
            policy = RolloutPolicy(stage_seconds=1.5, min_requests=5, max_latency_ratio=20)
            state = begin_rollout(repo, control, "score", 2, policy)
            result: dict[str, RolloutState] = {}
            driver = threading.Thread(
                target=lambda: result.update(done=run_rollout(repo, control, state)),
                daemon=True,
            )
            driver.start()
            store = RolloutStore(repo)
            deadline = time.monotonic() + 60
            while store.load("score").weight < 15 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert store.load("score").weight == 15
            dead = info.pid
            os.kill(dead, signal.SIGKILL)
            psutil.Process(dead).wait(30)
            # starting again stops what the dead server left (a stub can outlive it)
            info = server.start(*ports, exit_timeout_s=5, wait_timeout=120, tied=True)
            assert leftover_stubs(repo.path, dead) == []
            with TritonControl(info.grpc_url) as fresh:
                Endpoints(repo, fresh).restore_all()  # what `server start --restore` does
            driver.join(120)
            assert not driver.is_alive()
    finally:
        client.stop.set()
        client.join(30)
        server.stop(timeout=30)
    final = result["done"]
    assert final.status == "promoted", final.reason
    assert [h.weight for h in final.history] == [5, 15, 30, 50, 75, 90]
    assert all(h.verdict == "healthy" for h in final.history)
    # the client saw failures only while the server was down or restoring the endpoint
    assert client.answers[-1][1] == 2.0
