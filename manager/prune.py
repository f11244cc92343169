"""Retention: removing old versions of a model, never one that is in use."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from manager.errors import ConfigError
from manager.repository import Repository

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    model: str
    removed: list[int]
    kept: list[int]
    protected: list[int]  # older than the newest N but kept because they are in use

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "removed": self.removed,
            "kept": self.kept,
            "protected": self.protected,
        }


def prune(
    repo: Repository,
    name: str,
    keep: int,
    *,
    in_use: Iterable[int] = (),
    dry_run: bool = False,
) -> PruneResult:
    """Keep the newest ``keep`` versions of ``name`` and every version in ``in_use``."""
    if keep < 1:
        raise ConfigError(f"--keep must be at least 1, got {keep}")
    used = set(in_use)
    with repo.lock(name):
        versions = repo.versions(name)
        newest = set(versions[-keep:])
        removed, protected = [], []
        for v in versions:
            if v in newest:
                continue
            if v in used:
                protected.append(v)
                continue
            if not dry_run:
                repo.remove_version(name, v)
                log.info("pruned %s version %d", name, v)
            removed.append(v)
    kept = [v for v in versions if v not in removed]
    return PruneResult(name, removed, kept, protected)
