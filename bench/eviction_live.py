"""Eviction policies against a real tritonserver, next to the simulator on the same trace.

Run: ``python bench/eviction_live.py`` (about 3 minutes on 2 cores). It writes
``--models`` (7) Python-backend models that allocate 40-160 MiB each in ``initialize``
(some also sleep there, so reloads do not all cost the same), and:

1. loads each model once on an embedded tritonserver to measure its footprint and load
   time (the catalogue);
2. starts one embedded server per policy (a copy of the repository each, on free ports),
   each with a byte budget of what that server uses with nothing loaded plus room for about
   ``--slots`` (3) models of median size;
3. replays one Zipf trace of ``--requests`` (80) requests per policy through the real
   :class:`manager.controller.Controller` (ensure loaded, evicting as the policy says and
   waiting until the victim's memory is free, then one inference), all policies at once
   (``--sequential`` for one after the other: a miss costs ~3 s here, a load ~1.5 s and an
   unload ~1.3 s of mostly waiting on Triton, so in parallel the run takes the time of one);
4. replays the same trace in the simulator (``manager.simulator``) with the measured
   catalogue and the same budget (less the server's own memory), and Belady's
   furthest-next-use as the reference.

It prints per policy the hit ratio and MiB loaded per request, live and simulated, and
last the hit ratios as ratios to Belady's. ``--json`` prints the numbers instead. Every
server is stopped by its pid at the end (also on SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from rich.console import Console
from rich.table import Table

from manager import serving
from manager.budget import MemoryBudget, MemoryLimit, ServingConfig
from manager.controller import Controller
from manager.footprint import FOOTPRINTS_FILE
from manager.modelconfig import TensorSpec, build_config, write_config
from manager.policies import get_policy, policy_names
from manager.server import EmbeddedServer, ServerInfo, free_ports
from manager.simulator import (
    CatalogueModel,
    ReplayResult,
    RequestOutcome,
    belady,
    replay,
    simulate,
    zipf_trace,
)
from manager.triton import TritonControl

MIB = 2**20
SIZES_MIB = (40, 60, 80, 100, 120, 140, 160, 50)
EXTRA_INIT_S = (0.0, 0.6, 0.0, 0.3, 0.0, 0.6, 0.0, 0.3)

MODEL_PY = textwrap.dedent(
    """
    import time

    import numpy as np
    import triton_python_backend_utils as pb_utils

    MIB = {mib}
    EXTRA_S = {extra}


    class TritonPythonModel:
        def initialize(self, args):
            self.buffer = np.ones(MIB * 2**20 // 8, dtype=np.float64)
            time.sleep(EXTRA_S)

        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                out = pb_utils.Tensor("OUTPUT0", (x * 2).astype(np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            return responses
    """
)


@dataclass
class PolicyRow:
    policy: str
    live: ReplayResult
    sim: ReplayResult
    failures: int
    seconds: float


def write_models(repo: Path, count: int) -> list[str]:
    names = []
    for i in range(count):
        name = f"live_{i}"
        folder = repo / name
        (folder / "1").mkdir(parents=True)
        config = build_config(
            name,
            [TensorSpec("INPUT0", "FP32", (-1,))],
            [TensorSpec("OUTPUT0", "FP32", (-1,))],
            backend="python",
            kind="cpu",
        )
        write_config(folder / "config.pbtxt", config)
        source = MODEL_PY.format(mib=SIZES_MIB[i % len(SIZES_MIB)], extra=EXTRA_INIT_S[i % 8])
        (folder / "1" / "model.py").write_text(source)
        names.append(name)
    return names


def infer(client: httpclient.InferenceServerClient, name: str) -> None:
    x = np.array([1.0, 2.0], dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer(name, [inp]).as_numpy("OUTPUT0")
    if out is None or not np.allclose(out, x * 2):
        raise RuntimeError(f"{name} answered {out!r}")


def unload_all(control: TritonControl, names: Sequence[str]) -> None:
    for name in names:
        serving.unload(control, name)


def measure_catalogue(
    control: TritonControl, repo: Path, names: Sequence[str], console: Console
) -> list[CatalogueModel]:
    ctl = Controller(control, repo)
    catalogue = []
    for name in names:
        result = ctl.ensure_loaded(name)
        (footprint,) = result.footprints
        catalogue.append(CatalogueModel(name, footprint.bytes, result.seconds))
        ctl.unload(name)
        console.print(
            f"[dim]{name}: {footprint.bytes / MIB:.0f} MiB ({footprint.method}), "
            f"load {result.seconds:.2f} s[/]"
        )
    return catalogue


def replay_policy(
    policy: str,
    trace: Sequence[str],
    control: TritonControl,
    client: httpclient.InferenceServerClient,
    repo: Path,
    limit: int,
    names: Sequence[str],
) -> tuple[ReplayResult, int]:
    unload_all(control, names)
    config = ServingConfig(
        budget=MemoryBudget(limit=MemoryLimit(num_bytes=limit)), eviction_policy=policy
    )
    ctl = Controller(control, repo, config)
    failures = 0

    def request(name: str) -> RequestOutcome:
        nonlocal failures
        try:
            result = ctl.ensure_loaded(name)
            infer(client, name)
        except Exception as exc:
            failures += 1
            print(f"request for {name} failed: {exc}", file=sys.stderr)
            return RequestOutcome(hit=False)
        return RequestOutcome(
            hit=result.cache_hit,
            bytes_loaded=result.bytes_loaded,
            load_seconds=result.seconds,
            evictions=len(result.evicted),
        )

    return replay(trace, request, policy), failures


def render(rows: Sequence[PolicyRow], sim_ref: ReplayResult, console: Console) -> None:
    table = Table(title="live vs simulated, same trace", title_justify="left")
    columns = (
        "policy",
        "hit live",
        "hit sim",
        "MiB/req live",
        "MiB/req sim",
        "fails",
        "live s",
        "hit/Belady live",
        "hit/Belady sim",
        "bytes/Belady live",
        "bytes/Belady sim",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "policy" else "right", no_wrap=True)
    table.add_row(
        "belady (offline)",
        "-",
        f"{sim_ref.hit_ratio:.3f}",
        "-",
        f"{sim_ref.bytes_per_request / MIB:.1f}",
        *("-", "-", "1.000", "1.000", "1.000", "1.000"),
    )
    hit_ref = sim_ref.hit_ratio or 1.0
    bytes_ref = sim_ref.bytes_per_request or 1.0
    for row in rows:
        table.add_row(
            row.policy,
            f"{row.live.hit_ratio:.3f}",
            f"{row.sim.hit_ratio:.3f}",
            f"{row.live.bytes_per_request / MIB:.1f}",
            f"{row.sim.bytes_per_request / MIB:.1f}",
            str(row.failures),
            f"{row.seconds:.0f}",
            f"{row.live.hit_ratio / hit_ref:.3f}",
            f"{row.sim.hit_ratio / hit_ref:.3f}",
            f"{row.live.bytes_per_request / bytes_ref:.3f}",
            f"{row.sim.bytes_per_request / bytes_ref:.3f}",
        )
    console.print(table)


@dataclass
class Lane:
    """One policy's own server (one server per repository) and repository copy."""

    policy: str
    repo: Path
    server: EmbeddedServer
    info: ServerInfo | None = None


def copy_repository(source: Path, target: Path) -> None:
    """The models and the measured footprints (so every lane starts knowing them)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".tritonctl"))
    footprints = source / ".tritonctl" / FOOTPRINTS_FILE
    (target / ".tritonctl").mkdir()
    shutil.copyfile(footprints, target / ".tritonctl" / FOOTPRINTS_FILE)


def run_lane(
    lane: Lane, trace: Sequence[str], names: Sequence[str], slots_bytes: int
) -> tuple[ReplayResult, int, int, float]:
    """Replay ``trace`` on the lane's server; (result, failures, server bytes, seconds)."""
    assert lane.info is not None
    t0 = time.perf_counter()
    with TritonControl(lane.info.http_url, metrics_url=lane.info.metrics_url) as control:
        client = httpclient.InferenceServerClient(lane.info.http_url.removeprefix("http://"))
        try:
            base = Controller(control, lane.repo).meter.usage().used_bytes
            live, failures = replay_policy(
                lane.policy, trace, control, client, lane.repo, base + slots_bytes, names
            )
            unload_all(control, names)
        finally:
            client.close()
    return live, failures, base, time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=7, help="how many models (max 8)")
    parser.add_argument("--requests", type=int, default=80, help="requests in the trace")
    parser.add_argument("--slots", type=float, default=3.0, help="budget in median models")
    parser.add_argument("--alpha", type=float, default=1.0, help="Zipf exponent")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--policy", choices=policy_names(), action="append", help="only these")
    parser.add_argument(
        "--sequential", action="store_true", help="one policy after the other (slower)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON, not tables")
    args = parser.parse_args(argv)
    console = Console(stderr=args.json)
    if not console.is_terminal:
        console = Console(width=175, stderr=args.json)
    # SIGTERM ends the run through the finally blocks, so every server is stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    policies = args.policy or policy_names()
    root = Path(tempfile.mkdtemp(prefix="tritonctl-evict-live-"))
    source = root / "catalogue"
    source.mkdir()
    names = write_models(source, min(args.models, len(SIZES_MIB)))
    started = time.perf_counter()
    lanes: list[Lane] = []
    try:
        measuring = EmbeddedServer(source)
        info = measuring.start(*free_ports(3), metrics_interval_ms=200, exit_timeout_s=5)
        try:
            with TritonControl(info.http_url, metrics_url=info.metrics_url) as control:
                catalogue = measure_catalogue(control, source, names, console)
        finally:
            measuring.stop(timeout=30)
        median = statistics.median(m.size for m in catalogue)
        slots_bytes = int(args.slots * median)
        trace = zipf_trace(names, args.requests, alpha=args.alpha, seed=args.seed)
        console.print(
            f"{len(names)} models, {sum(m.size for m in catalogue) / MIB:.0f} MiB in all; "
            f"limit = server alone + {slots_bytes / MIB:.0f} MiB (~{args.slots:g} models); "
            f"{len(trace)} requests, Zipf alpha {args.alpha}, seed {args.seed}; "
            f"{len(set(trace))} distinct models asked; "
            + ("one policy at a time" if args.sequential else "one server per policy, in parallel")
        )
        for policy in policies:
            lane = Lane(policy, root / policy, EmbeddedServer(root / policy))
            copy_repository(source, lane.repo)
            lanes.append(lane)
            lane.info = lane.server.start(*free_ports(3), metrics_interval_ms=200, exit_timeout_s=5)
        workers = 1 if args.sequential else len(lanes)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(run_lane, lane, trace, names, slots_bytes) for lane in lanes]
            outcomes = [f.result() for f in futures]
    finally:
        for lane in lanes:
            lane.server.stop(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    sim_ref = belady(trace, catalogue, slots_bytes)
    rows = []
    for lane, (live, failures, _base, seconds) in zip(lanes, outcomes, strict=True):
        sim = simulate(
            trace,
            catalogue,
            slots_bytes,
            get_policy(lane.policy, budget_bytes=slots_bytes),
            label=lane.policy,
        )
        rows.append(PolicyRow(lane.policy, live, sim, failures, seconds))
    elapsed = time.perf_counter() - started
    if args.json:
        print(json.dumps(as_json(rows, sim_ref, slots_bytes, len(trace), elapsed), indent=2))
    else:
        render(rows, sim_ref, console)
        console.print(f"[dim]{elapsed:.0f} s in all[/]")
    return 0


def as_json(
    rows: Sequence[PolicyRow],
    sim_ref: ReplayResult,
    slots_bytes: int,
    requests: int,
    elapsed: float,
) -> dict[str, object]:
    ref = sim_ref.hit_ratio or 1.0
    bytes_ref = sim_ref.bytes_per_request or 1.0
    return {
        "budget_bytes_above_server": slots_bytes,
        "requests": requests,
        "belady_hit_ratio": sim_ref.hit_ratio,
        "belady_bytes_per_request": sim_ref.bytes_per_request,
        "seconds": round(elapsed, 1),
        "policies": [
            {
                "policy": r.policy,
                "live_hit_ratio": round(r.live.hit_ratio, 4),
                "sim_hit_ratio": round(r.sim.hit_ratio, 4),
                "live_bytes_per_request": round(r.live.bytes_per_request),
                "sim_bytes_per_request": round(r.sim.bytes_per_request),
                "failures": r.failures,
                "live_hit_vs_belady": round(r.live.hit_ratio / ref, 4),
                "sim_hit_vs_belady": round(r.sim.hit_ratio / ref, 4),
                "live_bytes_vs_belady": round(r.live.bytes_per_request / bytes_ref, 4),
                "sim_bytes_vs_belady": round(r.sim.bytes_per_request / bytes_ref, 4),
            }
            for r in rows
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
