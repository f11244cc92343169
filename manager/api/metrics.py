"""``GET /metrics``: the state tritonctl manages, and the control plane's own requests.

:class:`StateCollector` reads everything at scrape time (nothing is cached): which model
versions Triton serves, memory used against the budget, every endpoint's targets and
weights, every endpoint's last rollout. Triton's own metrics (per-model request counts
and latencies, GPU memory per device) stay on Triton's metrics port; these complete
them with what only tritonctl knows. :class:`RequestMetrics` counts and times the
control plane's requests by route template. Both live in a registry of their own, not
prometheus_client's global one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from manager.api.plane import ControlPlane
from manager.controller import budget_configured
from manager.endpoints import MODES, Endpoints
from manager.errors import ManagerError
from manager.footprint import FootprintStore, MemoryMeter, Usage, loaded_footprint
from manager.metrics import MetricsSource
from manager.rollout import ACTIVE, FINAL
from manager.rollout_service import list_rollouts
from manager.serving import build_rows
from manager.triton import IndexEntry, TritonControl

log = logging.getLogger(__name__)

PREFIX = "tritonctl"
SCRAPE_TIMEOUT_S = 5.0
"""Seconds each Triton call of a scrape may take: a hung server must not hang scrapes."""
MODEL_STATES = ("READY", "LOADING", "UNLOADING", "UNAVAILABLE")
ROLLOUT_STATUSES = (*ACTIVE, *FINAL)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
"""Request seconds: reads take milliseconds, loads and publishes up to minutes."""
UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=list(labels))


def _version_label(version: int | None) -> str:
    return "" if version is None else str(version)


class _MetricsOnce:
    """Triton's metrics text, fetched at most once (a failure too): a memory reading
    may ask for it more than once, and each request to a hung server costs the timeout."""

    def __init__(self, source: MetricsSource) -> None:
        self._source = source
        self._text: str | None = None
        self._error: ManagerError | None = None

    def metrics_text(self) -> str:
        if self._error is not None:
            raise self._error
        if self._text is None:
            try:
                self._text = self._source.metrics_text()
            except ManagerError as exc:
                self._error = exc
                raise
        return self._text


class StateCollector(Collector):
    """Reads the repository and Triton on every scrape (see the module docstring).

    When Triton does not answer, ``tritonctl_triton_up`` is 0 and the model and memory
    families are left out; endpoints and rollouts, read from the repository, are still
    reported.
    """

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # nothing is read when the collector is registered

    def collect(self) -> Iterator[GaugeMetricFamily]:
        started = time.monotonic()
        up = _gauge("triton_up", "1 if Triton answered this scrape, else 0.")
        with self.plane.control(timeout=SCRAPE_TIMEOUT_S) as control:
            # Triton is asked for its index first, and nothing more when that fails: each
            # call to a hung server costs the whole timeout, and a scrape that outlasts
            # Prometheus's scrape timeout (10 s by default) reports nothing at all.
            try:
                index = control.repository_index()
            except ManagerError as exc:
                log.info("metrics: Triton at %s: %s", control.url, exc)
                up.add_metric([], 0)
            else:
                up.add_metric([], 1)
                usage = self._usage(control)
                yield from self._models(index, usage)
                if usage is not None:
                    yield from self._memory(usage)
            yield up
            yield from self._endpoints(control)
        yield from self._rollouts()
        took = _gauge("scrape_duration_seconds", "Seconds this scrape of tritonctl took.")
        took.add_metric([], time.monotonic() - started)
        yield took

    def _usage(self, control: TritonControl) -> Usage | None:
        """Memory in use, from at most one request for Triton's metrics."""
        source = _MetricsOnce(control)
        try:
            return MemoryMeter.for_control(source, control.url, self.plane.repo).usage()
        except ManagerError as exc:
            log.info("metrics: no memory reading: %s", exc)
            return None

    def _models(self, index: Sequence[IndexEntry], usage: Usage | None) -> list[GaugeMetricFamily]:
        rows = build_rows(index, [], self.plane.repo)
        ready = _gauge(
            "model_ready",
            "1 if Triton serves this model version (READY), else 0.",
            ("model", "version"),
        )
        state = _gauge(
            "model_state",
            "1 for the state Triton reports for this model version, 0 for the others.",
            ("model", "version", "state"),
        )
        footprint = _gauge(
            "model_footprint_bytes",
            "Memory a loaded model version holds, as `tritonctl ls` shows it: read now where "
            "that can be read (a local server's stubs), else measured across its load, else "
            "estimated.",
            ("model", "version", "method"),
        )
        store = FootprintStore(self.plane.repo)
        for row in rows:
            version = _version_label(row.version)
            ready.add_metric([row.name, version], 1 if row.state == "READY" else 0)
            states = MODEL_STATES if row.state in MODEL_STATES else (*MODEL_STATES, row.state)
            for name in states:
                state.add_metric([row.name, version, name], 1 if name == row.state else 0)
            if row.state == "READY" and row.version is not None:
                live = usage.per_version if usage is not None else None
                known = loaded_footprint(store, row.name, row.version, live)
                if known is not None:
                    footprint.add_metric([row.name, version, known.method], known.bytes)
        return [ready, state, footprint]

    def _memory(self, usage: Usage) -> Iterator[GaugeMetricFamily]:
        valid = _gauge(
            "serving_config_valid",
            "1 if the serving settings (tritonctl.yaml) read well, else 0: the budget's "
            "series are then left out (GET /v1/memory says what is wrong).",
        )
        try:
            config = self.plane.serving_config()
        except ManagerError as exc:
            log.warning("metrics: the serving settings do not read: %s", exc)
            config = None
        valid.add_metric([], 0 if config is None else 1)
        yield valid
        used = _gauge(
            "memory_used_bytes",
            "Memory in use as the budget counts it (method: gpu-metric, cpu-process-rss "
            "or cpu-metric).",
            ("method",),
        )
        used.add_metric([usage.method], usage.used_bytes)
        total = _gauge("memory_total_bytes", "Memory of the device(s) the budget counts.")
        total.add_metric([], usage.total_bytes)
        yield from (used, total)
        if config is None:
            return
        budget = config.budget
        limit = _gauge(
            "memory_limit_bytes",
            "The memory budget: loads evict to stay under it (the whole device without one).",
        )
        limit.add_metric([], budget.limit_bytes(usage.total_bytes))
        high = _gauge(
            "memory_high_watermark_bytes", "Used memory above which the controller evicts."
        )
        high.add_metric([], budget.high_bytes(usage.total_bytes))
        low = _gauge("memory_low_watermark_bytes", "Used memory the controller evicts down to.")
        low.add_metric([], budget.low_bytes(usage.total_bytes))
        configured = _gauge(
            "memory_budget_configured", "1 if a memory limit or max_models is set, else 0."
        )
        configured.add_metric([], 1 if budget_configured(config) else 0)
        yield from (limit, high, low, configured)
        if budget.max_models is not None:
            most = _gauge("max_models", "At most this many models loaded at once.")
            most.add_metric([], budget.max_models)
            yield most

    def _endpoints(self, control: TritonControl) -> Iterator[GaugeMetricFamily]:
        try:
            states = Endpoints(self.plane.repository, control).list()
        except ManagerError as exc:
            log.warning("metrics: cannot read the endpoints: %s", exc)
            return
        labels = ("endpoint", "model", "version")
        weight = _gauge("endpoint_target_weight", "Weight of a target of an endpoint.", labels)
        share = _gauge(
            "endpoint_target_share", "Expected fraction (0-1) of an endpoint's traffic.", labels
        )
        mode = _gauge(
            "endpoint_mode",
            "1 for the endpoint's mode (pinned or routed), else 0.",
            ("endpoint", "mode"),
        )
        generation = _gauge(
            "endpoint_generation", "Changes of the endpoint's routes so far.", ("endpoint",)
        )
        for state in states:
            shares = state.shares()
            for target in state.targets:
                key = [state.name, target.model, str(target.version)]
                weight.add_metric(key, target.weight)
                share.add_metric(key, shares[target.key])
            for name in MODES:
                mode.add_metric([state.name, name], 1 if state.mode == name else 0)
            generation.add_metric([state.name], state.generation)
        yield from (weight, share, mode, generation)

    def _rollouts(self) -> Iterator[GaugeMetricFamily]:
        try:
            states = list_rollouts(self.plane.repository)
        except ManagerError as exc:
            log.warning("metrics: cannot read the rollouts: %s", exc)
            return
        status = _gauge(
            "rollout_status",
            "1 for the status of the endpoint's last rollout (starting, running, promoted, "
            "rolled_back), else 0.",
            ("endpoint", "status"),
        )
        labels = ("endpoint", "model", "old_version", "new_version")
        weight = _gauge(
            "rollout_weight_percent", "% of the endpoint's traffic on the new version.", labels
        )
        stage = _gauge(
            "rollout_stage", "Index of the stage the rollout is at (-1 before the first).", labels
        )
        driver = _gauge(
            "rollout_driver_alive",
            "1 if the process driving an active rollout runs (0 for an active rollout: resume "
            "or abort it).",
            ("endpoint",),
        )
        report = _gauge(
            "rollout_driver_last_report_seconds",
            "Seconds since the driver of an active rollout last reported (it does every 5 s "
            "while it drives: much more means it hangs or died).",
            ("endpoint",),
        )
        for state in states:
            for name in ROLLOUT_STATUSES:
                status.add_metric([state.endpoint, name], 1 if state.status == name else 0)
            key = [state.endpoint, state.model, str(state.old_version), str(state.new_version)]
            weight.add_metric(key, state.weight)
            stage.add_metric(key, state.stage_index)
            if state.status in ACTIVE:
                driver.add_metric([state.endpoint], 1 if state.driver_alive() else 0)
                age = state.driver_seen_ago()
                if age is not None:
                    report.add_metric([state.endpoint], max(age, 0.0))
        yield from (status, weight, stage, driver, report)


class RequestMetrics:
    """Counters and a histogram of the control plane's requests, by route template."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            f"{PREFIX}_api_requests",
            "Requests the control plane answered, by route template and status code.",
            ("method", "route", "status"),
            registry=registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_api_request_duration_seconds",
            "Seconds the control plane took to answer, by route template.",
            ("method", "route"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)


class RouteTemplates:
    """Finds the path template (``/v1/models/{name}/load``) of a request's path and method,
    so that the route label's values stay few; also for requests refused before routing.

    ``routes`` are (template, methods) pairs; a path matches the first template whose
    methods hold the request's method (``POST /v1/endpoints/restore`` is that route, not
    ``GET /v1/endpoints/{name}``), else the first whose path matches (a 405)."""

    def __init__(self, routes: Iterable[tuple[str, Iterable[str]]]) -> None:
        merged: dict[str, set[str]] = {}
        for template, methods in routes:
            merged.setdefault(template, set()).update(methods)
        self._compiled = [(compile_path(t)[0], t, m) for t, m in merged.items()]

    def match(self, path: str, method: str | None = None) -> str | None:
        by_path = None
        for regex, template, methods in self._compiled:
            if regex.match(path):
                if method is None or method in methods:
                    return template
                by_path = by_path or template
        return by_path


class RequestMetricsMiddleware:
    """ASGI middleware feeding :class:`RequestMetrics` (outermost, so that requests the
    token check refuses are counted too)."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics, templates: RouteTemplates) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what an exception that escapes every handler becomes

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = self.templates.match(scope["path"], scope["method"]) or UNMATCHED
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.record(method, route, status, time.perf_counter() - started)
