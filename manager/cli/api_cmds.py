"""``tritonctl api serve``: the REST control plane, with Prometheus metrics."""

from __future__ import annotations

import socket

import click

from manager.cli.app import AppContext, main, pass_app
from manager.cli.common import PORT, console, err_console
from manager.errors import ManagerError

DEFAULT_PORT = 8003
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@main.group("api")
def api() -> None:
    """The REST control plane: tritonctl's operations under /v1, metrics at /metrics."""


@api.command("serve")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0: every interface; set a token then).",
)
@click.option(
    "--port", type=PORT, default=DEFAULT_PORT, show_default=True, help="Port to listen on."
)
@click.option(
    "--token",
    envvar="TRITONCTL_API_TOKEN",
    default=None,
    metavar="TOKEN",
    help="Require 'Authorization: Bearer TOKEN' on every route but health and /metrics "
    "(env TRITONCTL_API_TOKEN, which other users cannot read from the process list).",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS),
    default="info",
    show_default=True,
    help="Log level of the HTTP server (uvicorn).",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="Log every request (method, path, status).",
)
@pass_app
def serve(
    obj: AppContext, host: str, port: int, token: str | None, log_level: str, access_log: bool
) -> None:
    """Serve the control plane of --repo and the Triton server of --url until Ctrl-C.

    The global options apply as to every command: --repo, --url (else the embedded server
    of --repo, looked up on every request), --config, --memory-limit, --max-models,
    --policy, --load-timeout, --call-timeout and --connect-timeout. Routes and metrics
    are listed in docs/api.md; /docs has the OpenAPI page.
    """
    import uvicorn

    from manager.api import create_app

    _check_listen(host, port)  # before anything is said: a port taken is one error line

    app = create_app(
        obj.repo,
        obj.url,
        metrics_url=obj.metrics_url,
        config_file=obj.config_file,
        memory_limit=obj.memory_limit,
        max_models=obj.max_models,
        policy=obj.policy,
        load_timeout=obj.load_timeout,
        call_timeout=obj.call_timeout,
        connect_timeout=obj.connect_timeout,
        token=token or None,
        # without a token, a control plane on loopback answers by address or localhost
        # only: a web page that rebinds its own name to 127.0.0.1 must not drive it
        local_hosts_only=not token and host in LOOPBACK,
    )
    if not token and host not in LOOPBACK:
        err_console.print(
            f"warning: no --token and listening on {host}: whoever reaches port {port} can "
            "publish, load, unload and roll out models",
            markup=False,
            highlight=False,
        )
    where = f"[{host}]" if ":" in host else host
    console.print(
        f"tritonctl control plane on http://{where}:{port} for {obj.repo.absolute()} "
        f"(Triton: {obj.url or 'the embedded server, else http://localhost:8000'})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)


def _check_listen(host: str, port: int) -> None:
    """Refuse (ManagerError, exit 1) an address this host cannot listen on: a port in use,
    a host name that does not resolve or is not one of this host's addresses. Without it
    the HTTP server logs its own error and exits 3 after the start was announced. The probe
    binds as uvicorn will (IPv6 for an address with a colon, else IPv4), so a name that
    also resolves to an IPv6 address a host lacks is not refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ManagerError(f"cannot listen on {host}:{port}: {_reason(exc)}") from exc


def _reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return reason[:1].lower() + reason[1:]
