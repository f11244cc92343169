"""``/v1/endpoints``: what ``tritonctl endpoint show|switch|split|restore|delete`` do,
over HTTP."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter

from manager.api import schemas
from manager.api.deps import NoFields, Plane
from manager.controller import admission
from manager.endpoints import Endpoints, EndpointState, RouterOptions, Target
from manager.names import parse_model_ref

router = APIRouter(prefix="/v1", tags=["endpoints"])


def _described(
    plane: Plane,
    act: Callable[[Endpoints], Sequence[EndpointState]],
    options: RouterOptions | None = None,
    *,
    budgeted: bool = False,
) -> Sequence[dict[str, Any]]:
    """Run ``act`` on the repository's endpoints; the states it returns as answers carry
    them, with what Triton serves of each now. ``budgeted``: what ``act`` loads keeps to
    the memory budget (room is made by the eviction policy)."""
    with plane.control() as control:
        admit = admission(control, plane.repo, plane.serving_config()) if budgeted else None
        endpoints = Endpoints(plane.repository, control, router=options, admission=admit)
        return endpoints.describe(act(endpoints))


def _one(
    plane: Plane,
    act: Callable[[Endpoints], EndpointState],
    options: RouterOptions | None = None,
    *,
    budgeted: bool = False,
) -> schemas.EndpointAnswer:
    [described] = _described(plane, lambda endpoints: [act(endpoints)], options, budgeted=budgeted)
    return schemas.EndpointAnswer.model_validate(described)


def _all(
    plane: Plane, act: Callable[[Endpoints], Sequence[EndpointState]], *, budgeted: bool = False
) -> schemas.EndpointList:
    return schemas.EndpointList.model_validate(
        {"endpoints": _described(plane, act, budgeted=budgeted)}
    )


@router.get("/endpoints", response_model=schemas.EndpointList)
def list_endpoints(plane: Plane) -> schemas.EndpointList:
    """Every endpoint of the repository with its targets and weights."""
    return _all(plane, lambda endpoints: endpoints.list())


@router.get("/endpoints/{name}", response_model=schemas.EndpointAnswer)
def show_endpoint(name: str, plane: Plane) -> schemas.EndpointAnswer:
    """Targets and weights of endpoint ``name``, and what Triton serves of it now
    (``tritonctl endpoint show NAME``)."""
    return _one(plane, lambda endpoints: endpoints.get(name))


@router.post("/endpoints/{name}/switch", response_model=schemas.EndpointAnswer)
def switch(name: str, body: schemas.SwitchRequest, plane: Plane) -> schemas.EndpointAnswer:
    """Point endpoint ``name`` at one model version, creating it if new (``tritonctl
    endpoint switch NAME --to MODEL[:VERSION]``); clients keep calling ``name``."""
    model, version = parse_model_ref(body.to)
    return _one(
        plane,
        lambda endpoints: endpoints.switch(
            name, model, version, force=body.force, drain=body.drain
        ),
        budgeted=True,
    )


@router.post("/endpoints/{name}/split", response_model=schemas.EndpointAnswer)
def split(name: str, body: schemas.SplitRequest, plane: Plane) -> schemas.EndpointAnswer:
    """Split endpoint ``name``'s traffic across targets by weight (``tritonctl endpoint
    split NAME --target M:V=W ...``)."""
    targets = [
        Target.parse(t) if isinstance(t, str) else Target(t.model, t.version, t.weight)
        for t in body.targets
    ]
    options = RouterOptions(backend=body.router) if body.router else RouterOptions()
    return _one(
        plane,
        lambda endpoints: endpoints.split(
            name,
            targets,
            sticky_parameter=body.sticky_parameter,
            use_correlation_id=body.sticky_correlation_id,
            force=body.force,
            drain=body.drain,
        ),
        options,
        budgeted=True,
    )


@router.post("/endpoints/restore", response_model=schemas.EndpointList, dependencies=[NoFields])
def restore_all(plane: Plane) -> schemas.EndpointList:
    """Serve every endpoint again as recorded, e.g. after a server restart (``tritonctl
    endpoint restore``)."""
    return _all(plane, lambda endpoints: endpoints.restore_all(), budgeted=True)


@router.post(
    "/endpoints/{name}/restore", response_model=schemas.EndpointAnswer, dependencies=[NoFields]
)
def restore(name: str, plane: Plane) -> schemas.EndpointAnswer:
    """Serve endpoint ``name`` again as recorded: its targets, its router if split
    (``tritonctl endpoint restore NAME``)."""
    return _one(plane, lambda endpoints: endpoints.ensure(name), budgeted=True)


@router.delete("/endpoints/{name}", response_model=schemas.Deleted, dependencies=[NoFields])
def delete(name: str, plane: Plane) -> schemas.Deleted:
    """Unload and remove endpoint ``name``; its targets keep serving."""
    with plane.control() as control:
        Endpoints(plane.repository, control).delete(name)
    return schemas.Deleted(name=name)
