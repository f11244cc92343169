"""The root click group of ``tritonctl`` and its global options."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from manager import settings
from manager.budget import ServingConfig, ServingOptions
from manager.cli.common import SECONDS, Context, ManagerGroup
from manager.policies import policy_names
from manager.timeouts import env_timeouts


@dataclass
class AppContext(ServingOptions, Context):
    """The global options, with the serving budget given on the command line."""

    memory_limit: str | None = None
    max_models: int | None = None
    policy: str | None = None
    _warned_pins: set[str] = field(default_factory=set, repr=False)

    def serving_config(self) -> ServingConfig:
        """The settings in effect; a pinned name the repository lacks is warned of once."""
        config = super().serving_config()
        for name in config.unknown_pinned(self.repo):
            if name not in self._warned_pins:
                self._warned_pins.add(name)
                where = config.source or "the settings"
                click.echo(
                    f"warning: {where} pins {name!r}, which is not a model in {self.repo}",
                    err=True,
                )
        return config


@click.group(cls=ManagerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--repo",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=settings.REPO_ENV,
    default=settings.DEFAULT_REPO,
    show_default=True,
    help="Model repository folder (env TRITONCTL_REPO).",
)
@click.option(
    "--url",
    envvar=settings.URL_ENV,
    default=None,
    help="Triton server: http://HOST:PORT or grpc://HOST:PORT (env TRITONCTL_URL). "
    "Default: the embedded server recorded for --repo (even while it is down), else "
    "http://localhost:8000.",
)
@click.option(
    "--metrics-url",
    default=None,
    metavar="URL",
    help="Triton's metrics endpoint, http://HOST:PORT (env TRITONCTL_METRICS_URL). "
    "Default: the embedded server's, else port 8002 of --url's host.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="tritonctl.yaml with serving settings (default: the one in the repository).",
)
@click.option(
    "--memory-limit",
    default=None,
    metavar="SIZE",
    help="Memory budget for loaded models: bytes, a size (12GB, 12GiB) or a fraction of "
    "the device total (0.8, 80%). Makes `load` evict to make room.",
)
@click.option(
    "--max-models",
    type=click.IntRange(min=1),
    default=None,
    help="At most this many models loaded at once (evict to make room).",
)
@click.option(
    "--policy",
    type=click.Choice(policy_names()),
    default=None,
    help="Eviction policy (default: tritonctl.yaml's eviction_policy, else gdsf_decay).",
)
@click.option(
    "--load-timeout",
    type=SECONDS,
    default=None,
    metavar="S",
    help="Seconds a load may take: Triton answers a load once the model is loaded (env "
    "TRITONCTL_LOAD_TIMEOUT; else tritonctl.yaml's timeouts.load; default 600).",
)
@click.option(
    "--call-timeout",
    type=SECONDS,
    default=None,
    metavar="S",
    help="Seconds every other call to Triton may take, never more than the load timeout "
    "(env TRITONCTL_CALL_TIMEOUT; else timeouts.call; default 30).",
)
@click.option(
    "--connect-timeout",
    type=SECONDS,
    default=None,
    metavar="S",
    help="Seconds to connect to Triton, and for a health check (env "
    "TRITONCTL_CONNECT_TIMEOUT; else timeouts.connect; default 5).",
)
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="tritonctl")
@click.pass_context
def main(
    ctx: click.Context,
    repo: Path,
    url: str | None,
    metrics_url: str | None,
    config_file: Path | None,
    memory_limit: str | None,
    max_models: int | None,
    policy: str | None,
    load_timeout: float | None,
    call_timeout: float | None,
    connect_timeout: float | None,
    verbose: int,
) -> None:
    """Manage NVIDIA Triton Inference Server model repositories."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    ctx.obj = AppContext(
        repo=repo,
        url=url,
        metrics_url=metrics_url,
        config_file=config_file,
        memory_limit=memory_limit,
        max_models=max_models,
        policy=policy,
        load_timeout=load_timeout,
        call_timeout=call_timeout,
        connect_timeout=connect_timeout,
    )
    env_timeouts()  # a bad TRITONCTL_*_TIMEOUT fails every command, not only a later call


pass_app = click.make_pass_decorator(AppContext)
"""Like ``pass_context``, for commands that need the serving budget options."""
