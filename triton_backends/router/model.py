"""tritonctl endpoint router: sends each request to one of several model versions by weight.

The manager copies this file verbatim into ``<repo>/<endpoint>/1/``; it is
self-contained (standard library, numpy and ``triton_python_backend_utils``). While
traffic is split the endpoint model is this router (where the native router cannot be
used); each request is forwarded by BLS to one target ``(model, version)`` and the
target's outputs come back unchanged. A
target's error comes back to the client as an error: there is no fallback to another
target.

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
correlation id when ``use_correlation_id``; a parameter of any type, as its
``key_text``) the key's stable hash (FNV-1a 64 with the
splitmix64 finalizer: the same in every process, and the same as the native router's in
``triton_backends/router_native/router.cc``) picks a point in ``[0, total weight)``;
without one the point is random.
Targets own consecutive ranges in the order listed, so a user keeps their target while
the weights stay the same, and in a ramp listed old-then-new with a constant total no
user who already moved to the new target moves back.

Speed (measured with ``bench/endpoint.py``): ``execute`` is a plain function calling
``exec()``; ``async def execute`` with ``async_exec`` was slower, because the stub runs a
non-decoupled coroutine on another thread and ``async_exec`` runs each call in an executor
thread. A request alone is passed on with its own tensors (no copy). When Triton's dynamic
batcher hands over several requests (``max_batch_size > 0``) and routing is not sticky,
one weighted draw picks the target of the whole batch (each request still goes to a
target with the odds of its weight, and the batch costs one BLS call: 0.79x of direct
throughput at concurrency 8 in the bench, against 0.63x with a draw per request). With
sticky routing each request is placed by its key, and those going to one target
are joined into one BLS call (inputs concatenated along the batch dimension, outputs split
back; at most ``tritonctl.merge_max_bytes`` of input, default 1 MiB; parameter
``tritonctl.merge_batches: false`` turns this off); calls to different targets run side
by side. If a joined call fails, its requests are sent again one by one so each client
gets the target's answer to its own request. Triton's per-version statistics then count
a joined call as one request (``inference_count`` counts its batch items).

Sequences (stateful targets, ``tritonctl.sequences``): the request's flags (sequence
start and end) are passed on with its correlation id, and every request of a sequence
after its start goes to the target that saw the start, until its end, whatever the
weights are by then; a request of a sequence whose start this router did not see (one
that began before the router was in the path, or before it was reloaded) goes to the
first target listed (in a rollout, the version the endpoint was pinned to), and to the
next one listed when a target refuses it as a sequence it does not know (Triton does so
before anything runs), until one takes it, where the sequence is then remembered; a
sequence idle for ``tritonctl.sequence_idle_us`` is forgotten.

Streaming (decoupled) targets: tritonctl makes the router decoupled too; each request's
stream is read from its target (``exec(decoupled=True)``) on a thread of its own, up to
``STREAM_THREADS`` streams at once per router instance, and every response is passed on
as it comes (a target's error response in its place), then the final flag.

A finished stream's response iterator is kept until the stub has let go of its own
reference to it. The python_backend of Triton 2.51 (r24.10) drops that reference on a
thread of its own without holding the GIL; when it is the last one, the responses'
numpy arrays are freed there, which corrupts the stub's Python heap (it crashes or hangs
under load; r24.12 holds the GIL there). The stub queues that release before any later
``request.is_cancelled()`` query, which waits for its answer, so once such a query has
been answered every iterator finished before it was asked is the router's alone, and
dropping it here, with the GIL, frees it safely (``_release_finished``).
"""

from __future__ import annotations

import bisect
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import triton_python_backend_utils as pb_utils

ROUTES_PARAMETER = "tritonctl.routes"
MERGE_PARAMETER = "tritonctl.merge_batches"
MERGE_BYTES_PARAMETER = "tritonctl.merge_max_bytes"
SEQUENCES_PARAMETER = "tritonctl.sequences"
SEQUENCE_IDLE_PARAMETER = "tritonctl.sequence_idle_us"
SEQUENCE_START = 1
SEQUENCE_END = 2
# how a sequence batcher refuses a request of a sequence it does not know (at once,
# before anything runs)
UNKNOWN_SEQUENCE = "must specify the START flag"
MERGE_MAX_BYTES = 1 << 20
CHECK_INTERVAL_S = 0.1
STREAM_THREADS = 64
# finished response iterators kept before a new stream asks the stub to let go of them
RELEASE_AFTER = 16
_MASK64 = (1 << 64) - 1
_UNIT53 = 1.0 / float(1 << 53)


def _log(level: str, message: str) -> None:
    text = f"tritonctl router: {message}"
    logger = getattr(pb_utils, "Logger", None)
    emit = getattr(logger, f"log_{level}", None) if logger is not None else None
    if emit is None:
        print(text, flush=True)
    else:
        emit(text)


def stable_hash(key: str) -> int:
    """FNV-1a 64 of ``key``'s UTF-8 bytes, mixed by the splitmix64 finalizer."""
    h = 0xCBF29CE484222325
    for byte in key.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & _MASK64
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _MASK64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _MASK64
    return h ^ (h >> 31)


def stable_point(key: str, total: float) -> float:
    """A point in ``[0, total)`` that depends only on ``key`` (not on the process)."""
    return (stable_hash(key) >> 11) * _UNIT53 * total


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


def key_text(value: Any) -> str:
    """The text a sticky parameter's value is hashed as, the same in both routers: a string
    as it is, a bool ``true``/``false``, an integer in decimal, a double that is a whole
    number in the int64 range as that integer (3, 3.0 and "3" are one key), any other
    double as the shortest of its ``%.15g``/``%.16g``/``%.17g`` texts that reads back as
    the same double (0.7 as "0.7"), NaN as "nan"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value.is_integer() and -9223372036854775808.0 <= value < 9223372036854775808.0:
            return str(int(value))
        text = ""
        for digits in (15, 16, 17):
            text = "%.*g" % (digits, value)  # noqa: UP031 (C's %g, as the native router)
            if float(text) == value:
                break
        return text
    return str(value)


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
                return key_text(value)
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
        self._max_batch = int(config.get("max_batch_size", 0) or 0)
        merge = parameters.get(MERGE_PARAMETER, "true").strip().lower()
        self._merge = self._max_batch > 0 and merge not in ("0", "false", "no", "off")
        self._merge_max_bytes = int(parameters.get(MERGE_BYTES_PARAMETER, "") or MERGE_MAX_BYTES)
        self._sequences: dict[Any, tuple[tuple[str, int], float]] | None = None
        if parameters.get(SEQUENCES_PARAMETER, "").strip().lower() == "true":
            self._sequences = {}
        self._sequence_idle_s = int(parameters.get(SEQUENCE_IDLE_PARAMETER, "") or 2_000_000) / 1e6
        self._sequence_lock = threading.Lock()
        # sequences whose target is a guess (their start was not seen here), until a
        # target takes their request
        self._unseen: set[Any] = set()
        self._last_prune = 0.0
        policy = config.get("model_transaction_policy") or {}
        self._decoupled = bool(policy.get("decoupled", False))
        self._pool: ThreadPoolExecutor | None = None
        self._streams: ThreadPoolExecutor | None = None
        # finished BLS response iterators the stub may still hold (see the module doc)
        self._finished: list[Any] = []
        self._finished_lock = threading.Lock()
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

    # -- choice of target ---------------------------------------------------------------
    def _target(self, routes: Routes, request: Any) -> tuple[str, int]:
        """The target of one request: by its sticky key or at random, except that a request
        of a live sequence goes to the target that saw the sequence start."""
        if self._sequences is not None:
            cid = request.correlation_id()
            if cid not in (0, "", None):
                return self._sequence_target(routes, request, cid)
        return routes.pick(sticky_key(routes, request) if routes.sticky else None)

    def _sequence_target(self, routes: Routes, request: Any, cid: Any) -> tuple[str, int]:
        assert self._sequences is not None
        flags = request.flags()
        now = time.monotonic()
        with self._sequence_lock:
            live = self._sequences.get(cid)
            target = None
            if not flags & SEQUENCE_START:
                if live is None:  # started before this router was in the path: a guess
                    target = routes.targets[0]
                    self._unseen.add(cid)
                elif live[0] in routes.targets:  # else gone from the routes: placed anew
                    target = live[0]
            if target is None:
                target = routes.pick(sticky_key(routes, request) if routes.sticky else None)
            if flags & SEQUENCE_END:
                self._sequences.pop(cid, None)
            else:
                self._sequences[cid] = (target, now)
            if now - self._last_prune > self._sequence_idle_s:
                idle = [
                    k
                    for k, (_, seen) in self._sequences.items()
                    if now - seen > self._sequence_idle_s
                ]
                for key in idle:
                    del self._sequences[key]
                self._last_prune = now
        return target

    # -- execute -----------------------------------------------------------------------
    def execute(self, requests: list[Any]) -> list[Any] | None:
        routes = self._refresh()
        if self._decoupled:
            if self._streams is None:
                self._streams = ThreadPoolExecutor(
                    max_workers=STREAM_THREADS, thread_name_prefix="router-stream"
                )
            for request in requests:
                self._streams.submit(self._stream, self._target(routes, request), request)
            return None
        if len(requests) == 1:
            request = requests[0]
            return [self._forward(self._target(routes, request), request)]
        if not routes.sticky and self._sequences is None:
            # Without a sticky key every request of this batch has the same chance of
            # each target, so one draw for the whole batch gives each request the same
            # odds as a draw of its own, and the batch needs only one BLS call.
            return self._send(routes.pick(None), requests)
        groups: dict[tuple[str, int], list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(self._target(routes, request), []).append(i)
        responses: list[Any] = [None] * len(requests)
        jobs = [(target, [requests[i] for i in idx], idx) for target, idx in groups.items()]
        if len(jobs) == 1:
            target, reqs, idx = jobs[0]
            results = [self._send(target, reqs)]
        else:
            # one BLS call per target: run them side by side
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="router")
            futures = [self._pool.submit(self._send, t, r) for t, r, _ in jobs[1:]]
            results = [self._send(jobs[0][0], jobs[0][1])] + [f.result() for f in futures]
        for (_, _, idx), answers in zip(jobs, results, strict=True):
            for i, answer in zip(idx, answers, strict=True):
                responses[i] = answer
        return responses

    def _send(self, target: tuple[str, int], requests: list[Any]) -> list[Any]:
        """Answers for ``requests``, all going to ``target``."""
        if len(requests) > 1 and self._merge:
            merged = self._forward_merged(target, requests)
            if merged is not None:
                return merged
        return [self._forward(target, r) for r in requests]

    def _bls(self, target: tuple[str, int], request: Any) -> Any:
        """The BLS request that hands ``request`` on to ``target``: its tensors as they
        are, its parameters, correlation id and flags."""
        model, version = target
        bls = pb_utils.InferenceRequest(
            model_name=model,
            model_version=version,
            inputs=request.inputs(),
            requested_output_names=list(request.requested_output_names()) or self._outputs,
            **_passed_on(request.parameters(), request.correlation_id()),
        )
        _pass_flags(bls, request.flags())
        return bls

    def _forward(self, target: tuple[str, int], request: Any) -> Any:
        """One request to ``target``; its tensors are passed on as they are."""
        try:
            while True:
                try:
                    response = self._bls(target, request).exec()
                except Exception as exc:
                    return _error(target, str(exc))
                if not response.has_error():
                    return pb_utils.InferenceResponse(output_tensors=response.output_tensors())
                message = response.error().message()
                other = self._next_guess(target, request, message)
                if other is None:
                    return _error(target, message)
                target = other
        finally:
            self._settled(request)

    def _stream(self, target: tuple[str, int], request: Any) -> None:
        """A streaming target's responses to ``request``, passed on as they come."""
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        self._release_finished(request)
        try:
            while True:
                first, other = True, None
                responses = self._bls(target, request).exec(decoupled=True)
                read = False
                try:
                    for response in responses:
                        if other is not None:
                            continue  # the rest of a refused stream (its final flag)
                        if response.has_error():
                            message = response.error().message()
                            other = self._next_guess(target, request, message) if first else None
                            if other is not None:  # refused before anything ran: the next
                                continue
                            sender.send(_error(target, message))
                        elif response.output_tensors():
                            sender.send(
                                pb_utils.InferenceResponse(output_tensors=response.output_tensors())
                            )
                        first = False
                    read = True
                finally:
                    self._keep_finished(responses, read)
                if other is None:
                    break
                target = other
        except Exception as exc:
            sender.send(_error(target, str(exc)), flags=final)
            return
        finally:
            self._settled(request)
        sender.send(flags=final)

    def _keep_finished(self, responses: Any, read: bool) -> None:
        """Keep a BLS stream's response iterator until the stub has let go of it; one
        left before its end (``read`` false) is read to its end first: only then does
        the stub let go."""
        if not read:
            try:
                for _ in responses:
                    pass
            except Exception:  # what is left of it is not the caller's
                pass
        with self._finished_lock:
            self._finished.append(responses)

    def _release_finished(self, request: Any) -> None:
        """Drop the finished iterators kept so far once ``request.is_cancelled()`` has
        been answered: the stub let go of each of them before it answered. A request
        found cancelled may be answered without asking the stub; they are kept then."""
        with self._finished_lock:
            if len(self._finished) < RELEASE_AFTER:
                return
            finished, self._finished = self._finished, []
        try:
            asked = not request.is_cancelled()
        except Exception:  # keep them for the next stream
            asked = False
        if not asked:
            with self._finished_lock:
                self._finished.extend(finished)
        # otherwise the last references go with ``finished``, here, with the GIL

    def _next_guess(self, target: tuple[str, int], request: Any, message: str) -> Any:
        """The next target listed after ``target`` for a request of a sequence whose start
        this router did not see, refused by ``target`` as unknown (``message``): the
        sequence lives on another target (begun before the router was in the path, or
        before it was reloaded). It is remembered there. None when that is not the case
        or no target is left."""
        if self._sequences is None or UNKNOWN_SEQUENCE not in message:
            return None
        cid = request.correlation_id()
        with self._sequence_lock:
            if cid not in self._unseen:
                return None
            targets = self._routes.targets
            after = targets.index(target) + 1 if target in targets else len(targets)
            if after >= len(targets):
                self._unseen.discard(cid)
                return None
            if cid in self._sequences:
                self._sequences[cid] = (targets[after], time.monotonic())
            return targets[after]

    def _settled(self, request: Any) -> None:
        """A request whose sequence's target was a guess has its answer."""
        if self._unseen:
            with self._sequence_lock:
                self._unseen.discard(request.correlation_id())

    def _forward_merged(self, target: tuple[str, int], requests: list[Any]) -> list[Any] | None:
        """Several requests to one target as one batch (their inputs concatenated along
        the batch dimension, the outputs split back). None when they cannot be joined
        (different inputs, shapes past the batch dimension, too large) or when the joined
        call fails: the caller then sends them one by one, so each client gets the
        target's own answer or error for its request."""
        names: list[str] | None = None
        columns: dict[str, list[Any]] = {}
        sizes: list[int] = []
        total_bytes = 0
        # joined requests must agree on what is passed on besides the tensors
        parameters = requests[0].parameters()
        correlation_id = requests[0].correlation_id()
        flags = requests[0].flags()
        for request in requests:
            if (
                request.parameters() != parameters
                or request.correlation_id() != correlation_id
                or request.flags() != flags
            ):
                return None
            tensors = request.inputs()
            these = [t.name() for t in tensors]
            if names is None:
                names = these
            elif these != names:
                return None
            size = -1
            for tensor in tensors:
                array = tensor.as_numpy()
                if array.ndim == 0 or (size >= 0 and array.shape[0] != size):
                    return None
                size = int(array.shape[0])
                total_bytes += array.nbytes
                columns.setdefault(tensor.name(), []).append(array)
            sizes.append(size)
        if not names or sum(sizes) > self._max_batch or total_bytes > self._merge_max_bytes:
            return None
        try:
            inputs = [pb_utils.Tensor(n, _concatenate(columns[n])) for n in names]
        except ValueError:
            return None
        wanted: list[str] = []
        asked = [list(r.requested_output_names()) for r in requests]
        for names_asked in asked:
            for name in names_asked or self._outputs:
                if name not in wanted:
                    wanted.append(name)
        model, version = target
        try:
            bls = pb_utils.InferenceRequest(
                model_name=model,
                model_version=version,
                inputs=inputs,
                requested_output_names=wanted,
                **_passed_on(parameters, correlation_id),
            )
            _pass_flags(bls, flags)
            response = bls.exec()
        except Exception:
            return None
        if response.has_error():
            return None
        outputs = [(t.name(), t.as_numpy()) for t in response.output_tensors()]
        if any(a.ndim == 0 or a.shape[0] != sum(sizes) for _, a in outputs):
            return None
        answers = []
        start = 0
        for names_asked, size in zip(asked, sizes, strict=True):
            keep = set(names_asked) if names_asked else None
            answers.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(n, a[start : start + size])
                        for n, a in outputs
                        if keep is None or n in keep
                    ]
                )
            )
            start += size
        return answers

    def finalize(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        if self._streams is not None:  # streams still open end first
            self._streams.shutdown(wait=True)
        _log("info", f"router for {self._path} unloaded")


def _passed_on(parameters: str, correlation_id: Any) -> dict[str, Any]:
    """The request's parameters and correlation id, for the BLS call (parsed only when
    there are any). A BLS request takes bool, int and str parameters only: a double
    (a client's ``temperature=0.7``) is passed on as its decimal text."""
    out: dict[str, Any] = {}
    if parameters and parameters != "{}":
        out["parameters"] = {
            k: repr(v) if isinstance(v, float) else v for k, v in json.loads(parameters).items()
        }
    if correlation_id not in (0, "", None):
        out["correlation_id"] = correlation_id
    return out


def _pass_flags(bls: Any, flags: int) -> None:
    """The caller's request flags (sequence start and end) onto the BLS request."""
    if flags:
        bls.set_flags(flags)


def _concatenate(arrays: list[Any]) -> Any:
    import numpy as np

    return np.concatenate(arrays, axis=0)


def _error(target: tuple[str, int], message: str) -> Any:
    model, version = target
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(f"endpoint target {model}:{version}: {message}")
    )
