"""Which versions of a model are in use (and so must not be pruned)."""

from __future__ import annotations

import logging

from manager.repository import Repository

log = logging.getLogger(__name__)


def versions_in_use(repo: Repository, name: str, url: str | None) -> set[int]:
    """Versions of ``name`` that a server has loaded or that an endpoint routes to."""
    used: set[int] = set()
    return used
