"""The rollout state machine, driven by fake endpoints and fake statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from manager.errors import RolloutError
from manager.repository import Repository
from manager.rollout import (
    Counters,
    RolloutDriver,
    RolloutPolicy,
    RolloutStore,
    parse_stages,
    request_action,
)


@dataclass
class FakeEndpoints:
    weights: dict[int, float] = field(default_factory=dict)
    pinned: int | None = 1
    calls: list[str] = field(default_factory=list)

    def split(self, name, targets):
        self.pinned = None
        self.weights = {t.version: t.weight for t in targets}
        self.calls.append(f"split {self.weights}")

    def set_weights(self, name, targets):
        self.weights = {t.version: t.weight for t in targets}
        self.calls.append(f"weights {self.weights}")

    def switch(self, name, model, version=None):
        self.pinned = version
        self.weights = {version: 100.0}
        self.calls.append(f"switch {version}")


class FakeTraffic:
    """Each poll sends 50 requests split by the endpoint's weights; v2 can fail or be slow."""

    def __init__(self, endpoints: FakeEndpoints, *, new_fail_rate=0.0, new_ms=1.0, old_ms=1.0):
        self.endpoints = endpoints
        self.totals: dict[int, Counters] = {}
        self.new_fail_rate, self.new_ms, self.old_ms = new_fail_rate, new_ms, old_ms

    def tick(self, _seconds: float) -> None:
        for version, weight in self.endpoints.weights.items():
            n = round(50 * weight / 100)
            fails = round(n * self.new_fail_rate) if version == 2 else 0
            ms = self.new_ms if version == 2 else self.old_ms
            c = self.totals.get(version, Counters())
            self.totals[version] = Counters(
                c.success + n - fails, c.fail + fails, c.success_ns + int((n - fails) * ms * 1e6)
            )

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
    return driver, endpoints, retired, store


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
    assert len(applied) == 3  # 50, 75, 90 after resuming past 30


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
