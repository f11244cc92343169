"""The memory budget and the serving settings of ``tritonctl.yaml``.

A memory limit is written as

- a number of bytes: ``12884901888``;
- a size with a unit: ``12GB`` (10**9), ``12GiB`` (2**30), ``1.5G`` (a bare letter is
  binary, = ``1.5GiB``), see ``manager.units``;
- a fraction of the device's total memory, as Triton's metrics report it: a number in
  (0, 1] such as ``0.8``, or a percentage ``80%``. So ``1`` means the whole device, not one
  byte.

``tritonctl.yaml`` (in the repository root, or given with ``--config``)::

    memory_limit: 12GB        # or 0.8, 80%, 12884901888
    max_models: 8
    eviction_policy: gdsf_decay
    high_watermark: 0.95      # the controller evicts when used > 95 % of the limit ...
    low_watermark: 0.85       # ... down to 85 % of it
    pinned: [encoder, router]  # never evicted
    timeouts:                 # seconds tritonctl waits for Triton (see manager.timeouts)
      load: 1800
      call: 30
      connect: 5

Settings given on the command line override the file (the timeouts: the command line,
then the environment, then the file).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from manager.errors import ConfigError, InvalidNameError
from manager.names import validate_model_name
from manager.policies import DEFAULT_POLICY, policy_names
from manager.settings import SETTINGS_FILE
from manager.timeouts import Timeouts, env_timeouts, parse_timeouts_section
from manager.units import format_size, parse_size

__all__ = [
    "CONFIG_FILENAME",
    "MemoryBudget",
    "MemoryLimit",
    "ServingConfig",
    "find_config_file",
    "load_serving_config",
    "parse_memory_limit",
    "parse_serving_config",
    "parse_size",
    "resolve_control_timeouts",
    "resolve_serving_config",
]

log = logging.getLogger(__name__)

CONFIG_FILENAME = SETTINGS_FILE
DEFAULT_HIGH_WATERMARK = 0.95
DEFAULT_LOW_WATERMARK = 0.85
MIN_LIMIT_BYTES = 2**20
"""The smallest byte limit a user may give: less holds no model, and is most likely a
number whose unit was left out (``memory_limit: 10`` for 10 GB)."""


@dataclass(frozen=True)
class MemoryLimit:
    """A memory limit: an absolute number of bytes, or a fraction of the device total."""

    num_bytes: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.num_bytes is None) == (self.fraction is None):
            raise ConfigError("a memory limit is either a number of bytes or a fraction")
        if self.num_bytes is not None and self.num_bytes <= 0:
            raise ConfigError(f"memory limit must be positive, got {self.num_bytes} bytes")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ConfigError(f"memory limit fraction must be in (0, 1], got {self.fraction}")

    def resolve(self, total_bytes: int) -> int:
        """The limit in bytes on a device with ``total_bytes`` of memory.

        An absolute limit larger than the device is capped to the device (with a warning).
        """
        if total_bytes <= 0:
            raise ConfigError(f"device total memory must be positive, got {total_bytes} bytes")
        if self.fraction is not None:
            return int(total_bytes * self.fraction)
        assert self.num_bytes is not None
        if self.num_bytes > total_bytes:
            log.warning(
                "memory limit %s is larger than the device's %s; using the device's total",
                format_size(self.num_bytes),
                format_size(total_bytes),
            )
            return total_bytes
        return self.num_bytes

    def __str__(self) -> str:
        if self.fraction is not None:
            return f"{self.fraction:.0%} of total"
        return format_size(self.num_bytes or 0)


def parse_memory_limit(value: str | int | float) -> MemoryLimit:
    """Parse ``12GB``, ``512MiB``, ``1.5G``, ``12884901888``, ``0.8`` or ``80%``.

    Raises ``ConfigError`` quoting the offending text.
    """
    if isinstance(value, bool):
        raise ConfigError(f"invalid memory limit {value!r}")
    if isinstance(value, int | float):
        return _limit_from_number(float(value), repr(value))
    text = value.strip()
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            raise ConfigError(f"invalid memory limit {value!r}: not a percentage") from None
        if not 0 < percent <= 100:
            raise ConfigError(f"invalid memory limit {value!r}: a percentage must be in (0, 100]")
        return MemoryLimit(fraction=percent / 100)
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isnan(number):
        return _limit_from_number(number, repr(value))
    try:
        size = parse_size(text)
    except ConfigError as exc:
        raise ConfigError(f"invalid memory limit {value!r}: {exc}") from None
    if size <= 0:
        raise ConfigError(f"invalid memory limit {value!r}: must be positive")
    return _at_least_the_floor(size, repr(value))


def _at_least_the_floor(num_bytes: int, shown: str, *, unit_given: bool = True) -> MemoryLimit:
    if num_bytes < MIN_LIMIT_BYTES:
        hint = "" if unit_given else f"; add a unit (e.g. {num_bytes}G)"
        raise ConfigError(
            f"invalid memory limit {shown}: {num_bytes} bytes holds no model "
            f"(the least is {format_size(MIN_LIMIT_BYTES)}){hint}"
        )
    return MemoryLimit(num_bytes=num_bytes)


def _limit_from_number(number: float, shown: str) -> MemoryLimit:
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"invalid memory limit {shown}: must be a positive number")
    if number <= 1:
        return MemoryLimit(fraction=number)
    if number != int(number):
        raise ConfigError(
            f"invalid memory limit {shown}: a fraction of the total must be in (0, 1] and a "
            "number of bytes must be whole; add a unit (e.g. 1.5G)"
        )
    return _at_least_the_floor(int(number), shown, unit_given=False)


@dataclass(frozen=True)
class MemoryBudget:
    """How much memory loaded models may use, and how many may be loaded at once.

    ``limit`` None means the whole device. The watermarks are fractions of the limit: the
    controller starts evicting when used memory exceeds ``high_watermark`` of the limit and
    stops at ``low_watermark``; a load must leave used memory under ``high_watermark``.
    """

    limit: MemoryLimit | None = None
    max_models: int | None = None
    high_watermark: float = DEFAULT_HIGH_WATERMARK
    low_watermark: float = DEFAULT_LOW_WATERMARK

    def __post_init__(self) -> None:
        if self.max_models is not None and (
            isinstance(self.max_models, bool)
            or not isinstance(self.max_models, int)
            or self.max_models < 1
        ):
            raise ConfigError(f"max_models must be a positive integer, got {self.max_models!r}")
        for name in ("high_watermark", "low_watermark"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                raise ConfigError(f"{name} must be a number in (0, 1], got {value!r}")
        if self.low_watermark > self.high_watermark:
            raise ConfigError(
                f"low_watermark ({self.low_watermark}) must not exceed "
                f"high_watermark ({self.high_watermark})"
            )

    def limit_bytes(self, total_bytes: int) -> int:
        """The byte limit on a device with ``total_bytes`` of memory."""
        if self.limit is None:
            return MemoryLimit(fraction=1.0).resolve(total_bytes)
        return self.limit.resolve(total_bytes)

    def high_bytes(self, total_bytes: int) -> int:
        """Used memory above which the controller evicts."""
        return int(self.limit_bytes(total_bytes) * self.high_watermark)

    def low_bytes(self, total_bytes: int) -> int:
        """Used memory the controller evicts down to."""
        return int(self.limit_bytes(total_bytes) * self.low_watermark)


@dataclass(frozen=True)
class ServingConfig:
    """The serving settings: budget, policy and pinned models."""

    budget: MemoryBudget = field(default_factory=MemoryBudget)
    eviction_policy: str = DEFAULT_POLICY
    pinned: frozenset[str] = frozenset()
    timeouts: Timeouts = field(default_factory=Timeouts)
    """The ``timeouts:`` section: what it leaves unset is not set here."""
    source: Path | None = None
    """The file the settings came from, None for defaults only."""

    def unknown_pinned(self, repo: Path) -> list[str]:
        """Pinned names with no model folder in ``repo``: most likely misspelt, as a pin
        of a model that is not there protects nothing."""
        return sorted(name for name in self.pinned if not (repo / name).is_dir())

    def __post_init__(self) -> None:
        if self.eviction_policy not in policy_names():
            raise ConfigError(
                f"unknown eviction policy {self.eviction_policy!r} "
                f"(known: {', '.join(policy_names())})"
            )


_KNOWN_KEYS = (
    "memory_limit",
    "max_models",
    "eviction_policy",
    "high_watermark",
    "low_watermark",
    "pinned",
    "timeouts",
)


def parse_serving_config(data: Any, source: Path | None = None) -> ServingConfig:
    """Build a ``ServingConfig`` from the parsed YAML ``data`` (None = an empty file)."""
    where = f"{source}: " if source else ""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}expected a mapping of settings, got {type(data).__name__}")
    unknown = sorted(str(key) for key in data if key not in _KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(known: {', '.join(_KNOWN_KEYS)})"
        )
    try:
        limit = data.get("memory_limit")
        budget = MemoryBudget(
            limit=None if limit is None else parse_memory_limit(limit),
            max_models=data.get("max_models"),
            high_watermark=data.get("high_watermark", DEFAULT_HIGH_WATERMARK),
            low_watermark=data.get("low_watermark", DEFAULT_LOW_WATERMARK),
        )
        policy = data.get("eviction_policy", DEFAULT_POLICY)
        if not isinstance(policy, str):
            raise ConfigError(f"eviction_policy must be a name, got {policy!r}")
        return ServingConfig(
            budget=budget,
            eviction_policy=policy,
            pinned=_parse_pinned(data.get("pinned")),
            timeouts=parse_timeouts_section(data.get("timeouts")),
            source=source,
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None


def _parse_pinned(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"pinned must be a list of model names, got {value!r}")
    try:
        return frozenset(validate_model_name(item, what="pinned model") for item in value)
    except InvalidNameError as exc:
        raise ConfigError(str(exc)) from exc


def load_serving_config(path: Path) -> ServingConfig:
    """Read and check a ``tritonctl.yaml``; every problem is a ``ConfigError`` naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    return parse_serving_config(data, source=path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (plain YAML keeps
    the last one without a word: ``memory_limit`` twice would silently take the second)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def find_config_file(repo: Path, config_file: Path | None = None) -> Path | None:
    """The settings file to use: ``config_file`` if given (it must exist), else
    ``<repo>/tritonctl.yaml`` if present, else None."""
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        return config_file
    candidate = repo / CONFIG_FILENAME
    return candidate if candidate.is_file() else None


def resolve_serving_config(
    repo: Path,
    config_file: Path | None = None,
    *,
    memory_limit: str | int | float | None = None,
    max_models: int | None = None,
    eviction_policy: str | None = None,
) -> ServingConfig:
    """The settings in effect: defaults, then the config file, then these overrides
    (the command line's ``--memory-limit``, ``--max-models``, ``--policy``)."""
    path = find_config_file(repo, config_file)
    config = load_serving_config(path) if path is not None else ServingConfig()
    budget = config.budget
    if memory_limit is not None:
        budget = replace(budget, limit=parse_memory_limit(memory_limit))
    if max_models is not None:
        budget = replace(budget, max_models=max_models)
    return replace(config, budget=budget, eviction_policy=eviction_policy or config.eviction_policy)


def resolve_control_timeouts(
    given: Timeouts | None = None,
    repo: Path | None = None,
    config_file: Path | None = None,
    *,
    config: ServingConfig | None = None,
) -> Timeouts:
    """The timeouts of a Triton control: ``given`` (the command line, keyword arguments),
    then ``TRITONCTL_LOAD_TIMEOUT``, ``TRITONCTL_CALL_TIMEOUT`` and
    ``TRITONCTL_CONNECT_TIMEOUT``, then the ``timeouts:`` of ``config`` (else of the
    settings file: ``config_file``, else ``<repo>/tritonctl.yaml``; read only when the
    options and the environment leave a timeout unset), then the defaults."""
    timeouts = (given or Timeouts()).over(env_timeouts())
    if not timeouts.complete:
        if config is None:
            path = config_file
            if path is None and repo is not None:
                path = find_config_file(repo)
            if path is not None:
                config = load_serving_config(path)
        if config is not None:
            timeouts = timeouts.over(config.timeouts)
    return timeouts.with_defaults()


class ServingOptions:
    """Mixin for what holds the serving options of the command line (the CLI's global
    options, the REST control plane): ``serving_config()`` resolves them over the
    repository's ``tritonctl.yaml`` (or ``config_file``)."""

    repo: Path
    config_file: Path | None
    memory_limit: str | None
    max_models: int | None
    policy: str | None

    def serving_config(self) -> ServingConfig:
        """The settings in effect: tritonctl.yaml (or ``config_file``), then the options."""
        return resolve_serving_config(
            self.repo,
            self.config_file,
            memory_limit=self.memory_limit,
            max_models=self.max_models,
            eviction_policy=self.policy,
        )
