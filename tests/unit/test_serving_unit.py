"""Serving decisions against a fake Triton: no-op loads, version pinning, unload polling."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from manager import serving
from manager.endpoints import Endpoints, EndpointState, Target, policy_versions
from manager.errors import LoadError, ModelNotFoundError, UnloadError
from manager.footprint import predicted_versions
from manager.modelconfig import (
    TensorSpec,
    build_config,
    config_from_text,
    read_config,
    write_config,
)
from manager.repository import Repository
from manager.triton import IndexEntry, ModelStats


class FakeTriton:
    """A Triton that knows some models; unloads take ``unload_polls`` index calls."""

    url = "http://fake:8000"

    def __init__(
        self, models: dict[str, list[int]], *, unload_polls: int = 2, repo: Path | None = None
    ) -> None:
        # with ``repo``, a load without an override serves what config.pbtxt's policy says
        self.repo = repo
        self.state: dict[tuple[str, int], tuple[str, str]] = {
            (name, v): ("UNAVAILABLE", "") for name, versions in models.items() for v in versions
        }
        self.failing: dict[str, str] = {}
        self.loads: list[tuple[str, str | None]] = []
        self.unloads: list[str] = []
        self.unload_polls = unload_polls
        self._pending: dict[str, int] = {}
        # models loaded with an override: what their files were then (with ``repo``)
        self.overridden: dict[str, tuple[str, ...]] = {}

    def _files(self, name: str) -> tuple[str, ...]:
        if self.repo is None:
            return ()
        folder = self.repo / name
        if not folder.is_dir():
            return ()
        config = folder / "config.pbtxt"
        return (
            config.read_text() if config.is_file() else "",
            *sorted(p.name for p in folder.iterdir() if p.is_dir()),
        )

    def repository_index(self) -> list[IndexEntry]:
        for name in list(self._pending):
            self._pending[name] -= 1
            if self._pending[name] <= 0:
                del self._pending[name]
                for key, (st, _) in self.state.items():
                    if key[0] == name and st == "UNLOADING":
                        self.state[key] = ("UNAVAILABLE", "unloaded")
        return [IndexEntry(n, v, st, r) for (n, v), (st, r) in sorted(self.state.items())]

    def load_model(self, name: str, config: str | None = None) -> None:
        self.loads.append((name, config))
        versions = sorted(v for (n, v) in self.state if n == name)
        files = self._files(name)
        if config is None and name in self.overridden and self.overridden[name] == files:
            # as Triton: a model loaded with an override, whose files did not change, is
            # not reloaded by a load without one (it keeps the override's versions)
            return
        policy = json.loads(config).get("version_policy", {}) if config is not None else {}
        if "specific" in policy:
            # int64 versions: strings in JSON written from a protobuf message
            versions = [int(v) for v in policy["specific"]["versions"]]
        elif self.repo is not None:
            # no override, or one with the policy of config.pbtxt (tests give it no other)
            versions = predicted_versions(self.repo, name, None, as_written=True)
        else:
            versions = versions[-1:]
        if config is not None:
            self.overridden[name] = files
        else:
            self.overridden.pop(name, None)
        if name in self.failing:
            for v in versions:
                self.state[(name, v)] = ("UNAVAILABLE", self.failing[name])
            raise LoadError(f"load failed for model '{name}': {self.failing[name]}")
        for key in self.state:
            if key[0] == name:
                self.state[key] = ("READY", "") if key[1] in versions else ("UNAVAILABLE", "")

    def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        self.unloads.append(name)
        for key, (st, _) in self.state.items():
            if key[0] == name and st == "READY":
                self.state[key] = ("UNLOADING", "")
        self._pending[name] = self.unload_polls

    def model_config(self, name: str) -> dict[str, Any]:
        return {"name": name, "backend": "python", "max_batch_size": 0}

    def statistics(self, name: str | None = None) -> list[ModelStats]:
        return [
            ModelStats(n, v, 1700000000000, 4, 4, 3, 30, 1, 10, 0, 0, 0, 0)
            for (n, v), (st, _) in self.state.items()
            if st == "READY" and (name is None or n == name)
        ]

    def metrics_text(self) -> str:
        return "nv_cpu_memory_used_bytes 10\nnv_cpu_memory_total_bytes 100\n"


def _write_model(repo: Path, name: str, versions: list[int]) -> None:
    folder = repo / name
    folder.mkdir(parents=True)
    config = build_config(
        name,
        [TensorSpec("INPUT0", "FP32", (-1,))],
        [TensorSpec("OUTPUT0", "FP32", (-1,))],
        backend="python",
    )
    write_config(folder / "config.pbtxt", config)
    for v in versions:
        (folder / str(v)).mkdir()


def test_load_waits_until_ready_and_reports_the_ready_versions() -> None:
    fake = FakeTriton({"m": [1, 2]})
    result = serving.load(fake, "m")
    assert result.versions == (2,)
    assert not result.cache_hit
    assert fake.loads == [("m", None)]


def test_load_of_a_ready_model_is_a_no_op() -> None:
    fake = FakeTriton({"m": [1]})
    serving.load(fake, "m")
    again = serving.load(fake, "m")
    assert again.cache_hit
    assert again.versions == (1,)
    assert len(fake.loads) == 1


def test_load_of_an_unknown_model_is_model_not_found() -> None:
    with pytest.raises(ModelNotFoundError, match=r"'ghost'.*http://fake:8000"):
        serving.load(FakeTriton({"m": [1]}), "ghost")


def test_load_of_a_version_pins_the_policy_with_the_repository_config(tmp_path: Path) -> None:
    _write_model(tmp_path, "m", [1, 2])
    fake = FakeTriton({"m": [1, 2]})
    result = serving.load(fake, "m", version=1, repo=tmp_path)
    assert result.versions == (1,)
    override = json.loads(fake.loads[0][1] or "")
    assert override["version_policy"] == {"specific": {"versions": [1]}}
    assert override["backend"] == "python"
    assert override["max_batch_size"] == 0  # survives JSON, which drops default fields


def test_load_of_a_version_the_repository_does_not_hold_is_refused_before_triton(
    tmp_path: Path,
) -> None:
    _write_model(tmp_path, "m", [1, 2])
    fake = FakeTriton({"m": [1, 2]})
    with pytest.raises(ModelNotFoundError, match=r"no version 9 .*\(it has: 1, 2\)"):
        serving.load(fake, "m", version=9, repo=tmp_path)
    with pytest.raises(ModelNotFoundError, match="no version 9"):
        asyncio.run(serving.aload(AsyncFake(fake), "m", version=9, repo=tmp_path))
    assert fake.loads == []


def test_load_of_a_version_keeps_the_versions_endpoints_route_to(tmp_path: Path) -> None:
    _write_model(tmp_path, "m", [1, 2, 3])
    endpoints = Endpoints(Repository(tmp_path), FakeTriton({}))
    for state in (
        EndpointState("pinned_to_1", "pinned", [Target("m", 1)]),
        EndpointState("split", "routed", [Target("m", 1, 90.0), Target("m", 3, 10.0)]),
        EndpointState("other", "pinned", [Target("n", 2)]),
    ):
        endpoints._write(state)
    fake = FakeTriton({"m": [1, 2, 3], "n": [2]}, repo=tmp_path)
    result = serving.load(fake, "m", version=2, repo=tmp_path)
    # version 2 alone would stop both endpoints of m from answering
    assert result.versions == (1, 2, 3)
    # written into config.pbtxt, where a later reload by Triton reads it too
    assert fake.loads == [("m", None)]
    assert policy_versions(read_config(tmp_path / "m" / "config.pbtxt")) == {1, 2, 3}


def test_load_of_a_version_that_is_already_ready_is_a_no_op(tmp_path: Path) -> None:
    _write_model(tmp_path, "m", [1, 2])
    fake = FakeTriton({"m": [1, 2]})
    serving.load(fake, "m", version=1, repo=tmp_path)
    assert serving.load(fake, "m", version=1, repo=tmp_path).cache_hit
    assert not serving.load(fake, "m", version=2, repo=tmp_path).cache_hit


def test_load_of_a_version_without_local_config_uses_tritons_config_if_loaded(
    tmp_path: Path,
) -> None:
    fake = FakeTriton({"m": [1, 2]})
    serving.load(fake, "m")
    serving.load(fake, "m", version=1, repo=tmp_path)
    assert json.loads(fake.loads[-1][1] or "")["version_policy"]["specific"]["versions"] == [1]


def test_load_of_a_version_without_any_config_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=r"config\.pbtxt"):
        serving.load(FakeTriton({"m": [1, 2]}), "m", version=1, repo=tmp_path)


def test_failed_load_names_the_model_and_tritons_reason() -> None:
    fake = FakeTriton({"bad": [1]})
    fake.failing["bad"] = "RuntimeError: no weights"
    with pytest.raises(LoadError, match=r"model 'bad' failed to load: .*RuntimeError: no weights"):
        serving.load(fake, "bad")


def test_override_keeps_max_batch_size_zero_from_a_protobuf_config() -> None:
    config = config_from_text('name: "m"\nbackend: "python"\nmax_batch_size: 0\n')
    data = json.loads(serving.override_for_version(config, 3))
    assert data["max_batch_size"] == 0
    assert data["version_policy"] == {"specific": {"versions": [3]}}
    assert data["name"] == "m"


def test_unload_returns_only_once_the_index_shows_unavailable() -> None:
    fake = FakeTriton({"m": [1]}, unload_polls=3)
    serving.load(fake, "m")
    result = serving.unload(fake, "m")
    assert result.was_loaded
    assert [e.state for e in fake.repository_index()] == ["UNAVAILABLE"]
    assert fake._pending == {}


def test_unload_of_a_model_an_endpoint_routes_to_is_refused_unless_forced(
    tmp_path: Path,
) -> None:
    _write_model(tmp_path, "m", [1, 2])
    Endpoints(Repository(tmp_path), FakeTriton({}))._write(
        EndpointState("front", "pinned", [Target("m", 2)])
    )
    fake = FakeTriton({"m": [1, 2]})
    serving.load(fake, "m", version=2, repo=tmp_path)
    with pytest.raises(UnloadError, match=r"'m' serves endpoint\(s\) front \(m:2\)"):
        serving.unload(fake, "m", repo=tmp_path)
    assert fake.unloads == []
    # forced: the user accepts that the endpoint stops answering
    assert serving.unload(fake, "m", repo=tmp_path, force=True).was_loaded
    assert fake.unloads == ["m"]


def test_async_unload_of_a_model_an_endpoint_routes_to_is_refused_unless_forced(
    tmp_path: Path,
) -> None:
    _write_model(tmp_path, "m", [1, 2])
    Endpoints(Repository(tmp_path), FakeTriton({}))._write(
        EndpointState("front", "pinned", [Target("m", 2)])
    )
    ensemble = tmp_path / "front" / "1"
    ensemble.mkdir(parents=True)
    (ensemble / "tritonctl.json").write_text(json.dumps({"kind": "endpoint"}))
    fake = FakeTriton({"m": [1, 2], "front": [1]})
    serving.load(fake, "m", version=2, repo=tmp_path)
    serving.load(fake, "front")
    control = AsyncFake(fake)
    with pytest.raises(UnloadError, match=r"'m' serves endpoint\(s\) front \(m:2\)"):
        asyncio.run(serving.aunload(control, "m", repo=tmp_path))
    with pytest.raises(UnloadError, match="'front' is an endpoint"):
        asyncio.run(serving.aunload(control, "front", repo=tmp_path))
    assert fake.unloads == []
    # forced: the user accepts that the endpoint stops answering; the unload is audited
    assert asyncio.run(serving.aunload(control, "m", repo=tmp_path, force=True)).was_loaded
    assert fake.unloads == ["m"]
    audit = (tmp_path / ".tritonctl" / "audit.log").read_text()
    assert "forced past endpoints" in audit


def test_unload_of_a_model_that_is_not_loaded_does_nothing() -> None:
    fake = FakeTriton({"m": [1]})
    assert not serving.unload(fake, "m").was_loaded
    assert fake.unloads == []


def test_unload_of_an_unknown_model_is_model_not_found() -> None:
    with pytest.raises(ModelNotFoundError):
        serving.unload(FakeTriton({}), "ghost")


def test_list_models_joins_index_and_statistics() -> None:
    fake = FakeTriton({"a": [1], "b": [1, 2]})
    serving.load(fake, "b")
    rows = {(r.name, r.version): r for r in serving.list_models(fake)}
    assert rows[("b", 2)].state == "READY"
    assert rows[("b", 2)].inference_count == 4
    assert rows[("b", 2)].last_inference_ms == 1700000000000
    assert (rows[("b", 2)].success_count, rows[("b", 2)].fail_count) == (3, 1)
    assert rows[("a", 1)].last_inference_ms is None


def test_list_models_adds_on_disk_versions_triton_has_not_seen(tmp_path: Path) -> None:
    _write_model(tmp_path, "m", [1, 2])
    index = [IndexEntry("m", None, "UNAVAILABLE", "")]
    rows = serving.build_rows(index, [], tmp_path)
    assert [(r.name, r.version, r.state) for r in rows] == [
        ("m", 1, "UNAVAILABLE"),
        ("m", 2, "UNAVAILABLE"),
    ]


def test_overview_carries_the_memory_reading() -> None:
    view = serving.overview(FakeTriton({"m": [1]}))
    assert view.memory is not None and view.memory.cpu is not None
    assert view.memory.cpu.used_bytes == 10
    assert view.to_json()["models"][0]["name"] == "m"


# --------------------------------------------------------------------------- version policy


def _repository_config(repo: Path, name: str) -> str:
    """The override that serves ``<repo>/<name>/config.pbtxt`` as it is."""
    return serving.override_from_config(read_config(repo / name / "config.pbtxt"))


def publish_version(repo: Path, fake: FakeTriton, name: str, version: int) -> None:
    """A new version folder on disk; Triton does not know it until it loads the model."""
    (repo / name / str(version)).mkdir()
    fake.state[(name, version)] = ("UNAVAILABLE", "")


def test_load_without_version_picks_up_a_newly_published_version(tmp_path: Path) -> None:
    _write_model(tmp_path, "m", [1])
    fake = FakeTriton({"m": [1]})
    assert serving.load(fake, "m", repo=tmp_path).versions == (1,)
    publish_version(tmp_path, fake, "m", 2)

    result = serving.load(fake, "m", repo=tmp_path)

    assert not result.cache_hit and result.versions == (2,)
    # the repository's own config (its policy) as the override: Triton may hold another
    assert fake.loads[-1] == ("m", _repository_config(tmp_path, "m"))
    assert serving.load(fake, "m", repo=tmp_path).cache_hit
    assert len(fake.loads) == 2


def test_load_without_version_serves_the_policy_again_after_a_pinned_version(
    tmp_path: Path,
) -> None:
    _write_model(tmp_path, "m", [1, 2])
    fake = FakeTriton({"m": [1, 2]})
    serving.load(fake, "m", version=1, repo=tmp_path)
    result = serving.load(fake, "m", repo=tmp_path)
    assert not result.cache_hit and result.versions == (2,)


def test_load_without_version_after_a_pinned_version_reloads_with_the_repository_config(
    tmp_path: Path,
) -> None:
    """Triton keeps the `specific [1]` override of `load m --version 1` when a later load
    carries no config and the files did not change: the load gives config.pbtxt."""
    _write_model(tmp_path, "m", [1, 2])
    fake = FakeTriton({"m": [1, 2]}, repo=tmp_path)
    assert serving.load(fake, "m", version=1, repo=tmp_path).versions == (1,)

    result = serving.load(fake, "m", repo=tmp_path)

    assert not result.cache_hit and result.versions == (2,)
    assert fake.state[("m", 1)][0] == "UNAVAILABLE"
    _, override = fake.loads[-1]
    assert override == _repository_config(tmp_path, "m")
    data = json.loads(override)
    assert data["max_batch_size"] == 0  # written, though a default
    assert "version_policy" not in data  # config.pbtxt's own: the latest version
    assert serving.load(fake, "m", repo=tmp_path).cache_hit


def test_async_load_without_version_after_a_pinned_version_reloads_with_the_repository_config(
    tmp_path: Path,
) -> None:
    _write_model(tmp_path, "m", [1, 2])
    fake = FakeTriton({"m": [1, 2]}, repo=tmp_path)
    pinned = asyncio.run(serving.aload(AsyncFake(fake), "m", version=1, repo=tmp_path))
    assert pinned.versions == (1,)

    result = asyncio.run(serving.aload(AsyncFake(fake), "m", repo=tmp_path))

    assert not result.cache_hit and result.versions == (2,)
    assert fake.loads[-1] == ("m", _repository_config(tmp_path, "m"))


def test_first_load_without_version_leaves_the_config_to_triton(tmp_path: Path) -> None:
    _write_model(tmp_path, "m", [1, 2])
    fake = FakeTriton({"m": [1, 2]}, repo=tmp_path)
    assert serving.load(fake, "m", repo=tmp_path).versions == (2,)
    assert fake.loads == [("m", None)]  # nothing READY: no override Triton could hold


def test_load_without_version_keeps_the_versions_endpoints_route_to(tmp_path: Path) -> None:
    _write_model(tmp_path, "m", [1])
    Endpoints(Repository(tmp_path), FakeTriton({}))._write(
        EndpointState("front", "pinned", [Target("m", 1)])
    )
    fake = FakeTriton({"m": [1]}, repo=tmp_path)
    serving.load(fake, "m", repo=tmp_path)
    publish_version(tmp_path, fake, "m", 2)

    result = serving.load(fake, "m", repo=tmp_path)

    assert result.versions == (1, 2)
    assert fake.loads[-1] == ("m", _repository_config(tmp_path, "m"))
    assert policy_versions(read_config(tmp_path / "m" / "config.pbtxt")) == {1, 2}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", {3}),
        ("version_policy { latest { num_versions: 2 } }", {2, 3}),
        ("version_policy { all { } }", {1, 2, 3}),
        ("version_policy { specific { versions: [1, 3, 7] } }", {1, 3}),
    ],
)
def test_versions_to_serve_follow_the_policy_on_disk(
    tmp_path: Path, policy: str, expected: set[int]
) -> None:
    _write_model(tmp_path, "m", [1, 2, 3])
    path = tmp_path / "m" / "config.pbtxt"
    path.write_text(path.read_text() + policy + "\n")
    assert serving.versions_to_serve(FakeTriton({}), tmp_path, "m") == expected
    assert serving.versions_to_serve(FakeTriton({}), None, "m") is None
    assert serving.versions_to_serve(FakeTriton({}), tmp_path, "elsewhere") is None


def test_async_load_without_version_picks_up_a_newly_published_version(tmp_path: Path) -> None:
    _write_model(tmp_path, "m", [1])
    fake = FakeTriton({"m": [1]})
    serving.load(fake, "m", repo=tmp_path)
    publish_version(tmp_path, fake, "m", 2)
    result = asyncio.run(serving.aload(AsyncFake(fake), "m", repo=tmp_path))
    assert not result.cache_hit and result.versions == (2,)
    assert asyncio.run(serving.aload(AsyncFake(fake), "m", repo=tmp_path)).cache_hit


class AsyncFake:
    """The asyncio face of a :class:`FakeTriton`."""

    def __init__(self, fake: FakeTriton) -> None:
        self.fake = fake
        self.url = fake.url

    async def repository_index(self) -> list[IndexEntry]:
        return self.fake.repository_index()

    async def load_model(self, name: str, config: str | None = None) -> None:
        seconds = getattr(self.fake, "seconds", 0.0)
        await asyncio.sleep(seconds)
        FakeTriton.load_model(self.fake, name, config)

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        self.fake.unload_model(name, unload_dependents)

    async def model_config(self, name: str) -> dict[str, Any]:
        return self.fake.model_config(name)

    async def statistics(self, name: str | None = None) -> list[ModelStats]:
        return self.fake.statistics(name)

    async def metrics_text(self) -> str:
        return self.fake.metrics_text()


class SlowTriton(FakeTriton):
    """Answers a load only once it is done, after ``seconds`` (as Triton does)."""

    def __init__(self, models: dict[str, list[int]], seconds: float) -> None:
        super().__init__(models)
        self.seconds = seconds

    def load_model(self, name: str, config: str | None = None) -> None:
        time.sleep(self.seconds)
        super().load_model(name, config)


def test_load_stops_waiting_at_the_timeout_while_triton_is_still_loading() -> None:
    fake = SlowTriton({"slow": [1]}, seconds=1.5)
    started = time.monotonic()
    with pytest.raises(serving.StillLoadingError, match=r"'slow' is not READY after 0.2 s"):
        serving.load(fake, "slow", wait_timeout=0.2)
    assert time.monotonic() - started < 1.0
    with pytest.raises(LoadError, match="still loading"):
        asyncio.run(serving.aload(AsyncFake(fake), "slow", wait_timeout=0.2))
    assert time.monotonic() - started < 1.5


def test_a_load_that_fails_within_the_timeout_still_reports_tritons_reason() -> None:
    fake = SlowTriton({"bad": [1]}, seconds=0.05)
    fake.failing["bad"] = "RuntimeError: no weights"
    with pytest.raises(LoadError, match="no weights"):
        serving.load(fake, "bad", wait_timeout=5)


def test_load_serves_the_owners_newest_version_beside_what_endpoints_route_to(
    tmp_path: Path,
) -> None:
    """Endpoints wrote `specific [1]` into config.pbtxt for the endpoint on m:1; version 3
    is published since: `load m` serves 3 (the owner's policy: the latest) and keeps 1."""
    from manager.endpoints import with_versions
    from manager.versionpolicy import keep_owner_policy, owner_policy

    _write_model(tmp_path, "m", [1, 2, 3])
    path = tmp_path / "m" / "config.pbtxt"
    config = read_config(path)
    keep_owner_policy(tmp_path, "m", config)  # what Endpoints.serve_versions does first
    write_config(path, with_versions(config, [1]))
    Endpoints(Repository(tmp_path), FakeTriton({}))._write(
        EndpointState("front", "pinned", [Target("m", 1)])
    )
    fake = FakeTriton({"m": [1, 2, 3]}, repo=tmp_path)
    fake.load_model("m")  # as the endpoint left it: Triton read specific [1]
    assert serving.ready_versions(serving.entries_of(fake.repository_index(), "m")) == (1,)
    result = serving.load(fake, "m", repo=tmp_path)
    assert result.versions == (1, 3)
    assert policy_versions(read_config(path)) == {1, 3}
    assert owner_policy(tmp_path, "m", read_config(path)).WhichOneof("policy_choice") is None
    assert serving.load(fake, "m", repo=tmp_path).cache_hit


def test_unload_of_a_version_the_model_never_had_is_model_not_found(tmp_path: Path) -> None:
    # a typo (--version 12 for 2) must not look as if it worked while version 2 serves on
    _write_model(tmp_path, "m", [1, 2])
    fake = FakeTriton({"m": [1, 2]})
    serving.load(fake, "m", version=2, repo=tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"no version 12 .*\(it has: 1, 2\)"):
        serving.unload(fake, "m", repo=tmp_path, version=12)
    # a version on disk that is not served is simply not loaded
    assert not serving.unload(fake, "m", repo=tmp_path, version=1).was_loaded


def test_async_load_waits_for_the_models_lock_with_the_event_loop_running(
    tmp_path: Path,
) -> None:
    """A load of m while another holds m's lock (an endpoint change loading its versions)
    waits for it as the synchronous load does, and other coroutines run meanwhile."""
    from manager.repository import Repository

    _write_model(tmp_path, "m", [1])
    fake = FakeTriton({"m": [1]})
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with Repository(tmp_path).lock("m"):
            held.set()
            release.wait(10)

    async def main() -> tuple[list[str], int]:
        thread = threading.Thread(target=holder)
        thread.start()
        held.wait(10)
        events: list[str] = []
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while not release.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        async def let_go() -> None:
            await asyncio.sleep(0.4)
            events.append(f"released, loads so far: {len(fake.loads)}")
            release.set()

        result, _, _ = await asyncio.gather(
            serving.aload(AsyncFake(fake), "m", repo=tmp_path), ticker(), let_go()
        )
        events.append(f"loaded {result.versions}")
        thread.join()
        return events, ticks

    events, ticks = asyncio.run(main())
    assert events == ["released, loads so far: 0", "loaded (1,)"]
    assert ticks >= 10  # the loop ran while the load waited for the lock


def test_a_cancelled_wait_for_the_lock_holds_nothing(tmp_path: Path) -> None:
    from manager.errors import RepositoryError
    from manager.repository import Repository

    repo = Repository(tmp_path / "repo")
    release = threading.Event()
    held = threading.Event()

    def holder() -> None:
        with repo.lock("m"):
            held.set()
            release.wait(10)

    async def wait_then_cancel() -> None:
        async def take() -> None:
            async with repo.alock("m"):
                pass

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(take(), 0.2)
        with pytest.raises(RepositoryError, match="'m' is locked by another"):
            async with repo.alock("m", timeout=0.1):
                pass

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    asyncio.run(wait_then_cancel())
    release.set()
    thread.join()
    with repo.lock("m", timeout=0.5):  # nothing left holding it
        pass
