"""Rollouts: move an endpoint's traffic from one model version to another, stage by stage.

The weights go 5 -> 15 -> 30 -> 50 -> 75 -> 90 -> 100 % (by default). At each stage the
driver reads Triton's per-version statistics of the two versions and gates:

* error rate of the new version above ``max_error_rate`` -> roll back,
* mean request latency of the new version above ``max_latency_ratio`` x the old's, and more
  than ``latency_tolerance_ms`` above it -> roll back (the tolerance: a version that gets a
  small share of the traffic answers a little slower per call than one kept busy, likely
  because its instance idles between calls; measured on the embedded server with two copies
  of one model: 0.35 vs 0.25 ms at 5 %, 0.21 vs 0.35 ms at 90 %),
* a golden request answered wrongly by the new version (checked before any traffic) -> roll back,
* for a streaming (decoupled) model, probe requests at the end of each stage answered with an
  error by the new version and not by the old -> roll back (Triton's statistics count a
  stream's error responses as successes).

Before any traffic the new version is also warmed up: ``warmup_requests`` requests (the
golden inputs, else synthetic ones) go straight to it, so that its first calls (lazy
initialization, first-use allocation, kernel selection on a GPU) are not counted against
it by the latency gate. The stage baselines are taken after the warm-up. A server that
stops answering mid-stage (a restart) is waited for; once it serves both versions again
the new one is warmed up again and the stage counted anew.

Rolling back puts 100 % on the old version, pins the endpoint to it and unloads the new
version. At 100 % the endpoint is pinned to the new version (no router in the path) and the
old version is unloaded. Every transition is written to
``<repo>/.tritonctl/rollouts/<endpoint>.json`` before it is acted on, so a driver that dies
can be resumed (or rolled back) from the recorded state.

Whether a rollout's driver lives: the driver records its pid and start time, where it runs
(the hostname, and the boot id and PID namespace that its pid belongs to) and, every
``HEARTBEAT_S`` seconds while it drives, a heartbeat. A process in the same PID namespace
checks the pid (a driver that crashed is seen dead at once); one elsewhere (another
container, another host sharing the repository) cannot, and takes the driver for alive
while its heartbeat is younger than ``DRIVER_LEASE_S``. Taking a rollout over (checking
that its driver is dead, then recording oneself) happens under two locks: the driver lock
(``flock``, held for as long as one drives, shared by every process of one kernel) and a
claim lock (a file created exclusively, which works where ``flock`` does not reach, e.g.
some network or VM file shares); a driver that finds itself replaced in the state all the
same stops at once, touching nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import psutil
from filelock import FileLock, SoftFileLock, Timeout

from manager.errors import (
    ManagerError,
    ModelNotFoundError,
    RolloutError,
    RolloutNotFoundError,
    TritonUnreachableError,
)
from manager.repository import (
    Repository,
    held_if_free,
    write_json_atomic,
    write_text_atomic,
)
from manager.triton import ModelStats

log = logging.getLogger(__name__)

DEFAULT_STAGES: tuple[int, ...] = (5, 15, 30, 50, 75, 90, 100)
STREAM_PROBES = 3
"""Probe requests a streaming model's new version gets at the end of each stage."""
ACTIVE = ("starting", "running")
FINAL = ("promoted", "rolled_back")
HEARTBEAT_S = 5.0
"""How often a driver records that it lives (besides every write of the state)."""
DRIVER_LEASE_S = 30.0
"""How long a driver that runs elsewhere (another PID namespace or host: its pid cannot be
checked) counts as alive after its last heartbeat. Six heartbeats: a driver that misses a
few (a slow file share) is not taken over; one that died is, half a minute later. The
hosts' clocks must agree to within a few seconds."""
CLAIM_WAIT_S = 10.0
"""How long taking a rollout over waits for another process taking it over (it holds the
claim lock only to read and write the state once)."""


@functools.lru_cache(maxsize=1)
def this_node() -> str:
    """Where the pids of this process's PID namespace mean something: the boot id of the
    kernel and the PID namespace (Linux), else the hostname and the boot time. Two
    processes with the same node can check each other's pid."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    if boot and namespace:
        return f"{boot}/{namespace}"
    return f"{socket.gethostname()}/boot {psutil.boot_time():.0f}"


def _stamp(at: float | None = None) -> str:
    """A heartbeat time: UTC, ISO 8601, to the millisecond."""
    moment = datetime.fromtimestamp(time.time() if at is None else at, timezone.utc)
    return moment.isoformat(timespec="milliseconds")


def _age(stamp: str, now: float | None = None) -> float | None:
    """Seconds since ``stamp`` (one of :func:`_stamp`'s), None if it is no time."""
    try:
        then = datetime.fromisoformat(stamp).timestamp()
    except (TypeError, ValueError):
        return None
    return (time.time() if now is None else now) - then


@dataclass(frozen=True)
class Counters:
    """Cumulative per-version counters, as Triton's statistics report them:
    ``success_ns`` the time of successful requests end to end in the server (queueing
    included), ``compute_ns`` the part the version itself took (input, inference and
    output; 0 where not read)."""

    success: int = 0
    fail: int = 0
    success_ns: int = 0
    compute_ns: int = 0

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            self.success - other.success,
            self.fail - other.fail,
            self.success_ns - other.success_ns,
            self.compute_ns - other.compute_ns,
        )

    @property
    def requests(self) -> int:
        return self.success + self.fail

    @property
    def error_rate(self) -> float:
        return self.fail / self.requests if self.requests else 0.0

    @property
    def mean_ms(self) -> float:
        return self.success_ns / self.success / 1e6 if self.success else 0.0

    @property
    def compute_ms(self) -> float:
        return self.compute_ns / self.success / 1e6 if self.success else 0.0


@dataclass
class RolloutPolicy:
    stages: tuple[int, ...] = DEFAULT_STAGES
    stage_seconds: float = 60.0
    min_requests: int = 20
    max_error_rate: float = 0.01
    max_latency_ratio: float = 1.5
    # a slower mean within this many ms of the old version's never rolls back
    latency_tolerance_ms: float = 0.5
    # a stage that has not seen min_requests on the new version by this many stage
    # lengths is rolled back: a rollout never promotes what it could not observe
    max_stage_wait: float = 10.0
    golden_dir: str | None = None
    # requests sent straight to the new version before the first stage (not gated)
    warmup_requests: int = 10
    # sticky rollouts: a key (this request parameter, or the correlation id) stays on one
    # version within a stage and, as the weight rises, only ever moves from old to new
    sticky_parameter: str | None = None
    use_correlation_id: bool = False

    def __post_init__(self) -> None:
        stages = tuple(int(s) for s in self.stages)
        if (
            not stages
            or any(s <= 0 or s > 100 for s in stages)
            or list(stages) != sorted(set(stages))
        ):
            raise RolloutError(f"stages must rise strictly within 1..100, got {list(self.stages)}")
        if stages[-1] != 100:
            stages = (*stages, 100)
        self.stages = stages
        if self.stage_seconds < 0 or self.min_requests < 0 or self.warmup_requests < 0:
            raise RolloutError(
                "stage seconds, min requests and warm-up requests must not be negative"
            )
        if not 0 <= self.max_error_rate <= 1:
            raise RolloutError(f"max error rate must be within 0..1, got {self.max_error_rate}")
        if self.max_latency_ratio <= 0:
            raise RolloutError(f"max latency ratio must be positive, got {self.max_latency_ratio}")
        if self.latency_tolerance_ms < 0:
            raise RolloutError(
                f"latency tolerance must not be negative, got {self.latency_tolerance_ms}"
            )
        if self.sticky_parameter is not None:
            from manager.endpoints import STICKY_PARAMETER_RE

            if not STICKY_PARAMETER_RE.fullmatch(self.sticky_parameter):
                raise RolloutError(
                    f"sticky parameter {self.sticky_parameter!r}: use 1-128 letters, digits, "
                    "'_', '.', ':' or '-'"
                )
            if self.use_correlation_id:
                raise RolloutError("route by a sticky parameter or by the correlation id, not both")
        if self.golden_dir:
            # the worker that drives the rollout, or resumes it, runs from another folder
            self.golden_dir = str(Path(self.golden_dir).expanduser().resolve())

    def differences(self, other: RolloutPolicy, only: Iterable[str] | None = None) -> list[str]:
        """``name: mine (other's)`` for every setting that differs from ``other``'s (of
        the settings named in ``only``, if given)."""
        mine, theirs = asdict(self), asdict(other)
        keys = [key for key in mine if only is None or key in set(only)]
        return [f"{key}: {mine[key]} ({theirs[key]})" for key in keys if mine[key] != theirs[key]]


class RollbackIncompleteError(RolloutError):
    """A rollback could not switch the endpoint back: the rollout stays active."""


@dataclass
class StageRecord:
    weight: int
    started_at: str
    new: dict[str, Any] = field(default_factory=dict)
    old: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""


# what a rollback that could not switch the endpoint back adds to the rollout's reason
NOT_ROLLED_BACK = "; not rolled back yet: "


@dataclass
class RolloutState:
    endpoint: str
    model: str
    old_version: int
    new_version: int
    policy: RolloutPolicy
    status: str = "starting"  # starting | running | promoted | rolled_back
    stage_index: int = -1  # index into policy.stages of the weight now applied
    reason: str = ""
    driver_pid: int = 0
    driver_create_time: float = 0.0
    # where the driver runs: its hostname, and its node (this_node(): whether its pid can
    # be checked here); "" in a state recorded before they were
    driver_host: str = ""
    driver_node: str = ""
    driver_heartbeat: str = ""  # when the driver last said it lives (UTC, ISO 8601)
    requested: str = ""  # "promote" or "abort", set by another process for the driver
    # "promote" or "rollback" once the driver has decided and begun to carry it out: a
    # driver that dies on the way leaves it to the next one to finish, not to undo
    ending: str = ""
    baseline_new: dict[str, int] = field(default_factory=dict)
    baseline_old: dict[str, int] = field(default_factory=dict)
    history: list[StageRecord] = field(default_factory=list)
    warmup: str = ""  # what the warm-up of the new version saw
    started_at: str = ""
    updated_at: str = ""

    @property
    def weight(self) -> int:
        return self.policy.stages[self.stage_index] if self.stage_index >= 0 else 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["weight"] = self.weight
        data["weights"] = {
            f"{self.model}:{self.old_version}": 100 - self.weight,
            f"{self.model}:{self.new_version}": self.weight,
        }
        data["driver_alive"] = self.driver_alive()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutState:
        data = dict(data)
        for derived in ("weight", "weights", "driver_alive"):
            data.pop(derived, None)
        policy = _policy_from(data.pop("policy"))
        history = [StageRecord(**_known(StageRecord, h)) for h in data.pop("history", [])]
        return cls(policy=policy, history=history, **_known(cls, data))

    def driver_local(self) -> bool:
        """Whether the driver's pid can be checked here: it runs (or ran) in this PID
        namespace of this kernel, or was recorded before where it runs was."""
        return not self.driver_node or self.driver_node == this_node()

    def driver_seen_ago(self, now: float | None = None) -> float | None:
        """Seconds since the driver's last heartbeat (None: none recorded)."""
        return _age(self.driver_heartbeat, now) if self.driver_heartbeat else None

    def driver_alive(self, now: float | None = None) -> bool:
        """Whether the recorded driver lives: its pid, checked here when it runs in this
        PID namespace (a driver that crashed is dead at once, whatever its heartbeat);
        else its heartbeat, younger than DRIVER_LEASE_S."""
        if not self.driver_pid:
            return False
        if not self.driver_local():
            age = self.driver_seen_ago(now)
            return age is not None and age < DRIVER_LEASE_S
        try:
            proc = psutil.Process(self.driver_pid)
            return (
                abs(proc.create_time() - self.driver_create_time) < 0.5
                and proc.is_running()
                and proc.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False

    def driver_is(self, me: DriverId) -> bool:
        """Whether ``me`` is the recorded driver."""
        fields = ("driver_pid", "driver_create_time", "driver_node")
        return me.recorded_in({name: getattr(self, name) for name in fields})

    def describe_driver(self, now: float | None = None) -> str:
        """Where the driver runs and when it last reported, e.g. ``pid 42 on ctl-1 (here),
        last report 3 s ago``; "" when none is recorded."""
        if not self.driver_pid:
            return ""
        text = f"pid {self.driver_pid}"
        if self.driver_host:
            text += f" on {self.driver_host}"
        text += " (here)" if self.driver_local() else " (another host or PID namespace)"
        age = self.driver_seen_ago(now)
        if age is not None:
            text += f", last report {max(age, 0.0):.0f} s ago ({self.driver_heartbeat})"
        return text


@dataclass(frozen=True)
class DriverId:
    """A driving process, as a rollout's state records it."""

    pid: int
    create_time: float
    host: str
    node: str

    @classmethod
    def current(cls) -> DriverId:
        me = psutil.Process(os.getpid())
        return cls(me.pid, me.create_time(), socket.gethostname(), this_node())

    def record(self, state: RolloutState) -> None:
        state.driver_pid, state.driver_create_time = self.pid, self.create_time
        state.driver_host, state.driver_node = self.host, self.node
        state.driver_heartbeat = _stamp()

    def recorded_in(self, data: dict[str, Any]) -> bool:
        """Whether a state's record (its JSON) names this process as the driver."""
        return (
            data.get("driver_pid") == self.pid
            and abs(float(data.get("driver_create_time") or 0.0) - self.create_time) < 0.5
            and data.get("driver_node", "") in ("", self.node)
        )


class DriverBusyError(RolloutError):
    """Another process drives the rollout (holds its driver lock, or is recorded as its
    driver and lives)."""


class DriverReplacedError(RolloutError):
    """The state names another driver than this process: it took the rollout over (this
    one was taken for dead). This one stops, touching nothing more."""


def _went_back(now: Counters, baseline: Counters) -> bool:
    return now.success < baseline.success or now.fail < baseline.fail


def _policy_from(data: dict[str, Any]) -> RolloutPolicy:
    return RolloutPolicy(**{**_known(RolloutPolicy, data), "stages": tuple(data["stages"])})


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``data`` that are fields of dataclass ``cls``: a state recorded by a
    later tritonctl (with fields this one does not know) still reads."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        log.debug("rollout state: ignoring fields %s of %s", ", ".join(unknown), cls.__name__)
    return {k: v for k, v in data.items() if k in names}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class WarmupResult:
    """What the warm-up requests to the new version got."""

    sent: int
    failed: int = 0
    first_error: str = ""

    def describe(self) -> str:
        text = f"{self.sent - self.failed}/{self.sent} warm-up request(s) answered"
        return text + (f"; first error: {self.first_error}" if self.failed else "")


class EndpointControl(Protocol):
    """What the rollout needs from endpoints (``manager.endpoints.Endpoints`` provides it)."""

    def split(
        self,
        name: str,
        targets: list[Any],
        *,
        sticky_parameter: str | None = None,
        use_correlation_id: bool = False,
    ) -> Any: ...
    def set_weights(self, name: str, targets: list[Any]) -> Any: ...
    def switch(
        self, name: str, model: str, version: int | None = None, *, drain: bool = True
    ) -> Any: ...
    def ensure(self, name: str) -> Any: ...


StatsReader = Callable[[str], dict[int, Counters]]  # model -> {version: counters}


class _Statistics(Protocol):
    def statistics(self, name: str | None = None) -> list[ModelStats]: ...


def stats_reader(control: _Statistics) -> StatsReader:
    """Per-version success/fail counters of a model, from Triton's statistics."""

    def read(model: str) -> dict[int, Counters]:
        return {
            s.version: Counters(
                s.success_count,
                s.fail_count,
                s.success_ns,
                s.compute_input_ns + s.compute_infer_ns + s.compute_output_ns,
            )
            for s in control.statistics(model)
            if s.name == model and s.version is not None
        }

    return read


VersionRetirer = Callable[[str, int], object]  # (model, version) to stop serving
# model -> seconds its sequence batcher keeps an idle sequence (0: the model is stateless)
SequenceIdle = Callable[[str], float]
GoldenRunner = Callable[[str, int], None]  # (model, version); raises on mismatch
WarmupRunner = Callable[[str, int, int], WarmupResult]  # (model, version, requests)


def wait_quiet(
    served: Callable[[], int],
    idle: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll: float = 0.5,
) -> bool:
    """Wait until ``served()``, the count of requests a model version answered, has not
    changed for ``idle`` seconds, its sequence batcher's idle time: every sequence it
    had under way has ended, or been dropped by Triton. False after five such periods
    with requests still coming (a client that never ends its sequence). A failure of
    ``served`` (ManagerError) is raised."""
    last = served()
    start = quiet_since = clock()
    while clock() - quiet_since < idle:
        if clock() - start >= 5 * idle:
            return False
        sleep(min(poll, idle / 4))
        now = served()
        if now != last:
            last, quiet_since = now, clock()
    return True


class RolloutStore:
    """Where rollout state lives: ``<repo>/.tritonctl/rollouts/<endpoint>.json``."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.root = repo.meta_dir / "rollouts"

    def path(self, endpoint: str) -> Path:
        return self.root / f"{endpoint}.json"

    def request_path(self, endpoint: str) -> Path:
        """Where another process asks the driver to promote or abort: a file of its own,
        so that the driver's own writes of the state can never overwrite a request."""
        return self.root / f"{endpoint}.request"

    def request(self, endpoint: str, action: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.request_path(endpoint), action + "\n")

    def requested(self, endpoint: str) -> str:
        """The pending request for ``endpoint``'s driver, or ""."""
        try:
            return self.request_path(endpoint).read_text().strip()
        except FileNotFoundError:
            return ""

    def clear_request(self, endpoint: str) -> None:
        self.request_path(endpoint).unlink(missing_ok=True)

    def forget(self, endpoint: str) -> None:
        """Remove the records of ``endpoint``'s last rollout (the endpoint is deleted)."""
        for suffix in (".json", ".request", ".log", ".driver.lock", ".start.lock", ".claim.lock"):
            (self.root / f"{endpoint}{suffix}").unlink(missing_ok=True)

    def driver_lock(self, endpoint: str) -> FileLock:
        """Held by the process that drives ``endpoint``'s rollout, for as long as it does
        (the system drops it when that process dies, however it dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / f"{endpoint}.driver.lock"))

    def start_lock(self, endpoint: str) -> FileLock:
        """Held while a rollout of ``endpoint`` is checked and recorded, so that two
        starts at once cannot both record one."""
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / f"{endpoint}.start.lock"), timeout=30)

    @contextmanager
    def driving(self, endpoint: str) -> Iterator[bool]:
        """Holds ``endpoint``'s driver lock for the block unless another process holds it:
        yields whether this one does."""
        with held_if_free(self.driver_lock(endpoint)) as held:
            yield held

    def driven(self, endpoint: str) -> bool:
        """Whether some process drives ``endpoint``'s rollout now (holds its driver lock)."""
        with self.driving(endpoint) as mine:
            return not mine

    def claim_lock(self, endpoint: str) -> SoftFileLock:
        """Held while a process checks that ``endpoint``'s driver is dead and records itself
        instead: a file created exclusively, so that processes whose ``flock`` does not
        reach each other (other hosts on some file shares) cannot both take over."""
        self.root.mkdir(parents=True, exist_ok=True)
        return SoftFileLock(str(self.root / f"{endpoint}.claim.lock"), timeout=CLAIM_WAIT_S)

    def take_over(self, endpoint: str, me: DriverId) -> RolloutState | None:
        """Record ``me`` as the driver of ``endpoint``'s active rollout, atomically with
        the check that no other driver lives. Returns the state as recorded (as it is when
        the rollout is over: nothing recorded then), None when there is none; raises
        DriverBusyError when another driver lives."""
        lock = self.claim_lock(endpoint)
        try:
            lock.acquire()
        except Timeout as exc:
            raise RolloutError(
                f"another process has been taking over the rollout of {endpoint!r} for "
                f"{CLAIM_WAIT_S:.0f} s; if none is, remove {lock.lock_file}"
            ) from exc
        try:
            state = self.load(endpoint)
            if state is None or state.status in FINAL:
                return state
            if state.driver_alive() and not state.driver_is(me):
                raise DriverBusyError(
                    f"the rollout of {endpoint!r} is driven by {state.describe_driver()}"
                )
            me.record(state)
            self.save(state)
            return state
        finally:
            lock.release()

    def raw(self, endpoint: str) -> dict[str, Any]:
        """The state of ``endpoint`` as written ({} when there is none)."""
        try:
            data = json.loads(self.path(endpoint).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RolloutError(f"rollout state {self.path(endpoint)} is unreadable: {exc}") from exc
        return data if isinstance(data, dict) else {}

    def beat(self, endpoint: str, me: DriverId) -> bool:
        """Record a heartbeat of ``me``, driver of ``endpoint``; False (nothing written)
        when the state names another driver. The caller serializes this with its own
        writes of the state."""
        data = self.raw(endpoint)
        if not me.recorded_in(data):
            return False
        data["driver_heartbeat"] = _stamp()
        write_json_atomic(self.path(endpoint), data)
        return True

    def load(self, endpoint: str) -> RolloutState | None:
        path = self.path(endpoint)
        if not path.is_file():
            return None
        try:
            state = RolloutState.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise RolloutError(f"rollout state {path} is unreadable: {exc}") from exc
        if state.status in ACTIVE:
            state.requested = self.requested(endpoint) or state.requested
        return state

    def save(self, state: RolloutState) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        state.updated_at = _now()
        write_json_atomic(self.path(state.endpoint), state.to_dict())

    def all(self) -> list[RolloutState]:
        """The last recorded rollout of every endpoint, by endpoint name."""
        if not self.root.is_dir():
            return []
        states = [self.load(p.stem) for p in sorted(self.root.glob("*.json"))]
        return [s for s in states if s is not None]

    def active(self) -> list[RolloutState]:
        return [s for s in self.all() if s.status in ACTIVE]


class RolloutDriver:
    """Runs one endpoint's rollout to its end, writing every step down first."""

    def __init__(
        self,
        store: RolloutStore,
        endpoints: EndpointControl,
        stats: StatsReader,
        retire: VersionRetirer,
        *,
        golden: GoldenRunner | None = None,
        warmup: WarmupRunner | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        poll_seconds: float = 0.5,
        on_stage: Callable[[RolloutState], None] | None = None,
        unreachable_grace_s: float = 120.0,
        sequence_idle: SequenceIdle | None = None,
        streaming: Callable[[str], bool] | None = None,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.store = store
        self.endpoints = endpoints
        self.stats = stats
        self.retire = retire
        self.golden = golden
        self.warmup = warmup
        self.sleep = sleep
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.on_stage = on_stage
        # how long a stage waits for a server that stopped answering, or for the model
        # to be served again (a restart with `--restore`), before it rolls back
        self.unreachable_grace_s = unreachable_grace_s
        # stateful models: the live sequences of a version leaving end there first
        self.sequence_idle = sequence_idle
        # whether a model answers with a stream (decoupled): Triton's statistics do not
        # count the error responses of a stream, so each stage probes the new version
        self.streaming = streaming
        self.heartbeat_s = heartbeat_s
        # while this driver drives: who it is in the state, and what its heartbeat saw
        self._me: DriverId | None = None
        self._replaced = threading.Event()
        self._write = threading.Lock()  # the heartbeat's writes and the driver's

    # -- entry points -------------------------------------------------------------
    def begin(
        self, endpoint: str, model: str, old_version: int, new_version: int, policy: RolloutPolicy
    ) -> RolloutState:
        """Record a new rollout (refusing one over an active rollout) and return its state."""
        current = self.store.load(endpoint)
        if current is not None and current.status in ACTIVE:
            raise RolloutError(
                f"endpoint {endpoint!r} already has a rollout to version {current.new_version} "
                f"({current.status}, {current.weight} %); promote, abort or resume it first"
            )
        if old_version == new_version:
            raise RolloutError(f"endpoint {endpoint!r} already serves {model}:{new_version}")
        state = RolloutState(endpoint, model, old_version, new_version, policy, started_at=_now())
        self.store.clear_request(endpoint)
        self._save(state)
        return state

    def run(self, state: RolloutState) -> RolloutState:
        """Drive ``state`` to ``promoted`` or ``rolled_back``; resumes where it stands.

        One process at a time drives a rollout: another one driving it already is an
        error (two workers started for one rollout at once: the second one stops here)."""
        with self.driving(state) as taken:
            if taken.status in FINAL:
                return taken
            return self._run(taken)

    @contextmanager
    def driving(self, state: RolloutState) -> Iterator[RolloutState]:
        """Take ``state``'s rollout over for the block: hold its driver lock, record this
        process as its driver (refused, DriverBusyError, while another one lives) and keep a
        heartbeat. Yields the state as the last driver left it, not as the caller read it
        (as it is when the rollout is over: then nothing is recorded)."""
        endpoint = state.endpoint
        with self.store.driving(endpoint) as mine:
            if not mine:
                raise DriverBusyError(f"the rollout of {endpoint!r} is driven by another process")
            me = DriverId.current()
            taken = self.store.take_over(endpoint, me) or state
            if taken.status in FINAL:
                yield taken
                return
            self._me = me
            self._replaced.clear()
            stop = threading.Event()
            beater = threading.Thread(
                target=self._keep_beating,
                args=(endpoint, me, stop),
                name=f"rollout-heartbeat-{endpoint}",
                daemon=True,
            )
            beater.start()
            try:
                yield taken
            finally:
                stop.set()
                beater.join()
                self._me = None

    def _keep_beating(self, endpoint: str, me: DriverId, stop: threading.Event) -> None:
        """Record a heartbeat every ``heartbeat_s`` seconds until ``stop``, however long
        the driver waits in a step (a load, a drain, a server outage); notes it when the
        state names another driver."""
        while not stop.wait(self.heartbeat_s):
            try:
                with self._write:
                    if not self.store.beat(endpoint, me):
                        self._replaced.set()
                        log.error(
                            "rollout %s: another process took the rollout over; stopping",
                            endpoint,
                        )
                        return
            except (OSError, ManagerError) as exc:  # the next beat tries again
                log.warning("rollout %s: heartbeat not recorded: %s", endpoint, exc)

    def _save(self, state: RolloutState) -> None:
        """Write ``state`` down; while driving, only as long as it names this process as
        its driver (else DriverReplacedError: another process took over, taking this one
        for dead), with a heartbeat."""
        me = self._me
        if me is None:
            self.store.save(state)
            return
        with self._write:
            recorded = self.store.raw(state.endpoint)
            if self._replaced.is_set() or not me.recorded_in(recorded):
                self._replaced.set()
                raise self._replaced_error(state, recorded)
            state.driver_heartbeat = _stamp()
            self.store.save(state)

    def _replaced_error(self, state: RolloutState, recorded: dict[str, Any]) -> DriverReplacedError:
        try:
            other = RolloutState.from_dict(recorded).describe_driver() if recorded else ""
        except (TypeError, ValueError, KeyError):
            other = ""
        return DriverReplacedError(
            f"the rollout of {state.endpoint!r} was taken over by another driver "
            f"({other or 'none recorded'}); this one stops"
        )

    def _check_driving(self, state: RolloutState) -> None:
        """Raise DriverReplacedError once the heartbeat found another driver recorded."""
        if self._me is not None and self._replaced.is_set():
            raise self._replaced_error(state, self.store.raw(state.endpoint))

    def _run(self, state: RolloutState) -> RolloutState:
        try:
            if state.ending:  # a driver died ending the rollout: finish that, not undo it
                asked = self._honour_request(state)
                if asked is not None:
                    return asked
                reason = state.reason.split(NOT_ROLLED_BACK)[0]
                if state.ending == "promote":
                    return self.promote(state, reason or "promoted")
                return self.rollback(state, reason or "rolled back")
            if state.status == "starting":
                self._prepare(state)
            elif state.history and not state.history[-1].verdict:
                # resumed in the middle of a stage: it is watched and gated again from now
                self._reenter_stage(state)
                verdict = self._watch_stage(state)
                if verdict:
                    return self.rollback(state, verdict)
            while state.status == "running":
                asked = self._honour_request(state)
                if asked is not None:
                    return asked
                nxt = state.stage_index + 1
                if nxt >= len(state.policy.stages) or state.policy.stages[nxt] == 100:
                    return self.promote(state, "all stages healthy")
                self._enter_stage(state, nxt)
                verdict = self._watch_stage(state)
                if verdict:
                    return self.rollback(state, verdict)
            return state
        except ManagerError as exc:
            if state.status in ACTIVE and not isinstance(
                exc, (RollbackIncompleteError, DriverReplacedError)
            ):
                log.error("rollout of %s failed: %s; rolling back", state.endpoint, exc)
                return self.rollback(state, f"error: {exc}")
            raise

    # -- steps ------------------------------------------------------------------------
    def _requested(self, state: RolloutState) -> str:
        return self.store.requested(state.endpoint)

    def _honour_request(self, state: RolloutState) -> RolloutState | None:
        """Roll back or promote as another process asked; None when none asked."""
        request = self._requested(state)
        if request == "abort":
            return self.rollback(state, "aborted by request")
        if request == "promote":
            return self.promote(state, "promoted by request")
        return None

    def _targets(self, state: RolloutState, weight: int) -> list[Any]:
        from manager.endpoints import Target

        return [
            Target(state.model, state.old_version, float(100 - weight)),
            Target(state.model, state.new_version, float(weight)),
        ]

    def _prepare(self, state: RolloutState) -> None:
        # load the new version beside the old one, at 0 % of the traffic (sticky: a key's
        # hash falls in the old or the new range, and as the new range grows a key only
        # ever moves from old to new)
        self.endpoints.split(
            state.endpoint,
            self._targets(state, 0),
            sticky_parameter=state.policy.sticky_parameter,
            use_correlation_id=state.policy.use_correlation_id,
        )
        if self.golden is not None:
            try:
                self.golden(state.model, state.new_version)
            except ManagerError as exc:
                self.rollback(state, f"golden check failed: {exc}")
                raise RolloutError(state.reason) from exc
        if self.warmup is not None and state.policy.warmup_requests:
            self._warm_up(state)
        state.status = "running"
        self._save(state)

    def _warm_up(self, state: RolloutState) -> None:
        """Send the warm-up requests; failures are logged, not gated (a synthetic request
        may not suit every model: the stages judge the real traffic), unless every one
        failed while the old version answers the same requests: then the new version is
        broken, and is rolled back before any client reaches it."""
        assert self.warmup is not None
        result = self.warmup(state.model, state.new_version, state.policy.warmup_requests)
        state.warmup = result.describe()
        if result.sent and result.failed == result.sent:
            old = self.warmup(state.model, state.old_version, min(2, result.sent))
            if old.sent and not old.failed:
                self.rollback(
                    state,
                    f"warm-up failed: {state.warmup}; {state.model}:{state.old_version} "
                    "answered the same requests",
                )
                raise RolloutError(state.reason)
        if result.failed:
            log.warning(
                "rollout %s: warm-up of %s:%d: %s",
                state.endpoint,
                state.model,
                state.new_version,
                state.warmup,
            )
        else:
            log.info("rollout %s: %s", state.endpoint, state.warmup)

    def _baseline(self, state: RolloutState) -> None:
        base = self.stats(state.model)
        state.baseline_new = asdict(base.get(state.new_version, Counters()))
        state.baseline_old = asdict(base.get(state.old_version, Counters()))

    def _recover(self, state: RolloutState) -> None:
        """After an outage (a restarted server has reloaded both versions): warm the new
        version up again, as a fresh load is cold, and count the stage from now."""
        self._baseline(state)  # raises while the versions are not served yet
        if self.warmup is not None and state.policy.warmup_requests:
            self._warm_up(state)
            self._baseline(state)

    def _enter_stage(self, state: RolloutState, index: int) -> None:
        weight = state.policy.stages[index]
        self._baseline(state)
        state.stage_index = index
        state.history.append(StageRecord(weight=weight, started_at=_now()))
        self._save(state)
        self.endpoints.set_weights(state.endpoint, self._targets(state, weight))
        log.info("rollout %s: stage %d %%", state.endpoint, weight)
        if self.on_stage:
            self.on_stage(state)

    def _reenter_stage(self, state: RolloutState) -> None:
        """The stage a dead driver left unfinished starts over: its weights applied again
        (the driver may have died before it applied them), counted from now."""
        self._baseline(state)
        record = state.history[-1]
        record.started_at, record.new, record.old = _now(), {}, {}
        self._save(state)
        self.endpoints.set_weights(state.endpoint, self._targets(state, state.weight))
        log.info("rollout %s: stage %d %% resumed", state.endpoint, state.weight)
        if self.on_stage:
            self.on_stage(state)

    def _deltas(self, state: RolloutState) -> tuple[Counters, Counters]:
        now = self.stats(state.model)
        new_now = now.get(state.new_version, Counters())
        old_now = now.get(state.old_version, Counters())
        base_new, base_old = Counters(**state.baseline_new), Counters(**state.baseline_old)
        if _went_back(new_now, base_new) or _went_back(old_now, base_old):
            # the server restarted (or reloaded a version) since the stage began: its
            # counters start again from zero, and so does the stage's count
            log.warning(
                "rollout %s: Triton's counters were reset; stage counted anew", state.endpoint
            )
            state.baseline_new, state.baseline_old = asdict(Counters()), asdict(Counters())
            base_new = base_old = Counters()
        return new_now - base_new, old_now - base_old

    def gate(self, state: RolloutState, new: Counters, old: Counters, *, final: bool) -> str:
        """The reason to roll back, or "" when the stage looks healthy so far."""
        p = state.policy
        if (
            new.fail
            and new.requests >= max(1, min(p.min_requests, 10))
            and new.error_rate > p.max_error_rate
        ):
            return (
                f"error rate of {state.model}:{state.new_version} is {new.error_rate:.1%} "
                f"({new.fail}/{new.requests}) > {p.max_error_rate:.1%}"
            )
        if final and new.success >= p.min_requests and old.success >= p.min_requests:
            # the versions' own compute time: a request's time in the queue depends on
            # the share of the traffic a version has (and, for a sequence model, on
            # the wait for a sequence slot), not on the version
            what, new_ms, old_ms = "compute time", new.compute_ms, old.compute_ms
            if not (new.compute_ns and old.compute_ns):  # a record from before it was read
                what, new_ms, old_ms = "latency", new.mean_ms, old.mean_ms
            ratio = new_ms / old_ms if old_ms > 0 else 0.0
            added = new_ms - old_ms
            if old_ms > 0 and ratio > p.max_latency_ratio and added > p.latency_tolerance_ms:
                return (
                    f"{what} of {state.model}:{state.new_version} is {new_ms:.2f} ms a request, "
                    f"{ratio:.2f}x the old version's {old_ms:.2f} ms > {p.max_latency_ratio}x "
                    f"(+{added:.2f} ms > {p.latency_tolerance_ms:g} ms tolerated)"
                )
        return ""

    def _watch_stage(self, state: RolloutState) -> str:
        p = state.policy
        start = self.clock()
        deadline = start + p.stage_seconds
        give_up = start + max(p.stage_seconds * p.max_stage_wait, p.stage_seconds + 5)
        down_since: float | None = None
        restored = False
        while True:
            self._check_driving(state)
            if self._requested(state):
                return ""  # handled by run()
            try:
                if down_since is not None:
                    self._recover(state)
                new, old = self._deltas(state)
            except (TritonUnreachableError, ModelNotFoundError) as exc:
                # the server is down, or up again and still loading the versions back
                now = self.clock()
                if down_since is None:
                    down_since = now
                    log.warning(
                        "rollout %s: %s; waiting up to %.0f s",
                        state.endpoint,
                        exc,
                        self.unreachable_grace_s,
                    )
                elif now - down_since > self.unreachable_grace_s:
                    raise
                if isinstance(exc, ModelNotFoundError) and not restored:
                    restored = self._serve_again(state)
                self.sleep(self.poll_seconds)
                continue
            now = self.clock()
            if down_since is not None:
                # back, warmed up again and re-baselined: the stage is timed anew
                log.info("rollout %s: the server answers again", state.endpoint)
                down_since = None
                restored = False
                start, deadline = now, now + p.stage_seconds
                give_up = now + max(p.stage_seconds * p.max_stage_wait, p.stage_seconds + 5)
            enough = new.requests >= p.min_requests
            final = now >= deadline and enough
            verdict = self.gate(state, new, old, final=final)
            if final and not verdict:
                verdict = self._probe_stream(state)
            if not verdict and not final and now >= give_up:
                verdict = (
                    f"stage {state.weight} % saw {new.requests} request(s) on the new version "
                    f"in {now - start:.0f} s, fewer than --min-requests {p.min_requests}"
                )
            record = state.history[-1]
            record.new, record.old = asdict(new), asdict(old)
            record.verdict = verdict or ("healthy" if final else "")
            self._save(state)  # `rollout status` shows the stage's numbers as they come
            if verdict or final:
                return verdict
            self.sleep(self.poll_seconds)

    def _probe_stream(self, state: RolloutState) -> str:
        """The reason to roll back a streaming (decoupled) model whose new version answers
        probe requests (the warm-up's: golden inputs, else synthetic ones) with an error
        that the old version does not; "" otherwise. Triton counts a request of a stream
        as a success however it was answered (the Python backend reports an error
        response sent in the stream as a success), so the error-rate gate sees only the
        requests Triton itself failed; the probes look at the answers."""
        if self.warmup is None or self.streaming is None or not self.streaming(state.model):
            return ""
        new = self.warmup(state.model, state.new_version, STREAM_PROBES)
        if not new.failed:
            return ""
        old = self.warmup(state.model, state.old_version, new.sent)
        if old.failed:
            return ""  # the probes do not suit the model: the old version fails them too
        return (
            f"{state.model}:{state.new_version} answered {new.failed} of {new.sent} probe "
            f"request(s) with an error that {state.model}:{state.old_version} answered "
            f"({new.first_error}); a stream's error responses are not in Triton's "
            "statistics, so the error rate does not show them"
        )

    def _serve_again(self, state: RolloutState) -> bool:
        """The server answers but does not serve the versions (restarted without
        ``--restore``): serve the endpoint again at its recorded weights rather than leave
        its clients without it. Returns whether that worked."""
        log.warning(
            "rollout %s: the server does not serve %s; serving the endpoint again as recorded",
            state.endpoint,
            state.model,
        )
        try:
            self.endpoints.ensure(state.endpoint)
        except TritonUnreachableError:
            return False  # gone again: the next poll tries anew
        except ManagerError as exc:
            log.error("rollout %s: cannot serve the endpoint again: %s", state.endpoint, exc)
            return True  # not again: the grace period decides
        return True

    def promote(self, state: RolloutState, reason: str) -> RolloutState:
        """Pin the endpoint to the new version and retire the old one."""
        state.stage_index = len(state.policy.stages) - 1
        state.reason = reason
        state.requested = ""
        state.ending = "promote"
        self._save(state)
        self._drain(state, keep_new=True)
        self.endpoints.switch(state.endpoint, state.model, state.new_version, drain=False)
        self.retire(state.model, state.old_version)
        state.status = "promoted"
        self._save(state)
        self.store.clear_request(state.endpoint)
        log.info(
            "rollout %s: promoted %s:%d (%s)",
            state.endpoint,
            state.model,
            state.new_version,
            reason,
        )
        return state

    def rollback(self, state: RolloutState, reason: str) -> RolloutState:
        """All traffic back on the old version, pinned; the new version unloaded.

        If the endpoint cannot be switched back (no server answers), the rollout stays
        active at its weight, as the endpoint is, with the reason and why the rollback
        did not happen recorded, and the error is raised: an abort (or a resume) tries
        again."""
        state.reason = reason
        state.requested = ""
        state.ending = "rollback"
        self._save(state)
        self._drain(state, keep_new=False)
        try:
            self.endpoints.switch(state.endpoint, state.model, state.old_version, drain=False)
        except ManagerError as exc:
            state.reason = f"{reason}{NOT_ROLLED_BACK}{exc}"
            self._save(state)
            raise RollbackIncompleteError(
                f"the rollout of {state.endpoint!r} is not rolled back: {exc}; it stays at "
                f"{state.weight} % on {state.model}:{state.new_version} until `tritonctl "
                f"rollout abort {state.endpoint}` (or resume) succeeds"
            ) from exc
        state.stage_index = -1
        self.retire(state.model, state.new_version)
        state.status = "rolled_back"
        self._save(state)
        self.store.clear_request(state.endpoint)
        log.warning(
            "rollout %s: rolled back to %s:%d: %s",
            state.endpoint,
            state.model,
            state.old_version,
            reason,
        )
        return state

    def _drain(self, state: RolloutState, *, keep_new: bool) -> None:
        """For a stateful model, before the version that leaves is taken out of the path:
        every new sequence to the version that stays, then wait until the leaving one has
        had no request for as long as its sequence batcher keeps an idle sequence (the
        router keeps each live sequence on the version that saw its start), so that the
        sequences under way end where they began. Gives up after five such periods (a
        client that never ends its sequence), or at once when the server cannot say."""
        idle = self.sequence_idle(state.model) if self.sequence_idle is not None else 0.0
        if idle <= 0 or state.stage_index < 0:  # stateless, or no traffic split yet
            return
        leaving = state.old_version if keep_new else state.new_version
        try:
            self.endpoints.set_weights(state.endpoint, self._targets(state, 100 if keep_new else 0))
            quiet = wait_quiet(
                lambda: self._served(state.model, leaving),
                idle,
                clock=self.clock,
                sleep=self.sleep,
                poll=self.poll_seconds,
            )
        except ManagerError as exc:
            log.warning("rollout %s: sequences not drained: %s", state.endpoint, exc)
            return
        if not quiet:
            log.warning(
                "rollout %s: %s:%d still has sequences under way after %.0f s; going on",
                state.endpoint,
                state.model,
                leaving,
                5 * idle,
            )
            return
        log.info("rollout %s: the sequences on %s:%d ended", state.endpoint, state.model, leaving)

    def _served(self, model: str, version: int) -> int:
        return self.stats(model).get(version, Counters()).requests


def request_action(store: RolloutStore, endpoint: str, action: str) -> RolloutState:
    """Ask the running driver of ``endpoint`` to ``promote`` or ``abort``."""
    if action not in ("promote", "abort"):
        raise RolloutError(f"unknown rollout action {action!r}")
    state = store.load(endpoint)
    if state is None:
        raise RolloutNotFoundError(f"endpoint {endpoint!r} has no rollout recorded")
    if state.status not in ACTIVE:
        raise RolloutError(
            f"endpoint {endpoint!r} has no rollout in progress (the last one {state.status})"
        )
    state.requested = action
    store.request(endpoint, action)
    return state


def newest_version(repo: Repository, model: str) -> int:
    versions = repo.versions(model)
    if not versions:
        raise RolloutError(f"model {model!r} has no version")
    return versions[-1]


def parse_stages(text: str | Sequence[int]) -> tuple[int, ...]:
    if isinstance(text, str):
        try:
            return tuple(int(s) for s in text.split(",") if s.strip())
        except ValueError as exc:
            raise RolloutError(
                f"stages must be integers separated by commas, got {text!r}"
            ) from exc
    return tuple(text)
