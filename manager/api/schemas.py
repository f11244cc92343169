"""The JSON bodies of the control plane's requests and answers.

Request fields are named after the CLI options they mirror (``--wait-timeout`` is
``wait_timeout``, ``--to`` is ``to``); a repeatable option is a list named in the plural
(``--target`` is ``targets``, ``--label`` is ``labels``). Answers carry the same fields
as the CLI's ``--json`` output.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from manager.artifacts import FORMATS
from manager.endpoints import ROUTER_BACKENDS
from manager.rollout import DEFAULT_STAGES, RolloutPolicy
from manager.rollout_service import FINISH_WAIT_S
from manager.runtime import RUNTIMES
from manager.serving import DEFAULT_LOAD_TIMEOUT_S, DEFAULT_UNLOAD_TIMEOUT_S

_POLICY = RolloutPolicy()


class Body(BaseModel):
    """A request body: unknown fields are refused (a misspelt option is not ignored), and so
    are NaN and Infinity (JSON has neither; a rollout state holding one cannot be read back
    as JSON, and an infinite wait cannot be waited)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Answer(BaseModel):
    """An answer body."""


class ErrorAnswer(Answer):
    error: str = Field(description="What went wrong, in one line.")


# --------------------------------------------------------------------------- health


class Liveness(Answer):
    status: Literal["ok"] = "ok"
    version: str


class TritonHealth(Answer):
    url: str | None
    live: bool
    ready: bool = Field(description="Triton's own readiness: false while any model failed to load.")
    error: str | None = None


class Readiness(Answer):
    ready: bool = Field(description="The repository exists and Triton answers (is live).")
    repository: str
    repository_exists: bool
    triton: TritonHealth


# --------------------------------------------------------------------------- models


class ModelVersionRow(Answer):
    """One model version as ``tritonctl ls --json`` lists it."""

    name: str
    version: int | None
    state: str
    reason: str
    last_inference_ms: int | None
    inference_count: int
    success_count: int
    fail_count: int
    footprint_bytes: int | None
    footprint_method: str | None
    footprint_measured_at: str | None
    load_seconds: float | None


class DeviceMemory(Answer):
    device: str
    used_bytes: int
    total_bytes: int
    free_bytes: int


class MemoryReading(Answer):
    gpus: list[DeviceMemory]
    cpu: DeviceMemory | None
    taken_at: float


class ModelList(Answer):
    url: str
    models: list[ModelVersionRow]
    memory: MemoryReading | None = Field(
        description="Triton's memory metrics; null when its metrics endpoint does not answer."
    )


class VersionRow(Answer):
    """One published version as ``tritonctl versions --json`` lists it: its provenance
    (format, runtime, sha256, source, published_at, labels, ...) and footprint."""

    model_config = ConfigDict(extra="allow")

    model: str
    version: int
    path: str
    footprint_bytes: int | None
    footprint_method: str | None


class VersionList(Answer):
    name: str
    versions: list[VersionRow]


class LoadRequest(Body):
    version: int | None = Field(default=None, ge=1, description="Load only this version.")
    wait_timeout: float | None = Field(
        default=None,
        ge=0,
        description="Seconds to wait for READY (default: the control plane's load timeout, "
        f"--load-timeout, {DEFAULT_LOAD_TIMEOUT_S:g} unless set).",
    )


class Eviction(Answer):
    model: str
    version: int
    bytes: int
    reason: str


class Footprint(Answer):
    model_config = ConfigDict(extra="allow")

    model: str
    version: int
    bytes: int
    method: str


class LoadAnswer(Answer):
    name: str
    versions: list[int]
    seconds: float
    cache_hit: bool = Field(description="Already loaded: nothing was done.")
    evicted: list[Eviction] = Field(
        default_factory=list, description="What the memory budget made room by."
    )
    footprints: list[Footprint] = Field(
        default_factory=list, description="Memory measured across the load (with a budget)."
    )


class UnloadRequest(Body):
    wait_timeout: float = Field(default=DEFAULT_UNLOAD_TIMEOUT_S, ge=0)
    dependents: bool = Field(default=False, description="Also unload models that depend on it.")
    force: bool = Field(
        default=False, description="Unload it even if endpoints route to it (they stop answering)."
    )
    version: int | None = Field(
        default=None,
        ge=1,
        description="Stop serving only this version; the others keep serving (refused for "
        "a version an endpoint routes to; not with force or dependents).",
    )

    @model_validator(mode="after")
    def _version_alone(self) -> UnloadRequest:
        if self.version is not None and (self.force or self.dependents):
            raise ValueError("version does not go with force or dependents")
        return self


class UnloadAnswer(Answer):
    name: str
    seconds: float
    was_loaded: bool
    version: int | None = None


class EvictRequest(Body):
    force: bool = Field(default=False, description="Evict even if pinned or an endpoint target.")


class EvictAnswer(Answer):
    name: str
    evicted: list[Eviction]


class PinAnswer(Answer):
    name: str
    pinned: bool
    changed: bool
    pinned_in: str | None = Field(
        default=None,
        description="The settings file whose pinned: list still pins it (unpin cannot lift it)",
    )


class AuditRecord(Answer):
    model_config = ConfigDict(extra="allow")  # used_bytes, limit_bytes, policy, ... as written

    time: str
    action: str = Field(description="load, evict, refuse, unload, pin, unpin or alert.")
    model: str
    version: int | None = None
    reason: str = ""
    bytes: int | None = None


class AuditList(Answer):
    records: list[AuditRecord] = Field(description="Oldest first.")


class Usage(Answer):
    used_bytes: int
    total_bytes: int
    method: str


class Protected(Answer):
    model: str
    version: int
    bytes: int
    reason: str


class MemoryPlan(Answer):
    """The budget and what would be evicted now (``tritonctl evict --dry-run --json``)."""

    configured: bool = Field(description="A memory limit or max_models is set.")
    usage: Usage
    limit_bytes: int
    high_watermark_bytes: int
    low_watermark_bytes: int
    max_models: int | None
    loaded: int
    policy: str
    for_model: str | None
    footprint: Footprint | None
    need_bytes: int
    need_slots: int
    refused: str | None
    victims: list[Eviction]
    ranking: list[Eviction]
    protected: list[Protected]


class PublishRequest(Body):
    """``tritonctl publish NAME ARTIFACT [options]``; paths are on the control plane's host."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    artifact: str = Field(min_length=1, description="Artifact file or folder on this host.")
    format: str = "auto"
    version: int | None = Field(default=None, ge=1, description="Default: highest + 1.")
    max_batch_size: int | None = Field(default=None, ge=0)
    instance_count: int | None = Field(
        default=None, ge=1, description="Default: the config's, else 1."
    )
    kind: Literal["auto", "cpu", "gpu"] | None = Field(
        default=None, description="Default: the config's, else auto."
    )
    runtime: str = "auto"
    inputs: list[str] = Field(default_factory=list, description="NAME:DTYPE:DIMS each.")
    outputs: list[str] = Field(default_factory=list, description="NAME:DTYPE:DIMS each.")
    config: str | None = Field(default=None, description="A config.pbtxt on this host.")
    labels: dict[str, str] | list[str] = Field(
        default_factory=dict, description="{key: value}, or KEY=VALUE strings."
    )
    link: bool = Field(
        default=False,
        description="Hard-link the artifact's files instead of copying them (the source must "
        "then never be modified in place).",
    )
    copy_artifact: bool = Field(
        default=False,
        alias="copy",
        description="Accepted for compatibility: copying is the default.",
    )
    as_embedder: bool = Field(
        default=False,
        description="Serve a transformers folder with a task head as an embedder of its base "
        "model (without it a sequence classifier is served as a text classifier, and another "
        "task head is refused).",
    )
    smoke_test: bool = False
    golden: str | None = Field(
        default=None, description="Golden requests folder (with smoke_test)."
    )
    staging_url: str | None = None

    @model_validator(mode="after")
    def _link_or_copy(self) -> PublishRequest:
        if self.link and self.copy_artifact:
            raise ValueError("link and copy exclude each other")
        return self

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in ("auto", *FORMATS):
            raise ValueError(f"must be one of auto, {', '.join(FORMATS)}")
        return value

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str) -> str:
        if value not in RUNTIMES:
            raise ValueError(f"must be one of {', '.join(RUNTIMES)}")
        return value


class PublishAnswer(Answer):
    name: str
    version: int
    path: str
    runtime: str
    format: str
    sha256: str
    placed_by: str = Field(description="copy, clone (copy-on-write) or link")
    labels: dict[str, str]
    notices: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- endpoints


class Target(Body):
    model: str
    version: int = Field(ge=1)
    weight: float = Field(default=100.0, ge=0)


class Sticky(Answer):
    parameter: str | None
    use_correlation_id: bool


class Serving(Answer):
    ready: bool = Field(description="Triton serves the endpoint model now")
    targets: dict[str, bool] = Field(description="MODEL:VERSION -> READY now")


class EndpointAnswer(Answer):
    name: str
    mode: str = Field(description="pinned (one target) or routed (several, by weight)")
    targets: list[Target]
    sticky: Sticky
    generation: int
    updated_at: str
    serving: Serving | None = Field(
        default=None, description="What Triton serves of it now (null: the server did not say)"
    )
    streaming: bool | None = Field(
        default=None,
        description="Its model answers with a stream of responses (decoupled): call it over "
        "a gRPC stream or HTTP generate_stream (null: its config cannot be read)",
    )
    stateful: bool | None = Field(
        default=None,
        description="Its model keeps state across a sequence (sequence batching): call it "
        "with a correlation id and the start and end flags (null: its config cannot be read)",
    )


class EndpointList(Answer):
    endpoints: list[EndpointAnswer]


class Deleted(Answer):
    name: str
    deleted: bool = True


DRAIN_DESCRIPTION = (
    "For a stateful model: the sequences under way end on the version they began on "
    "before a target leaves (new ones go to the new targets at once); false changes the "
    "endpoint at once."
)


class SwitchRequest(Body):
    to: str = Field(min_length=1, description="MODEL or MODEL:VERSION (default the newest).")
    force: bool = Field(
        default=False,
        description="Allow targets whose inputs, outputs or max_batch_size differ from what "
        "the endpoint takes now.",
    )
    drain: bool = Field(default=True, description=DRAIN_DESCRIPTION)


class SplitRequest(Body):
    targets: list[str | Target] = Field(
        min_length=1, description='"MODEL:VERSION=WEIGHT" strings or {model, version, weight}.'
    )
    sticky_parameter: str | None = None
    sticky_correlation_id: bool = False
    force: bool = Field(
        default=False,
        description="Allow targets whose inputs, outputs or max_batch_size differ from what "
        "the endpoint takes now.",
    )
    router: str | None = Field(
        default=None,
        description=f"One of {', '.join(ROUTER_BACKENDS)} (default: TRITONCTL_ROUTER).",
    )
    drain: bool = Field(default=True, description=DRAIN_DESCRIPTION)

    @field_validator("router")
    @classmethod
    def _known_router(cls, value: str | None) -> str | None:
        if value is not None and value not in ROUTER_BACKENDS:
            raise ValueError(f"must be one of {', '.join(ROUTER_BACKENDS)}")
        return value


# --------------------------------------------------------------------------- rollouts


class RolloutStartRequest(Body):
    """``tritonctl rollout start NAME --to VERSION [options]`` (never ``--wait``)."""

    to: int = Field(ge=1, description="The version of the endpoint's model to roll out.")
    stages: str | list[int] = Field(
        default_factory=lambda: list(DEFAULT_STAGES),
        description='Weights in %, a list or "5,15,30".',
    )
    stage_seconds: float = Field(default=_POLICY.stage_seconds, ge=0)
    min_requests: int = Field(default=_POLICY.min_requests, ge=0)
    max_error_rate: float = Field(default=_POLICY.max_error_rate, ge=0, le=1)
    max_latency_ratio: float = Field(default=_POLICY.max_latency_ratio, gt=0)
    latency_tolerance_ms: float = Field(default=_POLICY.latency_tolerance_ms, ge=0)
    golden: str | None = Field(default=None, description="Golden requests folder on this host.")
    warmup_requests: int = Field(default=_POLICY.warmup_requests, ge=0)
    sticky_parameter: str | None = None
    sticky_correlation_id: bool = False


class FinishRequest(Body):
    wait_timeout: float = Field(
        default=FINISH_WAIT_S, ge=0, description="Seconds to wait for the rollout to be over."
    )


class RolloutPolicyAnswer(Answer):
    stages: list[int]
    stage_seconds: float
    min_requests: int
    max_error_rate: float
    max_latency_ratio: float
    latency_tolerance_ms: float
    max_stage_wait: float
    golden_dir: str | None
    warmup_requests: int
    sticky_parameter: str | None
    use_correlation_id: bool


class StageRecord(Answer):
    weight: int
    started_at: str
    new: dict[str, Any]
    old: dict[str, Any]
    verdict: str


class RolloutAnswer(Answer):
    endpoint: str
    model: str
    old_version: int
    new_version: int
    status: str = Field(description="starting, running, promoted or rolled_back")
    weight: int = Field(description="% of the traffic on the new version now.")
    weights: dict[str, int]
    stage_index: int
    reason: str
    requested: str
    ending: str = Field(
        default="",
        description="promote or rollback once the driver is carrying it out (a driver "
        "that dies on the way leaves it for the next one to finish)",
    )
    driver_pid: int
    driver_alive: bool = Field(
        description="Whether the driver lives: its pid, checked where it runs in the "
        "control plane's PID namespace; else its heartbeat, younger than 30 s."
    )
    driver_host: str = Field(default="", description="The hostname of the driver's machine.")
    driver_node: str = Field(
        default="",
        description="The boot id and PID namespace of the driver (where its pid means something).",
    )
    driver_heartbeat: str = Field(
        default="", description="When the driver last reported (UTC, ISO 8601)."
    )
    warmup: str
    started_at: str
    updated_at: str
    policy: RolloutPolicyAnswer
    history: list[StageRecord]


class RolloutStarted(RolloutAnswer):
    worker_pid: int = Field(description="The detached process that drives the rollout.")


class RolloutList(Answer):
    rollouts: list[RolloutAnswer]
