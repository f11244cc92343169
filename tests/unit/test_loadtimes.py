"""Load times of model versions: recorded by tritonctl's loads, else first seen READY."""

from __future__ import annotations

from pathlib import Path

from manager.footprint import CPU_STUB_RSS, ESTIMATE, LIVE_BASIS
from manager.listing import model_footprints
from manager.loadtimes import LoadTimes, forget_every_load, forget_loads, record_load
from manager.serving import ModelRow


def test_a_recorded_load_time_is_kept_while_the_version_stays_ready(tmp_path: Path) -> None:
    times = LoadTimes(tmp_path)
    times.record("a", [1], at=100.0)
    assert times.sync([("a", 1)], now=500.0) == {("a", 1): 100.0}
    assert times.sync([("a", 1)], now=900.0) == {("a", 1): 100.0}


def test_a_version_loaded_by_someone_else_is_dated_when_first_seen(tmp_path: Path) -> None:
    times = LoadTimes(tmp_path)
    assert times.sync([("b", 2)], now=200.0) == {("b", 2): 200.0}
    assert times.sync([("b", 2)], now=300.0) == {("b", 2): 200.0}
    assert times.sync([("c", 1)], now=300.0, fallback={("c", 1): 50.0}) == {("c", 1): 50.0}


def test_records_of_unloaded_versions_go_but_not_those_of_a_load_after_the_index(
    tmp_path: Path,
) -> None:
    times = LoadTimes(tmp_path)
    times.record("gone", [1], at=100.0)
    times.record("late", [1], at=600.0)  # READY after the index below was read
    assert times.sync([], now=500.0) == {}
    assert times.all() == {("late", 1): 600.0}


def test_a_server_start_forgets_every_load_so_a_reload_is_dated_anew(tmp_path: Path) -> None:
    times = LoadTimes(tmp_path)
    times.record("c", [1], at=100.0)
    forget_every_load(tmp_path)  # what server start does: the new server has nothing loaded
    assert times.all() == {}
    assert times.sync([("c", 1)], now=700.0) == {("c", 1): 700.0}  # seen READY now
    forget_every_load(tmp_path / "nowhere")  # no records: nothing to do, no error


def test_loads_are_recorded_only_for_models_of_the_repository(tmp_path: Path) -> None:
    (tmp_path / "here").mkdir()
    record_load(tmp_path, "here", [3])
    record_load(tmp_path, "elsewhere", [1])
    record_load(None, "here", [4])
    assert set(LoadTimes(tmp_path).all()) == {("here", 3)}
    forget_loads(tmp_path, "here")
    assert LoadTimes(tmp_path).all() == {}


def test_a_loaded_version_shows_the_memory_it_holds_now_like_the_eviction_plan(
    tmp_path: Path,
) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "2").mkdir(parents=True)
    rows = [
        ModelRow("m", 1, "READY", "", None, 0, 0, 0),
        ModelRow("m", 2, "UNAVAILABLE", "", None, 0, 0, 0),
    ]
    footprints = model_footprints(rows, tmp_path, {("m", 1): 361 * 2**20})
    loaded, published = footprints[("m", 1)], footprints[("m", 2)]
    assert loaded is not None and published is not None
    assert (loaded.bytes, loaded.method, loaded.basis) == (361 * 2**20, CPU_STUB_RSS, LIVE_BASIS)
    assert published.method == ESTIMATE
