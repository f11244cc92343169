"""Eviction policies: which loaded models to unload to make room, and why.

A policy works on plain data (one ``ModelState`` per loaded model version), so the same
objects drive the real controller and the simulator in ``manager.simulator``.

The controller (or the simulator) tells a policy what happens through four hooks:

- ``on_load(model)``: the model version is now loaded;
- ``on_hit(model, count)``: ``count`` requests were served by it (also the request that
  caused its load; the controller may report the growth of Triton's ``inference_count``);
- ``on_evict(model)``: the policy chose the model and it was unloaded;
- ``on_unload(model)``: it left memory for another reason (a user's ``unload``).

``choose_victims`` itself changes nothing, so ``tritonctl evict --dry-run`` can call it freely.

Clocks: ``loaded_at`` and ``now`` are epoch seconds, ``last_inference`` is epoch milliseconds
(as Triton's statistics report it, 0 = never).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from manager.errors import ConfigError, MemoryBudgetError
from manager.units import format_duration, format_size

log = logging.getLogger(__name__)

GIB = 2**30


@dataclass
class ModelState:
    """What a policy knows about one loaded model version."""

    name: str
    version: int
    footprint: int
    """Bytes the version holds while loaded (measured, or estimated before its first load)."""
    loaded_at: float
    """When the load finished, epoch seconds."""
    last_inference: int = 0
    """Triton's ``last_inference`` for the version, epoch milliseconds; 0 = never inferred."""
    inference_count: int = 0
    load_seconds: float | None = None
    """How long its last load took; None when never measured."""
    pinned: bool = False
    in_rollout: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def evictable(self) -> bool:
        return not (self.pinned or self.in_rollout)

    @property
    def last_used(self) -> float:
        """Epoch seconds of the last inference, or of the load for a model never inferred."""
        return max(self.last_inference / 1000.0, self.loaded_at)


@dataclass(frozen=True)
class Victim:
    """A model chosen for eviction, with the reason written to the audit log."""

    model: ModelState
    reason: str


@runtime_checkable
class EvictionPolicy(Protocol):
    """Chooses victims among loaded models; keeps whatever state it needs via the hooks."""

    name: str

    def on_load(self, model: ModelState) -> None: ...

    def on_hit(self, model: ModelState, count: int = 1) -> None: ...

    def on_evict(self, model: ModelState) -> None: ...

    def on_unload(self, model: ModelState) -> None: ...

    def choose_victims(
        self,
        candidates: Sequence[ModelState],
        need_bytes: int,
        need_slots: int = 0,
        *,
        now: float | None = None,
    ) -> list[Victim]:
        """Victims, in eviction order, that free ``need_bytes`` and ``need_slots`` models.

        Never returns a pinned model or one in a rollout. Raises ``MemoryBudgetError``
        when evicting every evictable candidate would still not be enough.
        """
        ...


def check_feasible(candidates: Sequence[ModelState], need_bytes: int, need_slots: int) -> None:
    """Raise ``MemoryBudgetError`` if even evicting every evictable candidate is not enough."""
    evictable = [m for m in candidates if m.evictable]
    protected = len(candidates) - len(evictable)
    freeable = sum(m.footprint for m in evictable)
    kept = f" ({protected} pinned or in a rollout kept)" if protected else ""
    if freeable < need_bytes:
        missing = need_bytes - freeable
        raise MemoryBudgetError(
            f"not enough memory even after evicting every evictable model: need to free "
            f"{format_size(need_bytes)}, the {len(evictable)} evictable models hold "
            f"{format_size(freeable)}{kept}; {format_size(missing)} ({missing} bytes) missing"
        )
    if len(evictable) < need_slots:
        raise MemoryBudgetError(
            f"too many models loaded: need to unload {need_slots} models to stay within "
            f"max_models, only {len(evictable)} may be evicted{kept}"
        )


def take_until_enough(
    ranked: Iterable[ModelState],
    need_bytes: int,
    need_slots: int,
    reason: Callable[[ModelState], str],
) -> list[Victim]:
    """Take models from ``ranked`` (evictable, best victim first) until both needs are met."""
    victims: list[Victim] = []
    freed = 0
    for model in ranked:
        if freed >= need_bytes and len(victims) >= need_slots:
            break
        victims.append(Victim(model, reason(model)))
        freed += model.footprint
    return victims


def _ago(now: float, then: float) -> str:
    return f"{format_duration(now - then)} ago"


class RankingPolicy:
    """A policy that sorts the evictable candidates by a key, lowest evicted first.

    Subclasses define ``rank`` and ``reason``; the hooks do nothing unless overridden.
    """

    name: ClassVar[str] = ""

    def on_load(self, model: ModelState) -> None:
        return None

    def on_hit(self, model: ModelState, count: int = 1) -> None:
        return None

    def on_evict(self, model: ModelState) -> None:
        return None

    def on_unload(self, model: ModelState) -> None:
        return None

    def rank(self, model: ModelState, now: float) -> tuple[float, ...]:
        raise NotImplementedError

    def reason(self, model: ModelState, now: float) -> str:
        raise NotImplementedError

    def choose_victims(
        self,
        candidates: Sequence[ModelState],
        need_bytes: int,
        need_slots: int = 0,
        *,
        now: float | None = None,
    ) -> list[Victim]:
        if need_bytes <= 0 and need_slots <= 0:
            return []
        check_feasible(candidates, need_bytes, need_slots)
        at = time.time() if now is None else now
        ranked = sorted(
            (m for m in candidates if m.evictable),
            key=lambda m: (*self.rank(m, at), m.name, m.version),
        )
        victims = take_until_enough(ranked, need_bytes, need_slots, lambda m: self.reason(m, at))
        log.debug(
            "%s chose %s to free %d bytes and %d slots",
            self.name,
            [v.model.label for v in victims],
            need_bytes,
            need_slots,
        )
        return victims


class LruPolicy(RankingPolicy):
    """Least recently used first, recency from Triton's ``last_inference``.

    A model never inferred counts as used when its load finished, so never-inferred models
    are ordered by load time (and a model loaded a moment ago is not the first to go).
    """

    name = "lru"

    def rank(self, model: ModelState, now: float) -> tuple[float, ...]:
        return (model.last_used, model.loaded_at)

    def reason(self, model: ModelState, now: float) -> str:
        if model.last_inference > 0:
            return f"lru: last inference {_ago(now, model.last_inference / 1000.0)}"
        return f"lru: never inferred, loaded {_ago(now, model.loaded_at)}"


class FifoPolicy(RankingPolicy):
    """First loaded, first evicted."""

    name = "fifo"

    def rank(self, model: ModelState, now: float) -> tuple[float, ...]:
        return (model.loaded_at,)

    def reason(self, model: ModelState, now: float) -> str:
        return f"fifo: loaded {_ago(now, model.loaded_at)}"


class MemoryPressurePolicy(RankingPolicy):
    """Largest footprint first (ties: least recently used first): fewest unloads per byte."""

    name = "memory_pressure"

    def rank(self, model: ModelState, now: float) -> tuple[float, ...]:
        return (-model.footprint, model.last_used)

    def reason(self, model: ModelState, now: float) -> str:
        return f"memory_pressure: footprint {format_size(model.footprint)}"


@dataclass
class _GdsfEntry:
    frequency: float = 0.0
    priority: float = 0.0
    loaded: bool = False
    cost_per_gib: float = 0.0
    last_inflation: float = 0.0
    """The aging value L when the frequency was last decayed (see ``decay``)."""


@dataclass
class GdsfPolicy(RankingPolicy):
    """GreedyDual-Size-Frequency (Cherkasova 1998), cost-aware.

    Each loaded model has a priority ``H = L + frequency * cost / size``: the reload cost
    saved per byte of memory, weighted by how often it is used. The victim is the lowest
    ``H``; on each eviction the aging value ``L`` rises to the victim's ``H``, so a model
    that stops being used is eventually overtaken by newer ones (aging without timers).

    - cost: the measured reload time ``load_seconds``; when never measured,
      ``size / fallback_bytes_per_second`` (then ``H`` reduces to LFU with dynamic aging).
    - size: the footprint in GiB (a unit change only; the order does not depend on it).
    - frequency: requests seen since the model's load. With ``remember=True`` the frequency
      of an evicted model is kept and it returns with it (a "perfect-LFU" frequency, which
      helps when big popular models are evicted between bursts); ``decay`` then discounts
      old counts by halving them each time L has grown by ``decay`` since the last touch
      (0 = never), so remembered popularity fades after a phase change.
    """

    name: ClassVar[str] = "gdsf"

    fallback_bytes_per_second: float = 1.0 * GIB
    remember: bool = True
    decay: float = 0.0
    inflation: float = 0.0
    """The aging value L."""
    _entries: dict[tuple[str, int], _GdsfEntry] = field(default_factory=dict, repr=False)

    def _cost_per_gib(self, model: ModelState) -> float:
        size_gib = max(model.footprint, 1) / GIB
        if model.load_seconds is not None and model.load_seconds > 0:
            return model.load_seconds / size_gib
        return (max(model.footprint, 1) / self.fallback_bytes_per_second) / size_gib

    def _entry(self, model: ModelState) -> _GdsfEntry:
        entry = self._entries.get(model.key)
        if entry is None:
            entry = _GdsfEntry(frequency=0.0, last_inflation=self.inflation)
            self._entries[model.key] = entry
        return entry

    def _decayed(self, entry: _GdsfEntry) -> float:
        if self.decay <= 0 or entry.frequency == 0:
            return entry.frequency
        halvings = (self.inflation - entry.last_inflation) / self.decay
        return entry.frequency * 0.5**halvings

    def _touch(self, model: ModelState, entry: _GdsfEntry, hits: int) -> None:
        entry.frequency = self._decayed(entry) + hits
        entry.last_inflation = self.inflation
        entry.cost_per_gib = self._cost_per_gib(model)
        entry.priority = self.inflation + max(entry.frequency, 1.0) * entry.cost_per_gib

    def on_load(self, model: ModelState) -> None:
        entry = self._entry(model)
        entry.loaded = True
        if not self.remember:
            entry.frequency = 0.0
        self._touch(model, entry, 0)

    def on_hit(self, model: ModelState, count: int = 1) -> None:
        entry = self._entry(model)
        entry.loaded = True
        self._touch(model, entry, count)

    def on_evict(self, model: ModelState) -> None:
        entry = self._entries.get(model.key)
        priority = entry.priority if entry is not None else self._fresh_priority(model)
        self.inflation = max(self.inflation, priority)
        self._forget(model)

    def on_unload(self, model: ModelState) -> None:
        self._forget(model)

    def _forget(self, model: ModelState) -> None:
        if self.remember:
            entry = self._entries.get(model.key)
            if entry is not None:
                entry.loaded = False
        else:
            self._entries.pop(model.key, None)

    def _fresh_priority(self, model: ModelState) -> float:
        """Priority of a model the policy has not seen loaded (e.g. after a restart)."""
        return self.inflation + max(model.inference_count, 1) * self._cost_per_gib(model)

    def priority(self, model: ModelState) -> float:
        entry = self._entries.get(model.key)
        if entry is None or not entry.loaded:
            return self._fresh_priority(model)
        return entry.priority

    def rank(self, model: ModelState, now: float) -> tuple[float, ...]:
        return (self.priority(model), model.last_used)

    def reason(self, model: ModelState, now: float) -> str:
        entry = self._entries.get(model.key)
        if entry is None or not entry.loaded:
            frequency = float(max(model.inference_count, 1))
            cost_per_gib = self._cost_per_gib(model)
        else:
            frequency, cost_per_gib = max(entry.frequency, 1.0), entry.cost_per_gib
        size_gib = model.footprint / GIB
        return (
            f"gdsf: lowest value per byte, priority {self.priority(model):.3g} = "
            f"aging {self.inflation:.3g} + {frequency:.3g} uses x "
            f"{cost_per_gib * size_gib:.3g} s reload / {size_gib:.3g} GiB"
        )


POLICIES: dict[str, Callable[[], EvictionPolicy]] = {
    LruPolicy.name: LruPolicy,
    FifoPolicy.name: FifoPolicy,
    MemoryPressurePolicy.name: MemoryPressurePolicy,
    GdsfPolicy.name: GdsfPolicy,
}


def policy_names() -> list[str]:
    return list(POLICIES)


def get_policy(name: str) -> EvictionPolicy:
    """A fresh instance of the policy called ``name`` (policies hold per-model state)."""
    try:
        factory = POLICIES[name]
    except KeyError:
        known = ", ".join(POLICIES)
        raise ConfigError(f"unknown eviction policy {name!r} (known: {known})") from None
    return factory()
