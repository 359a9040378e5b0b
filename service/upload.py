"""Request bodies are limited while they stream in: an oversize upload is refused before it is all read.

A declared ``Content-Length`` above the limit is answered with 413 at once, without reading a byte
of the body; a chunked body is counted as it arrives and refused as soon as it passes the limit.
Either way the server never holds more than the limit of one upload (and Starlette spools uploads
beyond 1 MB to a temporary file, so not even that in memory).
"""

from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from birdsearch.service.errors import UploadTooLargeError, error_body
from birdsearch.service.metrics import ERRORS

BODY_METHODS = {"POST", "PUT", "PATCH"}


class BodyLimitMiddleware:
    """Refuses request bodies above ``limits[path]`` (else ``default_limit``) bytes with 413."""

    def __init__(self, app: ASGIApp, limits: dict[str, int], default_limit: int):
        self.app = app
        self.limits = limits
        self.default_limit = default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.limits.get(path, self.default_limit)
        if path in self.limits:
            scope["birdsearch.route_hint"] = path  # labels metrics of requests refused before routing
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            await refuse(send, UploadTooLargeError(limit, declared=declared))
            return

        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise UploadTooLargeError(limit, seen=seen)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except UploadTooLargeError as e:  # raised where no exception handler caught it
            if started:
                raise
            await refuse(send, e)


def declared_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def refuse(send: Send, error: UploadTooLargeError) -> None:
    """Answer 413 and close the connection: the client is still sending a body nobody will read."""
    ERRORS.labels(error.code).inc()
    body = json.dumps(error_body(error.detail, error.code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
