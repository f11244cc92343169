"""Memory-aware serving on a real tritonserver: measured footprints, eviction, refusal.

Three Python-backend models each allocate (and touch) ``ALLOC_MIB`` of memory in
``initialize``; the budget holds two of them. On this CPU host used memory is the server's
process tree and a model's footprint the resident memory of its stub process.
"""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml
from click.testing import CliRunner

from manager import serving
from manager.audit import AuditLog
from manager.budget import MemoryBudget, MemoryLimit, ServingConfig
from manager.cli import main
from manager.controller import Controller, set_pin
from manager.endpoints import Endpoints, EndpointState, Target
from manager.errors import MemoryBudgetError, UnloadError
from manager.footprint import CPU_STUB_RSS, GPU_METRIC, FootprintStore
from manager.repository import Repository, write_json_atomic
from manager.rollout_service import aswitch
from manager.triton import TritonControl
from tests.integration.conftest import TritonHandle
from tests.integration.helpers import write_python_model

pytestmark = pytest.mark.integration

ALLOC_MIB = 160
ALLOC_BYTES = ALLOC_MIB * 2**20
A, B, C, HUGE = "mem_a", "mem_b", "mem_c", "mem_huge"
GROWS = "mem_grows"  # code only, so estimated small; allocates what a test sets
VERSIONED = "mem_versions"  # two versions, each allocating ALLOC_MIB
OURS = (A, B, C, HUGE, GROWS, VERSIONED)

ALLOC_MODEL_PY = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    MIB = {mib}


    class TritonPythonModel:
        def initialize(self, args):
            # ones(), not zeros(): every page is written, so it is resident
            self.buffer = np.ones(MIB * 2**20 // 8, dtype=np.float64)

        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                out = pb_utils.Tensor("OUTPUT0", (x * 2).astype(np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            return responses
    """
)


def infer(http_url: str, model: str) -> np.ndarray:
    client = httpclient.InferenceServerClient(http_url.removeprefix("http://"))
    try:
        x = np.array([1.0, 2.0], dtype=np.float32)
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out = client.infer(model, [inp]).as_numpy("OUTPUT0")
        assert out is not None
        np.testing.assert_allclose(out, x * 2)
        return out
    finally:
        client.close()


def states(control: TritonControl) -> dict[str, str]:
    return {e.name: e.state for e in control.repository_index() if e.name in OURS}


@pytest.fixture(scope="module")
def control(triton: TritonHandle) -> Iterator[TritonControl]:
    for name in (A, B, C):
        write_python_model(triton.repo, name, ALLOC_MODEL_PY.format(mib=ALLOC_MIB))
    huge = write_python_model(triton.repo, HUGE)
    write_python_model(triton.repo, GROWS, ALLOC_MODEL_PY.format(mib=1))
    write_python_model(
        triton.repo, VERSIONED, ALLOC_MODEL_PY.format(mib=ALLOC_MIB), versions=(1, 2)
    )
    # provenance says the artifact is 50 GB: its estimate cannot fit anywhere here
    write_json_atomic(huge / "1" / "tritonctl.json", {"name": HUGE, "size_bytes": 50 * 10**9})
    with TritonControl(triton.http_url, metrics_url=triton.metrics_url) as c:
        try:
            yield c
        finally:
            for name in OURS:
                serving.unload(c, name)
            FootprintStore(triton.repo).forget(HUGE)
            FootprintStore(triton.repo).forget(GROWS)


@pytest.fixture
def fresh(control: TritonControl) -> TritonControl:
    """None of this module's models loaded, and no pins left from another test."""
    for name in OURS:
        serving.unload(control, name)
    return control


def others_loaded(control: TritonControl) -> frozenset[str]:
    """Models other tests left loaded on the shared server: pinned, so never our victims."""
    return frozenset(e.name for e in control.repository_index() if e.ready and e.name not in OURS)


def controller(
    triton: TritonHandle, control: TritonControl, policy: str = "lru"
) -> tuple[Controller, int]:
    """A controller whose byte limit holds two of the three models (and what runs now).

    Its high watermark is the limit itself: a fraction of a limit that includes all that
    the shared server runs would leave room for fewer models the more other tests loaded.
    """
    probe = Controller(control, triton.repo)
    used = probe.meter.usage().used_bytes
    limit = used + int(2.5 * ALLOC_BYTES)
    config = ServingConfig(
        budget=MemoryBudget(limit=MemoryLimit(num_bytes=limit), high_watermark=1.0),
        eviction_policy=policy,
        pinned=others_loaded(control),
    )
    return Controller(control, triton.repo, config), limit


def test_loading_a_third_model_evicts_the_least_recently_inferred_one(
    triton: TritonHandle, fresh: TritonControl
) -> None:
    ctl, _ = controller(triton, fresh, "lru")
    assert ctl.meter.mode in ("cpu-process-rss", GPU_METRIC)
    # B is loaded first, so a fifo policy would pick B: only recency points at A
    assert not ctl.ensure_loaded(B).cache_hit
    assert not ctl.ensure_loaded(A).cache_hit
    infer(triton.http_url, A)
    time.sleep(0.05)
    infer(triton.http_url, B)

    result = ctl.ensure_loaded(C)

    assert [e.model for e in result.evicted] == [A]
    assert "lru" in result.evicted[0].reason
    assert states(fresh) == {
        A: "UNAVAILABLE",
        B: "READY",
        C: "READY",
        HUGE: "UNAVAILABLE",
        GROWS: "UNAVAILABLE",
        VERSIONED: "UNAVAILABLE",
    }
    infer(triton.http_url, B)
    infer(triton.http_url, C)
    assert ctl.stats.failures == 0
    assert ctl.stats.loads == 3 and ctl.stats.evictions == 1
    assert ctl.ensure_loaded(C).cache_hit
    evictions = [r for r in AuditLog(triton.repo).read() if r["action"] == "evict"]
    assert evictions[-1]["model"] == A and "lru" in evictions[-1]["reason"]
    assert evictions[-1]["bytes"] > 0


def test_measured_footprint_is_close_to_what_the_model_allocates(
    triton: TritonHandle, fresh: TritonControl
) -> None:
    ctl, _ = controller(triton, fresh)
    result = ctl.ensure_loaded(A)
    (footprint,) = result.footprints
    assert footprint.method in (CPU_STUB_RSS, GPU_METRIC)
    assert 0.7 * ALLOC_BYTES <= footprint.bytes <= 1.6 * ALLOC_BYTES, footprint
    assert footprint.load_seconds is not None and footprint.load_seconds > 0
    stored = FootprintStore(triton.repo).get(A, 1)
    assert stored is not None and stored.bytes == footprint.bytes
    # a model never loaded is estimated from what was measured for the others
    estimate = FootprintStore(triton.repo).footprint(C, 1)
    if FootprintStore(triton.repo).get(C, 1) is None:
        assert estimate.method == "estimate"
        assert 0.5 * ALLOC_BYTES <= estimate.bytes <= 2 * ALLOC_BYTES


def test_a_model_that_cannot_fit_is_refused_before_loading_with_the_missing_bytes(
    triton: TritonHandle, fresh: TritonControl
) -> None:
    ctl, limit = controller(triton, fresh)
    ctl.ensure_loaded(A)

    with pytest.raises(MemoryBudgetError, match=r"missing") as caught:
        ctl.ensure_loaded(HUGE)

    missing = re.search(r"\((\d+) bytes\) missing", str(caught.value))
    assert missing is not None and int(missing.group(1)) > 50 * 10**9 - limit
    huge = [e for e in fresh.repository_index() if e.name == HUGE]
    assert all(e.state == "UNAVAILABLE" and e.reason == "" for e in huge)  # never tried
    assert states(fresh)[A] == "READY"  # nothing was evicted for a load that cannot fit
    assert AuditLog(triton.repo).read()[-1]["action"] == "refuse"


def test_a_pinned_model_is_never_chosen(triton: TritonHandle, fresh: TritonControl) -> None:
    ctl, _ = controller(triton, fresh, "lru")
    ctl.ensure_loaded(B)
    ctl.ensure_loaded(A)
    infer(triton.http_url, A)
    time.sleep(0.05)
    infer(triton.http_url, B)
    set_pin(triton.repo, A, True)
    try:
        plan = ctl.plan(C)
        assert [v.model for v in plan.victims] == [B]
        assert any(p.model == A and "pin" in p.reason for p in plan.protected)
        result = ctl.ensure_loaded(C)
    finally:
        set_pin(triton.repo, A, False)
    assert [e.model for e in result.evicted] == [B]
    assert states(fresh)[A] == "READY" and states(fresh)[C] == "READY"
    infer(triton.http_url, A)
    infer(triton.http_url, C)


def run_cli(triton: TritonHandle, *args: str) -> tuple[int, str]:
    argv = ["--repo", str(triton.repo), "--url", triton.http_url, *args]
    result = CliRunner().invoke(main, argv)
    return result.exit_code, result.output


def test_cli_load_makes_room_and_ls_shows_footprints(
    triton: TritonHandle, fresh: TritonControl, tmp_path: Path
) -> None:
    _, limit = controller(triton, fresh)
    settings = tmp_path / "tritonctl.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "memory_limit": limit,
                "high_watermark": 1.0,
                "eviction_policy": "lru",
                "pinned": sorted(others_loaded(fresh)),
            }
        )
    )
    budget = ["--config", str(settings)]
    for name in (A, B):
        code, out = run_cli(triton, *budget, "load", name)
        assert code == 0, out
        infer(triton.http_url, name)
        time.sleep(0.05)

    code, out = run_cli(triton, *budget, "evict", "--dry-run", "--for", C, "--json")
    assert code == 0, out
    plan = json.loads(out)
    assert [v["model"] for v in plan["victims"]] == [A]

    code, out = run_cli(triton, *budget, "load", C, "--json")
    assert code == 0, out
    loaded = json.loads(out)
    assert loaded["cache_hit"] is False and [e["model"] for e in loaded["evicted"]] == [A]

    code, out = run_cli(triton, "ls", "--json")
    assert code == 0, out
    rows = {r["name"]: r for r in json.loads(out) if r["name"] in OURS}
    assert rows[C]["footprint_method"] in (CPU_STUB_RSS, GPU_METRIC)
    assert rows[C]["footprint_bytes"] > 0.7 * ALLOC_BYTES
    assert rows[HUGE]["footprint_method"] == "estimate"

    code, out = run_cli(triton, *budget, "evict", C)
    assert code == 0 and f"evicted {C}" in out, out
    assert states(fresh)[C] == "UNAVAILABLE"
    # a plan that cannot make room says so in its exit status, as the load would fail
    code, out = run_cli(triton, *budget, "evict", "--dry-run", "--for", HUGE)
    assert code == 1 and "cannot make room" in out, out
    code, out = run_cli(triton, *budget, "evict", "--dry-run", "--for", HUGE, "--json")
    assert code == 1 and json.loads(out)["refused"], out


def test_cli_endpoint_switch_makes_room_within_the_budget(
    triton: TritonHandle, fresh: TritonControl, tmp_path: Path
) -> None:
    _, limit = controller(triton, fresh)
    settings = tmp_path / "tritonctl.yaml"
    pinned = sorted(others_loaded(fresh))
    settings.write_text(
        yaml.safe_dump(
            {
                "memory_limit": limit,
                "high_watermark": 1.0,
                "eviction_policy": "lru",
                "pinned": pinned,
            }
        )
    )
    budget = ["--config", str(settings)]
    for name in (A, B):
        code, out = run_cli(triton, *budget, "load", name)
        assert code == 0, out
        infer(triton.http_url, name)
        time.sleep(0.05)
    try:
        # the endpoint's target is loaded as `load` would: A (least recently used) goes
        code, out = run_cli(triton, *budget, "endpoint", "switch", "mem_front", "--to", C)
        assert code == 0, out
        assert states(fresh)[A] == "UNAVAILABLE" and states(fresh)[C] == "READY"
        infer(triton.http_url, "mem_front")
        evictions = [r for r in AuditLog(triton.repo).read() if r["action"] == "evict"]
        assert evictions[-1]["model"] == A and f"make room for {C}" in evictions[-1]["reason"]
        with Controller(fresh, triton.repo).locked():  # the budget's lock is free again
            pass
    finally:
        run_cli(triton, "endpoint", "delete", "mem_front")


def test_async_switch_makes_room_within_the_repository_budget(
    triton: TritonHandle, fresh: TritonControl
) -> None:
    """``aswitch`` keeps to the budget of the repository's tritonctl.yaml as `endpoint
    switch` does (it reads no other settings: the file is the repository's own here)."""
    _, limit = controller(triton, fresh)
    settings = triton.repo / "tritonctl.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "memory_limit": limit,
                "high_watermark": 1.0,
                "eviction_policy": "lru",
                "pinned": sorted(others_loaded(fresh)),
            }
        )
    )
    try:
        for name in (A, B):
            code, out = run_cli(triton, "load", name)
            assert code == 0, out
            infer(triton.http_url, name)
            time.sleep(0.05)
        state = asyncio.run(aswitch(triton.repo, triton.http_url, "mem_afront", C))
        assert isinstance(state, EndpointState) and state.targets == [Target(C, 1, 100.0)]
        assert states(fresh)[A] == "UNAVAILABLE" and states(fresh)[C] == "READY"
        evictions = [r for r in AuditLog(triton.repo).read() if r["action"] == "evict"]
        assert evictions[-1]["model"] == A and f"make room for {C}" in evictions[-1]["reason"]
    finally:
        settings.unlink()
        run_cli(triton, "endpoint", "delete", "mem_afront")


def test_a_version_no_endpoint_routes_to_is_evicted_alone_and_the_routed_one_serves_on(
    triton: TritonHandle, fresh: TritonControl
) -> None:
    ctl, _ = controller(triton, fresh)
    endpoints = Endpoints(Repository(triton.repo), fresh)
    try:
        ctl.ensure_loaded(VERSIONED, 1)
        endpoints.switch("mem_vfront", VERSIONED, 1)
        endpoints.switch("mem_vfront", VERSIONED, 2)  # 1 stays served: a switch back is instant
        assert version_states(fresh, VERSIONED) == {1: "READY", 2: "READY"}
        infer(triton.http_url, "mem_vfront")
        # A (which allocates ALLOC_BYTES) fits only if version 1 goes; room short of
        # ALLOC_BYTES, so that version 1 is not served again once A is measured
        usage = ctl.meter.usage()
        need = ctl.footprints.footprint(A, 1).bytes
        assert need <= ALLOC_BYTES + usage.per_version[(VERSIONED, 1)] - 20 * 2**20
        limit = usage.used_bytes + min(need, ALLOC_BYTES) - 10 * 2**20
        ctl.config = replace(
            ctl.config, budget=replace(ctl.config.budget, limit=MemoryLimit(num_bytes=limit))
        )
        # the model is routed to, yet not protected as a whole: its version 1 may go
        plan = ctl.plan(A)
        assert [(v.model, v.version) for v in plan.victims] == [(VERSIONED, 1)]
        assert any(p.model == VERSIONED and p.version == 2 for p in plan.protected)

        result = ctl.ensure_loaded(A)

        assert [(e.model, e.version) for e in result.evicted] == [(VERSIONED, 1)]
        assert version_states(fresh, VERSIONED) == {1: "UNAVAILABLE", 2: "READY"}
        infer(triton.http_url, "mem_vfront")
        infer(triton.http_url, A)
        evictions = [r for r in AuditLog(triton.repo).read() if r["action"] == "evict"]
        assert (evictions[-1]["model"], evictions[-1]["version"]) == (VERSIONED, 1)
        # the routed version is never chosen: B makes room by evicting A
        assert [(e.model, e.version) for e in ctl.ensure_loaded(B).evicted] == [(A, 1)]
        assert version_states(fresh, VERSIONED)[2] == "READY"
        with pytest.raises(UnloadError, match=f"tritonctl unload {VERSIONED} --version V"):
            ctl.evict(VERSIONED)  # by hand, the model as a whole: refused
    finally:
        endpoints.delete("mem_vfront")


def version_states(control: TritonControl, name: str) -> dict[int, str]:
    return {e.version: e.state for e in control.repository_index() if e.name == name and e.version}


def grows_past_its_estimate(
    triton: TritonHandle, control: TritonControl, extra_mib: int
) -> tuple[Controller, int]:
    """A loaded, and GROWS allocating ``extra_mib`` more than it is estimated at; the
    limit holds A and GROWS's estimate (and what runs now), so the load goes ahead."""
    ctl, _ = controller(triton, control)
    ctl.footprints.forget(GROWS)
    ctl.ensure_loaded(A)
    estimate = ctl.footprints.footprint(GROWS, 1)
    assert estimate.method == "estimate"
    mib = estimate.bytes // 2**20 + extra_mib
    write_python_model(triton.repo, GROWS, ALLOC_MODEL_PY.format(mib=mib))
    used = ctl.meter.usage().used_bytes
    limit = used + estimate.bytes + 20 * 2**20
    ctl.config = ServingConfig(  # a high watermark of 1: loads may go up to the limit
        budget=MemoryBudget(limit=MemoryLimit(num_bytes=limit), high_watermark=1.0),
        eviction_policy="lru",
        pinned=others_loaded(control),
    )
    return ctl, limit


def test_a_load_larger_than_its_estimate_evicts_others_back_under_the_limit_at_once(
    triton: TritonHandle, fresh: TritonControl
) -> None:
    ctl, limit = grows_past_its_estimate(triton, fresh, extra_mib=100)

    result = ctl.ensure_loaded(GROWS)

    assert [e.model for e in result.evicted] == [A]
    assert "back under the high watermark" in result.evicted[0].reason
    assert states(fresh)[GROWS] == "READY" and states(fresh)[A] == "UNAVAILABLE"
    assert ctl.meter.usage().used_bytes <= limit
    infer(triton.http_url, GROWS)


def test_a_load_that_cannot_fit_once_measured_is_unloaded_again_and_refused_next_time(
    triton: TritonHandle, fresh: TritonControl
) -> None:
    ctl, _ = grows_past_its_estimate(triton, fresh, extra_mib=2 * ALLOC_MIB + 100)

    with pytest.raises(MemoryBudgetError, match="it was unloaded again"):
        ctl.ensure_loaded(GROWS)

    assert states(fresh)[GROWS] == "UNAVAILABLE" and states(fresh)[A] == "READY"
    infer(triton.http_url, A)
    measured = FootprintStore(triton.repo).get(GROWS, 1)
    assert measured is not None and measured.bytes > 2 * ALLOC_BYTES
    with pytest.raises(MemoryBudgetError, match="exceed the high watermark"):
        ctl.ensure_loaded(GROWS)  # refused before loading, with what it measured
    assert AuditLog(triton.repo).read()[-1]["action"] == "refuse"
    assert states(fresh)[GROWS] == "UNAVAILABLE"
