"""Shared pieces of the CLI: the context object, error handling, output helpers."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console, ConsoleDimensions

from manager.errors import ManagerError

UNWRAPPED_WIDTH = 1_000_000
"""The width output that goes to a file or a pipe is laid out in: nothing is that long."""


class CliConsole(Console):
    """The console of the CLI. On a terminal it wraps to the terminal's width; written to
    anything else (a pipe, a file, a CI log) it never wraps or cuts data, whatever
    COLUMNS or the terminal on another stream say: a line is as long as its content and a
    table as wide as its widest row."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # rich takes COLUMNS as a width given; only a width given in code is kept off a
        # terminal
        self._width_given = kwargs.get("width") is not None

    @property
    def size(self) -> ConsoleDimensions:
        dimensions = super().size
        if not self._width_given and not self.is_terminal:
            return ConsoleDimensions(UNWRAPPED_WIDTH, dimensions.height)
        return dimensions

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size
        self._width_given = True

    @property
    def width(self) -> int:
        return self.size.width

    @width.setter
    def width(self, width: int) -> None:
        self._width = width
        self._width_given = True


PORT = click.IntRange(1, 65535)
"""A TCP port option's type."""

console = CliConsole()
err_console = CliConsole(stderr=True)


@dataclass
class Context:
    """Global options, passed to every command as ``ctx.obj``."""

    repo: Path
    url: str | None = None
    config_file: Path | None = None
    metrics_url: str | None = None


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
