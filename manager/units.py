"""Byte sizes and durations: parsing what users type, formatting what we print.

Units (case-insensitive, an optional space between number and unit):

- SI, powers of 1000: ``B``, ``KB``, ``MB``, ``GB``, ``TB``  (``12GB`` = 12 * 10**9 bytes)
- binary, powers of 1024: ``KiB``, ``MiB``, ``GiB``, ``TiB`` (``12GiB`` = 12 * 2**30 bytes)
- a bare letter ``K``, ``M``, ``G``, ``T`` is **binary** (``1.5G`` = 1.5 * 2**30 bytes), as in
  ``docker run --memory 1g`` and ``java -Xmx1g``: memory sizes are binary by habit, and
  ``nvidia-smi`` reports MiB. Write ``GB`` when you mean 10**9.

A number without a unit is a count of bytes and must be a whole number.
"""

from __future__ import annotations

import math
import re

from manager.errors import ConfigError

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
}

_SIZE_RE = re.compile(
    r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)(?:[eE](?P<exp>[+-]?\d+))?\s*(?P<unit>[A-Za-z]*)\s*$"
)


def parse_size(text: str | int) -> int:
    """Return the number of bytes that ``text`` means (see the module docstring for units).

    Raises ``ConfigError`` naming the offending text when it is not a size: empty,
    negative, an unknown unit, or a fraction of a byte.
    """
    if isinstance(text, bool):
        raise ConfigError(f"invalid size {text!r}: expected bytes or a number with a unit")
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"invalid size {text!r}: must not be negative")
        return text
    match = _SIZE_RE.match(text)
    if match is None:
        raise ConfigError(
            f"invalid size {text!r}: expected bytes (e.g. 12884901888) or a number with a unit "
            "(e.g. 12GB, 512MiB, 1.5G)"
        )
    unit = match["unit"].lower()
    if unit not in _UNITS:
        known = "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB, K, M, G, T"
        raise ConfigError(f"invalid size {text!r}: unknown unit {match['unit']!r} (known: {known})")
    number = float(match["number"] + (f"e{match['exp']}" if match["exp"] else ""))
    value = number * _UNITS[unit]
    if not math.isfinite(value):
        raise ConfigError(f"invalid size {text!r}: too large")
    if unit in ("", "b") and value != int(value):
        raise ConfigError(f"invalid size {text!r}: a number of bytes must be whole")
    return round(value)


def format_size(num_bytes: float) -> str:
    """Format a byte count for people, in binary units: ``1.5 GiB``, ``512 MiB``, ``12 B``."""
    value = float(num_bytes)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    return f"{sign}{value:.1f} TiB"


def format_duration(seconds: float) -> str:
    """Format a duration for people: ``45 s``, ``12 min``, ``3.5 h``, ``2.0 d``."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
