"""``tritonctl load|unload|ls``: drive the models a live Triton serves."""

from __future__ import annotations

from datetime import datetime, timezone

import click
from rich.table import Table

from manager import serving
from manager.cli.app import AppContext, main, pass_app
from manager.cli.common import Context, FiniteFloatRange, console, pass_context, print_json
from manager.controller import EnsureResult, budget_configured, load_model
from manager.footprint import LIVE_BASIS, Footprint
from manager.listing import live_memory, model_footprints, model_rows
from manager.metrics import MemoryReading
from manager.triton import TritonControl
from manager.units import format_size


def say(text: str) -> None:
    """One plain line: no markup, no highlighting, never wrapped."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _control(obj: Context) -> TritonControl:
    return obj.control()


@main.command()
@click.argument("name")
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    default=None,
    help="Serve this version (pins the version policy); versions that endpoints route "
    "to keep serving.",
)
@click.option(
    "--wait-timeout",
    type=FiniteFloatRange(min=0),
    default=None,
    metavar="S",
    help="Seconds to wait for the model to become READY; past them the command fails and "
    "Triton goes on loading it (default: the load timeout, --load-timeout, 600 s unless set).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def load(
    obj: AppContext, name: str, version: int | None, wait_timeout: float | None, as_json: bool
) -> None:
    """Load model NAME on the server and wait until it is READY.

    Without --version, NAME serves what its version policy selects among the versions in
    the repository (the newest by default), plus those endpoints route to: a newly
    published version is picked up, and nothing is done when those are READY already.

    With a memory budget (--memory-limit, --max-models, or tritonctl.yaml) it first makes
    room: it evicts what the policy picks, or refuses before loading when NAME cannot fit.
    """
    config = obj.serving_config()
    what = f"{name} version {version}" if version else name
    if wait_timeout is None:
        wait_timeout = obj.timeouts(config).load
        assert wait_timeout is not None
    # a wait longer than the load timeout gets a load call that may take as long
    with obj.control(config, load_timeout=wait_timeout) as control:
        doing = "making room for and loading" if budget_configured(config) else "loading"
        with console.status(f"{doing} {what} on {control.url}..."):
            result = load_model(control, obj.repo, config, name, version, wait_timeout=wait_timeout)
    if isinstance(result, EnsureResult):
        _print_ensured(result, as_json)
        return
    if as_json:
        print_json(result.to_json())
        return
    versions = ", ".join(str(v) for v in result.versions)
    if result.cache_hit:
        say(f"{name} already loaded (version {versions})")
    else:
        say(f"loaded {name} (version {versions}) in {result.seconds:.2f} s")


def _print_ensured(result: EnsureResult, as_json: bool) -> None:
    if as_json:
        print_json(result.to_json())
        return
    for e in result.evicted:
        say(f"evicted {e.model}:{e.version} ({format_size(e.bytes)}): {e.reason}")
    versions = ", ".join(str(v) for v in result.versions)
    if result.cache_hit:
        say(f"{result.name} already loaded (version {versions})")
        return
    measured = ""
    if result.footprints:
        methods = ", ".join(sorted({f.method for f in result.footprints}))
        measured = f", footprint {format_size(result.bytes_loaded)} ({methods})"
    say(f"loaded {result.name} (version {versions}) in {result.seconds:.2f} s{measured}")


@main.command()
@click.argument("name")
@click.option(
    "--wait-timeout",
    type=FiniteFloatRange(min=0),
    default=serving.DEFAULT_UNLOAD_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait until the model is UNAVAILABLE.",
)
@click.option("--dependents", is_flag=True, help="Also unload models that depend on it.")
@click.option(
    "--force", is_flag=True, help="Unload it even if endpoints route to it (they stop answering)."
)
@click.option(
    "--version",
    type=click.IntRange(min=1),
    default=None,
    help="Stop serving only this version; the model's other versions keep serving.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def unload(
    obj: Context,
    name: str,
    wait_timeout: float,
    dependents: bool,
    force: bool,
    version: int | None,
    as_json: bool,
) -> None:
    """Unload model NAME and wait until Triton has released it.

    A model that an endpoint of the repository routes to is refused unless --force. With
    --version only that version goes (one an endpoint routes to is refused).
    """
    if version is not None and (force or dependents):
        raise click.UsageError("--version does not go with --force or --dependents")
    label = name if version is None else f"{name}:{version}"
    with _control(obj) as control, console.status(f"unloading {label} on {control.url}..."):
        result = serving.unload(
            control,
            name,
            unload_dependents=dependents,
            wait_timeout=wait_timeout,
            repo=obj.repo,
            force=force,
            version=version,
        )
    if as_json:
        print_json(result.to_json())
    elif result.was_loaded:
        say(f"unloaded {label} in {result.seconds:.2f} s")
    else:
        say(f"{label} was not loaded")


def _when(ms: int | None) -> str:
    """Triton's ``last_inference`` (epoch ms) as ``versions`` shows times: UTC, ISO 8601."""
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def _print_memory(memory: MemoryReading) -> None:
    for dev in memory.devices():
        label = "host memory" if dev.device == "cpu" else f"GPU {dev.device}"
        say(f"{label}: {_bytes(dev.used_bytes)} used of {_bytes(dev.total_bytes)}")


def _memory_from(footprint: Footprint | None) -> str:
    if footprint is None:
        return "-"
    if footprint.basis == LIVE_BASIS:
        return f"{footprint.method} now"
    return footprint.method


_STATE_STYLE = {"READY": "green", "LOADING": "yellow", "UNLOADING": "yellow"}


@main.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of model versions.")
@pass_context
def ls(obj: Context, as_json: bool) -> None:
    """List the models the server knows: state, last inference, counts, memory.

    \b
    Columns:
      last inference   when the version last ran a request (UTC, ISO 8601)
      batch items      Triton's inference_count: one per batch item, so a request
                       with a batch of 8 counts 8
      requests ok      requests that succeeded (Triton's success count)
      requests failed  requests that failed
      memory           what a loaded version holds now where that can be read (the
                       Python-backend stubs of a local server), else its footprint
                       measured at load, else an estimate; `memory from` says which
    """
    with _control(obj) as control:
        view = serving.overview(control, obj.repo)
        url = control.url
        live = live_memory(control, url, obj.repo)
    if as_json:
        print_json(model_rows(view.models, obj.repo, live))
        return
    footprints = model_footprints(view.models, obj.repo, live)
    table = Table(title=f"models on {url}", title_justify="left")
    longest = max((len(r.name) for r in view.models), default=5)
    table.add_column("model", no_wrap=True, min_width=min(longest, 60))
    table.add_column("ver", no_wrap=True)
    table.add_column("state", no_wrap=True, min_width=11)
    table.add_column("last inference", no_wrap=True)
    for column in ("batch items", "requests ok", "requests failed", "memory"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("memory from", no_wrap=True)
    # reasons can hold a whole Python traceback: a terminal shows their start (`ls --json`
    # has them in full), a pipe or a file gets them whole
    table.add_column(
        "reason",
        no_wrap=True,
        overflow="ellipsis",
        max_width=48 if console.is_terminal else None,
    )
    for row in view.models:
        style = _STATE_STYLE.get(row.state, "dim")
        fp = footprints.get((row.name, row.version)) if row.version is not None else None
        table.add_row(
            row.name,
            "-" if row.version is None else str(row.version),
            f"[{style}]{row.state}[/]",
            _when(row.last_inference_ms),
            str(row.inference_count),
            str(row.success_count),
            str(row.fail_count),
            format_size(fp.bytes) if fp else "-",
            _memory_from(fp),
            row.reason,
        )
    console.print(table)
    if view.memory is not None:
        _print_memory(view.memory)
