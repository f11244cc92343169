"""When each loaded model version was loaded: Triton does not report it, ``fifo`` needs it.

``<repo>/.tritonctl/loaded.json`` maps ``model:version`` to ``{"at": epoch seconds, "how":
...}``:

- ``load``: tritonctl loaded it (``tritonctl load``, the REST API, the controller); ``at`` is
  when it became READY;
- ``seen``: something else loaded it (another client, an endpoint's reload); ``at`` is the
  first time tritonctl saw it READY, so its age is a lower bound.

A record lives as long as the version stays loaded: :meth:`LoadTimes.sync` drops the records
of versions that are no longer READY, so the next load of one starts a new record.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

from manager.errors import ManagerError
from manager.repository import read_json_entries, write_json_atomic
from manager.settings import META_DIR

log = logging.getLogger(__name__)

LOADED_FILE = "loaded.json"
LOADED = "load"
SEEN = "seen"

Key = tuple[str, int]


class LoadTimes:
    """The load times recorded in a repository's metadata."""

    def __init__(self, repo: Path) -> None:
        self.repo = Path(repo)

    @property
    def path(self) -> Path:
        return self.repo / META_DIR / LOADED_FILE

    def _read(self) -> dict[str, dict[str, Any]]:
        entries = read_json_entries(self.path, "loaded", "load times")
        return {k: v for k, v in entries.items() if isinstance(v.get("at"), int | float)}

    def _update(self, change: Callable[[dict[str, dict[str, Any]]], None]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path.with_name(LOADED_FILE + ".lock")), timeout=60):
            entries = self._read()
            before = json.dumps(entries, sort_keys=True)
            change(entries)
            if json.dumps(entries, sort_keys=True) != before:
                write_json_atomic(self.path, {"loaded": entries})

    def all(self) -> dict[Key, float]:
        """Every recorded load time, epoch seconds."""
        out: dict[Key, float] = {}
        for key, entry in self._read().items():
            model, _, version = key.rpartition(":")
            if model and version.isdigit():
                out[(model, int(version))] = float(entry["at"])
        return out

    def record(self, model: str, versions: Iterable[int], at: float | None = None) -> None:
        """``versions`` of ``model`` were loaded by tritonctl ``at`` (default: now)."""
        when = time.time() if at is None else at
        keys = [f"{model}:{int(v)}" for v in versions]
        if not keys:
            return

        def change(entries: dict[str, dict[str, Any]]) -> None:
            for key in keys:
                entries[key] = {"at": when, "how": LOADED}

        self._update(change)

    def forget(self, model: str, versions: Iterable[int] | None = None) -> None:
        """Drop the records of ``model`` (of ``versions`` only, if given)."""
        only = None if versions is None else {str(int(v)) for v in versions}

        def change(entries: dict[str, dict[str, Any]]) -> None:
            for key in list(entries):
                name, _, version = key.rpartition(":")
                if name == model and (only is None or version in only):
                    del entries[key]

        self._update(change)

    def sync(
        self,
        ready: Iterable[Key],
        *,
        now: float | None = None,
        fallback: Mapping[Key, float] | None = None,
    ) -> dict[Key, float]:
        """The load time of every READY version in ``ready`` (the whole server's, taken
        from its index at ``now``).

        A version without a record is recorded as ``seen`` at ``fallback[key]`` if given,
        else ``now``. Records of versions not in ``ready`` are dropped (they were unloaded
        since), except those written after ``now``: a load that finished after the index
        was read.
        """
        at = time.time() if now is None else now
        wanted = {(str(m), int(v)) for m, v in ready}
        older = dict(fallback or {})
        result: dict[Key, float] = {}

        def change(entries: dict[str, dict[str, Any]]) -> None:
            result.clear()
            for text in list(entries):
                name, _, number = text.rpartition(":")
                known = (name, int(number)) if number.isdigit() else None
                if known not in wanted and float(entries[text]["at"]) <= at:
                    del entries[text]
            for key in sorted(wanted):
                entry = entries.setdefault(
                    f"{key[0]}:{key[1]}", {"at": older.get(key, at), "how": SEEN}
                )
                result[key] = float(entry["at"])

        try:
            self._update(change)
        except (OSError, ManagerError) as exc:
            log.warning("cannot update load times in %s: %s", self.path, exc)
            known_times = self.all()
            return {key: known_times.get(key, older.get(key, at)) for key in sorted(wanted)}
        return result


def record_load(repo: Path | None, model: str, versions: Iterable[int]) -> None:
    """Record that tritonctl loaded ``versions`` of ``model`` now, when ``repo`` holds the
    model (a server whose repository is elsewhere has nowhere to keep it); best effort."""
    if repo is None or not (Path(repo) / model).is_dir():
        return
    try:
        LoadTimes(repo).record(model, versions)
    except (OSError, ManagerError) as exc:
        log.warning("cannot record the load time of %s in %s: %s", model, repo, exc)


def forget_every_load(repo: Path) -> None:
    """Drop every load-time record: a server that starts serves nothing, so records from
    before belong to loads that are gone (kept, they would date a version loaded again
    later to the old load); best effort."""
    path = LoadTimes(repo).path
    if not path.is_file():
        return
    try:
        LoadTimes(repo)._update(lambda entries: entries.clear())
    except (OSError, ManagerError) as exc:
        log.warning("cannot clear the load times in %s: %s", repo, exc)


def forget_loads(repo: Path | None, model: str, versions: Iterable[int] | None = None) -> None:
    """Drop the load-time records of ``model`` after it left memory; best effort."""
    if repo is None or not (Path(repo) / META_DIR / LOADED_FILE).is_file():
        return
    try:
        LoadTimes(repo).forget(model, versions)
    except (OSError, ManagerError) as exc:
        log.warning("cannot update the load times in %s: %s", repo, exc)
