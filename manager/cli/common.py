"""Shared pieces of the CLI: the context object, error handling, output helpers."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from manager.errors import ManagerError

console = Console()
err_console = Console(stderr=True)


@dataclass
class Context:
    """Global options, passed to every command as ``ctx.obj``."""

    repo: Path
    url: str | None = None
    config_file: Path | None = None


class ManagerGroup(click.Group):
    """A click group that turns ``ManagerError`` into a clean message and exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ManagerError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


def print_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout (plain, so it can be piped)."""
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


pass_context = click.make_pass_decorator(Context)
