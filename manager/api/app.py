"""The control plane's FastAPI app: :func:`create_app`, its health routes and ``/metrics``."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response, Security
from fastapi import Depends as FastAPIDepends
from fastapi.params import Depends
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.routing import Route

from manager.api import routes_endpoints, routes_models, routes_rollouts
from manager.api.auth import BearerAuth, LocalHostsOnly
from manager.api.deps import Plane, json_posts
from manager.api.errors import BodyLimit, install_error_handlers
from manager.api.metrics import (
    RequestMetrics,
    RequestMetricsMiddleware,
    RouteTemplates,
    StateCollector,
)
from manager.api.plane import ControlFactory, ControlPlane
from manager.api.schemas import ErrorAnswer, Liveness, Readiness, TritonHealth
from manager.errors import ManagerError

HEALTH_TIMEOUT_S = 5.0
MAX_BODY_BYTES = 2**20
"""Largest request body (1 MiB): every body is a few options, labels and paths; a larger
one would only fill the version's provenance, read back by every listing."""
OPEN_PATHS = ("/v1/health/live", "/v1/health/ready", "/metrics")
"""Answered without the bearer token: probes and scrapers carry none."""

DESCRIPTION = """\
Publish models into a Triton model repository, load and unload them within a memory
budget, point stable endpoints at model versions and roll new versions out: the same
operations as the `tritonctl` CLI, over HTTP. Errors are `{"error": "<message>"}`.
"""

health = APIRouter(prefix="/v1/health", tags=["health"])
ROUTERS = (routes_models.router, routes_endpoints.router, routes_rollouts.router)


@functools.cache
def _own_version() -> str:
    try:
        return version("tritonctl")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


@health.get("/live", response_model=Liveness)
async def live() -> Liveness:
    """The control plane answers (Triton is not asked).

    On the event loop, not in a worker thread: while every worker thread waits for a long
    load or publish, the control plane is still alive and must say so (a liveness probe
    that timed out would have it restarted, abandoning those requests)."""
    return Liveness(version=_own_version())


@health.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
def ready(plane: Plane, response: Response) -> Readiness:
    """200 when the repository exists and Triton answers (is live), else 503.

    Triton's own readiness is reported, not required: with strict readiness one model that
    failed to load makes Triton "not ready", and the control plane is what unloads it.
    """
    url: str | None = None
    triton_live = triton_ready = False
    error: str | None = None
    try:
        with plane.control(timeout=HEALTH_TIMEOUT_S) as control:
            url = control.url
            triton_live = control.is_live()
            triton_ready = triton_live and control.is_ready()
    except ManagerError as exc:
        error = str(exc)
    if error is None and not triton_live:
        error = f"no Triton server answers at {url}"
    exists = plane.repo.is_dir()
    answer = Readiness(
        ready=exists and triton_live,
        repository=str(plane.repo),
        repository_exists=exists,
        triton=TritonHealth(url=url, live=triton_live, ready=triton_ready, error=error),
    )
    response.status_code = 200 if answer.ready else 503
    return answer


def metrics(request: Request) -> Response:
    """Prometheus text: tritonctl's state read now, and the control plane's requests."""
    registry: CollectorRegistry = request.app.state.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def create_app(
    repo: str | Path,
    triton_url: str | None = None,
    *,
    metrics_url: str | None = None,
    config_file: Path | None = None,
    memory_limit: str | None = None,
    max_models: int | None = None,
    policy: str | None = None,
    load_timeout: float | None = None,
    call_timeout: float | None = None,
    connect_timeout: float | None = None,
    token: str | None = None,
    local_hosts_only: bool = False,
    control_factory: ControlFactory | None = None,
) -> FastAPI:
    """The control plane of repository ``repo`` and the Triton server at ``triton_url``.

    ``triton_url`` None resolves as the CLI does without ``--url`` (``TRITONCTL_URL``, the
    embedded server of ``repo``, ``http://localhost:8000``); ``metrics_url``, ``config_file``,
    ``memory_limit``, ``max_models`` and ``policy`` are the CLI's serving options,
    ``load_timeout``, ``call_timeout`` and ``connect_timeout`` its Triton timeouts (unset:
    the environment, tritonctl.yaml, the defaults; the health check and the metrics
    scrape keep to 5 s whatever they say). With
    ``token`` every route but health and ``/metrics`` needs ``Authorization: Bearer
    <token>``. ``local_hosts_only`` refuses requests whose ``Host`` is a name other than
    ``localhost`` (but for health and ``/metrics``), against DNS rebinding: for a control
    plane on loopback without a token. ``control_factory`` replaces the Triton connection made per request (tests
    pass a fake). Raises ``ManagerError`` for a malformed URL or bad serving settings.
    """
    plane = ControlPlane(
        repo,
        triton_url,
        metrics_url=metrics_url,
        config_file=config_file,
        memory_limit=memory_limit,
        max_models=max_models,
        policy=policy,
        load_timeout=load_timeout,
        call_timeout=call_timeout,
        connect_timeout=connect_timeout,
        control_factory=control_factory,
    )
    app = FastAPI(
        title="tritonctl control plane",
        version=_own_version(),
        description=DESCRIPTION,
        responses={400: {"model": ErrorAnswer}},
    )
    app.state.plane = plane
    registry = CollectorRegistry()
    registry.register(StateCollector(plane))
    app.state.registry = registry
    install_error_handlers(app)

    app.include_router(health)
    # JSON-only POSTs; with a token, its declaration in the OpenAPI schema (BearerAuth
    # enforces it)
    checks: list[Depends] = [FastAPIDepends(json_posts)]
    if token:
        checks.append(Security(HTTPBearer(auto_error=False)))
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorAnswer} for code in (404, 409, 415, 502, 503)
    }
    if token:
        errors[401] = {"model": ErrorAnswer}
    for router in ROUTERS:
        app.include_router(router, dependencies=checks, responses=errors)
    app.add_api_route(
        "/metrics", metrics, methods=["GET"], tags=["metrics"], response_class=PlainTextResponse
    )

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    if token:
        app.add_middleware(BearerAuth, token=token, open_paths=OPEN_PATHS)
    if local_hosts_only:
        app.add_middleware(LocalHostsOnly, open_paths=OPEN_PATHS)
    templates = [(r.path, r.methods or ()) for r in app.routes if isinstance(r, Route)]
    templates += [
        (r.path, r.methods or ())
        for router in (health, *ROUTERS)
        for r in router.routes
        if isinstance(r, Route)
    ]
    app.add_middleware(
        RequestMetricsMiddleware,
        metrics=RequestMetrics(registry),
        templates=RouteTemplates(templates),
    )
    return app
