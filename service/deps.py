"""FastAPI dependencies, as ``Annotated`` aliases the routes declare (fastapi full-stack template style)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from birdsearch.engine.runtime import Runtime
from birdsearch.service.errors import AdminDisabledError, UnauthorizedError
from birdsearch.service.settings import Settings, get_settings
from birdsearch.service.thumbnails import ThumbnailCache


def get_runtime(request: Request) -> Runtime:
    """The app's runtime (models, batchers, served index), created by the lifespan."""
    return request.app.state.runtime


def get_thumbnails(request: Request) -> ThumbnailCache:
    """The app's thumbnail cache, created by the lifespan."""
    return request.app.state.thumbnails


SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ThumbnailsDep = Annotated[ThumbnailCache, Depends(get_thumbnails)]


def require_admin(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(description="Bearer <BIRDSEARCH_ADMIN_KEY>")] = None,
) -> None:
    """Admin routes need ``Authorization: Bearer <key>``; without a configured key they are off."""
    if settings.admin_key is None or not settings.admin_key.get_secret_value():
        raise AdminDisabledError("admin routes are disabled: set BIRDSEARCH_ADMIN_KEY to enable them")
    scheme, _, given = (authorization or "").partition(" ")
    expected = settings.admin_key.get_secret_value()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise UnauthorizedError(
            "missing or wrong admin key: send 'Authorization: Bearer <BIRDSEARCH_ADMIN_KEY>'"
        )


AdminDep = Depends(require_admin)
