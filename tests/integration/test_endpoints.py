"""Endpoints on a real tritonserver: pinned ensembles, the router, weight changes, errors,
and clients that keep calling while all of that happens."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc.model_config_pb2 import ModelConfig
from tritonclient.utils import InferenceServerException

from manager import native_router
from manager.endpoints import Endpoints, RouterOptions, Target, router_name
from manager.errors import EndpointError, LoadError
from manager.modelconfig import TensorSpec, build_config, read_config, write_config
from manager.publish import publish
from manager.repository import Repository
from manager.triton import TritonControl
from tests.integration.conftest import TritonHandle
from tests.integration.helpers import FAILING_MODEL_PY, http_answer
from tests.modelfactory import ADD_VERSION_PY, write_source_model
from tests.unit.fakes.triton_python_backend_utils import load_backend_module

pytestmark = pytest.mark.integration

ROUTER_PY = Path(__file__).resolve().parents[2] / "triton_backends" / "router" / "model.py"
stable_point = load_backend_module(ROUTER_PY, "tritonctl_router_reference").stable_point

ADDER = "ep_adder"
BROKEN = "ep_broken"
PARAMS = "ep_params"
STREAM = "ep_stream"
UNENDING = "ep_unending"  # a streaming model that ends its stream only when cancelled
SEQ = "ep_seq"
SEQ_SHORT = "ep_seq_short"  # the same model, sequences idle for 1 s are ended

# Answers x + the sum of the request's numeric and boolean parameters + the length of its
# string parameters: what reached the target of the request's parameters, in one number.
PARAMS_PY = textwrap.dedent(
    """
    import json

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                total = 0.0
                for value in json.loads(request.parameters() or "{}").values():
                    total += len(value) if isinstance(value, str) else float(value)
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                out = pb_utils.Tensor("OUTPUT0", x + np.float32(total))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            return responses
    """
)

# Takes 0.3 s per request: a queue of them builds up behind one instance.
SLOW_PY = textwrap.dedent(
    """
    import time

    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                time.sleep(0.3)
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0")
                responses.append(pb_utils.InferenceResponse(output_tensors=[x]))
            return responses
    """
)

BROKEN_PY = textwrap.dedent(
    """
    class TritonPythonModel:
        def execute(self, requests):
            raise RuntimeError("tritonctl-test: execute refused on purpose")
    """
)


# A decoupled (streaming) model: answers each request with three responses, x + 10 *
# version + 0, 1 and 2, then the final flag.
STREAM_PY = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            self.base = np.float32(10 * int(args["model_version"]))

        def execute(self, requests):
            for request in requests:
                sender = request.get_response_sender()
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                for i in range(3):
                    out = pb_utils.Tensor("OUTPUT0", x + self.base + np.float32(i))
                    sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
    """
)


# A decoupled model that answers once and then leaves the stream open until the client
# cancels it: a stream the server never ends.
UNENDING_PY = textwrap.dedent(
    """
    import threading
    import time

    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                sender = request.get_response_sender()
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                out = pb_utils.Tensor("OUTPUT0", x)
                sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
                threading.Thread(target=self._end_when_cancelled, args=(sender,)).start()
            return None

        def _end_when_cancelled(self, sender):
            while not sender.is_cancelled():
                time.sleep(0.05)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    """
)


# A stateful model (sequence batching): answers 1000 * version + the running sum of the
# inputs of its sequence.
SEQ_PY = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            self.base = 1000.0 * int(args["model_version"])
            self.sums = {}

        def execute(self, requests):
            responses = []
            for request in requests:
                cid, flags = request.correlation_id(), request.flags()
                x = float(pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy().flat[0])
                if flags & 1:
                    self.sums[cid] = 0.0
                self.sums[cid] = self.sums.get(cid, 0.0) + x
                out = np.full((1, 4), self.base + self.sums[cid], dtype=np.float32)
                if flags & 2:
                    del self.sums[cid]
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", out)]))
            return responses
    """
)


def source_folder(root: Path, name: str, model_py: str) -> Path:
    return write_source_model(root / name, name, model_py)


def publish_versions(repo: Path, name: str, model_py: str, count: int, tmp: Path) -> None:
    src = source_folder(tmp, name, model_py)
    for _ in range(count):
        publish(repo, name, src)


def publish_edited(
    repo: Path, name: str, model_py: str, tmp: Path, edit: Callable[[ModelConfig], None]
) -> None:
    """Two versions of ``model_py`` whose config ``edit`` changed."""
    src = source_folder(tmp, name, model_py)
    config = read_config(src / "config.pbtxt")
    edit(config)
    write_config(src / "config.pbtxt", config)
    for _ in range(2):
        publish(repo, name, src)


@pytest.fixture(scope="module")
def models(triton: TritonHandle, tmp_path_factory: pytest.TempPathFactory) -> TritonHandle:
    tmp = tmp_path_factory.mktemp("endpoint_sources")
    publish_versions(triton.repo, ADDER, ADD_VERSION_PY, 2, tmp)
    publish_versions(triton.repo, BROKEN, BROKEN_PY, 1, tmp)
    publish_versions(triton.repo, PARAMS, PARAMS_PY, 2, tmp)

    def streaming(config: ModelConfig) -> None:
        config.model_transaction_policy.decoupled = True

    def stateful(idle_us: int) -> Callable[[ModelConfig], None]:
        def edit(config: ModelConfig) -> None:
            # batches of several live sequences (the direct strategy gives each instance
            # one sequence at a time and queues the others)
            config.max_batch_size = 8
            config.sequence_batching.oldest.max_candidate_sequences = 16
            config.sequence_batching.max_sequence_idle_microseconds = idle_us

        return edit

    publish_edited(triton.repo, STREAM, STREAM_PY, tmp, streaming)
    publish_edited(triton.repo, UNENDING, UNENDING_PY, tmp, streaming)
    publish_edited(triton.repo, SEQ, SEQ_PY, tmp, stateful(30_000_000))
    publish_edited(triton.repo, SEQ_SHORT, SEQ_PY, tmp, stateful(1_000_000))
    return triton


@pytest.fixture(scope="module")
def control(models: TritonHandle) -> Iterator[TritonControl]:
    with TritonControl(models.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def endpoints(models: TritonHandle, control: TritonControl) -> Endpoints:
    return Endpoints(Repository(models.repo), control)


@pytest.fixture(params=["native", "python"])
def routed(
    request: pytest.FixtureRequest, models: TritonHandle, control: TritonControl
) -> tuple[Endpoints, str]:
    """Endpoints using the native or the Python-backend router, and a suffix that keeps
    the endpoint names of the two apart."""
    backend = str(request.param)
    return Endpoints(Repository(models.repo), control, router=RouterOptions(backend=backend)), (
        f"_{backend}"
    )


def grpc_client(triton: TritonHandle) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(triton.grpc_url.removeprefix("grpc://"))


def call(
    client: grpcclient.InferenceServerClient,
    model: str,
    *,
    version: str = "",
    parameters: dict[str, Any] | None = None,
) -> int:
    """One request of zeros; returns the version that answered (what it added)."""
    x = np.zeros(4, dtype=np.float32)
    inp = grpcclient.InferInput("INPUT0", [4], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp], model_version=version, parameters=parameters)
    out = result.as_numpy("OUTPUT0")
    assert out is not None and out.shape == (4,)
    assert len(set(out.tolist())) == 1
    return int(out[0])


def ready(control: TritonControl, name: str) -> set[int]:
    return {
        e.version for e in control.repository_index() if e.name == name and e.ready and e.version
    }


@dataclass
class ClientLoop:
    """Threads calling one model without pause, recording every answer and error."""

    triton: TritonHandle
    model: str
    version: str = ""
    threads: int = 2
    answers: list[tuple[float, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> ClientLoop:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self) -> None:
        client = grpc_client(self.triton)
        try:
            while not self._stop.is_set():
                try:
                    answer = call(client, self.model, version=self.version)
                except InferenceServerException as exc:
                    self.errors.append(str(exc))
                    continue
                self.answers.append((time.monotonic(), answer))
        finally:
            client.close()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.answers) + len(self.errors)
        while len(self.answers) + len(self.errors) - start < count:
            assert time.monotonic() < deadline, "the client loop stalled"
            time.sleep(0.01)


def test_switch_pins_an_endpoint_to_the_chosen_version(
    models: TritonHandle, endpoints: Endpoints, control: TritonControl
) -> None:
    state = endpoints.switch("ep_switch", ADDER, 1)
    assert state.mode == "pinned"
    with grpc_client(models) as client:
        assert {call(client, "ep_switch") for _ in range(20)} == {1}
    assert http_answer(models, "ep_switch", 3) == 1
    endpoints.switch("ep_switch", ADDER, 2)
    with grpc_client(models) as client:
        assert {call(client, "ep_switch") for _ in range(20)} == {2}
        # the versions stay callable by their own name and version
        assert call(client, ADDER, version="1") == 1
    assert read_config(models.repo / "ep_switch" / "config.pbtxt").platform == "ensemble"


def test_endpoints_pinned_to_different_versions_of_one_model_both_keep_serving(
    models: TritonHandle, endpoints: Endpoints
) -> None:
    # Loading an ensemble makes Triton poll its step's model: the version policy must live
    # in the model's config.pbtxt, or that poll would reload the model with one version.
    endpoints.switch("ep_old", ADDER, 1)
    endpoints.switch("ep_new", ADDER, 2)
    endpoints.switch("ep_old", ADDER, 1)
    with grpc_client(models) as client:
        assert call(client, "ep_old") == 1
        assert call(client, "ep_new") == 2


def test_reloading_a_model_to_add_a_version_keeps_the_served_version_answering(
    models: TritonHandle,
    endpoints: Endpoints,
    control: TritonControl,
    tmp_path: Path,
) -> None:
    name = "ep_reload"
    publish_versions(models.repo, name, ADD_VERSION_PY, 2, tmp_path)
    assert endpoints.serve_versions(name, {1}) == {1}
    with ClientLoop(models, name, version="1") as loop:
        loop.wait_for(20)
        started = time.monotonic()
        assert endpoints.serve_versions(name, {2}) == {1, 2}
        reload_s = time.monotonic() - started
        loop.wait_for(20)
    assert loop.errors == []
    assert {a for _, a in loop.answers} == {1}
    during = [t for t, _ in loop.answers if started <= t <= started + reload_s]
    assert during, "no answer arrived while the model was reloading"
    with grpc_client(models) as client:
        assert call(client, name, version="2") == 2
    endpoints.retire(name, 1)
    assert ready(control, name) == {2}


def test_split_shares_traffic_by_weight_and_a_weight_change_applies_within_a_second(
    models: TritonHandle, routed: tuple[Endpoints, str]
) -> None:
    endpoints, suffix = routed
    name = "ep_split" + suffix
    endpoints.split(name, [Target(ADDER, 1, 50), Target(ADDER, 2, 50)])
    with grpc_client(models) as client:
        # one caller: the native router sends it runs of up to 64 requests (exact shares
        # to within one run), the Python router draws per request
        answers = [call(client, name) for _ in range(640)]
        assert set(answers) == {1, 2}
        assert 0.35 < answers.count(2) / len(answers) < 0.65

        started = time.monotonic()
        endpoints.set_weights(name, [Target(ADDER, 1, 0), Target(ADDER, 2, 100)])
        timed: list[tuple[float, int]] = []
        while not timed or timed[-1][0] < 1.5:
            answer = call(client, name)
            timed.append((time.monotonic() - started, answer))
        last_old = max((t for t, answer in timed if answer == 1), default=0.0)
        assert last_old < 1.0, f"version 1 still answered {last_old:.2f} s after the change"
        assert sum(1 for t, _ in timed if t > 1.0) >= 50
        assert {call(client, name) for _ in range(100)} == {2}


def test_the_native_router_is_the_one_in_the_path_where_it_can_be_built(
    models: TritonHandle, control: TritonControl
) -> None:
    endpoints = Endpoints(Repository(models.repo), control)  # backend "auto"
    endpoints.split("ep_auto", [Target(ADDER, 1, 50), Target(ADDER, 2, 50)])
    # while it routes, the endpoint model is the router itself: no ensemble in front
    folder = models.repo / "ep_auto"
    backend = read_config(folder / "config.pbtxt").backend
    assert native_router.is_native_backend(backend)
    assert (folder / "1" / native_router.library_file(backend)).is_file()
    assert not (folder / "1" / "model.py").exists()
    assert ready(control, "ep_auto") == {1}
    assert not (models.repo / router_name("ep_auto")).exists()
    # the router counts what it forwards in Triton's statistics like any model
    before = sum(s.success_count for s in control.statistics("ep_auto"))
    with grpc_client(models) as client:
        # more than one run of 64 requests: both targets answer
        assert {call(client, "ep_auto") for _ in range(150)} == {1, 2}
    after = sum(s.success_count for s in control.statistics("ep_auto"))
    assert after - before == 150


def mapped_router_libraries(models: TritonHandle) -> set[str]:
    """The router libraries the server process has mapped (" (deleted)" if replaced)."""
    maps = Path(f"/proc/{models.info.pid}/maps").read_text().splitlines()
    return {line.split(None, 5)[5] for line in maps if "libtriton_tritonctl_router" in line}


def test_a_rebuilt_native_router_is_the_one_the_server_runs_after_the_next_split(
    models: TritonHandle,
    control: TritonControl,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoints = Endpoints(Repository(models.repo), control, router=RouterOptions(backend="native"))
    endpoints.split("ep_rebuilt", [Target(ADDER, 1, 50), Target(ADDER, 2, 50)])
    vdir = models.repo / "ep_rebuilt" / "1"
    first = vdir / native_router.library_file(read_config(vdir.parent / "config.pbtxt").backend)
    assert str(first) in mapped_router_libraries(models)
    # another build of the router (here: the same code with bytes appended)
    rebuilt = tmp_path / "libtriton_tritonctl_router.so"
    rebuilt.write_bytes(native_router.find_library().read_bytes() + b"\0" * 64)
    monkeypatch.setenv(native_router.LIBRARY_ENV, str(rebuilt))
    endpoints.split("ep_rebuilt", [Target(ADDER, 1, 30), Target(ADDER, 2, 70)])
    second = vdir / native_router.library_file(read_config(vdir.parent / "config.pbtxt").backend)
    assert second != first and not first.exists()
    assert str(second) in mapped_router_libraries(models)
    with grpc_client(models) as client:
        assert {call(client, "ep_rebuilt") for _ in range(150)} == {1, 2}
    endpoints.delete("ep_rebuilt")


def test_a_native_router_the_server_cannot_load_falls_back_to_the_python_router(
    models: TritonHandle,
    control: TritonControl,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bogus = tmp_path / "libtriton_tritonctl_router.so"
    bogus.write_bytes(b"not a shared library")  # as if built for another platform
    monkeypatch.setenv("TRITONCTL_ROUTER_LIBRARY", str(bogus))
    endpoints = Endpoints(Repository(models.repo), control)  # backend "auto"
    endpoints.split("ep_fallback", [Target(ADDER, 1, 50), Target(ADDER, 2, 50)])
    folder = models.repo / "ep_fallback"
    assert read_config(folder / "config.pbtxt").backend == "python"
    assert ready(control, "ep_fallback") == {1}
    assert endpoints.native_refusal(bogus)  # Triton's reason, kept for the next split
    with grpc_client(models) as client:
        assert {call(client, "ep_fallback") for _ in range(40)} == {1, 2}
    endpoints.delete("ep_fallback")


def test_switching_a_split_endpoint_back_to_pinned_takes_the_router_out(
    models: TritonHandle, routed: tuple[Endpoints, str], control: TritonControl
) -> None:
    endpoints, suffix = routed
    name = "ep_back" + suffix
    endpoints.split(name, [Target(ADDER, 1, 50), Target(ADDER, 2, 50)])
    assert read_config(models.repo / name / "config.pbtxt").platform != "ensemble"
    endpoints.switch(name, ADDER, 1)
    assert read_config(models.repo / name / "config.pbtxt").platform == "ensemble"
    assert sorted(p.name for p in (models.repo / name / "1").iterdir()) == ["tritonctl.json"]
    assert ready(control, name) == {1}
    with grpc_client(models) as client:
        assert {call(client, name) for _ in range(20)} == {1}


def test_a_failing_target_answers_the_client_with_its_error(
    models: TritonHandle, routed: tuple[Endpoints, str]
) -> None:
    endpoints, suffix = routed
    name = "ep_err" + suffix
    endpoints.split(name, [Target(BROKEN, 1, 100), Target(ADDER, 1, 0)])
    with grpc_client(models) as client:
        for _ in range(10):
            with pytest.raises(InferenceServerException, match="refused on purpose") as info:
                call(client, name)
            assert f"{BROKEN}:1" in str(info.value)


def slow_batched_model(repo: Path, tmp: Path, name: str) -> None:
    """Publish SLOW_PY with a dynamic batcher of batch 1 and one instance: Triton drops a
    cancelled request from that queue instead of running it."""
    src = write_source_model(tmp / name, name, SLOW_PY)
    config = build_config(
        name,
        [TensorSpec("INPUT0", "FP32", (-1,))],
        [TensorSpec("OUTPUT0", "FP32", (-1,))],
        max_batch_size=1,
        backend="python",
        kind="cpu",
        dynamic_batching=True,
    )
    write_config(src / "config.pbtxt", config)
    for _ in range(2):
        publish(repo, name, src)


def executions(control: TritonControl, name: str) -> int:
    return sum(s.execution_count for s in control.statistics(name) if s.version == 1)


def test_a_cancelled_request_is_cancelled_at_its_target_through_the_native_router(
    models: TritonHandle, control: TritonControl, tmp_path: Path
) -> None:
    """Eight 0.3 s requests are queued at the target through the router, and cancelled by
    their client after 0.2 s: the target runs the one it has started (and at most what
    its batcher had taken), not all eight."""
    if not native_router.available():
        pytest.skip("no C++ compiler: the native router cannot be built")
    slow_batched_model(models.repo, tmp_path, "ep_slow")
    endpoints = Endpoints(Repository(models.repo), control, router=RouterOptions(backend="native"))
    endpoints.split("ep_cancel", [Target("ep_slow", 1, 100), Target("ep_slow", 2, 0)])
    before = executions(control, "ep_slow")
    outcomes: list[str] = []
    with grpc_client(models) as client:
        inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
        calls = [
            client.async_infer(
                "ep_cancel", [inp], callback=lambda result, error: outcomes.append(str(error))
            )
            for _ in range(8)
        ]
        time.sleep(0.2)
        for c in calls:
            c.cancel()
        # until the target's queue has drained: it would take 8 x 0.3 s to run them all
        deadline = time.monotonic() + 5.0
        last, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = executions(control, "ep_slow")
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since > 1.0:
                break
            time.sleep(0.1)
    ran = executions(control, "ep_slow") - before
    assert 1 <= ran <= 4, f"the target ran {ran} of 8 cancelled requests"
    assert len(outcomes) == 8 and all("CANCELLED" in o.upper() for o in outcomes), outcomes


def test_sticky_parameter_keeps_each_user_on_one_version(
    models: TritonHandle, routed: tuple[Endpoints, str]
) -> None:
    endpoints, suffix = routed
    name = "ep_sticky" + suffix
    endpoints.split(name, [Target(ADDER, 1, 30), Target(ADDER, 2, 70)], sticky_parameter="user")
    seen = set()
    with grpc_client(models) as client:
        for user in (f"user-{i}" for i in range(12)):
            answers = {call(client, name, parameters={"user": user}) for _ in range(10)}
            assert len(answers) == 1
            # both routers place a key by the same stable hash
            expected = 1 if stable_point(user, 100.0) < 30.0 else 2
            assert answers == {expected}, user
            seen |= answers
    assert seen == {1, 2}


# A sticky key of each parameter type and the text both routers hash for it: a whole
# number is its integer's decimal text whatever its type (3, 3.0 and "3" are one user),
# any other double its shortest text that reads back as the same double.
STICKY_KEYS: list[tuple[Any, str]] = [
    (3, "3"),
    ("3", "3"),
    (3.0, "3"),
    (0.7, "0.7"),
    (-2.5, "-2.5"),
    (0.25, "0.25"),
    (1e20, "1e+20"),
    (100.0, "100"),
    (True, "true"),
    (False, "false"),
    ("user-3", "user-3"),
]


def test_sticky_parameter_of_every_type_keeps_its_user_on_one_version(
    models: TritonHandle, routed: tuple[Endpoints, str]
) -> None:
    endpoints, suffix = routed
    name = "ep_sticky_types" + suffix
    endpoints.split(name, [Target(ADDER, 1, 30), Target(ADDER, 2, 70)], sticky_parameter="user")
    expected = {repr(v): 1 if stable_point(text, 100.0) < 30.0 else 2 for v, text in STICKY_KEYS}
    assert set(expected.values()) == {1, 2}
    answers: dict[str, set[int]] = {repr(v): set() for v, _ in STICKY_KEYS}
    with grpc_client(models) as client:
        for _ in range(6):  # each key in turn, so a key routed by weight meets both targets
            for value, _ in STICKY_KEYS:
                answers[repr(value)].add(call(client, name, parameters={"user": value}))
    assert answers == {k: {v} for k, v in expected.items()}
    # over HTTP a JSON number with a fraction or an exponent arrives as a double too
    url = f"{models.http_url}/v2/models/{name}/infer"
    for text, key in (("3.0", "3"), ("2.5e0", "2.5"), ('"0.7"', "0.7")):
        request = {
            "parameters": {"user": "KEY"},
            "inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32", "data": [0] * 4}],
        }
        body = json.dumps(request).replace('"KEY"', text).encode()
        for _ in range(3):
            with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as a:
                out = json.loads(a.read())["outputs"][0]["data"]
            assert out == [1 if stable_point(key, 100.0) < 30.0 else 2] * 4, text


PARAM_TARGET = "ep_cparams"
PARAM_TARGET_SOURCE = Path(__file__).resolve().parent / "native" / "param_target.cc"


@pytest.fixture(scope="module")
def param_target(models: TritonHandle, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two versions of a model whose responses carry parameters: a small C++ backend
    (tests/integration/native/param_target.cc), as no Python model of Triton 2.51 can set
    response parameters."""
    tmp = tmp_path_factory.mktemp("param_target")
    compiler = native_router.find_compiler()
    assert compiler is not None, "a C++ compiler (g++) is needed"
    library = tmp / "libtriton_tritonctl_paramtarget.so"
    flags = ["-std=c++17", "-O1", "-fPIC", "-shared", "-fno-gnu-unique"]
    subprocess.run([compiler, *flags, "-o", str(library), str(PARAM_TARGET_SOURCE)], check=True)
    publish_versions(models.repo, PARAM_TARGET, ADD_VERSION_PY, 2, tmp)
    folder = models.repo / PARAM_TARGET
    config = read_config(folder / "config.pbtxt")
    config.backend = "tritonctl_paramtarget"
    write_config(folder / "config.pbtxt", config)
    for version in ("1", "2"):
        shutil.copyfile(library, folder / version / library.name)
    return PARAM_TARGET


def response_parameters(
    client: grpcclient.InferenceServerClient, model: str
) -> tuple[int, dict[str, Any]]:
    """The version that answered a request of zeros, and its response's parameters."""
    inp = grpcclient.InferInput("INPUT0", [4], "FP32")
    inp.set_data_from_numpy(np.zeros(4, dtype=np.float32))
    result = client.infer(model, [inp])
    out = result.as_numpy("OUTPUT0")
    assert out is not None
    parameters = result.get_response().parameters
    return int(out[0]), {
        k: getattr(v, str(v.WhichOneof("parameter_choice"))) for k, v in parameters.items()
    }


def test_the_native_router_passes_the_targets_response_parameters_on(
    models: TritonHandle, control: TritonControl, param_target: str
) -> None:
    endpoints = Endpoints(Repository(models.repo), control, router=RouterOptions(backend="native"))
    endpoints.split("ep_cparams_split", [Target(param_target, 1, 50), Target(param_target, 2, 50)])
    endpoints.switch("ep_cparams_pinned", param_target, 2)
    url = f"{models.http_url}/v2/models/ep_cparams_split/infer"
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32", "data": [0] * 4}]}
    ).encode()
    with grpc_client(models) as client:
        version, direct = response_parameters(client, param_target)
        assert direct == {
            "target_version": version,
            "note": "from the target",
            "checked": True,
            "score": 0.25,
        }
        seen = set()
        for _ in range(160):  # a lone caller's runs are up to 64 requests long
            version, routed = response_parameters(client, "ep_cparams_split")
            assert routed == direct | {"target_version": version}
            seen.add(version)
        assert seen == {1, 2}
        # Triton 2.51's ensemble does not pass a step's response parameters on: the
        # pinned endpoint answers with its own sequence_id/start/end and none of these
        version, pinned = response_parameters(client, "ep_cparams_pinned")
        assert version == 2
        assert set(pinned) == {"sequence_id", "sequence_start", "sequence_end"}
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as answer:
        over_http = json.loads(answer.read())["parameters"]
    assert over_http == direct | {"target_version": over_http["target_version"]}


def test_request_parameters_reach_the_target_through_the_router(
    models: TritonHandle, routed: tuple[Endpoints, str]
) -> None:
    endpoints, suffix = routed
    name = "ep_params" + suffix
    endpoints.split(name, [Target(PARAMS, 1, 50), Target(PARAMS, 2, 50)])
    parameters = {"count": 3, "scale": 0.5, "flag": True, "tag": "abcd"}
    x = np.zeros(4, dtype=np.float32)
    # the Python router passes a double on as its text ("0.5": 3 characters)
    through_router = 3 + (0.5 if suffix == "_native" else 3) + 1 + 4
    with grpc_client(models) as client:
        inp = grpcclient.InferInput("INPUT0", [4], "FP32")
        inp.set_data_from_numpy(x)
        for model, expected in ((PARAMS, 3 + 0.5 + 1 + 4), (name, through_router)):
            for _ in range(4):
                out = client.infer(model, [inp], parameters=parameters).as_numpy("OUTPUT0")
                assert out is not None
                assert out.tolist() == [expected] * 4, model


def test_clients_see_no_failure_while_the_endpoint_is_switched_and_split(
    models: TritonHandle, routed: tuple[Endpoints, str]
) -> None:
    endpoints, suffix = routed
    name = "ep_live" + suffix
    endpoints.switch(name, ADDER, 1)
    with ClientLoop(models, name, threads=3) as loop:
        loop.wait_for(30)
        endpoints.switch(name, ADDER, 2)
        loop.wait_for(30)
        endpoints.split(name, [Target(ADDER, 1, 50), Target(ADDER, 2, 50)])
        loop.wait_for(60)
        endpoints.set_weights(name, [Target(ADDER, 1, 90), Target(ADDER, 2, 10)])
        loop.wait_for(30)
        endpoints.switch(name, ADDER, 2)
        loop.wait_for(30)
        endpoints.switch(name, ADDER, 1)
        loop.wait_for(30)
    assert loop.errors == []
    assert {a for _, a in loop.answers} == {1, 2}
    assert loop.answers[-1][1] == 1


def test_publishing_a_new_version_keeps_the_versions_endpoints_pin_served(
    models: TritonHandle, endpoints: Endpoints, control: TritonControl, tmp_path: Path
) -> None:
    name = "ep_grow"
    publish_versions(models.repo, name, ADD_VERSION_PY, 2, tmp_path)
    endpoints.switch("ep_grow_old", name, 1)
    endpoints.switch("ep_grow_mid", name, 2)
    publish_versions(models.repo, name, ADD_VERSION_PY, 1, tmp_path)  # version 3
    with ClientLoop(models, "ep_grow_old") as loop:
        loop.wait_for(10)
        endpoints.switch("ep_grow_new", name)  # the newest: 3
        loop.wait_for(10)
    assert loop.errors == []
    assert ready(control, name) == {1, 2, 3}
    with grpc_client(models) as client:
        assert call(client, "ep_grow_old") == 1
        assert call(client, "ep_grow_mid") == 2
        assert call(client, "ep_grow_new") == 3


def test_a_failed_or_incompatible_switch_leaves_the_endpoint_and_its_model_as_they_were(
    models: TritonHandle, endpoints: Endpoints, control: TritonControl, tmp_path: Path
) -> None:
    flaky, ints, name = "ep_flaky", "ep_ints", "ep_guard"
    publish(models.repo, flaky, source_folder(tmp_path / "good", flaky, ADD_VERSION_PY))
    publish(models.repo, flaky, source_folder(tmp_path / "bad", flaky, FAILING_MODEL_PY))
    src = source_folder(tmp_path, ints, ADD_VERSION_PY)
    write_config(
        src / "config.pbtxt",
        build_config(
            ints,
            [TensorSpec("INPUT0", "INT32", (-1,))],
            [TensorSpec("OUTPUT0", "INT32", (-1,))],
            backend="python",
            kind="cpu",
        ),
    )
    publish(models.repo, ints, src)
    endpoints.switch(name, flaky, 1)
    policy_before = (models.repo / flaky / "config.pbtxt").read_bytes()
    with ClientLoop(models, name) as loop:
        loop.wait_for(20)
        with pytest.raises(LoadError, match="refused on purpose"):
            endpoints.switch(name, flaky, 2)
        loop.wait_for(20)
        with pytest.raises(LoadError, match="refused on purpose"):
            endpoints.split(name, [Target(flaky, 1, 95), Target(flaky, 2, 5)])
        loop.wait_for(20)
        with pytest.raises(EndpointError, match="clients of endpoint 'ep_guard' would fail"):
            endpoints.switch(name, ints, 1)
        loop.wait_for(20)
    assert loop.errors == []
    assert {a for _, a in loop.answers} == {1}
    # the version that failed is not left in the policy for Triton to try again
    assert (models.repo / flaky / "config.pbtxt").read_bytes() == policy_before
    assert ready(control, flaky) == {1}
    assert ready(control, ints) == set()
    assert endpoints.get(name).targets == [Target(flaky, 1, 100.0)]
    # a later load of the model (here: of the endpoint calling it) serves version 1 alone
    control.load_model(flaky)
    assert ready(control, flaky) == {1}
    endpoints.delete(name)


def test_the_python_example_of_the_docs_runs(models: TritonHandle, tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "endpoints.md").read_text()
    section = text.split("## Python API", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    publish_versions(models.repo, "doc_model", ADD_VERSION_PY, 2, tmp_path)
    exec(compile(block, "docs/endpoints.md", "exec"), {"url": models.grpc_url, "repo": models.repo})
    with grpc_client(models) as client:
        assert call(client, "doc_ep") == 2


def stream_call(
    client: grpcclient.InferenceServerClient, model: str, x: float, *, timeout: float = 30.0
) -> list[float]:
    """One request of ``x`` over a gRPC stream; what each response added to ``x``.

    Raises ``queue.Empty`` if the final response has not come within ``timeout`` seconds.
    A stream the server has not ended is then cancelled: stopping it gracefully would wait
    for the server to end it, for ever if it never does.
    """
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    ended = False
    try:
        inp = grpcclient.InferInput("INPUT0", [4], "FP32")
        inp.set_data_from_numpy(np.full(4, x, dtype=np.float32))
        client.async_stream_infer(model, [inp], enable_empty_final_response=True)
        added: list[float] = []
        deadline = time.monotonic() + timeout
        while True:
            result, error = answers.get(timeout=max(0.0, deadline - time.monotonic()))
            if error is not None:
                raise error
            response = result.get_response()
            if response.outputs:
                out = result.as_numpy("OUTPUT0")
                assert out.shape == (4,) and len(set(out.tolist())) == 1
                added.append(float(out[0]) - x)
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                ended = True
                return added
    finally:
        client.stop_stream(cancel_requests=not ended)


def test_a_stream_the_server_does_not_end_fails_the_call_instead_of_hanging(
    models: TritonHandle, control: TritonControl
) -> None:
    control.load_model(UNENDING)
    # in a thread of its own: without the cancel, closing the client waits for the
    # stream's end for ever, beyond the reach of pytest-timeout's signal
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            with grpc_client(models) as client:
                stream_call(client, UNENDING, 1.0, timeout=2.0)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the stream call hung on a stream the server did not end"
    assert isinstance(outcome.get("error"), queue.Empty), outcome
    control.unload_model(UNENDING)


def test_a_streaming_model_streams_every_response_through_its_endpoint(
    models: TritonHandle, routed: tuple[Endpoints, str]
) -> None:
    endpoints, suffix = routed
    name = "ep_streaming" + suffix
    endpoints.switch(name, STREAM, 1)
    with grpc_client(models) as client:
        assert stream_call(client, name, 1000.0) == [10.0, 11.0, 12.0]
    endpoints.split(name, [Target(STREAM, 1, 100), Target(STREAM, 2, 0)])
    config = read_config(models.repo / name / "config.pbtxt")
    assert config.platform != "ensemble" and config.model_transaction_policy.decoupled
    [shown] = endpoints.describe([endpoints.get(name)])
    assert (shown["streaming"], shown["stateful"]) == (True, False)

    # callers side by side, each input its own: every stream whole, from one version
    def caller(first: int) -> list[tuple[float, list[float]]]:
        with grpc_client(models) as client:
            return [(x, stream_call(client, name, x)) for x in range(first, first + 15)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = [r for part in pool.map(caller, (0, 100, 200, 300)) for r in part]
    assert len(results) == 60
    assert all(added == [10.0, 11.0, 12.0] for _, added in results), results

    # over HTTP too, with Triton's generate_stream (server-sent events)
    url = f"{models.http_url}/v2/models/{name}/generate_stream"
    body = json.dumps({"INPUT0": [2.0, 2.0, 2.0, 2.0]}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as answer:
        events = [
            json.loads(line[len(b"data: ") :])
            for line in answer.read().splitlines()
            if line.startswith(b"data: ")
        ]
    assert [e["OUTPUT0"] for e in events] == [[12.0] * 4, [13.0] * 4, [14.0] * 4]

    endpoints.set_weights(name, [Target(STREAM, 1, 0), Target(STREAM, 2, 100)])
    with grpc_client(models) as client:
        deadline = time.monotonic() + 2.0
        while (added := stream_call(client, name, 5.0)) != [20.0, 21.0, 22.0]:
            assert added == [10.0, 11.0, 12.0]
            assert time.monotonic() < deadline, "the weight change did not reach the stream"
        endpoints.switch(name, STREAM, 2)
        assert stream_call(client, name, 7.0) == [20.0, 21.0, 22.0]
    assert read_config(models.repo / name / "config.pbtxt").platform == "ensemble"


def test_an_endpoint_does_not_mix_streaming_and_single_answer_models(
    models: TritonHandle, endpoints: Endpoints
) -> None:
    with pytest.raises(EndpointError, match=r"differ in how they answer.*decoupled"):
        endpoints.split("ep_mixed", [Target(STREAM, 1, 50), Target(ADDER, 1, 50)])
    assert not (models.repo / "ep_mixed").exists()
    endpoints.switch("ep_single", ADDER, 1)
    with pytest.raises(EndpointError, match=r"how they answer.*clients of endpoint"):
        endpoints.switch("ep_single", STREAM, 1)
    with grpc_client(models) as client:
        assert call(client, "ep_single") == 1


def seq_call(
    client: grpcclient.InferenceServerClient,
    model: str,
    sequence: int,
    x: float,
    *,
    start: bool = False,
    end: bool = False,
) -> int:
    inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(np.full((1, 4), x, dtype=np.float32))
    result = client.infer(
        model, [inp], sequence_id=sequence, sequence_start=start, sequence_end=end
    )
    return int(result.as_numpy("OUTPUT0")[0, 0])


def test_a_sequence_stays_with_the_version_that_saw_its_start(
    models: TritonHandle, routed: tuple[Endpoints, str]
) -> None:
    endpoints, suffix = routed
    name = "ep_sequences" + suffix
    endpoints.split(name, [Target(SEQ, 1, 100), Target(SEQ, 2, 0)])
    sequences = [11, 12, 13, 14, 15]
    with grpc_client(models) as client:
        assert [seq_call(client, name, s, 1, start=True) for s in sequences] == [1001] * 5
        endpoints.set_weights(name, [Target(SEQ, 1, 0), Target(SEQ, 2, 100)])
        deadline = time.monotonic() + 2.0
        while seq_call(client, name, 99, 1, start=True, end=True) != 2001:  # new ones: v2
            assert time.monotonic() < deadline, "the weight change was not applied"
        # the live sequences go on to their end on the version that saw their start
        assert [seq_call(client, name, s, 2) for s in sequences] == [1003] * 5
        assert [seq_call(client, name, s, 3, end=True) for s in sequences] == [1006] * 5
        # one that starts again is placed anew
        assert seq_call(client, name, sequences[0], 5, start=True, end=True) == 2005


def test_a_switch_of_a_stateful_endpoint_lets_the_sequences_under_way_end_first(
    models: TritonHandle, endpoints: Endpoints
) -> None:
    name = "ep_seq_drained"
    endpoints.switch(name, SEQ_SHORT, 1)
    switched: dict[str, Any] = {}

    def switch() -> None:
        started = time.monotonic()
        switched["state"] = endpoints.switch(name, SEQ_SHORT, 2)
        switched["seconds"] = time.monotonic() - started

    with grpc_client(models) as client:
        assert seq_call(client, name, 21, 1, start=True) == 1001
        total = 1
        worker = threading.Thread(target=switch)
        worker.start()
        # while the switch waits, a new sequence goes to v2 and the one under way goes
        # on on v1 (it is continued well within its idle time of 1 s)
        deadline = time.monotonic() + 20.0
        while seq_call(client, name, 99, 1, start=True, end=True) != 2001:
            assert time.monotonic() < deadline, "new sequences never reached v2"
            total += 1
            assert seq_call(client, name, 21, 1) == 1000 + total
            time.sleep(0.05)
        for _ in range(4):
            time.sleep(0.3)
            total += 1
            assert seq_call(client, name, 21, 1) == 1000 + total
        assert worker.is_alive(), "the switch did not wait for the sequence under way"
        assert seq_call(client, name, 21, 1, end=True) == 1001 + total
        worker.join(timeout=30)
        assert not worker.is_alive()
        assert switched["state"].targets == [Target(SEQ_SHORT, 2, 100.0)]
        assert endpoints.get(name).mode == "pinned"
        assert seq_call(client, name, 21, 5, start=True, end=True) == 2005


def test_a_split_of_a_pinned_stateful_endpoint_keeps_the_sequences_begun_before_it(
    models: TritonHandle, endpoints: Endpoints
) -> None:
    name = "ep_seq_split"
    endpoints.switch(name, SEQ_SHORT, 1)
    with grpc_client(models) as client:
        assert seq_call(client, name, 31, 1, start=True) == 1001
        # listed second, yet the pinned version is where the router sends sequences
        # whose start it did not see
        splitter = threading.Thread(
            target=endpoints.split,
            args=(name, [Target(SEQ_SHORT, 2, 50), Target(SEQ_SHORT, 1, 50)]),
        )
        splitter.start()
        total = 1
        while splitter.is_alive():  # the sequence is kept well within its idle time
            total += 1
            assert seq_call(client, name, 31, 1) == 1000 + total
            time.sleep(0.2)
        splitter.join()
        assert endpoints.get(name).mode == "routed"
        assert seq_call(client, name, 31, 1) == 1001 + total
        assert seq_call(client, name, 31, 1, end=True) == 1002 + total
    assert endpoints.get(name).targets == [Target(SEQ_SHORT, 1, 50.0), Target(SEQ_SHORT, 2, 50.0)]


def test_a_router_reloaded_mid_sequence_finds_the_version_that_has_it(
    models: TritonHandle, routed: tuple[Endpoints, str], control: TritonControl
) -> None:
    endpoints, suffix = routed
    name = "ep_seq_reload" + suffix
    endpoints.split(name, [Target(SEQ, 1, 0), Target(SEQ, 2, 100)])
    other = "python" if suffix == "_native" else "native"
    replacing = Endpoints(Repository(models.repo), control, router=RouterOptions(backend=other))
    with grpc_client(models) as client:
        assert seq_call(client, name, 61, 1, start=True) == 2001
        # the other router in its place knows nothing of sequence 61, which lives on
        # v2, listed second: v1 refuses it, and v2 gets it
        replacing.split(name, [Target(SEQ, 1, 100), Target(SEQ, 2, 0)])
        assert replacing.get(name).generation > 1
        assert seq_call(client, name, 61, 2) == 2003
        assert seq_call(client, name, 61, 3) == 2006
        assert seq_call(client, name, 61, 4, end=True) == 2010
        assert seq_call(client, name, 62, 1, start=True, end=True) == 1001  # new: by weight


def test_an_endpoint_of_a_stateful_model_keeps_its_clients_sequences_across_switches(
    models: TritonHandle, endpoints: Endpoints
) -> None:
    with pytest.raises(EndpointError, match="differ in state"):
        endpoints.split("ep_seq_mixed", [Target(SEQ, 1, 50), Target(ADDER, 1, 50)])
    endpoints.switch("ep_seq_pinned", SEQ, 1)
    endpoints.switch("ep_seq_pinned", SEQ, 2)  # the same kind of model: no --force
    [shown] = endpoints.describe([endpoints.get("ep_seq_pinned")])
    assert (shown["streaming"], shown["stateful"]) == (False, True)
    with grpc_client(models) as client:
        assert seq_call(client, "ep_seq_pinned", 7, 1, start=True) == 2001
        assert seq_call(client, "ep_seq_pinned", 7, 2, end=True) == 2003
    with pytest.raises(EndpointError, match=r"differ in state.*clients of endpoint"):
        endpoints.switch("ep_seq_pinned", ADDER, 1)


# --------------------------------------------------------------------------- racing loads
#
# Triton reloads an ensemble whenever a model it calls is loaded again with changes, and it
# does so with the ensemble's config as it was when that load began, without waiting for
# a load of the ensemble itself that is under way. Of two loads of one model, the one that
# began first fails ("Newer operation has been applied to the model lifecycle") and the
# model serves what the other loaded.

RACE_T = "ep_race_t"
RACE_U = "ep_race_u"


@pytest.fixture(scope="module")
def race_models(models: TritonHandle, tmp_path_factory: pytest.TempPathFactory) -> TritonHandle:
    tmp = tmp_path_factory.mktemp("race_sources")
    publish_versions(models.repo, RACE_T, ADD_VERSION_PY, 2, tmp)
    publish_versions(models.repo, RACE_U, ADD_VERSION_PY, 1, tmp)
    return models


def served_steps(control: TritonControl, name: str) -> list[tuple[str, int]] | str:
    """What Triton serves as ``name``: an ensemble's steps, else the backend."""
    config = control.model_config(name)
    if "ensemble_scheduling" not in config:
        return str(config.get("backend"))
    return [
        (s["model_name"], int(s.get("model_version", -1)))
        for s in config["ensemble_scheduling"]["step"]
    ]


def test_a_switch_away_from_a_target_another_change_is_loading_is_what_gets_served(
    race_models: TritonHandle, control: TritonControl
) -> None:
    """Endpoint A leaves target t while endpoint B's change loads a new version of t (in
    another process, say). B's load of t reloads A's ensemble as it was when that load
    began: A's switch must not be undone by it once it has returned."""
    repo = Repository(race_models.repo)
    endpoints = Endpoints(repo, control)
    endpoints.switch("ep_race_a", RACE_T, 1)
    endpoints.switch("ep_race_b", RACE_T, 1)
    endpoints.switch("ep_race_c", RACE_U, 1)  # u is served: A's switch only loads A
    errors: list[BaseException] = []

    def change_b() -> None:
        with TritonControl(race_models.grpc_url) as other:
            try:
                Endpoints(Repository(race_models.repo), other).switch("ep_race_b", RACE_T, 2)
            except BaseException as exc:  # handed to the test
                errors.append(exc)

    worker = threading.Thread(target=change_b)
    worker.start()
    time.sleep(0.3)  # B is loading t:1 and t:2 (a Python model: about a second)
    try:
        endpoints.switch("ep_race_a", RACE_U, 1)
    finally:
        worker.join(timeout=120)
    assert not errors
    assert served_steps(control, "ep_race_a") == [(RACE_U, 1)]
    assert served_steps(control, "ep_race_b") == [(RACE_T, 2)]
    assert http_answer(race_models, "ep_race_a") == 1.0


@pytest.mark.parametrize("delay", [0.3, 0.6, 0.9])
def test_a_split_overtaken_by_another_clients_reload_of_its_target_still_routes(
    race_models: TritonHandle, control: TritonControl, delay: float
) -> None:
    """Another Triton client reloads target t (its files changed) while the endpoint
    pinned to t becomes the router: the reload of the ensemble that t's load brings
    overtakes the router's load, which fails; the split loads the router again."""
    import os

    name = "ep_race_split"
    endpoints = Endpoints(
        Repository(race_models.repo), control, router=RouterOptions(backend="python")
    )
    endpoints.switch(name, RACE_U, 1)
    endpoints.switch(name, RACE_T, 1)  # an ensemble calling t, loaded afresh
    later = time.time() + 10
    for path in (race_models.repo / RACE_T).glob("[0-9]*/**"):
        os.utime(path, (later, later))  # t's files changed: Triton loads it again
    errors: list[BaseException] = []

    def reload_t() -> None:
        with TritonControl(race_models.grpc_url) as other:
            try:
                other.load_model(RACE_T)
            except BaseException as exc:  # handed to the test
                errors.append(exc)

    worker = threading.Thread(target=reload_t)
    worker.start()
    time.sleep(delay)
    try:
        state = endpoints.split(name, [Target(RACE_T, 1, 50), Target(RACE_U, 1, 50)])
    finally:
        worker.join(timeout=120)
    assert not errors
    assert state.mode == "routed"
    assert served_steps(control, name) == "python"
    assert http_answer(race_models, name) == 1.0


def test_restore_serves_an_endpoint_again_that_another_clients_reload_set_back(
    race_models: TritonHandle, control: TritonControl
) -> None:
    """A switch away from t returns while another Triton client's reload of t is under
    way; that reload then reloads the endpoint's ensemble as it was before the switch
    (nothing tritonctl can lock out). Restoring the endpoint serves it as its routes say."""
    import os

    name = "ep_race_restore"
    endpoints = Endpoints(Repository(race_models.repo), control)
    endpoints.switch("ep_race_c", RACE_U, 1)  # u is served: the switch only loads the endpoint
    endpoints.switch(name, RACE_T, 1)
    later = time.time() + 20
    for path in (race_models.repo / RACE_T).glob("[0-9]*/**"):
        os.utime(path, (later, later))
    worker = threading.Thread(target=lambda: TritonControl(race_models.grpc_url).load_model(RACE_T))
    worker.start()
    time.sleep(0.3)
    try:
        endpoints.switch(name, RACE_U, 1)
    finally:
        worker.join(timeout=120)
    assert served_steps(control, name) == [(RACE_T, 1)]  # set back by t's reload
    endpoints.ensure(name)
    assert served_steps(control, name) == [(RACE_U, 1)]
