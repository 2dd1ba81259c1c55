"""Request body size limit as a pure ASGI middleware.

Checks the declared Content-Length up front and also counts streamed bytes, because chunked
uploads carry no Content-Length. Oversize -> 413 JSON, never a 500.
"""

from __future__ import annotations

import json
import logging

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.serving.request_id import request_id_of

logger = logging.getLogger(__name__)


class BodyTooLarge(HTTPException):
    """Raised from `receive` while the app reads the body; FastAPI re-raises HTTPExceptions."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body exceeds {limit} bytes")


async def _send_error(send: Send, status: int, error: str, message: str, scope: Scope) -> None:
    request_id = request_id_of(scope)
    logger.info("request %s: %s %s -> %d %s", request_id, scope.get("method"), scope.get("path"), status, error)
    body = json.dumps({"error": error, "message": message, "details": None, "model_version": None, "request_id": request_id}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodySizeLimitMiddleware:
    """`route_limits` maps (method, path) to that route's own limit (POST /v1/items may carry an image)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, route_limits: dict[tuple[str, str], int] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.route_limits = dict(route_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.route_limits.get((scope.get("method", ""), scope.get("path", "")), self.max_body_bytes)
        declared = _content_length(scope)
        if declared == -1:
            await _send_error(send, 400, "bad_request", "invalid Content-Length header", scope)
            return
        if declared is not None and declared > limit:
            logger.info("rejecting %s %s: Content-Length %d > %d", scope.get("method"), scope.get("path"), declared, limit)
            await _send_error(send, 413, "payload_too_large", f"request body exceeds {limit} bytes", scope)
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:  # body read outside FastAPI's handler (which maps it itself)
            if started:
                raise
            await _send_error(send, 413, "payload_too_large", str(exc.detail), scope)


def _content_length(scope: Scope) -> int | None:
    """Declared body size; None if absent, -1 if malformed."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return -1
            return length if length >= 0 else -1
    return None
