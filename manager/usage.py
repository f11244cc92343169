"""Which versions of a model are in use, and so must not be pruned or evicted.

In use: loaded on the server (READY in its repository index), routed to by an endpoint
(even at 0 %), or part of a rollout in progress.
"""

from __future__ import annotations

import logging
import os

from manager.errors import TritonUnreachableError
from manager.repository import Repository
from manager.settings import URL_ENV
from manager.timeouts import Timeouts

log = logging.getLogger(__name__)


def versions_in_use(
    repo: Repository,
    name: str,
    url: str | None,
    *,
    offline: bool = False,
    timeouts: Timeouts | None = None,
) -> set[int]:
    """Versions of ``name`` in use.

    The server is asked: ``url`` (or TRITONCTL_URL), else the embedded server of ``repo``,
    else ``http://localhost:8000``. One that does not answer is an error
    (TritonUnreachableError: what it serves is unknown, and a server elsewhere may have
    loaded any version) unless ``offline``: then only the repository's own records
    (endpoints, rollouts) count. ``timeouts``: those of the control (default: as
    ``TritonControl.connect`` resolves them).
    """
    from manager.endpoints import Endpoints
    from manager.rollout import RolloutStore
    from manager.server import running_server
    from manager.triton import TritonControl

    used: set[int] = set()
    explicit = url or os.environ.get(URL_ENV)
    options = timeouts.control_options() if timeouts is not None else {}
    with TritonControl.connect(explicit, repo.path, **options) as control:
        try:
            index = control.repository_index()
        except TritonUnreachableError as exc:
            if explicit or running_server(repo.path) is not None:
                if offline:
                    named = (
                        "a server is named (--url or TRITONCTL_URL)"
                        if explicit
                        else "the repository's embedded server is running"
                    )
                    raise TritonUnreachableError(
                        f"{exc}; --offline counts for nothing here: {named}, and it may "
                        "serve any version (start it, or name one that answers)"
                    ) from exc
                raise
            if not offline:
                raise TritonUnreachableError(
                    f"{exc}; cannot tell which versions of {name!r} are loaded: name the "
                    "server that serves this repository (--url), or pass --offline to count "
                    "only endpoints and rollouts"
                ) from exc
            log.warning("offline: counting only endpoints and rollouts as in use")
            index = []
        used.update(
            e.version for e in index if e.name == name and e.ready and e.version is not None
        )
        used.update(v for m, v in Endpoints(repo, control).all_target_versions() if m == name)
    for state in RolloutStore(repo).active():
        if state.model == name:
            used.update((state.old_version, state.new_version))
    return used
