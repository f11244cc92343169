"""``/v1/rollouts``: what ``tritonctl rollout list|status|start|promote|abort|resume`` do,
over HTTP. A rollout runs in a detached worker process, as ``rollout start`` without
``--wait`` runs it: the request answers at once, and the rollout outlives the control
plane."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from manager.api import schemas
from manager.api.deps import NoFields, Plane, host_path
from manager.errors import RolloutError
from manager.names import validate_model_name
from manager.rollout import RolloutPolicy, RolloutState, parse_stages
from manager.rollout_service import (
    finish_and_wait,
    list_rollouts,
    resume_in_background,
    start_in_background,
    status,
)

router = APIRouter(prefix="/v1", tags=["rollouts"])


def _endpoint(name: str) -> str:
    return validate_model_name(name, what="endpoint name")


def _answer(state: RolloutState, **extra: Any) -> dict[str, Any]:
    return {**state.to_dict(), **extra}


@router.get("/rollouts", response_model=schemas.RolloutList)
def list_all(
    plane: Plane,
    active: Annotated[bool, Query(description="Only rollouts still running.")] = False,
) -> schemas.RolloutList:
    """The last rollout of every endpoint (``tritonctl rollout list [--active]``)."""
    states = list_rollouts(plane.repository, active=active)
    return schemas.RolloutList.model_validate({"rollouts": [_answer(s) for s in states]})


@router.get("/rollouts/{name}", response_model=schemas.RolloutAnswer)
def show(name: str, plane: Plane) -> schemas.RolloutAnswer:
    """Status, weights and per-stage health of endpoint ``name``'s last rollout."""
    return schemas.RolloutAnswer.model_validate(_answer(status(plane.repository, _endpoint(name))))


@router.post("/rollouts/{name}/start", response_model=schemas.RolloutStarted, status_code=202)
def start(name: str, body: schemas.RolloutStartRequest, plane: Plane) -> schemas.RolloutStarted:
    """Roll endpoint ``name`` out to version ``to`` of its model, stage by stage with health
    gates, in a background worker; follow it with ``GET /v1/rollouts/{name}``. 409 if a
    rollout of ``name`` is already running."""
    golden = host_path(body.golden, "golden")
    try:
        policy = RolloutPolicy(
            stages=parse_stages(body.stages),
            stage_seconds=body.stage_seconds,
            min_requests=body.min_requests,
            max_error_rate=body.max_error_rate,
            max_latency_ratio=body.max_latency_ratio,
            latency_tolerance_ms=body.latency_tolerance_ms,
            golden_dir=str(golden) if golden is not None else None,
            warmup_requests=body.warmup_requests,
            sticky_parameter=body.sticky_parameter,
            use_correlation_id=body.sticky_correlation_id,
        )
    except RolloutError as exc:
        raise HTTPException(400, str(exc)) from exc
    with plane.control() as control:
        state, pid = start_in_background(
            plane.repository, control, _endpoint(name), body.to, policy
        )
    return schemas.RolloutStarted.model_validate(_answer(state, worker_pid=pid))


@router.post(
    "/rollouts/{name}/resume",
    response_model=schemas.RolloutStarted,
    status_code=202,
    dependencies=[NoFields],
)
def resume(name: str, plane: Plane) -> schemas.RolloutStarted:
    """Continue a rollout whose driver died, from its recorded stage, in a new worker."""
    with plane.control() as control:
        state, pid = resume_in_background(plane.repository, control, _endpoint(name))
    return schemas.RolloutStarted.model_validate(_answer(state, worker_pid=pid))


def _finish(
    name: str, action: str, plane: Plane, body: schemas.FinishRequest | None
) -> schemas.RolloutAnswer:
    request = body or schemas.FinishRequest()
    with plane.control() as control:
        state = finish_and_wait(
            plane.repository, control, _endpoint(name), action, timeout=request.wait_timeout
        )
    return schemas.RolloutAnswer.model_validate(_answer(state))


@router.post("/rollouts/{name}/promote", response_model=schemas.RolloutAnswer)
def promote(
    name: str, plane: Plane, body: schemas.FinishRequest | None = None
) -> schemas.RolloutAnswer:
    """Skip the remaining stages: pin ``name`` to the new version now. Answers once the
    rollout is over, or after ``wait_timeout`` with the state it is in."""
    return _finish(name, "promote", plane, body)


@router.post("/rollouts/{name}/abort", response_model=schemas.RolloutAnswer)
def abort(
    name: str, plane: Plane, body: schemas.FinishRequest | None = None
) -> schemas.RolloutAnswer:
    """Roll ``name`` back to the old version now. Answers once the rollout is over, or
    after ``wait_timeout`` with the state it is in."""
    return _finish(name, "abort", plane, body)
