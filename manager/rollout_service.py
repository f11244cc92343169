"""Starting, resuming, promoting and aborting rollouts against a Triton server.

This wires :class:`manager.rollout.RolloutDriver` to the real parts: the endpoints of a
repository, Triton's per-version statistics, golden requests. A rollout runs either in
the calling process (``wait=True``) or in a detached ``tritonctl`` worker process that
survives the caller; either way its state is in ``<repo>/.tritonctl/rollouts/``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from manager.budget import resolve_serving_config
from manager.controller import admission
from manager.endpoints import PINNED, Endpoints, EndpointState
from manager.errors import (
    ManagerError,
    ModelNotFoundError,
    RolloutError,
    RolloutNotFoundError,
    TritonUnreachableError,
)
from manager.golden import (
    GoldenCase,
    check,
    check_inputs_match_config,
    check_outputs_match_config,
    load_cases,
    synthetic_case,
)
from manager.infer import infer
from manager.modelconfig import is_decoupled, read_config, sequence_idle_seconds
from manager.repository import CONFIG_FILE, Repository
from manager.rollout import (
    ACTIVE,
    FINAL,
    DriverBusyError,
    RolloutDriver,
    RolloutPolicy,
    RolloutState,
    RolloutStore,
    WarmupResult,
    WarmupRunner,
    request_action,
    stats_reader,
)
from manager.timeouts import OPTIONS, Timeouts
from manager.triton import TritonControl

log = logging.getLogger(__name__)

FINISH_WAIT_S = 120.0
"""How long a promote or abort waits for the rollout's driver to act on it."""


def one_sequence() -> int:
    """A correlation id for a request sent as a whole sequence of its own (a stateful
    model takes only requests of a sequence): random, so as not to meet a client's."""
    return secrets.randbits(62) + 1


def version_caller(
    control: TritonControl, model: str, version: int, config: mc.ModelConfig
) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Calls one model version (``config``: its model's) the way the model takes requests:
    over a gRPC stream if it is decoupled, each request a sequence of its own if it is
    stateful."""
    stream, stateful = is_decoupled(config), sequence_idle_seconds(config) > 0
    # a stream goes over gRPC: the control URL of a server called over HTTP
    url = (control.grpc_url or control.url) if stream else control.url

    def call(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return infer(
            url,
            model,
            inputs,
            version=version,
            stream=stream,
            sequence_id=one_sequence() if stateful else 0,
        )

    return call


def warmup_runner(
    repo: Repository, control: TritonControl, cases: list[GoldenCase] | None = None
) -> WarmupRunner:
    """Warm-up requests straight to a model version: the golden inputs in turn if there
    are any, else synthetic requests (ones; dynamic dims as 1) from the model's config, of
    batch 1 and, for a batching model, of its largest batch in turn (a first batch of a new
    size can be slow too: other kernels, another optimization profile). A stateful model
    gets each request as a sequence of its own, of batch 1."""

    def run(model: str, version: int, count: int) -> WarmupResult:
        config = read_config(repo.path / model / CONFIG_FILE)
        call = version_caller(control, model, version, config)
        stateful = sequence_idle_seconds(config) > 0
        if cases:
            requests = [c.inputs for c in cases]
        else:
            one = synthetic_case(config).inputs
            requests = [one]
            if config.max_batch_size > 1 and not stateful:  # a sequence takes batch 1
                largest = config.max_batch_size
                requests.append({k: np.repeat(v, largest, axis=0) for k, v in one.items()})
        failed, first_error = 0, ""
        for i in range(count):
            try:
                call(requests[i % len(requests)])
            except ManagerError as exc:
                failed += 1
                first_error = first_error or str(exc)
        return WarmupResult(count, failed, first_error)

    return run


def golden_runner(
    repo: Repository, control: TritonControl, cases: list[GoldenCase]
) -> Callable[[str, int], None]:
    """The golden check of a model version: ``cases`` sent straight to it, each answer
    compared with its expected outputs, and (as the smoke test of a publish does) with
    the data types and shapes the model's config declares: Triton passes a Python
    model's outputs on as they are, so a version answering FP64 for an FP32 output
    would reach clients in a type they do not expect."""

    def golden(model: str, version: int) -> None:
        config = read_config(repo.path / model / CONFIG_FILE)
        check_inputs_match_config(config, cases)
        call = version_caller(control, model, version, config)
        label = f"{model}:{version}"
        stream = is_decoupled(config)

        def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            outputs = call(inputs)
            if not stream:  # a stream's outputs are its responses' joined together
                check_outputs_match_config(config, outputs, model=label)
            return outputs

        check(cases, run, model=label)

    return golden


def make_driver(
    repo: Repository,
    control: TritonControl,
    policy: RolloutPolicy | None = None,
    *,
    on_stage: Callable[[RolloutState], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> RolloutDriver:
    # the new version is loaded within the repository's memory budget, if it has one
    config = resolve_serving_config(repo.path)
    endpoints = Endpoints(
        repo, control, rollout_driver=True, admission=admission(control, repo.path, config)
    )
    golden = None
    cases: list[GoldenCase] | None = None
    if policy is not None and policy.golden_dir:
        cases = load_cases(policy.golden_dir)
        golden = golden_runner(repo, control, cases)

    return RolloutDriver(
        RolloutStore(repo),
        endpoints,
        stats_reader(control),
        # a version other endpoints still call keeps serving for them
        functools.partial(endpoints.retire, keep_if_routed=True),
        golden=golden,
        warmup=warmup_runner(repo, control, cases),
        on_stage=on_stage,
        sleep=sleep,
        sequence_idle=lambda model: sequence_idle_seconds(
            read_config(repo.path / model / CONFIG_FILE)
        ),
        streaming=lambda model: is_decoupled(read_config(repo.path / model / CONFIG_FILE)),
    )


def begin_rollout(
    repo: Repository, control: TritonControl, endpoint: str, to_version: int, policy: RolloutPolicy
) -> RolloutState:
    """Record a rollout of ``endpoint`` from its pinned version to ``to_version``.

    A rollout whose driver died is resumed instead when it goes to the same version.
    Nothing is recorded while the server does not answer (TritonUnreachableError).
    """
    store = RolloutStore(repo)
    if store.load(endpoint) is None:
        Endpoints(repo, control).get(endpoint)  # an unknown endpoint leaves no lock file behind
    require_server(control, f"the rollout of {endpoint!r} was not started")
    with store.start_lock(endpoint):
        return _begin_rollout(store, repo, control, endpoint, to_version, policy)


def _begin_rollout(
    store: RolloutStore,
    repo: Repository,
    control: TritonControl,
    endpoint: str,
    to_version: int,
    policy: RolloutPolicy,
) -> RolloutState:
    current = store.load(endpoint)
    if current is not None and current.status in ACTIVE:
        if (
            current.new_version == to_version
            and not current.driver_alive()
            and not store.driven(endpoint)
        ):
            log.info("resuming the rollout of %s to version %d", endpoint, to_version)
            return current
        driver = (
            f"driven by {current.describe_driver()}"
            if current.driver_alive()
            else f"driver {'running' if store.driven(endpoint) else 'not running'}"
        )
        raise RolloutError(
            f"endpoint {endpoint!r} already has a rollout to version {current.new_version} "
            f"({current.status}, {current.weight} %, {driver})"
        )
    state = Endpoints(repo, control).get(endpoint)
    if state.mode != PINNED or len(state.targets) != 1:
        raise RolloutError(
            f"endpoint {endpoint!r} is split across {len(state.targets)} targets; pin it with "
            "`endpoint switch` before a rollout"
        )
    model, old = state.targets[0].model, state.targets[0].version
    if to_version not in repo.versions(model):
        raise ModelNotFoundError(f"model {model!r} has no version {to_version} to roll out")
    return make_driver(repo, control, policy).begin(endpoint, model, old, to_version, policy)


def require_server(control: TritonControl, outcome: str) -> None:
    """Raise TritonUnreachableError (``outcome`` said) unless the server answers: a
    rollout recorded or resumed against no server would only be left half-done, blocking
    its endpoint until the server is back."""
    try:
        control.repository_index()
    except TritonUnreachableError as exc:
        raise TritonUnreachableError(f"{exc}; {outcome}") from exc


def run_rollout(
    repo: Repository,
    control: TritonControl,
    state: RolloutState,
    *,
    on_stage: Callable[[RolloutState], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> RolloutState:
    """Drive ``state`` to its end here. ``sleep`` is what the driver waits with between
    polls (a stop: one that raises there, leaving the rollout at its recorded stage)."""
    return make_driver(repo, control, state.policy, on_stage=on_stage, sleep=sleep).run(state)


WORKER_START_WAIT_S = 15.0


def start_in_background(
    repo: Repository, control: TritonControl, endpoint: str, to_version: int, policy: RolloutPolicy
) -> tuple[RolloutState, int]:
    """:func:`begin_rollout`, then drive it in a detached worker process (what
    ``tritonctl rollout start`` does without ``--wait``). Returns the recorded state and
    the worker's pid."""
    state = begin_rollout(repo, control, endpoint, to_version, policy)
    return state, _spawn_for(repo, control, endpoint)


def resumable(repo: Repository, endpoint: str) -> RolloutState:
    """The rollout of ``endpoint`` if it can be resumed: still active, its driver dead."""
    state = status(repo, endpoint)
    if state.status in FINAL:
        raise RolloutError(f"the rollout of {endpoint!r} is over ({state.status})")
    if state.driver_alive():
        raise DriverBusyError(
            f"the rollout of {endpoint!r} is running: driven by {state.describe_driver()}"
        )
    if RolloutStore(repo).driven(endpoint):
        raise DriverBusyError(f"the rollout of {endpoint!r} is running (its driver starts)")
    return state


def resume_in_background(
    repo: Repository, control: TritonControl, endpoint: str
) -> tuple[RolloutState, int]:
    """Continue a rollout whose driver died in a detached worker, from its recorded stage.
    Returns its state and the worker's pid."""
    state = resumable(repo, endpoint)
    require_server(control, f"the rollout of {endpoint!r} was not resumed")
    return state, _spawn_for(repo, control, endpoint)


def _spawn_for(repo: Repository, control: TritonControl, endpoint: str) -> int:
    """:func:`spawn_worker` with ``control``'s URL, timeouts and metrics URL."""
    return spawn_worker(
        repo, control.url, endpoint, _timeouts_of(control), _metrics_url_of(control)
    )


def _metrics_url_of(control: TritonControl) -> str | None:
    """Where ``control`` reads Triton's metrics (a fake's: nowhere)."""
    endpoint = getattr(control, "endpoint", None)
    return getattr(endpoint, "metrics_url", None) or None


def _timeouts_of(control: TritonControl) -> Timeouts:
    """The timeouts ``control`` was made with (a fake's: none)."""
    return Timeouts(
        load=getattr(control, "timeout", None),
        call=getattr(control, "call_timeout", None),
        connect=getattr(control, "connect_timeout", None),
    )


def spawn_worker(
    repo: Repository,
    url: str,
    endpoint: str,
    timeouts: Timeouts | None = None,
    metrics_url: str | None = None,
) -> int:
    """Run the rollout of ``endpoint`` in a detached ``tritonctl rollout run`` process,
    whose Triton control gets ``timeouts`` and ``metrics_url`` (those of the caller's
    control: the worker does not resolve them again from options it was not given)."""
    options: list[str] = ["--metrics-url", metrics_url] if metrics_url else []
    for key, value in (timeouts or Timeouts()).to_dict().items():
        if value is not None:
            options += [OPTIONS[key], repr(value)]
    log_path = repo.meta_dir / "rollouts" / f"{endpoint}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "manager.cli",
                "--repo",
                str(repo.path),
                "--url",
                url,
                *options,
                "-v",
                "rollout",
                "run",
                endpoint,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=os.environ.copy(),
        )
    _wait_for_worker(proc, RolloutStore(repo), endpoint, log_path)
    return proc.pid


def _wait_for_worker(
    proc: subprocess.Popen[bytes],
    store: RolloutStore,
    endpoint: str,
    log_path: Path,
    timeout: float = WORKER_START_WAIT_S,
) -> None:
    """Return once the worker drives the rollout (has recorded itself as its driver), or
    has ended well, or ``timeout`` passed; raise RolloutError with the end of its log if
    it failed. (Only the state file is read: trying the driver lock could make the worker
    find it held and stop.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            if code == 0:
                return
            raise RolloutError(
                f"the rollout worker of {endpoint!r} exited with status {code}: "
                f"{_log_tail(log_path)} (log: {log_path})"
            )
        state = store.load(endpoint)
        if state is None or state.driver_pid == proc.pid or state.status in FINAL:
            return
        time.sleep(0.05)
    log.warning("the rollout worker of %s (pid %d) has not started driving yet", endpoint, proc.pid)


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:]) or "no output"


def finish(repo: Repository, control: TritonControl, endpoint: str, action: str) -> RolloutState:
    """``promote`` or ``abort`` a rollout: through its driver when it runs, else here."""
    store = RolloutStore(repo)
    state = request_action(store, endpoint, action)
    if state.driver_alive() or store.driven(endpoint):
        return state  # a driver runs: it acts on the request within a poll
    driver = make_driver(repo, control, state.policy)
    try:
        with driver.driving(state) as taken:
            if taken.status in FINAL:
                return taken
            if action == "promote":
                return driver.promote(taken, "promoted by request")
            return driver.rollback(taken, "aborted by request")
    except DriverBusyError:
        return state  # a driver started meanwhile: it acts on the request


def finish_and_wait(
    repo: Repository,
    control: TritonControl,
    endpoint: str,
    action: str,
    *,
    timeout: float = FINISH_WAIT_S,
    poll: float = 0.5,
) -> RolloutState:
    """:func:`finish`, then wait up to ``timeout`` seconds for the rollout to be over (a
    running driver acts on the request within a poll). Returns the last state seen."""
    state = finish(repo, control, endpoint, action)
    deadline = time.monotonic() + timeout
    while state.status not in FINAL and time.monotonic() < deadline:
        time.sleep(poll)
        state = status(repo, endpoint)
    return state


def status(repo: Repository, endpoint: str) -> RolloutState:
    state = RolloutStore(repo).load(endpoint)
    if state is None:
        raise RolloutNotFoundError(f"endpoint {endpoint!r} has no rollout recorded")
    return state


def list_rollouts(repo: Repository, *, active: bool = False) -> list[RolloutState]:
    """The last rollout of every endpoint (``active``: only those still running)."""
    store = RolloutStore(repo)
    return store.active() if active else store.all()


# -- asyncio API ------------------------------------------------------------------------


async def astart_rollout(
    repo: Repository | str | Path,
    url: str | None,
    endpoint: str,
    to_version: int,
    policy: RolloutPolicy | None = None,
    *,
    timeout: float | None = None,
    call_timeout: float | None = None,
    connect_timeout: float | None = None,
) -> RolloutState:
    """Start a rollout and await its end (promoted or rolled back), as ``tritonctl rollout
    start --wait`` does. ``url`` None resolves as the CLI does without ``--url``
    (``TRITONCTL_URL``, else the embedded server of ``repo``, else
    ``http://localhost:8000``); the embedded server's metrics URL comes with it. The
    timeouts, if not given, resolve as the CLI's (``TRITONCTL_LOAD_TIMEOUT`` ..., the
    ``timeouts:`` of the repository's ``tritonctl.yaml``, the defaults).

    The rollout is driven in a worker thread. Cancelled (``asyncio.timeout``, a cancelled
    task), it stops being driven at the driver's next poll, as ``rollout start --wait``
    interrupted: the endpoint keeps serving at the recorded weights, and ``rollout resume``
    goes on or ``rollout abort`` rolls back. The cancellation is raised once the worker
    has stopped (a load under way is finished first)."""
    repository = repo if isinstance(repo, Repository) else Repository(repo)
    stop = threading.Event()

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise _DriverStopped

    options: dict[str, Any] = {
        "timeout": timeout,
        "call_timeout": call_timeout,
        "connect_timeout": connect_timeout,
    }

    def work() -> RolloutState | None:
        with TritonControl.connect(url, repository.path, **options) as control:
            state = begin_rollout(
                repository, control, endpoint, to_version, policy or RolloutPolicy()
            )
            if stop.is_set():
                return None
            try:
                return run_rollout(repository, control, state, sleep=sleep)
            except _DriverStopped:
                _release_driver(repository, endpoint)
                return None

    worker = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        result = await asyncio.shield(worker)
    except asyncio.CancelledError:
        stop.set()
        try:
            await worker  # the thread stops at its next poll; the rollout stays recorded
        except Exception as exc:  # the cancellation is what the caller hears of
            log.warning("the rollout of %s ended as it was cancelled: %s", endpoint, exc)
        raise
    assert result is not None  # only a stop returns None
    return result


class _DriverStopped(BaseException):
    """Raised in a rollout driver's wait when the caller stopped it (not an Exception:
    nothing in the driver takes it for a failure to roll back on)."""


def _release_driver(repo: Repository, endpoint: str) -> None:
    """After a driver in this process stopped: record the rollout as driven by no one, so
    that ``rollout resume`` takes it up (the process itself goes on living)."""
    store = RolloutStore(repo)
    with store.driving(endpoint) as mine:
        state = store.load(endpoint) if mine else None
        if state is not None and state.status in ACTIVE and state.driver_pid == os.getpid():
            state.driver_pid, state.driver_create_time = 0, 0.0
            state.driver_host = state.driver_node = state.driver_heartbeat = ""
            store.save(state)
    log.info("the rollout of %s was stopped; resume or abort it", endpoint)


async def aswitch(
    repo: Repository | str | Path,
    url: str | None,
    endpoint: str,
    model: str,
    version: int | None = None,
    *,
    force: bool = False,
    drain: bool = True,
    timeout: float | None = None,
    call_timeout: float | None = None,
    connect_timeout: float | None = None,
) -> EndpointState:
    """Point ``endpoint`` at ``model`` (``version`` or its newest) and await it, as
    ``tritonctl endpoint switch`` does: within the memory budget of the repository's
    ``tritonctl.yaml`` (room is made by its eviction policy, or the switch is refused
    before anything is loaded). A model with other inputs or outputs than the endpoint's
    is refused unless ``force``. The sequences under way on a stateful endpoint end first
    unless not ``drain``. ``url`` None, and the timeouts, resolve as for
    :func:`astart_rollout`."""
    repository = repo if isinstance(repo, Repository) else Repository(repo)

    def work() -> EndpointState:
        config = resolve_serving_config(repository.path)
        with TritonControl.connect(
            url,
            repository.path,
            config=config,
            timeout=timeout,
            call_timeout=call_timeout,
            connect_timeout=connect_timeout,
        ) as control:
            endpoints = Endpoints(
                repository, control, admission=admission(control, repository.path, config)
            )
            return endpoints.switch(endpoint, model, version, force=force, drain=drain)

    return await asyncio.to_thread(work)
