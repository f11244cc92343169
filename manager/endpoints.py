"""Endpoints: stable model names that clients call while the versions behind them change.

An endpoint ``NAME`` is a model in the repository (``<repo>/NAME/``, with a version folder
``1/`` holding ``tritonctl.json`` ``{"kind": "endpoint"}``) that is, by mode:

* **pinned** (one target): a Triton **ensemble** whose single step calls the target model
  version itself (nothing else in the path);
* **routed** (several weighted targets): the **router** itself, which forwards every
  request to one target chosen by weight (optionally sticky by a request parameter or the
  correlation id). The router is the native one (``triton_backends/router_native``, a C++
  Triton backend whose library is copied into ``NAME/1/``; see
  :mod:`manager.native_router`) where it can be built, else the Python-backend one
  (``triton_backends/router/model.py``, BLS, copied into ``NAME/1/``).

Changing mode rewrites ``NAME/`` and reloads ``NAME``; Triton keeps the old model serving
until the new one is ready, so clients see no gap. (The router used to be a separate
model ``NAME__router`` behind the ensemble; one left by an older release is removed.
Without the ensemble in front, a routed request crosses one Triton model fewer.)

The routes of an endpoint, pinned or routed, are the JSON file
``<repo>/.tritonctl/endpoints/NAME.json`` (written atomically); it is the source of truth
for :meth:`Endpoints.get` and the file the Python router re-reads when it changes. The
same routes are written beside it as ``NAME.routes`` (a line-oriented form the native
router reads), so a weight change takes effect in well under a second without reloading
anything.

A Triton model serves the versions its ``version_policy`` allows, so the targets are
loaded with a config override whose policy is ``specific { versions: [...] }``: the
versions already READY, those any endpoint targets, and the new ones.
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock, Timeout
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from manager import native_router
from manager.errors import (
    EndpointError,
    EndpointNotFoundError,
    LoadError,
    ManagerError,
    ModelNotFoundError,
    RepositoryError,
    RolloutError,
    TritonUnreachableError,
)
from manager.filecopy import precompile
from manager.loadtimes import forget_loads, record_load
from manager.modelconfig import (
    config_to_text,
    is_decoupled,
    read_config,
    sequence_idle_seconds,
    triton_dtype_name,
    write_config,
)
from manager.names import validate_model_name, validate_version
from manager.repository import (
    CONFIG_FILE,
    PROVENANCE_FILE,
    Repository,
    read_provenance,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from manager.rollout import ACTIVE as ROLLOUT_ACTIVE
from manager.rollout import Counters, RolloutStore, stats_reader, wait_quiet
from manager.serving import entries_of, precompile_unloaded
from manager.triton import IndexEntry, ModelStats
from manager.versionpolicy import (
    forget_owner_policy,
    has_owner_policy,
    keep_owner_policy,
    kept_models,
    with_owner_policy,
)

log = logging.getLogger(__name__)

# ``Endpoints.list`` shadows the builtin inside the class body.
_Targets = list["Target"]
_IndexRows = list[IndexEntry]

ENDPOINT_KIND = "endpoint"
ROUTER_KIND = "endpoint-router"
ROUTER_SUFFIX = "__router"
ROUTES_DIR = "endpoints"
NATIVE_ROUTES_SUFFIX = ".routes"
NATIVE_REFUSAL_FILE = "native-router-refused.json"
ROUTER_BACKENDS = ("auto", "native", "python")
ROUTER_ENV = "TRITONCTL_ROUTER"
# Execute only hands requests on, but a second instance thread lets two requests be handed
# on at once on a busy server (bench/endpoint.py: 0.84x -> 0.90x of direct throughput at
# concurrency 8 with a batching target, 0.78x -> 0.83x without batching).
NATIVE_ROUTER_INSTANCES = 2
STICKY_PARAMETER_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
"""Used with ``fullmatch`` (``$`` would let a trailing newline through)."""
KIND_PARAMETER = "tritonctl.kind"
ROUTES_PARAMETER = "tritonctl.routes"
ENDPOINT_PARAMETER = "tritonctl.endpoint"
MERGE_PARAMETER = "tritonctl.merge_batches"
MERGE_BYTES_PARAMETER = "tritonctl.merge_max_bytes"
RUN_LENGTH_PARAMETER = "tritonctl.run_length"
RUN_WINDOW_PARAMETER = "tritonctl.run_window_us"
RUN_IDLE_WINDOW_PARAMETER = "tritonctl.run_idle_window_us"
SEQUENCES_PARAMETER = "tritonctl.sequences"
# on an endpoint's own config: whether its targets are stateful ("true"/"false"), as an
# ensemble or a router cannot have a sequence batcher of its own
STATEFUL_PARAMETER = "tritonctl.stateful"
SEQUENCE_IDLE_PARAMETER = "tritonctl.sequence_idle_us"
ENDPOINT_VERSION = 1
PINNED = "pinned"
ROUTED = "routed"
MODES = (PINNED, ROUTED)
UNLOAD_WAIT_S = 60.0
POLL_S = 0.05
LOCK_TIMEOUT_S = 600.0
OUTDATED_LOAD = "Newer operation has been applied to the model lifecycle"
"""Triton's answer to a load of a model that a later load or unload of the same model
overtook: that one is applied instead (see :meth:`Endpoints._load_endpoint`)."""


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class Target:
    """One (model, version) an endpoint sends traffic to, with its relative weight."""

    model: str
    version: int
    weight: float = 100.0

    def __post_init__(self) -> None:
        validate_model_name(self.model)
        validate_version(self.version)
        weight = float(self.weight)
        if not math.isfinite(weight) or weight < 0:
            raise EndpointError(
                f"target {self.model}:{self.version}: weight must be a finite number >= 0, "
                f"got {self.weight!r}"
            )
        object.__setattr__(self, "weight", weight)

    @property
    def key(self) -> tuple[str, int]:
        return (self.model, self.version)

    def label(self) -> str:
        return f"{self.model}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "weight": self.weight}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Target:
        return cls(str(data["model"]), int(data["version"]), float(data.get("weight", 100.0)))

    @classmethod
    def parse(cls, text: str) -> Target:
        """``MODEL:VERSION=WEIGHT`` (weight optional, default 100), as the CLI takes it."""
        spec, sep, weight_text = text.partition("=")
        model, colon, version_text = spec.rpartition(":")
        if not colon or not model:
            raise EndpointError(f"target {text!r} must be MODEL:VERSION[=WEIGHT]")
        try:
            version = int(version_text)
            weight = float(weight_text) if sep else 100.0
        except ValueError as exc:
            raise EndpointError(f"target {text!r} must be MODEL:VERSION[=WEIGHT]") from exc
        return cls(model, version, weight)


def check_total_weight(targets: Sequence[Target]) -> None:
    """Refuse weights that add up to 0 (nothing to route to) or past what a float holds
    (every share would read as 0, and the traffic would not be split as given)."""
    total = sum(t.weight for t in targets)
    if total <= 0:
        raise EndpointError("the weights of the targets add up to 0")
    if not math.isfinite(total):
        raise EndpointError(
            "the weights of the targets add up to more than a number can hold: weights are "
            "relative, give smaller ones (1 and 1 is 50/50)"
        )


def check_listed_once(targets: Sequence[Target]) -> None:
    """Refuse a target (model and version) listed more than once."""
    seen: set[tuple[str, int]] = set()
    for t in targets:
        if t.key in seen:
            raise EndpointError(f"target {t.label()} is listed twice")
        seen.add(t.key)


def check_sticky(sticky_parameter: str | None, use_correlation_id: bool) -> None:
    """Refuse a sticky parameter name that a request parameter cannot have, or a split
    asked to route by both a parameter and the correlation id."""
    if sticky_parameter is not None and not STICKY_PARAMETER_RE.fullmatch(sticky_parameter):
        raise EndpointError(
            f"sticky parameter {sticky_parameter!r}: use 1-128 letters, digits, "
            "'_', '.', ':' or '-'"
        )
    if sticky_parameter and use_correlation_id:
        raise EndpointError("route by a sticky parameter or by the correlation id, not both")


@dataclass
class EndpointState:
    """An endpoint's routes, as stored in ``<repo>/.tritonctl/endpoints/NAME.json``."""

    name: str
    mode: str
    targets: list[Target]
    sticky_parameter: str | None = None
    use_correlation_id: bool = False
    generation: int = 0
    updated_at: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise EndpointError(f"endpoint {self.name!r}: unknown mode {self.mode!r}")
        if self.sticky_parameter is not None:
            check_sticky(self.sticky_parameter, False)

    @property
    def total_weight(self) -> float:
        return sum(t.weight for t in self.targets)

    def shares(self) -> dict[tuple[str, int], float]:
        """Expected fraction of the traffic per target."""
        total = self.total_weight
        return {t.key: (t.weight / total if total else 0.0) for t in self.targets}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "targets": [t.to_dict() for t in self.targets],
            "sticky": {
                "parameter": self.sticky_parameter,
                "use_correlation_id": self.use_correlation_id,
            },
            "generation": self.generation,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EndpointState:
        try:
            sticky = data.get("sticky") or {}
            parameter = sticky.get("parameter")
            return cls(
                name=str(data["name"]),
                mode=str(data["mode"]),
                targets=[Target.from_dict(t) for t in data["targets"]],
                sticky_parameter=str(parameter) if parameter else None,
                use_correlation_id=bool(sticky.get("use_correlation_id", False)),
                generation=int(data.get("generation", 0)),
                updated_at=str(data.get("updated_at", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EndpointError(f"endpoint routes are malformed: {exc}") from exc


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class Signature:
    """What clients of a model see: batching, inputs and outputs (names, types, dims), and
    whether it answers with a stream of responses (decoupled: clients must stream) and
    keeps state across the requests of a sequence (stateful)."""

    max_batch_size: int
    inputs: tuple[tuple[str, str, tuple[int, ...], bool], ...]
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...]
    decoupled: bool = False
    # stateful (sequence_batching): clients send sequences (correlation id, start, end)
    stateful: bool = False

    @classmethod
    def of(cls, config: mc.ModelConfig) -> Signature:
        return cls(
            decoupled=is_decoupled(config),
            stateful=is_stateful(config),
            max_batch_size=int(config.max_batch_size),
            inputs=tuple(
                (i.name, triton_dtype_name(i.data_type), tuple(int(d) for d in i.dims), i.optional)
                for i in config.input
            ),
            outputs=tuple(
                (o.name, triton_dtype_name(o.data_type), tuple(int(d) for d in o.dims))
                for o in config.output
            ),
        )


def _answers(decoupled: bool) -> str:
    return "a stream of responses (decoupled)" if decoupled else "one response per request"


def is_stateful(config: mc.ModelConfig) -> bool:
    """Whether a model keeps state across the requests of a sequence (sequence_batching),
    or is the endpoint of such a model."""
    marker = config.parameters.get(STATEFUL_PARAMETER)
    return config.HasField("sequence_batching") or (
        marker is not None and marker.string_value == "true"
    )


def _state(stateful: bool) -> str:
    return (
        "is stateful (sequence_batching: clients send sequences)"
        if stateful
        else "keeps no state between requests"
    )


def _describe_tensor(entry: tuple[Any, ...]) -> str:
    text = f"{entry[1]}{list(entry[2])}"
    return text + (" optional" if len(entry) > 3 and entry[3] else "")


def check_same_io(configs: Sequence[tuple[str, mc.ModelConfig]]) -> Signature:
    """The common :class:`Signature` of labelled configs; refuses any difference, naming
    the tensor (or batch size) that differs."""
    if not configs:
        raise EndpointError("an endpoint needs at least one target")
    first_label, first = configs[0]
    ref = Signature.of(first)
    for label, config in configs[1:]:
        sig = Signature.of(config)
        if sig.decoupled != ref.decoupled:
            raise EndpointError(
                f"targets differ in how they answer: {label} sends {_answers(sig.decoupled)}, "
                f"{first_label} sends {_answers(ref.decoupled)}"
            )
        if sig.stateful != ref.stateful:
            raise EndpointError(
                f"targets differ in state: {label} {_state(sig.stateful)}, "
                f"{first_label} {_state(ref.stateful)}"
            )
        if sig.max_batch_size != ref.max_batch_size:
            raise EndpointError(
                f"targets differ in max_batch_size: {label} has {sig.max_batch_size}, "
                f"{first_label} has {ref.max_batch_size}"
            )
        for what, mine, theirs in (
            ("input", sig.inputs, ref.inputs),
            ("output", sig.outputs, ref.outputs),
        ):
            mine_by = {t[0]: t for t in mine}
            theirs_by = {t[0]: t for t in theirs}
            for tensor_name in sorted(set(mine_by) | set(theirs_by)):
                a, b = mine_by.get(tensor_name), theirs_by.get(tensor_name)
                if a is None:
                    raise EndpointError(
                        f"targets differ in {what} {tensor_name!r}: {first_label} has it, "
                        f"{label} does not"
                    )
                if b is None:
                    raise EndpointError(
                        f"targets differ in {what} {tensor_name!r}: {label} has it, "
                        f"{first_label} does not"
                    )
                if a != b:
                    raise EndpointError(
                        f"targets differ in {what} {tensor_name!r}: {label} has "
                        f"{_describe_tensor(a)}, {first_label} has {_describe_tensor(b)}"
                    )
    return ref


def _copy_io(config: mc.ModelConfig, target: mc.ModelConfig, *, ragged: bool = False) -> None:
    """Copy the client-visible inputs/outputs of ``target`` into ``config``, and whether it
    answers with a stream (an ensemble over a decoupled step is decoupled anyway: Triton
    derives it; written so that the endpoint's own config says what clients must do)."""
    config.max_batch_size = target.max_batch_size
    if is_decoupled(target):
        config.model_transaction_policy.decoupled = True
    config.parameters[STATEFUL_PARAMETER].string_value = "true" if is_stateful(target) else "false"
    for i in target.input:
        entry = config.input.add()
        entry.name = i.name
        entry.data_type = i.data_type
        entry.dims.extend(i.dims)
        if i.optional:
            entry.optional = True
        if ragged and target.max_batch_size > 0:
            entry.allow_ragged_batch = True
    for o in target.output:
        out = config.output.add()
        out.name = o.name
        out.data_type = o.data_type
        out.dims.extend(o.dims)


def endpoint_config(
    name: str, target: mc.ModelConfig, step_model: str, step_version: int = -1
) -> mc.ModelConfig:
    """The ensemble config of endpoint ``name``: one step calling ``step_model`` (a target
    model version when pinned, the router when routed) with ``target``'s inputs/outputs."""
    config = mc.ModelConfig(name=name, platform="ensemble")
    _copy_io(config, target)
    step = config.ensemble_scheduling.step.add()
    step.model_name = step_model
    step.model_version = step_version
    for i in target.input:
        step.input_map[i.name] = i.name
    for o in target.output:
        step.output_map[o.name] = o.name
    config.parameters[KIND_PARAMETER].string_value = ENDPOINT_KIND
    return config


@dataclass(frozen=True)
class RouterOptions:
    """How the router model is configured; the defaults are what ``bench/endpoint.py``
    measured fastest on the embedded server.

    ``backend``: ``native`` (the C++ router, an error if it cannot be built), ``python``
    (the Python-backend router) or ``auto`` (native where it can be built, else python).

    The native router hands requests on without waiting: two instances and no dynamic
    batcher serve any concurrency (``instance_count`` overrides the two). Without a sticky
    key it sends requests to targets in runs of at most ``run_length`` requests within
    ``run_window_us`` (shares stay exact: a deficit round robin), so that each target
    stays busy and batches its requests; ``run_length=1`` makes an independent weighted
    random draw per request. A request that finds none of the router's requests in flight
    (one caller at a time) continues the run for up to ``run_idle_window_us``, so a lone
    caller is not moved between the targets' processes on every call.

    For the Python router ``instance_count`` None chooses by the targets: with batching
    (``max_batch_size > 0``) as many router instances as the target with the most
    instances has (more instances split the dynamic batches the router joins into one BLS
    call per target: 0.53-0.57x of direct throughput with 2 instances vs 0.65-0.67x with 1
    in the bench), and without batching that number plus 2 (each router instance holds
    one request while it waits for the target: 0.47x with 1, 0.52x with 2, 0.58x with 3).
    """

    backend: str = field(default_factory=lambda: default_router_backend())
    instance_count: int | None = None
    run_length: int = 64
    run_window_us: int = 2000
    run_idle_window_us: int = 100_000
    dynamic_batching: bool | None = None
    max_queue_delay_us: int = 0
    merge_batches: bool = True
    merge_max_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.backend not in ROUTER_BACKENDS:
            raise EndpointError(
                f"unknown router backend {self.backend!r} (one of {', '.join(ROUTER_BACKENDS)})"
            )

    def instances_for(
        self, target: mc.ModelConfig, target_instances: int, *, native: bool = False
    ) -> int:
        if self.instance_count is not None:
            return max(1, int(self.instance_count))
        if native:
            return NATIVE_ROUTER_INSTANCES
        base = max(1, int(target_instances))
        batching = target.max_batch_size > 0 and self.batches(native=False)
        return base if batching else base + 2

    def batches(self, *, native: bool) -> bool:
        """Whether the router gets a dynamic batcher (for a batching target): None means
        yes for the Python router (it joins a batch into one BLS call) and no for the
        native one (a batcher adds a thread hop and the native router gains nothing from
        batches)."""
        return (not native) if self.dynamic_batching is None else self.dynamic_batching


def default_router_backend() -> str:
    """``$TRITONCTL_ROUTER`` (auto, native or python), default auto."""
    return (os.environ.get(ROUTER_ENV) or "auto").strip().lower()


def instance_total(config: mc.ModelConfig) -> int:
    """How many instances a model config asks for (1 without an instance group)."""
    total = 0
    for group in config.instance_group:
        count = int(group.count) or 1
        total += count * max(1, len(group.gpus))
    return total or 1


def router_name(endpoint: str) -> str:
    """The separate router model ``NAME__router`` that older releases put behind an
    endpoint's ensemble; removed when such an endpoint is next switched or split."""
    return validate_model_name(endpoint + ROUTER_SUFFIX, what="router name")


def routes_relpath(endpoint: str, *, native: bool = False) -> str:
    """Where the router finds the routes file, relative to its own model folder."""
    from manager.settings import META_DIR

    suffix = NATIVE_ROUTES_SUFFIX if native else ".json"
    return f"../{META_DIR}/{ROUTES_DIR}/{endpoint}{suffix}"


def native_refusal(repo: Repository, library: Path) -> str | None:
    """Why ``repo``'s server refused to load ``library`` (the same file, by sha256), or
    None. ``auto`` endpoints then use the Python-backend router."""
    try:
        data = json.loads((repo.meta_dir / NATIVE_REFUSAL_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("sha256") != native_router.library_digest(library):
        return None
    return str(data.get("reason", ""))


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    """The files of ``folder`` (a router: a few small files), or None if it is missing."""
    if not folder.is_dir():
        return None
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _put_back(folder: Path, saved: dict[str, bytes]) -> None:
    """Make ``folder`` hold exactly the files of ``saved`` again."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and str(path.relative_to(folder)) not in saved:
            path.unlink()
    for rel, data in saved.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, data)


def native_routes_text(state: EndpointState) -> str:
    """``state`` in the line-oriented form the native router reads."""
    lines = [
        "tritonctl-routes 1",
        f"generation {int(state.generation)}",
        f"sticky_parameter {state.sticky_parameter or '-'}",
        f"use_correlation_id {1 if state.use_correlation_id else 0}",
    ]
    lines += [f"target {t.model} {int(t.version)} {float(t.weight)!r}" for t in state.targets]
    return "\n".join(lines) + "\n"


def router_config(
    endpoint: str,
    target: mc.ModelConfig,
    options: RouterOptions | None = None,
    target_instances: int = 1,
    *,
    native_backend: str | None = None,
) -> mc.ModelConfig:
    """The config of endpoint ``endpoint`` while it routes (the endpoint model is then the
    router itself; ``target``'s inputs/outputs; ``target_instances``: the most instances
    any target has): the native router under ``native_backend`` (see
    :func:`native_router.backend_name`) if given, else the Python backend."""
    opts = options or RouterOptions()
    native = native_backend is not None
    config = mc.ModelConfig(name=endpoint, backend=native_backend or "python")
    _copy_io(config, target, ragged=not native)
    group = config.instance_group.add()
    idle_s = sequence_idle_seconds(target)  # > 0: a stateful target
    group.count = opts.instances_for(target, target_instances, native=native)
    if not native and idle_s > 0 and opts.instance_count is None:
        # each Python router instance is a process of its own, and only the instance that
        # saw a sequence start knows its target: one instance
        group.count = 1
    group.kind = mc.ModelInstanceGroup.Kind.Value("KIND_CPU")
    # a stream's requests are passed on one by one: nothing to gain from batches
    if opts.batches(native=native) and target.max_batch_size > 0 and not is_decoupled(target):
        config.dynamic_batching.SetInParent()
        if opts.max_queue_delay_us:
            config.dynamic_batching.max_queue_delay_microseconds = opts.max_queue_delay_us
    config.parameters[KIND_PARAMETER].string_value = ROUTER_KIND
    config.parameters[ENDPOINT_PARAMETER].string_value = endpoint
    config.parameters[ROUTES_PARAMETER].string_value = routes_relpath(endpoint, native=native)
    if idle_s > 0:
        # a live sequence stays with the version that saw its start; the router forgets
        # it after twice the time the target's sequence batcher keeps an idle sequence
        config.parameters[SEQUENCES_PARAMETER].string_value = "true"
        config.parameters[SEQUENCE_IDLE_PARAMETER].string_value = str(round(2 * idle_s * 1e6))
    if native:
        config.parameters[RUN_LENGTH_PARAMETER].string_value = str(max(1, int(opts.run_length)))
        config.parameters[RUN_WINDOW_PARAMETER].string_value = str(max(1, int(opts.run_window_us)))
        config.parameters[RUN_IDLE_WINDOW_PARAMETER].string_value = str(
            max(1, int(opts.run_idle_window_us))
        )
    else:
        merge = opts.merge_batches and not is_decoupled(target)
        config.parameters[MERGE_PARAMETER].string_value = "true" if merge else "false"
        config.parameters[MERGE_BYTES_PARAMETER].string_value = str(int(opts.merge_max_bytes))
    return config


def with_versions(config: mc.ModelConfig, versions: Iterable[int]) -> mc.ModelConfig:
    """A copy of ``config`` whose version policy serves exactly ``versions``."""
    wanted = sorted({validate_version(v) for v in versions})
    if not wanted:
        raise EndpointError(f"no versions of {config.name!r} to serve")
    out = mc.ModelConfig()
    out.CopyFrom(config)
    out.version_policy.specific.versions[:] = wanted
    return out


def policy_versions(config: mc.ModelConfig) -> set[int] | None:
    """The versions of a ``specific`` version policy, or None for latest/all."""
    if config.version_policy.WhichOneof("policy_choice") != "specific":
        return None
    return {int(v) for v in config.version_policy.specific.versions}


def router_source() -> Path:
    """The router's ``model.py`` shipped in ``triton_backends``."""
    ref = resources.files("triton_backends").joinpath("router", "model.py")
    path = Path(str(ref))
    if not path.is_file():
        raise ManagerError(f"the endpoint router is missing from this installation ({path})")
    return path


# --------------------------------------------------------------------------- control


class ModelControl(Protocol):
    """What endpoints need from Triton (``manager.triton.TritonControl`` or a fake)."""

    def repository_index(self) -> list[IndexEntry]: ...

    def load_model(self, name: str, config: str | None = None) -> None: ...

    def unload_model(self, name: str, unload_dependents: bool = False) -> None: ...

    def model_config(self, name: str) -> dict[str, Any]: ...

    def statistics(self, name: str | None = None) -> list[ModelStats]: ...


def is_outdated_load(exc: BaseException) -> bool:
    """Whether ``exc`` is Triton's answer to a load that a later load or unload of the
    same model overtook (:data:`OUTDATED_LOAD`)."""
    return isinstance(exc, LoadError) and OUTDATED_LOAD in str(exc)


def _identity(config: mc.ModelConfig) -> tuple[Any, ...]:
    """What tells one config of an endpoint model from another (what it runs, the models
    it calls, the router's settings), leaving out what Triton completes on load."""
    return (
        config.platform,
        config.backend,
        tuple((s.model_name, s.model_version) for s in config.ensemble_scheduling.step),
        tuple(sorted((k, v.string_value) for k, v in config.parameters.items())),
    )


Admission = Callable[[Mapping[str, Iterable[int]]], AbstractContextManager[object]]
"""Makes room for the model versions a change is about to load (model -> versions) and
holds it while they load (``manager.controller.Controller.admitting``)."""


class _NoServer:
    """The control of :func:`startup_models`, which only reads the repository."""

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise ManagerError("no server is asked while the repository is only read")

    repository_index = load_model = unload_model = model_config = statistics = _refuse


def startup_models(repo: Repository) -> list[str]:
    """The models a server of ``repo`` should load before it takes requests
    (``tritonserver --load-model``) to serve every endpoint as recorded: each endpoint
    model and the models of its targets (their ``config.pbtxt`` version policies name
    the versions the endpoints route to)."""
    names: set[str] = set()
    for state in Endpoints(repo, _NoServer()).list():
        if is_endpoint_folder(repo, state.name):
            names.add(state.name)
        names.update(t.model for t in state.targets if repo.has_model(t.model))
    return sorted(names)


def routes_file(repo: Repository, name: str) -> Path:
    """Where endpoint ``name``'s routes are recorded (JSON)."""
    return repo.meta_dir / ROUTES_DIR / f"{validate_model_name(name, what='endpoint name')}.json"


def read_endpoint(repo: Repository, name: str) -> EndpointState | None:
    """Endpoint ``name``'s recorded routes; None where it has none."""
    path = routes_file(repo, name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EndpointError(f"cannot read endpoint routes {path}: {exc}") from exc
    try:
        return EndpointState.from_dict(json.loads(text))
    except (ValueError, EndpointError) as exc:
        raise EndpointError(f"endpoint routes {path} are malformed: {exc}") from exc


def endpoint_states(repo: Repository) -> list[EndpointState]:
    """Every endpoint of ``repo`` with its routes, by name; no server needed."""
    folder = repo.meta_dir / ROUTES_DIR
    if not folder.is_dir():
        return []
    states = []
    for path in sorted(folder.glob("*.json")):
        state = read_endpoint(repo, path.stem)
        if state is not None:
            states.append(state)
    return states


def is_endpoint_folder(repo: Repository, name: str) -> bool:
    """True if ``<repo>/name`` is an endpoint's ensemble or router made by this module."""
    if name.startswith("."):
        return False
    info = read_provenance(repo.path / name / str(ENDPOINT_VERSION))
    return info.get("kind") in (ENDPOINT_KIND, ROUTER_KIND)


class Endpoints:
    """Create, re-point, split and delete the endpoints of one repository on one server."""

    def __init__(
        self,
        repo: Repository,
        control: ModelControl,
        *,
        router: RouterOptions | None = None,
        unload_wait_s: float = UNLOAD_WAIT_S,
        rollout_driver: bool = False,
        admission: Admission | None = None,
    ) -> None:
        self.repo = repo
        self.control = control
        # keeps the versions a change loads within a memory budget (see
        # manager.controller.admission); None: loaded as asked
        self.admission = admission
        self.router_options = router or RouterOptions()
        self.unload_wait_s = unload_wait_s
        # a rollout's driver changes its endpoint; anyone else must not while it runs
        self.rollout_driver = rollout_driver
        # how a change of a stateful endpoint waits for its live sequences (see
        # _changed_safely)
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], None] = time.sleep
        self.poll_seconds = 0.5
        # told what a change waits for, before it waits: (message)
        self.on_drain: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return f"Endpoints({self.repo!r})"

    # ---------------------------------------------------------------- paths and state

    @property
    def routes_dir(self) -> Path:
        return self.repo.meta_dir / ROUTES_DIR

    def routes_path(self, name: str) -> Path:
        return routes_file(self.repo, name)

    def native_routes_path(self, name: str) -> Path:
        return self.routes_path(name).with_suffix(NATIVE_ROUTES_SUFFIX)

    def _read(self, name: str) -> EndpointState | None:
        return read_endpoint(self.repo, name)

    def _write(self, state: EndpointState) -> None:
        self.routes_dir.mkdir(parents=True, exist_ok=True)
        # the native router's form first: the JSON file is what `get` reports
        write_text_atomic(self.native_routes_path(state.name), native_routes_text(state))
        write_json_atomic(self.routes_path(state.name), state.to_dict())

    def _remove_routes(self, name: str) -> None:
        self.routes_path(name).unlink(missing_ok=True)
        self.native_routes_path(name).unlink(missing_ok=True)

    def _router_library(self) -> Path | None:
        """The native router library to use, or None for the Python-backend router
        (``auto``: where none can be built, or this repository's server refused this very
        library before)."""
        backend = self.router_options.backend
        if backend == "python":
            return None
        if backend == "native":
            return native_router.find_library()
        library = native_router.available()
        if library is not None and native_refusal(self.repo, library) is not None:
            return None
        return library

    def native_refusal(self, library: Path) -> str | None:
        return native_refusal(self.repo, library)

    def _record_native_refusal(self, library: Path, exc: ManagerError) -> None:
        path = self.repo.meta_dir / NATIVE_REFUSAL_FILE
        log.warning(
            "the server did not load the native router (%s); endpoints of %s use the "
            "Python-backend router (remove %s to try again)",
            exc,
            self.repo.path,
            path,
        )
        self.repo.meta_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            path,
            {
                "sha256": native_router.library_digest(library),
                "library": str(library),
                "reason": str(exc),
            },
        )

    def get(self, name: str) -> EndpointState:
        state = self._read(name)
        if state is None:
            raise EndpointNotFoundError(f"no endpoint named {name!r} in {self.repo.path}")
        return state

    def list(self) -> list[EndpointState]:
        return endpoint_states(self.repo)

    def target_versions(self, name: str) -> set[tuple[str, int]]:
        """The (model, version) pairs endpoint ``name`` sends traffic to (or may, at 0 %)."""
        return {t.key for t in self.get(name).targets}

    def all_target_versions(self) -> set[tuple[str, int]]:
        """Every (model, version) some endpoint targets: never evict or prune these."""
        return {t.key for state in self.list() for t in state.targets}

    # ---------------------------------------------------------------- checks

    def _check_endpoint_name(self, name: str) -> str:
        validate_model_name(name, what="endpoint name")
        if name.endswith(ROUTER_SUFFIX):
            raise EndpointError(f"endpoint name {name!r} must not end with {ROUTER_SUFFIX!r}")
        router_name(name)
        for folder in (name, name + ROUTER_SUFFIX):
            if self.repo.has_model(folder) and not is_endpoint_folder(self.repo, folder):
                raise EndpointError(
                    f"{folder!r} is a model in {self.repo.path}, not an endpoint: "
                    "choose another endpoint name"
                )
        return name

    def _target_config(self, model: str) -> mc.ModelConfig:
        validate_model_name(model)
        if not self.repo.has_model(model):
            raise ModelNotFoundError(f"model {model!r} is not in repository {self.repo.path}")
        if is_endpoint_folder(self.repo, model):
            raise EndpointError(f"{model!r} is an endpoint; an endpoint must target a model")
        return read_config(self.repo.config_path(model))

    def _resolve_version(self, model: str, version: int | None) -> int:
        versions = self.repo.versions(model)
        if version is None:
            if not versions:
                raise ModelNotFoundError(f"model {model!r} has no published version")
            return versions[-1]
        validate_version(version)
        if version not in versions:
            raise ModelNotFoundError(
                f"model {model!r} has no version {version} in {self.repo.path} "
                f"(it has: {', '.join(map(str, versions)) or 'none'})"
            )
        return version

    def _check_targets(
        self, targets: Sequence[Target]
    ) -> tuple[_Targets, dict[str, mc.ModelConfig]]:
        """Checked targets and their models' configs (inputs/outputs all identical)."""
        if not targets:
            raise EndpointError("an endpoint needs at least one target")
        checked = [t if isinstance(t, Target) else Target(*t) for t in targets]
        check_listed_once(checked)
        for t in checked:
            self._resolve_version(t.model, t.version)
        check_total_weight(checked)
        configs = {m: self._target_config(m) for m in {t.model for t in checked}}
        check_same_io([(t.label(), configs[t.model]) for t in checked])
        return checked, configs

    # ---------------------------------------------------------------- locks

    @contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        self.repo.ensure()
        lock_dir = self.repo.meta_dir / "locks"
        lock_dir.mkdir(exist_ok=True)
        lock = FileLock(str(lock_dir / f"{key}.lock"))
        try:
            with lock.acquire(timeout=LOCK_TIMEOUT_S):
                yield
        except Timeout as exc:
            raise RepositoryError(
                f"{key!r} is locked by another tritonctl process (waited {LOCK_TIMEOUT_S:.0f} s)"
            ) from exc

    # ---------------------------------------------------------------- triton

    def _index(self) -> _IndexRows:
        return self.control.repository_index()

    def describe(self, states: Sequence[EndpointState]) -> Sequence[dict[str, Any]]:
        """Each state's dict plus ``serving``: whether Triton serves the endpoint and each
        target now (``ready``, ``targets`` by ``MODEL:VERSION``), or None when the server
        cannot be asked; and how clients call it, from its config: ``streaming`` (a
        decoupled model: over a gRPC stream) and ``stateful`` (in sequences), None when
        the config cannot be read."""
        try:
            index = self._index()
        except ManagerError as exc:
            log.info("cannot tell which endpoints are served: %s", exc)
            index = None
        out: builtins.list[dict[str, Any]] = []
        for state in states:
            data = state.to_dict()
            try:
                sig: Signature | None = Signature.of(
                    read_config(self.repo.path / state.name / CONFIG_FILE)
                )
            except ManagerError:
                sig = None
            data["streaming"] = sig.decoupled if sig is not None else None
            data["stateful"] = sig.stateful if sig is not None else None
            if index is None:
                data["serving"] = None
            else:
                ready = {(e.name, e.version) for e in index if e.ready}
                data["serving"] = {
                    "ready": any(name == state.name for name, _ in ready),
                    "targets": {t.label(): t.key in ready for t in state.targets},
                }
            out.append(data)
        return out

    def _ready_versions(self, model: str, index: Sequence[IndexEntry] | None = None) -> set[int]:
        rows = index if index is not None else self._index()
        return {e.version for e in rows if e.name == model and e.ready and e.version is not None}

    def _is_ready(self, model: str) -> bool:
        return bool(self._ready_versions(model))

    def serve_versions(self, model: str, versions: Iterable[int]) -> set[int]:
        """Make Triton serve ``versions`` of ``model`` besides what it serves already.

        The versions to serve are written into the model's ``config.pbtxt`` as a
        ``specific`` version policy (the versions READY now, those any endpoint targets,
        and the new ones) and the model is loaded from it; Triton keeps the old copy
        serving until the new one is ready. A config *override* would not do: Triton
        reloads a model loaded with an override from its files the next time anything
        polls it, and loading an ensemble polls its steps' models. Nothing is done when
        the versions are READY and the policy on disk already lists them. Returns the
        versions READY afterwards.
        """
        wanted = {validate_version(v) for v in versions}
        validate_model_name(model)
        with self.repo.lock(model):
            on_disk = set(self.repo.versions(model))
            absent = wanted - on_disk
            if absent:
                raise ModelNotFoundError(
                    f"model {model!r} has no version {min(absent)} in {self.repo.path}"
                )
            path = self.repo.config_path(model)
            config = read_config(path)
            index = self._index()
            ready = self._ready_versions(model, index)
            targeted = {v for m, v in self.all_target_versions() if m == model}
            serve = ((ready | targeted) & on_disk) | wanted
            policy = policy_versions(config)
            if wanted <= ready and policy is not None and serve <= policy:
                return ready
            original = path.read_bytes()
            kept_before = has_owner_policy(self.repo.path, model)
            if policy != serve:
                keep_owner_policy(self.repo.path, model, config)
                write_config(path, with_versions(config, serve))
            log.info("loading %s serving versions %s", model, sorted(serve))
            precompile_unloaded(self.repo.path, model, entries_of(index, model))
            try:
                self.control.load_model(model)
                before, ready = ready, self._ready_versions(model)
                record_load(self.repo.path, model, ready - before)  # lru/fifo date them
                missing = wanted - ready
                if missing:
                    raise LoadError(
                        f"model {model!r} loaded but versions {sorted(missing)} are not READY"
                    )
            except ManagerError:
                # Triton keeps serving what it served; the policy must not name a version
                # it failed on, or the next load of the model (or of an ensemble calling
                # it) tries that version again
                if path.read_bytes() != original:
                    write_bytes_atomic(path, original)
                if not kept_before:  # the config is the owner's own again
                    forget_owner_policy(self.repo.path, model)
                raise
            return ready

    def _serve_targets(self, by_model: dict[str, set[int]]) -> dict[str, set[int]]:
        """:meth:`serve_versions` for each model; returns the versions that were not READY
        before and are now. If one model fails, what was added for the others is retired
        again before the error is raised."""
        added: dict[str, set[int]] = {}
        try:
            for model, versions in sorted(by_model.items()):
                before = self._ready_versions(model)
                added[model] = self.serve_versions(model, versions) - before
        except ManagerError:
            self._take_back(added)
            raise
        return added

    def _take_back(self, added: dict[str, set[int]]) -> None:
        """Retire the versions a failed change loaded (``added``: from
        :meth:`_serve_targets`) that no endpoint routes to, so the failure leaves Triton
        serving what it served before."""
        for model, versions in sorted(added.items()):
            if not versions:
                continue
            try:
                self.retire_versions(model, versions, keep_if_routed=True)
            except ManagerError as exc:
                log.warning("%s:%s stay loaded: %s", model, sorted(versions), exc)

    def _check_clients_io(
        self, name: str, targets: Sequence[tuple[str, mc.ModelConfig]], *, force: bool
    ) -> None:
        """Refuse (EndpointError) targets whose inputs, outputs or batching differ from
        what endpoint ``name`` takes now: every client of it would fail. ``force`` allows
        it (a deliberate change of the endpoint's interface)."""
        path = self.repo.path / name / CONFIG_FILE
        if force or not path.is_file():
            return
        try:
            current = read_config(path)
        except ManagerError:
            return  # a damaged endpoint folder: nothing to keep clients compatible with
        if KIND_PARAMETER in current.parameters and STATEFUL_PARAMETER not in current.parameters:
            # written by a release that did not mark it: take the targets' word for it
            marked = "true" if is_stateful(targets[0][1]) else "false"
            current.parameters[STATEFUL_PARAMETER].string_value = marked
        try:
            check_same_io([(f"endpoint {name!r}", current), *targets])
        except EndpointError as exc:
            raise EndpointError(
                f"{exc}: clients of endpoint {name!r} would fail; use --force "
                "(force=True) to change what the endpoint takes"
            ) from exc

    def retire(self, model: str, version: int, *, keep_if_routed: bool = False) -> bool:
        """Stop serving one version of ``model`` (the others keep serving); returns whether
        it was retired. See :meth:`retire_versions`."""
        return bool(self.retire_versions(model, [version], keep_if_routed=keep_if_routed))

    def retire_versions(
        self, model: str, versions: Iterable[int], *, keep_if_routed: bool = False
    ) -> set[int]:
        """Stop serving ``versions`` of ``model`` at once (the others keep serving): one
        change of its version policy and one reload; returns the versions retired.

        A version an endpoint targets is refused (EndpointError, nothing is retired), or
        with ``keep_if_routed`` left serving: a rollout that is done with a version leaves
        it to the other endpoints that call it. The versions leave the model's version
        policy and the model is reloaded with the rest, or unloaded (and its policy
        cleared) when no version remains.
        """
        wanted = {validate_version(v) for v in versions}
        validate_model_name(model)
        with self.repo.lock(model):
            users: dict[int, list[str]] = {}
            for state in self.list():
                for t in state.targets:
                    if t.model == model and t.version in wanted:
                        users.setdefault(t.version, []).append(state.name)
            for version, names in sorted(users.items()):
                if not keep_if_routed:
                    raise EndpointError(
                        f"{model}:{version} is a target of endpoint(s) {', '.join(names)}"
                    )
                log.info(
                    "%s:%d keeps serving: a target of endpoint(s) %s",
                    model,
                    version,
                    ", ".join(names),
                )
            retiring = wanted - set(users)
            if not retiring:
                return set()
            path = self.repo.config_path(model)
            config = read_config(path)
            ready = self._ready_versions(model)
            remaining = ready - retiring
            served = sorted(ready & retiring)
            if not remaining:
                # no endpoint needs the model: its owner's version policy is back
                restored = with_owner_policy(self.repo.path, model, config)
                if restored != config:
                    write_config(path, restored)
                if served:
                    log.info("unloading %s (its last versions %s are retired)", model, served)
                    self.control.unload_model(model)
                    self._wait_unloaded(model)
                    forget_loads(self.repo.path, model, served)
                return retiring
            keep_owner_policy(self.repo.path, model, config)
            write_config(path, with_versions(config, remaining))
            if served:
                log.info("reloading %s serving versions %s", model, sorted(remaining))
                self.control.load_model(model)
                forget_loads(self.repo.path, model, served)
            return retiring

    def _wait_unloaded(self, name: str) -> None:
        deadline = time.monotonic() + self.unload_wait_s
        while time.monotonic() < deadline:
            rows = [e for e in self._index() if e.name == name]
            if not any(e.state in ("READY", "LOADING", "UNLOADING") for e in rows):
                return
            time.sleep(POLL_S)
        log.warning("%s is still unloading after %.0f s", name, self.unload_wait_s)

    def _unload_if_loaded(self, name: str) -> None:
        rows = [e for e in self._index() if e.name == name]
        if any(e.state in ("READY", "LOADING") for e in rows):
            log.info("unloading %s", name)
            self.control.unload_model(name)
            self._wait_unloaded(name)

    # ---------------------------------------------------------------- folders

    def _write_marker(self, folder: Path, data: dict[str, Any]) -> None:
        vdir = folder / str(ENDPOINT_VERSION)
        vdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(vdir / PROVENANCE_FILE, data)

    def _write_endpoint(
        self,
        name: str,
        config: mc.ModelConfig,
        *,
        router: bool = False,
        library: Path | None = None,
    ) -> None:
        """Write endpoint ``name``'s folder: the pinned ensemble ``config``, or with
        ``router`` the router ``config`` and its code in the version folder (the native
        ``library``, where Triton looks for a model's backend first, or, if None, the
        Python router's ``model.py``)."""
        folder = self.repo.path / name
        self._write_marker(folder, {"kind": ENDPOINT_KIND, "name": name})
        vdir = folder / str(ENDPOINT_VERSION)
        python_file = vdir / "model.py"
        keep = None
        if router and library is not None:
            keep = vdir / native_router.library_file(config.backend)
            write_bytes_atomic(keep, library.read_bytes())
        for old in vdir.glob(f"libtriton_{native_router.BACKEND_NAME}*.so"):
            if old != keep:
                old.unlink(missing_ok=True)
        if router and library is None:
            write_text_atomic(python_file, router_source().read_text())
            precompile(vdir)
        else:
            python_file.unlink(missing_ok=True)
            shutil.rmtree(vdir / "__pycache__", ignore_errors=True)  # the stub's bytecode
        write_config(folder / CONFIG_FILE, config)

    def _remove_legacy_router(self, name: str) -> None:
        """Unload and remove a ``NAME__router`` model an older release left."""
        legacy = router_name(name)
        if is_endpoint_folder(self.repo, legacy):
            self._unload_if_loaded(legacy)
            self._remove_folder(legacy)

    def _put_back(self, folder: Path, saved: dict[str, bytes] | None) -> None:
        """Make ``folder`` as :func:`_snapshot` saw it (None: no folder)."""
        if saved is None:
            if folder.exists():
                self.repo.discard(folder)
        else:
            _put_back(folder, saved)

    def _remove_folder(self, folder_name: str) -> None:
        folder = self.repo.path / folder_name
        if folder.exists():
            self.repo.discard(folder)

    def _router_current(self, name: str, wanted: mc.ModelConfig) -> bool:
        """True if endpoint ``name`` on disk is the router ``wanted`` and Triton serves it."""
        path = self.repo.path / name / CONFIG_FILE
        if not path.is_file():
            return False
        try:
            current = read_config(path)
        except ManagerError:
            return False
        return current == wanted and self._serves(name, wanted)

    # ---------------------------------------------------------------- operations

    def switch(
        self,
        name: str,
        model: str,
        version: int | None = None,
        *,
        force: bool = False,
        drain: bool = True,
    ) -> EndpointState:
        """Point endpoint ``name`` at one model version (created if new).

        ``version`` None is the newest published version. The target is loaded, the
        routes file and the pinned ensemble are written and the endpoint is (re)loaded
        (Triton keeps the old model, ensemble or router, serving until the new one is
        ready). A target whose inputs, outputs or batching differ from what the endpoint
        takes now is refused (EndpointError) unless ``force``. If anything fails, the
        endpoint keeps serving as before and a version loaded for the switch is retired
        again. Refused (RolloutError) while a rollout of ``name`` runs.

        The endpoint of a stateful model is first drained (unless not ``drain``): new
        sequences go to the new target at once, those under way end on the version they
        began on, and the switch returns once that version has had no request for its
        sequence idle time (at most five of them); see :meth:`_changed_safely`.
        """
        self._refuse_during_rollout(name, "switched")
        self._check_endpoint_name(name)
        config = self._target_config(model)
        version = self._resolve_version(model, version)
        # checked before room is made for it
        self._check_clients_io(name, [(f"{model}:{version}", config)], force=force)
        before = self._read(name)
        state = self._changed_safely(
            before,
            [Target(model, version, 100.0)],
            {model: {version}},
            lambda: self._switch(name, model, version, force=force),
            drain=drain and is_stateful(config),
            force=force,
        )
        self._release_policies(before)
        return state

    def _changed_safely(
        self,
        before: EndpointState | None,
        final: Sequence[Target],
        wanted: Mapping[str, Iterable[int]],
        change: Callable[[], EndpointState],
        *,
        drain: bool,
        force: bool,
        sticky_parameter: str | None = None,
        use_correlation_id: bool = False,
    ) -> EndpointState:
        """Make ``change`` (to ``final`` targets) within the budget for ``wanted``. With
        ``drain`` (a stateful endpoint), when targets leave, first send every new sequence
        to ``final`` while the router keeps each one under way where it began, wait until
        the leaving targets have been quiet for their sequence idle time (without the
        budget's lock: both are routed, so neither is evicted meanwhile), then change."""
        draining: tuple[str, _Targets, float] | None = None
        with self._admitted(wanted):
            if drain and before is not None:
                try:
                    draining = self._drain_start(
                        before,
                        final,
                        force=force,
                        sticky_parameter=sticky_parameter,
                        use_correlation_id=use_correlation_id,
                    )
                except EndpointError as exc:
                    raise EndpointError(
                        f"{exc}; the sequences under way were not drained (drain=False, "
                        "`--no-drain`, changes the endpoint at once and ends them)"
                    ) from exc
            if draining is None:
                return change()
        self._drain_wait(*draining)
        with self._admitted(wanted):
            return change()

    def _drain_start(
        self,
        before: EndpointState,
        final: Sequence[Target],
        *,
        force: bool,
        sticky_parameter: str | None,
        use_correlation_id: bool,
    ) -> tuple[str, _Targets, float] | None:
        """Before stateful endpoint ``before`` goes to ``final`` targets: routed to the
        targets that leave, listed first at weight 0 (a request of a sequence whose start
        the router did not see goes to the first target: the one a pinned endpoint was
        pinned to), then ``final``'s. The router sends every new sequence to ``final``'s
        and keeps each one under way on the target that saw its start. Returns the
        endpoint, the targets that leave and their sequence idle time, or None when none
        leaves."""
        keys = {t.key for t in final}
        index = self._index()
        # a target that is not served (a server started afresh, say) has no sequences,
        # and is not loaded again to drain it; nor has an endpoint that is not served
        leaving = [
            t
            for t in before.targets
            if t.key not in keys and t.version in self._ready_versions(t.model, index)
        ]
        if not leaving or not self._ready_versions(before.name, index):
            return None
        try:
            configs = [(t.label(), self._target_config(t.model)) for t in [*leaving, final[0]]]
            check_same_io(configs)
        except ManagerError as exc:
            # a target that leaves is gone from the repository, or takes other inputs
            # than the new ones (--force): its sequences cannot go on through the router
            log.info("endpoint %s: sequences not drained: %s", before.name, exc)
            return None
        idle = max(sequence_idle_seconds(config) for _, config in configs[:-1])
        if idle <= 0:
            return None  # the endpoint served a stateless model until now
        self._split(
            before.name,
            [replace(t, weight=0.0) for t in leaving] + list(final),
            sticky_parameter=sticky_parameter,
            use_correlation_id=use_correlation_id,
            force=force,
        )
        message = (
            f"endpoint {before.name}: new sequences go to "
            f"{', '.join(t.label() for t in final if t.weight > 0)}; waiting for those under "
            f"way on {', '.join(t.label() for t in leaving)} to end (until they have been "
            f"quiet for {idle:g} s, at most {5 * idle:g} s)"
        )
        log.info("%s", message)
        if self.on_drain is not None:
            self.on_drain(message)
        return before.name, leaving, idle

    def _drain_wait(self, name: str, leaving: Sequence[Target], idle: float) -> None:
        """Wait until the ``leaving`` targets have been quiet for ``idle`` seconds (at most
        five times that). A server whose statistics cannot be read is not waited for."""
        stats = stats_reader(self.control)
        models = sorted({t.model for t in leaving})

        def served() -> int:
            by_model = {model: stats(model) for model in models}
            return sum(by_model[t.model].get(t.version, Counters()).requests for t in leaving)

        try:
            quiet = wait_quiet(
                served, idle, clock=self.clock, sleep=self.sleep, poll=self.poll_seconds
            )
        except ManagerError as exc:
            log.warning("endpoint %s: sequences not drained: %s", name, exc)
            return
        if not quiet:
            log.warning(
                "endpoint %s: %s still had sequences under way after %.0f s; changed anyway",
                name,
                ", ".join(t.label() for t in leaving),
                5 * idle,
            )

    @contextmanager
    def _models_locked(self, models: Iterable[str]) -> Iterator[None]:
        """Hold the locks of ``models`` (in name order) while their versions are served and
        the routes to them written: a load of one of them (which takes its lock) sees
        either the routes before or the routes after, never versions loaded for routes
        not written yet, which it would take down again."""
        with ExitStack() as stack:
            for model in sorted(set(models)):
                stack.enter_context(self.repo.lock(model))
            yield

    @contextmanager
    def _changing(self, name: str, models: Iterable[str]) -> Iterator[None]:
        """Hold endpoint ``name``'s lock, then those of ``models`` (the change's targets)
        and, while ``name`` is pinned, of the model its ensemble calls now.

        Triton reloads an ensemble whenever a model it calls is loaded again with changes
        (a new version in its policy, changed files), with the ensemble's config as it was
        when that load began, and without waiting for a load of the ensemble under way. A
        load of the old target by another tritonctl process (which holds the target's
        lock) that overlapped this change would put the old ensemble back once it ends,
        after the change had returned, or overtake the change's own load of the endpoint
        (which then fails). Holding the old target's lock makes such a load end before
        this change loads the endpoint, or begin after it."""
        with self._lock(name):
            previous = self._read(name)
            calls = [previous.targets[0].model] if previous and previous.mode == PINNED else []
            with self._models_locked([*models, *calls]):
                yield

    def _load_endpoint(self, name: str, wanted: mc.ModelConfig) -> None:
        """Load endpoint model ``name``, whose folder now holds config ``wanted``.

        A load that Triton reports overtaken by a later load or unload of ``name`` (another
        Triton client's, or the reload of an ensemble that a load of a model it calls
        brings: see :meth:`_changing`) is not failed if Triton serves ``wanted`` after
        all; otherwise it is made once more, and if that is overtaken too the change fails
        (EndpointError, not LoadError: the endpoint loads, it just lost a race).
        """
        try:
            self.control.load_model(name)
            return
        except LoadError as exc:
            if not is_outdated_load(exc):
                raise
            log.info("endpoint %s: %s", name, exc)
        if self._serves(name, wanted):
            log.info("endpoint %s: the load that overtook this one serves it as asked", name)
            return
        log.info("endpoint %s: a load that overtook this one serves something else; again", name)
        try:
            self.control.load_model(name)
        except LoadError as exc:
            if not is_outdated_load(exc):
                raise
            raise EndpointError(
                f"endpoint {name!r} was not changed: another load or unload of it (by "
                "another Triton client, or Triton reloading it with a model it calls) "
                f"overtook this change's load twice, and Triton applied that one instead ({exc})"
            ) from exc

    def _serves(self, name: str, wanted: mc.ModelConfig) -> bool:
        """Whether Triton serves ``name`` with config ``wanted`` (see :func:`_identity`)."""
        if not self._is_ready(name):
            return False
        try:
            served = json_format.ParseDict(
                self.control.model_config(name), mc.ModelConfig(), ignore_unknown_fields=True
            )
        except (ManagerError, json_format.ParseError) as exc:
            log.info("cannot tell what endpoint %s serves: %s", name, exc)
            return False
        return _identity(served) == _identity(wanted)

    def _admitted(self, wanted: Mapping[str, Iterable[int]]) -> AbstractContextManager[object]:
        return self.admission(wanted) if self.admission is not None else nullcontext()

    def _switch(
        self, name: str, model: str, version: int | None, *, force: bool = False
    ) -> EndpointState:
        self._check_endpoint_name(name)
        config = self._target_config(model)
        version = self._resolve_version(model, version)
        with self._changing(name, [model]):
            self._check_clients_io(name, [(f"{model}:{version}", config)], force=force)
            previous = self._read(name)
            added = self._serve_targets({model: {version}})
            state = EndpointState(
                name=name,
                mode=PINNED,
                targets=[Target(model, version, 100.0)],
                generation=(previous.generation + 1) if previous else 1,
                updated_at=_now(),
            )
            # Written first: a router still in the path sends everything to the new target.
            try:
                self._apply(name, previous, state, endpoint_config(name, config, model, version))
            except ManagerError:
                self._take_back(added)
                raise
            self._remove_legacy_router(name)
            log.info("endpoint %s -> %s:%d (pinned)", name, model, version)
            return state

    def split(
        self,
        name: str,
        targets: Sequence[Target],
        *,
        sticky_parameter: str | None = None,
        use_correlation_id: bool = False,
        force: bool = False,
        drain: bool = True,
    ) -> EndpointState:
        """Send endpoint ``name``'s traffic to several targets by weight (created if new).

        Every target is loaded first. If the endpoint already routes with the same
        inputs/outputs, only the routes file is rewritten (effective within ~0.2 s).
        Otherwise the endpoint model becomes the router: written and (re)loaded in place
        of the ensemble (Triton keeps the old model serving until the router is ready).
        The targets must take the same inputs and outputs, and unless ``force`` the same
        as the endpoint takes now. If anything fails, the endpoint keeps serving as before
        and versions loaded for the split are retired again. Refused (RolloutError) while
        a rollout of ``name`` runs.

        For a stateful model (unless not ``drain``) the sequences under way keep their
        version: a target that leaves the endpoint is drained first, as by
        :meth:`switch`, and the version a pinned endpoint served is listed first (where
        the router sends a sequence whose start it did not see).
        """
        self._refuse_during_rollout(name, "split")
        self._check_endpoint_name(name)
        # before any target is loaded: a refused split changes nothing that serves
        check_sticky(sticky_parameter, use_correlation_id)
        checked, configs = self._check_targets(targets)
        # checked before room is made for them
        self._check_clients_io(name, [(checked[0].label(), configs[checked[0].model])], force=force)
        wanted: dict[str, set[int]] = {}
        for t in checked:
            wanted.setdefault(t.model, set()).add(t.version)
        before = self._read(name)
        stateful = drain and is_stateful(configs[checked[0].model])
        final = list(checked)
        if stateful and before is not None and before.mode == PINNED:
            pinned = [t for t in final if t.key == before.targets[0].key]
            final = pinned + [t for t in final if t.key != before.targets[0].key]
        state = self._changed_safely(
            before,
            final,
            wanted,
            lambda: self._split(
                name,
                final,
                sticky_parameter=sticky_parameter,
                use_correlation_id=use_correlation_id,
                force=force,
            ),
            drain=stateful,
            force=force,
            sticky_parameter=sticky_parameter,
            use_correlation_id=use_correlation_id,
        )
        self._release_policies(before)
        return state

    def _split(
        self,
        name: str,
        targets: Sequence[Target],
        *,
        sticky_parameter: str | None,
        use_correlation_id: bool,
        force: bool = False,
    ) -> EndpointState:
        check_sticky(sticky_parameter, use_correlation_id)
        self._check_endpoint_name(name)
        checked, configs = self._check_targets(targets)
        target = configs[checked[0].model]
        most_instances = max(instance_total(c) for c in configs.values())
        library = self._router_library()
        wanted_router = router_config(
            name,
            target,
            self.router_options,
            most_instances,
            native_backend=native_router.backend_name(library) if library is not None else None,
        )
        by_model: dict[str, set[int]] = {}
        for t in checked:
            by_model.setdefault(t.model, set()).add(t.version)
        with self._changing(name, by_model):
            self._check_clients_io(
                name, [(checked[0].label(), configs[checked[0].model])], force=force
            )
            previous = self._read(name)
            added = self._serve_targets(by_model)
            state = EndpointState(
                name=name,
                mode=ROUTED,
                targets=list(checked),
                sticky_parameter=sticky_parameter or None,
                use_correlation_id=bool(use_correlation_id),
                generation=(previous.generation + 1) if previous else 1,
                updated_at=_now(),
            )
            if (
                previous is not None
                and previous.mode == ROUTED
                and self._router_current(name, wanted_router)
                and self._is_ready(name)
            ):
                self._write(state)
                log.info("endpoint %s: routes generation %d", name, state.generation)
                return state
            self._write(state)
            folder = self.repo.path / name
            saved = _snapshot(folder)
            try:
                try:
                    self._write_endpoint(name, wanted_router, router=True, library=library)
                    self._load_endpoint(name, wanted_router)
                except LoadError as exc:
                    if library is None or self.router_options.backend != "auto":
                        raise
                    # e.g. a server on another platform than the one that built it
                    self._record_native_refusal(library, exc)
                    library = None
                    wanted_router = router_config(name, target, self.router_options, most_instances)
                    self._write_endpoint(name, wanted_router, router=True)
                    self._load_endpoint(name, wanted_router)
            except ManagerError as exc:
                self._restore(name, previous)
                self._put_back(folder, saved)
                self._take_back(added)
                if isinstance(exc, LoadError):
                    raise EndpointError(
                        f"the router of endpoint {name!r} could not be loaded: {exc}"
                    ) from exc
                raise
            self._remove_legacy_router(name)
            log.info(
                "endpoint %s routed: %s",
                name,
                ", ".join(f"{t.label()}={t.weight:g}" for t in checked),
            )
            if library is None and target.model_transaction_policy.decoupled:
                log.warning(
                    "endpoint %s streams through the Python router: Triton's python_backend "
                    "can deadlock a stub whose threads read several BLS streams at once "
                    "(the endpoint then stops answering); the native router does not "
                    "(`tritonctl router build` needs a C++ compiler)",
                    name,
                )
            return state

    def set_weights(self, name: str, targets: Sequence[Target]) -> EndpointState:
        """New weights for a routed endpoint's targets (same targets; the order given is
        the order of the sticky ranges). Only the routes file changes. Refused
        (RolloutError) while a rollout of ``name`` runs."""
        self._refuse_during_rollout(name, "re-weighted")
        checked = [t if isinstance(t, Target) else Target(*t) for t in targets]
        with self._lock(name):
            state = self.get(name)
            if state.mode != ROUTED:
                raise EndpointError(
                    f"endpoint {name!r} is pinned to {state.targets[0].label()}: use split "
                    "to route it to several targets"
                )
            check_listed_once(checked)
            if {t.key for t in checked} != {t.key for t in state.targets}:
                raise EndpointError(
                    f"endpoint {name!r} routes to "
                    f"{', '.join(t.label() for t in state.targets)}; set_weights takes the same "
                    "targets (use split to change them)"
                )
            check_total_weight(checked)
            new = EndpointState(
                name=name,
                mode=ROUTED,
                targets=checked,
                sticky_parameter=state.sticky_parameter,
                use_correlation_id=state.use_correlation_id,
                generation=state.generation + 1,
                updated_at=_now(),
            )
            self._write(new)
            log.info(
                "endpoint %s weights: %s",
                name,
                ", ".join(f"{t.label()}={t.weight:g}" for t in checked),
            )
            return new

    def ensure(self, name: str) -> EndpointState:
        """Serve endpoint ``name`` as its routes file says (e.g. after a server restart):
        its targets, the router if routed, the ensemble."""
        state = self.get(name)
        wanted: dict[str, set[int]] = {}
        for t in state.targets:
            wanted.setdefault(t.model, set()).add(t.version)
        with self._admitted(wanted):
            if state.mode == PINNED:
                target = state.targets[0]
                return self._switch(name, target.model, target.version, force=True)
            return self._split(
                name,
                state.targets,
                sticky_parameter=state.sticky_parameter,
                use_correlation_id=state.use_correlation_id,
                force=True,
            )

    def restore_all(self) -> Sequence[EndpointState]:
        """:meth:`ensure` every endpoint of the repository (a server started in explicit
        mode serves nothing until told). Each is tried; if any fails, EndpointError names
        each failure and the endpoints that serve again; TritonUnreachableError stops at
        the first. Models no endpoint routes to get
        their own version policy back (where an endpoint change stopped half-way)."""
        restored: builtins.list[EndpointState] = []
        failed: builtins.list[str] = []
        for state in self.list():
            try:
                restored.append(self.ensure(state.name))
            except TritonUnreachableError:
                raise  # no server: the next endpoints would fail the same way
            except ManagerError as exc:
                log.info("endpoint %s not restored: %s", state.name, exc)  # raised below
                failed.append(f"{state.name}: {exc}")
        self._release_policies(None)  # what a change that stopped half-way left
        if failed:
            serving = ", ".join(s.name for s in restored) or "none"
            raise EndpointError(
                f"{len(failed)} endpoint(s) not restored: {'; '.join(failed)} "
                f"(serving again: {serving})"
            )
        return restored

    def delete(self, name: str) -> None:
        """Unload and remove endpoint ``name`` (its targets keep serving). Refused
        (RolloutError) while a rollout of ``name`` runs."""
        validate_model_name(name, what="endpoint name")
        self._refuse_during_rollout(name, "deleted")
        with self._lock(name):
            before = self._read(name)
            if before is None and not is_endpoint_folder(self.repo, name):
                raise EndpointNotFoundError(f"no endpoint named {name!r} in {self.repo.path}")
            self._unload_if_loaded(name)
            if is_endpoint_folder(self.repo, name):
                self._remove_folder(name)
            self._remove_legacy_router(name)
            self._remove_routes(name)
            RolloutStore(self.repo).forget(name)
            log.info("endpoint %s deleted", name)
        self._release_policies(before)

    # ---------------------------------------------------------------- helpers

    def _release_policies(self, before: EndpointState | None) -> None:
        """The models ``before``'s targets were on that no endpoint routes to any more get
        their owner's version policy back in config.pbtxt (Triton keeps serving what it
        serves until the model is loaded again); so do those an endpoint change that died
        half-way left with a policy of its own. Each is decided under the model's lock,
        which a change in progress holds until its routes are written."""
        candidates = {t.model for t in before.targets} if before is not None else set()
        candidates |= kept_models(self.repo.path)
        for model in sorted(candidates):
            if not has_owner_policy(self.repo.path, model) or not self.repo.has_model(model):
                continue
            with self.repo.lock(model):
                if any(m == model for m, _ in self.all_target_versions()):
                    continue
                path = self.repo.config_path(model)
                config = read_config(path)
                restored = with_owner_policy(self.repo.path, model, config)
                if restored != config:
                    write_config(path, restored)
                log.info("%s: no endpoint routes to it; its own version policy is back", model)

    def _refuse_during_rollout(self, name: str, what: str) -> None:
        """A rollout's driver would undo the change (or re-create a deleted endpoint) at
        its next stage: only the driver changes an endpoint while its rollout runs."""
        if self.rollout_driver:
            return
        state = RolloutStore(self.repo).load(name)
        if state is not None and state.status in ROLLOUT_ACTIVE:
            raise RolloutError(
                f"endpoint {name!r} cannot be {what}: its rollout to {state.model}:"
                f"{state.new_version} is {state.status} at {state.weight} %; finish it first "
                f"(tritonctl rollout promote|abort {name})"
            )

    def _apply(
        self,
        name: str,
        previous: EndpointState | None,
        state: EndpointState,
        config: mc.ModelConfig,
        *,
        write: bool = True,
    ) -> None:
        """Write ``state`` (unless written already) and the ensemble, then (re)load it;
        on failure put the previous routes and endpoint folder back."""
        folder = self.repo.path / name
        config_path = folder / CONFIG_FILE
        old_config = config_path.read_text() if config_path.is_file() else None
        if write:
            self._write(state)
        if old_config == config_to_text(config) and self._serves(name, config):
            return  # the ensemble already calls what it should
        saved = _snapshot(folder)
        try:
            self._write_endpoint(name, config)
            self._load_endpoint(name, config)
        except ManagerError as exc:
            log.error("endpoint %s: %s; restoring the previous routes", name, exc)
            self._put_back(folder, saved)
            self._restore(name, previous)
            if isinstance(exc, LoadError):
                raise EndpointError(f"endpoint {name!r} could not be loaded: {exc}") from exc
            raise

    def _restore(self, name: str, previous: EndpointState | None) -> None:
        if previous is None:
            self._remove_routes(name)
        else:
            self._write(previous)


__all__ = [
    "ENDPOINT_KIND",
    "ROUTER_KIND",
    "ROUTER_SUFFIX",
    "EndpointState",
    "Endpoints",
    "ModelControl",
    "RouterOptions",
    "Signature",
    "Target",
    "check_same_io",
    "endpoint_config",
    "is_endpoint_folder",
    "native_refusal",
    "native_routes_text",
    "policy_versions",
    "router_config",
    "router_name",
    "routes_relpath",
    "startup_models",
    "with_versions",
]
