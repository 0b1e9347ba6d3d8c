"""Pure ASGI middleware: API keys and admission control before a body is read, the body's size
limit and deadline, and request ids with JSON access logs and metrics.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``) so the body is counted and timed as it streams
in, and a request is refused from its headers alone, before anything of its body is read. Their
error answers take the format of the request's path (:func:`serve.errors.error_body`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from pydantic import SecretStr

from serve.errors import error_body
from serve.http_metrics import Metrics
from serve.http_paths import Target, inference_target, is_control_path
from serve.runtime.batching import holding
from serve.versions import Lease, ServedVersion

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


CLIENT_GONE = 499
"""The status logged for a request whose client went away before its answer (nginx's)."""


def key_problem(keys: Sequence[SecretStr], given: str | None) -> str | None:
    """Why a request that gave the key ``given`` is refused, or ``None``: with ``keys`` set, one
    of them must be given; it is compared in constant time against every key."""
    if not keys:
        return None
    if not given:
        return "an API key is required (Authorization: Bearer KEY or X-API-Key: KEY)"
    given_bytes = given.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given_bytes, key.get_secret_value().encode())
    return None if matched else "the API key is not valid"


def given_key(scope: Scope) -> str | None:
    """The key a request gives: ``Authorization: Bearer KEY``, else ``X-API-Key: KEY``."""
    authorization = _header(scope, b"authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return _header(scope, b"x-api-key")


class BodyBudget:
    """Bytes of request bodies held at once, all requests together: uploads in progress and
    bodies not yet answered. ``max_body_bytes`` bounds one request; this bounds their sum, so
    ``--max-connections`` clients uploading at once cannot hold ``max_connections x
    max_body_bytes``. Used from the event loop only (no lock needed)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def hold(self) -> BodyHold:
        """A new request's share of the budget, empty at first."""
        return BodyHold(self)


class BodyHold:
    """The bytes of a :class:`BodyBudget` one request holds: grown as its body is declared or
    streams in, given back in one go when the request ends."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def grow_to(self, size: int) -> bool:
        """Hold ``size`` bytes in all (more than now) if they fit under the budget's limit;
        ``False`` (nothing changed) else."""
        extra = size - self.size
        if extra <= 0:
            return True
        if self.budget.held + extra > self.budget.limit:
            return False
        self.budget.held += extra
        self.size = size
        return True

    def release(self) -> None:
        self.budget.held -= self.size
        self.size = 0


class _BodyBusy(Exception):
    """The bodies held at once would pass the server's budget."""


class _BodyOverflow(Exception):
    """Raised from ``receive`` once the body passes the limit (control flow inside
    :class:`BodyLimitMiddleware`, which answers 413 itself; never reaches a handler)."""


class _BodyTimeout(Exception):
    """Raised from ``receive`` once the body's deadline passed (:class:`BodyLimitMiddleware`
    answers 408 and closes the connection)."""


class _QueueFilled(Exception):
    """Raised from ``receive`` when the body has arrived but the queue filled up meanwhile
    (:class:`AdmissionMiddleware` answers 503)."""


class BodyLimitMiddleware:
    """Answer 413 to a body larger than ``max_bytes``: at once when ``Content-Length`` says so
    (nothing of the body is read), else as soon as the streamed bytes pass the limit; answer 408
    and close the connection when the whole body has not arrived ``timeout_s`` seconds after the
    request's headers (a slow or stalled upload cannot hold a connection, a decode slot or a
    queue place for longer)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout_s: float | None = None,
        budget: BodyBudget | None = None,
        retry_after_s: int = 1,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.budget = budget
        self.retry_after = str(retry_after_s).encode()
        self.too_large = f"the request body is larger than the limit of {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        path = scope.get("path", "")
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit():
                body = error_body("bad_request", "invalid Content-Length", request_id, path)
                await send_json(send, 400, body, [(b"connection", b"close")])
                return
            if int(declared) > self.max_bytes:
                body = error_body("body_too_large", f"{self.too_large} ({declared} bytes declared)",
                                  request_id, path)  # fmt: skip
                await send_json(send, 413, body, [(b"connection", b"close")])
                return
        hold = self.budget.hold() if self.budget is not None else None
        if hold is not None and declared is not None and not hold.grow_to(int(declared)):
            await self._busy(send, request_id, path)
            return
        try:
            await self._limited(scope, receive, send, request_id, path, hold)
        finally:
            if hold is not None:
                hold.release()

    async def _busy(self, send: Send, request_id: str | None, path: str) -> None:
        limit = self.budget.limit if self.budget is not None else 0
        busy = (f"the server holds {limit} bytes of request bodies at once, its limit; retry "
                "shortly")  # fmt: skip
        body = error_body("overloaded", busy, request_id, path)
        headers = [(b"retry-after", self.retry_after), (b"connection", b"close")]
        await send_json(send, 503, body, headers)

    async def _limited(
        self, scope: Scope, receive: Receive, send: Send, request_id: str | None, path: str,
        hold: BodyHold | None,
    ) -> None:  # fmt: skip
        """Run the request with its body counted against ``max_bytes``, the deadline and the
        budget (``hold``: this request's share, grown as its body arrives)."""
        received = 0
        overflow = timed_out = body_done = started = busy = False
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_s is None else loop.time() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal received, overflow, timed_out, body_done, busy
            if body_done or deadline is None:
                incoming = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        incoming = await receive()
                except TimeoutError:
                    timed_out = True
                    raise _BodyTimeout from None
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                body_done = not incoming.get("more_body", False)
                if received > self.max_bytes:
                    overflow = True
                    raise _BodyOverflow(self.too_large)
                if hold is not None and not hold.grow_to(received):
                    busy = True
                    raise _BodyBusy
            return incoming

        async def guarded_send(outgoing: Message) -> None:
            nonlocal started
            if overflow or timed_out or busy:  # whatever the app made of the exception, we answer
                return
            if outgoing["type"] == "http.response.start":
                started = True
            await send(outgoing)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except (_BodyOverflow, _BodyTimeout, _BodyBusy):
            pass
        if started:
            return
        if busy:
            await self._busy(send, request_id, path)
        elif overflow:
            body = error_body("body_too_large", self.too_large, request_id, path)
            await send_json(send, 413, body, [(b"connection", b"close")])
        elif timed_out:
            late = (f"the request body did not arrive within {self.timeout_s:g} s of its headers "
                    f"({received} bytes received)")  # fmt: skip
            body = error_body("body_timeout", late, request_id, path)
            await send_json(send, 408, body, [(b"connection", b"close")])


class AdmissionMiddleware:
    """What is decided from a request's headers, before anything of its body is read:

    - **keys**: with API keys configured, an inference request (and a request for one of
      ``keyed_paths``, e.g. ``/metrics`` or the docs when they ask for a key) without a valid
      key is answered 401 at once, so an unauthenticated client never gets to send a body; a
      repository load or unload call needs one of the ``admin_keys`` instead (401 without a
      valid one; 403 when none are configured: those calls are off). On ``admin_readable``
      paths (the repository index) an admin key is accepted in place of an API key;
    - **the version**: an inference request is bound to the model version its path names
      (:mod:`serve.http_paths`, the model's default version when it names none) by a lease
      (``admit(target)``), which it holds until its answer is sent, so a swap never moves it to
      another version; the route finds the lease in ``scope["state"]["lease"]``. ``admit()``
      returns ``None`` before the models are loaded and for an unknown model or version (the
      route answers 503 or 404 itself);
    - **capacity**: an inference request arriving while its version's queue is full is refused
      with 503 + ``Retry-After`` at once (``admit()`` returns the message);
    - otherwise its lease carries a place in the queue that it takes only once its whole body
      has arrived (a :class:`~serve.runtime.batching.Reservation` not taken yet; 503 then if
      the queue filled up meanwhile, ``refuse(version)`` giving the message): a client that
      sends its body slowly, or never, holds no place that keyed, fast clients need.

    Once an admitted request's body is in, a watcher waits for its client to disconnect: the
    request's task is then cancelled, so its images still waiting for a decoder are never
    decoded and those waiting for a batch are dropped (logged with status 499).

    The connection stays open after a refusal (no ``Connection: close``): uvicorn discards the
    rest of the body after the answer, so clients that send the whole body before reading get
    the 503, not a reset; a client that goes on sending nothing is closed by the server's header
    deadline. (The queue enforces its bound again on submit for requests without a place.)"""

    def __init__(
        self, app: ASGIApp,
        admit: Callable[[Target], Lease | str | None],
        refuse: Callable[[ServedVersion], str],
        keys: Sequence[SecretStr] = (),
        keyed_paths: frozenset[str] = frozenset(),
        admin_keys: Sequence[SecretStr] = (),
        admin_readable: frozenset[str] = frozenset(),
        retry_after_s: int = 1,
    ) -> None:  # fmt: skip
        self.app = app
        self.admit = admit
        self.refuse = refuse
        self.keys = list(keys)
        self.keyed_paths = keyed_paths
        self.admin_keys = list(admin_keys)
        self.admin_readable = admin_readable
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        refusal = self._key_refusal(scope, method, path)
        if refusal is not None:
            status, code, message, headers = refusal
            await send_json(send, status, error_body(code, message, _request_id(scope), path),
                            headers)  # fmt: skip
            return
        target = inference_target(method, path)
        if target is None:
            await self.app(scope, receive, send)
            return
        outcome = self.admit(target)
        if isinstance(outcome, str):
            await self._overloaded(scope, send, outcome)
        elif outcome is None:
            await self.app(scope, receive, send)
        else:
            scope.setdefault("state", {})["lease"] = outcome
            status = 500
            try:
                with holding(outcome.reservation):
                    status = await self._admitted(scope, receive, send, outcome)
            finally:
                outcome.release(status)

    def _key_refusal(
        self, scope: Scope, method: str, path: str
    ) -> tuple[int, str, str, list[tuple[bytes, bytes]]] | None:
        """(status, code, message, headers) of a request refused for its keys, or ``None``."""
        challenge = [(b"www-authenticate", b"Bearer")]
        if is_control_path(method, path):
            if not self.admin_keys:
                return (403, "forbidden", CONTROL_OFF, [])
            problem = key_problem(self.admin_keys, given_key(scope))
            if problem is not None:
                problem = problem.replace("an API key is", "an admin key is").replace(
                    "the API key is", "the admin key is"
                )
                return (401, "unauthorized", problem, challenge)
            return None
        if not self.keys or not (path in self.keyed_paths or inference_target(method, path)):
            return None
        given = given_key(scope)
        problem = key_problem(self.keys, given)
        if problem is None:
            return None
        if path in self.admin_readable and self.admin_keys:
            if key_problem(self.admin_keys, given) is None:
                return None
        return (401, "unauthorized", problem, challenge)

    async def _overloaded(self, scope: Scope, send: Send, message: str) -> None:
        body = error_body("overloaded", message, _request_id(scope), scope["path"])
        await send_json(send, 503, body, [(b"retry-after", self.retry_after)])

    async def _admitted(self, scope: Scope, receive: Receive, send: Send, lease: Lease) -> int:
        """Run the request: its place is taken when the last of its body arrives, then its
        client is watched until the answer is sent; the status it was answered with
        (:data:`CLIENT_GONE` when its client left first)."""
        task = asyncio.current_task()
        refused = started = finished = gone = False
        status = 500
        watcher: asyncio.Task[None] | None = None

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not finished and task is not None:
                gone = True
                task.cancel()

        async def admitted_receive() -> Message:
            nonlocal refused, watcher
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                if not lease.reservation.acquire():
                    refused = True
                    raise _QueueFilled
                if watcher is None:
                    watcher = asyncio.create_task(watch(), name="client-watch")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, finished, status
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True  # before sending: the client's side ends with it
            await send(message)

        try:
            await self.app(scope, admitted_receive, guarded_send)
        except _QueueFilled:
            pass
        except asyncio.CancelledError:
            if not gone or task is None:
                raise
            task.uncancel()  # our cancellation: the client left, nobody to answer
            scope.setdefault("state", {})["client_gone"] = True
            return CLIENT_GONE
        finally:
            finished = True
            if watcher is not None:
                watcher.cancel()
        if refused and not started:
            await self._overloaded(scope, send, self.refuse(lease.version))
            return 503
        return status


CONTROL_OFF = (
    "the repository's load and unload calls are off: start the server with --admin-key KEY (or "
    "DETECTOR_ADMIN_KEYS=KEY) to turn them on, and --model-control-mode explicit; they take "
    "that key as Authorization: Bearer KEY or X-API-Key: KEY, never an API key"
)


class RequestContextMiddleware:
    """Give each request an id (the client's ``X-Request-ID`` if it is a sane token, else a new
    one), echo it in the response, count the request in the metrics and write one JSON access
    log line when it ends."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths  # the app's route templates, for answers given before routing
        self._templates = [
            (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(t)) + "$"), t)
            for t in sorted(paths) if "{" in t
        ]  # fmt: skip

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
            if template is None:  # answered by a middleware (401, 413, 503) before routing
                template = self._template(scope["path"])
            if scope["state"].get("client_gone") and sent_bytes == 0:
                status = CLIENT_GONE
            self.metrics.observe_request(template, scope["method"], status, seconds)
            client = scope.get("client")
            access_logger.info(
                json.dumps(
                    {
                        "request_id": request_id,
                        "method": scope["method"][:32],
                        "path": scope["path"],
                        "route": template,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 2),
                        "bytes_sent": sent_bytes,
                        "client": f"{client[0]}:{client[1]}" if client else None,
                    }
                )
            )

    def _template(self, path: str) -> str:
        """The route template of a path answered before routing, else ``unmatched``."""
        if path in self.paths:
            return path
        return next((t for pattern, t in self._templates if pattern.match(path)), "unmatched")


def _request_id(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
