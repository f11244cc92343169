"""Serving operations on a live Triton: load, unload, list.

These wrap the raw model-control calls of :mod:`manager.triton` with what Triton does
not do by itself: a load of a model that already serves what its version policy selects
on disk is a no-op (a reload would need the memory of both copies at once), a load of
one version pins the version policy to it, a failed load reports Triton's own reason,
and an unload returns only once the index shows the model UNAVAILABLE (Triton answers
before the memory is freed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from google.protobuf.json_format import MessageToJson

from manager.errors import LoadError, ManagerError, ModelNotFoundError, UnloadError
from manager.filecopy import precompile
from manager.loadtimes import forget_loads, record_load
from manager.metrics import MemoryReading, parse_memory
from manager.modelconfig import read_config, write_config
from manager.names import validate_model_name
from manager.triton import IndexEntry, ModelStats, one_line, release_thread_hub

if TYPE_CHECKING:
    from manager.repository import Repository

log = logging.getLogger(__name__)

DEFAULT_LOAD_TIMEOUT_S = 600.0
DEFAULT_UNLOAD_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.1
# States in which a model version still holds (or is about to hold) its resources.
BUSY_STATES = frozenset({"READY", "LOADING", "UNLOADING"})


class ModelControl(Protocol):
    """What the serving operations need from Triton (TritonControl, or a fake)."""

    @property
    def url(self) -> str: ...

    def repository_index(self) -> list[IndexEntry]: ...

    def load_model(self, name: str, config: str | None = None) -> None: ...

    def unload_model(self, name: str, unload_dependents: bool = False) -> None: ...

    def model_config(self, name: str) -> dict[str, Any]: ...

    def statistics(self, name: str | None = None) -> list[ModelStats]: ...

    def metrics_text(self) -> str: ...


class AsyncModelControl(Protocol):
    """The asyncio twin of :class:`ModelControl` (AsyncTritonControl, or a fake)."""

    @property
    def url(self) -> str: ...

    async def repository_index(self) -> list[IndexEntry]: ...

    async def load_model(self, name: str, config: str | None = None) -> None: ...

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None: ...

    async def model_config(self, name: str) -> dict[str, Any]: ...

    async def statistics(self, name: str | None = None) -> list[ModelStats]: ...

    async def metrics_text(self) -> str: ...


@dataclass(frozen=True)
class LoadResult:
    """A model that is READY: its ready versions, how long the load took, and whether it
    was already loaded (``cache_hit``: nothing was done)."""

    name: str
    versions: tuple[int, ...]
    seconds: float
    cache_hit: bool

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "versions": list(self.versions)}


@dataclass(frozen=True)
class UnloadResult:
    """A model that is no longer loaded; ``was_loaded`` is False if nothing was done."""

    name: str
    seconds: float
    was_loaded: bool
    version: int | None = None  # one version retired, the others still served

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelRow:
    """One model version as ``tritonctl ls`` shows it: index state joined with stats."""

    name: str
    version: int | None
    state: str
    reason: str
    last_inference_ms: int | None
    inference_count: int
    success_count: int
    fail_count: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ServingOverview:
    """Every model version the server knows, plus its server-level memory reading
    (None if the metrics endpoint does not answer)."""

    models: list[ModelRow]
    memory: MemoryReading | None

    def to_json(self) -> dict[str, Any]:
        return {
            "models": [m.to_json() for m in self.models],
            "memory": self.memory.to_json() if self.memory is not None else None,
        }


# --------------------------------------------------------------------------- decisions


def entries_of(index: Sequence[IndexEntry], name: str) -> list[IndexEntry]:
    return [e for e in index if e.name == name]


def ready_versions(entries: Sequence[IndexEntry]) -> tuple[int, ...]:
    return tuple(sorted(e.version for e in entries if e.ready and e.version is not None))


def _require_known(index: Sequence[IndexEntry], name: str, url: str) -> list[IndexEntry]:
    entries = entries_of(index, name)
    if not entries:
        raise ModelNotFoundError(f"model {name!r} is not in the repository served by {url}")
    return entries


def _is_loaded(
    entries: Sequence[IndexEntry], version: int | None, wanted: frozenset[int] | None = None
) -> bool:
    """Whether the load is done: ``version`` READY; else the ``wanted`` versions READY;
    else (nothing known of the versions) any version READY."""
    ready = set(ready_versions(entries))
    if version is not None:
        return version in ready
    if wanted is not None:
        return wanted <= ready
    return bool(ready)


def up_to_date(
    entries: Sequence[IndexEntry],
    version: int | None,
    wanted: frozenset[int] | None,
    *,
    refresh: bool = False,
) -> bool:
    """Whether a load would change nothing: ``version`` is READY, or exactly the
    ``wanted`` versions are; when they are not known (no local copy of the model), any
    READY version, unless ``refresh`` (then only Triton can tell: never up to date)."""
    if version is None and wanted is not None:
        return set(ready_versions(entries)) == wanted
    if version is None and refresh:
        return False
    return _is_loaded(entries, version, wanted)


def versions_to_serve(control: Any, repo: Path | None, name: str) -> frozenset[int] | None:
    """The versions ``load NAME`` (no version given) serves: those the version policy of
    ``<repo>/<name>/config.pbtxt`` selects among the version folders on disk (latest 1 by
    default, ``all``, ``specific``), plus those endpoints route to. None when ``repo``
    holds no version of the model (then only Triton knows what its policy picks)."""
    from manager.footprint import predicted_versions

    on_disk = set(_on_disk_versions(repo, name))
    if repo is None or not on_disk:
        return None
    selected = set(predicted_versions(repo, name, None))
    routed = endpoint_versions(control, repo, name) & on_disk
    return frozenset(selected | routed) or None


def _policy_override(repo: Path | None, name: str, wanted: frozenset[int] | None) -> str | None:
    """The config override for a load of ``wanted`` (no version given): None when the
    policy in config.pbtxt selects exactly them (Triton reads it from the repository), else
    a ``specific`` policy with them (endpoints route to versions the owner's policy leaves
    out, or endpoints manage config.pbtxt's policy and the owner's selects others)."""
    from manager.footprint import predicted_versions

    if repo is None or wanted is None:
        return None
    # what Triton serves reading config.pbtxt as it is
    if wanted == set(predicted_versions(repo, name, None, as_written=True)):
        return None
    config = _config_from_repo(repo, name)
    if config is None:
        return None
    log.info("serving %s versions %s", name, sorted(wanted))
    return override_for_version(config, max(wanted), wanted)


def _pin_config(
    repo: Path | None, name: str, version: int | None, entries: Sequence[IndexEntry]
) -> Any | None:
    """For a load of ``version``: the model's config from ``repo``, else None when Triton
    has the model loaded (the caller asks it for its config); LoadError when neither."""
    if version is None:
        return None
    config = _config_from_repo(repo, name)
    if config is None and not ready_versions(entries):
        raise LoadError(
            f"cannot pin model {name!r} to version {version}: its config.pbtxt "
            "is not in the local repository (pass --repo) and it is not loaded"
        )
    return config


def _load_override(
    control: Any,
    repo: Path | None,
    name: str,
    version: int | None,
    entries: Sequence[IndexEntry],
    wanted: frozenset[int] | None,
    config: Any | None,
) -> tuple[str | None, PolicyEdit | None]:
    """The config override a load of ``name`` sends (None: Triton reads config.pbtxt):
    for ``version``, ``config`` pinned to it; else the versions ``wanted``. With it, the
    edit of config.pbtxt made for it, if one was (see :func:`_lasting`), to be undone if
    the load fails."""
    override = _policy_override(repo, name, wanted)
    if version is not None:
        # Triton serves only the versions of the override: those an endpoint routes to
        # must stay, or the endpoint would stop answering
        kept = endpoint_versions(control, repo, name) - {version}
        if kept:
            log.info("keeping %s versions %s served: endpoints route to them", name, sorted(kept))
        override = override_for_version(config, version, kept)
    override, edit = _lasting(control, repo, name, override)
    if version is None:
        override = _repository_override(repo, name, entries, override)
    return override, edit


@dataclass(frozen=True)
class PolicyEdit:
    """config.pbtxt of a model as it was before a load wrote its versions into it, and
    as the load wrote it."""

    path: Path
    before: str
    after: str

    def undo(self) -> None:
        """Put the file back, unless something else changed it since (a failed load
        must not leave the versions it could not serve in the policy: every later load
        and restore would try them again)."""
        from manager.repository import Repository, write_text_atomic

        with Repository(self.path.parent.parent).lock(self.path.parent.name):
            try:
                if self.path.read_text() != self.after:
                    return
                write_text_atomic(self.path, self.before)
            except OSError as exc:
                log.warning("could not restore %s after a failed load: %s", self.path, exc)
                return
        log.info("restored the version policy of %s after a failed load", self.path)


def _lasting(
    control: Any, repo: Path | None, name: str, override: str | None
) -> tuple[str | None, PolicyEdit | None]:
    """The override to load ``name`` with; None when its versions went into config.pbtxt.

    Triton reloads a model that was loaded with an override from its files the next time
    an ensemble that calls it loads (an endpoint switch, a restore), dropping the
    override's versions. For a model endpoints route to, whose version policy they keep
    in config.pbtxt, the override's policy is written there instead (the owner's own
    policy kept aside, see :mod:`manager.versionpolicy`), so it lasts.
    """
    if override is None or repo is None or not endpoint_versions(control, repo, name):
        return override, None
    from manager.endpoints import with_versions
    from manager.repository import Repository
    from manager.versionpolicy import keep_owner_policy

    versions = json.loads(override)["version_policy"]["specific"]["versions"]
    path = Path(repo) / name / "config.pbtxt"
    with Repository(repo).lock(name):
        before = path.read_text()
        config = read_config(path)
        keep_owner_policy(repo, name, config)
        write_config(path, with_versions(config, versions))
        after = path.read_text()
    log.info("serving %s versions %s (written into %s)", name, sorted(versions), path)
    return None, PolicyEdit(path, before, after)


def override_for_version(config: Any, version: int, keep: Iterable[int] = ()) -> str:
    """JSON config override = ``config`` with ``version_policy`` serving ``version`` (and
    the versions in ``keep``).

    ``config`` is a protobuf ModelConfig or a dict in proto field names (as Triton's
    model-config API returns it). ``max_batch_size`` is always written, also when 0:
    JSON drops default fields, and a missing value would let auto-complete pick one.
    """
    data = _override_data(config)
    versions = sorted({int(version), *(int(v) for v in keep)})
    data["version_policy"] = {"specific": {"versions": versions}}
    return json.dumps(data)


def override_from_config(config: Any) -> str:
    """JSON config override = ``config`` as it is, its own version policy included (as
    :func:`override_for_version`, ``max_batch_size`` always written)."""
    return json.dumps(_override_data(config))


def _override_data(config: Any) -> dict[str, Any]:
    if isinstance(config, dict):
        data = dict(config)
        max_batch_size = int(data.get("max_batch_size", 0) or 0)
    else:
        data = json.loads(MessageToJson(config, preserving_proto_field_name=True))
        max_batch_size = int(config.max_batch_size)
    data["max_batch_size"] = max_batch_size
    return dict(data)


def _repository_override(
    repo: Path | None, name: str, entries: Sequence[IndexEntry], override: str | None
) -> str | None:
    """The override for a load of ``name`` (no version given): ``override`` if there is
    one; else, when a version is READY, ``<repo>/<name>/config.pbtxt`` itself.

    Triton may hold the override of an earlier load (``load NAME --version V`` pins
    ``specific [V]``), and it takes a load without a config of a model loaded with an
    override, whose files did not change, for one that changes nothing: it would go on
    serving the pinned versions. Given the repository's config as the override, it
    reloads the model with the policy of the file.
    """
    if override is not None or not ready_versions(entries):
        return override
    config = _config_from_repo(repo, name)
    if config is None:
        return None
    log.info("loading %s with the configuration of the repository", name)
    return override_from_config(config)


def _config_from_repo(repo: Path | None, name: str) -> Any | None:
    if repo is None:
        return None
    path = Path(repo) / name / "config.pbtxt"
    return read_config(path) if path.is_file() else None


def endpoint_routes(control: Any, repo: Path | None, name: str) -> list[tuple[str, int]]:
    """(endpoint, version) for each version of model ``name`` that an endpoint of ``repo``
    routes to (or may, at 0 %). Only the endpoints' files are read: ``control`` (sync or
    async) is not called."""
    if repo is None:
        return []
    from manager.endpoints import endpoint_states
    from manager.repository import Repository

    states = endpoint_states(Repository(repo))
    return sorted(
        (state.name, t.version) for state in states for t in state.targets if t.model == name
    )


def _is_endpoint(repo: Path, name: str) -> bool:
    from manager.endpoints import is_endpoint_folder
    from manager.repository import Repository

    return is_endpoint_folder(Repository(repo), name)


def endpoint_versions(control: Any, repo: Path | None, name: str) -> set[int]:
    """The versions of model ``name`` that endpoints of ``repo`` route to."""
    return {version for _, version in endpoint_routes(control, repo, name)}


def _load_error(name: str, exc: ManagerError | None, entries: Sequence[IndexEntry]) -> LoadError:
    """A LoadError naming the model, with Triton's load message and the index reasons."""
    parts = [str(exc)] if exc is not None else []
    for e in entries:
        reason = one_line(e.reason)
        if reason and not any(reason in p for p in parts):
            label = f"version {e.version}" if e.version is not None else "model"
            parts.append(f"{label} {e.state}: {reason}")
    cause = "; ".join(parts) or "Triton gave no reason"
    return LoadError(f"model {name!r} failed to load: {cause}")


def _load_done(
    name: str,
    entries: Sequence[IndexEntry],
    version: int | None,
    wanted: frozenset[int] | None = None,
) -> tuple[int, ...] | None:
    """Ready versions when the load finished; None while it runs; LoadError if it failed."""
    if _is_loaded(entries, version, wanted):
        return ready_versions(entries)
    if any(e.state == "LOADING" for e in entries):
        return None
    raise _load_error(name, None, entries)


def _unload_done(entries: Sequence[IndexEntry]) -> bool:
    return not any(e.state in BUSY_STATES for e in entries)


def check_version(repo: Path | None, name: str, version: int | None) -> None:
    """Refuse ``version`` of ``name`` when ``repo`` holds the model but not that version
    (ModelNotFoundError, naming the versions it has), instead of Triton's "at least one
    version must be available" after a load attempt. Nothing is checked without a local
    copy of the model."""
    if version is None:
        return
    on_disk = _on_disk_versions(repo, name)
    if on_disk and version not in on_disk:
        raise ModelNotFoundError(
            f"model {name!r} has no version {version} in {repo} "
            f"(it has: {', '.join(map(str, on_disk))})"
        )


def _on_disk_versions(repo: Path | None, name: str) -> list[int]:
    if repo is None:
        return []
    folder = Path(repo) / name
    try:
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    except OSError:
        return []


def build_rows(
    index: Sequence[IndexEntry], stats: Sequence[ModelStats], repo: Path | None = None
) -> list[ModelRow]:
    """Join the index with statistics; with ``repo``, also list on-disk versions that
    Triton has not loaded (state UNAVAILABLE)."""
    by_key = {(s.name, s.version): s for s in stats}
    keyed: dict[tuple[str, int | None], IndexEntry] = {}
    for e in index:
        keyed[(e.name, e.version)] = e
    for name in sorted({e.name for e in index}):
        for v in _on_disk_versions(repo, name):
            keyed.setdefault((name, v), IndexEntry(name, v, "UNAVAILABLE", ""))
        if any(k[0] == name and k[1] is not None for k in keyed):
            keyed.pop((name, None), None)
    rows = []
    for (name, version), e in sorted(keyed.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        s = by_key.get((name, version))
        rows.append(
            ModelRow(
                name=name,
                version=version,
                state=e.state,
                reason=one_line(e.reason),
                last_inference_ms=(s.last_inference_ms or None) if s else None,
                inference_count=s.inference_count if s else 0,
                success_count=s.success_count if s else 0,
                fail_count=s.fail_count if s else 0,
            )
        )
    return rows


# --------------------------------------------------------------------------- sync


def load(
    control: ModelControl,
    name: str,
    *,
    version: int | None = None,
    repo: Path | None = None,
    wait_timeout: float = DEFAULT_LOAD_TIMEOUT_S,
    refresh: bool = False,
) -> LoadResult:
    """Load ``name`` (only ``version`` if given) and return once it is READY.

    Without ``version`` the model serves what its version policy selects among the
    versions in ``repo`` (:func:`versions_to_serve`): nothing is done (``cache_hit``)
    when exactly those are READY; otherwise Triton loads it again, re-reading the
    repository, so a newly published version is picked up. ``refresh``: when ``repo``
    holds no copy of the model (a server's repository elsewhere), Triton is asked to load
    it again even with a version READY: only Triton sees which versions its repository
    has now. With ``version``, nothing is done when it is READY. Pinning a version needs the model's config: from
    ``<repo>/<name>/config.pbtxt`` when ``repo`` holds it, else from Triton if the model
    is loaded. Raises ModelNotFoundError for a model the server's repository does not
    hold, LoadError with Triton's reason if it fails.

    With ``repo`` holding the model, the load holds the model's lock (as an endpoint change
    that serves it does): the versions it must keep serving are read and loaded as one
    step, so a split that has just loaded a version for its routes is not undone.
    """
    validate_model_name(name)
    check_version(repo, name, version)
    with model_lock(repo, name):
        return _load(control, name, version, repo, wait_timeout, refresh)


def model_lock(repo: Path | None, name: str) -> AbstractContextManager[object]:
    """The model's repository lock where ``repo`` holds the model, else nothing."""
    holder = _holding_repository(repo, name)
    return holder.lock(name) if holder is not None else nullcontext()


def _holding_repository(repo: Path | None, name: str) -> Repository | None:
    """``repo`` as a Repository where it holds model ``name``, else None."""
    if repo is None or not (Path(repo) / name / "config.pbtxt").is_file():
        return None
    from manager.repository import Repository

    return Repository(repo)


def _load(
    control: ModelControl,
    name: str,
    version: int | None,
    repo: Path | None,
    wait_timeout: float,
    refresh: bool,
) -> LoadResult:
    started = time.monotonic()
    entries = _require_known(control.repository_index(), name, control.url)
    wanted = versions_to_serve(control, repo, name) if version is None else None
    if up_to_date(entries, version, wanted, refresh=refresh):
        log.info("model %s already ready (versions %s)", name, ready_versions(entries))
        return LoadResult(name, ready_versions(entries), 0.0, cache_hit=True)
    config = _pin_config(repo, name, version, entries)
    if version is not None and config is None:
        config = control.model_config(name)
    override, edit = _load_override(control, repo, name, version, entries, wanted, config)
    precompile_unloaded(repo, name, entries)
    log.info(
        "loading model %s%s on %s", name, f" version {version}" if version else "", control.url
    )
    deadline = started + wait_timeout
    try:
        _load_within(control, name, override, deadline - time.monotonic(), wait_timeout)
    except LoadError as exc:
        if isinstance(exc, StillLoadingError):
            raise
        if edit is not None:
            edit.undo()
        raise _load_error(name, exc, _safe_entries(control, name)) from exc
    while True:
        done = _load_done(name, entries_of(control.repository_index(), name), version, wanted)
        if done is not None:
            seconds = time.monotonic() - started
            log.info("model %s ready in %.2f s", name, seconds)
            _note_loaded(repo, name, ready_versions(entries), done)
            return LoadResult(name, done, seconds, cache_hit=False)
        if time.monotonic() > deadline:
            raise _still_loading(name, control.url, wait_timeout)
        time.sleep(POLL_INTERVAL_S)


class StillLoadingError(LoadError):
    """The wait for a load ran out while Triton was still loading the model."""


def _still_loading(name: str, url: str, wait_timeout: float) -> StillLoadingError:
    return StillLoadingError(
        f"model {name!r} is not READY after {wait_timeout:g} s: Triton at {url} is still "
        "loading it and will serve it once the load is done (its state shows in the "
        "repository index, `tritonctl ls`)"
    )


def precompile_unloaded(repo: Path | None, name: str, entries: Iterable[IndexEntry]) -> None:
    """Before a load: write the bytecode of the Python-backend versions of ``name`` in
    ``repo`` that Triton does not hold (``entries``: the model's index entries; a version
    loaded, loading or unloading is held), as publish does
    (:func:`manager.filecopy.precompile`), for versions written by hand or by an older
    release. A held version's folder is left alone: a change to it would make Triton load
    it again."""
    if repo is None or not (Path(repo) / name / "config.pbtxt").is_file():
        return
    try:
        config = read_config(Path(repo) / name / "config.pbtxt")
    except ManagerError:
        return  # Triton reports a broken config better
    if config.backend != "python":
        return
    busy = {e.version for e in entries if e.state != "UNAVAILABLE"}
    for version in _on_disk_versions(repo, name):
        if version not in busy:
            precompile(Path(repo) / name / str(version))


def _load_within(
    control: ModelControl, name: str, override: str | None, seconds: float, wait_timeout: float
) -> None:
    """``control.load_model`` given at most ``seconds``: Triton answers a load only once it
    is done, so the call runs in a worker thread and is left to finish on its own (Triton
    goes on loading) when the time is up; StillLoadingError then."""
    outcome: list[BaseException | None] = []
    finished = threading.Event()

    def call() -> None:
        try:
            control.load_model(name, config=override)
            outcome.append(None)
        except BaseException as exc:  # handed to the waiting thread
            outcome.append(exc)
        finally:
            # a load over HTTP made this thread a gevent hub, which would outlive it
            release_thread_hub()
            finished.set()

    worker = threading.Thread(target=call, name=f"tritonctl-load-{name}", daemon=True)
    worker.start()
    # threading cannot wait longer than TIMEOUT_MAX (about 292 years): a longer or infinite
    # wait_timeout would raise OverflowError instead of waiting
    if not finished.wait(min(max(seconds, 0.0), threading.TIMEOUT_MAX)):
        raise _still_loading(name, control.url, wait_timeout)
    if outcome[0] is not None:
        raise outcome[0]


def _note_loaded(repo: Path | None, name: str, before: Sequence[int], after: Sequence[int]) -> None:
    """Record when the versions a load brought up were loaded (``fifo`` needs it), and
    forget the versions it took down."""
    gone = set(before) - set(after)
    if gone:
        forget_loads(repo, name, gone)
    record_load(repo, name, [v for v in after if v not in before])


def _safe_entries(control: ModelControl, name: str) -> list[IndexEntry]:
    try:
        return entries_of(control.repository_index(), name)
    except ManagerError:
        return []


def unload(
    control: ModelControl,
    name: str,
    *,
    unload_dependents: bool = False,
    wait_timeout: float = DEFAULT_UNLOAD_TIMEOUT_S,
    repo: Path | None = None,
    force: bool = False,
    version: int | None = None,
) -> UnloadResult:
    """Unload ``name`` and return once no version is READY, LOADING or UNLOADING.

    With ``repo``, a model that endpoints of ``repo`` route to, or an endpoint itself, is
    refused (UnloadError naming them) unless ``force``: unloading it would stop those
    endpoints answering. With ``version`` only that version stops being served (see
    :func:`unload_version`).
    """
    validate_model_name(name)
    if version is not None:
        return unload_version(control, name, version, repo=repo, wait_timeout=wait_timeout)
    # under the model's lock: an endpoint change onto it (which holds the lock until its
    # routes are written) is either seen, and refused, or done before, not loading the
    # model again while this waits for it to go
    with model_lock(repo, name):
        return _unload(control, name, unload_dependents, wait_timeout, repo, force)


def _unload(
    control: ModelControl,
    name: str,
    unload_dependents: bool,
    wait_timeout: float,
    repo: Path | None,
    force: bool,
) -> UnloadResult:
    started = time.monotonic()
    entries = _require_known(control.repository_index(), name, control.url)
    if _unload_done(entries):
        return UnloadResult(name, 0.0, was_loaded=False)
    routes = _check_unload_allowed(control, repo, name, force)
    log.info("unloading model %s on %s", name, control.url)
    control.unload_model(name, unload_dependents=unload_dependents)
    deadline = started + wait_timeout
    while not _unload_done(entries_of(control.repository_index(), name)):
        if time.monotonic() > deadline:
            raise UnloadError(f"model {name!r} is still not unloaded after {wait_timeout:g} s")
        time.sleep(POLL_INTERVAL_S)
    seconds = time.monotonic() - started
    log.info("model %s unloaded in %.2f s", name, seconds)
    forget_loads(repo, name)
    _audit_unload(repo, name, None, forced=force and bool(routes))
    return UnloadResult(name, seconds, was_loaded=True)


def _check_unload_allowed(
    control: Any, repo: Path | None, name: str, force: bool
) -> list[tuple[str, int]]:
    """Refuse (UnloadError) to unload a model that endpoints of ``repo`` route to, or an
    endpoint itself, unless ``force``; returns the routes to the model."""
    routes = endpoint_routes(control, repo, name)
    if routes and not force:
        users = ", ".join(f"{endpoint} ({name}:{version})" for endpoint, version in routes)
        raise UnloadError(
            f"model {name!r} serves endpoint(s) {users}: unloading it would stop them "
            "answering; switch or delete them first (or force it: --force)"
        )
    if repo is not None and not force and _is_endpoint(repo, name):
        raise UnloadError(
            f"{name!r} is an endpoint: unloading it would stop its clients' calls; "
            f"`tritonctl endpoint delete {name}` removes it (or force the unload: --force, "
            f"and `tritonctl endpoint restore {name}` serves it again)"
        )
    return routes


def _audit_unload(repo: Path | None, name: str, version: int | None, *, forced: bool) -> None:
    """An unload asked for by hand goes into the repository's audit log, beside the
    controller's evictions (what went, and that it was not the budget's doing)."""
    if repo is None or not Path(repo).is_dir():
        return
    from manager.audit import AuditLog, AuditRecord

    reason = "by hand (tritonctl unload" + (", forced past endpoints)" if forced else ")")
    try:
        AuditLog(Path(repo)).write(AuditRecord("unload", name, version, reason))
    except OSError as exc:  # the unload itself is done: an audit that fails only warns
        log.warning("could not write the audit log of %s: %s", repo, exc)


def unload_version(
    control: ModelControl,
    name: str,
    version: int,
    *,
    repo: Path | None,
    wait_timeout: float = DEFAULT_UNLOAD_TIMEOUT_S,
) -> UnloadResult:
    """Stop serving one version of ``name`` while its other versions keep serving (e.g.
    one a split no longer routes to): it leaves the version policy in the model's
    ``config.pbtxt`` under ``repo`` and the model is loaded again with the rest (or
    unloaded, when it was the last). A version an endpoint routes to is refused, force or
    not: the endpoint must be switched or split off it first."""
    validate_model_name(name)
    if repo is None or not (Path(repo) / name).is_dir():
        raise UnloadError(
            f"unloading one version of {name!r} rewrites its version policy: --repo must "
            "hold the model"
        )
    started = time.monotonic()
    entries = _require_known(control.repository_index(), name, control.url)
    if not any(e.version == version and e.state in ("READY", "LOADING") for e in entries):
        check_version(repo, name, version)  # a version that never was is a mistake
        return UnloadResult(name, 0.0, was_loaded=False, version=version)
    users = [endpoint for endpoint, v in endpoint_routes(control, repo, name) if v == version]
    if users:
        raise UnloadError(
            f"{name}:{version} serves endpoint(s) {', '.join(users)}: switch or split them "
            "off it first"
        )
    from manager.endpoints import Endpoints
    from manager.repository import Repository

    log.info("retiring %s:%d on %s", name, version, control.url)
    Endpoints(Repository(repo), control).retire(name, version)
    deadline = started + wait_timeout
    while any(
        e.version == version and e.state in ("READY", "LOADING", "UNLOADING")
        for e in entries_of(control.repository_index(), name)
    ):
        if time.monotonic() > deadline:
            raise UnloadError(f"{name}:{version} is still not unloaded after {wait_timeout:g} s")
        time.sleep(POLL_INTERVAL_S)
    _audit_unload(repo, name, version, forced=False)
    return UnloadResult(name, time.monotonic() - started, was_loaded=True, version=version)


def list_models(control: ModelControl, repo: Path | None = None) -> list[ModelRow]:
    """Every model version the server knows, with its statistics."""
    return build_rows(control.repository_index(), control.statistics(), repo)


def overview(control: ModelControl, repo: Path | None = None) -> ServingOverview:
    """:func:`list_models` plus the server's memory reading."""
    rows = list_models(control, repo)
    try:
        memory: MemoryReading | None = parse_memory(control.metrics_text())
    except ManagerError as exc:
        log.info("no memory reading from %s: %s", control.url, exc)
        memory = None
    return ServingOverview(models=rows, memory=memory)


# --------------------------------------------------------------------------- async


async def aload(
    control: AsyncModelControl,
    name: str,
    *,
    version: int | None = None,
    repo: Path | None = None,
    wait_timeout: float = DEFAULT_LOAD_TIMEOUT_S,
    refresh: bool = False,
) -> LoadResult:
    """The asyncio form of :func:`load`, holding the model's lock the same way (waited
    for without blocking the event loop)."""
    validate_model_name(name)
    check_version(repo, name, version)
    async with _model_alock(repo, name):
        return await _aload(control, name, version, repo, wait_timeout, refresh)


def _model_alock(repo: Path | None, name: str) -> AbstractAsyncContextManager[object]:
    """The asyncio form of :func:`model_lock`."""
    holder = _holding_repository(repo, name)
    return holder.alock(name) if holder is not None else nullcontext()


async def _aload(
    control: AsyncModelControl,
    name: str,
    version: int | None,
    repo: Path | None,
    wait_timeout: float,
    refresh: bool,
) -> LoadResult:
    started = time.monotonic()
    entries = _require_known(await control.repository_index(), name, control.url)
    wanted = versions_to_serve(control, repo, name) if version is None else None
    if up_to_date(entries, version, wanted, refresh=refresh):
        return LoadResult(name, ready_versions(entries), 0.0, cache_hit=True)
    config = _pin_config(repo, name, version, entries)
    if version is not None and config is None:
        config = await control.model_config(name)
    override, edit = _load_override(control, repo, name, version, entries, wanted, config)
    await asyncio.to_thread(precompile_unloaded, repo, name, entries)
    deadline = started + wait_timeout
    try:
        await asyncio.wait_for(
            control.load_model(name, config=override),
            timeout=max(deadline - time.monotonic(), 0.0),
        )
    except asyncio.TimeoutError as exc:
        # the request is given up; Triton goes on loading the model
        raise _still_loading(name, control.url, wait_timeout) from exc
    except LoadError as exc:
        if edit is not None:
            edit.undo()
        try:
            after = entries_of(await control.repository_index(), name)
        except ManagerError:
            after = []
        raise _load_error(name, exc, after) from exc
    while True:
        done = _load_done(name, entries_of(await control.repository_index(), name), version, wanted)
        if done is not None:
            _note_loaded(repo, name, ready_versions(entries), done)
            return LoadResult(name, done, time.monotonic() - started, cache_hit=False)
        if time.monotonic() > deadline:
            raise _still_loading(name, control.url, wait_timeout)
        await asyncio.sleep(POLL_INTERVAL_S)


async def aunload(
    control: AsyncModelControl,
    name: str,
    *,
    unload_dependents: bool = False,
    wait_timeout: float = DEFAULT_UNLOAD_TIMEOUT_S,
    repo: Path | None = None,
    force: bool = False,
) -> UnloadResult:
    """The asyncio form of :func:`unload` (of a whole model: one version is unloaded with
    :func:`unload`). With ``repo``, a model that endpoints of ``repo`` route to, or an
    endpoint itself, is refused unless ``force``, and the unload is audited."""
    validate_model_name(name)
    started = time.monotonic()
    entries = _require_known(await control.repository_index(), name, control.url)
    if _unload_done(entries):
        return UnloadResult(name, 0.0, was_loaded=False)
    routes = _check_unload_allowed(control, repo, name, force)
    await control.unload_model(name, unload_dependents=unload_dependents)
    deadline = started + wait_timeout
    while not _unload_done(entries_of(await control.repository_index(), name)):
        if time.monotonic() > deadline:
            raise UnloadError(f"model {name!r} is still not unloaded after {wait_timeout:g} s")
        await asyncio.sleep(POLL_INTERVAL_S)
    forget_loads(repo, name)
    _audit_unload(repo, name, None, forced=force and bool(routes))
    return UnloadResult(name, time.monotonic() - started, was_loaded=True)


async def alist_models(control: AsyncModelControl, repo: Path | None = None) -> list[ModelRow]:
    """The asyncio form of :func:`list_models`."""
    return build_rows(await control.repository_index(), await control.statistics(), repo)
