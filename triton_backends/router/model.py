"""tritonctl endpoint router: sends each request to one of several model versions by weight.

The manager copies this file verbatim into ``<repo>/<endpoint>__router/1/``; it is
self-contained (standard library and ``triton_python_backend_utils`` only). The endpoint's
ensemble calls this model while traffic is split; each request is forwarded by BLS
(``async_exec``) to one target ``(model, version)`` and the target's outputs come back
unchanged. A target's error comes back to the client as an error: there is no fallback
to another target.

The routes live in a JSON file written by ``manager.endpoints`` (atomically, temp file
and rename)::

    {"name": ..., "mode": "routed", "generation": 7,
     "targets": [{"model": "m", "version": 1, "weight": 90}, {"model": "m", ...}],
     "sticky": {"parameter": "user" | null, "use_correlation_id": false}}

Its path is the config parameter ``tritonctl.routes``, relative to this model's folder
(absolute paths are accepted). The file is ``stat``-ed at most every
``CHECK_INTERVAL_S`` seconds and parsed again only when its inode, size or mtime changed,
so a weight change takes effect within a fraction of a second without a reload. A file
that cannot be read keeps the routes in force (and is logged).

Choice of target: with a sticky key (the request parameter named in the routes, else the
correlation id when ``use_correlation_id``) the key's stable hash picks a point in
``[0, total weight)``; without one the point is random. Targets own consecutive ranges
in the order listed, so a user keeps their target while the weights stay the same, and
when the last target's weight only grows (a canary ramp listed old-then-new) no user
who already moved to it moves back.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import os
import random
import time
from typing import Any

import triton_python_backend_utils as pb_utils

ROUTES_PARAMETER = "tritonctl.routes"
CHECK_INTERVAL_S = 0.1
_HASH_SCALE = float(2**64)


def _log(level: str, message: str) -> None:
    text = f"tritonctl router: {message}"
    logger = getattr(pb_utils, "Logger", None)
    emit = getattr(logger, f"log_{level}", None) if logger is not None else None
    if emit is None:
        print(text, flush=True)
    else:
        emit(text)


def stable_point(key: str, total: float) -> float:
    """A point in ``[0, total)`` that depends only on ``key`` (not on the process)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SCALE * total


class Routes:
    """A parsed routes file: targets with cumulative weights, and the sticky settings."""

    __slots__ = (
        "bounds",
        "generation",
        "single",
        "sticky_parameter",
        "sticky_quoted",
        "targets",
        "total",
        "use_correlation_id",
    )

    def __init__(self, data: dict[str, Any]) -> None:
        raw = data.get("targets")
        if not isinstance(raw, list) or not raw:
            raise ValueError("routes have no targets")
        targets: list[tuple[str, int]] = []
        bounds: list[float] = []
        total = 0.0
        for entry in raw:
            weight = float(entry.get("weight", 0.0))
            if not weight >= 0.0 or weight == float("inf"):
                raise ValueError(f"invalid weight {weight!r}")
            total += weight
            targets.append((str(entry["model"]), int(entry["version"])))
            bounds.append(total)
        if total <= 0.0:
            raise ValueError("the weights of the routes add up to 0")
        sticky = data.get("sticky") or {}
        parameter = sticky.get("parameter")
        self.targets = targets
        self.bounds = bounds
        self.total = total
        positive = [t for t, w in zip(targets, _weights(bounds), strict=True) if w > 0.0]
        self.single = positive[0] if len(positive) == 1 else None
        self.sticky_parameter = str(parameter) if parameter else None
        self.sticky_quoted = json.dumps(self.sticky_parameter) if self.sticky_parameter else ""
        self.use_correlation_id = bool(sticky.get("use_correlation_id", False))
        self.generation = int(data.get("generation", 0))

    @property
    def sticky(self) -> bool:
        return self.sticky_parameter is not None or self.use_correlation_id

    def at(self, point: float) -> tuple[str, int]:
        """The target whose weight range holds ``point`` (zero-weight targets own none)."""
        index = bisect.bisect_right(self.bounds, point)
        if index >= len(self.targets):
            index = len(self.targets) - 1
        return self.targets[index]

    def pick(self, key: str | None) -> tuple[str, int]:
        if self.single is not None:
            return self.single
        if key is None:
            return self.at(random.random() * self.total)
        return self.at(stable_point(key, self.total))


def _weights(bounds: list[float]) -> list[float]:
    previous = 0.0
    out = []
    for bound in bounds:
        out.append(bound - previous)
        previous = bound
    return out


def sticky_key(routes: Routes, request: Any) -> str | None:
    """The request's routing key, or None to route at random."""
    if routes.sticky_parameter is not None:
        text = request.parameters()
        # parse the parameters only when the key can be there at all
        if text and routes.sticky_quoted in text:
            try:
                value = json.loads(text).get(routes.sticky_parameter)
            except (ValueError, AttributeError):
                value = None
            if value is not None and value != "":
                return str(value)
    if routes.use_correlation_id:
        cid = request.correlation_id()
        if cid not in (0, "", None):
            return f"correlation:{cid}"
    return None


class TritonPythonModel:
    """The router model (see the module docstring)."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {
            key: str(value.get("string_value", "")) if isinstance(value, dict) else str(value)
            for key, value in (config.get("parameters") or {}).items()
        }
        relative = parameters.get(ROUTES_PARAMETER, "")
        if not relative:
            raise ValueError(f"the router's config has no {ROUTES_PARAMETER!r} parameter")
        base = args.get("model_repository", "")
        self._path = os.path.normpath(os.path.join(base, relative))
        self._outputs = [str(o["name"]) for o in config.get("output", [])]
        self._stat: tuple[int, int, int] | None = None
        self._next_check = 0.0
        stat = os.stat(self._path)  # a missing routes file fails the load
        self._routes = self._parse(stat)
        _log("info", f"routes {self._path} generation {self._routes.generation} loaded")

    def _parse(self, stat: os.stat_result) -> Routes:
        with open(self._path, encoding="utf-8") as fh:
            routes = Routes(json.load(fh))
        self._stat = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        return routes

    def _refresh(self) -> Routes:
        now = time.monotonic()
        if now < self._next_check:
            return self._routes
        self._next_check = now + CHECK_INTERVAL_S
        try:
            stat = os.stat(self._path)
            if (stat.st_ino, stat.st_size, stat.st_mtime_ns) != self._stat:
                self._routes = self._parse(stat)
                _log("info", f"routes generation {self._routes.generation} in force")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _log("error", f"cannot read routes {self._path} ({exc}); keeping the routes in force")
        return self._routes

    async def execute(self, requests: list[Any]) -> list[Any]:
        routes = self._refresh()
        if len(requests) == 1:
            return [await self._forward(routes, requests[0])]
        return list(await asyncio.gather(*(self._forward(routes, r) for r in requests)))

    async def _forward(self, routes: Routes, request: Any) -> Any:
        model, version = routes.pick(sticky_key(routes, request) if routes.sticky else None)
        try:
            bls = pb_utils.InferenceRequest(
                model_name=model,
                model_version=version,
                inputs=request.inputs(),
                requested_output_names=request.requested_output_names() or self._outputs,
            )
            response = await bls.async_exec()
        except Exception as exc:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"endpoint target {model}:{version}: {exc}")
            )
        if response.has_error():
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(
                    f"endpoint target {model}:{version}: {response.error().message()}"
                )
            )
        return pb_utils.InferenceResponse(output_tensors=response.output_tensors())

    def finalize(self) -> None:
        _log("info", f"router for {self._path} unloaded")
