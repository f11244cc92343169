"""The optional bearer token: with one set, every request but the open paths (health,
metrics) needs ``Authorization: Bearer <token>`` and is answered 401 without it."""

from __future__ import annotations

import hmac
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from manager.api.errors import error_response

TOKEN_ENV = "TRITONCTL_API_TOKEN"


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
