"""What every route of the control plane needs: the repository, how to reach Triton, and
the serving settings, resolved as the CLI resolves its global options."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from manager.budget import ServingConfig, ServingOptions, resolve_control_timeouts
from manager.repository import Repository
from manager.timeouts import Timeouts
from manager.triton import TritonControl, check_metrics_url, parse_url

ControlFactory = Callable[[], TritonControl]
"""Makes the Triton control a request uses (a test passes one that returns a fake)."""


class ControlPlane(ServingOptions):
    """The repository and Triton server one control plane manages.

    ``url`` None means what the CLI does without ``--url``: ``TRITONCTL_URL``, else the
    embedded server of ``repo`` if one runs (looked up on every request, so a restarted
    server is followed), else ``http://localhost:8000``; ``metrics_url`` is ``--metrics-url``. ``config_file``,
    ``memory_limit``, ``max_models`` and ``policy`` are the CLI's ``--config``,
    ``--memory-limit``, ``--max-models`` and ``--policy``: the serving settings are read
    on every request (``tritonctl.yaml`` edits take effect), and checked once here so
    that bad settings fail at start-up. ``load_timeout``, ``call_timeout`` and
    ``connect_timeout`` are ``--load-timeout``, ``--call-timeout`` and
    ``--connect-timeout``: unset, each is taken from the environment, else from the
    ``timeouts:`` of tritonctl.yaml (read on every request too), else the default.
    """

    def __init__(
        self,
        repo: str | Path,
        url: str | None = None,
        *,
        metrics_url: str | None = None,
        config_file: Path | None = None,
        memory_limit: str | None = None,
        max_models: int | None = None,
        policy: str | None = None,
        load_timeout: float | None = None,
        call_timeout: float | None = None,
        connect_timeout: float | None = None,
        control_factory: ControlFactory | None = None,
    ) -> None:
        self.repo = Path(repo)
        self.url = url
        self.metrics_url = check_metrics_url(metrics_url) if metrics_url else None
        self.config_file = config_file
        self.memory_limit = memory_limit
        self.max_models = max_models
        self.policy = policy
        self.given_timeouts = Timeouts(load_timeout, call_timeout, connect_timeout)
        self._control_factory = control_factory
        if url is not None:
            parse_url(url)
        self.timeouts(self.serving_config())

    def __repr__(self) -> str:
        return f"ControlPlane({str(self.repo)!r}, {self.url!r})"

    @property
    def repository(self) -> Repository:
        return Repository(self.repo)

    def timeouts(self, config: ServingConfig | None = None) -> Timeouts:
        """The Triton timeouts in effect: the options, the environment, the ``timeouts:``
        of ``config`` (else of the settings file), the defaults."""
        return resolve_control_timeouts(
            self.given_timeouts, self.repo, self.config_file, config=config
        )

    @contextmanager
    def control(
        self, *, timeout: float | None = None, load_timeout: float | None = None
    ) -> Iterator[TritonControl]:
        """A Triton control for one request, closed after it, with the timeouts in effect.
        ``timeout``: no call may take longer (connecting included), whatever the settings
        say, for the health check and the metrics scrape, which must answer quickly.
        ``load_timeout``: a load may take at least this long (a request's own longer wait).
        One made by a ``control_factory`` belongs to the factory and is not closed."""
        if self._control_factory is not None:
            yield self._control_factory()
            return
        timeouts = self.timeouts()
        if timeout is not None:
            timeouts = timeouts.within(timeout)
        options: dict[str, Any] = timeouts.control_options(load_at_least=load_timeout)
        with TritonControl.connect(
            self.url, self.repo, metrics_url=self.metrics_url, **options
        ) as control:
            yield control
