"""The REST control plane against a fake Triton: routes, error codes, the token, metrics,
and ``tritonctl api serve``."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from manager import rollout_service
from manager.api import create_app
from manager.api.errors import status_for
from manager.audit import AuditLog
from manager.cli import main
from manager.endpoints import Endpoints, EndpointState, policy_versions
from manager.errors import (
    ArtifactError,
    ConfigError,
    EndpointError,
    EndpointNotFoundError,
    InvalidNameError,
    LoadError,
    ManagerError,
    MemoryBudgetError,
    ModelNotFoundError,
    RolloutError,
    RolloutNotFoundError,
    TritonUnreachableError,
    UnloadError,
    VersionExistsError,
)
from manager.footprint import MemoryMeter
from manager.golden import GoldenMismatch
from manager.modelconfig import TensorSpec, build_config, read_config, write_config
from manager.pins import PinStore
from manager.repository import Repository
from manager.rollout import RolloutStore
from manager.triton import IndexEntry, ModelStats, TritonControl
from tests.modelfactory import write_python_model as python_model_folder

MIB = 2**20
BASE = 100 * MIB
TOTAL = 8 * 2**30
TOKEN = "s3cret-token"


class FakeTriton:
    """Serves what the repository holds, as the version policy on disk (or a load's
    override) says; host memory grows by 100 MiB per loaded model version."""

    url = "http://fake-triton:8000"

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.loaded: dict[str, set[int]] = {}
        self.failing: set[str] = set()
        self.down = False
        self.not_ready = False
        self.calls: list[tuple[str, str]] = []

    def __enter__(self) -> FakeTriton:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _answer(self) -> None:
        if self.down:
            raise TritonUnreachableError(f"no Triton server answers at {self.url} (down)")

    def is_live(self) -> bool:
        return not self.down

    def is_ready(self) -> bool:
        return not self.down and not self.not_ready

    def repository_index(self) -> list[IndexEntry]:
        self._answer()
        entries = []
        for folder in sorted(p for p in self.repo.iterdir() if p.is_dir()):
            if folder.name.startswith("."):
                continue
            versions = self.loaded.get(folder.name)
            if versions:
                entries += [IndexEntry(folder.name, v, "READY", "") for v in sorted(versions)]
            else:
                entries.append(IndexEntry(folder.name, None, "UNAVAILABLE", ""))
        return entries

    def load_model(self, name: str, config: str | None = None) -> None:
        self._answer()
        self.calls.append(("load", name))
        folder = self.repo / name
        if not folder.is_dir():
            raise ModelNotFoundError(f"failed to load '{name}', no version is available")
        if name in self.failing:
            raise LoadError(f"failed to load '{name}': initialize refused on purpose")
        cfg = read_config(folder / "config.pbtxt")
        on_disk = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
        if config is not None:
            versions = set(json.loads(config)["version_policy"]["specific"]["versions"])
        else:
            policy = policy_versions(cfg)
            versions = policy if policy is not None else set(on_disk[-1:])
        for step in cfg.ensemble_scheduling.step:
            served = self.loaded.get(step.model_name, set())
            if step.model_version > 0 and step.model_version not in served:
                raise LoadError(f"ensemble {name!r} needs {step.model_name}:{step.model_version}")
        self.loaded[name] = set(versions)

    def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        self._answer()
        self.calls.append(("unload", name))
        self.loaded.pop(name, None)

    def model_config(self, name: str) -> dict[str, Any]:
        return {"name": name, "backend": "python", "max_batch_size": 0}

    def statistics(self, name: str | None = None) -> list[ModelStats]:
        self._answer()
        return [
            ModelStats(n, v, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
            for n, vs in sorted(self.loaded.items())
            for v in sorted(vs)
            if name is None or n == name
        ]

    def metrics_text(self) -> str:
        self._answer()
        versions = sum(
            len(vs)
            for n, vs in self.loaded.items()
            if read_config(self.repo / n / "config.pbtxt").platform != "ensemble"
        )
        used = BASE + versions * 100 * MIB
        return f"nv_cpu_memory_used_bytes {used}\nnv_cpu_memory_total_bytes {TOTAL}\n"


def add_model(repo: Path, name: str, versions: tuple[int, ...] = (1, 2)) -> None:
    folder = repo / name
    folder.mkdir(parents=True)
    config = build_config(
        name,
        [TensorSpec("INPUT0", "FP32", (-1,))],
        [TensorSpec("OUTPUT0", "FP32", (-1,))],
        backend="python",
        kind="cpu",
    )
    write_config(folder / "config.pbtxt", config)
    for v in versions:
        (folder / str(v)).mkdir()
        (folder / str(v) / "model.py").write_text("# a model\n")


@pytest.fixture(autouse=True)
def quick_meter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory samples of the fake are always fresh: no waiting for Triton's interval."""
    monkeypatch.setattr(
        MemoryMeter,
        "for_control",
        classmethod(lambda cls, control, url, repo: cls(control, metrics_interval_s=0.001)),
    )
    monkeypatch.setenv("TRITONCTL_ROUTER", "python")
    monkeypatch.delenv("TRITONCTL_API_TOKEN", raising=False)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    add_model(path, "m", (1, 2, 3))
    add_model(path, "other", (1,))
    return path


@pytest.fixture
def fake(repo: Path) -> FakeTriton:
    return FakeTriton(repo)


def make_client(repo: Path, fake: FakeTriton, **options: Any) -> TestClient:
    app = create_app(repo, None, control_factory=lambda: fake, **options)
    return TestClient(app)


@pytest.fixture
def client(repo: Path, fake: FakeTriton) -> Iterator[TestClient]:
    with make_client(repo, fake) as c:
        yield c


def error_of(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in response.text
    return str(body["error"])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


# --------------------------------------------------------------------------- health


def test_live_answers_without_asking_triton(client: TestClient, fake: FakeTriton) -> None:
    fake.down = True
    response = client.get("/v1/health/live")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_live_answers_while_every_worker_thread_waits_for_a_load(
    client: TestClient, fake: FakeTriton, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    load = fake.load_model

    def slow_load(name: str, config: str | None = None) -> None:
        release.wait(10)
        load(name, config)

    monkeypatch.setattr(fake, "load_model", slow_load)

    def one_worker_thread() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1

    assert client.portal is not None
    client.portal.call(one_worker_thread)
    loading = threading.Thread(target=client.post, args=("/v1/models/m/load",), kwargs={"json": {}})
    loading.start()
    try:
        time.sleep(0.3)  # the load holds the only worker thread
        started = time.monotonic()
        assert client.get("/v1/health/live").status_code == 200
        assert time.monotonic() - started < 5
    finally:
        release.set()
        loading.join()


def test_ready_is_200_while_triton_answers_and_503_with_the_reason_when_it_does_not(
    client: TestClient, fake: FakeTriton
) -> None:
    response = client.get("/v1/health/ready")
    assert response.status_code == 200, response.text
    assert response.json()["triton"] == {
        "url": fake.url,
        "live": True,
        "ready": True,
        "error": None,
    }
    # a model that failed to load makes Triton "not ready": the control plane still serves
    fake.not_ready = True
    response = client.get("/v1/health/ready")
    assert response.status_code == 200, response.text
    assert response.json()["triton"]["ready"] is False
    fake.down = True
    response = client.get("/v1/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False and body["repository_exists"] is True
    assert "no Triton server answers" in body["triton"]["error"]


# --------------------------------------------------------------------------- token


def test_every_route_but_health_and_metrics_needs_the_token(repo: Path, fake: FakeTriton) -> None:
    with make_client(repo, fake, token=TOKEN) as c:
        for path in ("/v1/models", "/v1/endpoints", "/v1/rollouts", "/v1/memory", "/docs"):
            response = c.get(path)
            assert "Authorization" in error_of(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = c.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert error_of(wrong, 401) == "invalid bearer token"
        not_bearer = c.get("/v1/models", headers={"Authorization": f"Basic {TOKEN}"})
        error_of(not_bearer, 401)
        assert c.post("/v1/models/m/load").status_code == 401
        assert "m" not in fake.loaded

        ok = c.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200, ok.text
        assert c.get("/v1/health/live").status_code == 200
        assert c.get("/v1/health/ready").status_code == 200
        assert c.get("/metrics").status_code == 200


def test_without_a_token_no_header_is_needed(client: TestClient) -> None:
    assert client.get("/v1/models").status_code == 200


# --------------------------------------------------------------------------- models


def test_models_lists_served_and_published_versions_as_ls_json_does(
    client: TestClient, fake: FakeTriton, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.load_model("m")  # the newest version, 3
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["url"] == fake.url
    rows = {(r["name"], r["version"]): r for r in body["models"]}
    assert rows[("m", 3)]["state"] == "READY"
    assert rows[("m", 1)]["state"] == "UNAVAILABLE"
    assert rows[("m", 3)]["footprint_method"] == "estimate"
    assert body["memory"]["cpu"]["total_bytes"] == TOTAL

    monkeypatch.setattr(TritonControl, "connect", classmethod(lambda cls, *a, **k: fake))
    cli = CliRunner().invoke(main, ["--repo", str(repo), "ls", "--json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.output) == body["models"]


def test_one_model_is_listed_by_name_and_an_unknown_one_is_404(client: TestClient) -> None:
    body = client.get("/v1/models/other").json()
    assert [(r["name"], r["version"]) for r in body["models"]] == [("other", 1)]
    assert "nope" in error_of(client.get("/v1/models/nope"), 404)


def test_load_a_version_then_unload_it(client: TestClient, fake: FakeTriton) -> None:
    response = client.post("/v1/models/m/load", json={"version": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["versions"] == [2] and body["cache_hit"] is False and body["evicted"] == []
    assert fake.loaded["m"] == {2}

    again = client.post("/v1/models/m/load", json={"version": 2}).json()
    assert again["cache_hit"] is True

    unloaded = client.post("/v1/models/m/unload", json={})
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json()["was_loaded"] is True
    assert "m" not in fake.loaded
    assert client.post("/v1/models/m/unload", json={}).json()["was_loaded"] is False


def test_load_without_a_body_loads_the_default_versions(
    client: TestClient, fake: FakeTriton
) -> None:
    response = client.post("/v1/models/other/load", json={})
    assert response.status_code == 200, response.text
    assert fake.loaded["other"] == {1}


def test_load_of_an_unknown_model_is_404(client: TestClient, fake: FakeTriton) -> None:
    assert "no_such_model" in error_of(client.post("/v1/models/no_such_model/load", json={}), 404)
    assert fake.calls == []


def test_a_failed_load_is_502_with_tritons_reason(client: TestClient, fake: FakeTriton) -> None:
    fake.failing.add("m")
    message = error_of(client.post("/v1/models/m/load", json={}), 502)
    assert "initialize refused on purpose" in message


def test_triton_unreachable_is_503(client: TestClient, fake: FakeTriton) -> None:
    fake.down = True
    assert "no Triton server answers" in error_of(client.get("/v1/models"), 503)
    error_of(client.post("/v1/models/m/load", json={}), 503)


def test_bad_input_is_400_naming_what_is_wrong(client: TestClient) -> None:
    assert "version" in error_of(client.post("/v1/models/m/load", json={"version": 0}), 400)
    assert "version" in error_of(client.post("/v1/models/m/load", json={"version": "x"}), 400)
    assert "wait" in error_of(client.post("/v1/models/m/load", json={"wait": 1}), 400)
    assert "-bad" in error_of(client.post("/v1/models/-bad/load", json={}), 400)
    malformed = client.post(
        "/v1/models/m/load", content=b"{not json", headers={"content-type": "application/json"}
    )
    error_of(malformed, 400)


def test_a_post_must_say_it_sends_json_so_that_no_web_page_can_make_one(
    client: TestClient, fake: FakeTriton
) -> None:
    assert "application/json" in error_of(client.post("/v1/models/m/load"), 415)
    form = client.post(
        "/v1/models/m/load",
        content=b"version=1",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    error_of(form, 415)
    plain = client.post(
        "/v1/endpoints/ep/switch", content=b'{"to": "m:1"}', headers={"content-type": "text/plain"}
    )
    error_of(plain, 415)
    assert fake.calls == []
    empty = client.post("/v1/models/m/load", headers={"content-type": "application/json"})
    assert empty.status_code == 200, empty.text
    assert client.get("/v1/models").status_code == 200


def test_a_very_long_wait_is_waited_and_nan_or_infinity_is_a_400(
    client: TestClient, workers: list[tuple[str, str]]
) -> None:
    # longer than threading can wait at once
    response = client.post("/v1/models/m/load", json={"version": 2, "wait_timeout": 1e10})
    assert response.status_code == 200, response.text
    json_body = {"Content-Type": "application/json"}
    client.post("/v1/endpoints/ep/switch", json={"to": "m:1"})
    for route, field in [
        ("/v1/models/m/load", "wait_timeout"),
        ("/v1/models/m/unload", "wait_timeout"),
        ("/v1/rollouts/ep/abort", "wait_timeout"),
        ("/v1/rollouts/ep/start", "stage_seconds"),
        ("/v1/rollouts/ep/start", "max_latency_ratio"),
    ]:
        for number in ("NaN", "Infinity"):
            body = (
                f'{{"to": 2, "{field}": {number}}}'
                if "start" in route
                else f'{{"{field}": {number}}}'
            )
            answer = client.post(route, content=body, headers=json_body)
            assert field in error_of(answer, 400)
            assert answer.json()["detail"][0]["input"] in ("nan", "inf")
    assert workers == []


def test_load_with_a_budget_evicts_through_the_controller(repo: Path, fake: FakeTriton) -> None:
    with make_client(repo, fake, max_models=1, policy="lru") as c:
        assert c.post("/v1/models/other/load", json={}).status_code == 200
        response = c.post("/v1/models/m/load", json={"version": 1})
        assert response.status_code == 200, response.text
        body = response.json()
    assert [(e["model"], e["version"]) for e in body["evicted"]] == [("other", 1)]
    assert body["footprints"] and body["footprints"][0]["model"] == "m"
    assert set(fake.loaded) == {"m"}
    actions = [(r["action"], r["model"]) for r in AuditLog(repo).read()]
    assert ("evict", "other") in actions and ("load", "m") in actions
    with make_client(repo, fake) as c:
        [evicted] = c.get("/v1/audit", params={"action": "evict"}).json()["records"]
        assert (evicted["model"], evicted["version"]) == ("other", 1)
        assert evicted["reason"] and evicted["policy"] == "lru"  # fields of the record kept
        [last] = c.get("/v1/audit", params={"model": "m", "last": 1}).json()["records"]
        assert (last["action"], last["model"]) == ("load", "m")
        assert "unknown action" in error_of(c.get("/v1/audit?action=drop"), 400)
        error_of(c.get("/v1/audit?last=0"), 400)


def test_a_load_the_budget_cannot_fit_is_409_and_loads_nothing(
    repo: Path, fake: FakeTriton
) -> None:
    with make_client(repo, fake, max_models=1) as c:
        assert c.post("/v1/models/other/load", json={}).status_code == 200
        assert c.post("/v1/models/other/pin", json={}).json() == {
            "name": "other",
            "pinned": True,
            "changed": True,
            "pinned_in": None,
        }
        message = error_of(c.post("/v1/models/m/load", json={}), 409)
    assert "cannot load m" in message
    assert set(fake.loaded) == {"other"}


def test_memory_shows_the_budget_and_the_eviction_order(repo: Path, fake: FakeTriton) -> None:
    with make_client(repo, fake, memory_limit="1GiB") as c:
        c.post("/v1/models/other/load", json={})
        c.post("/v1/models/m/load", json={"version": 1})
        response = c.get("/v1/memory", params={"for": "m"})
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["configured"] is True
    assert plan["limit_bytes"] == 2**30
    assert plan["usage"]["used_bytes"] == BASE + 200 * MIB
    assert plan["for_model"] == "m"
    assert {(v["model"], v["version"]) for v in plan["ranking"]} == {("other", 1), ("m", 1)}


def test_evict_refuses_a_pinned_model_with_409_unless_forced(
    client: TestClient, fake: FakeTriton
) -> None:
    client.post("/v1/models/other/load", json={})
    client.post("/v1/models/other/pin", json={})
    assert "protected" in error_of(client.post("/v1/models/other/evict", json={}), 409)
    assert "other" in fake.loaded
    forced = client.post("/v1/models/other/evict", json={"force": True})
    assert forced.status_code == 200, forced.text
    assert [e["model"] for e in forced.json()["evicted"]] == ["other"]
    assert "other" not in fake.loaded
    assert client.post("/v1/models/other/unpin", json={}).json()["changed"] is True
    error_of(client.post("/v1/models/nope/pin", json={}), 404)


def test_unpin_says_when_the_settings_file_keeps_a_model_pinned(
    client: TestClient, repo: Path
) -> None:
    (repo / "tritonctl.yaml").write_text("pinned: [other]\n")
    pinned = client.post("/v1/models/other/pin", json={}).json()
    assert pinned["pinned_in"].endswith("tritonctl.yaml")  # pinned there already
    answer = client.post("/v1/models/other/unpin", json={}).json()
    assert answer["changed"] is True  # the `tritonctl pin` record is gone
    assert answer["pinned"] is True and answer["pinned_in"].endswith("tritonctl.yaml")
    (repo / "tritonctl.yaml").write_text("pinned: []\n")
    assert client.post("/v1/models/other/unpin", json={}).json() == {
        "name": "other",
        "pinned": False,
        "changed": False,
        "pinned_in": None,
    }


# --------------------------------------------------------------------------- publish


def test_publish_adds_versions_with_provenance_and_refuses_an_existing_one(
    client: TestClient, tmp_path: Path
) -> None:
    source = python_model_folder(tmp_path / "src")
    response = client.post(
        "/v1/models/adder/versions",
        json={"artifact": str(source), "labels": {"git_commit": "abc123"}},
    )
    assert response.status_code == 201, response.text
    first = response.json()
    assert (first["name"], first["version"], first["format"]) == ("adder", 1, "python")
    assert first["labels"] == {"git_commit": "abc123"}
    # copied by default: rewriting the source later cannot change the version
    assert first["placed_by"] in ("copy", "clone") and first["notices"] == []

    second = client.post(
        "/v1/models/adder/versions",
        json={"artifact": str(source), "labels": ["team=search"], "link": True},
    ).json()
    assert second["version"] == 2 and second["placed_by"] == "link"
    both = {"artifact": str(source), "link": True, "copy": True}
    assert "exclude each other" in error_of(
        client.post("/v1/models/adder/versions", json=both), 400
    )

    listed = client.get("/v1/models/adder/versions").json()
    assert [v["version"] for v in listed["versions"]] == [1, 2]
    assert listed["versions"][0]["labels"] == {"git_commit": "abc123"}
    assert listed["versions"][0]["sha256"] == first["sha256"]

    exists = client.post("/v1/models/adder/versions", json={"artifact": str(source), "version": 2})
    assert "already has version 2" in error_of(exists, 409)


def test_publish_refuses_bad_artifacts_and_options_with_400(
    client: TestClient, tmp_path: Path, repo: Path
) -> None:
    source = python_model_folder(tmp_path / "src")
    missing = client.post("/v1/models/x/versions", json={"artifact": str(tmp_path / "nope")})
    error_of(missing, 400)
    relative = client.post("/v1/models/x/versions", json={"artifact": "model.onnx"})
    assert "absolute" in error_of(relative, 400)
    for field in ("artifact", "config", "golden"):
        body = {"artifact": str(source), "smoke_test": True, field: "/tmp/a\x00b"}
        assert "NUL" in error_of(client.post("/v1/models/x/versions", json=body), 400)
    golden_alone = client.post(
        "/v1/models/x/versions", json={"artifact": str(source), "golden": str(tmp_path)}
    )
    assert "smoke test" in error_of(golden_alone, 400)
    bad_format = client.post(
        "/v1/models/x/versions", json={"artifact": str(source), "format": "pickle"}
    )
    assert "format" in error_of(bad_format, 400)
    bad_label = client.post(
        "/v1/models/x/versions", json={"artifact": str(source), "labels": ["novalue"]}
    )
    assert "KEY=VALUE" in error_of(bad_label, 400)
    assert not (repo / "x").exists()
    error_of(client.get("/v1/models/x/versions"), 404)


def test_a_name_with_a_trailing_newline_is_refused_and_makes_no_folder(
    client: TestClient, tmp_path: Path, repo: Path
) -> None:
    source = python_model_folder(tmp_path / "src")
    response = client.post("/v1/models/evil%0A/versions", json={"artifact": str(source)})
    assert "not a valid" in error_of(response, 400)
    assert not any("\n" in p.name for p in repo.iterdir())


def test_a_body_over_a_mib_is_a_413_whether_its_length_is_said_or_not(
    client: TestClient, tmp_path: Path, repo: Path
) -> None:
    source = python_model_folder(tmp_path / "src")
    labels = {f"k{i}": "v" * 100 for i in range(20000)}  # about 2 MiB of provenance
    big = client.post("/v1/models/big/versions", json={"artifact": str(source), "labels": labels})
    assert "larger than" in error_of(big, 413)

    def chunks() -> Iterator[bytes]:
        yield b'{"artifact": "/x", "labels": {"a": "'
        yield from (b"v" * 8192 for _ in range(200))
        yield b'"}}'

    chunked = client.post(
        "/v1/models/big/versions", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "larger than" in error_of(chunked, 413)
    assert not (repo / "big").exists()


# --------------------------------------------------------------------------- endpoints


def test_switch_creates_an_endpoint_that_show_and_list_return(
    client: TestClient, fake: FakeTriton
) -> None:
    response = client.post("/v1/endpoints/ep/switch", json={"to": "m:2"})
    assert response.status_code == 200, response.text
    state = response.json()
    assert state["mode"] == "pinned"
    assert state["targets"] == [{"model": "m", "version": 2, "weight": 100.0}]
    assert state["serving"] == {"ready": True, "targets": {"m:2": True}}
    assert (state["streaming"], state["stateful"]) == (False, False)
    assert fake.loaded["ep"] == {1} and 2 in fake.loaded["m"]

    # GET answers the same, and says what Triton serves of it now
    assert client.get("/v1/endpoints/ep").json() == state
    assert client.get("/v1/endpoints").json() == {"endpoints": [state]}
    fake.loaded.pop("ep")
    assert client.get("/v1/endpoints/ep").json()["serving"]["ready"] is False

    newest = client.post("/v1/endpoints/ep/switch", json={"to": "m"}).json()
    assert newest["targets"][0]["version"] == 3 and newest["generation"] == 2


def test_split_takes_strings_or_objects_as_targets(client: TestClient) -> None:
    client.post("/v1/endpoints/ep/switch", json={"to": "m:1"})
    response = client.post(
        "/v1/endpoints/ep/split",
        json={
            "targets": ["m:1=90", {"model": "m", "version": 2, "weight": 10}],
            "sticky_parameter": "user",
            "router": "python",
        },
    )
    assert response.status_code == 200, response.text
    state = response.json()
    assert state["mode"] == "routed"
    assert [(t["version"], t["weight"]) for t in state["targets"]] == [(1, 90.0), (2, 10.0)]
    assert state["sticky"] == {"parameter": "user", "use_correlation_id": False}


def test_endpoint_errors_are_404_for_unknown_names_and_400_for_bad_targets(
    client: TestClient,
) -> None:
    assert "no endpoint named 'ghost'" in error_of(client.get("/v1/endpoints/ghost"), 404)
    error_of(client.delete("/v1/endpoints/ghost"), 404)
    error_of(client.post("/v1/endpoints/ep/switch", json={"to": "nope:1"}), 404)
    error_of(client.post("/v1/endpoints/ep/switch", json={"to": "m:9"}), 404)
    error_of(client.post("/v1/endpoints/ep/switch", json={"to": "m:x"}), 400)
    zero = client.post("/v1/endpoints/ep/split", json={"targets": ["m:1=0", "m:2=0"]})
    assert "add up to 0" in error_of(zero, 400)
    error_of(client.post("/v1/endpoints/ep/split", json={"targets": ["m"]}), 400)
    error_of(client.post("/v1/endpoints/ep/split", json={"targets": []}), 400)
    error_of(client.post("/v1/endpoints/ep/split", json={"targets": ["m:1"], "router": "x"}), 400)
    # an endpoint may not take a model's name
    error_of(client.post("/v1/endpoints/other/switch", json={"to": "m:1"}), 400)


def test_delete_removes_the_endpoint_but_not_its_target(
    client: TestClient, fake: FakeTriton
) -> None:
    client.post("/v1/endpoints/ep/switch", json={"to": "m:1"})
    response = client.delete("/v1/endpoints/ep")
    assert response.status_code == 200 and response.json() == {"name": "ep", "deleted": True}
    assert "ep" not in fake.loaded and 1 in fake.loaded["m"]
    assert client.get("/v1/endpoints").json() == {"endpoints": []}


def test_routes_without_fields_refuse_a_body_with_fields_and_change_nothing(
    client: TestClient, fake: FakeTriton, repo: Path
) -> None:
    client.post("/v1/endpoints/ep/switch", json={"to": "m:1"})
    json_header = {"content-type": "application/json"}
    bogus = client.request("DELETE", "/v1/endpoints/ep", content=b'{"bogus": 1}')
    assert "takes no fields" in error_of(bogus, 400)
    assert "ep" in fake.loaded and client.get("/v1/endpoints/ep").status_code == 200
    assert "not JSON" in error_of(
        client.post("/v1/models/other/pin", content=b"not json", headers=json_header), 400
    )
    assert "takes no fields" in error_of(client.post("/v1/models/other/pin", json=[1]), 400)
    assert "takes no fields" in error_of(
        client.post("/v1/models/other/unpin", json={"force": True}), 400
    )
    assert "takes no fields" in error_of(client.post("/v1/endpoints/restore", json={"x": 1}), 400)
    assert "other" not in PinStore(repo).names()
    # none, or {}, is what these routes take
    assert client.post("/v1/models/other/pin", json={}).status_code == 200
    assert client.post("/v1/models/other/unpin", headers=json_header).status_code == 200


def test_restore_serves_recorded_endpoints_again(client: TestClient, fake: FakeTriton) -> None:
    client.post("/v1/endpoints/ep/switch", json={"to": "m:2"})
    client.post("/v1/endpoints/ep2/switch", json={"to": "m:1"})
    fake.loaded.clear()  # a restarted server serves nothing until told
    one = client.post("/v1/endpoints/ep/restore", json={})
    assert one.status_code == 200, one.text
    assert one.json()["targets"] == [{"model": "m", "version": 2, "weight": 100.0}]
    # m serves every version an endpoint pins (ep2's 1 too), but only ep is served
    assert fake.loaded["ep"] == {1} and 2 in fake.loaded["m"] and "ep2" not in fake.loaded
    every = client.post("/v1/endpoints/restore", json={})
    assert every.status_code == 200, every.text
    assert sorted(e["name"] for e in every.json()["endpoints"]) == ["ep", "ep2"]
    assert fake.loaded["ep2"] == {1} and fake.loaded["m"] >= {1, 2}
    error_of(client.post("/v1/endpoints/ghost/restore", json={}), 404)


# --------------------------------------------------------------------------- rollouts


@pytest.fixture
def workers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Rollout workers that are recorded instead of started."""
    spawned: list[tuple[str, str]] = []

    def spawn(repo: Any, url: str, endpoint: str, *_: Any) -> int:
        spawned.append((url, endpoint))
        return 4242

    monkeypatch.setattr(rollout_service, "spawn_worker", spawn)
    return spawned


def test_rollout_start_records_it_and_hands_it_to_a_background_worker(
    client: TestClient, fake: FakeTriton, repo: Path, workers: list[tuple[str, str]]
) -> None:
    client.post("/v1/endpoints/ep/switch", json={"to": "m:1"})
    response = client.post(
        "/v1/rollouts/ep/start",
        json={"to": 2, "stages": "10,50", "stage_seconds": 5, "min_requests": 3},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["worker_pid"] == 4242
    assert (body["endpoint"], body["old_version"], body["new_version"]) == ("ep", 1, 2)
    assert body["status"] == "starting"
    assert body["policy"]["stages"] == [10, 50, 100]
    assert body["policy"]["min_requests"] == 3
    assert workers == [(fake.url, "ep")]
    recorded = RolloutStore(Repository(repo)).load("ep")
    assert recorded is not None and recorded.new_version == 2

    shown = client.get("/v1/rollouts/ep").json()
    assert shown["new_version"] == 2 and shown["weights"] == {"m:1": 100, "m:2": 0}
    assert [r["endpoint"] for r in client.get("/v1/rollouts").json()["rollouts"]] == ["ep"]
    assert [r["endpoint"] for r in client.get("/v1/rollouts?active=true").json()["rollouts"]] == [
        "ep"
    ]

    busy = client.post("/v1/rollouts/ep/start", json={"to": 3})
    assert "already has a rollout" in error_of(busy, 409)
    assert len(workers) == 1


def test_abort_without_a_running_driver_rolls_back_at_once(
    client: TestClient, fake: FakeTriton, workers: list[tuple[str, str]]
) -> None:
    client.post("/v1/endpoints/ep/switch", json={"to": "m:1"})
    client.post("/v1/rollouts/ep/start", json={"to": 2})
    # the rollout owns its endpoint until it ends
    assert "promote|abort" in error_of(
        client.post("/v1/endpoints/ep/switch", json={"to": "m:3"}), 409
    )
    assert "promote|abort" in error_of(client.delete("/v1/endpoints/ep"), 409)
    response = client.post("/v1/rollouts/ep/abort", json={"wait_timeout": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "rolled_back" and body["reason"] == "aborted by request"
    assert client.get("/v1/endpoints/ep").json()["targets"][0]["version"] == 1
    assert client.get("/v1/rollouts?active=true").json() == {"rollouts": []}
    assert "no rollout in progress" in error_of(
        client.post("/v1/rollouts/ep/promote", json={}), 409
    )
    assert "over" in error_of(client.post("/v1/rollouts/ep/resume", json={}), 409)


def test_promote_without_a_running_driver_pins_the_new_version(
    client: TestClient, workers: list[tuple[str, str]]
) -> None:
    client.post("/v1/endpoints/ep/switch", json={"to": "m:1"})
    client.post("/v1/rollouts/ep/start", json={"to": 3})
    body = client.post("/v1/rollouts/ep/promote", json={}).json()
    assert body["status"] == "promoted" and body["weight"] == 100
    assert client.get("/v1/endpoints/ep").json()["targets"][0]["version"] == 3


def test_resume_hands_a_rollout_whose_driver_died_to_a_new_worker(
    client: TestClient, workers: list[tuple[str, str]]
) -> None:
    client.post("/v1/endpoints/ep/switch", json={"to": "m:1"})
    client.post("/v1/rollouts/ep/start", json={"to": 2})
    response = client.post("/v1/rollouts/ep/resume", json={})
    assert response.status_code == 202, response.text
    assert response.json()["worker_pid"] == 4242 and len(workers) == 2


def test_rollout_errors_are_404_unknown_409_conflict_400_bad_policy(
    client: TestClient, workers: list[tuple[str, str]], repo: Path
) -> None:
    assert "no rollout recorded" in error_of(client.get("/v1/rollouts/ep"), 404)
    error_of(client.post("/v1/rollouts/ghost/start", json={"to": 2}), 404)
    assert not list((repo / ".tritonctl").glob("rollouts/ghost*"))  # nothing left behind
    client.post("/v1/endpoints/ep/switch", json={"to": "m:1"})
    assert "stages" in error_of(
        client.post("/v1/rollouts/ep/start", json={"to": 2, "stages": "50,10"}), 400
    )
    error_of(client.post("/v1/rollouts/ep/start", json={"to": 2, "stages": "5,abc"}), 400)
    error_of(client.post("/v1/rollouts/ep/start", json={"to": 2, "max_error_rate": 2}), 400)
    error_of(client.post("/v1/rollouts/ep/start", json={}), 400)
    assert "no version 9" in error_of(client.post("/v1/rollouts/ep/start", json={"to": 9}), 404)
    error_of(client.post("/v1/rollouts/ep/start", json={"to": 2, "sticky_parameter": "a b"}), 400)
    nul = {"to": 2, "golden": "/tmp/a\x00b"}
    assert "NUL" in error_of(client.post("/v1/rollouts/ep/start", json=nul), 400)
    for action in ("promote", "abort"):
        assert "no rollout recorded" in error_of(
            client.post(f"/v1/rollouts/ghost/{action}", json={}), 404
        )
    client.post("/v1/endpoints/ep/split", json={"targets": ["m:1=50", "m:2=50"]})
    assert "split" in error_of(client.post("/v1/rollouts/ep/start", json={"to": 3}), 409)
    assert workers == []


# --------------------------------------------------------------------------- metrics


def test_metrics_report_how_long_ago_a_rollout_driver_last_reported(
    repo: Path, fake: FakeTriton, workers: list[tuple[str, str]]
) -> None:
    from manager.rollout import _stamp

    with make_client(repo, fake) as c:
        c.post("/v1/endpoints/ep/switch", json={"to": "m:1"})
        c.post("/v1/rollouts/ep/start", json={"to": 2})
        parsed = samples(c.get("/metrics").text)
        # no driver has reported yet (the worker is recorded, not started)
        assert not [k for k in parsed if k[0] == "tritonctl_rollout_driver_last_report_seconds"]
        store = RolloutStore(Repository(repo))
        state = store.load("ep")
        assert state is not None
        state.driver_pid, state.driver_heartbeat = 4242, _stamp(time.time() - 12)
        store.save(state)
        parsed = samples(c.get("/metrics").text)
    age = value(parsed, "tritonctl_rollout_driver_last_report_seconds", endpoint="ep")
    assert 12 <= age < 20


def test_metrics_report_models_memory_endpoints_rollouts_and_requests(
    repo: Path, fake: FakeTriton, workers: list[tuple[str, str]]
) -> None:
    with make_client(repo, fake, memory_limit="1GiB", max_models=4) as c:
        c.post("/v1/endpoints/ep/switch", json={"to": "m:1"})
        c.post("/v1/rollouts/ep/start", json={"to": 2})
        c.post("/v1/models/other/load", json={})
        c.post("/v1/models/nope/load", json={})
        response = c.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    parsed = samples(response.text)

    assert value(parsed, "tritonctl_triton_up") == 1
    assert value(parsed, "tritonctl_model_ready", model="m", version="1") == 1
    assert value(parsed, "tritonctl_model_ready", model="m", version="3") == 0
    assert value(parsed, "tritonctl_model_ready", model="other", version="1") == 1
    assert value(parsed, "tritonctl_model_state", model="m", version="3", state="UNAVAILABLE") == 1
    assert value(parsed, "tritonctl_model_state", model="m", version="1", state="READY") == 1
    assert (
        value(parsed, "tritonctl_model_footprint_bytes", model="m", version="1", method="estimate")
        > 0
    )

    assert value(parsed, "tritonctl_memory_used_bytes", method="cpu-metric") == BASE + 200 * MIB
    assert value(parsed, "tritonctl_memory_total_bytes") == TOTAL
    assert value(parsed, "tritonctl_memory_limit_bytes") == 2**30
    assert value(parsed, "tritonctl_memory_high_watermark_bytes") == int(2**30 * 0.95)
    assert value(parsed, "tritonctl_memory_budget_configured") == 1
    assert value(parsed, "tritonctl_max_models") == 4

    assert (
        value(parsed, "tritonctl_endpoint_target_weight", endpoint="ep", model="m", version="1")
        == 100
    )
    assert (
        value(parsed, "tritonctl_endpoint_target_share", endpoint="ep", model="m", version="1") == 1
    )
    assert value(parsed, "tritonctl_endpoint_mode", endpoint="ep", mode="pinned") == 1
    assert value(parsed, "tritonctl_endpoint_mode", endpoint="ep", mode="routed") == 0

    assert value(parsed, "tritonctl_rollout_status", endpoint="ep", status="starting") == 1
    assert value(parsed, "tritonctl_rollout_status", endpoint="ep", status="promoted") == 0
    rollout = {"endpoint": "ep", "model": "m", "old_version": "1", "new_version": "2"}
    assert value(parsed, "tritonctl_rollout_weight_percent", **rollout) == 0
    assert value(parsed, "tritonctl_rollout_stage", **rollout) == -1
    assert value(parsed, "tritonctl_rollout_driver_alive", endpoint="ep") == 0

    load = "/v1/models/{name}/load"
    assert (
        value(parsed, "tritonctl_api_requests_total", method="POST", route=load, status="200") == 1
    )
    assert (
        value(parsed, "tritonctl_api_requests_total", method="POST", route=load, status="404") == 1
    )
    assert (
        value(
            parsed,
            "tritonctl_api_request_duration_seconds_count",
            method="POST",
            route="/v1/rollouts/{name}/start",
        )
        == 1
    )
    assert not any(
        labels and dict(labels).get("route") == "/v1/models/other/load" for _, labels in parsed
    )


def test_docs_list_every_route_and_every_metric(
    repo: Path, fake: FakeTriton, workers: list[tuple[str, str]]
) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    with make_client(repo, fake, memory_limit="1GiB", max_models=4) as c:
        c.post("/v1/endpoints/ep/switch", json={"to": "m:1"})
        c.post("/v1/rollouts/ep/start", json={"to": 2})
        c.post("/v1/models/m/load", json={"version": 1})
        routes = {
            (method.upper(), path)
            for path, operations in c.app.openapi()["paths"].items()  # type: ignore[attr-defined]
            for method in operations
        }
        families = list(text_string_to_metric_families(c.get("/metrics").text))
    documented_routes = set(re.findall(r"^\| `(GET|POST|DELETE)` \| `([^`]+)` \|", docs, re.M))
    assert documented_routes == routes
    documented_metrics = set(re.findall(r"^\| `(tritonctl_[a-z_]+)` \|", docs, re.M))
    served = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in families
        if not f.name.endswith("_created")  # prometheus_client's creation timestamps
    }
    assert documented_metrics == served


def test_metrics_say_when_the_serving_settings_do_not_read(repo: Path, fake: FakeTriton) -> None:
    settings = repo / "tritonctl.yaml"
    settings.write_text("eviction_policy: lru\n")
    with make_client(repo, fake) as c:
        parsed = samples(c.get("/metrics").text)
        assert value(parsed, "tritonctl_serving_config_valid") == 1
        settings.write_text("eviction_policy: mru\n")  # broken while the API runs
        parsed = samples(c.get("/metrics").text)
        memory = c.get("/v1/memory")
    assert value(parsed, "tritonctl_serving_config_valid") == 0
    assert value(parsed, "tritonctl_memory_used_bytes", method="cpu-metric") > 0
    assert not any(name == "tritonctl_memory_limit_bytes" for name, _ in parsed)
    assert memory.status_code == 400 and "mru" in memory.json()["error"]


def test_metrics_without_triton_still_report_endpoints(
    client: TestClient, fake: FakeTriton
) -> None:
    client.post("/v1/endpoints/ep/switch", json={"to": "m:1"})
    fake.down = True
    parsed = samples(client.get("/metrics").text)
    assert value(parsed, "tritonctl_triton_up") == 0
    assert not any(name == "tritonctl_model_ready" for name, _ in parsed)
    assert not any(name == "tritonctl_memory_used_bytes" for name, _ in parsed)
    assert (
        value(parsed, "tritonctl_endpoint_target_weight", endpoint="ep", model="m", version="1")
        == 100
    )


def test_requests_refused_for_the_token_are_counted_by_route(repo: Path, fake: FakeTriton) -> None:
    with make_client(repo, fake, token=TOKEN) as c:
        c.get("/v1/endpoints")
        parsed = samples(c.get("/metrics").text)
    assert (
        value(
            parsed,
            "tritonctl_api_requests_total",
            method="GET",
            route="/v1/endpoints",
            status="401",
        )
        == 1
    )


def test_a_literal_route_is_counted_as_itself_not_as_a_template_of_another_method(
    repo: Path, fake: FakeTriton
) -> None:
    with make_client(repo, fake) as c:
        status = c.post("/v1/endpoints/restore").status_code
        c.get("/v1/endpoints/restore")  # GET /v1/endpoints/{name}: an endpoint so named
        parsed = samples(c.get("/metrics").text)
    routes = {
        (dict(labels)["method"], dict(labels)["route"])
        for (name, labels), _ in parsed.items()
        if name == "tritonctl_api_requests_total"
    }
    assert ("POST", "/v1/endpoints/restore") in routes, (status, routes)
    assert ("GET", "/v1/endpoints/{name}") in routes
    assert ("POST", "/v1/endpoints/{name}") not in routes


def test_each_app_has_a_registry_of_its_own(repo: Path, fake: FakeTriton) -> None:
    first, second = make_client(repo, fake), make_client(repo, fake)
    first.get("/v1/models")
    one = samples(second.get("/metrics").text)
    assert not any(
        name == "tritonctl_api_requests_total" and dict(labels).get("route") == "/v1/models"
        for name, labels in one
    )
    assert REGISTRY.get_sample_value("tritonctl_api_requests_total") is None
    assert not any(m.name.startswith("tritonctl") for m in REGISTRY.collect())


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidNameError("x"), 400),
        (ArtifactError("x"), 400),
        (ConfigError("x"), 400),
        (EndpointError("x"), 400),
        (EndpointNotFoundError("x"), 404),
        (ModelNotFoundError("x"), 404),
        (RolloutNotFoundError("x"), 404),
        (VersionExistsError("x"), 409),
        (RolloutError("x"), 409),
        (MemoryBudgetError("x"), 409),
        (UnloadError("x"), 409),
        (GoldenMismatch("x"), 422),
        (LoadError("x"), 502),
        (ManagerError("x"), 502),
        (TritonUnreachableError("x"), 503),
    ],
)
def test_each_error_class_has_its_status(error: ManagerError, status: int) -> None:
    assert status_for(error) == status


def test_an_unexpected_failure_is_a_json_500_without_a_traceback(
    repo: Path, fake: FakeTriton, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> list[IndexEntry]:
        raise RuntimeError("disk on fire")

    working = fake.repository_index
    monkeypatch.setattr(fake, "repository_index", broken)
    app = create_app(repo, control_factory=lambda: fake)
    with TestClient(app, raise_server_exceptions=False) as c:
        response = c.get("/v1/models")
        assert "disk on fire" in error_of(response, 500)
        monkeypatch.setattr(fake, "repository_index", working)
        parsed = samples(c.get("/metrics").text)
    assert (
        value(
            parsed, "tritonctl_api_requests_total", method="GET", route="/v1/models", status="500"
        )
        == 1
    )


def test_unknown_paths_are_404_with_an_error_body(client: TestClient) -> None:
    error_of(client.get("/v1/nothing"), 404)
    error_of(client.delete("/v1/models"), 405)


def test_create_app_refuses_bad_settings_at_once(repo: Path) -> None:
    with pytest.raises(ConfigError):
        create_app(repo, memory_limit="lots")
    with pytest.raises(ManagerError):
        create_app(repo, "ftp://triton:21")


# --------------------------------------------------------------------------- CLI


def test_api_serve_runs_uvicorn_with_the_global_options(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    served: dict[str, Any] = {}

    def run(app: FastAPI, **options: Any) -> None:
        served.update(options, app=app)

    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setattr("manager.cli.api_cmds._check_listen", lambda host, port: None)
    monkeypatch.setenv("TRITONCTL_API_TOKEN", TOKEN)
    result = CliRunner().invoke(
        main,
        [
            "--repo",
            str(repo),
            "--url",
            "grpc://triton:8001",
            "--max-models",
            "3",
            "api",
            "serve",
            "--port",
            "9123",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:9123" in result.output
    assert served["host"] == "127.0.0.1" and served["port"] == 9123
    plane = served["app"].state.plane
    assert (plane.repo, plane.url, plane.max_models) == (repo, "grpc://triton:8001", 3)
    with TestClient(served["app"]) as c:
        assert c.get("/v1/rollouts").status_code == 401
        assert c.get("/v1/rollouts", headers={"Authorization": f"Bearer {TOKEN}"}).json() == {
            "rollouts": []
        }


def test_api_serve_on_loopback_without_a_token_answers_localhost_and_addresses_only(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a page whose name was rebound to 127.0.0.1 sends its own name as Host
    import uvicorn

    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app))
    # the ports are not listened on here: whether they are free does not matter
    monkeypatch.setattr("manager.cli.api_cmds._check_listen", lambda host, port: None)
    monkeypatch.delenv("TRITONCTL_API_TOKEN", raising=False)

    def app_of(*args: str) -> FastAPI:
        result = CliRunner().invoke(main, ["--repo", str(repo), "api", "serve", *args])
        assert result.exit_code == 0, result.output
        return served["app"]

    json_body = {"Content-Type": "application/json"}
    local = app_of()
    for base in ("http://localhost:8003", "http://127.0.0.1:8003", "http://[::1]:8003"):
        with TestClient(local, base_url=base) as c:
            assert c.get("/v1/rollouts").status_code == 200
    with TestClient(local, base_url="http://rebound.example:8003") as c:
        assert "not accepted" in error_of(c.post("/v1/endpoints/restore", headers=json_body), 400)
        assert "not accepted" in error_of(c.get("/v1/rollouts"), 400)
        assert c.get("/v1/health/live").status_code == 200
        assert c.get("/metrics").status_code == 200
    # with a token, or on another address (warned about), any name is answered
    with TestClient(app_of("--token", TOKEN), base_url="http://triton-box:8003") as c:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/v1/rollouts", headers=headers).status_code == 200
    with TestClient(app_of("--host", "0.0.0.0"), base_url="http://triton-box:8003") as c:
        assert c.get("/v1/rollouts").status_code == 200


def test_api_serve_refuses_bad_settings_before_listening(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("must not serve"))
    result = CliRunner().invoke(
        main, ["--repo", str(repo), "--memory-limit", "lots", "api", "serve"]
    )
    assert result.exit_code == 2
    assert "invalid memory limit" in result.output


def test_switch_and_split_pass_drain_on_default_true(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    real = Endpoints.switch

    def switch(self: Endpoints, *args: Any, drain: bool = True, **kw: Any) -> EndpointState:
        seen.append(drain)
        return real(self, *args, drain=drain, **kw)

    monkeypatch.setattr(Endpoints, "switch", switch)
    assert client.post("/v1/endpoints/ep/switch", json={"to": "m:1"}).status_code == 200
    body = {"to": "m:2", "drain": False}
    assert client.post("/v1/endpoints/ep/switch", json=body).status_code == 200
    assert seen == [True, False]

    splits: list[bool] = []
    real_split = Endpoints.split

    def split(self: Endpoints, *args: Any, drain: bool = True, **kw: Any) -> EndpointState:
        splits.append(drain)
        return real_split(self, *args, drain=drain, **kw)

    monkeypatch.setattr(Endpoints, "split", split)
    for body in ({"targets": ["m:1=50", "m:2=50"]}, {"targets": ["m:1=50"], "drain": False}):
        assert client.post("/v1/endpoints/ep/split", json=body).status_code == 200
    assert splits == [True, False]


class CountingTriton(FakeTriton):
    """Counts the requests a scrape makes: each one to a hung server costs the timeout."""

    def __init__(self, repo: Path) -> None:
        super().__init__(repo)
        self.requests = 0

    def _answer(self) -> None:
        self.requests += 1
        super()._answer()


@pytest.mark.parametrize("local", [False, True], ids=["remote", "local-server"])
def test_a_scrape_asks_a_server_that_does_not_answer_only_once(
    repo: Path, monkeypatch: pytest.MonkeyPatch, local: bool
) -> None:
    """A hung Triton costs SCRAPE_TIMEOUT_S per request: one, not one per reading, so that
    the scrape ends within Prometheus's scrape timeout and says tritonctl_triton_up 0."""
    if local:  # the server's processes are read: its metrics give the host's total only
        monkeypatch.setattr(
            MemoryMeter,
            "for_control",
            classmethod(lambda cls, control, url, repo: cls(control, server_pid=os.getpid())),
        )
    fake = CountingTriton(repo)
    with make_client(repo, fake, memory_limit="1GiB") as c:
        parsed = samples(c.get("/metrics").text)
        assert value(parsed, "tritonctl_triton_up") == 1
        assert value(parsed, "tritonctl_memory_total_bytes") == TOTAL
        assert fake.requests == 2  # the index and the metrics, once each
        fake.requests = 0
        fake.down = True
        parsed = samples(c.get("/metrics").text)
    assert value(parsed, "tritonctl_triton_up") == 0
    assert fake.requests == 1
