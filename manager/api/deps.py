"""Pieces the route modules share: the control plane of the app, checks of host paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, cast

from fastapi import Depends, HTTPException, Request

from manager.api.plane import ControlPlane


def get_plane(request: Request) -> ControlPlane:
    """The :class:`ControlPlane` the app was made for."""
    return cast(ControlPlane, request.app.state.plane)


Plane = Annotated[ControlPlane, Depends(get_plane)]


def json_posts(request: Request) -> None:
    """Refuse a POST that does not say ``Content-Type: application/json`` (415), even with
    an empty body: a web page can make a browser send a form or a bodiless POST to another
    site without asking, but not one with this header, so a control plane on localhost
    without a token cannot be driven by whatever page its user visits."""
    if request.method != "POST":
        return
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(
            415, "send JSON with 'Content-Type: application/json' (the body may be {})"
        )


async def no_fields(request: Request) -> None:
    """For a route that takes no fields: refuse (400) a body other than none or ``{}``, as a
    route with fields refuses the fields it does not know."""
    body = (await request.body()).strip()
    if not body:
        return
    try:
        value = json.loads(body)
    except ValueError:
        raise HTTPException(
            400, "the body is not JSON (this route takes no fields: send {})"
        ) from None
    if value != {}:
        raise HTTPException(
            400, f"this route takes no fields: send {{}} or no body, not {value!r:.80}"
        )


NoFields = Depends(no_fields)


def host_path(value: str | None, what: str) -> Path | None:
    """A path on the control plane's host, which must be absolute (a relative one would be
    read from wherever the server happens to run) and hold no NUL character."""
    if value is None:
        return None
    if "\x00" in value:
        # no file name holds one: the OS calls would fail with a ValueError (a 500)
        raise HTTPException(400, f"{what} must not contain a NUL character")
    path = Path(value)
    if not path.is_absolute():
        raise HTTPException(400, f"{what} must be an absolute path on the control plane's host")
    return path
