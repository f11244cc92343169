"""Errors as HTTP answers: every failure is ``{"error": "<message>"}`` with a 4xx or 5xx.

A ``ManagerError`` gets the status of its class (the most specific one listed in
:data:`STATUS`): 400 for bad input, 404 for an unknown model, endpoint or rollout, 409
for a conflict with the current state (a rollout already running, a version that
exists, a protected model, the memory budget), 422 for a smoke test that failed its
golden requests, 502 when Triton refused or failed an operation, 503 when no Triton
answers. A request body that does not validate is a 400 naming the field.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from manager.errors import (
    ArtifactError,
    ConfigError,
    EndpointError,
    EndpointNotFoundError,
    InvalidNameError,
    LoadError,
    ManagerError,
    MemoryBudgetError,
    ModelNotFoundError,
    RepositoryError,
    RolloutError,
    RolloutNotFoundError,
    ServerError,
    TritonUnreachableError,
    UnloadError,
    VersionExistsError,
)
from manager.golden import GoldenMismatch
from manager.infer import InferenceError
from manager.native_router import RouterBuildError

log = logging.getLogger(__name__)

STATUS: dict[type[ManagerError], int] = {
    InvalidNameError: 400,
    ArtifactError: 400,
    ConfigError: 400,
    EndpointError: 400,
    EndpointNotFoundError: 404,
    ModelNotFoundError: 404,
    RolloutNotFoundError: 404,
    RepositoryError: 409,
    VersionExistsError: 409,
    RolloutError: 409,
    MemoryBudgetError: 409,
    UnloadError: 409,
    GoldenMismatch: 422,
    RouterBuildError: 500,
    LoadError: 502,
    InferenceError: 502,
    TritonUnreachableError: 503,
    ServerError: 503,
}
DEFAULT_STATUS = 502
"""Any other ``ManagerError``: most are Triton answering something unexpected."""


def status_for(exc: ManagerError) -> int:
    """The HTTP status of ``exc``: that of its most specific class in :data:`STATUS`."""
    for cls in type(exc).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return DEFAULT_STATUS


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _manager_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ManagerError)
    status = status_for(exc)
    log.info("%s %s -> %d: %s", request.method, request.url.path, status, exc)
    return error_response(status, str(exc))


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err.get("loc", ()))
        problems.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg")))
    message = "invalid request: " + "; ".join(problems)
    # a refused NaN or Infinity is named as text: JSON has no such number
    detail = jsonable_encoder(exc.errors(), custom_encoder={float: _finite_or_text})
    return JSONResponse({"error": message, "detail": detail}, status_code=400)


def _finite_or_text(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}) or None)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error with ``{"error": ...}``, never with a traceback."""
    app.add_exception_handler(ManagerError, _manager_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


class BodyLimit:
    """ASGI middleware that answers a request body over ``max_bytes`` with a 413 (as
    ``{"error": ...}``): by its ``Content-Length`` before it is read, else (a chunked
    body) once that much has been read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await error_response(413, self._too_large())(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, limited, send)
