"""The memory controller against a fake Triton whose host memory moves with its models."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from manager import serving
from manager.audit import AuditLog
from manager.budget import MemoryBudget, MemoryLimit, ServingConfig
from manager.controller import LOOP_OWNER_FILE, Controller, set_pin, sole_loop
from manager.dynamic import DynamicModelManager
from manager.endpoints import ENDPOINT_KIND, EndpointState, Target
from manager.errors import (
    ControllerRunningError,
    LoadError,
    ManagerError,
    MemoryBudgetError,
    ModelNotFoundError,
    RepositoryError,
    UnloadError,
)
from manager.footprint import CPU_METRIC, Footprint, FootprintStore, MemoryMeter, Usage
from manager.loadtimes import LoadTimes
from manager.modelconfig import TensorSpec, build_config, read_config, write_config
from manager.policies import LruPolicy, ModelState
from manager.repository import Repository, write_json_atomic
from manager.rollout import RolloutPolicy, RolloutState, RolloutStore
from manager.triton import IndexEntry, ModelStats

MIB = 2**20
BASE = 100 * MIB
TOTAL = 64 * 2**30


class FakeTriton:
    """Models with a size each; host memory used = BASE + what is loaded.

    Unloads take one index poll to finish; ``infer`` moves a model's statistics.
    """

    url = "http://fake:8000"

    def __init__(self, sizes: dict[str, int], *, load_delay: float = 0.0) -> None:
        self.sizes = dict(sizes)
        self.state: dict[str, str] = {name: "UNAVAILABLE" for name in sizes}
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.failing: set[str] = set()
        self.counts: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.load_delay = load_delay
        # where loaded models' configs are read (None: nowhere), and the configs loaded
        self.repo: Path | None = None
        self.configs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._clock = 0

    def repository_index(self) -> list[IndexEntry]:
        with self._lock:
            for name, st in self.state.items():
                if st == "UNLOADING":
                    self.state[name] = "UNAVAILABLE"
            return [
                IndexEntry(name, 1, st, "unloaded" if st == "UNAVAILABLE" else "")
                for name, st in sorted(self.state.items())
            ]

    def load_model(self, name: str, config: str | None = None) -> None:
        time.sleep(self.load_delay)
        with self._lock:
            self.loads.append(name)
            if name in self.failing:
                raise LoadError(f"failed to load '{name}': broken on purpose")
            self.state[name] = "READY"
            self.counts[name] = 0
            self.last[name] = 0
            path = self.repo / name / "config.pbtxt" if self.repo is not None else None
            if path is not None and path.is_file():
                self.configs[name] = json_format.MessageToDict(
                    read_config(path), preserving_proto_field_name=True
                )

    def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        with self._lock:
            self.unloads.append(name)
            if self.state.get(name) == "READY":
                self.state[name] = "UNLOADING"

    def model_config(self, name: str) -> dict[str, Any]:
        return self.configs.get(name) or {"name": name, "backend": "python", "max_batch_size": 0}

    def statistics(self, name: str | None = None) -> list[ModelStats]:
        return [
            ModelStats(n, 1, self.last.get(n, 0), self.counts.get(n, 0), 0, 0, 0, 0, 0, 0, 0, 0, 0)
            for n, st in sorted(self.state.items())
            if st == "READY" and (name is None or n == name)
        ]

    def metrics_text(self) -> str:
        used = BASE + sum(self.sizes[n] for n, st in self.state.items() if st != "UNAVAILABLE")
        return f"nv_cpu_memory_used_bytes {used}\nnv_cpu_memory_total_bytes {TOTAL}\n"

    def infer(self, name: str, count: int = 1) -> None:
        assert self.state[name] == "READY", f"{name} is {self.state[name]}"
        self._clock = max(self._clock + 1, int(time.time() * 1000))
        self.counts[name] += count
        self.last[name] = self._clock

    def loaded(self) -> set[str]:
        return {n for n, st in self.state.items() if st == "READY"}


def write_model(repo: Path, name: str, *, size_bytes: int | None = None) -> None:
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    config = build_config(
        name,
        [TensorSpec("INPUT0", "FP32", (-1,))],
        [TensorSpec("OUTPUT0", "FP32", (-1,))],
        backend="python",
    )
    write_config(folder / "config.pbtxt", config)
    (folder / "1" / "model.py").write_text("# code only\n")
    if size_bytes is not None:
        write_json_atomic(folder / "1" / "tritonctl.json", {"size_bytes": size_bytes})


def seed_footprint(repo: Path, name: str, nbytes: int, load_seconds: float = 2.0) -> None:
    FootprintStore(repo).record(
        Footprint(name, 1, nbytes, CPU_METRIC, measured_at="t", load_seconds=load_seconds)
    )


def make(
    tmp_path: Path,
    sizes: dict[str, int],
    *,
    limit: int | None = None,
    max_models: int | None = None,
    policy: str = "lru",
    pinned: frozenset[str] = frozenset(),
    known: bool = True,
    high: float = 0.95,
    low: float = 0.85,
) -> tuple[Controller, FakeTriton]:
    """A controller over a fake server; ``known``: footprints measured before."""
    fake = FakeTriton(sizes)
    fake.repo = tmp_path
    for name, size in sizes.items():
        write_model(tmp_path, name)
        if known:
            seed_footprint(tmp_path, name, size)
    config = ServingConfig(
        budget=MemoryBudget(
            limit=MemoryLimit(num_bytes=limit) if limit else None,
            max_models=max_models,
            high_watermark=high,
            low_watermark=low,
        ),
        eviction_policy=policy,
        pinned=pinned,
    )
    meter = MemoryMeter(fake, metrics_interval_s=0.001)
    return Controller(fake, tmp_path, config, meter=meter), fake


def audit(tmp_path: Path, action: str) -> list[dict[str, Any]]:
    return [r for r in AuditLog(tmp_path).read() if r["action"] == action]


# --------------------------------------------------------------------------- ensure_loaded


def test_ensure_loaded_of_a_loaded_model_is_a_cache_hit_that_loads_nothing(
    tmp_path: Path,
) -> None:
    ctl, fake = make(tmp_path, {"a": 100 * MIB}, limit=BASE + 500 * MIB)
    first = ctl.ensure_loaded("a")
    again = ctl.ensure_loaded("a")
    assert not first.cache_hit and again.cache_hit
    assert fake.loads == ["a"]
    assert ctl.stats.loads == 1 and ctl.stats.cache_hits == 1


def test_ensure_loaded_evicts_the_least_recently_inferred_model_to_make_room(
    tmp_path: Path,
) -> None:
    sizes = {"a": 200 * MIB, "b": 200 * MIB, "c": 200 * MIB}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 450 * MIB)
    ctl.ensure_loaded("b")
    ctl.ensure_loaded("a")
    fake.infer("a")
    fake.infer("b")

    result = ctl.ensure_loaded("c")

    assert [e.model for e in result.evicted] == ["a"]
    assert fake.loaded() == {"b", "c"}
    assert fake.unloads == ["a"]
    # the victim was gone before the load started
    assert fake.loads == ["b", "a", "c"]
    (record,) = audit(tmp_path, "evict")
    assert record["model"] == "a" and record["bytes"] == 200 * MIB
    assert "make room for c" in record["reason"] and "lru" in record["reason"]


def test_ensure_loaded_with_fifo_evicts_the_first_loaded(tmp_path: Path) -> None:
    sizes = {"a": 200 * MIB, "b": 200 * MIB, "c": 200 * MIB}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 450 * MIB, policy="fifo")
    ctl.ensure_loaded("b")
    time.sleep(0.01)
    ctl.ensure_loaded("a")
    fake.infer("a")
    fake.infer("b")
    assert [e.model for e in ctl.ensure_loaded("c").evicted] == ["b"]


def again(ctl: Controller, fake: FakeTriton) -> Controller:
    """A new controller on the same repository, as the next CLI command makes."""
    return Controller(fake, ctl.repo, ctl.config, meter=MemoryMeter(fake, metrics_interval_s=0.001))


def plain_loads(tmp_path: Path, fake: FakeTriton, *names: str) -> None:
    """``tritonctl load`` without a budget, one model after the other."""
    for name in names:
        serving.load(fake, name, repo=tmp_path)
        time.sleep(0.02)


def test_fifo_in_a_new_process_evicts_the_first_of_the_plain_loads(tmp_path: Path) -> None:
    sizes = {"a": MIB, "b": MIB, "c": MIB, "d": MIB}
    first, fake = make(tmp_path, sizes, max_models=3, policy="fifo", known=False)
    plain_loads(tmp_path, fake, "c", "b", "a")
    time.sleep(0.2)
    # each CLI command makes its own controller: the load times come from the repository
    ctl = again(first, fake)
    plan = ctl.plan()
    assert [r.model for r in plan.ranking] == ["c", "b", "a"]
    assert all("loaded 0.0 s ago" not in r.reason for r in plan.ranking)
    result = ctl.ensure_loaded("d")
    assert [e.model for e in result.evicted] == ["c"]


def test_lru_in_a_new_process_evicts_the_least_recent_inference_of_plain_loads(
    tmp_path: Path,
) -> None:
    sizes = {"a": MIB, "b": MIB, "c": MIB, "d": MIB}
    first, fake = make(tmp_path, sizes, max_models=3, policy="lru", known=False)
    plain_loads(tmp_path, fake, "a", "b", "c")
    for name in ("b", "c", "a"):
        fake.infer(name)
    ctl = again(first, fake)
    result = ctl.ensure_loaded("d")
    assert [e.model for e in result.evicted] == ["b"]
    assert "lru: last inference" in result.evicted[0].reason


def test_a_model_loaded_by_another_client_ages_from_when_it_was_first_seen(
    tmp_path: Path,
) -> None:
    ctl, fake = make(tmp_path, {"a": MIB, "b": MIB}, max_models=5, policy="fifo")
    fake.state["a"] = "READY"  # loaded behind tritonctl's back
    first = LoadTimes(tmp_path).all()
    ctl.plan()
    seen = LoadTimes(tmp_path).all()[("a", 1)]
    time.sleep(0.05)
    ctl.ensure_loaded("b")
    plan = again(ctl, fake).plan()
    assert first == {}
    assert LoadTimes(tmp_path).all()[("a", 1)] == seen
    assert [r.model for r in plan.ranking] == ["a", "b"]
    # unloaded: the record goes, so a later load starts a new one
    fake.state["a"] = "UNAVAILABLE"
    again(ctl, fake).plan()
    assert ("a", 1) not in LoadTimes(tmp_path).all()


def test_a_model_that_cannot_fit_is_refused_before_anything_is_loaded_or_evicted(
    tmp_path: Path,
) -> None:
    ctl, fake = make(tmp_path, {"a": 200 * MIB, "big": 900 * MIB}, limit=BASE + 500 * MIB, high=1.0)
    ctl.ensure_loaded("a")

    with pytest.raises(MemoryBudgetError) as caught:
        ctl.ensure_loaded("big")

    message = str(caught.value)
    # used 300 MiB + 900 MiB - limit 600 MiB = 600 MiB to free; a holds 200 MiB
    missing = re.search(r"\((\d+) bytes\) missing", message)
    assert missing is not None and int(missing.group(1)) == 400 * MIB
    assert "cannot load big" in message and "evictable" in message
    assert fake.loads == ["a"] and fake.unloads == []
    assert audit(tmp_path, "refuse")[-1]["model"] == "big"


def test_max_models_evicts_to_stay_within_the_count(tmp_path: Path) -> None:
    sizes = {"a": MIB, "b": MIB, "c": MIB}
    ctl, fake = make(tmp_path, sizes, max_models=2)
    ctl.ensure_loaded("a")
    ctl.ensure_loaded("b")
    fake.infer("a")
    result = ctl.ensure_loaded("c")
    assert [e.model for e in result.evicted] == ["b"]
    assert "max_models" in result.evicted[0].reason
    assert fake.loaded() == {"a", "c"}


def test_a_refusal_by_max_models_blames_the_count_not_the_memory(tmp_path: Path) -> None:
    sizes = {"a": MIB, "b": MIB, "c": MIB}
    ctl, fake = make(
        tmp_path, sizes, limit=BASE + 500 * MIB, max_models=2, pinned=frozenset({"a", "b"})
    )
    ctl.ensure_loaded("a")
    ctl.ensure_loaded("b")

    with pytest.raises(MemoryBudgetError) as caught:
        ctl.ensure_loaded("c")

    message = str(caught.value)
    assert "2 models loaded and 1 to load exceed max_models 2" in message
    assert "exceed the high watermark" not in message  # 3 MiB fit in 500 MiB
    # each protected model is named, with why
    assert "2 protected: a:1 1.0 MiB (pinned in the serving config), b:1" in message
    assert fake.loaded() == {"a", "b"}


def test_plan_for_a_model_or_version_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    ctl, _ = make(tmp_path, {"a": MIB}, max_models=2)
    with pytest.raises(ModelNotFoundError, match="'nope' is not in the repository"):
        ctl.plan("nope")
    with pytest.raises(ModelNotFoundError, match=r"no version 9 .*\(it has: 1\)"):
        ctl.plan("a", 9)
    with pytest.raises(ModelNotFoundError, match="no version 9"):
        ctl.ensure_loaded("a", 9)


def test_first_load_measures_the_footprint_and_stores_it_with_its_method(
    tmp_path: Path,
) -> None:
    ctl, _ = make(tmp_path, {"a": 300 * MIB}, limit=BASE + 2000 * MIB, known=False)
    result = ctl.ensure_loaded("a")
    (footprint,) = result.footprints
    assert footprint.bytes == 300 * MIB and footprint.method == CPU_METRIC
    stored = FootprintStore(tmp_path).get("a", 1)
    assert stored is not None and stored.bytes == 300 * MIB
    assert stored.load_seconds is not None and stored.measured_at
    (record,) = audit(tmp_path, "load")
    assert record["bytes"] == 300 * MIB and "cpu-metric" in record["reason"]


def test_a_first_load_is_estimated_from_what_was_measured_for_other_models(
    tmp_path: Path,
) -> None:
    sizes = {"a": 200 * MIB, "b": 200 * MIB}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 300 * MIB, known=False)
    ctl.ensure_loaded("a")  # estimated 32 MiB (nothing measured yet), measured 200 MiB
    # b was never measured; its estimate is a's measurement, so it does not fit next to a
    plan = ctl.plan("b")
    assert plan.footprint is not None and plan.footprint.method == "estimate"
    assert plan.footprint.bytes == 200 * MIB
    result = ctl.ensure_loaded("b")
    assert [e.model for e in result.evicted] == ["a"]
    assert fake.loaded() == {"b"}


def test_a_failed_load_is_counted_audited_and_raised(tmp_path: Path) -> None:
    ctl, fake = make(tmp_path, {"a": MIB}, limit=BASE + 100 * MIB)
    fake.failing.add("a")
    with pytest.raises(LoadError, match="broken on purpose"):
        ctl.ensure_loaded("a")
    assert ctl.stats.failures == 1 and ctl.stats.loads == 0
    assert audit(tmp_path, "load-failed")[0]["model"] == "a"


def test_a_failed_load_serves_again_what_was_evicted_for_it(tmp_path: Path) -> None:
    sizes = {"a": 200 * MIB, "b": 200 * MIB, "broken": 300 * MIB}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 500 * MIB, high=1.0)
    ctl.ensure_loaded("a")
    ctl.ensure_loaded("b")
    fake.failing.add("broken")

    with pytest.raises(LoadError) as caught:
        ctl.ensure_loaded("broken")

    message = str(caught.value)
    assert "broken on purpose" in message
    assert "served again what was evicted for it: a:1" in message
    assert fake.unloads == ["a"]  # evicted to make room, then
    assert fake.loaded() == {"a", "b"}  # served again
    assert [r["model"] for r in audit(tmp_path, "restore")] == ["a"]


def test_a_load_larger_than_expected_evicts_others_back_under_the_limit_at_once(
    tmp_path: Path,
) -> None:
    ctl, fake = make(
        tmp_path, {"a": 200 * MIB, "big": 400 * MIB}, limit=BASE + 500 * MIB, known=False, high=1.0
    )
    seed_footprint(tmp_path, "a", 200 * MIB)
    ctl.ensure_loaded("a")
    assert ctl.plan("big").footprint.bytes < 300 * MIB  # type: ignore[union-attr]

    result = ctl.ensure_loaded("big")  # fits as estimated; measured, it does not

    assert [e.model for e in result.evicted] == ["a"]
    assert fake.loaded() == {"big"}
    (record,) = audit(tmp_path, "evict")
    assert record["model"] == "a" and "back under the high watermark" in record["reason"]
    assert "big:1 measured 400.0 MiB" in record["reason"]


def test_a_load_that_cannot_fit_once_measured_is_taken_back_and_its_victims_served_again(
    tmp_path: Path,
) -> None:
    sizes = {"a": 200 * MIB, "b": 200 * MIB, "big": 450 * MIB}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 420 * MIB, known=False, high=1.0)
    seed_footprint(tmp_path, "a", 200 * MIB)
    seed_footprint(tmp_path, "b", 200 * MIB)
    ctl.ensure_loaded("a")
    ctl.ensure_loaded("b")
    fake.infer("b")

    with pytest.raises(MemoryBudgetError) as caught:
        ctl.ensure_loaded("big")  # a goes for its estimate; measured, b going is not enough

    message = str(caught.value)
    assert "cannot keep big:1 loaded: measured 450.0 MiB" in message and "unloaded again" in message
    assert "served again what was evicted for it: a:1" in message
    assert fake.loaded() == {"a", "b"}
    assert fake.unloads == ["a", "big"]
    assert [r["model"] for r in audit(tmp_path, "restore")] == ["a"]
    # its measured footprint is kept: the next try is refused before anything is loaded
    loads = list(fake.loads)
    with pytest.raises(MemoryBudgetError, match="exceed the high watermark"):
        ctl.ensure_loaded("big")
    assert fake.loads == loads and fake.loaded() == {"a", "b"}


class StubMeter(MemoryMeter):
    """Reads each loaded version's memory as a local server's stubs show it."""

    def usage(self, *, fresh: bool = False) -> Usage:
        usage = super().usage(fresh=fresh)
        fake = self.source
        assert isinstance(fake, FakeTriton)
        live = {(n, 1): fake.sizes[n] for n in fake.loaded()}
        return replace(usage, per_version=live)


def test_a_version_loaded_without_a_budget_keeps_what_it_held_as_its_footprint(
    tmp_path: Path,
) -> None:
    fake = FakeTriton({"a": 300 * MIB, "b": 300 * MIB})
    for name in fake.sizes:
        write_model(tmp_path, name)
    config = ServingConfig(budget=MemoryBudget(limit=MemoryLimit(num_bytes=BASE + 500 * MIB)))
    ctl = Controller(fake, tmp_path, config, meter=StubMeter(fake, metrics_interval_s=0.001))
    serving.load(fake, "a", repo=tmp_path)  # a plain load: nothing measured
    assert FootprintStore(tmp_path).get("a", 1) is None

    ctl.plan()  # the controller sees it loaded, holding 300 MiB

    stored = FootprintStore(tmp_path).get("a", 1)
    assert stored is not None and stored.bytes == 300 * MIB and stored.measured
    serving.unload(fake, "a")
    ctl.plan()
    # unloaded, it is planned for with what it held, not a default guess
    assert ctl.plan("a").footprint == FootprintStore(tmp_path).get("a", 1)
    assert ctl.plan("a").need_bytes == 0
    ctl.ensure_loaded("b")
    assert ctl.plan("a").need_bytes > 0


def test_versions_still_loading_hold_their_slot_of_max_models(tmp_path: Path) -> None:
    sizes = {"a": MIB, "b": MIB, "c": MIB, "slow": MIB}
    ctl, fake = make(tmp_path, sizes, max_models=3)
    ctl.ensure_loaded("a")
    fake.state["slow"] = "LOADING"  # a load that ran past its wait: Triton goes on

    assert ctl.plan("b").need_slots == 0  # a, slow, b: 3
    ctl.ensure_loaded("b")
    assert fake.unloads == []
    assert ctl.plan("c").need_slots == 1
    result = ctl.ensure_loaded("c")  # a, b loaded, slow coming: one must go
    assert [e.model for e in result.evicted] == ["a"]
    assert fake.loaded() == {"b", "c"}


def test_a_version_loaded_outside_tritonctl_is_dated_when_seen_not_by_an_old_footprint(
    tmp_path: Path,
) -> None:
    ctl, fake = make(tmp_path, {"a": MIB, "d": MIB}, policy="fifo")
    FootprintStore(tmp_path).record(
        Footprint("d", 1, MIB, CPU_METRIC, measured_at="t"), loaded_at=1000.0
    )
    ctl.ensure_loaded("a")
    fake.state["d"] = "READY"  # loaded straight through Triton
    fake.counts["d"] = fake.last["d"] = 0
    seen = time.time()
    ctl.plan()
    assert LoadTimes(tmp_path).all()[("d", 1)] >= seen - 1


def test_a_load_waits_for_another_processs_load_only_within_its_wait_and_plans_do_not(
    tmp_path: Path,
) -> None:
    from filelock import FileLock

    from manager.controller import LOCK_FILE

    ctl, fake = make(tmp_path, {"a": MIB, "b": MIB}, max_models=2)
    ctl.ensure_loaded("a")
    ctl.load_timeout = 0.5
    other = FileLock(str(tmp_path / ".tritonctl" / LOCK_FILE))  # another process loading
    with other:
        started = time.monotonic()
        with pytest.raises(RepositoryError, match="another tritonctl process is loading"):
            ctl.ensure_loaded("b")
        assert time.monotonic() - started < 5
        plan = ctl.plan("b")  # a read does not wait for it
    assert plan.loaded == 1
    assert fake.loaded() == {"a"}
    ctl.ensure_loaded("b")
    assert fake.loaded() == {"a", "b"}


def test_a_load_past_its_wait_is_audited_as_still_running_not_as_failed(tmp_path: Path) -> None:
    fake = FakeTriton({"a": MIB}, load_delay=2.0)
    write_model(tmp_path, "a")
    ctl = Controller(fake, tmp_path, ServingConfig(budget=MemoryBudget(max_models=2)))
    ctl.load_timeout = 0.1
    with pytest.raises(serving.StillLoadingError):
        ctl.ensure_loaded("a")
    assert [r["model"] for r in audit(tmp_path, "load-still-running")] == ["a"]
    assert audit(tmp_path, "load-failed") == [] and ctl.stats.failures == 0


def test_a_load_past_its_wait_says_what_was_evicted_for_it(tmp_path: Path) -> None:
    ctl, fake = make(tmp_path, {"a": 300 * MIB, "b": 300 * MIB}, limit=BASE + 500 * MIB)
    ctl.ensure_loaded("a")
    fake.load_delay, ctl.load_timeout = 2.0, 0.1
    with pytest.raises(serving.StillLoadingError, match="evicted for it: a:1"):
        ctl.ensure_loaded("b")


def test_an_unknown_model_is_model_not_found(tmp_path: Path) -> None:
    ctl, _ = make(tmp_path, {"a": MIB})
    with pytest.raises(ModelNotFoundError, match="ghost"):
        ctl.ensure_loaded("ghost")


# --------------------------------------------------------------------------- protection


def test_pinned_models_are_never_chosen_whatever_the_policy_says(tmp_path: Path) -> None:
    sizes = {"a": 200 * MIB, "b": 200 * MIB, "c": 200 * MIB, "d": 200 * MIB}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 650 * MIB, pinned=frozenset({"a"}))
    ctl.ensure_loaded("a")
    ctl.ensure_loaded("b")
    ctl.ensure_loaded("c")
    set_pin(tmp_path, "b", True)
    fake.infer("c")  # a and b are less recently used than c, but pinned
    result = ctl.ensure_loaded("d")
    assert [e.model for e in result.evicted] == ["c"]
    assert fake.loaded() == {"a", "b", "d"}


def test_pins_are_audited_and_need_a_model_in_the_repository(tmp_path: Path) -> None:
    write_model(tmp_path, "m")
    assert set_pin(tmp_path, "m", True)
    assert not set_pin(tmp_path, "m", True)
    assert set_pin(tmp_path, "m", False)
    assert [r["action"] for r in AuditLog(tmp_path).read()] == ["pin", "unpin"]
    with pytest.raises(ModelNotFoundError):
        set_pin(tmp_path, "ghost", True)


def test_endpoint_targets_and_rollout_models_are_protected(tmp_path: Path) -> None:
    sizes = {"routed": 200 * MIB, "rolling": 200 * MIB, "free": 200 * MIB, "new": 200 * MIB}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 650 * MIB)
    for name in ("routed", "rolling", "free"):
        ctl.ensure_loaded(name)
    fake.infer("free")
    routes = tmp_path / ".tritonctl" / "endpoints"
    routes.mkdir(parents=True)
    state = EndpointState("classify", "pinned", [Target("routed", 1)])
    write_json_atomic(routes / "classify.json", state.to_dict())
    RolloutStore(Repository(tmp_path)).save(
        RolloutState("other", "rolling", 1, 2, RolloutPolicy(), status="running")
    )

    plan = ctl.plan("new")
    why = {p.model: p.reason for p in plan.protected}
    assert "target of endpoint classify" in why["routed"]
    assert "rollout of endpoint other" in why["rolling"]
    assert [v.model for v in plan.victims] == ["free"]
    assert [e.model for e in ctl.ensure_loaded("new").evicted] == ["free"]


def test_endpoint_ensembles_are_not_candidates(tmp_path: Path) -> None:
    sizes = {"ep": 0, "a": 200 * MIB, "b": 200 * MIB}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 300 * MIB)
    write_json_atomic(tmp_path / "ep" / "1" / "tritonctl.json", {"kind": ENDPOINT_KIND})
    ctl.ensure_loaded("ep")
    ctl.ensure_loaded("a")
    fake.infer("a")
    assert [e.model for e in ctl.ensure_loaded("b").evicted] == ["a"]
    assert "ep" in fake.loaded()
    assert all(r.model != "ep" for r in ctl.plan().ranking)


def test_evicting_a_protected_model_by_hand_needs_force(tmp_path: Path) -> None:
    ctl, fake = make(tmp_path, {"a": 200 * MIB}, pinned=frozenset({"a"}))
    ctl.ensure_loaded("a")
    with pytest.raises(UnloadError, match="protected"):
        ctl.evict("a")
    evicted = ctl.evict("a", force=True)
    assert [e.model for e in evicted] == ["a"] and fake.loaded() == set()
    assert "forced" in audit(tmp_path, "evict")[0]["reason"]
    assert ctl.evict("a", force=True) == []  # not loaded any more: nothing to do
    # nor without force: an unloaded model frees nothing, pinned or not (as --dry-run says)
    assert ctl.evict("a") == [] and ctl.preview_evict("a").versions == ()


# --------------------------------------------------------------------------- the loop


def test_run_once_evicts_down_to_the_low_watermark_when_above_the_high_one(
    tmp_path: Path,
) -> None:
    sizes = {n: 100 * MIB for n in "abcde"}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 1000 * MIB, high=0.9, low=0.6)
    for name in "abcde":
        ctl.ensure_loaded(name)
    assert ctl.run_once() == []  # 600 MiB used of 1100: under the high watermark
    fake.sizes["e"] = 500 * MIB  # e grows: 1000 MiB > 0.9 x 1100 MiB
    for name in "bcde":
        fake.infer(name)

    evicted = ctl.run_once()

    # down to 0.6 x 1100 = 660 MiB: a (least recent, 100) then b (100), then c ... until <=
    assert [e.model for e in evicted] == ["a", "b", "c", "d"]
    assert fake.loaded() == {"e"}
    reasons = [r["reason"] for r in audit(tmp_path, "evict")]
    assert all("high watermark" in r for r in reasons)


def test_run_once_feeds_the_policy_with_the_growth_of_inference_count(tmp_path: Path) -> None:
    hits: list[tuple[str, int]] = []

    class Recording(LruPolicy):
        def on_hit(self, model: ModelState, count: int = 1) -> None:
            hits.append((model.name, count))

    ctl, fake = make(tmp_path, {"a": MIB}, limit=BASE + 100 * MIB)
    ctl._policy = Recording()
    ctl.ensure_loaded("a")
    fake.infer("a", 3)
    ctl.run_once()
    fake.infer("a", 2)
    ctl.run_once()
    ctl.run_once()
    assert hits == [("a", 3), ("a", 2)]


def test_over_budget_with_nothing_evictable_is_an_alert_not_an_eviction(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctl, fake = make(
        tmp_path, {"a": 100 * MIB}, limit=BASE + 100 * MIB, pinned=frozenset({"a"}), high=1.0
    )
    ctl.ensure_loaded("a")
    fake.sizes["a"] = 400 * MIB
    with caplog.at_level(logging.WARNING, logger="manager.controller"):
        assert ctl.run_once() == []
        assert ctl.run_once() == []
    assert len(audit(tmp_path, "alert")) == 1 and fake.loaded() == {"a"}
    # warned once, as audited, not at every poll
    assert sum("evicting all that may go" in r.message for r in caplog.records) == 1


def test_too_many_models_with_nothing_evictable_alerts_about_the_count_not_memory(
    tmp_path: Path,
) -> None:
    # far under any memory limit: the alert must speak of max_models only
    sizes = {"a": MIB, "b": MIB, "c": MIB}
    ctl, fake = make(tmp_path, sizes, max_models=2, pinned=frozenset(sizes))
    for name in sizes:  # loaded behind the controller's back
        fake.load_model(name)
    assert ctl.run_once() == []
    [alert] = audit(tmp_path, "alert")
    assert alert["reason"].startswith("3 models are loaded, more than max_models 2")
    assert "watermark" not in alert["reason"]
    assert fake.loaded() == set(sizes)


def test_plan_changes_nothing_and_ranks_every_evictable_model(tmp_path: Path) -> None:
    sizes = {"a": 100 * MIB, "b": 300 * MIB}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 1000 * MIB, policy="memory_pressure")
    ctl.ensure_loaded("a")
    ctl.ensure_loaded("b")
    plan = ctl.plan()
    assert plan.victims == () and [r.model for r in plan.ranking] == ["b", "a"]
    assert "memory_pressure" in plan.ranking[0].reason
    assert json.loads(json.dumps(plan.to_json()))["ranking"][0]["model"] == "b"
    assert fake.unloads == []


def test_preview_of_evicting_a_model_says_what_it_frees_and_changes_nothing(
    tmp_path: Path,
) -> None:
    sizes = {"a": 100 * MIB, "b": 300 * MIB, "c": MIB}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 1000 * MIB, pinned=frozenset({"b"}))
    ctl.ensure_loaded("a")
    ctl.ensure_loaded("b")

    free = ctl.preview_evict("a")
    assert (free.bytes, free.protected, [v.version for v in free.versions]) == (
        100 * MIB,
        None,
        [1],
    )
    assert "pinned" in (ctl.preview_evict("b").protected or "")
    assert ctl.preview_evict("c").versions == ()
    assert json.loads(json.dumps(free.to_json()))["would_evict"][0]["model"] == "a"
    assert fake.unloads == [] and fake.loaded() == {"a", "b"}
    with pytest.raises(ModelNotFoundError):
        ctl.preview_evict("ghost")


# --------------------------------------------------------------------------- async API


def dynamic(tmp_path: Path, fake: FakeTriton, **kw: Any) -> DynamicModelManager:
    for name, size in fake.sizes.items():
        write_model(tmp_path, name)
        seed_footprint(tmp_path, name, size)
    manager = DynamicModelManager(repo=tmp_path, control=fake, **kw)
    manager.controller.meter = MemoryMeter(fake, metrics_interval_s=0.001)
    return manager


def test_concurrent_loads_of_one_model_do_one_load(tmp_path: Path) -> None:
    fake = FakeTriton({"a": MIB, "b": MIB}, load_delay=0.2)
    manager = dynamic(tmp_path, fake, max_models=4, eviction_policy="lru")

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(manager.load_model("a") for _ in range(5)))

    results = asyncio.run(scenario())
    assert fake.loads == ["a"]
    assert all(r.versions == (1,) for r in results)
    stats = manager.stats()
    assert stats["loads"] == 1 and stats["cache_hits"] == 4 and stats["coalesced"] == 4


def test_the_async_manager_evicts_counts_and_unloads(tmp_path: Path) -> None:
    fake = FakeTriton({"a": 200 * MIB, "b": 200 * MIB, "c": 200 * MIB})
    limit_gb = (BASE + 450 * MIB) / 1e9
    manager = dynamic(tmp_path, fake, memory_limit_gb=limit_gb, eviction_policy="lru")

    async def scenario() -> None:
        await manager.load_model("a")
        await manager.load_model("b")
        fake.infer("b")
        fake.infer("a")
        await manager.load_model("c")
        await manager.load_model("c")
        await manager.unload_model("a")
        fake.failing.add("b")
        with pytest.raises(LoadError):
            await manager.load_model("b")

    asyncio.run(scenario())
    assert fake.loaded() == {"c"}
    stats = manager.stats()
    assert stats["loads"] == 3 and stats["cache_hits"] == 1
    assert stats["evictions"] == 1 and stats["failures"] == 1
    assert stats["average_load_seconds"] >= 0


def test_the_sync_controller_is_safe_from_many_threads(tmp_path: Path) -> None:
    sizes = {n: 100 * MIB for n in "abcdef"}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 350 * MIB)
    errors: list[BaseException] = []

    def worker(names: str) -> None:
        try:
            for name in names:
                ctl.ensure_loaded(name)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in ("abc", "def", "fab")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(fake.loaded()) <= 3


def test_switch_active_model_makes_room_for_the_model_then_repoints_the_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeTriton({"a": 200 * MIB, "b": 200 * MIB})
    manager = dynamic(tmp_path, fake, max_models=1, eviction_policy="lru")
    calls: list[tuple[str, str, int | None, set[str]]] = []

    def switch(
        self: Any,
        name: str,
        model: str,
        version: int | None = None,
        *,
        force: bool = False,
        drain: bool = False,
    ) -> EndpointState:
        # the defaults: an endpoint's clients are kept safe, their sequences too
        assert force is False and drain is True
        # the budget applies to what the switch loads, but its lock is not held around
        # the whole switch (a stateful endpoint's may wait for its sequences to end)
        assert self.admission is not None
        free: list[bool] = []

        def probe() -> None:
            if manager.controller._lock.acquire(timeout=0):
                manager.controller._lock.release()
                free.append(True)

        prober = threading.Thread(target=probe)
        prober.start()
        prober.join()
        assert free == [True]
        calls.append((name, model, version, fake.loaded()))
        return EndpointState(name, "pinned", [Target(model, version or 1)])

    monkeypatch.setattr("manager.dynamic.Endpoints.switch", switch)

    async def scenario() -> EndpointState:
        await manager.load_model("a")
        return await manager.switch_active_model("classify", "b", 1)

    state = asyncio.run(scenario())
    assert state.targets == [Target("b", 1)]
    assert calls == [("classify", "b", 1, {"b"})]  # b loaded (a evicted) before the switch


def test_run_polls_until_the_iterations_are_done(tmp_path: Path) -> None:
    ctl, fake = make(tmp_path, {"a": 600 * MIB}, limit=BASE + 1000 * MIB, high=0.6, low=0.5)
    fake.load_model("a")  # loaded outside the controller: 700 MiB used, above 660
    ctl.run(0.001, iterations=2)
    assert fake.loaded() == set()
    assert len(audit(tmp_path, "evict")) == 1


def test_a_second_controller_loop_on_one_repository_is_refused(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from manager.cli import main

    ctl, fake = make(tmp_path, {"a": 600 * MIB}, limit=BASE + 1000 * MIB, high=0.6, low=0.5)
    manager = DynamicModelManager(repo=tmp_path, control=fake, max_models=4)
    with sole_loop(tmp_path):
        owner = json.loads((tmp_path / ".tritonctl" / LOOP_OWNER_FILE).read_text())
        with pytest.raises(ControllerRunningError, match=rf"pid {owner['pid']} on .*stop that"):
            ctl.run(0.001, iterations=1)
        with pytest.raises(ControllerRunningError):
            asyncio.run(manager.run_controller(0.001, stop=asyncio.Event()))
        argv = ["--repo", str(tmp_path), "--url", "http://127.0.0.1:1", "controller", "run"]
        result = CliRunner().invoke(main, [*argv, "--iterations", "1"])
        assert result.exit_code == 1 and "a controller loop already runs" in result.output
    assert not (tmp_path / ".tritonctl" / LOOP_OWNER_FILE).exists()
    fake.load_model("a")  # above the high watermark: the loop, free to run now, evicts it
    ctl.run(0.001, iterations=1)
    assert fake.loaded() == set()


def test_the_async_controller_loop_survives_a_failed_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeTriton({"a": MIB})
    manager = dynamic(tmp_path, fake, max_models=4)
    polls: list[int] = []

    def run_once() -> list[Any]:
        polls.append(1)
        if len(polls) == 1:
            raise ManagerError("Triton at http://x is not reachable")
        return []

    monkeypatch.setattr(manager.controller, "run_once", run_once)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(manager.run_controller(0.001, stop=stop))
        while len(polls) < 3:
            await asyncio.sleep(0.001)
        stop.set()
        await task

    asyncio.run(scenario())
    assert len(polls) >= 3


def test_cli_pin_and_unpin_need_no_server(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from manager.cli import main
    from manager.pins import PinStore

    write_model(tmp_path, "m")
    runner = CliRunner()
    result = runner.invoke(main, ["--repo", str(tmp_path), "pin", "m"])
    assert result.exit_code == 0 and "pinned m" in result.output
    assert PinStore(tmp_path).names() == {"m"}
    result = runner.invoke(main, ["--repo", str(tmp_path), "unpin", "m", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["changed"] is True
    result = runner.invoke(main, ["--repo", str(tmp_path), "pin", "ghost"])
    assert result.exit_code != 0 and "ghost" in result.output


def test_cli_unpin_says_a_pin_in_the_yaml_stays_and_where_to_remove_it(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from manager.cli import main

    write_model(tmp_path, "cfgpin")
    write_model(tmp_path, "loose")
    (tmp_path / "tritonctl.yaml").write_text("pinned: [cfgpin]\n")
    runner = CliRunner()

    result = runner.invoke(main, ["--repo", str(tmp_path), "unpin", "cfgpin"])
    assert result.exit_code == 1
    assert f"cfgpin is still pinned in {tmp_path / 'tritonctl.yaml'}" in result.output
    assert "already unpinned" not in result.output
    result = runner.invoke(main, ["--repo", str(tmp_path), "unpin", "cfgpin", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["pinned_in"] == str(tmp_path / "tritonctl.yaml")

    result = runner.invoke(main, ["--repo", str(tmp_path), "unpin", "loose"])
    assert result.exit_code == 0 and result.output == "loose was not pinned\n"


def test_cli_warns_once_of_a_pinned_name_the_repository_lacks(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from manager.cli import main

    write_model(tmp_path, "real")
    settings = tmp_path / "tritonctl.yaml"
    settings.write_text("pinned: [real, reall]\n")
    result = CliRunner().invoke(main, ["--repo", str(tmp_path), "unpin", "real"])
    warning = f"warning: {settings} pins 'reall', which is not a model in {tmp_path}"
    assert result.output.count(warning) == 1, result.output
    assert "'real'," not in result.output

    settings.write_text("pinned: [real]\n")
    result = CliRunner().invoke(main, ["--repo", str(tmp_path), "unpin", "real"])
    assert "warning" not in result.output


def test_cli_rejects_a_memory_limit_that_is_not_a_size(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from manager.cli import main

    write_model(tmp_path, "m")
    argv = ["--repo", str(tmp_path), "--url", "http://127.0.0.1:1", "--memory-limit", "lots"]
    result = CliRunner().invoke(main, [*argv, "load", "m"])
    assert result.exit_code != 0 and "invalid memory limit 'lots'" in result.output


def test_run_once_gets_under_the_high_watermark_when_the_low_one_is_out_of_reach(
    tmp_path: Path,
) -> None:
    sizes = {"a": 300 * MIB, "b": 300 * MIB}
    ctl, fake = make(
        tmp_path, sizes, limit=BASE + 700 * MIB, pinned=frozenset({"a"}), high=0.85, low=0.3
    )
    ctl.ensure_loaded("a")
    fake.load_model("b")  # loaded outside the controller: 700 of 800 MiB > 680
    evicted = ctl.run_once()  # down to 240 is impossible with a pinned
    assert [e.model for e in evicted] == ["b"]
    assert "evicting down to 680.0 MiB (the high watermark)" in evicted[0].reason
    assert fake.loaded() == {"a"}


def test_run_once_gets_under_the_limit_when_the_high_watermark_is_out_of_reach(
    tmp_path: Path,
) -> None:
    sizes = {"a": 300 * MIB, "b": 300 * MIB, "c": 200 * MIB}
    ctl, fake = make(
        tmp_path, sizes, limit=BASE + 700 * MIB, pinned=frozenset({"a", "b"}), high=0.85, low=0.3
    )
    for name in sizes:  # loaded outside the controller (e.g. by hand): 900 of 800 MiB
        fake.load_model(name)
    evicted = ctl.run_once()  # c going leaves 700 MiB: over 680, but under the limit
    assert [e.model for e in evicted] == ["c"]
    assert "evicting down to 800.0 MiB (the limit)" in evicted[0].reason
    assert fake.loaded() == {"a", "b"}
    # over the limit with nothing that would get it under: nothing goes, an alert
    fake.sizes["a"] = 600 * MIB
    assert ctl.run_once() == [] and fake.loaded() == {"a", "b"}
    assert "or under the limit" in audit(tmp_path, "alert")[-1]["reason"]


def test_a_load_must_leave_used_memory_under_the_high_watermark(tmp_path: Path) -> None:
    # a load above the high watermark would be evicted again at the controller's next poll
    sizes = {"a": 200 * MIB, "b": 300 * MIB}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 500 * MIB, pinned=frozenset({"a"}))
    ctl.ensure_loaded("a")  # 300 of 600 MiB; high watermark 570 MiB
    with pytest.raises(MemoryBudgetError, match=r"exceed the high watermark 570\.0 MiB") as caught:
        ctl.ensure_loaded("b")  # 600 MiB would fit the limit, not the high watermark
    assert "a:1 200.0 MiB (pinned" in str(caught.value)
    assert fake.loaded() == {"a"}
    ctl.config = replace(ctl.config, pinned=frozenset())
    result = ctl.ensure_loaded("b")  # a may go now: it does, for the high watermark
    assert [e.model for e in result.evicted] == ["a"] and "high watermark" in result.evicted[
        0
    ].reason
    assert fake.loaded() == {"b"} and ctl.run_once() == []


def test_controller_run_outlives_a_failing_server_and_rereads_changed_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib

    from click.testing import CliRunner

    from manager.cli import main, memory_cmds

    settings = tmp_path / "tritonctl.yaml"
    settings.write_text("memory_limit: 600MiB\n")
    limits: list[int | None] = []
    polls = {"n": 0}

    class Poller:
        control = FakeTriton({})

        def run_once(self) -> list[Any]:
            polls["n"] += 1
            if polls["n"] == 1:  # the server stopping mid-request
                raise ManagerError("repository index at http://x failed: connection closed.")
            if polls["n"] == 2:
                settings.write_text("memory_limit: 300MiB\n")
            return []

    @contextlib.contextmanager
    def opened(obj: Any, config: ServingConfig) -> Any:
        limits.append(config.budget.limit.num_bytes if config.budget.limit else None)
        yield Poller()

    monkeypatch.setattr(memory_cmds, "open_controller", opened)
    argv = ["--repo", str(tmp_path), "controller", "run", "--interval", "0.1"]
    result = CliRunner().invoke(main, [*argv, "--iterations", "4"])
    assert result.exit_code == 0, result.output
    assert "connection closed.; retrying" in result.output
    assert "the serving settings changed" in result.output
    assert polls["n"] == 4 and limits[-1] == 300 * MIB and limits[0] == 600 * MIB
    # a broken file later is reported and the settings in use are kept
    polls["n"] = 1
    limits.clear()

    def broken_run_once(self: Any) -> list[Any]:
        polls["n"] += 1
        settings.write_text("memory_limit: -5\n")
        return []

    monkeypatch.setattr(Poller, "run_once", broken_run_once)
    result = CliRunner().invoke(main, [*argv, "--iterations", "3"])
    assert result.exit_code == 0, result.output
    assert "the settings in use are kept" in result.output and limits == [300 * MIB]


def test_endpoint_changes_make_room_within_the_budget_or_are_refused(tmp_path: Path) -> None:
    from manager.endpoints import Endpoints

    sizes = {"a": 300 * MIB, "b": 300 * MIB, "c": 300 * MIB}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 500 * MIB, pinned=frozenset({"c"}))
    fake.sizes.update(ep=0, ep2=0)  # the endpoints themselves hold nothing here
    endpoints = Endpoints(Repository(tmp_path), fake, admission=ctl.admitting)
    ctl.ensure_loaded("a")  # 400 of 600 MiB
    endpoints.switch("ep", "b", 1)  # 700 MiB would be over: a goes first
    assert fake.loaded() == {"b", "ep"}
    (record,) = audit(tmp_path, "evict")
    assert record["model"] == "a" and "make room for b" in record["reason"]
    # c needs room that nothing may give (b is an endpoint's target): refused before
    # anything is loaded or evicted
    with pytest.raises(MemoryBudgetError, match="cannot load c"):
        endpoints.split("ep2", [Target("c", 1, 100)])
    assert fake.loaded() == {"b", "ep"} and not (tmp_path / "ep2").exists()
    # what is READY already needs no room: the same switch again is no load
    loads = list(fake.loads)
    endpoints.switch("ep", "b", 1)
    assert fake.loads == loads


def test_a_load_under_way_counts_with_what_it_will_take(tmp_path: Path) -> None:
    sizes = {"a": 200 * MIB, "late": 300 * MIB, "b": 200 * MIB}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 600 * MIB)  # high watermark 665 MiB
    ctl.ensure_loaded("a")  # 300 MiB used
    # another client's load of "late" (300 MiB measured before) is under way, nothing of
    # it allocated yet: 300 + 300 + 200 would be over 665, so room is made for b now
    fake.state["late"], fake.sizes["late"] = "LOADING", 0
    assert [v.model for v in ctl.plan("b").victims] == ["a"]
    result = ctl.ensure_loaded("b")
    assert [e.model for e in result.evicted] == ["a"]
    fake.state["late"], fake.sizes["late"] = "READY", 300 * MIB
    assert ctl.meter.usage(fresh=True).used_bytes <= ctl.plan().high_bytes


def test_what_went_only_for_an_estimate_too_large_is_served_again(tmp_path: Path) -> None:
    ctl, fake = make(tmp_path, {"a": 200 * MIB, "small": 20 * MIB}, limit=BASE + 500 * MIB)
    seed_footprint(tmp_path, "small", 400 * MIB)  # an old measurement: it is 20 MiB now
    ctl.ensure_loaded("a")
    result = ctl.ensure_loaded("small")  # 300 + 400 > 570: a goes; small measures 20
    assert result.evicted == () and fake.loaded() == {"a", "small"}
    assert fake.unloads == ["a"] and fake.loads == ["a", "small", "a"]
    (record,) = audit(tmp_path, "restore")
    assert record["model"] == "a" and "small:1 measured 20.0 MiB" in record["reason"]
    assert "room left" in record["reason"]


def test_a_model_served_again_keeps_its_place_in_fifo_order(tmp_path: Path) -> None:
    sizes = {"a": 200 * MIB, "b": 200 * MIB, "broken": 300 * MIB}
    ctl, fake = make(tmp_path, sizes, limit=BASE + 500 * MIB, policy="fifo", high=1.0)
    ctl.ensure_loaded("a")
    time.sleep(0.05)
    ctl.ensure_loaded("b")
    fake.failing.add("broken")
    with pytest.raises(LoadError, match="served again what was evicted for it: a:1"):
        ctl.ensure_loaded("broken")  # a (loaded first) goes, then comes back
    assert fake.loaded() == {"a", "b"}
    # still the first loaded: first to go next time, not last
    assert [r.model for r in ctl.plan().ranking] == ["a", "b"]


def test_controller_run_stops_on_sigterm_while_a_poll_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll blocked on a server that does not answer (stopped, hung) holds a Triton call
    for up to its timeout (minutes): SIGTERM must stop the loop within the grace."""
    import contextlib
    import os
    import signal

    from click.testing import CliRunner

    from manager.cli import main, memory_cmds

    polls = {"n": 0}

    class Hanging:
        control = FakeTriton({})

        def run_once(self) -> list[Any]:
            polls["n"] += 1
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
            time.sleep(60)  # the call that never returns
            return []

    @contextlib.contextmanager
    def opened(obj: Any, config: ServingConfig) -> Any:
        yield Hanging()

    monkeypatch.setattr(memory_cmds, "open_controller", opened)
    monkeypatch.setattr(memory_cmds, "STOP_GRACE_S", 0.5)
    started = time.monotonic()
    result = CliRunner().invoke(main, ["--repo", str(tmp_path), "controller", "run"])
    assert result.exit_code == 0, result.output
    assert polls["n"] == 1
    assert time.monotonic() - started < 10
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
