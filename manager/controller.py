"""The memory controller: keep the loaded models inside a memory budget.

``Controller.ensure_loaded(name)`` makes a model READY without breaking the budget: a model
already loaded is a cache hit; otherwise its footprint (measured before, or estimated) is
compared with what is free under the limit (and with ``max_models``), victims chosen by
the eviction policy are unloaded, and the load waits until their memory is really free
(the index shows them UNAVAILABLE, their stub processes are gone, a fresh metrics sample).
A model that cannot fit even after evicting everything evictable is refused *before* it is
loaded, with a ``MemoryBudgetError`` that says how much is missing. The load itself is
measured (``manager.footprint``) and the footprint stored for next time.

``Controller.run_once()`` / ``run(interval)`` is the loop of the long-running process:
when used memory is above the high watermark it evicts down to the low watermark, and it
feeds the policy the growth of Triton's ``inference_count`` per poll.

Never evicted (*protected*): models pinned in ``tritonctl.yaml`` or with ``tritonctl pin``,
models in an active rollout and the steps of a loaded ensemble (each as a whole: Triton
unloads a model with all its versions), and the versions endpoints route to. The other
versions of a model endpoints route to may go one by one: the versions chosen leave the
model's version policy together (``Endpoints.retire_versions``: one reload) and the routed
versions keep serving. Endpoint ensembles and routers, and ensembles in general, are not
candidates at all: they hold no model memory of their own.

Every decision goes to the audit log (``manager.audit``). Loads, evictions and the loop
are serialized by a thread lock and a file lock in the repository, so footprint deltas
are clean also when a CLI and a controller process share a server.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from manager import serving
from manager.audit import AuditLog, AuditRecord
from manager.budget import MemoryBudget, ServingConfig
from manager.endpoints import (
    ENDPOINT_KIND,
    KIND_PARAMETER,
    ROUTER_KIND,
    Endpoints,
    is_endpoint_folder,
)
from manager.errors import (
    ControllerRunningError,
    ManagerError,
    MemoryBudgetError,
    ModelNotFoundError,
    RepositoryError,
    TritonUnreachableError,
    UnloadError,
)
from manager.footprint import (
    LIVE_BASIS,
    Footprint,
    FootprintStore,
    MemoryMeter,
    Usage,
    artifact_size,
    loaded_footprint,
    predicted_versions,
)
from manager.loadtimes import LoadTimes, forget_loads
from manager.metrics import MemoryReading
from manager.modelconfig import read_config
from manager.names import validate_model_name
from manager.pins import PinStore
from manager.policies import EvictionPolicy, ModelState, Victim, get_policy
from manager.repository import Repository, write_json_atomic
from manager.rollout import RolloutStore
from manager.serving import ModelControl
from manager.settings import META_DIR
from manager.triton import IndexEntry, ModelStats
from manager.units import format_size

log = logging.getLogger(__name__)

LOCK_FILE = "memory.lock"
LOOP_LOCK_FILE = "controller.lock"
LOOP_OWNER_FILE = "controller.json"
LOCK_TIMEOUT_S = 900.0
MAX_ROUNDS = 4
"""Eviction rounds per load: footprints can be off, so the fit is re-checked after each."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Eviction:
    """A model version that was (or would be) evicted, and why."""

    model: str
    version: int
    bytes: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Protected:
    """A loaded model version that may not be evicted, and why."""

    model: str
    version: int
    bytes: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EnsureResult:
    """A model that is READY, what had to go for it, and its measured footprints."""

    name: str
    versions: tuple[int, ...]
    seconds: float
    cache_hit: bool
    evicted: tuple[Eviction, ...] = ()
    footprints: tuple[Footprint, ...] = ()

    @property
    def bytes_loaded(self) -> int:
        return sum(f.bytes for f in self.footprints)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": list(self.versions),
            "seconds": self.seconds,
            "cache_hit": self.cache_hit,
            "evicted": [e.to_json() for e in self.evicted],
            "footprints": [f.to_json() for f in self.footprints],
        }


@dataclass(frozen=True)
class EvictionPlan:
    """What would be evicted now, and why (``tritonctl evict --dry-run``)."""

    usage: Usage
    limit_bytes: int
    high_bytes: int
    low_bytes: int
    max_models: int | None
    loaded: int
    policy: str
    victims: tuple[Eviction, ...]
    """What would go now: to get under the low watermark (when above the high one), or to
    make room for ``for_model``."""
    ranking: tuple[Eviction, ...]
    """Every evictable model version, first to go first."""
    protected: tuple[Protected, ...]
    need_bytes: int = 0
    need_slots: int = 0
    for_model: str | None = None
    footprint: Footprint | None = None
    refused: str | None = None
    """Why ``for_model`` could not be made to fit, if it could not."""

    def to_json(self) -> dict[str, Any]:
        return {
            "usage": self.usage.to_json(),
            "limit_bytes": self.limit_bytes,
            "high_watermark_bytes": self.high_bytes,
            "low_watermark_bytes": self.low_bytes,
            "max_models": self.max_models,
            "loaded": self.loaded,
            "policy": self.policy,
            "for_model": self.for_model,
            "footprint": self.footprint.to_json() if self.footprint else None,
            "need_bytes": self.need_bytes,
            "need_slots": self.need_slots,
            "refused": self.refused,
            "victims": [v.to_json() for v in self.victims],
            "ranking": [v.to_json() for v in self.ranking],
            "protected": [p.to_json() for p in self.protected],
        }


@dataclass(frozen=True)
class EvictionPreview:
    """What ``tritonctl evict NAME`` would do now (``evict NAME --dry-run``)."""

    name: str
    versions: tuple[Eviction, ...]
    """The loaded versions it would unload, with the memory each holds (none: not loaded)."""
    protected: str | None = None
    """Why it is refused without ``--force``, if it is."""

    @property
    def bytes(self) -> int:
        return sum(v.bytes for v in self.versions)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "loaded": bool(self.versions),
            "bytes": self.bytes,
            "protected": self.protected,
            "would_evict": [v.to_json() for v in self.versions],
        }


@dataclass
class ControllerStats:
    """Counters since the controller was made."""

    loads: int = 0
    cache_hits: int = 0
    evictions: int = 0
    failures: int = 0
    load_seconds_total: float = 0.0

    @property
    def average_load_seconds(self) -> float:
        return self.load_seconds_total / self.loads if self.loads else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "loads": self.loads,
            "cache_hits": self.cache_hits,
            "evictions": self.evictions,
            "failures": self.failures,
            "average_load_seconds": self.average_load_seconds,
        }


@dataclass
class _View:
    """The loaded models at one moment, as the policy sees them."""

    index: list[IndexEntry]
    usage: Usage
    states: list[ModelState]
    protected: dict[str, str] = field(default_factory=dict)
    # model -> version -> endpoint reason, for models protected only by what endpoints
    # route to: their other versions may go, one by one (the routed ones keep serving)
    routed: dict[str, dict[int, str]] = field(default_factory=dict)
    # versions Triton is loading now (a load that ran past its wait, another client's):
    # not in ``states`` (not evictable yet), but each holds a slot of ``max_models``, and
    # the memory it is expected to take beyond what the reading shows of it already
    loading: frozenset[tuple[str, int]] = frozenset()
    loading_bytes: Mapping[tuple[str, int], int] = field(default_factory=dict)

    def of_model(self, name: str) -> list[ModelState]:
        return [s for s in self.states if s.name == name]

    def loading_besides(self, name: str | None) -> int:
        """How many versions are loading now, but those of ``name``."""
        return sum(1 for model, _ in self.loading if model != name)

    def loading_bytes_besides(self, name: str | None) -> int:
        """What the versions loading now (but those of ``name``) are yet to take."""
        return sum(b for (model, _), b in self.loading_bytes.items() if model != name)


def _as_a_whole(
    whole: Mapping[str, str], routed: Mapping[str, Mapping[int, str]]
) -> dict[str, str]:
    """Model name -> why it may not be unloaded as a whole (every version)."""
    reasons = dict(whole)
    for name in sorted(routed):
        reasons.setdefault(name, next(iter(routed[name].values())))
    return reasons


# --------------------------------------------------------------------------- controller


class Controller:
    """Keeps the models one Triton server has loaded inside a memory budget.

    ``control`` is a :class:`manager.triton.TritonControl` (or a fake), ``repo`` the
    repository the server serves (footprints, pins, endpoints, rollouts and the audit log
    live in its ``.tritonctl`` folder). ``load_timeout``: seconds a load of
    :meth:`ensure_loaded` is waited for (default: the control's load timeout,
    ``control.timeout``, else 600). Thread-safe: every operation holds one lock.
    """

    def __init__(
        self,
        control: ModelControl,
        repo: Path,
        config: ServingConfig | None = None,
        *,
        policy: EvictionPolicy | None = None,
        meter: MemoryMeter | None = None,
        audit: AuditLog | None = None,
        load_timeout: float | None = None,
        unload_timeout: float = serving.DEFAULT_UNLOAD_TIMEOUT_S,
    ) -> None:
        self.control = control
        self.repo = Path(repo)
        self.config = config or ServingConfig()
        self.meter = meter or MemoryMeter.for_control(control, control.url, self.repo)
        self._policy = policy
        self.footprints = FootprintStore(self.repo)
        self.pins = PinStore(self.repo)
        self.audit = audit or AuditLog(self.repo)
        if load_timeout is None:
            load_timeout = getattr(control, "timeout", serving.DEFAULT_LOAD_TIMEOUT_S)
        self.load_timeout: float = load_timeout
        self.unload_timeout = unload_timeout
        self.stats = ControllerStats()
        self._lock = threading.RLock()
        self._file_lock: FileLock | None = None
        self._seen: dict[tuple[str, int], ModelState] = {}
        self._seen_counts: dict[tuple[str, int], int] = {}
        self._alerting = False
        # when each version evicted by this controller had been loaded: a version served
        # again (the load it went for failed, or took less) keeps its place in fifo/lru
        self._evicted_loaded_at: dict[tuple[str, int], float] = {}

    def __repr__(self) -> str:
        return f"Controller({self.control.url!r}, {str(self.repo)!r})"

    @property
    def budget(self) -> MemoryBudget:
        return self.config.budget

    @property
    def policy(self) -> EvictionPolicy:
        """The policy instance (built on first use: size-aware ones need the limit)."""
        if self._policy is None:
            budget_bytes = 0
            if self.budget.limit is not None:
                try:
                    budget_bytes = self.budget.limit_bytes(self.meter.usage().total_bytes)
                except ManagerError as exc:
                    log.debug("no byte budget for the policy yet: %s", exc)
            self._policy = get_policy(
                self.config.eviction_policy,
                budget_bytes=budget_bytes,
                max_models=self.budget.max_models,
            )
        return self._policy

    # ---------------------------------------------------------------- locking

    @contextmanager
    def locked(
        self, *, timeout: float = LOCK_TIMEOUT_S, across_processes: bool = True
    ) -> Iterator[None]:
        """Hold this controller's lock and, ``across_processes``, the repository's lock that
        every tritonctl process takes to load or evict on it (waiting ``timeout`` seconds
        for another's load or eviction to end). Read-only views (``plan``, the previews)
        take only the first: they must not wait behind a load of minutes."""
        with self._lock:
            if not across_processes:
                yield
                return
            if self._file_lock is None:
                self._file_lock = FileLock(str(_meta_folder(self.repo) / LOCK_FILE))
            try:
                self._file_lock.acquire(timeout=timeout)
            except Timeout as exc:
                raise RepositoryError(
                    f"another tritonctl process is loading or evicting on {self.repo} (it "
                    f"holds {self._file_lock.lock_file}); waited {timeout:g} s for it"
                ) from exc
            try:
                yield
            finally:
                self._file_lock.release()

    # ---------------------------------------------------------------- what is loaded

    def _coming(
        self,
        name: str,
        version: int | None,
        wanted: frozenset[int] | None,
        ready: Sequence[int],
    ) -> tuple[list[int], int]:
        """The versions of ``name`` a load (of ``version``, or of those its version policy
        ``wanted``) brings up that are not ``ready`` yet, and how many ready versions it
        takes down: those the policy no longer selects, or, for one version, every other
        but those endpoints route to (their slots are freed by the load itself)."""
        coming = (
            sorted(wanted) if wanted is not None else predicted_versions(self.repo, name, version)
        )
        staying = set(coming)
        if version is not None:
            staying |= serving.endpoint_versions(self.control, self.repo, name)
        leaving = len(set(ready) - staying) if wanted is not None or version is not None else 0
        return [v for v in coming if v not in ready], leaving

    def _memoryless(self, name: str, served: Mapping[str, Any] | None = None) -> bool:
        """Endpoint ensembles, their routers and ensembles: never candidates. ``served``:
        Triton's config of a model the repository holds no copy of."""
        repo = Repository(self.repo)
        if is_endpoint_folder(repo, name):
            return True
        path = self.repo / name / "config.pbtxt"
        if not path.is_file():
            return served is not None and (
                served.get("platform") == "ensemble" or _served_kind(served) in ENDPOINT_KINDS
            )
        try:
            return read_config(path).platform == "ensemble"
        except ManagerError:
            return False

    def protections(self, ready: Sequence[str] = ()) -> dict[str, str]:
        """Model name -> why it may not be evicted as a whole (``ready``: the loaded model
        names, whose ensembles protect their steps)."""
        return _as_a_whole(*self._protections(ready))

    def _served_configs(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Triton's own configs of the loaded ``names`` that the repository holds no copy
        of (a server whose repository is elsewhere): what tells its ensembles and endpoints,
        and so the models they call, apart there."""
        served: dict[str, dict[str, Any]] = {}
        for name in names:
            if not (self.repo / name / "config.pbtxt").is_file():
                try:
                    served[name] = self.control.model_config(name)
                except ManagerError as exc:
                    log.debug("no config of %s from %s: %s", name, self.control.url, exc)
        return served

    def _protections(
        self, ready: Sequence[str] = (), served: Mapping[str, Mapping[str, Any]] | None = None
    ) -> tuple[dict[str, str], dict[str, dict[int, str]]]:
        """Why models may not be evicted: model name -> reason for those protected as a
        whole (pinned, in a rollout, a step of a loaded ensemble), and model -> version ->
        reason for the versions endpoints route to, the model's other versions being free
        to go. ``served``: Triton's configs of loaded models the repository does not hold
        (their ensembles' steps are protected as well)."""
        reasons: dict[str, str] = {}
        routed: dict[str, dict[int, str]] = {}
        where = f" in {self.config.source}" if self.config.source else ""
        for name in sorted(self.config.pinned):
            reasons[name] = f"pinned{where or ' in the serving config'}"
        for name in sorted(self.pins.names()):
            reasons.setdefault(name, "pinned (tritonctl pin)")
        repo = Repository(self.repo)
        for rollout in RolloutStore(repo).active():
            reasons.setdefault(
                rollout.model,
                f"in the rollout of endpoint {rollout.endpoint} "
                f"({rollout.model}:{rollout.old_version} -> {rollout.new_version})",
            )
        for state in Endpoints(repo, self.control).list():
            for target in state.targets:
                routed.setdefault(target.model, {}).setdefault(
                    target.version,
                    f"target of endpoint {state.name} ({target.model}:{target.version})",
                )
        for name in ready:
            path = self.repo / name / "config.pbtxt"
            config_there = (served or {}).get(name)
            if not path.is_file() and config_there is not None:
                what = (
                    "endpoint"
                    if _served_kind(config_there) in ENDPOINT_KINDS
                    else "loaded ensemble"
                )
                for step_name in _served_steps(config_there):
                    reasons.setdefault(step_name, f"step of the {what} {name}")
                continue
            if not path.is_file() or is_endpoint_folder(repo, name):
                continue  # an endpoint's steps are its targets (or its router)
            try:
                config = read_config(path)
            except ManagerError:
                continue
            if config.platform == "ensemble":
                for step in config.ensemble_scheduling.step:
                    reasons.setdefault(step.model_name, f"step of the loaded ensemble {name}")
        return reasons, routed

    def _view(self, index: list[IndexEntry] | None = None) -> _View:
        taken = time.time()
        index = self.control.repository_index() if index is None else index
        usage = self.meter.usage()
        ready = sorted({(e.name, e.version) for e in index if e.ready and e.version is not None})
        ready_names = sorted({name for name, _ in ready})
        served = self._served_configs(ready_names)
        whole, routed = self._protections(ready_names, served)
        protected = _as_a_whole(whole, routed)
        routed = {name: versions for name, versions in routed.items() if name not in whole}
        stats: dict[tuple[str, int | None], ModelStats] = {}
        if ready:
            stats = {(s.name, s.version): s for s in self.control.statistics()}
        # when each version was loaded: by tritonctl (recorded then), else when first seen
        # READY; footprints.json held the times of budgeted loads before loaded.json did
        loaded_at = LoadTimes(self.repo).sync(
            [(n, v) for n, v in ready if v is not None],
            now=taken,
            # (only until loaded.json exists: a footprint's time is that of an earlier
            # load, not when this version came up)
            fallback=None if LoadTimes(self.repo).path.is_file() else self.footprints.loaded_at(),
        )
        states = []
        for name, version in ready:
            assert version is not None
            if self._memoryless(name, served.get(name)):
                continue
            key = (name, version)
            stat = stats.get(key)
            recorded = self.footprints.get(name, version)
            known = loaded_footprint(self.footprints, name, version, usage.per_version)
            if recorded is None and known is not None and known.basis == LIVE_BASIS:
                # loaded without a budget (or outside tritonctl): what it holds now is
                # kept as its footprint, so a later budgeted load of it plans with that
                recorded = replace(
                    known,
                    size_bytes=artifact_size(self.repo, name, version),
                    basis="read while loaded",
                )
                self.footprints.record(recorded)
            footprint = (known or self.footprints.estimate(name, version)).bytes
            reason = whole.get(name) or routed.get(name, {}).get(version, "")
            states.append(
                ModelState(
                    name=name,
                    version=version,
                    footprint=footprint,
                    loaded_at=loaded_at.get(key, taken),
                    last_inference=stat.last_inference_ms if stat else 0,
                    inference_count=stat.inference_count if stat else 0,
                    load_seconds=recorded.load_seconds if recorded else None,
                    pinned=bool(reason) and not reason.startswith("in the rollout"),
                    in_rollout=reason.startswith("in the rollout"),
                    protected_by=f"({reason})" if reason else "",
                )
            )
        loading = frozenset(
            (e.name, e.version)
            for e in index
            if e.state == "LOADING" and e.version is not None and not self._memoryless(e.name)
        )
        # a load under way takes its footprint; what the reading shows of it is in use
        loading_bytes = {
            (n, v): max(self.footprints.footprint(n, v).bytes - usage.per_version.get((n, v), 0), 0)
            for n, v in loading
        }
        return _View(
            index=index,
            usage=usage,
            states=states,
            protected=protected,
            routed=routed,
            loading=loading,
            loading_bytes=loading_bytes,
        )

    def _observe(self, view: _View) -> None:
        """Tell the policy what happened since the last poll: new models, request counts
        (growth of ``inference_count``), models that left."""
        policy = self.policy
        current = {s.key: s for s in view.states}
        for key, state in current.items():
            if key not in self._seen_counts:
                policy.on_load(state)
                if state.inference_count > 0:
                    policy.on_hit(state, state.inference_count)
            else:
                grown = state.inference_count - self._seen_counts[key]
                if grown > 0:
                    policy.on_hit(state, grown)
            self._seen_counts[key] = state.inference_count
            self._seen[key] = state
        for key in [k for k in self._seen if k not in current]:
            policy.on_unload(self._seen.pop(key))
            self._seen_counts.pop(key, None)

    def _limits(self, usage: Usage) -> tuple[int, int, int]:
        budget = self.budget
        total = usage.total_bytes
        return budget.limit_bytes(total), budget.high_bytes(total), budget.low_bytes(total)

    # ---------------------------------------------------------------- evicting

    def _record(self, action: str, model: str, version: int | None, reason: str, **kw: Any) -> None:
        nbytes = kw.pop("bytes", None)
        extra = {k: v for k, v in kw.items() if v is not None}
        self.audit.write(AuditRecord(action, model, version, reason, nbytes, extra=extra))

    def _reading_before_release(self) -> MemoryReading | None:
        """The metrics reading to compare with after an unload (None: memory is read from
        the server's processes, which need no metrics sample)."""
        if self.meter.has_gpu or self.meter.server_pid is None:
            return self.meter.reading()
        return None

    def _unloaded(self, states: Sequence[ModelState]) -> None:
        """Tell the policy that ``states`` left by an unload that was not an eviction."""
        for state in states:
            self.policy.on_unload(state)
            self._seen.pop(state.key, None)
            self._seen_counts.pop(state.key, None)

    def _evict_model(
        self, view: _View, name: str, reason: str, *, chosen: Sequence[ModelState] = ()
    ) -> list[Eviction]:
        """Unload ``name`` (every version), wait until its memory is free, tell the policy.
        A model that endpoints route to loses only the ``chosen`` versions (none routed):
        they leave its version policy and the routed ones keep serving."""
        states = view.of_model(name)
        chosen_keys = {s.key for s in chosen}
        before = self._reading_before_release()
        if name in view.routed and chosen:
            states = [s for s in states if s.key in chosen_keys]
            endpoints = Endpoints(Repository(self.repo), self.control)
            endpoints.retire_versions(name, [s.version for s in states])
            if not self.meter.wait_released([s.key for s in states], before):
                raise UnloadError(
                    f"{name}:{','.join(str(s.version) for s in states)} is unloaded but its "
                    "processes have not exited"
                )
        else:
            serving.unload(self.control, name, wait_timeout=self.unload_timeout)
            forget_loads(self.repo, name)
            if not self.meter.wait_released([name], before):
                raise UnloadError(f"model {name!r} is unloaded but its processes have not exited")
        out = []
        for state in states:
            self._evicted_loaded_at[state.key] = state.loaded_at
            if state.key in chosen_keys or not chosen_keys:
                self.policy.on_evict(state)
            else:
                self.policy.on_unload(state)
            self._seen.pop(state.key, None)
            self._seen_counts.pop(state.key, None)
            out.append(Eviction(name, state.version, state.footprint, reason))
            self._record(
                "evict",
                name,
                state.version,
                reason,
                bytes=state.footprint,
                policy=self.policy.name,
                used_bytes=view.usage.used_bytes,
            )
        self.stats.evictions += 1
        return out

    def _evict_victims(self, view: _View, victims: Sequence[Victim], why: str) -> list[Eviction]:
        out: list[Eviction] = []
        by_model: dict[str, list[Victim]] = {}
        for victim in victims:
            by_model.setdefault(victim.model.name, []).append(victim)
        for name, chosen in by_model.items():
            reason = f"{why}; {chosen[0].reason}"
            out.extend(self._evict_model(view, name, reason, chosen=[v.model for v in chosen]))
        return out

    # ---------------------------------------------------------------- ensure loaded

    def ensure_loaded(
        self, name: str, version: int | None = None, *, refresh: bool = False
    ) -> EnsureResult:
        """Make ``name`` (``version`` only, if given) READY within the budget.

        ``refresh``: as :func:`manager.serving.load`'s (a load asked for by hand of a model
        this repository holds no copy of goes to Triton even with a version READY).

        Raises ``MemoryBudgetError`` (nothing loaded, nothing evicted) when it cannot fit
        even after evicting every evictable model; ``ModelNotFoundError`` for a model the
        server does not know; ``LoadError`` with Triton's reason when the load fails.
        """
        validate_model_name(name)
        serving.check_version(self.repo, name, version)
        asked = time.monotonic()  # the wait for the lock counts against the load's
        with self.locked(timeout=min(self.load_timeout, LOCK_TIMEOUT_S)):
            index = self.control.repository_index()
            entries = serving.entries_of(index, name)
            if not entries:
                raise ModelNotFoundError(
                    f"model {name!r} is not in the repository served by {self.control.url}"
                )
            ready_before = serving.ready_versions(entries)
            wanted = (
                serving.versions_to_serve(self.control, self.repo, name)
                if version is None
                else None
            )
            if serving.up_to_date(entries, version, wanted, refresh=refresh):
                self.stats.cache_hits += 1
                return EnsureResult(name, ready_before, 0.0, cache_hit=True)
            versions, leaving = self._coming(name, version, wanted, ready_before)
            memoryless = self._memoryless(name)
            needed = [] if memoryless else [self.footprints.footprint(name, v) for v in versions]
            evicted = self._make_room(name, version, needed, index, leaving=leaving)
            before = self.meter.baseline()
            try:
                result = serving.load(
                    self.control,
                    name,
                    version=version,
                    repo=self.repo,
                    wait_timeout=max(self.load_timeout - (time.monotonic() - asked), 1.0),
                    refresh=refresh,
                )
            except ManagerError as exc:
                if isinstance(exc, serving.StillLoadingError):  # Triton goes on loading it
                    self._record("load-still-running", name, version, str(exc))
                    if not evicted:
                        raise
                    gone = ", ".join(f"{e.model}:{e.version}" for e in evicted)
                    raise serving.StillLoadingError(
                        f"{exc}; evicted for it: {gone} (not served again should its load "
                        "fail: `tritonctl load` them then)"
                    ) from exc
                self.stats.failures += 1
                self._record("load-failed", name, version, str(exc))
                if not evicted or isinstance(exc, TritonUnreachableError):
                    raise  # no server to serve the victims again
                raise type(exc)(f"{exc}; {self._serve_again(evicted)}") from exc
            new = [v for v in result.versions if v not in ready_before]
            loaded_at = time.time()
            measured: list[Footprint] = []
            if new and not memoryless:
                sizes = {v: artifact_size(self.repo, name, v) for v in new}
                measured = self.meter.measure(
                    name, new, before, load_seconds=result.seconds, sizes=sizes
                )
                for footprint in measured:
                    self.footprints.record(footprint, loaded_at=loaded_at)
            self.stats.loads += 1
            self.stats.load_seconds_total += result.seconds
            total = sum(f.bytes for f in measured)
            estimated = sum(f.bytes for f in needed)
            method = measured[0].method if measured else "none"
            shown = version if version is not None else (new[-1] if new else None)
            self._record(
                "load",
                name,
                shown,
                f"requested; measured {format_size(total)} ({method}), "
                f"expected {format_size(estimated)}"
                + (f", after evicting {len(evicted)}" if evicted else ""),
                bytes=total,
                load_seconds=round(result.seconds, 3),
            )
            if measured and total > estimated and self.budget.limit is not None:
                # it took more than expected: get back under the high watermark now, not at the
                # controller's next poll (or take the load back when nothing else can go)
                evicted += self._settle(name, shown, total, estimated, ready_before, evicted)
            elif measured and total < estimated and evicted:
                # it took less than expected: what went only for the estimate comes back
                label = f"{name}:{shown}" if shown is not None else name
                why = (
                    f"{label} measured {format_size(total)} where {format_size(estimated)} "
                    "was expected: room left for it"
                )
                back = self._give_back(evicted, why)
                evicted = [e for e in evicted if (e.model, e.version) not in back]
            return EnsureResult(
                name,
                result.versions,
                result.seconds,
                cache_hit=False,
                evicted=tuple(evicted),
                footprints=tuple(measured),
            )

    def _settle(
        self,
        name: str,
        version: int | None,
        measured: int,
        estimated: int,
        ready_before: Sequence[int],
        evicted: Sequence[Eviction],
    ) -> list[Eviction]:
        """After a load that measured more than its footprint was expected to be: when used
        memory is now over the high watermark (what a load must stay under), evict other
        models (by the policy) until it is not.
        When even that cannot get under the limit, a model that was not served before is
        unloaded again and what was evicted for it served again (``MemoryBudgetError``; its
        measured footprint is stored, so the next try is refused before loading); one
        that served before stays, with an ``alert`` in the audit log."""
        label = f"{name}:{version}" if version is not None else name
        view = self._view()
        self._observe(view)
        _, high, _ = self._limits(view.usage)
        used = view.usage.used_bytes
        if used <= high:
            return []
        # the model just loaded is not a candidate: it is what the room was made for
        candidates = [s for s in view.states if s.name != name]
        what = (
            f"measured {format_size(measured)} where {format_size(estimated)} was "
            f"expected: used {format_size(used)} > high watermark {format_size(high)}"
        )
        try:
            victims = self.policy.choose_victims(candidates, used - high)
        except MemoryBudgetError as exc:
            if ready_before:
                message = f"{label} {what}, and evicting all that may go is not enough: {exc}"
                self._record("alert", name, version, message, used_bytes=used, limit_bytes=high)
                log.warning("%s", message)
                return []
            before = self._reading_before_release()
            serving.unload(self.control, name, wait_timeout=self.unload_timeout)
            forget_loads(self.repo, name)
            self.meter.wait_released([name], before)
            self._unloaded(view.of_model(name))
            self._record("unload", name, version, f"{what}; taken back", bytes=measured)
            message = (
                f"cannot keep {label} loaded: {what}, and evicting all that may go is not "
                f"enough ({exc}); it was unloaded again"
            )
            if evicted:
                message += f"; {self._serve_again(evicted)}"
            raise MemoryBudgetError(message) from exc
        return self._evict_victims(
            view, victims, f"back under the high watermark at once: {label} {what}"
        )

    def _give_back(self, evicted: Sequence[Eviction], why: str) -> set[tuple[str, int]]:
        """Serve again, most recently evicted first (the policy's last choices: the most
        worth keeping), each evicted model whose footprint fits under the high watermark
        now (and under ``max_models``); returns the versions served again."""
        by_model: dict[str, list[Eviction]] = {}
        for e in evicted:
            by_model.setdefault(e.model, []).append(e)
        back: set[tuple[str, int]] = set()
        for model in reversed(list(by_model)):
            gone = by_model[model]
            view = self._view()
            _, high, _ = self._limits(view.usage)
            size = sum(self.footprints.footprint(model, e.version).bytes for e in gone)
            slots_left = (
                self.budget.max_models - len(view.states) - view.loading_besides(None)
                if self.budget.max_models is not None
                else len(gone)
            )
            if view.usage.used_bytes + view.loading_bytes_besides(None) + size > high:
                continue
            if slots_left < len(gone):
                continue
            versions = sorted(e.version for e in gone)
            policy = serving.versions_to_serve(self.control, self.repo, model)
            one = versions[0] if len(versions) == 1 and policy != set(versions) else None
            try:
                serving.load(
                    self.control, model, version=one, repo=self.repo, wait_timeout=self.load_timeout
                )
            except ManagerError as exc:
                self._record("restore-failed", model, one, str(exc))
                continue
            back.update((model, v) for v in versions)
            self._keep_load_times(model, versions)
            self._record("restore", model, one, f"served again: {why}", bytes=size)
        return back

    def _keep_load_times(self, model: str, versions: Iterable[int]) -> None:
        """Versions served again get back the load time they had before their eviction
        (not the time of this load), so fifo and lru rank them where they were."""
        times = LoadTimes(self.repo)
        for version in versions:
            at = self._evicted_loaded_at.pop((model, version), None)
            if at is not None:
                times.record(model, [version], at=at)

    def _serve_again(self, evicted: Sequence[Eviction]) -> str:
        """Load again what was evicted for a load that then failed, so that a failed load
        leaves what was served serving; says what came back and what did not."""
        by_model: dict[str, set[int]] = {}
        for e in evicted:
            by_model.setdefault(e.model, set()).add(e.version)
        back, lost = [], []
        for model, versions in by_model.items():
            label = f"{model}:{','.join(map(str, sorted(versions)))}"
            policy = serving.versions_to_serve(self.control, self.repo, model)
            one = next(iter(versions)) if len(versions) == 1 and policy != versions else None
            try:
                serving.load(
                    self.control, model, version=one, repo=self.repo, wait_timeout=self.load_timeout
                )
            except ManagerError as exc:
                lost.append(f"{label} ({exc})")
                self._record("restore-failed", model, one, str(exc))
                continue
            back.append(label)
            self._keep_load_times(model, versions)
            self._record("restore", model, one, "served again: the load it was evicted for failed")
        parts = []
        if back:
            parts.append(f"served again what was evicted for it: {', '.join(back)}")
        if lost:
            parts.append(f"evicted for it and NOT served again: {'; '.join(lost)}")
        return "; ".join(parts)

    @contextmanager
    def admitting(self, wanted: Mapping[str, Iterable[int]]) -> Iterator[list[Eviction]]:
        """Make room by the policy for the versions in ``wanted`` (model -> versions) that
        are not READY, and hold the budget's lock while the caller loads them (an endpoint
        switch or split, a rollout's new version), so that no other load takes the room
        meanwhile. Yields what was evicted; MemoryBudgetError (nothing evicted) when they
        cannot fit under the high watermark. The models in ``wanted`` are not evicted."""
        with self.locked(timeout=min(self.load_timeout, LOCK_TIMEOUT_S)):
            index = self.control.repository_index()
            needed: list[Footprint] = []
            for name, versions in sorted(wanted.items()):
                validate_model_name(name)
                ready = set(serving.ready_versions(serving.entries_of(index, name)))
                new = sorted(set(versions) - ready)
                if new and not self._memoryless(name):
                    needed += [self.footprints.footprint(name, v) for v in new]
            evicted: list[Eviction] = []
            if needed:
                label = ", ".join(sorted(wanted))
                evicted = self._make_room(label, None, needed, index, keep=frozenset(wanted))
            yield evicted

    def _make_room(
        self,
        name: str,
        version: int | None,
        needed: Sequence[Footprint],
        index: list[IndexEntry],
        *,
        leaving: int = 0,
        keep: frozenset[str] = frozenset(),
    ) -> list[Eviction]:
        """Evict until ``needed`` fits under the high watermark (the level the controller
        keeps used memory under: a load above it would be evicted again at the next poll);
        ``leaving``: versions of ``name`` the load takes down, whose slots it frees (their
        memory only once the new versions are up); ``keep``: models not to evict."""
        label = f"{name}:{version}" if version is not None else name
        footprint = sum(f.bytes for f in needed)
        how = ", ".join(sorted({f.method for f in needed})) or "nothing to load"
        evicted: list[Eviction] = []
        for _ in range(MAX_ROUNDS):
            view = self._view(index)
            self._observe(view)
            limit, high, _ = self._limits(view.usage)
            used = view.usage.used_bytes
            coming_count = view.loading_besides(name)
            coming_bytes = view.loading_bytes_besides(name)
            need_bytes = used + coming_bytes + footprint - high
            need_slots = 0
            if self.budget.max_models is not None:
                need_slots = (
                    len(view.states) + coming_count + len(needed) - leaving - self.budget.max_models
                )
            if need_bytes <= 0 and need_slots <= 0:
                return evicted
            candidates = [s for s in view.states if s.name not in keep]
            try:
                victims = self.policy.choose_victims(
                    candidates, max(need_bytes, 0), max(need_slots, 0)
                )
            except MemoryBudgetError as exc:
                over = []
                if need_bytes > 0:
                    loading = (
                        f" and {format_size(coming_bytes)} that loads under way will take"
                        if coming_bytes
                        else ""
                    )
                    over.append(
                        f"its footprint {format_size(footprint)} ({how}) and the "
                        f"{format_size(used)} in use ({view.usage.method}){loading} exceed "
                        f"the high watermark {format_size(high)} (limit {format_size(limit)})"
                    )
                if need_slots > 0:
                    still = f", {coming_count} loading" if coming_count else ""
                    over.append(
                        f"{len(view.states) - leaving} models loaded{still} and "
                        f"{len(needed)} to load exceed max_models {self.budget.max_models}"
                    )
                message = f"cannot load {label}: {' and '.join(over)}; {exc}"
                self._record(
                    "refuse",
                    name,
                    version,
                    message,
                    bytes=footprint,
                    used_bytes=used,
                    limit_bytes=limit,
                )
                raise MemoryBudgetError(message) from exc
            why = (
                f"make room for {label} ({format_size(footprint)}, {how}): used "
                f"{format_size(used)} + {format_size(footprint)} > high watermark "
                f"{format_size(high)}"
                if need_bytes > 0
                else f"make room for {label}: max_models {self.budget.max_models} reached"
            )
            evicted.extend(self._evict_victims(view, victims, why))
            index = self.control.repository_index()
        raise MemoryBudgetError(
            f"cannot load {label}: still no room after {MAX_ROUNDS} rounds of eviction "
            f"(footprint {format_size(footprint)}, {how})"
        )

    # ---------------------------------------------------------------- the loop

    def run_once(self) -> list[Eviction]:
        """One poll: feed the policy, and evict down to the low watermark when used memory
        is above the high one (or more models are loaded than ``max_models``)."""
        with self.locked():
            view = self._view()
            self._observe(view)
            limit, high, low = self._limits(view.usage)
            used = view.usage.used_bytes
            need_bytes = used - low if used > high else 0
            need_slots = 0
            if self.budget.max_models is not None:
                need_slots = max(len(view.states) - self.budget.max_models, 0)
            if need_bytes <= 0 and need_slots <= 0:
                self._alerting = False
                return []
            target = low
            try:
                victims = self.policy.choose_victims(view.states, need_bytes, need_slots)
            except MemoryBudgetError as exc:
                victims = []
                # the low watermark is out of reach: at least get under the high one, or
                # at the least under the limit (over it, evicting what may go is not in
                # vain even where the high watermark stays out of reach)
                fallbacks = [t for t in (high, limit) if used > t] if need_bytes > 0 else []
                for fallback in fallbacks:
                    try:
                        victims = self.policy.choose_victims(
                            view.states, used - fallback, need_slots
                        )
                    except MemoryBudgetError:
                        continue
                    target = fallback
                    break
                if not victims:
                    over = (
                        f"used {format_size(used)} is above the high watermark {format_size(high)}"
                        if need_bytes > 0
                        else f"{len(view.states)} models are loaded, more than max_models "
                        f"{self.budget.max_models}"
                    )
                    under = "under it" + (" or under the limit" if used > limit else "")
                    message = (
                        f"{over} and evicting all that may go is not enough to get "
                        f"{under if need_bytes > 0 else 'down to it'}: {exc}"
                    )
                    if not self._alerting:  # once, until it is over (not every poll)
                        self._record(
                            "alert", "-", None, message, used_bytes=used, limit_bytes=limit
                        )
                        self._alerting = True
                        log.warning("%s", message)
                    else:
                        log.debug("%s", message)
                    return []
            self._alerting = False
            what = {low: "", high: " (the high watermark)", limit: " (the limit)"}[target]
            why = (
                f"used {format_size(used)} > high watermark {format_size(high)}, "
                f"evicting down to {format_size(target)}{what}"
                if need_bytes > 0
                else f"{len(view.states)} models loaded > max_models {self.budget.max_models}"
            )
            return self._evict_victims(view, victims, why)

    def run(
        self,
        interval: float = 5.0,
        *,
        stop: threading.Event | None = None,
        iterations: int | None = None,
    ) -> None:
        """Call :meth:`run_once` every ``interval`` seconds until ``stop`` is set (or
        ``iterations`` polls were made). A poll that fails (Triton unreachable, stopping,
        restarting) is logged and retried."""
        stop = stop or threading.Event()
        done = 0
        with sole_loop(self.repo):
            while not stop.is_set():
                try:
                    self.run_once()
                except ManagerError as exc:
                    log.warning("controller: %s; retrying in %g s", exc, interval)
                done += 1
                if iterations is not None and done >= iterations:
                    return
                stop.wait(interval)

    # ---------------------------------------------------------------- by hand

    def plan(self, for_model: str | None = None, version: int | None = None) -> EvictionPlan:
        """What would be evicted now and why; nothing is changed (``evict --dry-run``).

        With ``for_model``: what would go to load it (``refused`` says why it could not).
        """
        with self.locked(across_processes=False):
            view = self._view()
            self._observe(view)
            policy = self.policy
            limit, high, low = self._limits(view.usage)
            used = view.usage.used_bytes
            evictable = [s for s in view.states if s.evictable]
            ranking: list[Victim] = []
            if evictable:
                ranking = policy.choose_victims(
                    evictable, sum(s.footprint for s in evictable) or 1, len(evictable)
                )
            protected = tuple(
                Protected(s.name, s.version, s.footprint, view.protected.get(s.name, "protected"))
                for s in view.states
                if not s.evictable
            )
            footprint: Footprint | None = None
            refused = None
            if for_model is not None:
                validate_model_name(for_model)
                serving.check_version(self.repo, for_model, version)
                entries = serving.entries_of(view.index, for_model)
                if not entries:
                    raise ModelNotFoundError(
                        f"model {for_model!r} is not in the repository served by {self.control.url}"
                    )
                ready = serving.ready_versions(entries)
                wanted = (
                    serving.versions_to_serve(self.control, self.repo, for_model)
                    if version is None
                    else None
                )
                versions, leaving = self._coming(for_model, version, wanted, ready)
                needed = (
                    []
                    if self._memoryless(for_model)
                    else [self.footprints.footprint(for_model, v) for v in versions]
                )
                if needed:
                    footprint = needed[0] if len(needed) == 1 else None
                already = serving.up_to_date(entries, version, wanted)
                total = 0 if already else sum(f.bytes for f in needed)
                coming_count = view.loading_besides(for_model)
                need_bytes = (
                    used + view.loading_bytes_besides(for_model) + total - high if total else 0
                )
                need_slots = 0
                if self.budget.max_models is not None and not already:
                    need_slots = (
                        len(view.states)
                        + coming_count
                        + len(needed)
                        - leaving
                        - self.budget.max_models
                    )
            else:
                need_bytes = used - low if used > high else 0
                need_slots = 0
                if self.budget.max_models is not None:
                    need_slots = max(len(view.states) - self.budget.max_models, 0)
            victims: list[Victim] = []
            try:
                victims = policy.choose_victims(view.states, max(need_bytes, 0), max(need_slots, 0))
            except MemoryBudgetError as exc:
                refused = str(exc)
            return EvictionPlan(
                usage=view.usage,
                limit_bytes=limit,
                high_bytes=high,
                low_bytes=low,
                max_models=self.budget.max_models,
                loaded=len(view.states),
                policy=policy.name,
                victims=tuple(
                    Eviction(v.model.name, v.model.version, v.model.footprint, v.reason)
                    for v in victims
                ),
                ranking=tuple(
                    Eviction(v.model.name, v.model.version, v.model.footprint, v.reason)
                    for v in ranking
                ),
                protected=protected,
                need_bytes=max(need_bytes, 0),
                need_slots=max(need_slots, 0),
                for_model=for_model,
                footprint=footprint,
                refused=refused,
            )

    def preview_evict(self, name: str) -> EvictionPreview:
        """What :meth:`evict` of ``name`` would unload and free now, or why it would be
        refused; nothing is changed."""
        validate_model_name(name)
        with self.locked(across_processes=False):
            view = self._view()
            self._observe(view)
            if not any(e.name == name for e in view.index):
                raise ModelNotFoundError(
                    f"model {name!r} is not in the repository served by {self.control.url}"
                )
            ready = serving.ready_versions(serving.entries_of(view.index, name))
            known = {s.version: s.footprint for s in view.of_model(name)}
            versions = tuple(
                Eviction(name, v, known.get(v, 0), "by hand (tritonctl evict)") for v in ready
            )
            return EvictionPreview(name, versions, view.protected.get(name))

    def evict(self, name: str, *, force: bool = False, reason: str = "") -> list[Eviction]:
        """Unload ``name`` by hand (audited). A protected model is refused unless ``force``.
        Returns what was evicted (empty if it was not loaded)."""
        validate_model_name(name)
        # the model's lock too: an endpoint change onto it is seen (and refused) or done
        with self.locked(), serving.model_lock(self.repo, name):
            view = self._view()
            self._observe(view)
            if not any(e.name == name for e in view.index):
                raise ModelNotFoundError(
                    f"model {name!r} is not in the repository served by {self.control.url}"
                )
            loaded = [e for e in serving.entries_of(view.index, name) if e.ready]
            if not loaded:
                return []  # nothing to free, protected or not (as the preview says)
            why = view.protected.get(name)
            if why and not force:
                hint = ""
                if name in view.routed:
                    hint = (
                        f" (a version no endpoint routes to: tritonctl unload {name} --version V)"
                    )
                raise UnloadError(
                    f"model {name!r} is protected ({why}); use --force to evict it{hint}"
                )
            text = reason or "by hand (tritonctl evict)"
            if why:
                text += f", forced although {why}"
            if not view.of_model(name):
                serving.unload(self.control, name, wait_timeout=self.unload_timeout)
                self._record("evict", name, None, text)
                return []
            return self._evict_model(view, name, text)

    def unload(self, name: str, *, force: bool = False) -> serving.UnloadResult:
        """Unload ``name`` as a user asked (not an eviction): audited, the policy told. A
        model that endpoints route to is refused (UnloadError) unless ``force``."""
        validate_model_name(name)
        with self.locked():
            view = self._view()
            self._observe(view)
            before = self._reading_before_release()
            result = serving.unload(
                self.control, name, wait_timeout=self.unload_timeout, repo=self.repo, force=force
            )
            if result.was_loaded:
                self.meter.wait_released([name], before)
                self._unloaded(view.of_model(name))  # audited by serving.unload
            return result


def budget_configured(config: ServingConfig) -> bool:
    """True when a memory limit or a model count limit is set (then loads make room)."""
    return config.budget.limit is not None or config.budget.max_models is not None


def admission(
    control: ModelControl, repo: Path, config: ServingConfig
) -> Callable[[Mapping[str, Iterable[int]]], AbstractContextManager[object]] | None:
    """What makes endpoint changes keep to the budget of ``config`` (``Endpoints(...,
    admission=)``): a controller's :meth:`Controller.admitting`; None without a budget."""
    if not budget_configured(config):
        return None
    return Controller(control, repo, config).admitting


def load_model(
    control: ModelControl,
    repo: Path,
    config: ServingConfig,
    name: str,
    version: int | None = None,
    *,
    wait_timeout: float = serving.DEFAULT_LOAD_TIMEOUT_S,
) -> serving.LoadResult | EnsureResult:
    """Load ``name`` (``version`` only, if given) as ``tritonctl load`` does: with a budget
    in ``config`` through :meth:`Controller.ensure_loaded` (evicting what the policy picks,
    or refusing before the load), else a plain :func:`manager.serving.load`. A model
    ``repo`` holds no copy of is loaded again by Triton even with a version READY (it may
    have new versions only the server's repository shows)."""
    if budget_configured(config):
        controller = Controller(control, repo, config, load_timeout=wait_timeout)
        return controller.ensure_loaded(name, version, refresh=True)
    return serving.load(
        control, name, version=version, repo=repo, wait_timeout=wait_timeout, refresh=True
    )


def set_pin(repo: Path, name: str, pinned: bool) -> bool:
    """Pin (or unpin) model ``name`` in ``repo``'s metadata; audited. Returns whether
    anything changed. The model must be in the repository."""
    validate_model_name(name)
    if not Repository(repo).has_model(name):
        raise ModelNotFoundError(f"model {name!r} is not in repository {repo}")
    store = PinStore(repo)
    changed = store.pin(name) if pinned else store.unpin(name)
    if changed:
        AuditLog(repo).write(
            AuditRecord(
                "pin" if pinned else "unpin",
                name,
                None,
                "by hand (tritonctl pin)" if pinned else "by hand (tritonctl unpin)",
            )
        )
    return changed


@contextmanager
def sole_loop(repo: Path) -> Iterator[None]:
    """Be the one controller loop on ``repo`` while in the block.

    Two loops on one repository would each evict by their own view (and settings): one
    frees memory, the other fills it. The lock is the repository's ``controller.lock``,
    held for the loop's life (the OS lets it go when the process dies); who holds it is in
    ``controller.json`` beside it. Raises ``ControllerRunningError`` naming that process.
    """
    meta = _meta_folder(repo)
    lock = FileLock(str(meta / LOOP_LOCK_FILE))
    owner = meta / LOOP_OWNER_FILE
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ControllerRunningError(
            f"a controller loop already runs on {repo}{_loop_owner(owner)}; two would evict "
            "against each other: stop that one first"
        ) from None
    try:
        write_json_atomic(
            owner,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _meta_folder(repo: Path) -> Path:
    """The repository's manager folder, created if missing."""
    meta = Path(repo) / META_DIR
    try:
        meta.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RepositoryError(f"cannot create {meta}: {exc}") from exc
    return meta


def _loop_owner(path: Path) -> str:
    """`` (pid N on HOST, since T)`` from the loop's owner file, empty if unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return f" (pid {data['pid']} on {data['host']}, since {data['started_at']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


ENDPOINT_KINDS = (ENDPOINT_KIND, ROUTER_KIND)


def _served_kind(config: Mapping[str, Any]) -> str:
    """The ``tritonctl.kind`` parameter of a config as Triton serves it ('' if none)."""
    parameter = (config.get("parameters") or {}).get(KIND_PARAMETER) or {}
    return str(parameter.get("string_value", ""))


def _served_steps(config: Mapping[str, Any]) -> list[str]:
    """The models an ensemble's config, as Triton serves it, calls."""
    if config.get("platform") != "ensemble":
        return []
    steps = (config.get("ensemble_scheduling") or {}).get("step") or []
    return [str(step["model_name"]) for step in steps if step.get("model_name")]
