"""Eviction policies: the order each one evicts in, the rules all of them keep, GDSF state."""

from __future__ import annotations

import dataclasses

import pytest

from manager.errors import ConfigError, MemoryBudgetError
from manager.policies import (
    GIB,
    EvictionPolicy,
    FifoPolicy,
    GdsfDecayPolicy,
    GdsfPolicy,
    LruPolicy,
    MemoryPressurePolicy,
    ModelState,
    get_policy,
    policy_names,
)

NOW = 1_700_000_000.0


def model(
    name: str,
    *,
    footprint: int = GIB,
    loaded_at: float = NOW - 3600,
    last_inference_ago: float | None = None,
    inference_count: int = 0,
    load_seconds: float | None = 2.0,
    pinned: bool = False,
    in_rollout: bool = False,
    version: int = 1,
) -> ModelState:
    last_inference = 0 if last_inference_ago is None else int((NOW - last_inference_ago) * 1000)
    return ModelState(
        name=name,
        version=version,
        footprint=footprint,
        loaded_at=loaded_at,
        last_inference=last_inference,
        inference_count=inference_count,
        load_seconds=load_seconds,
        pinned=pinned,
        in_rollout=in_rollout,
    )


def names(victims: list) -> list[str]:
    return [v.model.name for v in victims]


def evict_all_order(policy: EvictionPolicy, models: list[ModelState]) -> list[str]:
    return names(policy.choose_victims(models, sum(m.footprint for m in models), now=NOW))


# --- LRU -------------------------------------------------------------------------------


def test_lru_evicts_the_least_recent_last_inference_first() -> None:
    models = [
        model("recent", last_inference_ago=10),
        model("oldest", last_inference_ago=3000),
        model("middle", last_inference_ago=600),
    ]
    assert evict_all_order(LruPolicy(), models) == ["oldest", "middle", "recent"]


def test_lru_orders_never_inferred_models_by_load_time() -> None:
    models = [
        model("loaded_late", loaded_at=NOW - 100),
        model("loaded_early", loaded_at=NOW - 900),
    ]
    assert evict_all_order(LruPolicy(), models) == ["loaded_early", "loaded_late"]


def test_lru_counts_a_never_inferred_model_as_used_when_it_was_loaded() -> None:
    models = [
        model("just_loaded", loaded_at=NOW - 5),
        model("used_an_hour_ago", loaded_at=NOW - 7200, last_inference_ago=3600),
    ]
    assert evict_all_order(LruPolicy(), models) == ["used_an_hour_ago", "just_loaded"]


def test_lru_uses_last_inference_not_load_time() -> None:
    models = [
        model("loaded_first_used_now", loaded_at=NOW - 9000, last_inference_ago=1),
        model("loaded_last_used_long_ago", loaded_at=NOW - 5000, last_inference_ago=4000),
    ]
    assert evict_all_order(LruPolicy(), models)[0] == "loaded_last_used_long_ago"


def test_lru_ranks_inferred_models_by_last_inference_even_when_loaded_later() -> None:
    # the manager's clock says both were loaded a second ago (a server's clock a little
    # behind, or a load time first seen late): Triton's last_inference still decides
    models = [
        model("a_used_17_s_ago", loaded_at=NOW - 1, last_inference_ago=17),
        model("b_used_150_s_ago", loaded_at=NOW - 1, last_inference_ago=150),
    ]
    assert evict_all_order(LruPolicy(), models) == ["b_used_150_s_ago", "a_used_17_s_ago"]
    victim = LruPolicy().choose_victims(models, 1, now=NOW)[0]
    assert victim.reason == "lru: last inference 2 min ago"


def test_lru_reason_says_how_long_ago_the_last_inference_was() -> None:
    victims = LruPolicy().choose_victims([model("a", last_inference_ago=12 * 60)], 1, now=NOW)
    assert victims[0].reason == "lru: last inference 12 min ago"


def test_lru_reason_says_when_a_model_was_never_inferred() -> None:
    victims = LruPolicy().choose_victims([model("a", loaded_at=NOW - 180)], 1, now=NOW)
    assert victims[0].reason == "lru: never inferred, loaded 3 min ago"


# --- FIFO and memory_pressure ------------------------------------------------------------


def test_fifo_evicts_in_load_order_whatever_the_use() -> None:
    models = [
        model("second", loaded_at=NOW - 200, last_inference_ago=3000),
        model("first", loaded_at=NOW - 300, last_inference_ago=1),
        model("third", loaded_at=NOW - 100),
    ]
    assert evict_all_order(FifoPolicy(), models) == ["first", "second", "third"]
    assert FifoPolicy().choose_victims(models, 1, now=NOW)[0].reason == "fifo: loaded 5 min ago"


def test_memory_pressure_evicts_the_largest_footprint_first() -> None:
    models = [
        model("small", footprint=1 * GIB, last_inference_ago=9000),
        model("large", footprint=8 * GIB, last_inference_ago=1),
        model("medium", footprint=4 * GIB),
    ]
    assert evict_all_order(MemoryPressurePolicy(), models) == ["large", "medium", "small"]
    victim = MemoryPressurePolicy().choose_victims(models, 1, now=NOW)[0]
    assert victim.reason == "memory_pressure: footprint 8.0 GiB"


def test_memory_pressure_breaks_ties_by_least_recent_use() -> None:
    models = [
        model("used_now", last_inference_ago=1),
        model("used_long_ago", last_inference_ago=900),
    ]
    assert evict_all_order(MemoryPressurePolicy(), models) == ["used_long_ago", "used_now"]


def test_memory_pressure_frees_a_need_with_one_large_victim_instead_of_many_small() -> None:
    models = [model(f"small{i}", footprint=GIB) for i in range(4)] + [
        model("large", footprint=4 * GIB)
    ]
    assert names(MemoryPressurePolicy().choose_victims(models, 3 * GIB, now=NOW)) == ["large"]


# --- rules every policy keeps --------------------------------------------------------------


@pytest.fixture(params=policy_names())
def policy(request: pytest.FixtureRequest) -> EvictionPolicy:
    return get_policy(request.param)


def test_no_policy_ever_chooses_a_pinned_model_or_one_in_a_rollout(policy: EvictionPolicy) -> None:
    models = [
        model("pinned", footprint=16 * GIB, loaded_at=NOW - 9999, pinned=True),
        model("rolling", footprint=16 * GIB, loaded_at=NOW - 9998, in_rollout=True),
        model("free_a", footprint=GIB),
        model("free_b", footprint=GIB),
    ]
    victims = policy.choose_victims(models, 2 * GIB, now=NOW)
    assert sorted(names(victims)) == ["free_a", "free_b"]


def test_impossible_fit_raises_with_the_missing_bytes(policy: EvictionPolicy) -> None:
    models = [
        model("pinned", footprint=4 * GIB, pinned=True),
        model("free", footprint=GIB),
    ]
    with pytest.raises(MemoryBudgetError) as err:
        policy.choose_victims(models, 3 * GIB, now=NOW)
    message = str(err.value)
    assert f"{2 * GIB} bytes) missing" in message
    assert "2.0 GiB" in message
    assert "1 protected: pinned, in a rollout" in message
    # with each model's reason known, the refusal names them instead of the kinds
    models[0] = dataclasses.replace(models[0], protected_by="(pinned in tritonctl.yaml)")
    with pytest.raises(MemoryBudgetError) as err:
        policy.choose_victims(models, 3 * GIB, now=NOW)
    assert "(1 protected: pinned:1 4.0 GiB (pinned in tritonctl.yaml))" in str(err.value)


def test_too_few_evictable_models_for_the_slot_need_raises(policy: EvictionPolicy) -> None:
    models = [model("pinned", pinned=True), model("free")]
    with pytest.raises(MemoryBudgetError, match="need to unload 2 models"):
        policy.choose_victims(models, 0, 2, now=NOW)


def test_victims_stop_as_soon_as_the_bytes_are_freed(policy: EvictionPolicy) -> None:
    models = [model(f"m{i}", footprint=GIB, loaded_at=NOW - i) for i in range(5)]
    assert len(policy.choose_victims(models, GIB + 1, now=NOW)) == 2


def test_victims_cover_the_slot_need_even_when_no_bytes_are_needed(
    policy: EvictionPolicy,
) -> None:
    models = [model(f"m{i}", loaded_at=NOW - i) for i in range(5)]
    assert len(policy.choose_victims(models, 0, 3, now=NOW)) == 3


def test_victims_meet_both_the_bytes_and_the_slot_need(policy: EvictionPolicy) -> None:
    models = [model("big", footprint=8 * GIB)] + [
        model(f"small{i}", footprint=GIB // 4, loaded_at=NOW - i) for i in range(4)
    ]
    victims = policy.choose_victims(models, 4 * GIB, 2, now=NOW)
    assert len(victims) >= 2
    assert sum(v.model.footprint for v in victims) >= 4 * GIB


def test_nothing_needed_means_no_victims(policy: EvictionPolicy) -> None:
    assert policy.choose_victims([model("a", pinned=True)], 0, 0, now=NOW) == []


def test_every_victim_has_a_reason_naming_the_policy(policy: EvictionPolicy) -> None:
    models = [model(f"m{i}", loaded_at=NOW - i, last_inference_ago=i) for i in range(3)]
    for victim in policy.choose_victims(models, 3 * GIB, now=NOW):
        assert victim.reason.startswith(f"{policy.name}: ")


def test_every_registered_policy_meets_the_protocol(policy: EvictionPolicy) -> None:
    assert isinstance(policy, EvictionPolicy)


def test_get_policy_returns_a_fresh_instance_each_time() -> None:
    assert get_policy("gdsf") is not get_policy("gdsf")


def test_get_policy_refuses_an_unknown_name_and_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        get_policy("mru")
    assert "'mru'" in str(err.value)
    for name in ("lru", "fifo", "memory_pressure", "gdsf", "gdsf_decay"):
        assert name in str(err.value)


# --- GDSF -------------------------------------------------------------------------------


def loaded(policy: GdsfPolicy, state: ModelState, hits: int = 0) -> ModelState:
    policy.on_load(state)
    if hits:
        policy.on_hit(state, hits)
    return state


def first_victim(policy: GdsfPolicy, models: list[ModelState]) -> str:
    return policy.choose_victims(models, 1, now=NOW)[0].model.name


def test_gdsf_prefers_evicting_the_larger_of_two_equally_used_equally_costly_models() -> None:
    policy = GdsfPolicy()
    small = loaded(policy, model("small", footprint=GIB, load_seconds=5.0), hits=3)
    large = loaded(policy, model("large", footprint=8 * GIB, load_seconds=5.0), hits=3)
    assert first_victim(policy, [small, large]) == "large"


def test_gdsf_prefers_evicting_the_cheaper_to_reload_of_two_equal_models() -> None:
    policy = GdsfPolicy()
    slow = loaded(policy, model("slow", load_seconds=20.0), hits=3)
    fast = loaded(policy, model("fast", load_seconds=1.0), hits=3)
    assert first_victim(policy, [slow, fast]) == "fast"


def test_gdsf_prefers_evicting_the_rarely_used_of_two_equal_models() -> None:
    policy = GdsfPolicy()
    busy = loaded(policy, model("busy"), hits=50)
    rare = loaded(policy, model("rare"), hits=2)
    assert first_victim(policy, [busy, rare]) == "rare"


def test_gdsf_without_a_measured_load_time_falls_back_to_a_size_proportional_cost() -> None:
    policy = GdsfPolicy()
    small = loaded(policy, model("small", footprint=GIB, load_seconds=None), hits=2)
    large = loaded(policy, model("large", footprint=8 * GIB, load_seconds=None), hits=2)
    assert policy.priority(small) == pytest.approx(policy.priority(large))
    assert policy.priority(small) == pytest.approx(2 * GIB / policy.fallback_bytes_per_second)


def test_gdsf_on_hit_raises_a_models_priority() -> None:
    policy = GdsfPolicy()
    state = loaded(policy, model("a"))
    before = policy.priority(state)
    policy.on_hit(state)
    policy.on_hit(state, 3)
    assert policy.frequency(state) == 4
    assert policy.priority(state) > before


def test_gdsf_on_evict_raises_the_aging_value_to_the_victims_priority() -> None:
    policy = GdsfPolicy()
    victim = loaded(policy, model("victim"), hits=3)
    priority = policy.priority(victim)
    policy.on_evict(victim)
    assert policy.inflation == pytest.approx(priority)
    assert policy.evictions == 1
    newcomer = loaded(policy, model("newcomer"))
    assert policy.priority(newcomer) > priority


def test_gdsf_forgets_the_frequency_of_an_evicted_model() -> None:
    policy = GdsfPolicy()
    state = loaded(policy, model("a"), hits=10)
    policy.on_evict(state)
    loaded(policy, state)
    assert policy.frequency(state) == 0


def test_gdsf_a_users_unload_does_not_age_the_others() -> None:
    policy = GdsfPolicy()
    state = loaded(policy, model("a"), hits=10)
    policy.on_unload(state)
    assert policy.inflation == 0
    assert policy.frequency(state) == 0


def test_gdsf_ages_out_a_once_popular_model_that_is_no_longer_used() -> None:
    policy = GdsfPolicy()
    stale = loaded(policy, model("stale"), hits=5)
    for i in range(20):
        fresh = loaded(policy, model(f"fresh{i}", loaded_at=NOW - 20 + i), hits=1)
        victim = first_victim(policy, [stale, fresh])
        if victim == "stale":
            break
        policy.on_evict(fresh)
    else:
        pytest.fail("the stale model was never chosen")
    assert i >= 2  # it had earned a few rounds first


def test_gdsf_choosing_victims_changes_no_state() -> None:
    policy = GdsfPolicy()
    models = [loaded(policy, model(f"m{i}"), hits=i + 1) for i in range(3)]
    before = [policy.priority(m) for m in models]
    policy.choose_victims(models, 2 * GIB, now=NOW)
    assert [policy.priority(m) for m in models] == before
    assert policy.inflation == 0


def test_gdsf_trusts_tritons_count_for_a_model_it_never_saw_loaded() -> None:
    policy = GdsfPolicy()
    unseen_busy = model("unseen_busy", inference_count=100)
    unseen_idle = model("unseen_idle", inference_count=0)
    assert first_victim(policy, [unseen_busy, unseen_idle]) == "unseen_idle"


def test_gdsf_counts_a_small_model_as_a_whole_slot_under_max_models() -> None:
    policy = get_policy("gdsf", budget_bytes=80 * GIB, max_models=4)
    assert isinstance(policy, GdsfPolicy)
    assert policy.slot_bytes == 20 * GIB
    tiny = loaded(policy, model("tiny", footprint=GIB // 8, load_seconds=2.0), hits=3)
    bigger = loaded(policy, model("bigger", footprint=4 * GIB, load_seconds=2.0), hits=3)
    assert policy.priority(tiny) == pytest.approx(policy.priority(bigger))


def test_gdsf_reason_shows_the_terms_of_the_priority() -> None:
    policy = GdsfPolicy()
    state = loaded(policy, model("a", footprint=2 * GIB, load_seconds=4.0), hits=5)
    reason = policy.choose_victims([state], 1, now=NOW)[0].reason
    assert reason == (
        "gdsf: least reload time saved per GiB, priority 10 = aging 0 + 5 uses x 4 s reload / 2 GiB"
    )


def test_gdsf_decay_halves_an_unused_models_frequency_every_half_life_of_evictions() -> None:
    policy = GdsfDecayPolicy(half_life=2)
    idle = loaded(policy, model("idle"), hits=8)
    for i in range(4):
        policy.on_evict(loaded(policy, model(f"other{i}")))
    assert policy.frequency(idle) == pytest.approx(2.0)


def test_gdsf_decay_keeps_the_frequency_of_a_model_in_use() -> None:
    policy = GdsfDecayPolicy(half_life=2)
    busy = loaded(policy, model("busy"), hits=1)
    for i in range(4):
        policy.on_hit(busy)
        policy.on_evict(loaded(policy, model(f"other{i}")))
    assert policy.frequency(busy) > 2.0


def test_classic_gdsf_never_decays() -> None:
    policy = GdsfPolicy()
    idle = loaded(policy, model("idle"), hits=8)
    for i in range(10):
        policy.on_evict(loaded(policy, model(f"other{i}")))
    assert policy.frequency(idle) == 8
