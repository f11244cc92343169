"""``tritonctl server start|status|stop``: the embedded tritonserver of a repository."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from manager.cli.app import main
from manager.cli.common import PORT, Context, FiniteFloatRange, console, pass_context, print_json
from manager.errors import ManagerError
from manager.server import EmbeddedServer, ServerInfo, probe_live


def say(text: str) -> None:
    """One plain line: no markup, no highlighting, never wrapped (paths stay whole)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@main.group()
def server() -> None:
    """Run a tritonserver on the repository (explicit model control, nothing loaded)."""


def _describe(info: ServerInfo, *, verb: str) -> None:
    say(f"tritonserver {verb} (pid {info.pid}) serving {info.repo}")
    say(f"  HTTP     {info.http_url}")
    say(f"  gRPC     {info.grpc_url}")
    say(f"  metrics  {info.metrics_url}/metrics")
    if info.log_file:
        say(f"  log      {info.log_file}")
    say("Try:")
    say(f"  curl -s {info.http_url}/v2/health/ready -w '%{{http_code}}\\n'")
    say(f"  curl -s -X POST {info.http_url}/v2/repository/index")
    tritonctl = try_command(info)
    say(f"  {tritonctl} load MODEL && {tritonctl} ls")


def try_command(info: ServerInfo) -> str:
    """``tritonctl`` with the options that reach this server as printed, from any directory
    and whatever TRITONCTL_URL says: the repository's absolute path (load, ls and evict
    read it besides the server) and the server's URL."""
    return f"tritonctl --repo {shlex.quote(info.repo)} --url {info.http_url}"


@server.command()
@click.option(
    "--http-port", type=PORT, default=8000, show_default=True, help="Triton's HTTP/REST port."
)
@click.option("--grpc-port", type=PORT, default=8001, show_default=True, help="Triton's gRPC port.")
@click.option(
    "--metrics-port",
    type=PORT,
    default=8002,
    show_default=True,
    help="Triton's Prometheus metrics port.",
)
@click.option(
    "--foreground",
    is_flag=True,
    help="Run in the foreground until Ctrl-C or SIGTERM (for containers).",
)
@click.option(
    "--binary",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="tritonserver binary (default: $TRITONSERVER, PATH, /opt/tritonserver, nvidia-pytriton).",
)
@click.option(
    "--metrics-interval-ms",
    type=click.IntRange(min=1),
    default=None,
    help="How often the server samples its metrics (Triton's default: 2000).",
)
@click.option(
    "--wait-timeout",
    type=FiniteFloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the server to become live.",
)
@click.option(
    "--restore",
    is_flag=True,
    help="Serve every endpoint of the repository again (with its targets): the server "
    "loads them before it opens its ports (--wait-timeout covers the loads), so clients "
    "never find it up without them; what fails to load is loaded again, and reported, "
    "once it is live.",
)
@click.option(
    "--strict-readiness",
    is_flag=True,
    help="Triton's strict readiness: /v2/health/ready answers 400 while any model version "
    "is not ready, including one that failed to load (until that version loads). By "
    "default the server is ready once it is up with its startup loads done, and each "
    "model says its own readiness (/v2/models/NAME/ready).",
)
@pass_context
def start(
    obj: Context,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    foreground: bool,
    binary: Path | None,
    metrics_interval_ms: int | None,
    wait_timeout: float,
    restore: bool,
    strict_readiness: bool,
) -> None:
    """Start tritonserver on --repo and print how to reach it."""
    embedded = EmbeddedServer(obj.repo, binary=binary)
    extra_args = _startup_args(obj.repo) if restore else []
    if strict_readiness:
        extra_args.append("--strict-readiness=true")

    def ready(i: ServerInfo) -> None:
        _describe(i, verb="running")
        if restore:
            try:
                _restore_endpoints(obj, i)
            except ManagerError as exc:
                # The endpoints that did restore serve on: the server keeps running.
                click.echo(f"error: {exc}", err=True)

    info = embedded.start(
        http_port,
        grpc_port,
        metrics_port,
        foreground=foreground,
        metrics_interval_ms=metrics_interval_ms,
        wait_timeout=wait_timeout,
        extra_args=extra_args,
        on_ready=ready if foreground else None,
    )
    if foreground:
        say(f"tritonserver pid {info.pid} stopped")
    else:
        _describe(info, verb="started")
        if restore:
            _restore_endpoints(obj, info)


def _startup_args(repo: Path) -> list[str]:
    """tritonserver options that load the endpoints of ``repo`` and their targets before
    the server opens its ports (a model that fails to load does not stop the server:
    the restore after it tries again and reports it)."""
    from manager.endpoints import startup_models
    from manager.repository import Repository

    models = startup_models(Repository(repo))
    if not models:
        return []
    return [*(f"--load-model={name}" for name in models), "--exit-on-error=false"]


def _restore_endpoints(obj: Context, info: ServerInfo) -> None:
    """Serve every endpoint of the repository again, with its targets (after a restart),
    within the timeouts in effect (--load-timeout ...)."""
    from manager.endpoints import Endpoints
    from manager.repository import Repository
    from manager.triton import TritonControl

    options = obj.timeouts().control_options()
    with TritonControl.for_server(info, grpc=True, **options) as control:
        for state in Endpoints(Repository(obj.repo), control).restore_all():
            say(f"endpoint {state.name} serving {', '.join(t.label() for t in state.targets)}")


@server.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def status(obj: Context, as_json: bool) -> None:
    """Show the embedded server of --repo; exit code 1 if none runs."""
    info = EmbeddedServer(obj.repo).status()
    if as_json:
        data = {"running": False, "repo": str(obj.repo.absolute())}
        if info is not None:
            data = {"running": True, "live": probe_live(info.http_url), **info.to_json()}
        print_json(data)
    elif info is None:
        say(f"no tritonserver is running for {obj.repo.absolute()}")
    else:
        live = "live" if probe_live(info.http_url) else "NOT answering"
        say(f"tritonserver pid {info.pid} ({live}), started {info.started_at}")
        say(f"  repo     {info.repo}")
        say(f"  HTTP     {info.http_url}")
        say(f"  gRPC     {info.grpc_url}")
        say(f"  metrics  {info.metrics_url}/metrics")
        say(f"  binary   {info.binary}")
        if info.log_file:
            say(f"  log      {info.log_file}")
    if info is None:
        raise click.exceptions.Exit(1)


@server.command()
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds to wait after SIGTERM before SIGKILL.",
)
@pass_context
def stop(obj: Context, timeout: float) -> None:
    """Stop the embedded server of --repo (only the recorded process)."""
    info = EmbeddedServer(obj.repo).stop(timeout=timeout)
    if info is None:
        say(f"no tritonserver is running for {obj.repo.absolute()}")
    else:
        say(f"stopped tritonserver pid {info.pid}")
