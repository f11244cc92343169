"""The root click group of ``tritonctl`` and its global options."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from manager import settings
from manager.cli.common import Context, ManagerGroup


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
    "Default: the embedded server of --repo if one runs, else http://localhost:8000.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="tritonctl.yaml with serving settings (default: the one in the repository).",
)
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="tritonctl")
@click.pass_context
def main(
    ctx: click.Context, repo: Path, url: str | None, config_file: Path | None, verbose: int
) -> None:
    """Manage NVIDIA Triton Inference Server model repositories."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    ctx.obj = Context(repo=repo, url=url, config_file=config_file)
