"""What ``tritonctl ls --json`` and ``tritonctl versions --json`` list, as JSON rows.

Shared by the CLI and the REST control plane, so both answer with the same fields: a
served model version as Triton reports it (state, counts), or a published version with
its provenance, each with the memory footprint the manager knows for it (measured, else
estimated from the artifact).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from manager.footprint import Footprint, FootprintStore, footprint_fields
from manager.repository import Repository
from manager.serving import ModelRow


def model_footprints(
    rows: Sequence[ModelRow], repo: Path
) -> dict[tuple[str, int], Footprint | None]:
    """The known footprint of every versioned row (None where none is known)."""
    store = FootprintStore(repo)
    return {
        (row.name, row.version): store.known(row.name, row.version)
        for row in rows
        if row.version is not None
    }


def model_rows(rows: Sequence[ModelRow], repo: Path) -> list[dict[str, Any]]:
    """The rows of ``tritonctl ls --json``: each model version with its footprint fields."""
    footprints = model_footprints(rows, repo)
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
    store = FootprintStore(repo.path)
    rows = []
    for info in repo.version_info(name):
        row = {k: v for k, v in info.to_dict().items() if k != "config"}
        rows.append({**row, **footprint_fields(store.known(name, info.version))})
    return rows
