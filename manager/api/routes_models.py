"""``/v1/models``, ``/v1/memory`` and ``/v1/audit``: what ``tritonctl ls``, ``versions``,
``publish``, ``load``, ``unload``, ``evict``, ``pin``, ``unpin`` and ``audit`` do, over
HTTP."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from manager import serving
from manager.api import schemas
from manager.api.deps import NoFields, Plane, host_path
from manager.audit import ACTIONS, AuditLog
from manager.budget import CONFIG_FILENAME
from manager.controller import Controller, budget_configured, load_model, set_pin
from manager.errors import ConfigError, ModelNotFoundError
from manager.listing import live_memory, model_rows, version_rows
from manager.modelconfig import TensorSpec
from manager.names import validate_model_name
from manager.publish import PublishOptions, parse_labels, publish, smoke_verifier

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=schemas.ModelList)
def list_models(plane: Plane) -> schemas.ModelList:
    """Every model version Triton knows, with the versions published but not loaded
    (``tritonctl ls``), and Triton's memory reading."""
    with plane.control() as control:
        view = serving.overview(control, plane.repo)
        url = control.url
        live = live_memory(control, url, plane.repo)
    return schemas.ModelList.model_validate(
        {
            "url": url,
            "models": model_rows(view.models, plane.repo, live),
            "memory": view.memory.to_json() if view.memory is not None else None,
        }
    )


@router.get("/models/{name}", response_model=schemas.ModelList)
def show_model(name: str, plane: Plane) -> schemas.ModelList:
    """The versions of model ``name`` as ``GET /v1/models`` lists them (404 if Triton does
    not know it)."""
    validate_model_name(name)
    with plane.control() as control:
        view = serving.overview(control, plane.repo)
        url = control.url
        rows = [row for row in view.models if row.name == name]
        if not rows:
            raise ModelNotFoundError(f"model {name!r} is not in the repository served by {url}")
        live = live_memory(control, url, plane.repo)
    return schemas.ModelList.model_validate(
        {
            "url": url,
            "models": model_rows(rows, plane.repo, live),
            "memory": view.memory.to_json() if view.memory is not None else None,
        }
    )


@router.get("/models/{name}/versions", response_model=schemas.VersionList)
def list_versions(name: str, plane: Plane) -> schemas.VersionList:
    """The published versions of ``name`` with their provenance (``tritonctl versions``)."""
    rows = version_rows(plane.repository, name)
    return schemas.VersionList.model_validate({"name": name, "versions": rows})


@router.post("/models/{name}/versions", response_model=schemas.PublishAnswer, status_code=201)
def publish_version(name: str, body: schemas.PublishRequest, plane: Plane) -> schemas.PublishAnswer:
    """Publish an artifact on the control plane's host as a new version of ``name``
    (``tritonctl publish NAME ARTIFACT``): atomic, validated, with provenance; with
    ``smoke_test`` it becomes visible only after it passed in a throwaway Triton."""
    artifact = host_path(body.artifact, "artifact")
    assert artifact is not None
    labels = body.labels if isinstance(body.labels, dict) else parse_labels(body.labels)
    options = PublishOptions(
        format=body.format,
        version=body.version,
        max_batch_size=body.max_batch_size,
        instance_count=body.instance_count,
        kind=body.kind,
        runtime=body.runtime,
        labels=dict(labels),
        inputs=[TensorSpec.parse(t) for t in body.inputs],
        outputs=[TensorSpec.parse(t) for t in body.outputs],
        config_path=host_path(body.config, "config"),
        link=body.link,
        as_embedder=body.as_embedder,
    )
    verify = smoke_verifier(
        body.smoke_test,
        host_path(body.golden, "golden"),
        body.staging_url,
        timeouts=plane.timeouts() if body.smoke_test else None,
    )
    result = publish(plane.repository, name, artifact, options, verify=verify)
    return schemas.PublishAnswer.model_validate(result.to_dict())


@router.post("/models/{name}/load", response_model=schemas.LoadAnswer)
def load(name: str, plane: Plane, body: schemas.LoadRequest | None = None) -> schemas.LoadAnswer:
    """Load ``name`` (only ``version``, if given) and answer once it is READY. With a memory
    budget the load first makes room (evicting what the policy picks) or is refused with
    409 before anything is loaded (``tritonctl load``)."""
    request = body or schemas.LoadRequest()
    config = plane.serving_config()
    wait_timeout = request.wait_timeout
    if wait_timeout is None:
        wait_timeout = plane.timeouts(config).load
        assert wait_timeout is not None
    # a wait longer than the load timeout gets a load call that may take as long
    with plane.control(load_timeout=wait_timeout) as control:
        result = load_model(
            control, plane.repo, config, name, request.version, wait_timeout=wait_timeout
        )
    return schemas.LoadAnswer.model_validate(result.to_json())


@router.post("/models/{name}/unload", response_model=schemas.UnloadAnswer)
def unload(
    name: str, plane: Plane, body: schemas.UnloadRequest | None = None
) -> schemas.UnloadAnswer:
    """Unload ``name`` and answer once Triton has released it (``tritonctl unload``); a
    model that endpoints route to is refused with 409 unless ``force``. With ``version``
    only that version goes."""
    request = body or schemas.UnloadRequest()
    with plane.control() as control:
        result = serving.unload(
            control,
            name,
            unload_dependents=request.dependents,
            wait_timeout=request.wait_timeout,
            repo=plane.repo,
            force=request.force,
            version=request.version,
        )
    return schemas.UnloadAnswer.model_validate(result.to_json())


@router.post("/models/{name}/evict", response_model=schemas.EvictAnswer)
def evict(name: str, plane: Plane, body: schemas.EvictRequest | None = None) -> schemas.EvictAnswer:
    """Unload ``name`` to free its memory, audited (``tritonctl evict``); a pinned model or
    an endpoint target is refused with 409 unless ``force``."""
    request = body or schemas.EvictRequest()
    with plane.control() as control:
        evicted = Controller(control, plane.repo, plane.serving_config()).evict(
            name, force=request.force
        )
    return schemas.EvictAnswer.model_validate(
        {"name": name, "evicted": [e.to_json() for e in evicted]}
    )


@router.post("/models/{name}/pin", response_model=schemas.PinAnswer, dependencies=[NoFields])
def pin(name: str, plane: Plane) -> schemas.PinAnswer:
    """Never evict ``name`` (``tritonctl pin``)."""
    changed = set_pin(plane.repo, name, True)
    config = plane.serving_config()
    where = str(config.source or CONFIG_FILENAME) if name in config.pinned else None
    return schemas.PinAnswer(name=name, pinned=True, changed=changed, pinned_in=where)


@router.post("/models/{name}/unpin", response_model=schemas.PinAnswer, dependencies=[NoFields])
def unpin(name: str, plane: Plane) -> schemas.PinAnswer:
    """Let ``name`` be evicted again (``tritonctl unpin``). A model listed under
    ``pinned:`` in tritonctl.yaml stays pinned: the answer says so (``pinned`` true,
    ``pinned_in`` the file)."""
    changed = set_pin(plane.repo, name, False)
    config = plane.serving_config()
    if name in config.pinned:
        where = str(config.source or CONFIG_FILENAME)
        return schemas.PinAnswer(name=name, pinned=True, changed=changed, pinned_in=where)
    return schemas.PinAnswer(name=name, pinned=False, changed=changed)


@router.get("/memory", response_model=schemas.MemoryPlan, tags=["memory"])
def memory(
    plane: Plane,
    for_model: Annotated[
        str | None, Query(alias="for", description="What would go to make room for MODEL.")
    ] = None,
) -> schemas.MemoryPlan:
    """Memory used against the budget, what would be evicted now and in which order, and
    what is never evicted (``tritonctl evict --dry-run [--for MODEL]``)."""
    config = plane.serving_config()
    with plane.control() as control:
        plan = Controller(control, plane.repo, config).plan(for_model)
    return schemas.MemoryPlan.model_validate(
        {"configured": budget_configured(config), **plan.to_json()}
    )


@router.get("/audit", response_model=schemas.AuditList, tags=["memory"])
def audit(
    plane: Plane,
    model: Annotated[str | None, Query(description="Only this model's records.")] = None,
    action: Annotated[
        str | None, Query(description=f"Only this kind: {', '.join(ACTIONS)}.")
    ] = None,
    last: Annotated[int | None, Query(ge=1, description="The newest N records only.")] = None,
) -> schemas.AuditList:
    """What tritonctl decided about memory, and why, oldest first (``tritonctl audit``)."""
    if action is not None and action not in ACTIONS:
        raise ConfigError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
    records = AuditLog(plane.repo).query(model, action, last)
    return schemas.AuditList.model_validate({"records": records})
