"""What ``tritonctl ls --json`` and ``tritonctl versions --json`` list, as JSON rows.

Shared by the CLI and the REST control plane, so both answer with the same fields: a
served model version as Triton reports it (state, counts), or a published version with
its provenance, each with the memory footprint the manager knows for it (measured, else
estimated from the artifact).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from manager.errors import ManagerError, ModelNotFoundError
from manager.footprint import (
    Footprint,
    FootprintStore,
    MemoryMeter,
    footprint_fields,
    loaded_footprint,
)
from manager.metrics import MetricsSource
from manager.repository import Repository
from manager.serving import ModelRow

log = logging.getLogger(__name__)

LiveBytes = Mapping[tuple[str, int | None], int]


def live_memory(control: MetricsSource, url: str, repo: Path) -> LiveBytes:
    """Bytes each loaded version holds now, where they can be read (the Python-backend
    stubs of the embedded server of ``repo`` on a CPU host): what the memory controller
    counts for them. Empty elsewhere, or when the server's memory cannot be read."""
    meter = MemoryMeter.for_control(control, url, repo)
    if meter.server_pid is None:
        return {}
    try:
        return meter.usage().per_version
    except ManagerError as exc:
        log.info("no live memory reading from %s: %s", url, exc)
        return {}


def model_footprints(
    rows: Sequence[ModelRow], repo: Path, live: LiveBytes | None = None
) -> dict[tuple[str, int], Footprint | None]:
    """The footprint of every versioned row (None where none is known): for a READY one
    what the memory controller counts (``live`` bytes, else measured, else estimated);
    for the others the measured footprint, else the estimate."""
    store = FootprintStore(repo)
    return {
        (row.name, row.version): (
            loaded_footprint(store, row.name, row.version, live)
            if row.state == "READY"
            else store.known(row.name, row.version)
        )
        for row in rows
        if row.version is not None
    }


def model_rows(
    rows: Sequence[ModelRow], repo: Path, live: LiveBytes | None = None
) -> list[dict[str, Any]]:
    """The rows of ``tritonctl ls --json``: each model version with its footprint fields."""
    footprints = model_footprints(rows, repo, live)
    return [
        {
            **row.to_json(),
            **footprint_fields(
                footprints.get((row.name, row.version)) if row.version is not None else None
            ),
        }
        for row in rows
    ]


def version_rows(repo: Repository, name: str) -> list[dict[str, Any]]:
    """The rows of ``tritonctl versions NAME --json``: provenance (without the config
    text) and footprint fields of every published version of ``name``."""
    repo.require()
    from manager.endpoints import is_endpoint_folder

    if is_endpoint_folder(repo, name):
        raise ModelNotFoundError(
            f"{name!r} is an endpoint, not a published model: `tritonctl endpoint show "
            f"{name}` shows where it routes"
        )
    store = FootprintStore(repo.path)
    rows = []
    for info in repo.version_info(name):
        row = {k: v for k, v in info.to_dict().items() if k != "config"}
        rows.append({**row, **footprint_fields(store.known(name, info.version))})
    return rows
