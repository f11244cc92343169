"""How long tritonctl waits for Triton: a load, every other call, a connection.

Each of the three is taken from, in this order: the command line (``--load-timeout``,
``--call-timeout``, ``--connect-timeout``; in Python the keyword arguments
``timeout``, ``call_timeout`` and ``connect_timeout`` of ``TritonControl.connect``), the
environment (``TRITONCTL_LOAD_TIMEOUT``, ``TRITONCTL_CALL_TIMEOUT``,
``TRITONCTL_CONNECT_TIMEOUT``), the ``timeouts:`` section of ``tritonctl.yaml``::

    timeouts:
      load: 1800     # seconds a load may take (Triton answers a load once it is done)
      call: 30       # seconds every other call may take (never more than load)
      connect: 5     # seconds to connect, and for a health check

and else the defaults (600, 30 and 5 s). A value is a positive, finite number of seconds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from manager.errors import ConfigError
from manager.settings import CALL_TIMEOUT_ENV, CONNECT_TIMEOUT_ENV, LOAD_TIMEOUT_ENV

DEFAULT_LOAD_TIMEOUT_S = 600.0
"""Seconds a load may take (Triton answers a load once it is done)."""
DEFAULT_CALL_TIMEOUT_S = 30.0
"""Seconds any other call may take (Triton answers them at once; an unload once it is
started): a server that gives no answer in this time hangs."""
DEFAULT_CONNECT_TIMEOUT_S = 5.0
"""Seconds to connect to Triton, and for a health request."""

ENV = {"load": LOAD_TIMEOUT_ENV, "call": CALL_TIMEOUT_ENV, "connect": CONNECT_TIMEOUT_ENV}
"""The environment variable of each timeout."""
OPTIONS = {"load": "--load-timeout", "call": "--call-timeout", "connect": "--connect-timeout"}
"""The command-line option of each timeout."""
CONTROL_KEYWORDS = {"load": "timeout", "call": "call_timeout", "connect": "connect_timeout"}
"""The keyword argument of ``TritonControl`` that takes each timeout."""


def parse_timeout(value: Any, what: str) -> float:
    """``value`` as seconds: a positive, finite number (or text that is one); else a
    ConfigError naming ``what`` (where the value came from)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a positive number of seconds, got {value!r}")
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ConfigError(
                f"{what} must be a positive number of seconds, got {value!r}"
            ) from None
    elif isinstance(value, int | float):
        number = float(value)
    else:
        raise ConfigError(f"{what} must be a positive number of seconds, got {value!r}")
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{what} must be a positive, finite number of seconds, got {value!r}")
    return number


@dataclass(frozen=True)
class Timeouts:
    """Seconds for a load, for every other call and to connect; None: not set here (the
    next source in the order of precedence decides)."""

    load: float | None = None
    call: float | None = None
    connect: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                object.__setattr__(self, f.name, parse_timeout(value, f"the {f.name} timeout"))

    def over(self, other: Timeouts) -> Timeouts:
        """These, with what they leave unset taken from ``other``."""
        return Timeouts(
            load=self.load if self.load is not None else other.load,
            call=self.call if self.call is not None else other.call,
            connect=self.connect if self.connect is not None else other.connect,
        )

    @property
    def complete(self) -> bool:
        return None not in (self.load, self.call, self.connect)

    def with_defaults(self) -> Timeouts:
        return self.over(DEFAULTS)

    def within(self, limit: float) -> Timeouts:
        """These (defaults for what is unset), none longer than ``limit``: for a check that
        must be quick (a health probe, a metrics scrape) whatever the settings say."""
        full = self.with_defaults()
        assert full.load is not None and full.call is not None and full.connect is not None
        return Timeouts(
            load=min(full.load, limit), call=min(full.call, limit), connect=min(full.connect, limit)
        )

    def control_options(self, load_at_least: float | None = None) -> dict[str, Any]:
        """The keyword arguments of ``TritonControl`` (defaults for what is unset);
        ``load_at_least``: a load may take at least this long (a command's own wait that
        is longer than the load timeout)."""
        full = self.with_defaults()
        options = {CONTROL_KEYWORDS[f.name]: getattr(full, f.name) for f in fields(full)}
        if load_at_least is not None:
            options["timeout"] = max(options["timeout"], load_at_least)
        return options

    def to_dict(self) -> dict[str, float | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


DEFAULTS = Timeouts(
    load=DEFAULT_LOAD_TIMEOUT_S, call=DEFAULT_CALL_TIMEOUT_S, connect=DEFAULT_CONNECT_TIMEOUT_S
)


def parse_timeouts_section(data: Any) -> Timeouts:
    """The ``timeouts:`` mapping of ``tritonctl.yaml`` (None: none given)."""
    if data is None:
        return Timeouts()
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"timeouts must be a mapping of load, call and connect to seconds, got {data!r}"
        )
    unknown = sorted(str(key) for key in data if key not in ENV)
    if unknown:
        raise ConfigError(
            f"unknown timeout{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(known: {', '.join(ENV)})"
        )
    values = {
        key: parse_timeout(value, f"timeouts.{key}")
        for key, value in data.items()
        if value is not None
    }
    return Timeouts(**values)


def env_timeouts(environ: Mapping[str, str] | None = None) -> Timeouts:
    """The timeouts the environment sets; a ConfigError naming the variable for a value
    that is not a positive, finite number of seconds (an empty one is unset)."""
    environ = os.environ if environ is None else environ
    values: dict[str, float] = {}
    for key, name in ENV.items():
        text = environ.get(name, "")
        if text.strip():
            values[key] = parse_timeout(text, name)
    return Timeouts(**values)


def from_control_options(options: Mapping[str, Any]) -> Timeouts:
    """The timeouts among ``TritonControl``'s keyword arguments ``options`` (None: unset)."""
    values = {}
    for key, keyword in CONTROL_KEYWORDS.items():
        value = options.get(keyword)
        if value is not None:
            values[key] = parse_timeout(value, keyword)
    return Timeouts(**values)
