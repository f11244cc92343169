"""Shared pieces of the CLI: the context object, error handling, output helpers."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console, ConsoleDimensions

from manager.budget import ServingConfig, resolve_control_timeouts
from manager.errors import ManagerError
from manager.timeouts import Timeouts

if TYPE_CHECKING:
    from manager.triton import TritonControl

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


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf``: NaN passes every range
    check, and neither can be recorded as JSON (a rollout's state) or waited for."""

    name = "float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


SECONDS = FiniteFloatRange(min=0, min_open=True)
"""A timeout option's type: a positive, finite number of seconds."""

console = CliConsole()
err_console = CliConsole(stderr=True)


@dataclass
class Context:
    """Global options, passed to every command as ``ctx.obj``."""

    repo: Path
    url: str | None = None
    config_file: Path | None = None
    metrics_url: str | None = None
    load_timeout: float | None = None
    call_timeout: float | None = None
    connect_timeout: float | None = None

    def timeouts(self, config: ServingConfig | None = None) -> Timeouts:
        """The Triton timeouts in effect: the options, then the environment, then the
        ``timeouts:`` of ``config`` (else of tritonctl.yaml or ``--config``), then the
        defaults."""
        given = Timeouts(self.load_timeout, self.call_timeout, self.connect_timeout)
        return resolve_control_timeouts(given, self.repo, self.config_file, config=config)

    def control(
        self, config: ServingConfig | None = None, *, load_timeout: float | None = None
    ) -> TritonControl:
        """A Triton control for ``--url`` (else the embedded server of ``--repo``) with the
        timeouts in effect; ``load_timeout``: at least this long for a load (a command's
        own wait that is longer than the load timeout)."""
        from manager.triton import TritonControl

        options = self.timeouts(config).control_options(load_at_least=load_timeout)
        return TritonControl.connect(self.url, self.repo, metrics_url=self.metrics_url, **options)


class ManagerGroup(click.Group):
    """A click group that turns ``ManagerError`` into a clean message and exit code, an
    ``OSError`` of the file system (a read-only repository, a full disk) into one line
    with exit status 1, and SIGTERM and Ctrl-C into an orderly exit (status 143 and 130,
    as a shell reports a command those signals ended) that runs every clean-up on the way
    out: no staging folder, lock or throwaway server is left behind by a CI job that is
    cancelled."""

    def invoke(self, ctx: click.Context) -> Any:
        with _exit_on_sigterm():
            try:
                return super().invoke(ctx)
            except ManagerError as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(exc.exit_code)
            except BrokenPipeError:
                # the reader went away (`| head`): nothing more can be said, quietly
                with contextlib.suppress(OSError, ValueError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(1)
            except OSError as exc:
                click.echo(f"error: {_os_error(exc)}", err=True)
                sys.exit(1)
            except KeyboardInterrupt:
                click.echo("interrupted", err=True)
                sys.exit(128 + signal.SIGINT)


def _os_error(exc: OSError) -> str:
    """``[Errno 30] Read-only file system: 'x'`` as ``x: read-only file system``."""
    reason = exc.strerror or str(exc)
    where = exc.filename
    return f"{where}: {reason[:1].lower()}{reason[1:]}" if where else str(exc)


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) while the command runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout (plain, so it can be piped)."""
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


pass_context = click.make_pass_decorator(Context)
