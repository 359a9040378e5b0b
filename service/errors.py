"""The HTTP app's own typed errors, and how every error becomes a JSON answer.

Every error answer has the same shape, ``{"detail": "<what and the fix>", "code": "<stable name>"}``:
``code`` is what clients and tests branch on; ``detail`` names the bad value, with any server path
shortened to its base name (``redact``). Request validation
errors keep FastAPI's list-of-problems ``detail`` and get ``code: "bad_parameter"``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from birdsearch.engine.errors import NotReadyError
from birdsearch.engine.redact import redact_paths
from birdsearch.errors import BirdsearchError
from birdsearch.service.metrics import ERRORS

log = logging.getLogger(__name__)


class NotFoundError(BirdsearchError):
    """An unknown image, or a path that leads nowhere."""

    code = "not_found"
    http_status = 404


class AdminDisabledError(BirdsearchError):
    """Admin routes are refused because no admin key is configured."""

    code = "admin_disabled"
    http_status = 403


class UnauthorizedError(BirdsearchError):
    """A missing or wrong admin key."""

    code = "unauthorized"
    http_status = 401


class UploadTooLargeError(StarletteHTTPException):
    """The request body passed the upload limit while streaming in.

    An HTTPException (not a BirdsearchError) because it is raised from inside the body stream, where
    FastAPI lets only HTTPExceptions through unchanged.
    """

    code = "upload_too_large"

    def __init__(self, limit: int, seen: int | None = None, declared: int | None = None):
        if declared is not None:
            what = f"the declared body of {declared} bytes"
        else:
            what = f"the upload (more than {seen} bytes so far)"
        super().__init__(
            status_code=413,
            detail=f"{what} is larger than the {limit}-byte limit (BIRDSEARCH_MAX_UPLOAD_BYTES); "
            "send a shorter or compressed recording",
        )


def error_body(detail: Any, code: str) -> dict[str, Any]:
    return {"detail": detail, "code": code}


async def birdsearch_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BirdsearchError)
    status = exc.http_status
    ERRORS.labels(exc.code).inc()
    if status >= 500 and not isinstance(exc, NotReadyError):
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return JSONResponse(error_body(redact_paths(str(exc)), exc.code), status_code=status)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = getattr(exc, "code", None) or ("not_found" if exc.status_code == 404 else "http_error")
    ERRORS.labels(code).inc()
    detail = redact_paths(exc.detail) if isinstance(exc.detail, str) else exc.detail
    return JSONResponse(error_body(detail, code), status_code=exc.status_code, headers=exc.headers)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    ERRORS.labels("bad_parameter").inc()
    problems = jsonable_encoder([{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()])
    return JSONResponse(error_body(problems, "bad_parameter"), status_code=422)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered in the same shape without internals."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    ERRORS.labels("internal").inc()
    return JSONResponse(
        error_body("internal error; the server log has the details", "internal"), status_code=500
    )


def install_error_handlers(app: FastAPI) -> None:
    """One JSON shape for every error the app answers with."""
    app.add_exception_handler(Exception, unexpected_error_handler)
    app.add_exception_handler(BirdsearchError, birdsearch_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
