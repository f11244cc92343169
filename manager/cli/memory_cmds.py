"""``tritonctl evict|pin|unpin|controller``: the memory budget by hand and in a loop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click
from rich.table import Table

from manager.audit import ACTIONS, AuditLog
from manager.budget import CONFIG_FILENAME, ServingConfig, find_config_file
from manager.cli.app import AppContext, main, pass_app
from manager.cli.common import FiniteFloatRange, console, err_console, print_json
from manager.controller import Controller, EvictionPlan, EvictionPreview, set_pin, sole_loop
from manager.errors import ManagerError
from manager.repository import Repository
from manager.units import format_size


def say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def open_controller(
    obj: AppContext, config: ServingConfig | None = None, **options: Any
) -> Iterator[Controller]:
    """A controller for the server and repository of the global options (the timeouts:
    the options, the environment, then ``config``'s)."""
    config = config or obj.serving_config()
    with obj.control(config) as control:
        yield Controller(control, obj.repo, config, **options)


def _print_table(table: Table) -> None:
    console.print(table)


def render_plan(plan: EvictionPlan) -> None:
    usage = plan.usage
    say(
        f"used {format_size(usage.used_bytes)} of limit {format_size(plan.limit_bytes)} "
        f"({usage.method}); high watermark {format_size(plan.high_bytes)}, "
        f"low {format_size(plan.low_bytes)}; {plan.loaded} models loaded"
        + (f" (max {plan.max_models})" if plan.max_models else "")
        + f"; policy {plan.policy}"
    )
    if plan.for_model is not None:
        what = plan.for_model
        if plan.footprint is not None:
            what += (
                f" ({format_size(plan.footprint.bytes)}, {plan.footprint.method}"
                + (f": {plan.footprint.basis}" if plan.footprint.basis else "")
                + ")"
            )
        say(f"to load {what}:")
    if plan.refused:
        say(f"cannot make room: {plan.refused}")
    elif plan.victims:
        table = Table(title="would evict", title_justify="left")
        for column in ("model", "ver", "memory", "reason"):
            table.add_column(column, no_wrap=column != "reason")
        for v in plan.victims:
            table.add_row(v.model, str(v.version), format_size(v.bytes), v.reason)
        _print_table(table)
    else:
        say("nothing would be evicted now")
    if plan.ranking:
        table = Table(title="eviction order", title_justify="left")
        for column in ("#", "model", "ver", "memory", "reason"):
            table.add_column(column, no_wrap=column != "reason")
        for i, v in enumerate(plan.ranking, 1):
            table.add_row(str(i), v.model, str(v.version), format_size(v.bytes), v.reason)
        _print_table(table)
    if plan.protected:
        table = Table(title="never evicted", title_justify="left")
        for column in ("model", "ver", "memory", "why"):
            table.add_column(column, no_wrap=column != "why")
        for p in plan.protected:
            table.add_row(p.model, str(p.version), format_size(p.bytes), p.reason)
        _print_table(table)


def render_preview(preview: EvictionPreview, force: bool) -> None:
    name = preview.name
    if not preview.versions:
        say(f"{name} is not loaded: evicting it would free nothing")
        return
    parts = ", ".join(f"{name}:{v.version} {format_size(v.bytes)}" for v in preview.versions)
    if preview.protected and not force:
        say(
            f"{name} is protected ({preview.protected}): evict refuses it; "
            f"with --force it would free {format_size(preview.bytes)} ({parts})"
        )
        return
    forced = f", forced although {preview.protected}" if preview.protected else ""
    say(f"evicting {name} would free {format_size(preview.bytes)} ({parts}){forced}")


@main.command("evict")
@click.argument("name", required=False)
@click.option("--dry-run", is_flag=True, help="Show what would be evicted and why; change nothing.")
@click.option(
    "--for",
    "for_model",
    default=None,
    metavar="MODEL",
    help="With --dry-run and no NAME: what would go to make room for loading MODEL.",
)
@click.option(
    "--force", is_flag=True, help="Evict NAME even if it is pinned or an endpoint target."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def evict_cmd(
    obj: AppContext,
    name: str | None,
    dry_run: bool,
    for_model: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Unload NAME to free its memory (audited), or show what would happen (--dry-run).

    `evict NAME --dry-run` shows what evicting NAME would free, or why it is protected;
    `evict --dry-run` the eviction plan (what goes first, what is never evicted), and
    `evict --dry-run --for MODEL` what would go to make room for loading MODEL (exit
    status 1 when no room can be made for it, as the load would be refused).
    """
    if dry_run and name is not None:
        if for_model is not None:
            raise click.UsageError("give a NAME to evict or --for MODEL, not both")
        with open_controller(obj) as controller:
            preview = controller.preview_evict(name)
        if as_json:
            print_json(preview.to_json())
        else:
            render_preview(preview, force)
        return
    if dry_run:
        with open_controller(obj) as controller:
            plan = controller.plan(for_model)
        if as_json:
            print_json(plan.to_json())
        else:
            render_plan(plan)
        if for_model is not None and plan.refused:
            raise click.exceptions.Exit(1)  # its load would be refused
        return
    if name is None:
        raise click.UsageError("give a model NAME to evict, or --dry-run")
    if for_model is not None:
        raise click.UsageError("--for goes with --dry-run")
    with open_controller(obj) as controller:
        evicted = controller.evict(name, force=force)
    if as_json:
        print_json({"name": name, "evicted": [e.to_json() for e in evicted]})
    elif evicted:
        freed = sum(e.bytes for e in evicted)
        say(f"evicted {name} ({format_size(freed)})")
    else:
        say(f"{name} was not loaded")


def _pin(obj: AppContext, name: str, pinned: bool, as_json: bool) -> None:
    # the settings first: a broken tritonctl.yaml or --memory-limit fails the command
    # before the pin changes, not after
    config = obj.serving_config()
    changed = set_pin(obj.repo, name, pinned)
    # a pin in tritonctl.yaml (or --config) is the file's to keep: unpin cannot lift it
    held = not pinned and name in config.pinned
    where = str(config.source or CONFIG_FILENAME)
    if as_json:
        data: dict[str, Any] = {"name": name, "pinned": pinned or held, "changed": changed}
        if held:
            data["pinned_in"] = where
        print_json(data)
    elif pinned:
        say(f"pinned {name}" if changed else f"{name} was already pinned")
    elif held:
        if changed:
            say(f"unpinned {name} (tritonctl pin)")
        err_console.print(
            f"error: {name} is still pinned in {where} (its `pinned:` list): remove it "
            "there to let it be evicted",
            markup=False,
            highlight=False,
        )
    else:
        say(f"unpinned {name}" if changed else f"{name} was not pinned")
    if held:
        raise click.exceptions.Exit(1)


@main.command("audit")
@click.argument("name", required=False)
@click.option("--action", type=click.Choice(ACTIONS), help="Only this kind of decision.")
@click.option(
    "--last",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="The newest N records.",
)
@click.option("--all", "everything", is_flag=True, help="Every record kept (overrides --last).")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@pass_app
def audit_cmd(
    obj: AppContext,
    name: str | None,
    action: str | None,
    last: int,
    everything: bool,
    as_json: bool,
) -> None:
    """What tritonctl decided about memory, and why: loads, evictions, refusals, unloads,
    pins and alerts (of model NAME only, if given), oldest first, from the repository's
    audit log."""
    Repository(obj.repo).require()  # a misspelt --repo is not a repository without records
    records = AuditLog(obj.repo).query(name, action, None if everything else last)
    if as_json:
        print_json(records)
        return
    if not records:
        say("no audit records" + (f" for {name}" if name else ""))
        return
    table = Table()
    for column in ("time (UTC)", "action", "model", "memory", "reason"):
        table.add_column(column, no_wrap=column != "reason")
    for r in records:
        version = r.get("version")
        size = r.get("bytes")
        table.add_row(
            str(r.get("time", ""))[:23].replace("T", " "),
            str(r.get("action", "")),
            f"{r.get('model', '')}" + (f":{version}" if version is not None else ""),
            format_size(size) if isinstance(size, int) else "-",
            str(r.get("reason", "")),
        )
    _print_table(table)


@main.command("pin")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def pin_cmd(obj: AppContext, name: str, as_json: bool) -> None:
    """Never evict model NAME (recorded in the repository's metadata)."""
    _pin(obj, name, True, as_json)


@main.command("unpin")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def unpin_cmd(obj: AppContext, name: str, as_json: bool) -> None:
    """Let model NAME be evicted again (undo `tritonctl pin NAME`).

    A model listed under `pinned:` in tritonctl.yaml stays pinned: the command says so and
    exits with status 1; remove it from the file.
    """
    _pin(obj, name, False, as_json)


@main.group("controller")
def controller_group() -> None:
    """The memory controller: keeps used memory under the high watermark."""


@controller_group.command("run")
@click.option(
    "--interval",
    type=FiniteFloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds between polls.",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many polls (default: until interrupted).",
)
@pass_app
def controller_run(obj: AppContext, interval: float, iterations: int | None) -> None:
    """Run the controller loop in the foreground (Ctrl-C or SIGTERM stops it; after
    SIGTERM a poll under way gets 10 s to end).

    Every poll feeds the eviction policy with Triton's request counts; when used memory
    is above the high watermark it evicts down to the low one. Decisions are printed and
    written to <repo>/.tritonctl/audit.log. A change of tritonctl.yaml is read at the next
    poll (a broken one is reported and the settings in use are kept). A server that does
    not answer, or stops, is waited for; without --url the controller follows the
    embedded server of --repo, started (or restarted) after it.
    """
    config = obj.serving_config()
    with sole_loop(obj.repo):  # before the first poll: a second loop is refused at once
        _run_loop(obj, config, interval, iterations)


STOP_GRACE_S = 10.0
"""Seconds a poll under way may take to end after SIGTERM before the loop stops anyway."""


def _run_loop(
    obj: AppContext, config: ServingConfig, interval: float, iterations: int | None
) -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # The poll under way (an eviction) may end first, but within STOP_GRACE_S: one
        # blocked on a server that does not answer would hold the stop for as long as a
        # Triton call may take (minutes).
        stop.set()
        signal.setitimer(signal.ITIMER_REAL, STOP_GRACE_S)

    def on_grace_over(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_signal)
    previous_alarm = signal.signal(signal.SIGALRM, on_grace_over)
    done = 0
    try:
        while not stop.is_set():
            stamp = _config_stamp(obj)
            with open_controller(obj, config) as controller:
                limit = str(config.budget.limit) if config.budget.limit else "the whole device"
                say(
                    f"controller on {controller.control.url}: limit {limit}, watermarks "
                    f"{config.budget.high_watermark:.0%}/{config.budget.low_watermark:.0%}, "
                    f"policy {config.eviction_policy}, every {interval:g} s"
                )
                while not stop.is_set():
                    unreachable = False
                    try:
                        evicted = controller.run_once()
                    except ManagerError as exc:  # a server gone or restarting: wait for it
                        unreachable = True
                        say(f"warning: {exc}; retrying in {interval:g} s")
                        evicted = []
                    for e in evicted:
                        say(f"evicted {e.model}:{e.version} ({format_size(e.bytes)}): {e.reason}")
                    done += 1
                    if iterations is not None and done >= iterations:
                        return
                    stop.wait(interval)
                    if _config_stamp(obj) != stamp:
                        stamp = _config_stamp(obj)
                        try:
                            config = obj.serving_config()
                        except ManagerError as exc:
                            say(f"warning: {exc}; the settings in use are kept")
                            continue
                        say("the serving settings changed: reading them again")
                        break
                    if unreachable and obj.url is None:
                        break  # look for the embedded server again
    except KeyboardInterrupt:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_alarm)
        signal.signal(signal.SIGTERM, previous)


def _config_stamp(obj: AppContext) -> tuple[str, int, int] | None:
    """What tells a change of the settings file (path, mtime, size), None without one."""
    path = find_config_file(obj.repo, obj.config_file)
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return str(path), st.st_mtime_ns, st.st_size
