"""``DynamicModelManager``: the asyncio API of the memory controller.

The semantics users know from dynamic model loaders::

    async with DynamicModelManager(
        "http://localhost:8000", repo="model_repository",
        max_models=4, memory_limit_gb=12, eviction_policy="lru",
    ) as manager:
        await manager.load_model("resnet")          # evicts what the policy picks, if needed
        await manager.switch_active_model("classify", "resnet", 3)
        print(manager.stats())  # loads, cache_hits, evictions, failures, average_load_seconds

Settings not given here come from ``tritonctl.yaml`` in the repository (or
``config_file``). Every call runs the blocking :class:`manager.controller.Controller` in a
worker thread; the controller holds a lock, so the manager is safe to share between many
coroutines and threads. Concurrent ``load_model`` calls for the same model and version
share one load (single flight): one caller loads, the others wait for its result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from manager.budget import ServingConfig, resolve_serving_config
from manager.controller import Controller, EnsureResult, Eviction, sole_loop
from manager.endpoints import Endpoints, EndpointState
from manager.errors import ConfigError, ManagerError
from manager.names import validate_model_name
from manager.policies import DEFAULT_POLICY
from manager.repository import Repository
from manager.serving import ModelControl, UnloadResult
from manager.settings import default_repo
from manager.triton import TritonControl

log = logging.getLogger(__name__)

_Key = tuple[str, int | None]


class DynamicModelManager:
    """Load models on demand on one Triton server, within a memory budget.

    ``memory_limit_gb`` is in GB (10**9 bytes); ``memory_limit`` takes anything
    ``tritonctl.yaml`` does (``12GB``, ``12GiB``, ``0.8`` of the device). ``eviction_policy``
    is one of ``lru``, ``fifo``, ``memory_pressure``, ``gdsf``, ``gdsf_decay``. ``pinned``
    models are never evicted (besides those pinned in the config or with ``tritonctl pin``).
    ``control`` (a ``TritonControl`` or a fake) replaces the connection made from ``url``;
    that one's ``timeout`` (a load), ``call_timeout`` and ``connect_timeout`` are these
    arguments if given, else ``TRITONCTL_LOAD_TIMEOUT`` ..., else the ``timeouts:`` of the
    settings file, else 600, 30 and 5 s (see ``TritonControl.connect``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        repo: str | os.PathLike[str] | None = None,
        max_models: int | None = None,
        memory_limit_gb: float | None = None,
        memory_limit: str | int | float | None = None,
        eviction_policy: str | None = None,
        pinned: Iterable[str] = (),
        config_file: str | os.PathLike[str] | None = None,
        control: ModelControl | None = None,
        timeout: float | None = None,
        call_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        if memory_limit_gb is not None and memory_limit is not None:
            raise ConfigError("give memory_limit_gb or memory_limit, not both")
        if memory_limit_gb is not None:
            if isinstance(memory_limit_gb, bool) or memory_limit_gb <= 0:
                raise ConfigError(f"memory_limit_gb must be positive, got {memory_limit_gb!r}")
            memory_limit = f"{float(memory_limit_gb)!r}GB"
        self.repo = Path(repo) if repo is not None else default_repo()
        config = resolve_serving_config(
            self.repo,
            Path(config_file) if config_file is not None else None,
            memory_limit=memory_limit,
            max_models=max_models,
            eviction_policy=eviction_policy,
        )
        extra = frozenset(validate_model_name(n, what="pinned model") for n in pinned)
        self.config: ServingConfig = replace(config, pinned=config.pinned | extra)
        self._owns_control = control is None
        self.control: ModelControl = control or TritonControl.connect(
            url,
            self.repo,
            config=self.config,
            timeout=timeout,
            call_timeout=call_timeout,
            connect_timeout=connect_timeout,
        )
        self.controller = Controller(self.control, self.repo, self.config)
        self._flight_lock = threading.Lock()
        self._in_flight: dict[_Key, concurrent.futures.Future[EnsureResult]] = {}
        self._coalesced = 0

    def __repr__(self) -> str:
        return (
            f"DynamicModelManager({self.control.url!r}, policy={self.eviction_policy!r}, "
            f"max_models={self.max_models!r})"
        )

    # ---------------------------------------------------------------- settings

    @property
    def eviction_policy(self) -> str:
        return self.config.eviction_policy or DEFAULT_POLICY

    @property
    def max_models(self) -> int | None:
        return self.config.budget.max_models

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> DynamicModelManager:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection this manager opened (not one it was given)."""
        close = getattr(self.control, "close", None)
        if self._owns_control and callable(close):
            await asyncio.to_thread(close)

    # ---------------------------------------------------------------- operations

    async def load_model(self, name: str, version: int | None = None) -> EnsureResult:
        """Make ``name`` (``version`` only, if given) READY, evicting as the policy says.

        Raises ``MemoryBudgetError`` before loading when it cannot fit even after evicting
        every evictable model. Callers that arrive while the same load runs wait for it
        and get its result.
        """
        validate_model_name(name)
        key: _Key = (name, version)
        with self._flight_lock:
            shared = self._in_flight.get(key)
            if shared is None:
                future: concurrent.futures.Future[EnsureResult] = concurrent.futures.Future()
                self._in_flight[key] = future
        if shared is not None:
            result = await asyncio.wrap_future(shared)
            with self._flight_lock:
                self._coalesced += 1
            log.debug("load of %s joined an in-flight load", name)
            return result
        try:
            result = await asyncio.to_thread(self.controller.ensure_loaded, name, version)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(result)
            return result
        finally:
            with self._flight_lock:
                self._in_flight.pop(key, None)

    async def unload_model(self, name: str, *, force: bool = False) -> UnloadResult:
        """Unload ``name`` and wait until its memory is free (not counted as an eviction).
        A model that endpoints route to is refused (UnloadError) unless ``force``."""
        validate_model_name(name)
        return await asyncio.to_thread(self.controller.unload, name, force=force)

    async def switch_active_model(
        self,
        endpoint: str,
        model: str,
        version: int | None = None,
        *,
        force: bool = False,
        drain: bool = True,
    ) -> EndpointState:
        """Point ``endpoint`` at ``model`` (``version``, default the newest): the model is
        first made to fit (as :meth:`load_model`), then the endpoint re-pointed. A model
        with other inputs or outputs than the endpoint's is refused unless ``force``. The
        sequences under way on a stateful endpoint end first unless not ``drain``."""
        await self.load_model(model, version)
        return await asyncio.to_thread(self._switch, endpoint, model, version, force, drain)

    def _switch(
        self,
        endpoint: str,
        model: str,
        version: int | None,
        force: bool = False,
        drain: bool = True,
    ) -> EndpointState:
        # the budget's lock is held while the endpoint loads what it needs (not while a
        # stateful endpoint waits for its sequences to end)
        endpoints = Endpoints(
            Repository(self.repo), self.control, admission=self.controller.admitting
        )
        return endpoints.switch(endpoint, model, version, force=force, drain=drain)

    async def evict(self, name: str, *, force: bool = False) -> list[Eviction]:
        """Evict ``name`` by hand (audited); refused for a protected model unless ``force``."""
        return await asyncio.to_thread(self.controller.evict, name, force=force)

    async def run_controller(
        self, interval: float = 5.0, stop: asyncio.Event | None = None
    ) -> None:
        """Run the controller loop (watermarks, policy feed) until ``stop`` is set. A poll
        that fails (Triton unreachable, restarting) is logged and retried. Refused with
        ``ControllerRunningError`` while another loop runs on the repository."""
        stop = stop or asyncio.Event()
        with sole_loop(self.repo):
            while not stop.is_set():
                try:
                    await asyncio.to_thread(self.controller.run_once)
                except ManagerError as exc:
                    log.warning("controller: %s; retrying in %g s", exc, interval)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=interval)
                except asyncio.TimeoutError:
                    continue

    def stats(self) -> dict[str, Any]:
        """Counters since the manager was made: ``loads``, ``cache_hits`` (calls that loaded
        nothing: already READY, or joined a load in flight), ``coalesced`` (of those, the
        joiners), ``evictions``, ``failures``, ``average_load_seconds``."""
        counters = self.controller.stats
        with self._flight_lock:
            coalesced = self._coalesced
        return {
            "loads": counters.loads,
            "cache_hits": counters.cache_hits + coalesced,
            "coalesced": coalesced,
            "evictions": counters.evictions,
            "failures": counters.failures,
            "average_load_seconds": counters.average_load_seconds,
        }
