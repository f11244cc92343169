"""Eviction policies: which loaded models to unload to make room, and why.

``lru``, ``fifo``, ``memory_pressure`` (largest first), ``gdsf`` (GreedyDual-Size-Frequency,
cost-aware) and ``gdsf_decay`` (GDSF whose use counts fade; the default). ``get_policy(name)``
builds one. ``bench/eviction.py`` compares them (results in ``bench/README.md``).

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
    protected_by: str = ""
    """Why it is never evicted, in words (refusals name it); empty: say only the kinds."""

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
        """Epoch seconds of the last inference as Triton reports it, or of the load for a
        version never inferred. (Not the later of the two: ``loaded_at`` is the manager's
        clock, ``last_inference`` the server's, and Triton resets a version's statistics
        when it reloads it, so a reported inference is never older than the load.)"""
        if self.last_inference > 0:
            return self.last_inference / 1000.0
        return self.loaded_at


@dataclass(frozen=True)
class Victim:
    """A model chosen for eviction, with the reason written to the audit log."""

    model: ModelState
    reason: str


@runtime_checkable
class EvictionPolicy(Protocol):
    """Chooses victims among loaded models; keeps whatever state it needs via the hooks."""

    @property
    def name(self) -> str:
        """The name users give in ``--policy`` and ``tritonctl.yaml``."""
        ...

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


MAX_NAMED = 8
"""Protected models a refusal names one by one."""


def check_feasible(candidates: Sequence[ModelState], need_bytes: int, need_slots: int) -> None:
    """Raise ``MemoryBudgetError`` if even evicting every evictable candidate is not enough."""
    evictable = [m for m in candidates if m.evictable]
    protected = [m for m in candidates if not m.evictable]
    freeable = sum(m.footprint for m in evictable)
    kept = ""
    if protected:
        why = "pinned, in a rollout, routed to by an endpoint or a step of an ensemble"
        if all(m.protected_by for m in protected):
            shown = protected[:MAX_NAMED]
            why = ", ".join(f"{m.label} {format_size(m.footprint)} {m.protected_by}" for m in shown)
            if len(protected) > len(shown):
                why += f" and {len(protected) - len(shown)} more"
        kept = f" ({len(protected)} protected: {why})"
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
    frequency: float
    """Uses counted at the last touch, before decay."""
    touched_at: float
    """The aging value L at the last touch (load or use)."""
    touched_eviction: int
    """How many evictions the policy had made at the last touch."""
    cost_per_gib: float


@dataclass
class GdsfPolicy(RankingPolicy):
    """GreedyDual-Size-Frequency (Cherkasova 1998), cost-aware.

    Each loaded model has a priority ``H = L + frequency * cost / size``: the reload time
    saved per GiB of memory, weighted by how often the model is used. The victim is the
    lowest ``H``; on each eviction the aging value ``L`` rises to the victim's ``H``, so a
    model that stops being used is eventually overtaken by newer ones. The ``L`` in a
    model's ``H`` is the value ``L`` had when the model was last loaded or used.

    - cost: the measured reload time ``load_seconds``; when never measured,
      ``size / fallback_bytes_per_second`` (``H`` then reduces to LFU with dynamic aging).
    - size: the footprint in GiB, but never less than ``slot_bytes``: under a
      ``max_models`` limit a small model still takes a whole slot (``get_policy`` sets it to
      ``budget_bytes / max_models``).
    - frequency: uses since the model's load (counted as at least 1); forgotten on eviction.
    - ``half_life`` (0 = off, classic GDSF; see ``GdsfDecayPolicy``): a model's frequency
      halves every ``half_life`` evictions during which it is not used. Counting evictions
      rather than seconds or requests keeps this independent of the request rate.
    """

    name: ClassVar[str] = "gdsf"

    fallback_bytes_per_second: float = 1.0 * GIB
    half_life: float = 0.0
    slot_bytes: int = 0
    inflation: float = 0.0
    """The aging value L."""
    evictions: int = 0
    _entries: dict[tuple[str, int], _GdsfEntry] = field(default_factory=dict, repr=False)

    def _cost_per_gib(self, model: ModelState) -> float:
        size_gib = max(model.footprint, self.slot_bytes, 1) / GIB
        if model.load_seconds is not None and model.load_seconds > 0:
            return model.load_seconds / size_gib
        return (max(model.footprint, 1) / self.fallback_bytes_per_second) / size_gib

    def _frequency(self, entry: _GdsfEntry) -> float:
        """The entry's frequency, decayed to now."""
        if self.half_life <= 0:
            return entry.frequency
        idle = self.evictions - entry.touched_eviction
        return entry.frequency * 0.5 ** (idle / self.half_life)

    def _touch(self, model: ModelState, hits: int) -> None:
        entry = self._entries.get(model.key)
        frequency = 0.0 if entry is None else self._frequency(entry)
        self._entries[model.key] = _GdsfEntry(
            frequency=frequency + hits,
            touched_at=self.inflation,
            touched_eviction=self.evictions,
            cost_per_gib=self._cost_per_gib(model),
        )

    def on_load(self, model: ModelState) -> None:
        self._entries.pop(model.key, None)
        self._touch(model, 0)

    def on_hit(self, model: ModelState, count: int = 1) -> None:
        self._touch(model, count)

    def on_evict(self, model: ModelState) -> None:
        self.inflation = max(self.inflation, self.priority(model))
        self.evictions += 1
        self._entries.pop(model.key, None)

    def on_unload(self, model: ModelState) -> None:
        self._entries.pop(model.key, None)

    def _terms(self, model: ModelState) -> tuple[float, float, float]:
        """(L at the last touch, frequency, cost per GiB): ``H = L + frequency * cost``."""
        entry = self._entries.get(model.key)
        if entry is None:
            # Not seen loaded (e.g. loaded before a restart): trust Triton's count.
            return self.inflation, float(max(model.inference_count, 1)), self._cost_per_gib(model)
        return entry.touched_at, max(self._frequency(entry), 1.0), entry.cost_per_gib

    def priority(self, model: ModelState) -> float:
        touched_at, frequency, cost_per_gib = self._terms(model)
        return touched_at + frequency * cost_per_gib

    def frequency(self, model: ModelState) -> float:
        """The (decayed) frequency the policy holds for ``model``, 0 if it has none."""
        entry = self._entries.get(model.key)
        return 0.0 if entry is None else self._frequency(entry)

    def rank(self, model: ModelState, now: float) -> tuple[float, ...]:
        return (self.priority(model), model.last_used)

    def reason(self, model: ModelState, now: float) -> str:
        touched_at, frequency, cost_per_gib = self._terms(model)
        size_gib = model.footprint / GIB
        return (
            f"{self.name}: least reload time saved per GiB, priority "
            f"{touched_at + frequency * cost_per_gib:.3g} = aging {touched_at:.3g} + "
            f"{frequency:.3g} uses x {cost_per_gib * size_gib:.3g} s reload / "
            f"{size_gib:.3g} GiB"
        )


@dataclass
class GdsfDecayPolicy(GdsfPolicy):
    """GDSF whose use counts fade: halved every 500 evictions a model goes unused.

    Classic GDSF keeps a formerly popular model until ``L`` has climbed past its whole
    accumulated count, which after a popularity shift takes long; LRU forgets at once but
    ignores size, cost and frequency. On the eviction bench this trades a little hit ratio
    on stationary Zipf traffic for a lot after a popularity shift or under drifting
    popularity (``bench/README.md``). The half-life was chosen on other seeds than the ones
    the bench reports.
    """

    name: ClassVar[str] = "gdsf_decay"

    half_life: float = 500.0


PolicyFactory = Callable[[int, int | None], EvictionPolicy]
"""Builds a policy from the byte budget (0 = unknown) and the optional max_models."""


def _slot_bytes(budget_bytes: int, max_models: int | None) -> int:
    return budget_bytes // max_models if budget_bytes > 0 and max_models else 0


POLICIES: dict[str, PolicyFactory] = {
    LruPolicy.name: lambda budget, max_models: LruPolicy(),
    FifoPolicy.name: lambda budget, max_models: FifoPolicy(),
    MemoryPressurePolicy.name: lambda budget, max_models: MemoryPressurePolicy(),
    GdsfPolicy.name: lambda budget, max_models: GdsfPolicy(
        slot_bytes=_slot_bytes(budget, max_models)
    ),
    GdsfDecayPolicy.name: lambda budget, max_models: GdsfDecayPolicy(
        slot_bytes=_slot_bytes(budget, max_models)
    ),
}

DEFAULT_POLICY = GdsfDecayPolicy.name


def policy_names() -> list[str]:
    return list(POLICIES)


def get_policy(
    name: str, *, budget_bytes: int | None = None, max_models: int | None = None
) -> EvictionPolicy:
    """A fresh instance of the policy called ``name`` (policies hold per-model state).

    ``budget_bytes`` and ``max_models`` let size-aware policies weigh a model-count limit
    (``gdsf`` counts every model as at least one slot of ``budget_bytes / max_models``).
    Raises ``ConfigError`` listing the known names when ``name`` is unknown.
    """
    try:
        factory = POLICIES[name]
    except KeyError:
        known = ", ".join(POLICIES)
        raise ConfigError(f"unknown eviction policy {name!r} (known: {known})") from None
    return factory(budget_bytes or 0, max_models)
