"""Pure ASGI middleware: the body-size limit, and request ids with JSON access logs and metrics.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``) so the body is counted as it streams in and a
too-large upload is refused before it is in memory. Their error answers take the format of the
request's path (:func:`serve.errors.error_body`).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serve.errors import error_body
from serve.http_metrics import Metrics
from serve.runtime.batching import Reservation, holding

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_logger = logging.getLogger("serve.access")
REQUEST_ID_HEADER = "x-request-id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BodyOverflow(Exception):
    """Raised from ``receive`` once the body passes the limit (control flow inside
    :class:`BodyLimitMiddleware`, which answers 413 itself; never reaches a handler)."""


class BodyLimitMiddleware:
    """Answer 413 to a body larger than ``max_bytes``: at once when ``Content-Length`` says so
    (nothing of the body is read), else as soon as the streamed bytes pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = scope.get("state", {}).get("request_id")
        path = scope.get("path", "")
        declared = _header(scope, b"content-length")
        message = f"the request body is larger than the limit of {self.max_bytes} bytes"
        if declared is not None:
            if not declared.isdigit():
                body = error_body("bad_request", "invalid Content-Length", request_id, path)
                await send_json(send, 400, body, [(b"connection", b"close")])
                return
            if int(declared) > self.max_bytes:
                body = error_body("body_too_large", f"{message} ({declared} bytes declared)",
                                  request_id, path)  # fmt: skip
                await send_json(send, 413, body, [(b"connection", b"close")])
                return
        received = 0
        overflow = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, overflow
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > self.max_bytes:
                    overflow = True
                    raise _BodyOverflow(message)
            return incoming

        async def guarded_send(outgoing: Message) -> None:
            nonlocal started
            if overflow:  # whatever the app made of the exception, the answer is 413
                return
            if outgoing["type"] == "http.response.start":
                started = True
            await send(outgoing)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyOverflow:
            pass
        if overflow and not started:
            body = error_body("body_too_large", message, request_id, path)
            await send_json(send, 413, body, [(b"connection", b"close")])


class AdmissionMiddleware:
    """Refuse inference requests with 503 + Retry-After while the batcher has no room, before
    their body is read: under overload a refusal costs next to nothing. ``admit()`` returns the
    refusal message, or a :class:`~serve.runtime.batching.Reservation` (a place in the queue
    held for the request while its body is read and decoded, released when it is queued or
    ends), or ``None`` (admit; e.g. before the model is loaded, when the route answers for
    itself).

    The connection stays open (no ``Connection: close``): uvicorn discards the rest of the body
    after the answer, so clients that send the whole body before reading get the 503, not a
    reset. (The queue enforces its bound again on submit for requests without a reservation.)"""

    def __init__(
        self, app: ASGIApp, paths: tuple[str, ...],
        admit: Callable[[], Reservation | str | None], retry_after_s: int = 1,
    ) -> None:  # fmt: skip
        self.app = app
        self.paths = paths
        self.admit = admit
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            outcome = self.admit()
            if isinstance(outcome, str):
                request_id = scope.get("state", {}).get("request_id")
                body = error_body("overloaded", outcome, request_id, scope["path"])
                await send_json(send, 503, body, [(b"retry-after", self.retry_after)])
                return
            if outcome is not None:
                with holding(outcome):
                    await self.app(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequestContextMiddleware:
    """Give each request an id (the client's ``X-Request-ID`` if it is a sane token, else a new
    one), echo it in the response, count the request in the metrics and write one JSON access
    log line when it ends."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths  # fixed paths of the app's routes, for answers given before routing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        given = _header(scope, REQUEST_ID_HEADER.encode())
        request_id = given if given and _SAFE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        sent_bytes = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent_bytes
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                sent_bytes += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None)
            if template is None:  # answered by a middleware (413, 503) before routing
                template = scope["path"] if scope["path"] in self.paths else "unmatched"
            self.metrics.observe_request(template, scope["method"], status, seconds)
            client = scope.get("client")
            access_logger.info(
                json.dumps(
                    {
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": template,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 2),
                        "bytes_sent": sent_bytes,
                        "client": f"{client[0]}:{client[1]}" if client else None,
                    }
                )
            )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
