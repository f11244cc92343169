"""A small, typed facade over Triton's model-control API (HTTP or gRPC).

``TritonControl`` talks to ``http://HOST:PORT`` through ``tritonclient.http`` and to
``grpc://HOST:PORT`` through ``tritonclient.grpc``; ``AsyncTritonControl`` does the same
with the ``aio`` clients. Both return plain dataclasses and turn every tritonclient or
socket error into a :class:`~manager.errors.ManagerError` subclass that carries Triton's
own message.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import SplitResult, urlsplit

from manager.budget import ServingConfig, resolve_control_timeouts
from manager.errors import (
    LoadError,
    ManagerError,
    ModelNotFoundError,
    TritonTimeoutError,
    TritonUnreachableError,
    UnloadError,
)
from manager.server import ServerInfo, read_record, urlopen_direct
from manager.settings import DEFAULT_URL, METRICS_URL_ENV, URL_ENV
from manager.timeouts import (
    DEFAULT_CALL_TIMEOUT_S,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_LOAD_TIMEOUT_S,
    from_control_options,
    parse_timeout,
)

log = logging.getLogger(__name__)

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_TIMEOUT_S = DEFAULT_LOAD_TIMEOUT_S
"""Seconds a load may take (Triton answers a load once it is done)."""
CALL_TIMEOUT_S = DEFAULT_CALL_TIMEOUT_S
"""Seconds any other call may take (Triton answers them at once; an unload once it is
started): a server that gives no answer in this time hangs."""
CONNECT_TIMEOUT_S = DEFAULT_CONNECT_TIMEOUT_S

T = TypeVar("T")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class IndexEntry:
    """One row of Triton's repository index: a model version and its state.

    ``version`` is None for a model Triton has never tried to load; its state is then
    ``UNAVAILABLE`` with an empty reason.
    """

    name: str
    version: int | None
    state: str
    reason: str

    @property
    def ready(self) -> bool:
        return self.state == "READY"


@dataclass(frozen=True)
class ModelStats:
    """Inference statistics of one loaded model version (times in ns, counts)."""

    name: str
    version: int | None
    last_inference_ms: int
    inference_count: int
    execution_count: int
    success_count: int
    success_ns: int
    fail_count: int
    fail_ns: int
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int


@dataclass(frozen=True)
class Endpoint:
    """Where a Triton server answers: protocol, host, port and its metrics URL; and, for
    an HTTP URL, the gRPC URL of the same server if known (``control_url``), for loads
    and unloads: Triton's HTTP server runs a load on the thread that took the request,
    and the HTTP inference requests of other clients wait behind it until the load is
    done (seconds for a large model), while a load over gRPC holds up nobody."""

    protocol: str  # "http" or "grpc"
    host: str
    port: int
    metrics_url: str
    control_url: str | None = None

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """``host:port`` as tritonclient takes it."""
        return f"{self.host}:{self.port}"


def parse_url(
    url: str, *, metrics_url: str | None = None, control_url: str | None = None
) -> Endpoint:
    """Parse ``http://HOST:PORT``, ``grpc://HOST:PORT`` or ``HOST:PORT`` (HTTP).

    Without ``metrics_url`` the metrics endpoint is taken to be ``http://HOST:8002``.
    ``control_url`` (a ``grpc://`` URL of the same server) is kept for an HTTP URL only.
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    protocol = parts.scheme.lower()
    if protocol not in ("http", "grpc"):
        raise ManagerError(
            f"unsupported Triton URL {url!r}: use http://HOST:PORT or grpc://HOST:PORT"
        )
    port = _port_of(parts, f"Triton URL {url!r}")
    host = parts.hostname
    if not host:
        raise ManagerError(f"no host in Triton URL {url!r}")
    # tritonctl's clients talk to HOST:PORT only: what else a URL says would be dropped
    extra = [
        what
        for what, given in (
            ("a path", parts.path.strip("/")),
            ("a query", parts.query),
            ("a fragment", parts.fragment),
            ("a user name or password", parts.username or parts.password),
        )
        if given
    ]
    if extra:
        raise ManagerError(
            f"Triton URL {url!r} has {' and '.join(extra)}, which tritonctl would not use: "
            "give http://HOST:PORT or grpc://HOST:PORT"
        )
    if port is None:
        port = DEFAULT_HTTP_PORT if protocol == "http" else DEFAULT_GRPC_PORT
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    metrics = (metrics_url or f"http://{host}:{DEFAULT_METRICS_PORT}").rstrip("/")
    control = None
    if control_url and protocol == "http":
        control = parse_url(control_url).url
        if not control.startswith("grpc://"):
            raise ManagerError(f"the control URL {control_url!r} must be grpc://HOST:PORT")
    return Endpoint(
        protocol=protocol, host=host, port=port, metrics_url=metrics, control_url=control
    )


def resolve_url(explicit: str | None = None, repo: Path | None = None) -> str:
    """The Triton URL to use: ``explicit`` (or ``TRITONCTL_URL``), else the embedded
    server recorded for ``repo``, else ``http://localhost:8000``.

    A recorded server whose process is gone (it crashed; ``server status`` or the next
    ``server start`` clears its record) is still the one named: what answers on the
    default port may be another repository's server, which the commands of this one (a
    controller's evictions) must not act on."""
    if explicit:
        return explicit
    from_env = os.environ.get(URL_ENV)
    if from_env:
        return from_env
    if repo is not None:
        info = read_record(repo)  # alive or not (see above)
        if info is not None:
            return info.http_url
    return DEFAULT_URL


def resolve_endpoint(
    explicit: str | None = None, repo: Path | None = None, metrics_url: str | None = None
) -> Endpoint:
    """Like :func:`resolve_url`, with the metrics URL: ``metrics_url`` if given, else the
    embedded server's when the URL is one of its endpoints, else ``TRITONCTL_METRICS_URL``,
    else ``http://HOST:8002``. The embedded server's HTTP URL comes with its gRPC URL as
    the ``control_url`` (loads and unloads go over gRPC: see :class:`Endpoint`)."""
    url = resolve_url(explicit, repo)
    embedded = None
    if repo is not None:
        info = read_record(repo)  # alive or not, as resolve_url names it
        if info is not None and parse_url(url).url in (
            parse_url(info.http_url).url,
            parse_url(info.grpc_url).url,
        ):
            embedded = info
    control_url = embedded.grpc_url if embedded is not None else None
    if metrics_url:
        chosen: str | None = check_metrics_url(metrics_url)
    elif embedded is not None:
        chosen = embedded.metrics_url
    else:
        from_env = os.environ.get(METRICS_URL_ENV)
        chosen = check_metrics_url(from_env) if from_env else None
    return parse_url(url, metrics_url=chosen, control_url=control_url)


def check_metrics_url(url: str) -> str:
    """``url`` (``http(s)://HOST:PORT``, ``/metrics`` left off) or a ManagerError."""
    text = url.strip().rstrip("/").removesuffix("/metrics")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ManagerError(
            f"invalid Triton metrics URL {url!r}: use http://HOST:PORT (Triton's --metrics-port)"
        )
    _port_of(parts, f"Triton metrics URL {url!r}")
    return text


def _port_of(parts: SplitResult, what: str) -> int | None:
    """The port of ``parts`` (None when the URL has none); ManagerError naming ``what``
    when it is not a port number."""
    try:
        return parts.port
    except ValueError as exc:
        raise ManagerError(f"invalid port in {what}") from exc


# --------------------------------------------------------------------------- parsing


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _version(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_index(rows: Iterable[Mapping[str, Any]]) -> list[IndexEntry]:
    """Index rows (HTTP list or gRPC ``models``) -> entries; hidden ``.``-names dropped."""
    entries = []
    for row in rows:
        name = str(row.get("name", ""))
        if not name or name.startswith("."):
            continue
        entries.append(
            IndexEntry(
                name=name,
                version=_version(row.get("version")),
                state=str(row.get("state") or "UNAVAILABLE"),
                reason=str(row.get("reason") or ""),
            )
        )
    entries.sort(key=lambda e: (e.name, e.version or 0))
    return entries


def parse_statistics(data: Mapping[str, Any]) -> list[ModelStats]:
    """``model_stats`` of the statistics API (HTTP JSON or gRPC as_json) -> dataclasses.

    gRPC's JSON drops zero fields and writes 64-bit integers as strings; both are handled.
    """
    stats = []
    for row in data.get("model_stats", []) or []:
        name = str(row.get("name", ""))
        if not name or name.startswith("."):
            continue
        inf = row.get("inference_stats", {}) or {}

        def part(key: str, field: str, inf: Mapping[str, Any] = inf) -> int:
            return _int((inf.get(key) or {}).get(field))

        stats.append(
            ModelStats(
                name=name,
                version=_version(row.get("version")),
                last_inference_ms=_int(row.get("last_inference")),
                inference_count=_int(row.get("inference_count")),
                execution_count=_int(row.get("execution_count")),
                success_count=part("success", "count"),
                success_ns=part("success", "ns"),
                fail_count=part("fail", "count"),
                fail_ns=part("fail", "ns"),
                queue_ns=part("queue", "ns"),
                compute_input_ns=part("compute_input", "ns"),
                compute_infer_ns=part("compute_infer", "ns"),
                compute_output_ns=part("compute_output", "ns"),
            )
        )
    stats.sort(key=lambda s: (s.name, s.version or 0))
    return stats


def one_line(message: str) -> str:
    """Triton's messages carry Python tracebacks over several lines; join them."""
    return " ".join(message.split()).rstrip(" ;")


def is_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` (of a socket, tritonclient's HTTP client or aiohttp) is a request
    that got no answer in time."""
    return isinstance(exc, TimeoutError) or type(exc).__name__ in (
        "ServerTimeoutError",
        "Timeout",
    )


def _not_healthy(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a health request over gRPC, means "not live/ready", as
    any answer but 200 (or none) does over HTTP: no server answered (refused,
    unreachable, no answer in time) or it answered an error."""
    from tritonclient.utils import InferenceServerException

    return isinstance(exc, ManagerError | InferenceServerException | OSError) or is_timeout(exc)


TRITON_UNAVAILABLE_ANSWERS = ("model load / unload is not allowed",)
"""What Triton itself answers with gRPC's UNAVAILABLE status (which otherwise means that
no server answered): a server not in explicit model-control mode refusing a load or an
unload."""


def answered_by_triton(message: str) -> bool:
    """Whether a gRPC UNAVAILABLE error with ``message`` is Triton's own answer."""
    return any(answer in message for answer in TRITON_UNAVAILABLE_ANSWERS)


def translate_error(
    exc: BaseException,
    *,
    url: str,
    action: str,
    error: type[ManagerError] = ManagerError,
    timeout: float | None = None,
    unanswered: type[ManagerError] | None = None,
) -> ManagerError:
    """Map a tritonclient/socket exception to the ManagerError the caller should see.

    A request that got no answer within ``timeout`` is ``unanswered`` (``error`` if None):
    a load may just be slow, a call that Triton answers at once is one to a server that
    hangs (:class:`~manager.errors.TritonTimeoutError`)."""
    from tritonclient.utils import InferenceServerException

    late = unanswered or error

    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        message = one_line(str(exc.message() or exc))
        if status == "StatusCode.UNAVAILABLE" and not answered_by_triton(message):
            return TritonUnreachableError(f"no Triton server answers at {url} ({message})")
        if status == "StatusCode.DEADLINE_EXCEEDED":
            return late(f"{action}: no answer from {url} within {timeout:g} s")
        if status in ("404", "StatusCode.NOT_FOUND") or "unknown model" in message:
            return ModelNotFoundError(message)
        return error(message)
    if is_timeout(exc):
        limit = f" within {timeout:g} s" if timeout else ""
        return late(f"{action}: no answer from {url}{limit}")
    if isinstance(exc, OSError) or type(exc).__module__.startswith("aiohttp"):
        return TritonUnreachableError(f"no Triton server answers at {url} ({exc})")
    return error(f"{action} at {url} failed: {exc}")


def grpc_channel_args(connect_timeout: float = CONNECT_TIMEOUT_S) -> list[tuple[str, Any]]:
    """gRPC channel options of the control clients: tritonclient's defaults, plus

    * a subchannel pool of the channel's own: channels to one address otherwise share a
      connection, and with it a reconnect back-off that a fresh client would inherit;
    * reconnects at most 2 s apart, so that a control client sees a restarted server
      within seconds (gRPC's default back-off grows to 120 s);
    * no proxy: gRPC would go through ``$http_proxy``, ``$https_proxy`` or
      ``$grpc_proxy`` (even to 127.0.0.1), where the HTTP clients connect directly;
    * ``connect_timeout`` for a connection to be made, as over HTTP. gRPC takes it from
      ``grpc.min_reconnect_backoff_ms`` (its "minimum connect timeout"): that option set
      to the 200 ms of the first back-off made every server further than about 200 ms
      away (a round trip and a half) unreachable over gRPC.
    """
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_http_proxy", 0),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", max(1, round(connect_timeout * 1000))),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


def _fetch_text(url: str, timeout: float) -> str:
    try:
        with urlopen_direct(url, timeout=timeout) as resp:
            return bytes(resp.read()).decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        raise ManagerError(f"GET {url} answered {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise TritonUnreachableError(
            f"no Triton metrics endpoint answers at {url} ({exc})"
        ) from exc


def http_health(endpoint: Endpoint, which: str, timeout: float) -> bool:
    """Whether Triton at ``endpoint`` (HTTP) answers ``GET /v2/health/<which>`` (``live`` or
    ``ready``) with 200 within ``timeout`` seconds: False for any other answer, and for
    none (refused, or no answer in time: a server that hangs is not live).

    Not through tritonclient's HTTP client, whose one timeout covers every call of the
    client (the control's ``call_timeout``, longer than a connect timeout) and whose
    gevent sockets belong to the thread that made them."""
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)
    try:
        conn.request("GET", f"/v2/health/{which}")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException) as exc:
        log.debug("health %s of %s: %s", which, endpoint.url, exc)
        return False
    finally:
        conn.close()


async def http_health_async(endpoint: Endpoint, which: str, timeout: float) -> bool:
    """:func:`http_health` on the event loop (not in a worker thread, which long loads
    may all be holding)."""
    import aiohttp

    url = f"http://{endpoint.address}/v2/health/{which}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url) as resp,
        ):
            return resp.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.debug("health %s of %s: %s", which, endpoint.url, exc)
        return False


def release_thread_hub() -> None:
    """Destroy the calling thread's gevent hub, if it has one, for a thread that is about
    to end after its HTTP calls (its clients closed). tritonclient's HTTP client runs on
    gevent, which makes a hub per thread (an epoll and an eventfd): gevent leaves it to
    its user to destroy, and a hub left behind keeps its two descriptors open after the
    thread is gone."""
    if "gevent" not in sys.modules:
        return
    try:
        from gevent._hub_local import get_hub_if_exists  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - a gevent without it
        return
    hub = get_hub_if_exists()
    if hub is not None:
        hub.destroy(destroy_loop=True)


# --------------------------------------------------------------------------- sync


_Control = TypeVar("_Control", bound="_ControlBase")


class _ControlBase:
    """Where a Triton server answers, and the timeouts to use (shared by the sync and
    asyncio controls, whose clients are created on first use).

    ``timeout``: seconds a load may take (Triton answers it once the model is loaded).
    ``call_timeout``: seconds every other call may take (index, statistics, config,
    unload: Triton answers them at once), never more than ``timeout``; one that gets no
    answer in time raises :class:`~manager.errors.TritonTimeoutError`.
    ``connect_timeout``: seconds to connect, and for a health request.
    Each is a positive, finite number (else a :class:`~manager.errors.ConfigError`).
    """

    def __init__(
        self,
        url: str,
        *,
        metrics_url: str | None = None,
        control_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        call_timeout: float = CALL_TIMEOUT_S,
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.endpoint = parse_url(url, metrics_url=metrics_url, control_url=control_url)
        self.timeout = parse_timeout(timeout, "timeout")
        self.call_timeout = min(parse_timeout(call_timeout, "call_timeout"), self.timeout)
        self.connect_timeout = parse_timeout(connect_timeout, "connect_timeout")
        self._client: Any = None

    @classmethod
    def connect(
        cls: type[_Control],
        url: str | None = None,
        repo: Path | None = None,
        *,
        metrics_url: str | None = None,
        config_file: Path | None = None,
        config: ServingConfig | None = None,
        **kwargs: Any,
    ) -> _Control:
        """A control for :func:`resolve_endpoint` ``(url, repo, metrics_url)``, with the
        timeouts resolved as the CLI resolves them: ``timeout``, ``call_timeout`` and
        ``connect_timeout`` if given (not None), else ``TRITONCTL_LOAD_TIMEOUT``,
        ``TRITONCTL_CALL_TIMEOUT`` and ``TRITONCTL_CONNECT_TIMEOUT``, else the
        ``timeouts:`` of ``config`` (else of ``config_file``, else of
        ``<repo>/tritonctl.yaml``), else the defaults (600, 30, 5 s). A bad value is a
        :class:`~manager.errors.ConfigError`."""
        timeouts = resolve_control_timeouts(
            from_control_options(kwargs), repo, config_file, config=config
        )
        kwargs.update(timeouts.control_options())
        ep = resolve_endpoint(url, repo, metrics_url)
        return cls(ep.url, metrics_url=ep.metrics_url, control_url=ep.control_url, **kwargs)

    @classmethod
    def for_server(
        cls: type[_Control], info: ServerInfo, *, grpc: bool = False, **kwargs: Any
    ) -> _Control:
        """A control for an embedded server (its HTTP or gRPC URL and its metrics URL;
        over HTTP, loads and unloads go over gRPC)."""
        url = info.grpc_url if grpc else info.http_url
        return cls(url, metrics_url=info.metrics_url, control_url=info.grpc_url, **kwargs)

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def metrics_url(self) -> str:
        return self.endpoint.metrics_url

    @property
    def is_grpc(self) -> bool:
        return self.endpoint.protocol == "grpc"

    @property
    def grpc_url(self) -> str | None:
        """The server's gRPC URL: its URL if that is gRPC, else its control URL (None when
        not known). Streaming (decoupled) models are called over it."""
        return self.url if self.is_grpc else self.endpoint.control_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _grpc_kw(self, *, load: bool = False) -> dict[str, Any]:
        """The per-call deadline over gRPC: ``timeout`` for a load, else ``call_timeout``."""
        if not self.is_grpc:
            return {}
        return {"client_timeout": self.timeout if load else self.call_timeout}

    def _translate(
        self, exc: BaseException, action: str, error: type[ManagerError], *, load: bool = False
    ) -> ManagerError:
        """:func:`translate_error` for a call of this control: a load that got no answer
        within ``timeout`` is ``error``; any other call that got none within
        ``call_timeout`` is a TritonTimeoutError (the server hangs)."""
        if load:
            return translate_error(
                exc, url=self.url, action=action, error=error, timeout=self.timeout
            )
        return translate_error(
            exc,
            url=self.url,
            action=action,
            error=error,
            timeout=self.call_timeout,
            unanswered=TritonTimeoutError,
        )

    def _control_options(self) -> dict[str, Any]:
        """The options of the gRPC control for loads and unloads (``control_url``)."""
        return {
            "timeout": self.timeout,
            "call_timeout": self.call_timeout,
            "connect_timeout": self.connect_timeout,
        }


class TritonControl(_ControlBase):
    """Model control, index, statistics and metrics of one Triton server.

    Use as a context manager (or call :meth:`close`): Triton waits for open HTTP
    connections when it shuts down.

    Safe to call from several threads. Over HTTP each thread gets a client of its own:
    tritonclient's HTTP client runs on gevent, whose sockets and locks belong to the
    thread that made them (used from another thread, a call fails with "Cannot switch to
    a different thread" or hangs). The gRPC client is thread-safe and shared.
    """

    def __init__(self, url: str, **options: Any) -> None:
        """``options``: those of :class:`_ControlBase` (metrics_url, control_url, timeout,
        call_timeout, connect_timeout)."""
        super().__init__(url, **options)
        self._lock = threading.Lock()
        self._local = threading.local()
        # every HTTP client made, with the thread it belongs to, for close()
        self._http_clients: list[tuple[threading.Thread, Any]] = []
        self._generation = 0  # bumped by close(): clients of an older one are closed
        self._grpc_control: TritonControl | None = None  # loads/unloads (control_url)

    def __enter__(self) -> TritonControl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the clients of every thread (a later call makes new ones)."""
        with self._lock:
            grpc_client, self._client = self._client, None
            http_clients, self._http_clients = self._http_clients, []
            grpc_control, self._grpc_control = self._grpc_control, None
            self._generation += 1
        for client in [grpc_client, *(c for _, c in http_clients)]:
            if client is not None:
                self._close_client(client)
        if grpc_control is not None:
            grpc_control.close()

    def _model_control(self) -> TritonControl | None:
        """The gRPC control loads and unloads go through (``control_url``), if any."""
        if self.is_grpc or not self.endpoint.control_url:
            return None
        with self._lock:
            if self._grpc_control is None:
                self._grpc_control = TritonControl(
                    self.endpoint.control_url,
                    metrics_url=self.metrics_url,
                    **self._control_options(),
                )
            return self._grpc_control

    def _close_client(self, client: Any) -> None:
        try:
            client.close()
        except Exception as exc:  # pragma: no cover - best effort
            log.debug("closing client for %s: %s", self.url, exc)

    def _new_http_client(self, network_timeout: float) -> Any:
        try:
            import tritonclient.http as httpclient

            return httpclient.InferenceServerClient(
                self.endpoint.address,
                connection_timeout=self.connect_timeout,
                network_timeout=network_timeout,
            )
        except Exception as exc:
            raise translate_error(exc, url=self.url, action="connect") from exc

    @property
    def client(self) -> Any:
        """The underlying tritonclient client (created on first use): over gRPC one for
        all threads (each call gives its deadline), over HTTP the calling thread's own,
        whose every request may take ``call_timeout`` (a load gets a client of its own)."""
        if not self.is_grpc:
            return self._thread_http_client()
        with self._lock:
            if self._client is None:
                try:
                    import tritonclient.grpc as grpcclient

                    self._client = grpcclient.InferenceServerClient(
                        self.endpoint.address,
                        channel_args=grpc_channel_args(self.connect_timeout),
                    )
                except Exception as exc:
                    raise translate_error(exc, url=self.url, action="connect") from exc
            return self._client

    def _thread_http_client(self) -> Any:
        held = getattr(self._local, "client", None)
        if held is not None and held[0] == self._generation:
            return held[1]
        client = self._new_http_client(self.call_timeout)
        me = threading.current_thread()
        with self._lock:
            generation = self._generation
            # the clients of threads that ended are not used again: close them
            ended = [c for t, c in self._http_clients if not t.is_alive()]
            self._http_clients = [(t, c) for t, c in self._http_clients if t.is_alive()]
            self._http_clients.append((me, client))
        for old in ended:
            self._close_client(old)
        self._local.client = (generation, client)
        return client

    def _call(
        self,
        action: str,
        fn: Callable[[Any], T],
        error: type[ManagerError] = ManagerError,
        *,
        load: bool = False,
    ) -> T:
        client = self.client  # outside the try: its own errors are already translated
        try:
            return fn(client)
        except Exception as exc:
            raise self._translate(exc, action, error, load=load) from exc

    # ---------------------------------------------------------------- health

    def is_live(self) -> bool:
        """True if the server answers live; False if it does not answer within
        ``connect_timeout`` (refused, or a server that hangs)."""
        return self._health("live")

    def is_ready(self) -> bool:
        """True if the server answers ready; False as :meth:`is_live`."""
        return self._health("ready")

    def _health(self, which: str) -> bool:
        if not self.is_grpc:
            return http_health(self.endpoint, which, self.connect_timeout)
        try:
            return bool(
                getattr(self.client, f"is_server_{which}")(client_timeout=self.connect_timeout)
            )
        except Exception as exc:
            if not _not_healthy(exc):
                raise translate_error(exc, url=self.url, action="health") from exc
            log.debug("health %s of %s: %s", which, self.url, exc)
            return False

    # ---------------------------------------------------------------- repository

    def repository_index(self) -> list[IndexEntry]:
        """Every model version Triton knows in its repository (hidden names dropped)."""

        def call(c: Any) -> list[IndexEntry]:
            if self.is_grpc:
                raw = c.get_model_repository_index(as_json=True, **self._grpc_kw())
                return parse_index(raw.get("models", []))
            return parse_index(c.get_model_repository_index())

        return self._call("repository index", call)

    def load_model(self, name: str, config: str | None = None) -> None:
        """Load (or reload) ``name``; ``config`` is a JSON ModelConfig override.

        Triton answers once the load is done, so callers that want to stop waiting run
        this in a worker thread (:func:`manager.serving.load` does). With a
        ``control_url`` the load goes over gRPC (see :class:`Endpoint`; over HTTP if that
        does not answer). Over HTTP the call gets a client of its own, made in the calling thread and closed when it returns
        (not the thread's shared one): a load given up on goes on in its thread, and
        :meth:`close` must not close a client under it.
        """
        log.debug("load %s on %s (override: %s)", name, self.url, config is not None)
        grpc_control = self._model_control()
        if grpc_control is not None:
            try:
                grpc_control.load_model(name, config)
                return
            except TritonUnreachableError as exc:  # nothing was asked: over HTTP then
                log.debug("load over %s: %s; over HTTP", self.endpoint.control_url, exc)
        if self.is_grpc:
            self._call(
                f"load {name!r}",
                lambda c: c.load_model(name, config=config, **self._grpc_kw(load=True)),
                LoadError,
                load=True,
            )
            return
        client = self._new_http_client(self.timeout)
        try:
            client.load_model(name, config=config)
        except Exception as exc:
            raise self._translate(exc, f"load {name!r}", LoadError, load=True) from exc
        finally:
            try:
                client.close()
            except Exception as exc:  # pragma: no cover - best effort
                log.debug("closing the load client for %s: %s", self.url, exc)

    def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        """Ask Triton to unload ``name``; returns before the memory is freed."""
        log.debug("unload %s on %s", name, self.url)
        grpc_control = self._model_control()
        if grpc_control is not None:
            try:
                grpc_control.unload_model(name, unload_dependents)
                return
            except TritonTimeoutError:
                raise  # asked, and no answer: the same server over HTTP would not answer
            except TritonUnreachableError as exc:
                log.debug("unload over %s: %s; over HTTP", self.endpoint.control_url, exc)
        self._call(
            f"unload {name!r}",
            lambda c: c.unload_model(name, unload_dependents=unload_dependents, **self._grpc_kw()),
            UnloadError,
        )

    def model_config(self, name: str) -> dict[str, Any]:
        """The configuration Triton uses for loaded model ``name`` (proto field names)."""

        def call(c: Any) -> dict[str, Any]:
            if self.is_grpc:
                raw = c.get_model_config(name, as_json=True, **self._grpc_kw())
                return dict(raw.get("config", {}))
            return dict(c.get_model_config(name))

        return self._call(f"config of {name!r}", call, ModelNotFoundError)

    def statistics(self, name: str | None = None) -> list[ModelStats]:
        """Statistics of every loaded version of ``name`` (all loaded models if None)."""

        def call(c: Any) -> list[ModelStats]:
            if self.is_grpc:
                raw = c.get_inference_statistics(name or "", as_json=True, **self._grpc_kw())
            else:
                raw = c.get_inference_statistics(name or "")
            return parse_statistics(raw)

        return self._call(
            f"statistics of {name!r}" if name else "statistics",
            call,
            ModelNotFoundError if name else ManagerError,
        )

    def metrics_text(self) -> str:
        """The Prometheus text of ``<metrics_url>/metrics``."""
        return _fetch_text(f"{self.metrics_url}/metrics", self.connect_timeout)


# --------------------------------------------------------------------------- async


class AsyncTritonControl(_ControlBase):
    """The asyncio twin of :class:`TritonControl` (``tritonclient.*.aio`` clients).

    The clients are created on first use, inside the running event loop. Over HTTP,
    loads go through a client of their own: an aiohttp session has one timeout for
    every request, ``call_timeout`` in the one of the other calls.
    """

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._grpc_control: AsyncTritonControl | None = None  # loads/unloads (control_url)
        self._load_client: Any = None  # HTTP loads (timeout)

    def _model_control(self) -> AsyncTritonControl | None:
        """The gRPC control loads and unloads go through (``control_url``), if any."""
        if self.is_grpc or not self.endpoint.control_url:
            return None
        if self._grpc_control is None:
            self._grpc_control = AsyncTritonControl(
                self.endpoint.control_url, metrics_url=self.metrics_url, **self._control_options()
            )
        return self._grpc_control

    async def __aenter__(self) -> AsyncTritonControl:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        grpc_control, self._grpc_control = self._grpc_control, None
        if grpc_control is not None:
            await grpc_control.close()
        clients = [self._client, self._load_client]
        self._client = self._load_client = None
        for client in clients:
            if client is None:
                continue
            try:
                await client.close()
            except Exception as exc:  # pragma: no cover - best effort
                log.debug("closing client for %s: %s", self.url, exc)

    def _get_client(self, *, load: bool = False) -> Any:
        """The client of a call (made on first use): over gRPC one (each call gives its
        deadline); over HTTP one whose requests may take ``call_timeout``, and with
        ``load`` one whose requests may take ``timeout``."""
        if self.is_grpc:
            if self._client is None:
                try:
                    import tritonclient.grpc.aio as grpcaio

                    self._client = grpcaio.InferenceServerClient(
                        self.endpoint.address,
                        channel_args=grpc_channel_args(self.connect_timeout),
                    )
                except Exception as exc:
                    raise translate_error(exc, url=self.url, action="connect") from exc
            return self._client
        if load:
            if self._load_client is None:
                self._load_client = self._new_http_client(self.timeout)
            return self._load_client
        if self._client is None:
            self._client = self._new_http_client(self.call_timeout)
        return self._client

    def _new_http_client(self, timeout: float) -> Any:
        try:
            import tritonclient.http.aio as httpaio

            return httpaio.InferenceServerClient(self.endpoint.address, conn_timeout=timeout)
        except Exception as exc:
            raise translate_error(exc, url=self.url, action="connect") from exc

    async def _call(
        self,
        action: str,
        fn: Callable[[Any], Awaitable[T]],
        error: type[ManagerError] = ManagerError,
        *,
        load: bool = False,
    ) -> T:
        client = self._get_client(load=load)
        try:
            return await fn(client)
        except Exception as exc:
            raise self._translate(exc, action, error, load=load) from exc

    async def is_live(self) -> bool:
        return await self._health("live")

    async def is_ready(self) -> bool:
        return await self._health("ready")

    async def _health(self, which: str) -> bool:
        if not self.is_grpc:
            return await http_health_async(self.endpoint, which, self.connect_timeout)
        try:
            client = self._get_client()
            return bool(
                await getattr(client, f"is_server_{which}")(client_timeout=self.connect_timeout)
            )
        except Exception as exc:
            if not _not_healthy(exc):
                raise translate_error(exc, url=self.url, action="health") from exc
            log.debug("health %s of %s: %s", which, self.url, exc)
            return False

    async def repository_index(self) -> list[IndexEntry]:
        async def call(c: Any) -> list[IndexEntry]:
            if self.is_grpc:
                raw = await c.get_model_repository_index(as_json=True, **self._grpc_kw())
                return parse_index(raw.get("models", []))
            return parse_index(await c.get_model_repository_index())

        return await self._call("repository index", call)

    async def load_model(self, name: str, config: str | None = None) -> None:
        log.debug("load %s on %s (override: %s)", name, self.url, config is not None)
        grpc_control = self._model_control()
        if grpc_control is not None:
            try:
                await grpc_control.load_model(name, config)
                return
            except TritonUnreachableError as exc:  # nothing was asked: over HTTP then
                log.debug("load over %s: %s; over HTTP", self.endpoint.control_url, exc)
        await self._call(
            f"load {name!r}",
            lambda c: c.load_model(name, config=config, **self._grpc_kw(load=True)),
            LoadError,
            load=True,
        )

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        log.debug("unload %s on %s", name, self.url)
        grpc_control = self._model_control()
        if grpc_control is not None:
            try:
                await grpc_control.unload_model(name, unload_dependents)
                return
            except TritonTimeoutError:
                raise  # asked, and no answer: the same server over HTTP would not answer
            except TritonUnreachableError as exc:
                log.debug("unload over %s: %s; over HTTP", self.endpoint.control_url, exc)
        await self._call(
            f"unload {name!r}",
            lambda c: c.unload_model(name, unload_dependents=unload_dependents, **self._grpc_kw()),
            UnloadError,
        )

    async def model_config(self, name: str) -> dict[str, Any]:
        async def call(c: Any) -> dict[str, Any]:
            if self.is_grpc:
                raw = await c.get_model_config(name, as_json=True, **self._grpc_kw())
                return dict(raw.get("config", {}))
            return dict(await c.get_model_config(name))

        return await self._call(f"config of {name!r}", call, ModelNotFoundError)

    async def statistics(self, name: str | None = None) -> list[ModelStats]:
        async def call(c: Any) -> list[ModelStats]:
            if self.is_grpc:
                raw = await c.get_inference_statistics(name or "", as_json=True, **self._grpc_kw())
            else:
                raw = await c.get_inference_statistics(name or "")
            return parse_statistics(raw)

        return await self._call(
            f"statistics of {name!r}" if name else "statistics",
            call,
            ModelNotFoundError if name else ManagerError,
        )

    async def metrics_text(self) -> str:
        return await asyncio.to_thread(
            _fetch_text, f"{self.metrics_url}/metrics", self.connect_timeout
        )
