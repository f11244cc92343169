"""The optional bearer token: with one set, every request but the open paths (health,
metrics) needs ``Authorization: Bearer <token>`` and is answered 401 without it."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from manager.api.errors import error_response

TOKEN_ENV = "TRITONCTL_API_TOKEN"
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def token_matches(header: str | None, token: str) -> bool:
    """True if the ``Authorization`` header carries ``token`` (compared in constant time)."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


class BearerAuth:
    """ASGI middleware that refuses requests without the token, except to ``open_paths``."""

    def __init__(self, app: ASGIApp, token: str, open_paths: Collection[str]) -> None:
        if not token:
            raise ValueError("the bearer token must not be empty")
        self.app = app
        self.token = token
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization")
        if token_matches(header, self.token):
            await self.app(scope, receive, send)
            return
        message = (
            "invalid bearer token"
            if header
            else "this control plane needs an Authorization: Bearer <token> header"
        )
        response = error_response(401, message, {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def host_of(header: str) -> str:
    """The host of a ``Host`` header, without its port and IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_address_or_localhost(host: str) -> bool:
    """True for ``localhost`` or an IP address: no other site's name."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class LocalHostsOnly:
    """ASGI middleware that refuses (400) a request whose ``Host`` is a name other than
    ``localhost``, except to ``open_paths``.

    For a control plane on loopback without a token: a web page cannot make a browser
    send a JSON POST to another site, but it can to its own, and by DNS rebinding (its
    name answered with 127.0.0.1 after the page loaded) the control plane becomes its
    own site. The browser then still sends the page's name as ``Host``, which is refused.
    """

    def __init__(self, app: ASGIApp, open_paths: Collection[str]) -> None:
        self.app = app
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("host", "")
        # no Host at all (an HTTP/1.0 tool) is no browser's
        if not header or is_address_or_localhost(host_of(header)):
            await self.app(scope, receive, send)
            return
        message = (
            f"Host {header[:100]!r} is not accepted: this control plane has no token and "
            "listens on loopback, so it answers requests to localhost or an IP address only "
            "(set a token to reach it by another name)"
        )
        response = error_response(400, message)
        await response(scope, receive, send)
