"""Replay request traces over a model catalogue to compare eviction policies.

The simulator drives the real policy objects from ``manager.policies`` through the same
hooks as the controller: each request for a loaded model is a hit; a miss asks the policy
for victims (bytes and, optionally, a maximum number of loaded models), evicts them and
loads the model. Time is logical: request ``i`` happens at ``start + i * seconds_per_request``.

``belady`` is the offline reference: on a miss it evicts the loaded model whose next use is
furthest in the future (never used again = infinitely far), repeatedly until the new model
fits. With equal sizes and only a model-count limit this is Belady's optimal MIN; with
variable sizes it is the usual furthest-next-use heuristic, not the true optimum (that is
NP-hard), so a size-aware policy can beat it on hit ratio, and nothing makes it minimise the
bytes loaded.

Trace generators (seeded, numpy): Zipf-like popularity, a popularity shift halfway through,
and Zipf traffic interrupted by a periodic scan over many models.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from manager.errors import ConfigError, MemoryBudgetError
from manager.policies import EvictionPolicy, ModelState

log = logging.getLogger(__name__)

EPOCH_START = 1_700_000_000.0
"""Logical time of the first request, epoch seconds (any value works; this one looks real)."""


@dataclass(frozen=True)
class CatalogueModel:
    """A model that requests may ask for: its footprint and how long it takes to load."""

    name: str
    size: int
    load_seconds: float


@dataclass(frozen=True)
class RequestOutcome:
    """What serving one request cost: whether the model was already loaded, what was loaded."""

    hit: bool
    bytes_loaded: int = 0
    load_seconds: float = 0.0
    evictions: int = 0


@dataclass
class ReplayResult:
    """Counters of one replay of a trace."""

    label: str
    requests: int = 0
    hits: int = 0
    bytes_loaded: int = 0
    load_seconds: float = 0.0
    evictions: int = 0

    @property
    def misses(self) -> int:
        return self.requests - self.hits

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def bytes_per_request(self) -> float:
        return self.bytes_loaded / self.requests if self.requests else 0.0

    @property
    def load_seconds_per_request(self) -> float:
        return self.load_seconds / self.requests if self.requests else 0.0

    def add(self, outcome: RequestOutcome) -> None:
        self.requests += 1
        self.hits += int(outcome.hit)
        self.bytes_loaded += outcome.bytes_loaded
        self.load_seconds += outcome.load_seconds
        self.evictions += outcome.evictions


def replay(
    trace: Iterable[str], request_model: Callable[[str], RequestOutcome], label: str
) -> ReplayResult:
    """Send every request of ``trace`` to ``request_model`` and add up the outcomes.

    ``request_model`` may be a ``CacheSimulator.request`` or anything that serves the request
    for real (e.g. ensure the model is loaded on a live server, then infer) and reports
    whether it was a hit.
    """
    result = ReplayResult(label)
    for name in trace:
        result.add(request_model(name))
    return result


def _as_mapping(catalogue: Iterable[CatalogueModel]) -> dict[str, CatalogueModel]:
    return {model.name: model for model in catalogue}


def _check_fits(catalogue: Mapping[str, CatalogueModel], budget_bytes: int) -> None:
    too_big = [m.name for m in catalogue.values() if m.size > budget_bytes]
    if too_big:
        raise MemoryBudgetError(
            f"{len(too_big)} models are larger than the whole budget of {budget_bytes} bytes: "
            + ", ".join(too_big[:5])
        )


class CacheSimulator:
    """A set of loaded models under a byte budget (and optional model count), run by a policy."""

    def __init__(
        self,
        catalogue: Iterable[CatalogueModel],
        budget_bytes: int,
        policy: EvictionPolicy,
        *,
        max_models: int | None = None,
        seconds_per_request: float = 1.0,
    ) -> None:
        self.catalogue = _as_mapping(catalogue)
        _check_fits(self.catalogue, budget_bytes)
        if max_models is not None and max_models < 1:
            raise ConfigError(f"max_models must be at least 1, got {max_models}")
        self.budget_bytes = budget_bytes
        self.max_models = max_models
        self.policy = policy
        self.seconds_per_request = seconds_per_request
        self.loaded: dict[str, ModelState] = {}
        self.used_bytes = 0
        self._clock = 0

    def request(self, name: str) -> RequestOutcome:
        """Serve one request for ``name``: a hit, or a miss that evicts and loads."""
        now = EPOCH_START + self._clock * self.seconds_per_request
        self._clock += 1
        state = self.loaded.get(name)
        if state is not None:
            self._serve(state, now)
            return RequestOutcome(hit=True)
        model = self.catalogue[name]
        evicted = self._make_room(model, now)
        state = ModelState(
            name=name,
            version=1,
            footprint=model.size,
            loaded_at=now,
            load_seconds=model.load_seconds,
        )
        self.loaded[name] = state
        self.used_bytes += model.size
        self.policy.on_load(state)
        self._serve(state, now)
        return RequestOutcome(
            hit=False, bytes_loaded=model.size, load_seconds=model.load_seconds, evictions=evicted
        )

    def _serve(self, state: ModelState, now: float) -> None:
        state.last_inference = int(now * 1000)
        state.inference_count += 1
        self.policy.on_hit(state)

    def _make_room(self, model: CatalogueModel, now: float) -> int:
        need_bytes = self.used_bytes + model.size - self.budget_bytes
        need_slots = 0
        if self.max_models is not None:
            need_slots = len(self.loaded) + 1 - self.max_models
        if need_bytes <= 0 and need_slots <= 0:
            return 0
        victims = self.policy.choose_victims(
            list(self.loaded.values()), need_bytes, need_slots, now=now
        )
        for victim in victims:
            gone = self.loaded.pop(victim.model.name)
            self.used_bytes -= gone.footprint
            self.policy.on_evict(gone)
        return len(victims)


def simulate(
    trace: Sequence[str],
    catalogue: Iterable[CatalogueModel],
    budget_bytes: int,
    policy: EvictionPolicy,
    *,
    max_models: int | None = None,
    label: str | None = None,
) -> ReplayResult:
    """Replay ``trace`` through a fresh ``CacheSimulator`` run by ``policy``."""
    sim = CacheSimulator(catalogue, budget_bytes, policy, max_models=max_models)
    return replay(trace, sim.request, label or policy.name)


def belady(
    trace: Sequence[str],
    catalogue: Iterable[CatalogueModel],
    budget_bytes: int,
    *,
    max_models: int | None = None,
) -> ReplayResult:
    """Offline furthest-next-use replay of ``trace`` (see the module docstring)."""
    models = _as_mapping(catalogue)
    _check_fits(models, budget_bytes)
    never = len(trace)
    next_use = [never] * len(trace)
    seen: dict[str, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        next_use[i] = seen.get(trace[i], never)
        seen[trace[i]] = i
    loaded: dict[str, int] = {}  # name -> index of its next use
    used = 0
    result = ReplayResult("belady")
    for i, name in enumerate(trace):
        if name in loaded:
            loaded[name] = next_use[i]
            result.add(RequestOutcome(hit=True))
            continue
        model = models[name]
        evictions = 0
        while used + model.size > budget_bytes or (
            max_models is not None and len(loaded) >= max_models
        ):
            victim = max(loaded, key=loaded.__getitem__)
            del loaded[victim]
            used -= models[victim].size
            evictions += 1
        loaded[name] = next_use[i]
        used += model.size
        result.add(RequestOutcome(False, model.size, model.load_seconds, evictions))
    return result


def _zipf_probabilities(count: int, alpha: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, count + 1, dtype=np.float64) ** alpha
    return weights / weights.sum()


def zipf_trace(
    names: Sequence[str], n_requests: int, *, alpha: float = 0.9, seed: int = 0
) -> list[str]:
    """Independent requests, the k-th most popular model asked with weight ``1 / k**alpha``.

    Which model gets which rank is a seeded random permutation, independent of size.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    draws = rng.choice(len(names), size=n_requests, p=_zipf_probabilities(len(names), alpha))
    return [names[order[d]] for d in draws]


def phase_shift_trace(
    names: Sequence[str], n_requests: int, *, alpha: float = 0.9, seed: int = 0
) -> list[str]:
    """Zipf-like requests whose popularity ranking is reshuffled halfway through."""
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, 2**31, size=2)
    half = n_requests // 2
    return zipf_trace(names, half, alpha=alpha, seed=int(first)) + zipf_trace(
        names, n_requests - half, alpha=alpha, seed=int(second)
    )


def scan_trace(
    names: Sequence[str],
    n_requests: int,
    *,
    alpha: float = 0.9,
    seed: int = 0,
    scan_every: int = 1000,
    scan_length: int | None = None,
) -> list[str]:
    """Zipf-like requests, and every ``scan_every`` requests a sequential sweep.

    The sweep asks for ``scan_length`` models (default: all) once each, in a fixed order, as
    a nightly evaluation job would. The trace has exactly ``n_requests`` requests.
    """
    background = zipf_trace(names, n_requests, alpha=alpha, seed=seed)
    rng = np.random.default_rng(seed + 1)
    sweep = [names[i] for i in rng.permutation(len(names))[: scan_length or len(names)]]
    trace: list[str] = []
    position = 0
    while len(trace) < n_requests:
        trace.extend(background[position : position + scan_every])
        position += scan_every
        trace.extend(sweep)
    return trace[:n_requests]


def make_catalogue(
    count: int,
    *,
    seed: int = 0,
    min_size: int = 256 * 2**20,
    max_size: int = 16 * 2**30,
) -> list[CatalogueModel]:
    """``count`` models with log-uniform sizes and load times that are not just size.

    Load time = a fixed start cost (0.5 s for a native backend, 4 s for a Python-backend
    model that starts an interpreter and imports its framework, half of each) + size at
    1-3 GiB/s. Fixed costs make small Python-backend models relatively expensive to reload,
    which is what a cost-aware policy can exploit.
    """
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(min_size), np.log(max_size), size=count))
    start = rng.choice([0.5, 4.0], size=count)
    bandwidth = rng.uniform(1.0, 3.0, size=count) * 2**30
    width = len(str(count - 1))
    return [
        CatalogueModel(
            name=f"model_{i:0{width}d}",
            size=int(sizes[i]),
            load_seconds=float(start[i] + sizes[i] / bandwidth[i]),
        )
        for i in range(count)
    ]


def drift_trace(
    names: Sequence[str],
    n_requests: int,
    *,
    alpha: float = 0.9,
    seed: int = 0,
    swap_every: int = 200,
    hot: int = 20,
) -> list[str]:
    """Zipf-like requests whose popularity drifts: every ``swap_every`` requests one of the
    ``hot`` most popular models trades its rank with a random less popular one (a new model
    becomes popular, an old one fades). Recency matters here more than in ``zipf_trace``.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    p = _zipf_probabilities(len(names), alpha)
    trace: list[str] = []
    while len(trace) < n_requests:
        draws = rng.choice(len(names), size=min(swap_every, n_requests - len(trace)), p=p)
        trace.extend(names[order[d]] for d in draws)
        a = int(rng.integers(0, min(hot, len(names))))
        b = int(rng.integers(min(hot, len(names)), len(names))) if len(names) > hot else a
        order[a], order[b] = order[b], order[a]
    return trace
