"""Eviction-policy bench: replay request traces in the simulator and compare to Belady.

Run: ``python bench/eviction.py`` (about 10 s). For each trace it prints, per policy, the hit
ratio, GiB and seconds of loading per request, and last the ratios of hit ratio and of bytes
loaded to Belady's furthest-next-use on the same trace (see ``manager.simulator`` for what
that reference is and is not). ``--json`` prints the numbers instead.

The policies are the real objects from ``manager.policies``. To replay a trace against a
live server instead, pass a callable that serves one request to ``replay_live``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from manager.policies import get_policy, policy_names
from manager.simulator import (
    CatalogueModel,
    ReplayResult,
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
TraceMaker = Callable[[Sequence[str], int, float, int], list[str]]

TRACES: dict[str, TraceMaker] = {
    "zipf": lambda names, n, alpha, seed: zipf_trace(names, n, alpha=alpha, seed=seed),
    "phase shift": lambda names, n, alpha, seed: phase_shift_trace(
        names, n, alpha=alpha, seed=seed + 1
    ),
    "periodic scan": lambda names, n, alpha, seed: scan_trace(
        names, n, alpha=alpha, seed=seed + 2, scan_every=2000
    ),
    "drift": lambda names, n, alpha, seed: drift_trace(names, n, alpha=alpha, seed=seed + 3),
}


@dataclass
class TraceReport:
    """All policies' results on one trace, with Belady's as the reference."""

    trace: str
    reference: ReplayResult
    results: list[ReplayResult]

    def hit_vs_reference(self, result: ReplayResult) -> float:
        return result.hit_ratio / self.reference.hit_ratio if self.reference.hit_ratio else 0.0

    def bytes_vs_reference(self, result: ReplayResult) -> float:
        reference = self.reference.bytes_per_request
        return result.bytes_per_request / reference if reference else 0.0

    def by_label(self, label: str) -> ReplayResult:
        return next(r for r in self.results if r.label == label)

    def best(self) -> ReplayResult:
        return max(self.results, key=lambda r: r.hit_ratio)


def replay_live(
    trace: Sequence[str], request_model: Callable[[str], RequestOutcome], label: str
) -> ReplayResult:
    """Replay ``trace`` through ``request_model`` (e.g. ensure loaded on a live server, then
    infer, returning whether the model was already loaded and what was loaded) and count
    the outcomes like the simulator does, so the result fits in the same table."""
    return replay(trace, request_model, label)


def run_trace(
    name: str,
    trace: Sequence[str],
    catalogue: Sequence[CatalogueModel],
    budget_bytes: int,
    max_models: int | None,
    policies: Sequence[str],
) -> TraceReport:
    reference = belady(trace, catalogue, budget_bytes, max_models=max_models)
    results = [
        simulate(
            trace,
            catalogue,
            budget_bytes,
            get_policy(policy, budget_bytes=budget_bytes, max_models=max_models),
            max_models=max_models,
            label=policy,
        )
        for policy in policies
    ]
    return TraceReport(name, reference, results)


def render(report: TraceReport, console: Console) -> None:
    table = Table(title=f"{report.trace}", title_justify="left")
    for column in ("policy", "hit ratio", "GiB loaded/req", "load s/req"):
        table.add_column(column, justify="left" if column == "policy" else "right", no_wrap=True)
    table.add_column("hit ratio/Belady", justify="right", no_wrap=True)
    table.add_column("bytes/Belady", justify="right", no_wrap=True)
    best = report.best()
    for result in [report.reference, *report.results]:
        is_ref = result is report.reference
        table.add_row(
            result.label + (" (offline)" if is_ref else ""),
            f"{result.hit_ratio:.3f}",
            f"{result.bytes_per_request / GIB:.3f}",
            f"{result.load_seconds_per_request:.3f}",
            f"{report.hit_vs_reference(result):.3f}",
            f"{report.bytes_vs_reference(result):.3f}",
        )
    console.print(table)
    cheapest = min(report.results, key=lambda r: r.load_seconds)
    verdict = (
        f"best hit ratio: {best.label} ({report.hit_vs_reference(best):.3f}x Belady); "
        f"least load time: {cheapest.label}"
    )
    if any(r.label == "lru" for r in report.results):
        verdict += f"; lru: {report.hit_vs_reference(report.by_label('lru')):.3f}x Belady"
    console.print(verdict)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=100, help="catalogue size")
    parser.add_argument("--requests", type=int, default=20000, help="requests per trace")
    parser.add_argument("--alpha", type=float, default=0.9, help="Zipf exponent")
    parser.add_argument(
        "--budget",
        type=float,
        default=0.15,
        help="memory budget as a fraction of the whole catalogue's bytes",
    )
    parser.add_argument("--max-models", type=int, default=None, help="also limit the count")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--trace", choices=list(TRACES), action="append", help="only these")
    parser.add_argument("--policy", choices=policy_names(), action="append", help="only these")
    parser.add_argument("--json", action="store_true", help="print JSON, not tables")
    args = parser.parse_args(argv)

    catalogue = make_catalogue(args.models, seed=args.seed)
    names = [m.name for m in catalogue]
    total = sum(m.size for m in catalogue)
    budget_bytes = int(total * args.budget)
    policies = args.policy or policy_names()
    console = Console()
    if not console.is_terminal:
        console = Console(width=100)
    if not args.json:
        console.print(
            f"{args.models} models, {total / GIB:.0f} GiB in all, budget {budget_bytes / GIB:.1f}"
            f" GiB ({args.budget:.0%})"
            + (f", at most {args.max_models} loaded" if args.max_models else "")
            + f"; {args.requests} requests per trace, Zipf alpha {args.alpha}, seed {args.seed}"
        )
    reports = []
    for name in args.trace or list(TRACES):
        started = time.perf_counter()
        trace = TRACES[name](names, args.requests, args.alpha, args.seed)
        report = run_trace(name, trace, catalogue, budget_bytes, args.max_models, policies)
        reports.append(report)
        if not args.json:
            render(report, console)
            console.print(f"[dim]{time.perf_counter() - started:.1f} s[/]\n")
    if args.json:
        print(json.dumps([_as_json(r) for r in reports], indent=2))
    return 0


def _as_json(report: TraceReport) -> dict[str, object]:
    return {
        "trace": report.trace,
        "results": [
            {
                "policy": r.label,
                "hit_ratio": round(r.hit_ratio, 4),
                "bytes_per_request": round(r.bytes_per_request),
                "load_seconds_per_request": round(r.load_seconds_per_request, 4),
                "hit_ratio_vs_belady": round(report.hit_vs_reference(r), 4),
                "bytes_vs_belady": round(report.bytes_vs_reference(r), 4),
            }
            for r in [report.reference, *report.results]
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
