"""The rollout state machine, driven by fake endpoints and fake statistics."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from manager.errors import EndpointError, RolloutError, TritonUnreachableError
from manager.repository import Repository
from manager.rollout import (
    STREAM_PROBES,
    Counters,
    RollbackIncompleteError,
    RolloutDriver,
    RolloutPolicy,
    RolloutState,
    RolloutStore,
    WarmupResult,
    parse_stages,
    request_action,
)


@dataclass
class FakeEndpoints:
    weights: dict[int, float] = field(default_factory=dict)
    pinned: int | None = 1
    calls: list[str] = field(default_factory=list)

    def split(self, name, targets, sticky_parameter=None, use_correlation_id=False):
        self.pinned = None
        self.weights = {t.version: t.weight for t in targets}
        self.sticky = (sticky_parameter, use_correlation_id)
        self.calls.append(f"split {self.weights}")

    def set_weights(self, name, targets):
        if self.pinned is not None:  # as Endpoints.set_weights refuses
            raise EndpointError(f"endpoint {name!r} is pinned to m:{self.pinned}")
        self.weights = {t.version: t.weight for t in targets}
        self.calls.append(f"weights {self.weights}")

    def switch(self, name, model, version=None, *, drain=True):
        assert not drain, "a rollout drains the sequences itself, before it switches"
        self.pinned = version
        self.weights = {version: 100.0}
        self.calls.append(f"switch {version}")

    def ensure(self, name):
        self.calls.append(f"ensure {self.weights}")


class FakeTraffic:
    """Each poll sends 50 requests split by the endpoint's weights; v2 can fail or be slow."""

    def __init__(
        self,
        endpoints: FakeEndpoints,
        *,
        new_fail_rate=0.0,
        new_ms=1.0,
        old_ms=1.0,
        cold_requests=0,
        cold_ms=1.0,
        queue_ms: dict[int, float] | None = None,
    ):
        self.endpoints = endpoints
        # with queue_ms: Triton's compute time is read too, and each version's requests
        # also wait that long in its queue (counted in their end-to-end time only)
        self.queue_ms = queue_ms
        self.totals: dict[int, Counters] = {}
        self.new_fail_rate, self.new_ms, self.old_ms = new_fail_rate, new_ms, old_ms
        # the first cold_requests requests v2 ever gets take cold_ms each (lazy init)
        self.cold_left, self.cold_ms = cold_requests, cold_ms

    def add(self, version: int, n: int, fails: int = 0) -> None:
        ms = self.new_ms if version == 2 else self.old_ms
        ns = (n - fails) * ms * 1e6
        if version == 2 and self.cold_left:
            cold = min(self.cold_left, n - fails)
            self.cold_left -= cold
            ns += cold * (self.cold_ms - ms) * 1e6
        c = self.totals.get(version, Counters())
        queued = (n - fails) * self.queue_ms.get(version, 0.0) * 1e6 if self.queue_ms else 0
        self.totals[version] = Counters(
            c.success + n - fails,
            c.fail + fails,
            c.success_ns + int(ns + queued),
            c.compute_ns + int(ns) if self.queue_ms is not None else 0,
        )

    def tick(self, _seconds: float) -> None:
        for version, weight in self.endpoints.weights.items():
            n = round(50 * weight / 100)
            self.add(version, n, round(n * self.new_fail_rate) if version == 2 else 0)

    def stats(self, model: str) -> dict[int, Counters]:
        return dict(self.totals)


class Clock:
    def __init__(self, traffic: FakeTraffic):
        self.now = 0.0
        self.traffic = traffic

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.traffic.tick(seconds)

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, **traffic_kw):
    driver, endpoints, retired, store, _ = make_with_traffic(tmp_path, **traffic_kw)
    return driver, endpoints, retired, store


def make_with_traffic(tmp_path: Path, **traffic_kw):
    endpoints = FakeEndpoints()
    traffic = FakeTraffic(endpoints, **traffic_kw)
    clock = Clock(traffic)
    retired: list[tuple[str, int]] = []
    store = RolloutStore(Repository(tmp_path))
    driver = RolloutDriver(
        store,
        endpoints,
        traffic.stats,
        lambda m, v: retired.append((m, v)),
        sleep=clock.sleep,
        clock=clock,
        poll_seconds=1.0,
    )
    return driver, endpoints, retired, store, traffic


POLICY = RolloutPolicy(stage_seconds=3, min_requests=5, max_error_rate=0.05, max_latency_ratio=1.5)


def test_healthy_rollout_walks_every_stage_then_pins_new_and_retires_old(tmp_path):
    driver, endpoints, retired, store = make(tmp_path)
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "promoted"
    applied = [c for c in endpoints.calls if c.startswith("weights")]
    assert [round(float(c.split(": ")[-1].rstrip("}"))) for c in applied] == [5, 15, 30, 50, 75, 90]
    assert endpoints.pinned == 2
    assert retired == [("m", 1)]
    assert store.load("ep").status == "promoted"
    assert all(h.verdict == "healthy" for h in store.load("ep").history)


class SequenceTraffic(FakeTraffic):
    """Sequences under way on a version go on for ``tail_s`` after its weight drops to 0."""

    def __init__(self, endpoints: FakeEndpoints, tail_s: float, **kw) -> None:
        super().__init__(endpoints, **kw)
        self.tail_s, self.now = tail_s, 0.0
        self.zero_since: dict[int, float] = {}
        self.last_request: dict[int, float] = {}

    def tick(self, seconds: float) -> None:
        self.now += seconds
        super().tick(seconds)
        for version, weight in self.endpoints.weights.items():
            if weight > 0:
                self.zero_since.pop(version, None)
                self.last_request[version] = self.now
                continue
            since = self.zero_since.setdefault(version, self.now)
            if self.now - since < self.tail_s:
                self.add(version, 3)
                self.last_request[version] = self.now


def stateful_driver(tmp_path: Path, tail_s: float, idle_s: float, **traffic_kw):
    endpoints = FakeEndpoints()
    traffic = SequenceTraffic(endpoints, tail_s, **traffic_kw)
    clock = Clock(traffic)
    switched_at: list[float] = []
    switch = endpoints.switch

    def timed_switch(name, model, version=None, *, drain=True):
        switched_at.append(clock.now)
        switch(name, model, version, drain=drain)

    endpoints.switch = timed_switch  # type: ignore[method-assign]
    driver = RolloutDriver(
        RolloutStore(Repository(tmp_path)),
        endpoints,
        traffic.stats,
        lambda m, v: None,
        sleep=clock.sleep,
        clock=clock,
        poll_seconds=1.0,
        sequence_idle=lambda model: idle_s,
    )
    return driver, endpoints, traffic, switched_at


def test_a_stateful_model_is_pinned_only_once_the_old_version_s_sequences_ended(tmp_path):
    driver, endpoints, traffic, switched_at = stateful_driver(tmp_path, tail_s=6.0, idle_s=2.0)
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "promoted"
    # every new sequence to v2 first, then the pin once v1 had none for the idle time
    assert endpoints.calls[-2:] == ["weights {1: 0.0, 2: 100.0}", "switch 2"]
    assert switched_at[-1] - traffic.last_request[1] >= 2.0


def test_a_stateful_rollback_lets_the_new_version_s_sequences_end_first(tmp_path):
    driver, endpoints, traffic, switched_at = stateful_driver(
        tmp_path, tail_s=3.0, idle_s=1.0, new_fail_rate=0.5
    )
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "rolled_back"
    assert endpoints.calls[-2:] == ["weights {1: 100.0, 2: 0.0}", "switch 1"]
    assert switched_at[-1] - traffic.last_request[2] >= 1.0


def test_draining_sequences_gives_up_after_five_idle_times(tmp_path, caplog):
    driver, _, traffic, switched_at = stateful_driver(tmp_path, tail_s=1e9, idle_s=2.0)
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "promoted"
    assert "still has sequences under way" in caplog.text
    # 5 x 2 s from the weight change (v1's first request after it came half a poll later)
    assert 9.0 <= switched_at[-1] - traffic.zero_since[1] <= 10.5


def test_failing_new_version_rolls_back_to_old_and_unloads_new(tmp_path):
    driver, endpoints, retired, _ = make(tmp_path, new_fail_rate=0.5)
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "rolled_back"
    assert "error rate" in state.reason
    assert endpoints.pinned == 1
    assert retired == [("m", 2)]
    assert state.history[-1].weight == 5  # caught at the first stage


def test_slow_new_version_rolls_back_on_latency_ratio(tmp_path):
    driver, endpoints, _, _ = make(tmp_path, new_ms=3.0, old_ms=1.0)
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "rolled_back"
    assert "latency" in state.reason and "3.00x" in state.reason
    assert endpoints.pinned == 1


def test_the_latency_gate_compares_compute_time_not_time_in_the_queue(tmp_path):
    # the same model in both versions; the busier one (here the new, as its share grows)
    # queues: its end-to-end time is 40x the other's, its compute time is not
    driver, *_ = make(tmp_path, queue_ms={2: 40.0, 1: 0.0})
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "promoted", state.reason
    # a version whose own work is slower is still rolled back, on its compute time
    driver, *_ = make(tmp_path / "slow", new_ms=3.0, queue_ms={})
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "rolled_back"
    assert state.reason.startswith("compute time of m:2 is 3.00 ms a request, 3.00x"), state.reason


def test_failed_golden_check_rolls_back_before_any_traffic(tmp_path):
    driver, endpoints, retired, _ = make(tmp_path)

    def golden(model, version):
        raise RolloutError("output 'y' does not match")

    driver.golden = golden
    with pytest.raises(RolloutError, match="golden check failed"):
        driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert endpoints.pinned == 1
    assert retired == [("m", 2)]
    assert not [c for c in endpoints.calls if c.startswith("weights")]


def test_no_traffic_is_not_promoted(tmp_path):
    driver, *_ = make(tmp_path)
    driver.stats = lambda model: {}
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "rolled_back"
    assert "fewer than --min-requests" in state.reason


def test_second_rollout_on_same_endpoint_is_refused(tmp_path):
    driver, *_ = make(tmp_path)
    driver.begin("ep", "m", 1, 2, POLICY)
    with pytest.raises(RolloutError, match="already has a rollout"):
        driver.begin("ep", "m", 1, 3, POLICY)


def test_abort_request_is_honoured_by_the_driver(tmp_path):
    driver, endpoints, _, store = make(tmp_path)
    state = driver.begin("ep", "m", 1, 2, POLICY)
    request_action(store, "ep", "abort")
    state = driver.run(store.load("ep"))
    assert state.status == "rolled_back"
    assert state.reason == "aborted by request"
    assert endpoints.pinned == 1


def test_an_abort_that_cannot_reach_the_server_leaves_the_rollout_as_the_endpoint_is(tmp_path):
    driver, endpoints, retired, store = make(tmp_path)
    state = driver.begin("ep", "m", 1, 2, POLICY)
    driver.on_stage = lambda s: request_action(store, "ep", "abort") if s.weight == 30 else None
    switch = endpoints.switch

    def unreachable(name, model, version=None, *, drain=True):
        raise TritonUnreachableError("no Triton server answers at http://127.0.0.1:1")

    endpoints.switch = unreachable  # type: ignore[method-assign]
    with pytest.raises(RollbackIncompleteError, match="stays at 30 %") as info:
        driver.run(state)
    assert isinstance(info.value.__cause__, TritonUnreachableError)
    state = store.load("ep")
    # still running at 30 %, as the endpoint still routes: not "0 %" or "rolled back"
    assert state.status == "running" and state.weight == 30
    assert endpoints.weights == {1: 70.0, 2: 30.0} and retired == []
    assert state.reason.startswith("aborted by request; not rolled back yet: no Triton")
    # once the server answers, an abort finishes it
    endpoints.switch = switch  # type: ignore[method-assign]
    request_action(store, "ep", "abort")
    state = driver.run(store.load("ep"))
    assert state.status == "rolled_back" and state.reason == "aborted by request"
    assert endpoints.pinned == 1 and retired == [("m", 2)]


def test_a_request_made_while_the_driver_writes_its_state_is_not_lost(tmp_path):
    driver, endpoints, retired, store = make(tmp_path)
    requested_at = {"stage": 15}

    def promote_from_another_process(state):
        if state.weight == requested_at["stage"]:
            request_action(RolloutStore(store.repo), "ep", "promote")
            store.save(state)  # the driver's own copy of the state, written after the request

    driver.on_stage = promote_from_another_process
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "promoted" and state.reason == "promoted by request"
    assert [h.weight for h in state.history] == [5, 15]
    assert endpoints.pinned == 2 and retired == [("m", 1)]
    assert store.requested("ep") == ""  # handled, and gone


def test_rollout_status_sees_a_stage_s_numbers_while_it_runs(tmp_path):
    driver, _, _, store = make(tmp_path)
    seen: list[dict] = []
    real_sleep = driver.sleep

    def sleep(seconds):
        recorded = store.load("ep").history[-1]
        if not recorded.verdict:
            seen.append(recorded.new)
        real_sleep(seconds)

    driver.sleep = sleep
    assert driver.run(driver.begin("ep", "m", 1, 2, POLICY)).status == "promoted"
    assert any(n.get("success", 0) > 0 for n in seen)


def test_resume_continues_from_the_recorded_stage(tmp_path):
    driver, endpoints, _, store = make(tmp_path)
    stop_at = {"stage": 30}

    def crash(state):
        if state.weight == stop_at["stage"]:
            raise KeyboardInterrupt  # the driver process dies here

    driver.on_stage = crash
    with pytest.raises(KeyboardInterrupt):
        driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    recorded = store.load("ep")
    assert recorded.status == "running" and recorded.weight == 30
    driver.on_stage = None
    endpoints.calls.clear()
    state = driver.run(recorded)
    assert state.status == "promoted"
    applied = [c for c in endpoints.calls if c.startswith("weights")]
    # the interrupted 30 % stage is watched and gated again, then 50, 75, 90
    assert applied == [f"weights {{1: {100.0 - w}, 2: {float(w)}}}" for w in (30, 50, 75, 90)]
    assert [(r.weight, r.verdict) for r in state.history] == [
        (w, "healthy") for w in (5, 15, 30, 50, 75, 90)
    ]


@pytest.mark.parametrize("ending", ["promote", "abort"])
def test_a_driver_that_dies_ending_the_rollout_leaves_that_end_to_the_next_one(tmp_path, ending):
    """Killed after the endpoint was pinned to the version that stays, before the other
    was retired: the next driver finishes what was begun, it does not undo it."""
    driver, endpoints, retired, store = make(tmp_path)
    keep, drop = (2, 1) if ending == "promote" else (1, 2)
    real_retire = driver.retire

    def dies(model, version):
        raise KeyboardInterrupt  # the driver process dies here

    def on_stage(state):
        if state.weight == 30:
            request_action(store, "ep", ending)

    driver.retire, driver.on_stage = dies, on_stage
    with pytest.raises(KeyboardInterrupt):
        driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    recorded = store.load("ep")
    assert recorded.status == "running" and endpoints.pinned == keep
    driver.retire, driver.on_stage = real_retire, None
    state = driver.run(recorded)
    assert state.status == ("promoted" if ending == "promote" else "rolled_back")
    assert state.reason == f"{'promoted' if ending == 'promote' else 'aborted'} by request"
    assert endpoints.pinned == keep and retired == [("m", drop)]


def test_state_round_trips_through_json(tmp_path):
    driver, _, _, store = make(tmp_path)
    state = driver.begin("ep", "m", 1, 2, RolloutPolicy(stages=(10, 50)))
    back = store.load("ep")
    assert back.policy.stages == (10, 50, 100)
    assert back.to_dict()["weights"] == {"m:1": 100, "m:2": 0}
    assert back.endpoint == state.endpoint


@pytest.mark.parametrize("stages", [(), (50, 10), (0, 100), (5, 150)])
def test_bad_stages_are_refused(stages):
    with pytest.raises(RolloutError):
        RolloutPolicy(stages=stages)


def test_stages_parse_from_text():
    assert parse_stages("5,15,30") == (5, 15, 30)
    with pytest.raises(RolloutError):
        parse_stages("5,x")


# --------------------------------------------------------------------------- warm-up


def test_a_cold_new_version_is_rolled_back_on_latency_without_a_warm_up(tmp_path):
    # its first 10 requests take 200 ms (lazy initialization), then 1 ms like the old one
    driver, endpoints, _, _, _ = make_with_traffic(tmp_path, cold_requests=10, cold_ms=200.0)
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "rolled_back" and "latency" in state.reason
    assert endpoints.pinned == 1


def test_warm_up_requests_go_before_any_traffic_and_are_not_gated(tmp_path):
    driver, endpoints, _, store, traffic = make_with_traffic(
        tmp_path, cold_requests=10, cold_ms=200.0
    )
    seen: list[tuple[str, int, int, dict[int, float]]] = []

    def warmup(model: str, version: int, count: int) -> WarmupResult:
        seen.append((model, version, count, dict(endpoints.weights)))
        traffic.add(version, count)
        return WarmupResult(count)

    driver.warmup = warmup
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "promoted", state.reason
    # straight to the new version, while the endpoint gave it 0 % of the traffic
    assert seen == [("m", 2, POLICY.warmup_requests, {1: 100.0, 2: 0.0})]
    assert store.load("ep").warmup == "10/10 warm-up request(s) answered"
    first = store.load("ep").history[0]
    assert first.new["success_ns"] / first.new["success"] == pytest.approx(1e6)


def test_failed_warm_up_requests_are_recorded_but_do_not_roll_back(tmp_path):
    driver, _, _, store, _ = make_with_traffic(tmp_path)
    driver.warmup = lambda model, version, count: WarmupResult(count, count, "bad input")
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "promoted"
    assert store.load("ep").warmup == "0/10 warm-up request(s) answered; first error: bad input"


def test_a_new_version_failing_every_warm_up_the_old_one_answers_rolls_back_first(tmp_path):
    driver, endpoints, retired, store, _ = make_with_traffic(tmp_path)
    calls: list[tuple[int, int]] = []

    def warmup(model: str, version: int, count: int) -> WarmupResult:
        calls.append((version, count))
        return WarmupResult(count, count if version == 2 else 0, "boom")

    driver.warmup = warmup
    with pytest.raises(RolloutError, match="warm-up failed: 0/10"):
        driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert calls == [(2, POLICY.warmup_requests), (1, 2)]
    state = store.load("ep")
    assert state.status == "rolled_back" and "m:1 answered the same requests" in state.reason
    assert state.history == []  # no client traffic reached version 2
    assert endpoints.pinned == 1 and retired == [("m", 2)]


def test_a_streaming_new_version_whose_probes_fail_rolls_back_though_triton_counts_no_error(
    tmp_path,
):
    # Triton counts a stream's error responses as successes: the stats show none
    driver, endpoints, retired, _, _ = make_with_traffic(tmp_path)
    driver.streaming = lambda model: True
    calls: list[tuple[int, int, dict[int, float]]] = []

    def warmup(model: str, version: int, count: int) -> WarmupResult:
        calls.append((version, count, dict(endpoints.weights)))
        if version == 2 and len(calls) > 1:  # the warm-up passes, real traffic does not
            return WarmupResult(count, count - 1, "broken stream")
        return WarmupResult(count)

    driver.warmup = warmup
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "rolled_back"
    assert "m:2 answered 2 of 3 probe request(s) with an error that m:1 answered" in state.reason
    assert "broken stream" in state.reason
    # at the end of the first stage: the new version, then the old one for comparison
    assert calls[1:] == [(2, STREAM_PROBES, {1: 95.0, 2: 5.0}), (1, 3, {1: 95.0, 2: 5.0})]
    assert endpoints.pinned == 1 and retired == [("m", 2)]


def test_stream_probes_that_both_versions_fail_or_answer_do_not_roll_back(tmp_path):
    for failing in ({1, 2}, set()):
        driver, _, _, _, _ = make_with_traffic(tmp_path / str(len(failing)))
        driver.streaming = lambda model: True
        calls: list[int] = []

        def warmup(
            model: str, version: int, count: int, failing=failing, calls=calls
        ) -> WarmupResult:
            calls.append(version)
            return WarmupResult(count, count if version in failing else 0, "unsuited")

        driver.warmup = warmup
        state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
        assert state.status == "promoted", state.reason
        stages = len(POLICY.stages) - 1  # the last (100 %) is the promotion
        # the warm-up, then one probe a stage; the old version is asked only after a
        # failure (the warm-up's and each probe's)
        assert calls.count(2) == 1 + stages
        assert calls.count(1) == (1 + stages if failing else 0)


def test_a_model_answering_once_per_request_gets_no_stream_probes(tmp_path):
    driver, _, _, _, _ = make_with_traffic(tmp_path)
    driver.streaming = lambda model: False
    calls: list[int] = []
    driver.warmup = lambda model, version, count: calls.append(count) or WarmupResult(count)
    assert driver.run(driver.begin("ep", "m", 1, 2, POLICY)).status == "promoted"
    assert calls == [POLICY.warmup_requests]


def test_no_warm_up_when_the_policy_asks_for_none(tmp_path):
    driver, _, _, _, _ = make_with_traffic(tmp_path)
    calls: list[int] = []
    driver.warmup = lambda model, version, count: calls.append(count) or WarmupResult(count)
    policy = RolloutPolicy(stage_seconds=3, min_requests=5, warmup_requests=0)
    assert driver.run(driver.begin("ep", "m", 1, 2, policy)).status == "promoted"
    assert calls == []
    with pytest.raises(RolloutError, match="must not be negative"):
        RolloutPolicy(warmup_requests=-1)


def test_a_slower_mean_within_the_latency_tolerance_does_not_roll_back(tmp_path):
    # 0.35 vs 0.20 ms is 1.75x, but only +0.15 ms: what a rarely called instance costs
    driver, _, _, _ = make(tmp_path, new_ms=0.35, old_ms=0.2)
    assert driver.run(driver.begin("ep", "m", 1, 2, POLICY)).status == "promoted"
    strict = RolloutPolicy(stage_seconds=3, min_requests=5, latency_tolerance_ms=0)
    driver, _, _, _ = make(tmp_path / "strict", new_ms=0.35, old_ms=0.2)
    state = driver.run(driver.begin("ep", "m", 1, 2, strict))
    assert state.status == "rolled_back"
    assert "1.75x" in state.reason and "+0.15 ms > 0 ms tolerated" in state.reason
    with pytest.raises(RolloutError, match="tolerance must not be negative"):
        RolloutPolicy(latency_tolerance_ms=-1)


def test_the_wait_progress_line_sums_up_a_stage_for_both_versions():
    from manager.cli.endpoint_cmds import _stage_summary
    from manager.rollout import RolloutState, StageRecord

    state = RolloutState("ep", "m", 1, 2, POLICY)
    record = StageRecord(
        weight=5,
        started_at="",
        new={"success": 16, "fail": 1, "success_ns": 16 * 5_600_000},
        old={"success": 300, "fail": 0, "success_ns": 300 * 260_000},
        verdict="latency of m:2 is 5.60 ms ...",
    )
    assert _stage_summary(state, record) == (
        "stage 5 %: v2 16 ok / 1 failed, 5.60 ms; v1 300 ok / 0 failed, 0.26 ms: failed its gate"
    )
    record.verdict = "healthy"
    assert _stage_summary(state, record).endswith("0.26 ms: healthy")


def test_a_sticky_rollout_splits_the_endpoint_sticky_with_the_old_version_first(tmp_path):
    driver, endpoints, _, _ = make(tmp_path)
    policy = RolloutPolicy(stage_seconds=3, min_requests=5, sticky_parameter="user")
    assert driver.run(driver.begin("ep", "m", 1, 2, policy)).status == "promoted"
    assert endpoints.sticky == ("user", False)
    assert endpoints.calls[0] == "split {1: 100.0, 2: 0.0}"


def test_counters_reset_by_a_server_restart_start_the_stage_count_anew(tmp_path):
    driver, endpoints, _, _, traffic = make_with_traffic(tmp_path)
    restarted = {"done": False}
    real_sleep = driver.sleep

    def sleep(seconds):
        real_sleep(seconds)
        if not restarted["done"] and endpoints.weights.get(2) == 15.0:
            traffic.totals.clear()  # Triton restarted: every counter from zero again
            restarted["done"] = True

    driver.sleep = sleep
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert restarted["done"]
    assert state.status == "promoted", state.reason
    assert all(h.new["success"] >= 0 and h.old["success"] >= 0 for h in state.history)


def _outage(driver, endpoints, traffic, *, polls: int):
    """Make the stats unreachable for ``polls`` polls from the 15 % stage on, then come
    back with every counter reset (a restarted server)."""
    from manager.errors import TritonUnreachableError

    left = {"n": polls}
    real_stats = driver.stats

    def stats(model):
        if endpoints.weights.get(2) == 15.0 and left["n"] > 0:
            left["n"] -= 1
            if left["n"] == 0:
                traffic.totals.clear()
            raise TritonUnreachableError("no Triton server answers at grpc://x")
        return real_stats(model)

    driver.stats = stats


def test_a_stage_waits_out_a_short_server_outage_and_goes_on(tmp_path):
    driver, endpoints, _, _, traffic = make_with_traffic(tmp_path)
    _outage(driver, endpoints, traffic, polls=5)
    warmups: list[dict[int, float]] = []

    def warmup(model, version, count):
        warmups.append(dict(endpoints.weights))
        return WarmupResult(count)

    driver.warmup = warmup
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "promoted", state.reason
    assert endpoints.pinned == 2
    # warmed up before the first stage, and again once the restarted server is back
    assert warmups == [{1: 100.0, 2: 0.0}, {1: 85.0, 2: 15.0}]


def test_a_server_back_without_the_endpoint_gets_it_served_again_by_the_driver(tmp_path):
    from manager.errors import ModelNotFoundError

    driver, endpoints, _, _, traffic = make_with_traffic(tmp_path)
    real_stats = driver.stats
    gone = {"polls": 0}

    def stats(model):
        # restarted at the 15 % stage without --restore: nothing served until ensure()
        if endpoints.weights.get(2) == 15.0 and not any("ensure" in c for c in endpoints.calls):
            gone["polls"] += 1
            traffic.totals.clear()
            raise ModelNotFoundError("model 'm' is not in the repository served by grpc://x")
        return real_stats(model)

    driver.stats = stats
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "promoted", state.reason
    assert [c for c in endpoints.calls if c.startswith("ensure")] == ["ensure {1: 85.0, 2: 15.0}"]
    assert gone["polls"] == 1  # served again at the first poll that found it missing


def test_a_server_gone_longer_than_the_grace_period_rolls_back(tmp_path):
    driver, endpoints, retired, _, traffic = make_with_traffic(tmp_path)
    driver.unreachable_grace_s = 10
    _outage(driver, endpoints, traffic, polls=1000)
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "rolled_back"
    assert "no Triton server answers" in state.reason
    assert endpoints.pinned == 1 and retired == [("m", 2)]


def test_ctrl_c_during_rollout_start_wait_says_how_to_go_on(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import manager.cli.endpoint_cmds as cmds
    from manager.cli import main

    repo = Repository(tmp_path)
    store = RolloutStore(repo)

    def begin(repo_, control, endpoint, to_version, policy):
        driver = RolloutDriver(store, FakeEndpoints(), lambda m: {}, lambda m, v: None)
        state = driver.begin(endpoint, "m", 1, to_version, policy)
        state.status, state.stage_index = "running", 1  # at 15 %
        store.save(state)
        return state

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cmds, "begin_rollout", begin)
    monkeypatch.setattr(cmds, "run_rollout", interrupted)
    result = CliRunner().invoke(
        main,
        [
            *("--repo", str(tmp_path), "--url", "http://127.0.0.1:1"),
            *("rollout", "start", "ep", "--to", "2", "--wait"),
        ],
    )
    assert result.exit_code == 130
    assert "ep keeps serving at 15 % on m:2" in result.output
    assert "tritonctl rollout resume ep" in result.output


def test_synthetic_warm_up_alternates_batch_1_and_the_largest_batch(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import manager.rollout_service as service
    from manager.modelconfig import TensorSpec, build_config, write_config

    (tmp_path / "m").mkdir()
    config = build_config(
        "m", [TensorSpec("X", "FP32", (4,))], [TensorSpec("Y", "FP32", (4,))], max_batch_size=8
    )
    write_config(tmp_path / "m" / "config.pbtxt", config)
    shapes: list[tuple[int, ...]] = []

    def infer(url, model, inputs, *, version=None, stream=False, sequence_id=0):
        assert (url, model, version, stream, sequence_id) == (
            "grpc://triton:8001",
            "m",
            2,
            False,
            0,
        )
        shapes.append(inputs["X"].shape)
        if inputs["X"].shape[0] == 8:
            raise service.ManagerError("batch 8 refused")
        return {}

    monkeypatch.setattr(service, "infer", infer)
    run = service.warmup_runner(Repository(tmp_path), SimpleNamespace(url="grpc://triton:8001"))
    result = run("m", 2, 4)
    assert shapes == [(1, 4), (8, 4), (1, 4), (8, 4)]
    assert (result.sent, result.failed, result.first_error) == (4, 2, "batch 8 refused")


def test_rollout_list_shows_every_endpoint_s_last_rollout(tmp_path):
    import json

    from click.testing import CliRunner

    from manager.cli import main

    driver, *_ = make(tmp_path)
    driver.run(driver.begin("done_ep", "m", 1, 2, POLICY))
    driver.begin("live_ep", "m", 3, 4, POLICY)  # recorded, its driver not running
    runner = CliRunner()
    listed = runner.invoke(main, ["--repo", str(tmp_path), "rollout", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["endpoint"]: r for r in json.loads(listed.output)}
    assert rows["done_ep"]["status"] == "promoted" and rows["done_ep"]["weight"] == 100
    assert rows["live_ep"]["status"] == "starting" and rows["live_ep"]["new_version"] == 4
    active = runner.invoke(main, ["--repo", str(tmp_path), "rollout", "list", "--active"])
    assert active.exit_code == 0, active.output
    assert "live_ep" in active.output and "done_ep" not in active.output
    assert rows["live_ep"]["driver_alive"] is False


def test_one_process_at_a_time_drives_a_rollout(tmp_path):
    driver, endpoints, _, store = make(tmp_path)
    state = driver.begin("ep", "m", 1, 2, POLICY)
    other = store.driver_lock("ep")  # another driver, as far as this one can tell
    other.acquire()
    try:
        assert store.driven("ep")
        with pytest.raises(RolloutError, match="driven by another process"):
            driver.run(state)
        assert endpoints.calls == []  # it touched nothing
        assert store.load("ep").status == "starting"
    finally:
        other.release()
    assert not store.driven("ep")
    assert driver.run(state).status == "promoted"
    assert not store.driven("ep")  # released when done


def test_a_driver_takes_the_recorded_state_not_a_stale_copy(tmp_path):
    driver, endpoints, _, store = make(tmp_path)
    stale = driver.begin("ep", "m", 1, 2, POLICY)
    assert driver.run(store.load("ep")).status == "promoted"
    endpoints.calls.clear()
    # a second worker started with the state as it was before the first one finished
    state = driver.run(stale)
    assert state.status == "promoted"
    assert endpoints.calls == []


def test_resume_and_finish_leave_a_driven_rollout_to_its_driver(tmp_path):
    from manager.rollout_service import finish, resumable

    driver, endpoints, _, store = make(tmp_path)
    driver.begin("ep", "m", 1, 2, POLICY)
    repo = Repository(tmp_path)
    # recorded as starting with no driver pid yet: a worker that is just starting holds
    # the lock before it records itself
    other = store.driver_lock("ep")
    other.acquire()
    try:
        with pytest.raises(RolloutError, match="is running"):
            resumable(repo, "ep")
        state = finish(repo, None, "ep", "abort")  # type: ignore[arg-type]
        assert state.status == "starting" and state.requested == "abort"
        assert endpoints.calls == []
    finally:
        other.release()
    assert resumable(repo, "ep").status == "starting"
    # the driver that gets the lock acts on the request
    state = driver.run(store.load("ep"))
    assert state.status == "rolled_back" and state.reason == "aborted by request"


def test_a_policy_checks_its_sticky_key_and_keeps_its_golden_folder_absolute(tmp_path, monkeypatch):
    # refused when the rollout is started, not later in its background worker
    with pytest.raises(RolloutError, match="sticky parameter 'a b'"):
        RolloutPolicy(sticky_parameter="a b")
    with pytest.raises(RolloutError, match="sticky parameter"):
        RolloutPolicy(sticky_parameter="user\n")
    with pytest.raises(RolloutError, match="not both"):
        RolloutPolicy(sticky_parameter="user", use_correlation_id=True)
    monkeypatch.chdir(tmp_path)
    # the worker, and a later resume, run from other folders
    assert RolloutPolicy(golden_dir="golden").golden_dir == str(tmp_path / "golden")
    given, recorded = RolloutPolicy(stage_seconds=2), RolloutPolicy(stage_seconds=4)
    assert given.differences(recorded) == ["stage_seconds: 2 (4)"]
    assert given.differences(RolloutPolicy(stage_seconds=2)) == []


def test_a_worker_that_fails_at_once_is_reported_with_its_log(tmp_path):
    import subprocess
    import sys

    from manager.rollout_service import _wait_for_worker

    log_path = tmp_path / "ep.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; print('error: golden folder g is gone'); sys.exit(3)",
            ],
            stdout=out,
        )
    store = RolloutStore(Repository(tmp_path))
    store.save(RolloutState("ep", "m", 1, 2, POLICY))
    with pytest.raises(RolloutError, match=r"exited with status 3: error: golden folder g is gone"):
        _wait_for_worker(proc, store, "ep", log_path)


@pytest.mark.parametrize(
    ("action", "status", "code"),
    [("promote", "rolled_back", 4), ("promote", "promoted", 0), ("abort", "running", 4)],
)
def test_promote_and_abort_exit_4_unless_the_rollout_ends_as_asked(
    tmp_path, monkeypatch, action, status, code
):
    import contextlib

    from click.testing import CliRunner

    from manager.cli import endpoint_cmds, main

    state = RolloutState("ep", "m", 1, 2, POLICY, status=status, reason="error: in use")
    waits: list[float] = []

    def finish_and_wait(*args, timeout):
        waits.append(timeout)
        return state

    monkeypatch.setattr(endpoint_cmds, "finish_and_wait", finish_and_wait)
    monkeypatch.setattr(endpoint_cmds, "_control", lambda obj: contextlib.nullcontext())
    argv = ["--repo", str(tmp_path), "--url", "http://triton:8000", "rollout", action, "ep"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == code, result.output
    assert f"ep: m:1 -> 2 {status}" in result.output
    result = CliRunner().invoke(main, [*argv, "--json", "--wait-timeout", "7"])
    assert result.exit_code == code, result.output
    assert json.loads(result.output)["status"] == status
    assert waits == [120.0, 7.0]


@pytest.mark.parametrize(("status", "code"), [("rolled_back", 4), ("promoted", 0)])
def test_resume_wait_exits_4_unless_the_rollout_is_promoted(tmp_path, monkeypatch, status, code):
    import contextlib

    from click.testing import CliRunner

    from manager.cli import endpoint_cmds, main

    state = RolloutState("ep", "m", 1, 2, POLICY, status=status, reason="latency")
    monkeypatch.setattr(endpoint_cmds, "resumable", lambda repo, name: state)
    monkeypatch.setattr(endpoint_cmds, "require_server", lambda control, why: None)
    monkeypatch.setattr(
        endpoint_cmds, "run_rollout", lambda repo, control, state, on_stage=None: state
    )
    monkeypatch.setattr(endpoint_cmds, "_control", lambda obj: contextlib.nullcontext())
    argv = ["--repo", str(tmp_path), "--url", "http://triton:8000", "rollout", "resume", "ep"]
    result = CliRunner().invoke(main, [*argv, "--wait"])
    assert result.exit_code == code, result.output
    assert f"ep: m:1 -> 2 {status}" in result.output
    result = CliRunner().invoke(main, [*argv, "--wait", "--json"])
    assert result.exit_code == code, result.output
    assert json.loads(result.output)["status"] == status


def test_resume_in_the_background_prints_the_worker_pid_or_json(tmp_path, monkeypatch):
    import contextlib

    from click.testing import CliRunner

    from manager.cli import endpoint_cmds, main

    state = RolloutState("ep", "m", 1, 2, POLICY, status="running", stage_index=2)
    monkeypatch.setattr(endpoint_cmds, "resume_in_background", lambda r, c, n: (state, 4321))
    monkeypatch.setattr(endpoint_cmds, "_control", lambda obj: contextlib.nullcontext())
    argv = ["--repo", str(tmp_path), "--url", "http://triton:8000", "rollout", "resume", "ep"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    assert "rollout of ep resumed at 30 % (worker pid 4321)" in result.output
    result = CliRunner().invoke(main, [*argv, "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["worker_pid"] == 4321 and answer["weight"] == 30


@pytest.mark.parametrize(
    "options, message",
    [
        (["--stages", "50,10"], "rise strictly"),
        (["--stages", "5,x"], "integers separated by commas"),
        (["--stages", "5,150"], "within 1..100"),
        (["--sticky-parameter", "user", "--sticky-correlation-id"], "not both"),
        (["--max-error-rate", "2"], "--max-error-rate"),
    ],
)
def test_bad_rollout_options_are_usage_errors_like_any_bad_option(tmp_path, options, message):
    from click.testing import CliRunner

    from manager.cli import main

    argv = ["--repo", str(tmp_path), "--url", "http://127.0.0.1:1", "rollout", "start", "ep"]
    result = CliRunner().invoke(main, [*argv, "--to", "2", *options])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_the_golden_check_refuses_answers_of_another_type_than_the_config_declares(
    tmp_path, monkeypatch
):
    from types import SimpleNamespace

    import numpy as np

    import manager.rollout_service as service
    from manager.golden import GoldenCase, GoldenMismatch
    from manager.modelconfig import TensorSpec, build_config, write_config

    (tmp_path / "m").mkdir()
    config = build_config(
        "m", [TensorSpec("X", "FP32", (2,))], [TensorSpec("Y", "FP32", (2,))], max_batch_size=8
    )
    write_config(tmp_path / "m" / "config.pbtxt", config)
    x = np.ones((1, 2), np.float32)
    case = GoldenCase("c", {"X": x}, {"Y": x + 1})
    answer = {"Y": (x + 1).astype(np.float64)}  # the values, as FP64: Triton passes it on
    monkeypatch.setattr(service, "infer", lambda *args, **kwargs: answer)
    control = SimpleNamespace(url="http://triton:8000", grpc_url="grpc://triton:8001")
    golden = service.golden_runner(Repository(tmp_path), control, [case])
    with pytest.raises(GoldenMismatch, match="output 'Y' came back as float64, the config"):
        golden("m", 2)
    answer["Y"] = (x + 1).astype(np.float32)
    golden("m", 2)


# -- where the driver runs: pid here, heartbeat elsewhere ---------------------------------

OTHER_NODE = "0f0f0f0f-boot-of-another-host/pid:[4026531836]"


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _driven_elsewhere(store: RolloutStore, *, seen_ago: float, pid: int | None = None) -> None:
    """Record ``ep``'s driver as a process of another host or PID namespace whose last
    heartbeat was ``seen_ago`` seconds ago."""
    import time
    from datetime import datetime, timezone

    state = store.load("ep")
    state.driver_pid = _dead_pid() if pid is None else pid
    state.driver_create_time = 1.0
    state.driver_host = "triton-0"
    state.driver_node = OTHER_NODE
    beat = datetime.fromtimestamp(time.time() - seen_ago, timezone.utc)
    state.driver_heartbeat = beat.isoformat(timespec="milliseconds")
    store.save(state)


def test_a_driver_elsewhere_lives_while_its_heartbeat_is_fresh(tmp_path):
    """Its pid means nothing here (dead here, or another process): its heartbeat tells."""
    from manager.rollout import DRIVER_LEASE_S

    driver, _, _, store = make(tmp_path)
    driver.begin("ep", "m", 1, 2, POLICY)
    _driven_elsewhere(store, seen_ago=2)
    state = store.load("ep")
    assert state.driver_alive()
    assert "on triton-0 (another host or PID namespace), last report 2 s ago" in (
        state.describe_driver()
    )
    _driven_elsewhere(store, seen_ago=DRIVER_LEASE_S + 1)
    assert not store.load("ep").driver_alive()


def test_a_live_pid_here_is_not_taken_for_a_driver_elsewhere(tmp_path):
    import os

    import psutil

    from manager.rollout import DRIVER_LEASE_S

    driver, *_ = make(tmp_path)
    store = driver.store
    driver.begin("ep", "m", 1, 2, POLICY)
    _driven_elsewhere(store, seen_ago=DRIVER_LEASE_S + 1, pid=os.getpid())
    state = store.load("ep")
    state.driver_create_time = psutil.Process().create_time()  # as if this very process
    assert not state.driver_alive()


def test_a_crashed_driver_here_is_dead_at_once_whatever_its_heartbeat(tmp_path):
    from manager.rollout import this_node

    driver, *_ = make(tmp_path)
    store = driver.store
    driver.begin("ep", "m", 1, 2, POLICY)
    _driven_elsewhere(store, seen_ago=0)
    state = store.load("ep")
    state.driver_node = this_node()
    assert not state.driver_alive()


def test_a_state_recorded_without_where_its_driver_runs_still_loads(tmp_path):
    """A state file of the previous version: its pid is checked here, as it was."""
    import os

    import psutil

    driver, *_ = make(tmp_path)
    store = driver.store
    driver.begin("ep", "m", 1, 2, POLICY)
    data = json.loads(store.path("ep").read_text())
    for name in ("driver_host", "driver_node", "driver_heartbeat"):
        data.pop(name)
    data["driver_pid"], data["driver_create_time"] = os.getpid(), psutil.Process().create_time()
    store.path("ep").write_text(json.dumps(data))
    state = store.load("ep")
    assert state.driver_alive() and state.driver_heartbeat == ""
    data["driver_pid"] = _dead_pid()
    store.path("ep").write_text(json.dumps(data))
    assert not store.load("ep").driver_alive()


def test_a_state_recorded_by_a_later_version_with_fields_unknown_here_still_loads(tmp_path):
    driver, *_ = make(tmp_path)
    store = driver.store
    driver.begin("ep", "m", 1, 2, POLICY)
    data = json.loads(store.path("ep").read_text())
    data["driver_lease_s"] = 60
    data["policy"]["max_p99_ratio"] = 2.0
    data["history"] = [{"weight": 5, "started_at": "2026-12-08T00:00:00+00:00", "p99": {}}]
    store.path("ep").write_text(json.dumps(data))
    state = store.load("ep")
    assert (state.model, state.new_version, state.policy) == ("m", 2, POLICY)
    assert [h.weight for h in state.history] == [5]


def test_a_rollout_driven_elsewhere_is_not_taken_over_until_its_lease_ends(tmp_path):
    from manager.rollout import DRIVER_LEASE_S
    from manager.rollout_service import finish, resumable

    driver, endpoints, _, store = make(tmp_path)
    driver.begin("ep", "m", 1, 2, POLICY)
    repo = Repository(tmp_path)
    _driven_elsewhere(store, seen_ago=3)
    with pytest.raises(RolloutError, match=r"driven by pid .* on triton-0"):
        resumable(repo, "ep")
    with pytest.raises(RolloutError, match=r"driven by pid .* on triton-0"):
        driver.run(store.load("ep"))
    state = finish(repo, None, "ep", "abort")  # type: ignore[arg-type]
    assert state.status == "starting" and state.requested == "abort"  # left to its driver
    assert endpoints.calls == []
    assert store.load("ep").driver_host == "triton-0"
    _driven_elsewhere(store, seen_ago=DRIVER_LEASE_S + 1)
    assert resumable(repo, "ep").status == "starting"
    state = driver.run(store.load("ep"))
    assert state.status == "rolled_back" and state.reason == "aborted by request"


def test_a_driver_keeps_its_heartbeat_while_it_waits_in_a_step(tmp_path):
    import socket
    import time

    from manager.rollout import this_node

    driver, _, _, store = make(tmp_path)
    driver.heartbeat_s = 0.05
    seen: list[str] = []

    def slow_warmup(model, version, count):  # a step that writes nothing for a while
        first = store.load("ep").driver_heartbeat
        time.sleep(0.5)
        seen.extend([first, store.load("ep").driver_heartbeat])
        return WarmupResult(count)

    driver.warmup = slow_warmup
    state = driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    assert state.status == "promoted"
    assert seen and seen[0] and seen[1] > seen[0]
    assert state.driver_host == socket.gethostname() and state.driver_node == this_node()


def test_a_driver_taken_over_meanwhile_stops_touching_nothing(tmp_path):
    """Another process took the rollout over (this one seemed dead to it): this one
    neither rolls back nor moves the weights any more."""
    driver, endpoints, _, store = make(tmp_path)

    def taken_over(state):
        if state.weight == 15:
            _driven_elsewhere(store, seen_ago=0)

    driver.on_stage = taken_over
    with pytest.raises(RolloutError, match=r"taken over by another driver .*triton-0"):
        driver.run(driver.begin("ep", "m", 1, 2, POLICY))
    recorded = store.load("ep")
    assert recorded.status == "running" and recorded.weight == 15
    assert recorded.driver_host == "triton-0"
    assert endpoints.calls[-1] == "weights {1: 85.0, 2: 15.0}"


def _take_over_in_a_process(root: str, barrier, results) -> None:
    from manager.rollout import DriverId

    store = RolloutStore(Repository(root))
    barrier.wait()
    try:
        store.take_over("ep", DriverId.current())
        results.put("took over")
    except RolloutError as exc:
        results.put(str(exc))
    barrier.wait()  # the one that took over lives on until both have tried


def test_two_processes_taking_a_rollout_over_at_once_cannot_both(tmp_path, monkeypatch):
    """Without the driver lock (a file share that flock does not reach): the claim lock
    alone lets one of them record itself, and the other sees it alive."""
    import multiprocessing
    import time

    from manager.rollout import DRIVER_LEASE_S

    driver, *_ = make(tmp_path)
    store = driver.store
    driver.begin("ep", "m", 1, 2, POLICY)
    _driven_elsewhere(store, seen_ago=DRIVER_LEASE_S + 1)
    real_load = RolloutStore.load

    def slow_load(self, endpoint):  # both read the dead driver before either writes
        state = real_load(self, endpoint)
        time.sleep(0.5)
        return state

    monkeypatch.setattr(RolloutStore, "load", slow_load)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    procs = [
        context.Process(target=_take_over_in_a_process, args=(str(tmp_path), barrier, results))
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    answers = sorted(results.get(timeout=5) for _ in procs)
    assert answers[1] == "took over"
    assert "is driven by pid" in answers[0], answers


def test_rollout_status_says_where_the_driver_runs_and_when_it_last_reported(tmp_path):
    from click.testing import CliRunner

    from manager.cli import main

    driver, *_ = make(tmp_path)
    driver.begin("ep", "m", 1, 2, POLICY)
    _driven_elsewhere(driver.store, seen_ago=4)
    runner = CliRunner()
    shown = runner.invoke(main, ["--repo", str(tmp_path), "rollout", "status", "ep"])
    assert shown.exit_code == 0, shown.output
    assert "(driver running)" in shown.output
    assert "on triton-0 (another host or PID namespace), last report 4 s ago" in shown.output
    assert "not running" not in shown.output
    as_json = runner.invoke(main, ["--repo", str(tmp_path), "rollout", "status", "ep", "--json"])
    data = json.loads(as_json.output)
    assert data["driver_alive"] is True and data["driver_host"] == "triton-0"
    assert data["driver_node"] == OTHER_NODE and data["driver_heartbeat"].endswith("+00:00")
    listed = runner.invoke(main, ["--repo", str(tmp_path), "rollout", "list"])
    assert "running (triton-0)" in listed.output
