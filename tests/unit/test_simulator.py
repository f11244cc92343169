"""The simulator replays traces with the real policies; Belady is the offline reference."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manager.errors import ConfigError, MemoryBudgetError
from manager.policies import (
    EvictionPolicy,
    LruPolicy,
    ModelState,
    Victim,
    get_policy,
    policy_names,
)
from manager.simulator import (
    CacheSimulator,
    CatalogueModel,
    RequestOutcome,
    belady,
    drift_trace,
    make_catalogue,
    phase_shift_trace,
    replay,
    scan_trace,
    simulate,
    zipf_trace,
)

GIB = 2**30


def equal_models(names: str, size: int = GIB, load_seconds: float = 2.0) -> list[CatalogueModel]:
    return [CatalogueModel(name, size, load_seconds) for name in names]


def test_lru_replay_counts_hits_misses_and_bytes() -> None:
    catalogue = equal_models("abc")
    result = simulate(list("abacbca"), catalogue, 2 * GIB, LruPolicy())
    # a, b miss; a hit; c evicts b; b evicts a; c hit; a evicts b
    assert (result.requests, result.hits) == (7, 2)
    assert result.misses == 5
    assert result.bytes_loaded == 5 * GIB
    assert result.load_seconds == pytest.approx(10.0)
    assert result.evictions == 3
    assert result.hit_ratio == pytest.approx(2 / 7)
    assert result.bytes_per_request == pytest.approx(5 * GIB / 7)


def test_belady_evicts_the_model_used_furthest_in_the_future() -> None:
    catalogue = equal_models("abc")
    result = belady(list("abacbca"), catalogue, 2 * GIB)
    # a, b miss; a hit; c evicts a (next used at 6, b at 4); b hit; c hit; a miss
    assert (result.hits, result.misses) == (3, 4)
    assert result.label == "belady"


def test_belady_evicts_until_a_large_model_fits() -> None:
    catalogue = [
        CatalogueModel("a", GIB, 1),
        CatalogueModel("b", GIB, 1),
        CatalogueModel("big", 2 * GIB, 1),
    ]
    result = belady(["a", "b", "big", "b"], catalogue, 2 * GIB)
    assert result.evictions == 3  # a and b for big, then big for b
    assert result.hits == 0


def test_the_simulator_never_exceeds_the_byte_budget_or_max_models() -> None:
    catalogue = make_catalogue(30, seed=3)
    budget = sum(m.size for m in catalogue) // 4
    for name in policy_names():
        sim = CacheSimulator(
            catalogue, budget, get_policy(name, budget_bytes=budget, max_models=5), max_models=5
        )
        for request in zipf_trace([m.name for m in catalogue], 500, seed=4):
            sim.request(request)
            assert sim.used_bytes <= budget
            assert len(sim.loaded) <= 5
            assert sim.used_bytes == sum(s.footprint for s in sim.loaded.values())


def test_a_model_larger_than_the_budget_is_refused_up_front() -> None:
    catalogue = [CatalogueModel("huge", 10 * GIB, 1.0)]
    with pytest.raises(MemoryBudgetError, match="huge"):
        CacheSimulator(catalogue, GIB, LruPolicy())
    with pytest.raises(MemoryBudgetError, match="huge"):
        belady(["huge"], catalogue, GIB)


class RecordingPolicy:
    """Wraps a policy and counts the hooks the simulator calls."""

    def __init__(self, inner: EvictionPolicy) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    @property
    def name(self) -> str:
        return self.inner.name

    def on_load(self, model: ModelState) -> None:
        self.calls["load"] += 1
        self.inner.on_load(model)

    def on_hit(self, model: ModelState, count: int = 1) -> None:
        self.calls["hit"] += count
        self.inner.on_hit(model, count)

    def on_evict(self, model: ModelState) -> None:
        self.calls["evict"] += 1
        self.inner.on_evict(model)

    def on_unload(self, model: ModelState) -> None:
        self.calls["unload"] += 1

    def choose_victims(
        self,
        candidates: Sequence[ModelState],
        need_bytes: int,
        need_slots: int = 0,
        *,
        now: float | None = None,
    ) -> list[Victim]:
        self.calls["choose"] += 1
        return self.inner.choose_victims(candidates, need_bytes, need_slots, now=now)


def test_the_simulator_drives_the_policy_through_its_hooks() -> None:
    policy = RecordingPolicy(get_policy("gdsf"))
    result = simulate(list("abcabdab"), equal_models("abcd"), 2 * GIB, policy)
    assert policy.calls["load"] == result.misses
    assert policy.calls["hit"] == result.requests
    assert policy.calls["evict"] == result.evictions
    assert policy.calls["unload"] == 0


def test_the_simulator_reports_recency_to_lru_through_last_inference() -> None:
    sim = CacheSimulator(equal_models("ab"), 2 * GIB, LruPolicy(), seconds_per_request=60)
    for name in "aab":
        sim.request(name)
    a, b = sim.loaded["a"], sim.loaded["b"]
    assert (a.inference_count, b.inference_count) == (2, 1)
    assert b.last_inference - a.last_inference == 60_000


def test_replay_accepts_any_callable_that_serves_a_request() -> None:
    served: list[str] = []

    def request_model(name: str) -> RequestOutcome:
        hit = name in served
        served.append(name)
        return RequestOutcome(
            hit=hit, bytes_loaded=0 if hit else 100, load_seconds=0 if hit else 1.5
        )

    result = replay(["x", "y", "x", "x"], request_model, "live")
    assert (result.label, result.requests, result.hits) == ("live", 4, 2)
    assert result.bytes_loaded == 200
    assert result.load_seconds_per_request == pytest.approx(0.75)


# --- traces ------------------------------------------------------------------------------

NAMES = [f"m{i:02d}" for i in range(40)]


def test_zipf_trace_is_reproducible_from_its_seed_and_skewed() -> None:
    trace = zipf_trace(NAMES, 5000, alpha=1.0, seed=1)
    assert trace == zipf_trace(NAMES, 5000, alpha=1.0, seed=1)
    assert trace != zipf_trace(NAMES, 5000, alpha=1.0, seed=2)
    counts = Counter(trace).most_common()
    assert len(trace) == 5000
    assert counts[0][1] > 10 * counts[-1][1]


def test_phase_shift_trace_changes_the_popular_models_halfway() -> None:
    trace = phase_shift_trace(NAMES, 6000, seed=5)
    assert len(trace) == 6000
    top_first = {n for n, _ in Counter(trace[:3000]).most_common(3)}
    top_second = {n for n, _ in Counter(trace[3000:]).most_common(3)}
    assert top_first != top_second


def test_scan_trace_sweeps_every_model_periodically() -> None:
    trace = scan_trace(NAMES, 1000, seed=2, scan_every=200)
    assert len(trace) == 1000
    sweep = trace[200 : 200 + len(NAMES)]
    assert sorted(sweep) == sorted(NAMES)
    assert trace[200 + len(NAMES) + 200 : 200 + 2 * len(NAMES) + 200] == sweep


def test_drift_trace_has_the_asked_length_and_is_reproducible() -> None:
    trace = drift_trace(NAMES, 1234, seed=3, swap_every=100)
    assert len(trace) == 1234
    assert trace == drift_trace(NAMES, 1234, seed=3, swap_every=100)


def test_make_catalogue_load_time_grows_with_size_plus_a_start_cost() -> None:
    catalogue = make_catalogue(50, seed=1)
    assert len({m.name for m in catalogue}) == 50
    for m in catalogue:
        assert m.load_seconds >= 0.5 + m.size / (3 * GIB)
        assert m.load_seconds <= 4.0 + m.size / GIB


# --- Belady is optimal where it is provably so -------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    trace=st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=60),
    capacity=st.integers(min_value=1, max_value=5),
    load_seconds=st.lists(st.floats(0.1, 30.0), min_size=7, max_size=7),
    policy_name=st.sampled_from(policy_names()),
)
def test_belady_hits_at_least_as_often_as_every_policy_with_equal_sizes(
    trace: list[str], capacity: int, load_seconds: list[float], policy_name: str
) -> None:
    # Furthest-next-use is optimal (Belady's MIN) when all models have the same size; with
    # varied sizes it is only a heuristic, so the property is stated for equal sizes.
    catalogue = [CatalogueModel(n, GIB, s) for n, s in zip("abcdefg", load_seconds, strict=True)]
    budget = capacity * GIB
    policy = get_policy(policy_name, budget_bytes=budget)
    assert belady(trace, catalogue, budget).hits >= simulate(trace, catalogue, budget, policy).hits


@settings(max_examples=100, deadline=None)
@given(
    trace=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=60),
    max_models=st.integers(min_value=1, max_value=4),
    sizes=st.lists(st.integers(1, 8), min_size=6, max_size=6),
    policy_name=st.sampled_from(policy_names()),
)
def test_belady_hits_at_least_as_often_as_every_policy_under_a_model_count_limit(
    trace: list[str], max_models: int, sizes: list[int], policy_name: str
) -> None:
    # With bytes to spare only the count binds, so sizes do not matter and MIN is optimal.
    catalogue = [CatalogueModel(n, s * GIB, 1.0) for n, s in zip("abcdef", sizes, strict=True)]
    budget = 100 * GIB
    policy = get_policy(policy_name, budget_bytes=budget, max_models=max_models)
    reference = belady(trace, catalogue, budget, max_models=max_models)
    result = simulate(trace, catalogue, budget, policy, max_models=max_models)
    assert reference.hits >= result.hits


def test_the_simulator_refuses_a_max_models_below_one() -> None:
    with pytest.raises(ConfigError, match="max_models"):
        CacheSimulator(equal_models("a"), GIB, LruPolicy(), max_models=0)
