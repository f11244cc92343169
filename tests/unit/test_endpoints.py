"""Endpoints without a server: configs, routes files, the identical-IO check, the router's
choice of target, and the Endpoints operations against a fake Triton."""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import os
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import pytest
from google.protobuf import json_format

from manager.endpoints import (
    ENDPOINT_KIND,
    PINNED,
    ROUTED,
    ROUTER_SUFFIX,
    Endpoints,
    EndpointState,
    RouterOptions,
    Target,
    check_same_io,
    endpoint_config,
    instance_total,
    is_endpoint_folder,
    native_routes_text,
    policy_versions,
    router_config,
    routes_relpath,
    with_versions,
)
from manager.errors import (
    EndpointError,
    InvalidNameError,
    LoadError,
    ModelNotFoundError,
    RolloutError,
    UnloadError,
)
from manager.modelconfig import (
    ModelConfig,
    TensorSpec,
    build_config,
    config_from_text,
    config_to_text,
    read_config,
    write_config,
)
from manager.repository import Repository
from manager.rollout import RolloutPolicy, RolloutState, RolloutStore
from manager.triton import IndexEntry, ModelStats
from tests.unit.fakes import triton_python_backend_utils as fake_pb

ROUTER_PY = Path(__file__).resolve().parents[2] / "triton_backends" / "router" / "model.py"

X = TensorSpec("INPUT0", "FP32", (-1,))
Y = TensorSpec("OUTPUT0", "FP32", (-1,))


def model_config(
    name: str = "m",
    *,
    max_batch_size: int = 0,
    inputs: tuple[TensorSpec, ...] = (X,),
    outputs: tuple[TensorSpec, ...] = (Y,),
    instances: int = 1,
) -> ModelConfig:
    return build_config(
        name,
        list(inputs),
        list(outputs),
        max_batch_size=max_batch_size,
        backend="python",
        kind="cpu",
        instance_count=instances,
    )


def round_trip(config: ModelConfig) -> ModelConfig:
    text = config_to_text(config)
    back = config_from_text(text)
    assert back == config
    return back


# --------------------------------------------------------------------------- configs


def test_pinned_endpoint_config_is_an_ensemble_calling_the_target_version() -> None:
    config = round_trip(endpoint_config("ep", model_config("m"), "m", 3))
    assert config.platform == "ensemble"
    assert config.name == "ep"
    assert "max_batch_size: 0" in config_to_text(config)
    [step] = config.ensemble_scheduling.step
    assert (step.model_name, step.model_version) == ("m", 3)
    assert dict(step.input_map) == {"INPUT0": "INPUT0"}
    assert dict(step.output_map) == {"OUTPUT0": "OUTPUT0"}
    assert [i.name for i in config.input] == ["INPUT0"]
    assert [o.name for o in config.output] == ["OUTPUT0"]
    assert not config.instance_group  # an ensemble has no instances


def test_router_config_is_a_python_model_that_finds_its_routes_file() -> None:
    config = round_trip(router_config("ep", model_config("m", max_batch_size=8)))
    assert config.name == "ep"  # while it routes, the endpoint model is the router
    assert config.backend == "python"
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["tritonctl.routes"] == "../.tritonctl/endpoints/ep.json"
    assert params["tritonctl.kind"] == "endpoint-router"
    assert config.HasField("dynamic_batching")
    assert config.input[0].allow_ragged_batch
    assert config.instance_group[0].count == 1


def test_router_instances_follow_the_targets_unless_given() -> None:
    batched = model_config("m", max_batch_size=8)
    unbatched = model_config("m", max_batch_size=0)
    assert router_config("ep", batched, target_instances=3).instance_group[0].count == 3
    # without batching each router instance waits on one request: two more than the target
    assert router_config("ep", unbatched, target_instances=1).instance_group[0].count == 3
    assert not router_config("ep", unbatched).HasField("dynamic_batching")
    fixed = RouterOptions(instance_count=5)
    assert router_config("ep", batched, fixed).instance_group[0].count == 5
    assert instance_total(model_config(instances=4)) == 4
    assert instance_total(ModelConfig(name="bare")) == 1


def test_routes_path_is_relative_to_the_router_folder() -> None:
    router_dir = Path("/repo/ep")
    assert (router_dir / routes_relpath("ep")).resolve() == Path(
        "/repo/.tritonctl/endpoints/ep.json"
    )


def test_version_policy_lists_exactly_the_versions_to_serve_and_round_trips() -> None:
    config = round_trip(with_versions(model_config("m"), [3, 1, 3]))
    assert list(config.version_policy.specific.versions) == [1, 3]
    assert policy_versions(config) == {1, 3}
    assert policy_versions(model_config("m")) is None
    with pytest.raises(EndpointError):
        with_versions(model_config("m"), [])


# --------------------------------------------------------------------------- identical IO


def test_identical_targets_pass_the_io_check() -> None:
    sig = check_same_io([("a:1", model_config("a")), ("b:2", model_config("b"))])
    assert sig.inputs[0][0] == "INPUT0"


def test_io_check_refuses_a_different_dtype_naming_the_tensor() -> None:
    other = model_config("b", inputs=(TensorSpec("INPUT0", "FP16", (-1,)),))
    with pytest.raises(EndpointError, match=r"input 'INPUT0'.*FP16.*FP32"):
        check_same_io([("a:1", model_config("a")), ("b:2", other)])


def test_io_check_refuses_a_missing_output_naming_it() -> None:
    other = model_config("b", outputs=(Y, TensorSpec("EXTRA", "INT64", (1,))))
    with pytest.raises(EndpointError, match="output 'EXTRA'"):
        check_same_io([("a:1", model_config("a")), ("b:2", other)])


def test_io_check_refuses_different_batch_sizes() -> None:
    with pytest.raises(EndpointError, match="max_batch_size"):
        check_same_io([("a:1", model_config("a")), ("b:2", model_config("b", max_batch_size=4))])


def streaming(config: ModelConfig) -> ModelConfig:
    config.model_transaction_policy.decoupled = True
    return config


def test_io_check_refuses_mixing_streaming_and_single_answer_models() -> None:
    with pytest.raises(EndpointError, match=r"how they answer: b:2 sends a stream"):
        check_same_io([("a:1", model_config("a")), ("b:2", streaming(model_config("b")))])
    sig = check_same_io(
        [("a:1", streaming(model_config("a"))), ("b:2", streaming(model_config("b")))]
    )
    assert sig.decoupled


def test_an_endpoint_of_a_streaming_model_streams_too_and_its_router_does_not_batch() -> None:
    target = streaming(model_config("m", max_batch_size=8))
    pinned = round_trip(endpoint_config("ep", target, "m", 1))
    assert pinned.model_transaction_policy.decoupled
    for native in (None, "tritonctl_router_x"):
        router = round_trip(router_config("ep", target, native_backend=native))
        assert router.model_transaction_policy.decoupled
        assert not router.HasField("dynamic_batching")
    python = router_config("ep", target)
    assert python.parameters["tritonctl.merge_batches"].string_value == "false"
    assert not router_config("ep", model_config("m")).model_transaction_policy.decoupled


# --------------------------------------------------------------------------- state


def test_routes_state_round_trips_through_its_dict() -> None:
    state = EndpointState(
        name="ep",
        mode="routed",
        targets=[Target("m", 1, 90), Target("m", 2, 10)],
        sticky_parameter="user",
        use_correlation_id=True,
        generation=4,
        updated_at="2024-01-01T00:00:00+00:00",
    )
    data = json.loads(json.dumps(state.to_dict()))
    assert data["sticky"] == {"parameter": "user", "use_correlation_id": True}
    assert EndpointState.from_dict(data) == state
    assert state.shares() == {("m", 1): 0.9, ("m", 2): 0.1}


def test_target_parse_reads_model_version_and_weight() -> None:
    assert Target.parse("m:2=25") == Target("m", 2, 25.0)
    assert Target.parse("my.model:3") == Target("my.model", 3, 100.0)
    with pytest.raises(EndpointError):
        Target.parse("m")
    with pytest.raises(EndpointError):
        Target("m", 1, -1)
    with pytest.raises(InvalidNameError):
        Target("../m", 1)


def test_malformed_routes_are_refused() -> None:
    with pytest.raises(EndpointError, match="sticky parameter"):
        EndpointState(name="ep", mode="routed", targets=[], sticky_parameter="user\n")
    with pytest.raises(EndpointError):
        EndpointState.from_dict({"name": "ep", "mode": "sideways", "targets": []})
    with pytest.raises(EndpointError):
        EndpointState.from_dict({"name": "ep"})


# --------------------------------------------------------------------------- the router


@pytest.fixture(scope="module")
def router() -> Iterator[ModuleType]:
    saved = sys.modules.get("triton_python_backend_utils")
    real_request = fake_pb.InferenceRequest  # the router tests swap in BlsRequest
    fake_pb.install()
    spec = importlib.util.spec_from_file_location("tritonctl_router_under_test", ROUTER_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    fake_pb.InferenceRequest = real_request  # type: ignore[misc]
    if saved is None:
        sys.modules.pop("triton_python_backend_utils", None)
    else:
        sys.modules["triton_python_backend_utils"] = saved


def routes(targets: list[tuple[str, int, float]], **sticky: Any) -> dict[str, Any]:
    return {
        "name": "ep",
        "mode": "routed",
        "generation": 1,
        "targets": [{"model": m, "version": v, "weight": w} for m, v, w in targets],
        "sticky": {"parameter": sticky.get("parameter"), "use_correlation_id": False}
        | {k: v for k, v in sticky.items() if k == "use_correlation_id"},
    }


def test_sticky_key_always_picks_the_same_target(router: ModuleType) -> None:
    r = router.Routes(routes([("m", 1, 50), ("m", 2, 50)], parameter="user"))
    for key in ("alice", "bob", "carol", "user-17"):
        picks = {r.pick(key) for _ in range(20)}
        assert len(picks) == 1
    # the hash is stable across processes: a fixed key maps to a fixed point
    assert router.stable_point("alice", 1.0) == router.stable_point("alice", 1.0)
    assert 0.0 <= router.stable_point("alice", 100.0) < 100.0


def test_sticky_shares_follow_the_weights_over_many_keys(router: ModuleType) -> None:
    r = router.Routes(routes([("m", 1, 70), ("m", 2, 20), ("n", 5, 10)], parameter="user"))
    counts: dict[tuple[str, int], int] = {}
    n = 20000
    for i in range(n):
        t = r.pick(f"user-{i}")
        counts[t] = counts.get(t, 0) + 1
    assert abs(counts[("m", 1)] / n - 0.7) < 0.02
    assert abs(counts[("m", 2)] / n - 0.2) < 0.02
    assert abs(counts[("n", 5)] / n - 0.1) < 0.02


def test_random_shares_follow_the_weights_and_zero_weight_gets_nothing(
    router: ModuleType,
) -> None:
    r = router.Routes(routes([("m", 1, 0), ("m", 2, 25), ("m", 3, 75)]))
    counts = {2: 0, 3: 0}
    for _ in range(20000):
        counts[r.pick(None)[1]] += 1
    assert abs(counts[2] / 20000 - 0.25) < 0.02


def test_a_single_positive_weight_takes_all_traffic(router: ModuleType) -> None:
    r = router.Routes(routes([("m", 1, 0), ("m", 2, 100)], parameter="user"))
    assert {r.pick(f"k{i}") for i in range(200)} == {("m", 2)}
    assert {r.pick(None) for _ in range(200)} == {("m", 2)}


def test_a_growing_canary_never_sends_a_moved_user_back(router: ModuleType) -> None:
    keys = [f"user-{i}" for i in range(3000)]
    moved: set[str] = set()
    for new_weight in (5, 15, 30, 50, 75, 90, 100):
        r = router.Routes(routes([("m", 1, 100 - new_weight), ("m", 2, new_weight)]))
        now_new = {k for k in keys if r.pick(k) == ("m", 2)}
        assert moved <= now_new
        moved = now_new
    assert moved == set(keys)


def test_routes_with_no_weight_are_refused(router: ModuleType) -> None:
    with pytest.raises(ValueError):
        router.Routes(routes([("m", 1, 0), ("m", 2, 0)]))
    with pytest.raises(ValueError):
        router.Routes(routes([]))


class BlsRequest:
    """What the router builds for a BLS call; ``exec`` asks the fake ``server``."""

    server: Callable[[str, int, dict[str, np.ndarray]], dict[str, np.ndarray]]
    calls: list[tuple[str, int, int]] = []
    parameters: list[dict[str, Any] | None] = []
    flags: list[int] = []

    def __init__(
        self,
        model_name: str,
        inputs: list[Any],
        requested_output_names: list[str],
        model_version: int = -1,
        parameters: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        BlsRequest.parameters.append(parameters)
        self.model = model_name
        self.version = model_version
        self.inputs = {t.name(): t.as_numpy() for t in inputs}
        self.wanted = requested_output_names

    def set_flags(self, flags: int) -> None:
        BlsRequest.flags.append(flags)

    def exec(self) -> fake_pb.InferenceResponse:
        batch = next(iter(self.inputs.values())).shape[0]
        BlsRequest.calls.append((self.model, self.version, batch))
        try:
            outputs = BlsRequest.server(self.model, self.version, self.inputs)
        except Exception as exc:
            return fake_pb.InferenceResponse(error=fake_pb.TritonError(str(exc)))
        return fake_pb.InferenceResponse(
            [fake_pb.Tensor(n, a) for n, a in outputs.items() if n in self.wanted]
        )


class ClientRequest(fake_pb.InferenceRequest):
    """A client request as the router receives it (parameters and correlation id)."""

    def __init__(
        self, x: np.ndarray, parameters: str = "{}", correlation_id: int = 0, flags: int = 0
    ) -> None:
        super().__init__([fake_pb.input_tensor("INPUT0", x)], ["OUTPUT0"])
        self._parameters = parameters
        self._cid = correlation_id
        self._flags = flags

    def flags(self) -> int:
        return self._flags

    def parameters(self) -> str:
        return self._parameters

    def correlation_id(self) -> int:
        return self._cid


def add_version(model: str, version: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if model == "broken":
        raise RuntimeError("broken on purpose")
    return {"OUTPUT0": inputs["INPUT0"] + np.float32(version)}


def make_router(
    router: ModuleType,
    tmp_path: Path,
    targets: list[tuple[str, int, float]],
    *,
    max_batch_size: int = 8,
    stateful: bool = False,
    **sticky: Any,
) -> Any:
    folder = tmp_path / "ep__router"
    folder.mkdir(exist_ok=True)
    routes_file = tmp_path / ".tritonctl" / "endpoints" / "ep.json"
    routes_file.parent.mkdir(parents=True, exist_ok=True)
    routes_file.write_text(json.dumps(routes(targets, **sticky)))
    target = model_config("m", max_batch_size=max_batch_size)
    if stateful:
        target.sequence_batching.max_sequence_idle_microseconds = 5_000_000
    config = router_config("ep", target)
    from google.protobuf import json_format

    args = {
        "model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
        "model_repository": str(folder),
        "model_version": "1",
    }
    router.pb_utils.InferenceRequest = BlsRequest
    BlsRequest.server = staticmethod(add_version)
    BlsRequest.calls = []
    BlsRequest.parameters = []
    BlsRequest.flags = []
    model = router.TritonPythonModel()
    model.initialize(args)
    return model


def outputs_of(response: fake_pb.InferenceResponse) -> np.ndarray:
    assert not response.has_error(), response.error()
    [tensor] = response.output_tensors()
    assert tensor.name() == "OUTPUT0"
    return tensor.as_numpy()


def test_router_answers_with_the_target_outputs_unchanged(
    router: ModuleType, tmp_path: Path
) -> None:
    model = make_router(router, tmp_path, [("m", 1, 0), ("m", 2, 100)])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    [response] = model.execute([ClientRequest(x)])
    np.testing.assert_array_equal(outputs_of(response), x + 2)
    assert BlsRequest.calls == [("m", 2, 2)]


def test_router_joins_a_batch_per_target_and_splits_the_answers(
    router: ModuleType, tmp_path: Path
) -> None:
    model = make_router(router, tmp_path, [("m", 1, 50), ("m", 2, 50)])
    requests = [ClientRequest(np.full((1, 4), 10 * i, np.float32)) for i in range(8)]
    responses = model.execute(requests)
    versions = []
    for i, response in enumerate(responses):
        out = outputs_of(response)
        version = int(out[0, 0]) - 10 * i
        assert version in (1, 2)
        np.testing.assert_array_equal(out, np.full((1, 4), 10 * i + version))
        versions.append(version)
    # one BLS call per target, carrying the joined batch
    assert sorted(BlsRequest.calls) == sorted(("m", v, versions.count(v)) for v in set(versions))


def test_router_sends_a_batch_without_sticky_key_in_one_bls_call_to_one_target(
    router: ModuleType, tmp_path: Path
) -> None:
    model = make_router(router, tmp_path, [("m", 1, 50), ("m", 2, 50)])
    chosen = []
    for _ in range(200):
        BlsRequest.calls = []
        responses = model.execute(
            [ClientRequest(np.full((1, 4), 10 * i, np.float32)) for i in range(8)]
        )
        assert len(BlsRequest.calls) == 1 and BlsRequest.calls[0][2] == 8
        version = BlsRequest.calls[0][1]
        for i, response in enumerate(responses):
            np.testing.assert_array_equal(outputs_of(response), np.full((1, 4), 10 * i + version))
        chosen.append(version)
    # each batch (and so each request) goes to a target with the odds of its weight
    assert 70 <= chosen.count(2) <= 130


def test_router_passes_parameters_on_and_joins_only_equal_ones(
    router: ModuleType, tmp_path: Path
) -> None:
    model = make_router(router, tmp_path, [("m", 1, 100)], parameter="user")
    x = np.ones((1, 2), np.float32)
    model.execute([ClientRequest(x, json.dumps({"user": u})) for u in ("a", "b")])
    assert [p for p in BlsRequest.parameters] == [{"user": "a"}, {"user": "b"}]
    BlsRequest.calls, BlsRequest.parameters = [], []
    model.execute([ClientRequest(x, json.dumps({"user": "a"})) for _ in range(3)])
    assert BlsRequest.calls == [("m", 1, 3)]
    assert BlsRequest.parameters == [{"user": "a"}]


def test_router_returns_a_target_error_as_an_error_without_fallback(
    router: ModuleType, tmp_path: Path
) -> None:
    model = make_router(router, tmp_path, [("broken", 1, 100), ("m", 2, 0)])
    responses = model.execute([ClientRequest(np.ones((1, 2), np.float32)) for _ in range(3)])
    for response in responses:
        assert response.has_error()
        assert "broken:1" in response.error().message()
        assert "broken on purpose" in response.error().message()
    # the joined call failed, then each request was tried alone: never another target
    assert {c[0] for c in BlsRequest.calls} == {"broken"}
    assert len(BlsRequest.calls) == 4


def test_router_keeps_unjoinable_requests_apart(router: ModuleType, tmp_path: Path) -> None:
    model = make_router(router, tmp_path, [("m", 1, 100)])
    a = np.ones((1, 2), np.float32)
    b = np.ones((1, 3), np.float32)
    ra, rb = model.execute([ClientRequest(a), ClientRequest(b)])
    np.testing.assert_array_equal(outputs_of(ra), a + 1)
    np.testing.assert_array_equal(outputs_of(rb), b + 1)
    assert BlsRequest.calls == [("m", 1, 1), ("m", 1, 1)]


def test_router_picks_up_a_new_routes_file_without_a_reload(
    router: ModuleType, tmp_path: Path
) -> None:
    model = make_router(router, tmp_path, [("m", 1, 100), ("m", 2, 0)])
    x = np.zeros((1, 1), np.float32)
    assert outputs_of(model.execute([ClientRequest(x)])[0])[0, 0] == 1
    path = tmp_path / ".tritonctl" / "endpoints" / "ep.json"
    tmp = path.with_name("tmp.json")
    tmp.write_text(json.dumps(routes([("m", 1, 0), ("m", 2, 100)])))
    tmp.replace(path)
    model._next_check = 0.0  # the router looks at most every CHECK_INTERVAL_S
    assert outputs_of(model.execute([ClientRequest(x)])[0])[0, 0] == 2


def test_router_keeps_each_live_sequence_on_the_target_that_saw_its_start(
    router: ModuleType, tmp_path: Path
) -> None:
    model = make_router(router, tmp_path, [("m", 1, 100), ("m", 2, 0)], stateful=True)
    x = np.zeros((1, 1), np.float32)
    start, end = 1, 2

    def answer(cid: int, flags: int = 0) -> float:
        [response] = model.execute([ClientRequest(x, correlation_id=cid, flags=flags)])
        return float(outputs_of(response)[0, 0])

    assert answer(5, start) == 1
    path = tmp_path / ".tritonctl" / "endpoints" / "ep.json"
    path.write_text(json.dumps(routes([("m", 1, 0), ("m", 2, 100)])))
    model._next_check = 0.0
    assert answer(6, start) == 2  # a new sequence follows the weights
    assert answer(5) == 1  # a live one stays where it started
    assert answer(5, end) == 1
    assert answer(5, start) == 2  # started again: placed anew
    # one that started before the router was in the path: on the first target listed
    assert answer(9) == 1
    assert BlsRequest.flags == [start, start, end, start]  # passed on to the target
    # a batch of requests of live sequences is routed request by request
    assert answer(7, start) == 2
    path.write_text(json.dumps(routes([("m", 1, 100), ("m", 2, 0)]) | {"generation": 2}))
    model._next_check = 0.0
    batch = [ClientRequest(x, correlation_id=c, flags=f) for c, f in ((7, 0), (8, start))]
    assert [float(outputs_of(r)[0, 0]) for r in model.execute(batch)] == [2, 1]


class SequenceBls(BlsRequest):
    """A BLS call to targets with sequence batchers: each version knows the sequences
    in ``live`` and refuses a later request of any other at once, as Triton does."""

    live: ClassVar[dict[int, set[int]]] = {}

    def __init__(self, *args: Any, correlation_id: int = 0, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.cid, self.request_flags = correlation_id, 0

    def set_flags(self, flags: int) -> None:
        super().set_flags(flags)
        self.request_flags = flags

    def exec(self) -> fake_pb.InferenceResponse:
        known = SequenceBls.live.setdefault(self.version, set())
        if self.request_flags & 1:
            known.add(self.cid)
        elif self.cid not in known:
            BlsRequest.calls.append((self.model, self.version, 0))
            return fake_pb.InferenceResponse(
                error=fake_pb.TritonError(
                    f"inference request for sequence {self.cid} to model '{self.model}' "
                    "must specify the START flag on the first request of the sequence"
                )
            )
        return super().exec()


def test_router_finds_the_target_of_a_sequence_it_did_not_see_start(
    router: ModuleType, tmp_path: Path
) -> None:
    model = make_router(router, tmp_path, [("m", 1, 50), ("m", 2, 50)], stateful=True)
    router.pb_utils.InferenceRequest = SequenceBls
    # begun on m:2 before this router was in the path (or before it was reloaded)
    SequenceBls.live = {1: set(), 2: {41}}
    x = np.zeros((1, 1), np.float32)

    def answer(cid: int, flags: int = 0) -> Any:
        [response] = model.execute([ClientRequest(x, correlation_id=cid, flags=flags)])
        return response

    assert float(outputs_of(answer(41))[0, 0]) == 2  # m:1 refused it, m:2 has it
    assert float(outputs_of(answer(41))[0, 0]) == 2
    assert float(outputs_of(answer(41, flags=2))[0, 0]) == 2
    assert [(v, batch) for _, v, batch in BlsRequest.calls] == [(1, 0), (2, 1), (2, 1), (2, 1)]
    # a sequence no target knows: the last target's refusal comes back
    BlsRequest.calls.clear()
    error = answer(77).error()
    assert error is not None and "endpoint target m:2" in error.message()
    assert "must specify the START flag" in error.message()
    assert [v for _, v, _ in BlsRequest.calls] == [1, 2]
    # a sequence this router placed is not looked for elsewhere: its target's error stands
    assert float(outputs_of(answer(50, flags=1))[0, 0]) in (1, 2)
    placed = 1 if 50 in SequenceBls.live[1] else 2
    SequenceBls.live[placed].discard(50)  # dropped by its target (idle too long)
    BlsRequest.calls.clear()
    assert answer(50).error() is not None
    assert [v for _, v, _ in BlsRequest.calls] == [placed]
    assert model._unseen == set()


def test_a_stateful_target_gets_one_python_router_instance_and_its_idle_time() -> None:
    target = model_config("m", instances=3)
    target.sequence_batching.max_sequence_idle_microseconds = 5_000_000
    python = router_config("ep", target, target_instances=3)
    assert python.instance_group[0].count == 1
    params = {k: v.string_value for k, v in python.parameters.items()}
    assert params["tritonctl.sequences"] == "true"
    assert params["tritonctl.sequence_idle_us"] == "10000000"
    native = router_config("ep", target, native_backend="tritonctl_router_x")
    assert native.instance_group[0].count == 2
    assert native.parameters["tritonctl.sequences"].string_value == "true"
    assert "tritonctl.sequences" not in router_config("ep", model_config("m")).parameters


def test_io_check_refuses_mixing_stateful_and_stateless_models() -> None:
    stateful = model_config("b")
    stateful.sequence_batching.SetInParent()
    with pytest.raises(EndpointError, match=r"differ in state: b:2 is stateful"):
        check_same_io([("a:1", model_config("a")), ("b:2", stateful)])
    # an endpoint of a stateful model says so itself: it has no sequence batcher
    endpoint = endpoint_config("ep", stateful, "b", 2)
    assert not endpoint.HasField("sequence_batching")
    assert check_same_io([("endpoint", endpoint), ("b:2", stateful)]).stateful


def test_router_keeps_its_routes_when_the_file_turns_bad(
    router: ModuleType, tmp_path: Path
) -> None:
    model = make_router(router, tmp_path, [("m", 1, 100)])
    path = tmp_path / ".tritonctl" / "endpoints" / "ep.json"
    path.write_text("{not json")
    model._next_check = 0.0
    x = np.zeros((1, 1), np.float32)
    assert outputs_of(model.execute([ClientRequest(x)])[0])[0, 0] == 1


def test_router_routes_by_correlation_id_when_asked(router: ModuleType, tmp_path: Path) -> None:
    model = make_router(
        router, tmp_path, [("m", 1, 50), ("m", 2, 50)], use_correlation_id=True, max_batch_size=0
    )
    x = np.zeros((1,), np.float32)
    for cid in (11, 12, 13, 14):
        answers = {
            float(outputs_of(model.execute([ClientRequest(x, correlation_id=cid)])[0])[0])
            for _ in range(10)
        }
        assert len(answers) == 1


# --------------------------------------------------------------------------- Endpoints


class FakeTriton:
    """Loads what the repository says: the version policy on disk, ensembles' steps."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.loaded: dict[str, set[int]] = {}
        # the config each loaded model was loaded with
        self.configs: dict[str, ModelConfig] = {}
        self.calls: list[tuple[str, str]] = []
        # requests each loaded version answered (model, version) -> count; a callable
        # count is asked at every read
        self.served: dict[tuple[str, int], int | Callable[[], int]] = {}

    def repository_index(self) -> list[IndexEntry]:
        return [
            IndexEntry(name, v, "READY", "") for name, vs in self.loaded.items() for v in sorted(vs)
        ]

    def load_model(self, name: str, config: str | None = None) -> None:
        self.calls.append(("load", name))
        cfg = read_config(self.repo / name / "config.pbtxt")
        on_disk = sorted(int(p.name) for p in (self.repo / name).iterdir() if p.name.isdigit())
        policy = policy_versions(cfg)
        versions = policy if policy is not None else set(on_disk[-1:])
        for step in cfg.ensemble_scheduling.step:
            served = self.loaded.get(step.model_name, set())
            if not served or (step.model_version > 0 and step.model_version not in served):
                from manager.errors import LoadError

                raise LoadError(f"ensemble {name!r} needs {step.model_name}:{step.model_version}")
        self.loaded[name] = set(versions)
        self.configs[name] = cfg

    def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        self.calls.append(("unload", name))
        self.loaded.pop(name, None)
        self.configs.pop(name, None)

    def model_config(self, name: str) -> dict[str, Any]:
        """As Triton answers it: JSON with the proto's field names (int64 as strings)."""
        if name not in self.loaded:
            raise ModelNotFoundError(f"Request for unknown model: '{name}' is not found")
        return json_format.MessageToDict(self.configs[name], preserving_proto_field_name=True)

    def statistics(self, name: str | None = None) -> list[ModelStats]:
        rows = []
        for model, versions in self.loaded.items():
            for v in sorted(versions):
                count = self.served.get((model, v), 0)
                n = count() if callable(count) else count
                if name in (None, model):
                    rows.append(ModelStats(model, v, 0, n, n, n, 0, 0, 0, 0, 0, 0, 0))
        return rows

    def fail_loads(self, when: Callable[[str], bool], message: str) -> None:
        """From now on a load of a model ``when`` accepts fails with ``message``."""
        original = self.load_model

        def failing(name: str, config: str | None = None) -> None:
            if when(name):
                raise LoadError(message)
            original(name, config)

        self.load_model = failing  # type: ignore[method-assign]


def publish_model(repo: Path, name: str, versions: tuple[int, ...] = (1, 2), **kw: Any) -> None:
    folder = repo / name
    folder.mkdir(parents=True)
    write_config(folder / "config.pbtxt", model_config(name, **kw))
    for v in versions:
        (folder / str(v)).mkdir()
        (folder / str(v) / "model.py").write_text("# a model\n")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Endpoints, FakeTriton, Path]:
    repo = tmp_path / "repo"
    repo.mkdir()
    publish_model(repo, "m")
    triton = FakeTriton(repo)
    endpoints = Endpoints(Repository(repo), triton, router=RouterOptions(backend="python"))
    endpoints.clock, endpoints.sleep = FakeClock().pair()
    return endpoints, triton, repo


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def pair(self) -> tuple[Callable[[], float], Callable[[float], None]]:
        def sleep(seconds: float) -> None:
            self.now += seconds

        return (lambda: self.now), sleep


def test_switch_creates_a_pinned_endpoint_and_loads_its_target(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, repo = setup
    state = endpoints.switch("ep", "m")
    assert state.mode == "pinned"
    assert state.targets == [Target("m", 2, 100.0)]  # newest published version
    assert triton.loaded["m"] == {2}
    assert triton.loaded["ep"] == {1}
    assert json.loads((repo / "ep" / "1" / "tritonctl.json").read_text())["kind"] == ENDPOINT_KIND
    assert is_endpoint_folder(Repository(repo), "ep")
    [step] = read_config(repo / "ep" / "config.pbtxt").ensemble_scheduling.step
    assert (step.model_name, step.model_version) == ("m", 2)
    assert endpoints.get("ep") == state
    assert endpoints.target_versions("ep") == {("m", 2)}


def test_switching_versions_keeps_the_old_one_served_in_the_version_policy(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, repo = setup
    endpoints.switch("ep", "m", 1)
    endpoints.switch("ep", "m", 2)
    assert triton.loaded["m"] == {1, 2}
    assert policy_versions(read_config(repo / "m" / "config.pbtxt")) == {1, 2}
    assert endpoints.get("ep").generation == 2


def test_split_puts_the_router_in_the_path(setup: tuple[Endpoints, FakeTriton, Path]) -> None:
    endpoints, triton, repo = setup
    endpoints.switch("ep", "m", 1)
    state = endpoints.split("ep", [Target("m", 1, 90), Target("m", 2, 10)], sticky_parameter="u")
    assert state.mode == "routed" and state.sticky_parameter == "u"
    assert triton.loaded["m"] == {1, 2}
    assert ("load", "ep") in triton.calls[-1:]  # the ensemble was replaced by the router
    assert (repo / "ep" / "1" / "model.py").read_text() == ROUTER_PY.read_text()
    config = read_config(repo / "ep" / "config.pbtxt")
    assert config.backend == "python" and not config.HasField("ensemble_scheduling")
    assert is_endpoint_folder(Repository(repo), "ep")
    routes_file = json.loads((repo / ".tritonctl" / "endpoints" / "ep.json").read_text())
    assert routes_file["targets"][1] == {"model": "m", "version": 2, "weight": 10.0}


def test_split_of_a_routed_endpoint_only_rewrites_the_routes(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, _ = setup
    endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    triton.calls.clear()
    state = endpoints.split("ep", [Target("m", 1, 20), Target("m", 2, 80)])
    assert triton.calls == []
    assert state.targets[1].weight == 80.0


def test_set_weights_changes_only_the_routes_file(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, _ = setup
    endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)], use_correlation_id=True)
    triton.calls.clear()
    state = endpoints.set_weights("ep", [Target("m", 1, 0), Target("m", 2, 100)])
    assert triton.calls == []
    assert state.use_correlation_id
    assert endpoints.get("ep").shares() == {("m", 1): 0.0, ("m", 2): 1.0}


def test_set_weights_refuses_a_pinned_endpoint_and_other_targets(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, _, _ = setup
    endpoints.switch("ep", "m", 1)
    with pytest.raises(EndpointError, match="pinned"):
        endpoints.set_weights("ep", [Target("m", 1, 100)])
    endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    with pytest.raises(EndpointError, match="same targets"):
        endpoints.set_weights("ep", [Target("m", 1, 100)])
    with pytest.raises(EndpointError, match="add up to 0"):
        endpoints.set_weights("ep", [Target("m", 1, 0), Target("m", 2, 0)])
    # each finite, their sum not: every share would read 0 and the traffic go one way
    huge = [Target("m", 1, 1e308), Target("m", 2, 1e308)]
    with pytest.raises(EndpointError, match="more than a number can hold"):
        endpoints.set_weights("ep", huge)
    with pytest.raises(EndpointError, match="more than a number can hold"):
        endpoints.split("ep", huge)
    assert endpoints.get("ep").shares() == {("m", 1): 0.5, ("m", 2): 0.5}


def test_switch_back_to_pinned_replaces_the_router_by_the_ensemble(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, repo = setup
    endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    # the Python router is written with its bytecode (its stub would write it on load)
    assert list((repo / "ep" / "1" / "__pycache__").glob("model.*.pyc"))
    endpoints.switch("ep", "m", 2)
    [step] = read_config(repo / "ep" / "config.pbtxt").ensemble_scheduling.step
    assert (step.model_name, step.model_version) == ("m", 2)
    assert sorted(p.name for p in (repo / "ep" / "1").iterdir()) == ["tritonctl.json"]
    assert triton.loaded["ep"] == {1}
    assert endpoints.get("ep").mode == "pinned"


def test_a_router_model_left_by_an_older_release_is_removed(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, repo = setup
    legacy = repo / "ep__router"
    legacy.mkdir()
    write_config(legacy / "config.pbtxt", router_config("ep__router", model_config("m")))
    (legacy / "1").mkdir()
    (legacy / "1" / "tritonctl.json").write_text('{"kind": "endpoint-router", "endpoint": "ep"}')
    triton.loaded["ep__router"] = {1}
    endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    assert ("unload", "ep__router") in triton.calls
    assert not legacy.exists()


def test_split_refuses_targets_with_different_inputs(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, _, repo = setup
    publish_model(repo, "other", inputs=(TensorSpec("INPUT0", "INT32", (-1,)),))
    with pytest.raises(EndpointError, match="'INPUT0'"):
        endpoints.split("ep", [Target("m", 1, 50), Target("other", 1, 50)])
    assert not (repo / "ep").exists()


def test_switch_or_split_to_targets_other_clients_cannot_call_is_refused_unless_forced(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, repo = setup
    publish_model(repo, "ints", inputs=(TensorSpec("INPUT0", "INT32", (-1,)),))
    publish_model(repo, "batched", max_batch_size=8)
    endpoints.switch("ep", "m", 1)
    before = endpoints.get("ep")
    for other, what in [("ints", "'INPUT0'"), ("batched", "max_batch_size")]:
        with pytest.raises(EndpointError, match=f"{what}.*clients of endpoint 'ep' would fail"):
            endpoints.switch("ep", other)
        with pytest.raises(EndpointError, match="clients of endpoint 'ep' would fail"):
            endpoints.split("ep", [Target(other, 1, 50), Target(other, 2, 50)])
        assert endpoints.get("ep") == before
        assert other not in triton.loaded  # refused before anything was loaded
    [step] = read_config(repo / "ep" / "config.pbtxt").ensemble_scheduling.step
    assert step.model_name == "m"
    # a new endpoint takes whatever its first target takes; forced, the endpoint changes
    assert endpoints.switch("ep_ints", "ints").targets[0].model == "ints"
    state = endpoints.switch("ep", "ints", 2, force=True)
    assert state.targets == [Target("ints", 2, 100.0)]
    [entry] = read_config(repo / "ep" / "config.pbtxt").input
    assert entry.data_type == read_config(repo / "ints" / "config.pbtxt").input[0].data_type
    assert entry.data_type != read_config(repo / "m" / "config.pbtxt").input[0].data_type


def test_a_target_version_that_fails_to_load_is_not_left_in_the_version_policy(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, repo = setup
    endpoints.switch("ep", "m", 1)
    config_before = (repo / "m" / "config.pbtxt").read_bytes()

    def serves_version_2(name: str) -> bool:
        policy = policy_versions(read_config(repo / name / "config.pbtxt"))
        return name == "m" and policy is not None and 2 in policy

    triton.fail_loads(serves_version_2, "version 2 failed to load")
    for attempt in (
        lambda: endpoints.switch("ep", "m", 2),
        lambda: endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)]),
    ):
        with pytest.raises(LoadError, match="version 2 failed to load"):
            attempt()
        assert (repo / "m" / "config.pbtxt").read_bytes() == config_before
        assert triton.loaded["m"] == {1}
        assert endpoints.get("ep").targets == [Target("m", 1, 100.0)]


def test_a_first_endpoint_whose_target_fails_to_load_leaves_the_model_as_it_was(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    from manager.validate import validate_repository
    from manager.versionpolicy import kept_models

    endpoints, triton, repo = setup
    config_before = (repo / "m" / "config.pbtxt").read_bytes()
    triton.fail_loads(lambda name: name == "m", "no backend for it here")
    for attempt in (
        lambda: endpoints.switch("ep", "m", 1),
        lambda: endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)]),
    ):
        with pytest.raises(LoadError, match="no backend for it here"):
            attempt()
        assert (repo / "m" / "config.pbtxt").read_bytes() == config_before
        # no endpoint manages the model's version policy: none is kept aside for it
        assert "m" not in kept_models(repo)
        problems = validate_repository(Repository(repo))
        assert not [p for p in problems if "half-way" in p.message], problems


def test_a_version_loaded_for_a_failed_switch_is_retired_again(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, repo = setup
    endpoints.switch("ep", "m", 1)
    triton.fail_loads(lambda name: name == "ep", "the endpoint refused on purpose")
    with pytest.raises(EndpointError, match="refused on purpose"):
        endpoints.switch("ep", "m", 2)
    assert triton.loaded["m"] == {1}
    assert policy_versions(read_config(repo / "m" / "config.pbtxt")) == {1}
    with pytest.raises(EndpointError, match="refused on purpose"):
        endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    assert triton.loaded["m"] == {1}
    assert endpoints.get("ep").targets == [Target("m", 1, 100.0)]


def test_endpoint_name_of_an_existing_model_is_refused(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, _, repo = setup
    publish_model(repo, "n")
    with pytest.raises(EndpointError, match="is a model"):
        endpoints.switch("n", "m")
    with pytest.raises(EndpointError, match=ROUTER_SUFFIX):
        endpoints.switch("x" + ROUTER_SUFFIX, "m")
    endpoints.switch("ep", "m")
    with pytest.raises(EndpointError, match="is an endpoint"):
        endpoints.switch("ep2", "ep")


def test_unknown_targets_are_refused(setup: tuple[Endpoints, FakeTriton, Path]) -> None:
    endpoints, _, _ = setup
    with pytest.raises(ModelNotFoundError):
        endpoints.switch("ep", "nope")
    with pytest.raises(ModelNotFoundError):
        endpoints.switch("ep", "m", 7)
    with pytest.raises(EndpointError, match="twice"):
        endpoints.split("ep", [Target("m", 1, 50), Target("m", 1, 50)])
    with pytest.raises(EndpointError):
        endpoints.get("ep")


def test_a_failed_endpoint_load_restores_the_previous_routes(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, repo = setup
    endpoints.switch("ep", "m", 1)
    before = endpoints.get("ep")
    triton.fail_loads(lambda name: name == "ep", "refused on purpose")
    with pytest.raises(EndpointError, match="refused on purpose"):
        endpoints.switch("ep", "m", 2)
    assert endpoints.get("ep") == before
    [step] = read_config(repo / "ep" / "config.pbtxt").ensemble_scheduling.step
    assert step.model_version == 1


def test_delete_unloads_and_removes_the_endpoint_but_not_its_targets(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, repo = setup
    endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    endpoints.delete("ep")
    assert not (repo / "ep").exists()
    assert set(triton.loaded) == {"m"}
    assert endpoints.list() == []
    with pytest.raises(EndpointError):
        endpoints.delete("ep")


def test_retire_refuses_a_targeted_version_and_reloads_without_the_other(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, repo = setup
    endpoints.switch("ep", "m", 1)
    endpoints.switch("ep", "m", 2)
    with pytest.raises(EndpointError, match="ep"):
        endpoints.retire("m", 2)
    endpoints.retire("m", 1)
    assert triton.loaded["m"] == {2}
    assert policy_versions(read_config(repo / "m" / "config.pbtxt")) == {2}
    assert endpoints.all_target_versions() == {("m", 2)}


def test_retiring_several_versions_reloads_the_model_once(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    publish_model(repo, "m", (1, 2, 3))
    triton = FakeTriton(repo)
    endpoints = Endpoints(Repository(repo), triton, router=RouterOptions(backend="python"))
    endpoints.split("ep", [Target("m", 3, 100), Target("m", 1, 0)])
    endpoints.serve_versions("m", {2})
    endpoints.switch("ep", "m", 3)
    assert triton.loaded["m"] == {1, 2, 3}
    triton.calls.clear()
    with pytest.raises(EndpointError, match="m:3 is a target of endpoint"):
        endpoints.retire_versions("m", [1, 3])
    assert triton.calls == [] and triton.loaded["m"] == {1, 2, 3}
    assert endpoints.retire_versions("m", [1, 2, 3], keep_if_routed=True) == {1, 2}
    assert triton.calls == [("load", "m")]
    assert triton.loaded["m"] == {3}
    assert policy_versions(read_config(repo / "m" / "config.pbtxt")) == {3}


def test_an_endpoint_of_a_stateful_model_from_an_older_release_switches_without_force(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, _, repo = setup
    config = read_config(repo / "m" / "config.pbtxt")
    config.sequence_batching.SetInParent()
    write_config(repo / "m" / "config.pbtxt", config)
    endpoints.switch("ep", "m", 1)
    path = repo / "ep" / "config.pbtxt"
    old = read_config(path)
    del old.parameters["tritonctl.stateful"]  # not written by older releases
    write_config(path, old)
    assert endpoints.switch("ep", "m", 2).targets == [Target("m", 2, 100.0)]
    assert read_config(path).parameters["tritonctl.stateful"].string_value == "true"


def stateful_setup(
    setup: tuple[Endpoints, FakeTriton, Path], served: Callable[[float], int]
) -> tuple[Endpoints, FakeTriton, FakeClock, list[tuple[str, EndpointState, float]]]:
    """``m`` made stateful (idle 2 s), ``ep`` pinned to m:1; m:1 answers ``served(now)``
    requests by then; every load is recorded with the endpoint's routes at that time."""
    endpoints, triton, repo = setup
    config = read_config(repo / "m" / "config.pbtxt")
    config.sequence_batching.max_sequence_idle_microseconds = 2_000_000
    write_config(repo / "m" / "config.pbtxt", config)
    clock = FakeClock()
    endpoints.clock, endpoints.sleep = clock.pair()
    endpoints.switch("ep", "m", 1)
    triton.served[("m", 1)] = lambda: served(clock.now)
    loads: list[tuple[str, EndpointState, float]] = []
    original = triton.load_model

    def load(name: str, config: str | None = None) -> None:
        original(name, config)
        loads.append((name, endpoints.get("ep"), clock.now))

    triton.load_model = load  # type: ignore[method-assign]
    return endpoints, triton, clock, loads


def recorded_writes(endpoints: Endpoints) -> list[EndpointState]:
    """Every routes state ``endpoints`` writes from now on, in order."""
    writes: list[EndpointState] = []
    original = endpoints._write

    def write(state: EndpointState) -> None:
        writes.append(state)
        original(state)

    endpoints._write = write  # type: ignore[method-assign]
    return writes


def test_a_switch_of_a_stateful_endpoint_lets_the_sequences_under_way_end_first(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    # m:1's clients go on with their sequences until t=3 s
    endpoints, _triton, _clock, loads = stateful_setup(setup, lambda now: int(min(now, 3.0) * 10))
    told: list[str] = []
    endpoints.on_drain = told.append
    state = endpoints.switch("ep", "m", 2)
    assert told == [
        "endpoint ep: new sequences go to m:2; waiting for those under way on m:1 to end "
        "(until they have been quiet for 2 s, at most 10 s)"
    ]
    assert state.mode == PINNED and state.targets == [Target("m", 2, 100.0)]
    ep_loads = [(s, t) for name, s, t in loads if name == "ep"]
    assert len(ep_loads) == 2
    (routed, routed_at), (pinned, pinned_at) = ep_loads
    # first a router: new sequences to m:2, the old target first (where the sequences
    # begun before the router go)
    assert routed.mode == ROUTED and routed_at == 0.0
    assert routed.targets == [Target("m", 1, 0.0), Target("m", 2, 100.0)]
    # pinned only once m:1 had been quiet for its idle time
    assert pinned.mode == PINNED
    assert 5.0 <= pinned_at < 5.6


def test_a_stateful_switch_waits_for_the_sequences_without_holding_the_budget(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    held: list[bool] = [False]
    admitted: list[dict[str, set[int]]] = []

    @contextmanager
    def admission(wanted: Mapping[str, Iterable[int]]) -> Iterator[None]:
        admitted.append({m: set(v) for m, v in wanted.items()})
        held[0] = True
        try:
            yield
        finally:
            held[0] = False

    def served(now: float) -> int:
        assert not held[0], "the drain waited while holding the memory budget's lock"
        return int(min(now, 1.0) * 10)

    endpoints, _, clock, _ = stateful_setup(setup, served)
    endpoints.admission = admission
    assert endpoints.switch("ep", "m", 2).targets == [Target("m", 2, 100.0)]
    assert clock.now >= 3.0
    assert admitted == [{"m": {2}}, {"m": {2}}]  # the router's load, then the pin


def test_a_stateful_switch_does_not_wait_forever_for_a_sequence_that_never_ends(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, _, clock, _loads = stateful_setup(setup, lambda now: int(now * 10))
    assert endpoints.switch("ep", "m", 2).targets == [Target("m", 2, 100.0)]
    assert 10.0 <= clock.now < 10.6  # five idle times


def test_a_forced_switch_of_a_stateful_endpoint_to_other_inputs_does_not_drain(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, clock, loads = stateful_setup(setup, lambda now: int(now * 10))
    publish_model(triton.repo, "n", (1,), max_batch_size=4)
    config = read_config(triton.repo / "n" / "config.pbtxt")
    config.sequence_batching.max_sequence_idle_microseconds = 2_000_000
    write_config(triton.repo / "n" / "config.pbtxt", config)
    assert endpoints.switch("ep", "n", 1, force=True).targets == [Target("n", 1, 100.0)]
    assert [(name, s.mode) for name, s, _ in loads if name == "ep"] == [("ep", PINNED)]
    assert clock.now == 0.0


def test_a_stateful_switch_does_not_load_a_target_that_is_not_served_to_drain_it(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, clock, loads = stateful_setup(setup, lambda now: int(now * 10))
    triton.loaded.clear()  # the server restarted: nothing served, no sequence anywhere
    endpoints.switch("ep", "m", 2)
    assert [(name, s.mode) for name, s, _ in loads] == [("m", PINNED), ("ep", PINNED)]
    assert 2 in triton.loaded["m"] and clock.now == 0.0


def test_a_switch_without_drain_pins_a_stateful_endpoint_at_once(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, _, clock, loads = stateful_setup(setup, lambda now: int(now * 10))
    endpoints.switch("ep", "m", 2, drain=False)
    assert [(name, s.mode) for name, s, _ in loads if name == "ep"] == [("ep", PINNED)]
    assert clock.now == 0.0


def test_a_switch_of_a_stateless_endpoint_does_not_drain(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, _ = setup
    endpoints.switch("ep", "m", 1)
    triton.calls.clear()
    endpoints.switch("ep", "m", 2)
    assert [c for c in triton.calls if c[1] == "ep"] == [("load", "ep")]
    assert endpoints.get("ep").mode == PINNED


def test_a_stateful_switch_of_a_routed_endpoint_keeps_its_router_and_order(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, _triton, clock, loads = stateful_setup(setup, lambda now: int(min(now, 1.0) * 10))
    endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    loads.clear()
    writes = recorded_writes(endpoints)
    endpoints.switch("ep", "m", 2)
    # the router already in the path takes the new weights (no reload), then the pin
    assert writes[0].targets == [Target("m", 1, 0.0), Target("m", 2, 100.0)]
    assert [(name, s.mode) for name, s, _ in loads if name == "ep"] == [("ep", PINNED)]
    assert clock.now >= 2.0


def test_a_split_of_a_pinned_stateful_endpoint_lists_the_pinned_version_first(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, _, clock, _ = stateful_setup(setup, lambda now: int(now * 10))
    state = endpoints.split("ep", [Target("m", 2, 50), Target("m", 1, 50)])
    # sequences begun while pinned go on to m:1; none leaves, so nothing to wait for
    assert state.targets == [Target("m", 1, 50.0), Target("m", 2, 50.0)]
    assert clock.now == 0.0


def test_a_split_of_a_stateful_endpoint_drains_the_targets_that_leave(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, clock, loads = stateful_setup(setup, lambda now: int(min(now, 1.0) * 10))
    (triton.repo / "m" / "3").mkdir()
    (triton.repo / "m" / "3" / "model.py").write_text("# a model\n")
    writes = recorded_writes(endpoints)
    state = endpoints.split("ep", [Target("m", 2, 50), Target("m", 3, 50)])
    assert state.targets == [Target("m", 2, 50.0), Target("m", 3, 50.0)]
    # m:1 first at weight 0 while its sequences end, then the split as asked
    assert [w.targets for w in writes] == [
        [Target("m", 1, 0.0), Target("m", 2, 50.0), Target("m", 3, 50.0)],
        [Target("m", 2, 50.0), Target("m", 3, 50.0)],
    ]
    assert clock.now >= 3.0  # quiet from t=1 s, for its idle time of 2 s
    # from routed to routed: the same drain, without reloading the router
    clock.now = 0.0
    writes.clear()
    loads.clear()
    endpoints.split("ep", [Target("m", 1, 100)])
    assert [w.targets for w in writes] == [
        [Target("m", 2, 0.0), Target("m", 3, 0.0), Target("m", 1, 100.0)],
        [Target("m", 1, 100.0)],
    ]
    assert [name for name, _, _ in loads if name == "ep"] == []
    assert clock.now >= 2.0


def test_a_split_without_drain_changes_a_stateful_endpoint_at_once(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, _, clock, _ = stateful_setup(setup, lambda now: int(now * 10))
    state = endpoints.split("ep", [Target("m", 2, 50), Target("m", 1, 50)], drain=False)
    assert state.targets == [Target("m", 2, 50.0), Target("m", 1, 50.0)]
    assert clock.now == 0.0


def test_a_split_of_a_stateless_endpoint_keeps_the_order_given(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, _, _ = setup
    endpoints.switch("ep", "m", 1)
    state = endpoints.split("ep", [Target("m", 2, 50), Target("m", 1, 50)])
    assert state.targets == [Target("m", 2, 50.0), Target("m", 1, 50.0)]


def test_list_returns_every_endpoint_sorted(setup: tuple[Endpoints, FakeTriton, Path]) -> None:
    endpoints, _, _ = setup
    endpoints.switch("b", "m", 1)
    endpoints.switch("a", "m", 2)
    assert [s.name for s in endpoints.list()] == ["a", "b"]
    assert endpoints.all_target_versions() == {("m", 1), ("m", 2)}


def test_ensure_serves_every_endpoint_again_after_a_restart(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, _ = setup
    endpoints.switch("pinned", "m", 1)
    endpoints.split("routed", [Target("m", 1, 30), Target("m", 2, 70)], sticky_parameter="u")
    triton.loaded.clear()  # the server restarted with nothing loaded
    for state in endpoints.list():
        endpoints.ensure(state.name)
    assert set(triton.loaded) == {"m", "pinned", "routed"}
    assert triton.loaded["m"] == {1, 2}
    routed = endpoints.get("routed")
    assert routed.sticky_parameter == "u"
    assert [t.weight for t in routed.targets] == [30.0, 70.0]


# --------------------------------------------------------------------------- native router


def test_native_router_config_hands_requests_on_from_one_instance() -> None:
    target = model_config("m", max_batch_size=8, instances=3)
    config = round_trip(
        router_config("ep", target, target_instances=3, native_backend="tritonctl_router_ab12")
    )
    assert config.backend == "tritonctl_router_ab12"
    assert config.instance_group[0].count == 2
    assert not config.HasField("dynamic_batching")
    assert not config.input[0].allow_ragged_batch
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["tritonctl.routes"] == "../.tritonctl/endpoints/ep.routes"
    assert params["tritonctl.run_length"] == "64"
    assert params["tritonctl.run_window_us"] == "2000"
    assert params["tritonctl.run_idle_window_us"] == "100000"
    assert "tritonctl.merge_batches" not in params
    fixed = RouterOptions(instance_count=3, run_length=1, dynamic_batching=True)
    config = router_config("ep", target, fixed, native_backend="tritonctl_router_ab12")
    assert config.instance_group[0].count == 3
    assert config.HasField("dynamic_batching")
    assert config.parameters["tritonctl.run_length"].string_value == "1"


def test_unknown_router_backend_is_refused() -> None:
    with pytest.raises(EndpointError, match="unknown router backend 'cpp'"):
        RouterOptions(backend="cpp")


def test_native_routes_text_lists_the_targets_in_order() -> None:
    state = EndpointState(
        name="ep",
        mode="routed",
        targets=[Target("m", 1, 90.0), Target("m", 2, 10.5)],
        sticky_parameter="user",
        generation=4,
    )
    assert native_routes_text(state).splitlines() == [
        "tritonctl-routes 1",
        "generation 4",
        "sticky_parameter user",
        "use_correlation_id 0",
        "target m 1 90.0",
        "target m 2 10.5",
    ]
    plain = EndpointState(
        name="ep", mode="routed", targets=[Target("m", 1)], use_correlation_id=True
    )
    assert "sticky_parameter -" in native_routes_text(plain)
    assert "use_correlation_id 1" in native_routes_text(plain)


@pytest.fixture
def fake_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A stand-in for the built router library (the fake Triton never opens it)."""
    lib = tmp_path / "prebuilt" / "libtriton_tritonctl_router.so"
    lib.parent.mkdir()
    lib.write_bytes(b"\x7fELF stand-in")
    monkeypatch.setenv("TRITONCTL_ROUTER_LIBRARY", str(lib))
    return lib.read_bytes()


def test_split_with_the_native_router_copies_its_library_and_writes_both_routes(
    setup: tuple[Endpoints, FakeTriton, Path], fake_library: bytes
) -> None:
    _, triton, repo = setup
    endpoints = Endpoints(Repository(repo), triton)  # backend "auto"
    endpoints.split("ep", [Target("m", 1, 70), Target("m", 2, 30)])
    folder = repo / "ep"
    backend = read_config(folder / "config.pbtxt").backend
    assert backend == "tritonctl_router_" + hashlib.sha256(fake_library).hexdigest()[:16]
    assert (folder / "1" / f"libtriton_{backend}.so").read_bytes() == fake_library
    assert not (folder / "1" / "model.py").exists()
    assert "ep" in triton.loaded
    text = (repo / ".tritonctl" / "endpoints" / "ep.routes").read_text()
    assert "target m 2 30.0" in text
    # a weight change rewrites both forms of the routes, nothing is reloaded
    triton.calls.clear()
    endpoints.set_weights("ep", [Target("m", 1, 0), Target("m", 2, 100)])
    assert triton.calls == []
    assert "target m 2 100.0" in (repo / ".tritonctl" / "endpoints" / "ep.routes").read_text()
    endpoints.delete("ep")
    assert not (repo / ".tritonctl" / "endpoints" / "ep.routes").exists()


def test_a_rebuilt_native_router_comes_under_a_new_backend_name_and_is_reloaded(
    setup: tuple[Endpoints, FakeTriton, Path], fake_library: bytes
) -> None:
    # Triton keeps a backend loaded by its library path until the server exits: a new
    # build copied over the old file would never run, so each build gets its own name.
    _, triton, repo = setup
    endpoints = Endpoints(Repository(repo), triton)
    endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    first = read_config(repo / "ep" / "config.pbtxt").backend
    rebuilt = Path(os.environ["TRITONCTL_ROUTER_LIBRARY"])
    rebuilt.write_bytes(fake_library + b" rebuilt")
    triton.calls.clear()
    endpoints.split("ep", [Target("m", 1, 40), Target("m", 2, 60)])
    second = read_config(repo / "ep" / "config.pbtxt").backend
    assert second != first and second.startswith("tritonctl_router_")
    assert ("load", "ep") in triton.calls
    assert [p.name for p in (repo / "ep" / "1").glob("libtriton_*")] == [f"libtriton_{second}.so"]
    # the same build again: only the routes change, nothing is reloaded
    triton.calls.clear()
    endpoints.split("ep", [Target("m", 1, 30), Target("m", 2, 70)])
    assert triton.calls == []


def test_changing_the_router_backend_replaces_the_router(
    setup: tuple[Endpoints, FakeTriton, Path], fake_library: bytes
) -> None:
    python_endpoints, triton, repo = setup
    native_endpoints = Endpoints(Repository(repo), triton, router=RouterOptions(backend="native"))
    native_endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    triton.calls.clear()
    python_endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    assert ("load", "ep") in triton.calls
    vdir = repo / "ep" / "1"
    assert (vdir / "model.py").is_file()
    assert not list(vdir.glob("libtriton_tritonctl_router*"))
    assert read_config(repo / "ep" / "config.pbtxt").backend == "python"


def test_auto_falls_back_to_the_python_router_without_a_compiler(
    setup: tuple[Endpoints, FakeTriton, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, triton, repo = setup
    monkeypatch.delenv("TRITONCTL_ROUTER_LIBRARY", raising=False)
    monkeypatch.setenv("TRITONCTL_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    Endpoints(Repository(repo), triton).split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    assert (repo / "ep" / "1" / "model.py").is_file()
    native = Endpoints(Repository(repo), triton, router=RouterOptions(backend="native"))
    with pytest.raises(EndpointError, match="no C\\+\\+ compiler"):
        native.split("ep2", [Target("m", 1, 50), Target("m", 2, 50)])
    assert not (repo / "ep2").exists()


class NoNativeTriton(FakeTriton):
    """A server that cannot load the native router (say, built for another platform)."""

    def load_model(self, name: str, config: str | None = None) -> None:
        cfg = read_config(self.repo / name / "config.pbtxt")
        if cfg.backend.startswith("tritonctl_router"):
            self.calls.append(("refused", name))
            from manager.errors import LoadError

            raise LoadError(f"failed to load '{name}': wrong ELF class")
        super().load_model(name, config)


def test_auto_falls_back_to_the_python_router_when_the_server_refuses_the_native_one(
    tmp_path: Path, fake_library: bytes
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    publish_model(repo, "m")
    triton = NoNativeTriton(repo)
    endpoints = Endpoints(Repository(repo), triton)  # backend "auto"
    endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    assert ("refused", "ep") in triton.calls
    assert read_config(repo / "ep" / "config.pbtxt").backend == "python"
    assert (repo / "ep" / "1" / "model.py").is_file()
    assert not list((repo / "ep" / "1").glob("libtriton_tritonctl_router*"))
    assert "ep" in triton.loaded
    library = Path(os.environ["TRITONCTL_ROUTER_LIBRARY"])
    assert "wrong ELF class" in (endpoints.native_refusal(library) or "")
    # the refusal is remembered: later splits go straight to the Python router
    triton.calls.clear()
    endpoints.split("ep2", [Target("m", 1, 50), Target("m", 2, 50)])
    assert not [c for c in triton.calls if c[0] == "refused"]
    # a different library is tried again; an explicit native router fails loudly
    library.write_bytes(b"\x7fELF rebuilt")
    assert endpoints.native_refusal(library) is None
    native = Endpoints(Repository(repo), triton, router=RouterOptions(backend="native"))
    with pytest.raises(EndpointError, match="wrong ELF class"):
        native.split("ep3", [Target("m", 1, 50), Target("m", 2, 50)])
    assert not (repo / "ep3").exists()
    assert not (repo / ".tritonctl" / "endpoints" / "ep3.json").exists()
    # a routed endpoint whose router cannot be replaced keeps its router files as they were
    before = {p: p.read_bytes() for p in (repo / "ep").rglob("*") if p.is_file()}
    with pytest.raises(EndpointError, match="wrong ELF class"):
        native.split("ep", [Target("m", 1, 10), Target("m", 2, 90)])
    after = {p: p.read_bytes() for p in (repo / "ep").rglob("*") if p.is_file()}
    assert after == before
    assert endpoints.get("ep").targets[1].weight == 50.0


def test_only_the_rollout_driver_changes_an_endpoint_while_its_rollout_runs(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, repo = setup
    endpoints.switch("ep", "m", 1)
    driver = Endpoints(Repository(repo), triton, rollout_driver=True)
    driver.split("ep", [Target("m", 1, 95), Target("m", 2, 5)])
    store = RolloutStore(Repository(repo))
    rollout = RolloutState("ep", "m", 1, 2, RolloutPolicy(), status="running", stage_index=0)
    store.save(rollout)
    # the driver would undo any of these at its next stage, or re-create a deleted endpoint
    for change in (
        lambda: endpoints.switch("ep", "m", 1),
        lambda: endpoints.split("ep", [Target("m", 1, 0), Target("m", 2, 100)]),
        lambda: endpoints.set_weights("ep", [Target("m", 1, 0), Target("m", 2, 100)]),
        lambda: endpoints.delete("ep"),
    ):
        with pytest.raises(RolloutError, match=r"rollout to m:2 is running at 5 %.*promote\|abort"):
            change()
    assert endpoints.get("ep").shares() == {("m", 1): 0.95, ("m", 2): 0.05}
    # serving it again as recorded (after a restart) is no change
    assert endpoints.ensure("ep").shares() == {("m", 1): 0.95, ("m", 2): 0.05}
    driver.set_weights("ep", [Target("m", 1, 85), Target("m", 2, 15)])
    rollout.status = "promoted"
    store.save(rollout)
    assert endpoints.switch("ep", "m", 2).targets == [Target("m", 2, 100.0)]


def test_retire_leaves_a_version_other_endpoints_call_when_asked(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, _ = setup
    endpoints.switch("a", "m", 1)
    endpoints.switch("b", "m", 2)
    with pytest.raises(EndpointError, match="target of endpoint"):
        endpoints.retire("m", 1)
    assert endpoints.retire("m", 1, keep_if_routed=True) is False
    assert triton.loaded["m"] == {1, 2}
    endpoints.switch("a", "m", 2)
    assert endpoints.retire("m", 1, keep_if_routed=True) is True
    assert triton.loaded["m"] == {2}


def test_a_split_routes_by_one_sticky_key_not_two(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, _, _ = setup
    with pytest.raises(EndpointError, match="not both"):
        endpoints.split(
            "ep",
            [Target("m", 1, 50), Target("m", 2, 50)],
            sticky_parameter="user",
            use_correlation_id=True,
        )


@pytest.mark.parametrize(
    "sticky",
    [{"sticky_parameter": "bad name!"}, {"sticky_parameter": "u", "use_correlation_id": True}],
)
def test_a_split_refused_for_its_sticky_key_loads_nothing(
    setup: tuple[Endpoints, FakeTriton, Path], sticky: dict[str, Any]
) -> None:
    endpoints, triton, repo = setup
    endpoints.switch("ep", "m", 2)
    calls, config = list(triton.calls), (repo / "m" / "config.pbtxt").read_text()
    with pytest.raises(EndpointError, match="sticky parameter"):
        endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)], **sticky)
    assert triton.calls == calls and triton.loaded["m"] == {2}
    assert (repo / "m" / "config.pbtxt").read_text() == config


def test_versions_an_endpoint_loads_are_dated_for_eviction_and_forgotten_when_retired(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    from manager.loadtimes import LoadTimes

    endpoints, _, repo = setup
    endpoints.switch("ep", "m", 1)
    endpoints.switch("ep", "m", 2)
    dated = LoadTimes(repo).all()
    assert {key for key in dated if key[0] == "m"} == {("m", 1), ("m", 2)}
    endpoints.retire("m", 1)
    assert {key for key in LoadTimes(repo).all() if key[0] == "m"} == {("m", 2)}


def test_endpoints_keep_the_owners_version_policy_and_put_it_back_when_done(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    from manager.footprint import predicted_versions
    from manager.versionpolicy import owner_policy

    endpoints, triton, repo = setup
    path = repo / "m" / "config.pbtxt"
    config = read_config(path)
    config.version_policy.latest.num_versions = 2  # the owner serves the newest two
    write_config(path, config)
    (repo / "m" / "3").mkdir()
    (repo / "m" / "3" / "model.py").write_text("# a model\n")

    endpoints.switch("ep", "m", 1)
    assert policy_versions(read_config(path)) == {1}  # what Triton reads now
    assert owner_policy(repo, "m", read_config(path)).latest.num_versions == 2
    assert predicted_versions(repo, "m", None) == [2, 3]  # the owner's selection
    assert predicted_versions(repo, "m", None, as_written=True) == [1]
    endpoints.switch("ep", "m", 2)  # a second write keeps the first record
    assert owner_policy(repo, "m", read_config(path)).latest.num_versions == 2

    endpoints.delete("ep")
    endpoints.retire("m", 1)
    endpoints.retire("m", 2)
    # no endpoint needs m: config.pbtxt has the owner's policy again, the record is gone
    restored = read_config(path).version_policy
    assert restored.WhichOneof("policy_choice") == "latest"
    assert restored.latest.num_versions == 2
    kept = json.loads((repo / ".tritonctl" / "version_policies.json").read_text())
    assert kept == {"policies": {}}
    assert "m" not in triton.loaded


def test_a_model_no_endpoint_routes_to_any_more_gets_its_owners_policy_back(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    from manager.versionpolicy import has_owner_policy

    endpoints, _, repo = setup
    publish_model(repo, "n")
    path = repo / "m" / "config.pbtxt"
    config = read_config(path)
    config.version_policy.latest.num_versions = 2
    write_config(path, config)

    endpoints.switch("a", "m", 1)
    endpoints.switch("b", "m", 1)
    endpoints.delete("a")  # b still routes to m: its policy stays the endpoints'
    assert policy_versions(read_config(path)) == {1} and has_owner_policy(repo, "m")
    endpoints.switch("b", "n", 1)  # moved away from m: m's own policy is back
    assert read_config(path).version_policy.latest.num_versions == 2
    assert not has_owner_policy(repo, "m")
    # ... and the owner's later edits are what counts
    config = read_config(path)
    config.version_policy.latest.num_versions = 1
    write_config(path, config)
    from manager.footprint import predicted_versions

    assert predicted_versions(repo, "m", None) == [2]

    endpoints.delete("b")
    assert policy_versions(read_config(repo / "n" / "config.pbtxt")) is None  # n had none
    assert not has_owner_policy(repo, "n")


def _policy_left_half_way(endpoints: Endpoints, repo: Path) -> Path:
    """What a switch onto model n leaves when killed after it served n:2 (n's policy
    written, n's owner policy kept aside) but before its routes were written, while
    endpoint ep routes to m:1. Returns n's config path."""
    from manager.endpoints import with_versions
    from manager.versionpolicy import keep_owner_policy

    publish_model(repo, "n")
    endpoints.switch("ep", "m", 1)
    path = repo / "n" / "config.pbtxt"
    config = read_config(path)
    keep_owner_policy(repo, "n", config)
    write_config(path, with_versions(config, [2]))
    return path


def test_a_policy_left_by_a_change_that_died_half_way_is_put_back_by_the_next_change(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    """No endpoint routes to n, yet its config keeps a policy of an endpoint change: the
    next endpoint change gives n its own policy back."""
    from manager.versionpolicy import has_owner_policy

    endpoints, _, repo = setup
    path = _policy_left_half_way(endpoints, repo)
    endpoints.switch("ep", "m", 2)
    assert policy_versions(read_config(path)) is None and not has_owner_policy(repo, "n")
    assert policy_versions(read_config(repo / "m" / "config.pbtxt")) is not None  # routed


def test_validate_reports_a_policy_left_half_way_and_restore_puts_it_back(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    from manager.validate import validate_repository

    endpoints, _, repo = setup
    path = _policy_left_half_way(endpoints, repo)

    def warnings() -> list[tuple[str, str]]:
        return [
            (p.model, p.message)
            for p in validate_repository(Repository(repo), check_hashes=False)
            if p.severity == "warning" and "provenance" not in p.message  # fakes have none
        ]

    [(model, message)] = warnings()
    assert model == "n" and "no endpoint routes to the model" in message
    assert "endpoint restore" in message
    with Repository(repo).lock("n"):  # a change in progress: not reported meanwhile
        assert warnings() == []
    endpoints.restore_all()
    assert policy_versions(read_config(path)) is None and warnings() == []
    assert policy_versions(read_config(repo / "m" / "config.pbtxt")) == {1}  # still routed


def test_validate_reports_an_endpoint_routing_to_a_removed_version(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    import shutil

    from manager.validate import Problem, validate_repository

    endpoints, _, repo = setup

    def errors(name: str | None = None) -> list[Problem]:
        found = validate_repository(Repository(repo), name, check_hashes=False)
        return [p for p in found if p.severity == "error"]

    endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    assert errors() == []
    shutil.rmtree(repo / "m" / "2")  # by hand: prune refuses a version in use
    [problem] = errors("m")
    assert problem.model == "ep" and "routes to m:2, which" in problem.message
    assert errors("ep") == [problem]


def test_deleting_an_endpoint_forgets_its_last_rollout(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, _, repo = setup
    endpoints.switch("ep", "m", 1)
    store = RolloutStore(Repository(repo))
    store.save(RolloutState("ep", "m", 1, 2, RolloutPolicy(), status="promoted"))
    (store.root / "ep.log").write_text("driven\n")
    endpoints.delete("ep")
    assert store.load("ep") is None
    assert not (store.root / "ep.log").exists()


def _race(
    triton: FakeTriton, change: Callable[[], object], other: Callable[[], object]
) -> list[object]:
    """Run endpoint ``change`` in a thread until its first load of model n is done (n
    still LOADING in the index, its routes not written), then ``other`` in a second thread
    given half a second; then let the change finish. Returns what ``other`` returned or
    raised."""
    import threading

    held, go_on = threading.Event(), threading.Event()
    loading: set[str] = set()
    original, index = triton.load_model, triton.repository_index

    def load_model(name: str, config: str | None = None) -> None:
        if config is not None:  # an override: Triton serves its versions only
            triton.loaded[name] = set(json.loads(config)["version_policy"]["specific"]["versions"])
            return
        original(name, config)
        if name == "n" and not held.is_set():
            loading.add(name)
            held.set()
            go_on.wait(10)
            loading.discard(name)

    def repository_index() -> list[IndexEntry]:
        return [
            IndexEntry(e.name, e.version, "LOADING" if e.name in loading else e.state, "")
            for e in index()
        ]

    triton.load_model = load_model  # type: ignore[method-assign]
    triton.repository_index = repository_index  # type: ignore[method-assign]
    triton.url = "http://fake:8000"  # type: ignore[attr-defined]
    outcome: list[object] = []

    def run_other() -> None:
        try:
            outcome.append(other())
        except Exception as exc:  # kept for the test, not lost in the thread
            outcome.append(exc)

    first = threading.Thread(target=change)
    first.start()
    assert held.wait(10)
    second = threading.Thread(target=run_other)
    second.start()
    second.join(0.5)
    go_on.set()
    first.join(10)
    second.join(10)
    assert not first.is_alive() and not second.is_alive()
    return outcome


def test_a_load_of_one_version_during_a_split_does_not_take_down_what_the_split_loaded(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    """`load n --version 1` while a split onto n:1 and n:2 has loaded both but not yet
    written its routes: the load waits for the split (the model's lock), then keeps n:2."""
    from manager import serving

    endpoints, triton, repo = setup
    publish_model(repo, "n")
    endpoints.switch("ep", "m", 1)
    (loaded,) = _race(
        triton,
        lambda: endpoints.split("ep", [Target("n", 1, 50), Target("n", 2, 50)]),
        lambda: serving.load(triton, "n", version=1, repo=repo),
    )
    assert not isinstance(loaded, Exception), loaded
    assert endpoints.get("ep").mode == "routed"
    assert triton.loaded["n"] == {1, 2}


def test_an_unload_during_a_switch_onto_the_model_is_refused_not_raced(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    """`unload n` while a switch onto n has loaded it but not yet written its routes: the
    unload waits for the switch (the model's lock) and is then refused, naming the
    endpoint, instead of unloading what the switch is about to route to."""
    from manager import serving

    endpoints, triton, repo = setup
    publish_model(repo, "n")
    endpoints.switch("ep", "m", 1)
    (result,) = _race(
        triton,
        lambda: endpoints.switch("ep", "n", 1),
        lambda: serving.unload(triton, "n", repo=repo),
    )
    assert endpoints.get("ep").targets[0].model == "n" and triton.loaded.get("n") == {1}
    assert isinstance(result, UnloadError) and "ep" in str(result), result


def test_restore_all_stops_at_the_first_endpoint_when_no_server_answers(
    setup: tuple[Endpoints, FakeTriton, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """No server: one error that says so, not one failure (and log line) per endpoint."""
    from manager.errors import TritonUnreachableError

    endpoints, triton, _ = setup
    endpoints.switch("a", "m", 1)
    endpoints.switch("b", "m", 2)
    asked: list[str] = []

    def unreachable(*args: object, **kwargs: object) -> None:
        asked.append("index")
        raise TritonUnreachableError("no Triton server answers at http://localhost:1")

    triton.repository_index = unreachable  # type: ignore[assignment,method-assign]
    triton.load_model = unreachable  # type: ignore[assignment,method-assign]
    with caplog.at_level("INFO"), pytest.raises(TritonUnreachableError, match="no Triton"):
        endpoints.restore_all()
    assert len(asked) == 1
    assert [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")] == []


def test_restore_all_names_each_endpoint_it_could_not_restore_once(
    setup: tuple[Endpoints, FakeTriton, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """One endpoint fails to load: the error names it and those serving again; the
    failure is not also logged as an error (the CLI would print it twice)."""
    from manager.errors import EndpointError

    endpoints, triton, _ = setup
    endpoints.switch("a", "m", 1)
    endpoints.switch("b", "m", 2)
    triton.loaded.clear()
    triton.fail_loads(lambda name: name == "a", "a refuses to load")
    with caplog.at_level("INFO"), pytest.raises(EndpointError) as info:
        endpoints.restore_all()
    assert "a: " in str(info.value) and "a refuses to load" in str(info.value)
    assert "serving again: b" in str(info.value)
    errors = [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "WARNING")]
    assert not [m for m in errors if "not restored" in m]


class StreamResponses:
    """A BLS stream's response iterator: its responses, then the end."""

    made: list[Any] = []

    def __init__(self, responses: list[fake_pb.InferenceResponse]) -> None:
        self._responses = responses
        self.read = 0
        StreamResponses.made.append(weakref.ref(self))

    def __iter__(self) -> StreamResponses:
        return self

    def __next__(self) -> fake_pb.InferenceResponse:
        if self.read == len(self._responses):
            raise StopIteration
        self.read += 1
        return self._responses[self.read - 1]


class StreamBls(BlsRequest):
    """A BLS request to a streaming target: two responses of the target's answer."""

    def exec(self, decoupled: bool = False) -> Any:  # type: ignore[override]
        assert decoupled
        out = add_version(self.model, self.version, self.inputs)["OUTPUT0"]
        return StreamResponses([fake_pb.InferenceResponse([fake_pb.Tensor("OUTPUT0", out)])] * 2)


class StreamRequest(ClientRequest):
    """A client request of a streaming endpoint: its responses go to ``sent``."""

    def __init__(self, x: np.ndarray, cancelled: bool = False, fail_sends: bool = False) -> None:
        super().__init__(x)
        self.sent: list[tuple[Any, int]] = []
        self.asked = 0
        self._cancelled = cancelled
        self._fail_sends = fail_sends

    def is_cancelled(self) -> bool:
        self.asked += 1
        return self._cancelled

    def get_response_sender(self) -> StreamRequest:
        return self

    def send(self, response: Any = None, flags: int = 0) -> None:
        if self._fail_sends and response is not None and not response.has_error():
            raise RuntimeError("an answer that cannot be sent")
        self.sent.append((response, flags))


def test_router_keeps_finished_streams_until_the_stub_has_let_go_of_them(
    router: ModuleType, tmp_path: Path
) -> None:
    """Triton 2.51's stub frees a BLS stream's responses without the GIL when its own
    reference is the last: the router keeps each finished stream's iterator until an
    is_cancelled() round trip (answered after the stub let go) and drops it then."""
    model = make_router(router, tmp_path, [("m", 2, 100)], max_batch_size=0)
    router.pb_utils.InferenceRequest = StreamBls
    StreamResponses.made = []
    x = np.ones(4, np.float32)
    batch = router.RELEASE_AFTER

    def stream(request: StreamRequest) -> None:
        model._stream(("m", 2), request)
        [first, second, (end, flags)] = request.sent
        for response, _ in (first, second):
            np.testing.assert_array_equal(outputs_of(response), x + 2)
        assert end is None and flags == router.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

    requests = [StreamRequest(x) for _ in range(batch)]
    for request in requests:
        stream(request)
    gc.collect()
    assert all(ref() is not None for ref in StreamResponses.made)  # all kept
    assert sum(r.asked for r in requests) == 0
    # a cancelled request may be answered from a cache, without the stub: kept still
    stream(cancelled := StreamRequest(x, cancelled=True))
    gc.collect()
    assert cancelled.asked == 1 and all(ref() is not None for ref in StreamResponses.made)
    # the next stream asks once, then drops every iterator finished before it asked
    stream(last := StreamRequest(x))
    gc.collect()
    assert last.asked == 1
    assert [ref() is None for ref in StreamResponses.made] == [True] * (batch + 1) + [False]


def test_router_reads_a_stream_it_could_not_pass_on_to_its_end(
    router: ModuleType, tmp_path: Path
) -> None:
    """Only a stream read to its end is let go by the stub: one the router could not pass
    on is read to its end before it is kept, and the client's stream ends with the error."""
    model = make_router(router, tmp_path, [("m", 2, 100)], max_batch_size=0)
    router.pb_utils.InferenceRequest = StreamBls
    StreamResponses.made = []
    request = StreamRequest(np.ones(4, np.float32), fail_sends=True)
    model._stream(("m", 2), request)
    [responses] = [ref() for ref in StreamResponses.made]
    assert responses is not None and responses.read == 2  # read to its end, kept
    [(error, flags)] = request.sent
    assert "an answer that cannot be sent" in error.error().message()
    assert flags == router.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def test_a_streaming_split_through_the_python_router_warns_of_its_deadlock(
    setup: tuple[Endpoints, FakeTriton, Path], caplog: pytest.LogCaptureFixture
) -> None:
    endpoints, _, repo = setup
    folder = repo / "s"
    folder.mkdir()
    write_config(folder / "config.pbtxt", streaming(model_config("s")))
    for v in (1, 2):
        (folder / str(v)).mkdir()
        (folder / str(v) / "model.py").write_text("# a model\n")

    def warned() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    with caplog.at_level("INFO"):
        endpoints.split("plain", [Target("m", 1, 50), Target("m", 2, 50)])
        assert warned() == []
        endpoints.split("streams", [Target("s", 1, 50), Target("s", 2, 50)])
    [message] = warned()
    assert "streams through the Python router" in message and "deadlock" in message


# --------------------------------------------------------------------------- overtaken loads

OUTDATED = (
    "load failed for model 'ep': Newer operation has been applied to the model lifecycle, "
    "current load operation is out-dated."
)


def overtake_loads(triton: FakeTriton, name: str, times: int, serve: ModelConfig | None) -> None:
    """The next ``times`` loads of ``name`` are overtaken by a later load that Triton
    applies instead: one with config ``serve`` (None: the config on disk, what the
    overtaken load asked for)."""
    original = triton.load_model
    left = [times]

    def overtaken(model: str, config: str | None = None) -> None:
        if model != name or left[0] == 0:
            original(model, config)
            return
        left[0] -= 1
        triton.calls.append(("overtaken", model))
        wanted = read_config(triton.repo / model / "config.pbtxt")
        triton.configs[model] = serve if serve is not None else wanted
        triton.loaded[model] = {1}
        raise LoadError(OUTDATED)

    triton.load_model = overtaken  # type: ignore[method-assign]


def served_step(triton: FakeTriton, name: str) -> tuple[str, int]:
    [step] = triton.configs[name].ensemble_scheduling.step
    return step.model_name, step.model_version


def test_a_change_whose_load_was_overtaken_by_one_serving_it_as_asked_succeeds(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, _ = setup
    endpoints.switch("ep", "m", 1)
    overtake_loads(triton, "ep", 1, serve=None)
    triton.calls.clear()
    state = endpoints.switch("ep", "m", 2)
    assert state.targets == [Target("m", 2, 100.0)]
    assert served_step(triton, "ep") == ("m", 2)
    assert [c for c in triton.calls if c[1] == "ep"] == [("overtaken", "ep")]  # not again


def test_a_change_whose_load_was_overtaken_by_one_serving_the_old_config_loads_again(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, repo = setup
    endpoints.switch("ep", "m", 1)
    old = read_config(repo / "ep" / "config.pbtxt")
    overtake_loads(triton, "ep", 1, serve=old)
    triton.calls.clear()
    endpoints.switch("ep", "m", 2)
    assert served_step(triton, "ep") == ("m", 2)
    assert [c for c in triton.calls if c[1] == "ep"] == [("overtaken", "ep"), ("load", "ep")]
    # the router too: the old ensemble overtook its load, the router is loaded again
    overtake_loads(triton, "ep", 1, serve=read_config(repo / "ep" / "config.pbtxt"))
    endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    assert triton.configs["ep"].backend == "python"
    assert endpoints.get("ep").mode == ROUTED


def test_a_change_overtaken_twice_fails_and_keeps_the_previous_endpoint(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    endpoints, triton, repo = setup
    endpoints.switch("ep", "m", 1)
    before = endpoints.get("ep")
    old = read_config(repo / "ep" / "config.pbtxt")
    for attempt in (
        lambda: endpoints.switch("ep", "m", 2),
        lambda: endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)]),
    ):
        overtake_loads(triton, "ep", 2, serve=old)
        with pytest.raises(EndpointError, match=r"overtook this change's load twice.*Newer op"):
            attempt()
        assert endpoints.get("ep") == before
        assert read_config(repo / "ep" / "config.pbtxt") == old
        assert served_step(triton, "ep") == ("m", 1)
        assert triton.loaded["m"] == {1}  # the version loaded for the change is retired


def test_an_overtaken_native_router_load_is_not_taken_for_a_refusal(
    tmp_path: Path, fake_library: bytes
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    publish_model(repo, "m")
    triton = FakeTriton(repo)
    endpoints = Endpoints(Repository(repo), triton)  # backend "auto": native here
    endpoints.switch("ep", "m", 1)
    old = read_config(repo / "ep" / "config.pbtxt")
    overtake_loads(triton, "ep", 2, serve=old)
    with pytest.raises(EndpointError, match="overtook"):
        endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    library = Path(os.environ["TRITONCTL_ROUTER_LIBRARY"])
    assert endpoints.native_refusal(library) is None  # the next split tries it again
    endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    assert triton.configs["ep"].backend.startswith("tritonctl_router")


def test_a_change_of_a_pinned_endpoint_holds_the_lock_of_the_model_it_calls_now(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    """A load of that model by another process (which takes its lock) reloads the
    endpoint's ensemble with the config it had when that load began: it must not overlap
    the change's own load of the endpoint."""
    import threading

    endpoints, triton, repo = setup
    publish_model(repo, "other")
    endpoints.switch("ep", "m", 1)
    original = triton.load_model
    free_during_load: list[bool] = []

    def load(name: str, config: str | None = None) -> None:
        if name == "ep":
            # the lock is asked from another thread, as another process would
            outcome: list[bool] = []

            def try_it() -> None:
                with Repository(repo).try_lock("m") as held:
                    outcome.append(held)

            worker = threading.Thread(target=try_it)
            worker.start()
            worker.join()
            free_during_load.extend(outcome)
        original(name, config)

    triton.load_model = load  # type: ignore[method-assign]
    endpoints.switch("ep", "other", 1)
    assert free_during_load == [False]
    # a routed endpoint calls no model: its old targets are not held
    endpoints.split("ep", [Target("m", 1, 50), Target("other", 1, 50)])
    free_during_load.clear()
    endpoints.switch("ep", "other", 1)
    assert free_during_load == [True]


def test_restore_loads_an_endpoint_again_that_triton_serves_with_another_config(
    setup: tuple[Endpoints, FakeTriton, Path],
) -> None:
    """Another client's reload of a model the ensemble calls can put an old ensemble back
    after a change returned; restoring the endpoint serves it as its routes say."""
    endpoints, triton, repo = setup
    endpoints.switch("ep", "m", 1)
    old = read_config(repo / "ep" / "config.pbtxt")
    endpoints.switch("ep", "m", 2)
    triton.configs["ep"] = old
    triton.calls.clear()
    endpoints.ensure("ep")
    assert ("load", "ep") in triton.calls
    assert served_step(triton, "ep") == ("m", 2)
    triton.calls.clear()
    endpoints.ensure("ep")  # served as its routes say: nothing to load
    assert ("load", "ep") not in triton.calls
    endpoints.split("ep", [Target("m", 1, 50), Target("m", 2, 50)])
    triton.configs["ep"] = old
    triton.calls.clear()
    endpoints.ensure("ep")
    assert ("load", "ep") in triton.calls
    assert triton.configs["ep"].backend == "python"
