"""``tritonctl endpoint ...`` and ``tritonctl rollout ...``: stable names and version shifts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from manager import native_router
from manager.budget import ServingConfig, ServingOptions
from manager.cli.app import main
from manager.cli.common import (
    Context,
    FiniteFloatRange,
    console,
    err_console,
    pass_context,
    print_json,
)
from manager.controller import admission
from manager.endpoints import (
    ROUTER_BACKENDS,
    Endpoints,
    EndpointState,
    RouterOptions,
    Target,
    check_listed_once,
    check_sticky,
    check_total_weight,
    native_refusal,
)
from manager.errors import ManagerError, RolloutError
from manager.names import parse_model_ref
from manager.repository import Repository
from manager.rollout import (
    ACTIVE,
    DEFAULT_STAGES,
    FINAL,
    RolloutPolicy,
    RolloutState,
    StageRecord,
    parse_stages,
)
from manager.rollout_service import (
    FINISH_WAIT_S,
    begin_rollout,
    finish_and_wait,
    list_rollouts,
    require_server,
    resumable,
    resume_in_background,
    run_rollout,
    start_in_background,
    status,
)
from manager.triton import TritonControl


def _budgeted(obj: Context, control: TritonControl, **options: Any) -> Endpoints:
    """Endpoints whose changes keep to the memory budget of the global options and
    tritonctl.yaml (room is made by the eviction policy for what they load)."""
    config = obj.serving_config() if isinstance(obj, ServingOptions) else ServingConfig()
    endpoints = Endpoints(
        Repository(obj.repo), control, admission=admission(control, obj.repo, config), **options
    )
    endpoints.on_drain = _say_err  # a stateful endpoint's change may wait a while
    return endpoints


def _control(obj: Context) -> TritonControl:
    return obj.control()


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _say_err(text: str) -> None:
    err_console.print(text, markup=False, highlight=False, soft_wrap=True)


def _parse_model_version(text: str) -> tuple[str, int | None]:
    try:
        return parse_model_ref(text)
    except ManagerError as exc:
        raise click.BadParameter(str(exc), param_hint="'--to'") from exc


def _show_endpoint(
    state: EndpointState, serving: dict[str, Any] | None = None, data: dict[str, Any] | None = None
) -> None:
    details = [state.mode]
    if data and data.get("streaming"):
        details.append("streaming: call it over a gRPC stream or generate_stream")
    if data and data.get("stateful"):
        details.append("stateful: call it in sequences")
    if state.sticky_parameter:
        details.append(f"sticky by parameter {state.sticky_parameter}")
    elif state.use_correlation_id:
        details.append("sticky by correlation id")
    if serving is not None:
        details.append("served" if serving["ready"] else "NOT SERVED")
    table = Table(title=f"endpoint {state.name} ({', '.join(details)})")
    for col in ("target", "weight", "share"):
        table.add_column(col)
    if serving is not None:
        table.add_column("target state")
    shares = state.shares()
    for t in state.targets:
        row = [t.label(), f"{t.weight:g}", f"{shares[t.key]:.0%}"]
        if serving is not None:
            row.append("READY" if serving["targets"][t.label()] else "not loaded")
        table.add_row(*row)
    console.print(table)
    if serving is not None and not (serving["ready"] and all(serving["targets"].values())):
        _say_err(f"clients of {state.name} get errors: `tritonctl endpoint restore {state.name}`")


@main.group()
def endpoint() -> None:
    """Stable names that clients call, pointing at model versions."""


@endpoint.command("show")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def endpoint_show(obj: Context, name: str | None, as_json: bool) -> None:
    """Targets and weights of endpoint NAME (all endpoints without NAME), and whether
    Triton serves the endpoint and its targets now."""
    Repository(obj.repo).require()  # a misspelt --repo is not a repository without endpoints
    with _control(obj) as control:
        eps = Endpoints(Repository(obj.repo), control)
        states = [eps.get(name)] if name else eps.list()
        described = eps.describe(states)
    if as_json:
        print_json(described[0] if name else described)
        return
    for s, data in zip(states, described, strict=True):
        _show_endpoint(s, data["serving"], data)
    if any(data["serving"] is None for data in described):
        _say_err(
            f"Triton does not answer at {control.url}: whether it serves "
            f"{'the endpoint' if name else 'the endpoints'} is not known"
        )


drain_option = click.option(
    "--drain/--no-drain",
    default=True,
    show_default=True,
    help="For a stateful model: new sequences go to the new targets at once, and a target "
    "that leaves is waited for until the sequences under way on it have ended (at most "
    "five sequence idle times). --no-drain changes the endpoint at once and ends them.",
)


@endpoint.command("switch")
@click.argument("name")
@click.option(
    "--to",
    "to",
    required=True,
    metavar="MODEL[:VERSION]",
    help="The model (newest version) or model version to serve under NAME.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Allow targets whose inputs, outputs or max_batch_size differ from what the "
    "endpoint takes now (its clients' requests will no longer fit).",
)
@drain_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def endpoint_switch(
    obj: Context, name: str, to: str, force: bool, drain: bool, as_json: bool
) -> None:
    """Point endpoint NAME at one model version (created if new); no client change."""
    model, version = _parse_model_version(to)
    with _control(obj) as control:
        endpoints = _budgeted(obj, control)
        state = endpoints.switch(name, model, version, force=force, drain=drain)
        if as_json:  # as `endpoint show --json` and the REST answer: with `serving`
            print_json(endpoints.describe([state])[0])
            return
    _say(f"endpoint {name} -> {state.targets[0].label()}")


@endpoint.command("split")
@click.argument("name")
@click.option(
    "--target",
    "targets",
    multiple=True,
    required=True,
    metavar="MODEL:VERSION[=WEIGHT]",
    help="A target and its weight (default 100; repeat for each target).",
)
@click.option(
    "--sticky-parameter",
    default=None,
    help="Route by the hash of this request parameter, so one key sees one target.",
)
@click.option(
    "--sticky-correlation-id",
    is_flag=True,
    help="Route by the request's correlation id (not together with --sticky-parameter).",
)
@click.option(
    "--router",
    "router_backend",
    type=click.Choice(ROUTER_BACKENDS),
    default=None,
    help="Router: native (C++ backend), python (Python backend) or auto (native where it "
    "can be built). Default: $TRITONCTL_ROUTER, else auto.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Allow targets whose inputs, outputs or max_batch_size differ from what the "
    "endpoint takes now (its clients' requests will no longer fit).",
)
@drain_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def endpoint_split(
    obj: Context,
    name: str,
    targets: tuple[str, ...],
    sticky_parameter: str | None,
    sticky_correlation_id: bool,
    router_backend: str | None,
    force: bool,
    drain: bool,
    as_json: bool,
) -> None:
    """Split endpoint NAME's traffic across targets by weight (an A/B test)."""
    parsed = []
    for text in targets:
        try:
            parsed.append(Target.parse(text))
        except ManagerError as exc:
            raise click.BadParameter(str(exc), param_hint="'--target'") from exc
    # mistakes of the command line, refused as such before the server is asked anything
    try:
        check_sticky(sticky_parameter, sticky_correlation_id)
    except ManagerError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        check_listed_once(parsed)
        check_total_weight(parsed)
    except ManagerError as exc:
        raise click.BadParameter(str(exc), param_hint="'--target'") from exc
    options = RouterOptions(backend=router_backend) if router_backend else RouterOptions()
    with _control(obj) as control:
        endpoints = _budgeted(obj, control, router=options)
        state = endpoints.split(
            name,
            parsed,
            sticky_parameter=sticky_parameter,
            use_correlation_id=sticky_correlation_id,
            force=force,
            drain=drain,
        )
        if as_json:
            print_json(endpoints.describe([state])[0])
            return
    _show_endpoint(state)


@endpoint.command("restore")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def endpoint_restore(obj: Context, name: str | None, as_json: bool) -> None:
    """Serve endpoint NAME (all endpoints without NAME) again, e.g. after a restart."""
    with _control(obj) as control:
        eps = _budgeted(obj, control)
        states = [eps.ensure(name)] if name else eps.restore_all()
    if as_json:
        print_json(states[0].to_dict() if name else [s.to_dict() for s in states])
        return
    for state in states:
        _say(f"endpoint {state.name} serving {', '.join(t.label() for t in state.targets)}")


@endpoint.command("delete")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def endpoint_delete(obj: Context, name: str, as_json: bool) -> None:
    """Unload and remove endpoint NAME (its targets keep serving)."""
    with _control(obj) as control:
        Endpoints(Repository(obj.repo), control).delete(name)
    if as_json:
        print_json({"name": name, "deleted": True})
    else:
        _say(f"endpoint {name} deleted")


# -- rollouts ----------------------------------------------------------------------------


def _rollout_line(state: RolloutState) -> str:
    driver = "running" if state.driver_alive() else "not running"
    where = f"at {state.weight} %"
    if state.status == "rolled_back":  # all traffic is back on the old version
        where = f"at stage {state.history[-1].weight} %" if state.history else "before any stage"
    line = (
        f"{state.endpoint}: {state.model}:{state.old_version} -> {state.new_version} "
        f"{state.status} {where}"
    )
    if state.status not in FINAL:
        line += f" (driver {driver})"
    if state.reason:
        line += f": {state.reason}"
    return line


def _ms(counts: dict[str, Any]) -> float:
    """A version's time a request over a stage: its compute time (what the latency gate
    compares), or its end-to-end time for a record that has none."""
    per = counts.get("compute_ns") or counts.get("success_ns", 0)
    return float(per) / max(counts.get("success", 0), 1) / 1e6


def _stage_summary(state: RolloutState, record: StageRecord) -> str:
    """One line on a finished stage: both versions' requests and compute time."""
    parts = []
    for version, counts in ((state.new_version, record.new), (state.old_version, record.old)):
        ok, fail = counts.get("success", 0), counts.get("fail", 0)
        parts.append(f"v{version} {ok} ok / {fail} failed, {_ms(counts):.2f} ms")
    verdict = record.verdict if record.verdict in ("", "healthy") else "failed its gate"
    return f"stage {record.weight} %: {'; '.join(parts)}: {verdict or '-'}"


@main.group()
def rollout() -> None:
    """Move an endpoint to a new version stage by stage, with health gates."""


@rollout.command("start")
@click.argument("name")
@click.option(
    "--to",
    "to_version",
    type=click.IntRange(min=1),
    required=True,
    help="The version of the endpoint's model to roll out.",
)
@click.option(
    "--stages",
    default=",".join(str(s) for s in DEFAULT_STAGES),
    show_default=True,
    help="Percent of the traffic on the new version at each stage, rising; 100 is added "
    "if missing (at 100 the endpoint is pinned to the new version).",
)
@click.option(
    "--stage-seconds",
    type=FiniteFloatRange(min=0),
    default=60.0,
    show_default=True,
    help="How long each stage runs before its gate decides.",
)
@click.option(
    "--min-requests",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Requests the new version must see in a stage before it may pass.",
)
@click.option(
    "--max-error-rate",
    type=FiniteFloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="A stage whose failed/all requests on the new version exceed this rolls back "
    "(Triton counts a request its client cancelled as failed).",
)
@click.option(
    "--max-latency-ratio",
    type=FiniteFloatRange(min=0, min_open=True),
    default=1.5,
    show_default=True,
    help="New/old mean compute time a request above this rolls back.",
)
@click.option(
    "--latency-tolerance-ms",
    type=FiniteFloatRange(min=0),
    default=RolloutPolicy().latency_tolerance_ms,
    show_default=True,
    help="A new version slower by no more than this (mean, ms) is not rolled back for "
    "latency, whatever the ratio.",
)
@click.option(
    "--golden",
    "golden_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Golden requests the new version must answer before any traffic (a folder of "
    "cases as for `publish --golden`).",
)
@click.option(
    "--sticky-parameter",
    default=None,
    help="Route by the hash of this request parameter: each key sees one version, and "
    "moves from old to new at most once as the weight rises.",
)
@click.option(
    "--sticky-correlation-id",
    is_flag=True,
    help="Route by the request's correlation id (not together with --sticky-parameter).",
)
@click.option(
    "--warmup-requests",
    type=click.IntRange(min=0),
    default=RolloutPolicy().warmup_requests,
    show_default=True,
    help="Requests sent straight to the new version before any traffic (the golden inputs, "
    "else synthetic ones of batch 1 and of the largest batch), so that its slow first calls "
    "do not count against it.",
)
@click.option("--wait", is_flag=True, help="Run here until promoted or rolled back.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def rollout_start(
    obj: Context,
    name: str,
    to_version: int,
    stages: str,
    stage_seconds: float,
    min_requests: int,
    max_error_rate: float,
    max_latency_ratio: float,
    latency_tolerance_ms: float,
    golden_dir: str | None,
    sticky_parameter: str | None,
    sticky_correlation_id: bool,
    warmup_requests: int,
    wait: bool,
    as_json: bool,
) -> None:
    """Roll endpoint NAME out to version --to of its model."""
    try:
        policy = RolloutPolicy(
            stages=parse_stages(stages),
            stage_seconds=stage_seconds,
            min_requests=min_requests,
            max_error_rate=max_error_rate,
            max_latency_ratio=max_latency_ratio,
            latency_tolerance_ms=latency_tolerance_ms,
            golden_dir=golden_dir,
            warmup_requests=warmup_requests,
            sticky_parameter=sticky_parameter,
            use_correlation_id=sticky_correlation_id,
        )
    except RolloutError as exc:  # bad options: a usage error, as click's own checks
        raise click.UsageError(str(exc)) from exc
    repo = Repository(obj.repo)
    with _control(obj) as control:
        if not wait:
            state, pid = start_in_background(repo, control, name, to_version, policy)
            _note_resumed(policy, state, _given_settings())
            if as_json:
                print_json({**state.to_dict(), "worker_pid": pid})
            else:
                _say(
                    f"rollout of {name} to version {to_version} started (worker pid {pid}); "
                    f"follow it with: tritonctl rollout status {name}"
                )
            return
        state = begin_rollout(repo, control, name, to_version, policy)
        _note_resumed(policy, state, _given_settings())
        _drive_here(repo, control, state, as_json)


def _drive_here(
    repo: Repository, control: TritonControl, state: RolloutState, as_json: bool
) -> None:
    """Run the rollout in this process (`--wait`), a line per stage on stderr; exit 4
    unless promoted, 130 on Ctrl-C (the endpoint keeps serving at the recorded stage)."""
    name = state.endpoint

    def show(s: RolloutState) -> None:
        if as_json:
            return
        if len(s.history) > 1:
            _say_err(f"  {_stage_summary(s, s.history[-2])}")
        _say_err(f"stage {s.weight} %: {s.model}:{s.new_version}")

    try:
        state = run_rollout(repo, control, state, on_stage=show)
    except KeyboardInterrupt:
        now = status(repo, name)
        _say_err(
            f"interrupted: {name} keeps serving at {now.weight} % on "
            f"{now.model}:{now.new_version}; `tritonctl rollout resume {name}` goes on, "
            f"`tritonctl rollout abort {name}` rolls back"
        )
        raise SystemExit(130) from None
    if not as_json and state.history:
        _say_err(f"  {_stage_summary(state, state.history[-1])}")
    if as_json:
        print_json(state.to_dict())
    else:
        _say(_rollout_line(state))
    if state.status != "promoted":
        raise SystemExit(4)


# `rollout start` options and the RolloutPolicy settings they set
_POLICY_OPTIONS = {
    "stages": "stages",
    "stage_seconds": "stage_seconds",
    "min_requests": "min_requests",
    "max_error_rate": "max_error_rate",
    "max_latency_ratio": "max_latency_ratio",
    "latency_tolerance_ms": "latency_tolerance_ms",
    "golden_dir": "golden_dir",
    "warmup_requests": "warmup_requests",
    "sticky_parameter": "sticky_parameter",
    "sticky_correlation_id": "use_correlation_id",
}


def _given_settings() -> set[str]:
    """The RolloutPolicy settings whose options this command line gave (not defaults)."""
    ctx = click.get_current_context()
    given = {click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT}
    return {
        setting
        for option, setting in _POLICY_OPTIONS.items()
        if ctx.get_parameter_source(option) in given
    }


def _note_resumed(given: RolloutPolicy, state: RolloutState, options: set[str]) -> None:
    """A start that resumed a recorded rollout goes on with the recorded settings: say
    which of the options given now (``options``: their settings) were not applied."""
    differences = given.differences(state.policy, only=options)
    if differences:
        _say_err(
            f"resuming the recorded rollout of {state.endpoint}; its settings stay, these "
            f"options were not applied (given (recorded)): {'; '.join(differences)}"
        )


@rollout.command("run", hidden=True)
@click.argument("name")
@pass_context
def rollout_run(obj: Context, name: str) -> None:
    """Drive the recorded rollout of NAME (what `rollout start` runs in the background)."""
    repo = Repository(obj.repo)
    with _control(obj) as control:
        state = run_rollout(repo, control, status(repo, name))
    _say(_rollout_line(state))


@rollout.command("resume")
@click.argument("name")
@click.option(
    "--wait",
    is_flag=True,
    help="Run the rollout here until promoted or rolled back (default: a background worker).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def rollout_resume(obj: Context, name: str, wait: bool, as_json: bool) -> None:
    """Continue a rollout whose driver died, from its recorded stage."""
    repo = Repository(obj.repo)
    with _control(obj) as control:
        if wait:
            state = resumable(repo, name)
            require_server(control, f"the rollout of {name!r} was not resumed")
            _drive_here(repo, control, state, as_json)
            return
        state, pid = resume_in_background(repo, control, name)
    if as_json:
        print_json({**state.to_dict(), "worker_pid": pid})
    else:
        _say(f"rollout of {name} resumed at {state.weight} % (worker pid {pid})")


@rollout.command("status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def rollout_status(obj: Context, name: str, as_json: bool) -> None:
    """Stage, weights and per-stage health of NAME's rollout."""
    state = status(Repository(obj.repo), name)
    if as_json:
        print_json(state.to_dict())
        return
    _say(_rollout_line(state))
    if state.status not in FINAL and state.driver_pid:
        _say(f"driver: {state.describe_driver()}")
    if state.warmup:
        _say(f"warm-up of {state.model}:{state.new_version}: {state.warmup}")
    if not state.history:
        ended = state.status in FINAL
        _say("no stage ran: it ended before any traffic" if ended else "no stage yet")
    else:
        _stage_table(state)
    if state.status not in FINAL and not state.driver_alive():
        _say(
            f"the driver is not running: `tritonctl rollout resume {name}` continues, "
            f"`tritonctl rollout abort {name}` rolls back"
        )


def _stage_table(state: RolloutState) -> None:
    table = Table(caption="ms: compute time a request, what the latency gate compares")
    for col in ("stage", "new ok/fail", "new ms", "old ok/fail", "old ms", "verdict"):
        table.add_column(col)
    for i, h in enumerate(state.history):
        n, o = h.new or {}, h.old or {}
        running = state.status in ACTIVE and i == len(state.history) - 1
        table.add_row(
            f"{h.weight} %",
            f"{n.get('success', 0)}/{n.get('fail', 0)}",
            f"{_ms(n):.2f}",
            f"{o.get('success', 0)}/{o.get('fail', 0)}",
            f"{_ms(o):.2f}",
            h.verdict or ("in progress" if running else ""),
        )
    console.print(table)


@rollout.command("list")
@click.option("--active", "active_only", is_flag=True, help="Only rollouts still running.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def rollout_list(obj: Context, active_only: bool, as_json: bool) -> None:
    """The last rollout of every endpoint: versions, status, weight, driver."""
    repo = Repository(obj.repo)
    repo.require()  # a misspelt --repo is not a repository without rollouts
    states = list_rollouts(repo, active=active_only)
    if as_json:
        print_json([s.to_dict() for s in states])
        return
    table = Table(title=f"rollouts in {obj.repo}")
    for col in ("endpoint", "model", "versions", "status", "weight", "driver"):
        table.add_column(col, no_wrap=True)
    table.add_column("reason")
    for s in states:
        active = s.status in ACTIVE
        driver = "-"
        if active:
            driver = "running" if s.driver_alive() else "not running"
            driver += f" ({s.driver_host})" if s.driver_host and s.driver_pid else ""
        table.add_row(
            s.endpoint,
            s.model,
            f"{s.old_version} -> {s.new_version}",
            s.status,
            f"{s.weight} %",
            driver,
            s.reason,
        )
    console.print(table)


_finish_options = [
    click.option(
        "--wait-timeout",
        type=FiniteFloatRange(min=0),
        default=FINISH_WAIT_S,
        show_default=True,
        help="Seconds to wait for the rollout to be over.",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
]


def _with_finish_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_finish_options):
        command = option(command)
    return command


def _finish(obj: Context, name: str, action: str, wait_timeout: float, as_json: bool) -> None:
    with _control(obj) as control:
        state = finish_and_wait(Repository(obj.repo), control, name, action, timeout=wait_timeout)
    if as_json:
        print_json(state.to_dict())
    else:
        _say(_rollout_line(state))
    wanted = "promoted" if action == "promote" else "rolled_back"
    if state.status != wanted:  # e.g. a promote that failed and rolled back
        raise SystemExit(4)


@rollout.command("promote")
@click.argument("name")
@_with_finish_options
@pass_context
def rollout_promote(obj: Context, name: str, wait_timeout: float, as_json: bool) -> None:
    """Skip the remaining stages: pin NAME to the new version now (exit 4 if the rollout
    does not end promoted)."""
    _finish(obj, name, "promote", wait_timeout, as_json)


@rollout.command("abort")
@click.argument("name")
@_with_finish_options
@pass_context
def rollout_abort(obj: Context, name: str, wait_timeout: float, as_json: bool) -> None:
    """Roll NAME back to the old version now (exit 4 if it does not end rolled back)."""
    _finish(obj, name, "abort", wait_timeout, as_json)


@main.group()
def router() -> None:
    """The native endpoint router (a C++ Triton backend built from source)."""


@router.command("build")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the library (default: the cache that endpoints use).",
)
def router_build(output: Path | None) -> None:
    """Compile the native router now (a C++ compiler is needed) and print its path."""
    path = native_router.build(output)
    click.echo(str(path))


@router.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def router_info(obj: Context, as_json: bool) -> None:
    """Which router endpoints get and where its library is."""
    try:
        found: Path | None = native_router.find_library(build_if_missing=False)
    except native_router.RouterBuildError:
        found = None
    info = {
        "backend": RouterOptions().backend,
        "library": str(found) if found else None,
        # the model config's backend an endpoint gets with this library
        "triton_backend": native_router.backend_name(found) if found else None,
        "compiler": native_router.find_compiler(),
        "source_digest": native_router.source_digest(),
        "refused_by_server": native_refusal(Repository(obj.repo), found) if found else None,
    }
    if as_json:
        print_json(info)
    else:
        for key, value in info.items():
            _say(f"{key}: {value if value is not None else '-'}")
