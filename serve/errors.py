"""Errors over HTTP: the one error family (:class:`ServeError` and the subclasses the HTTP layer
raises), the two wire formats, and the handlers that answer every error, ours or the
framework's, as JSON.

- ``/v1`` and the rest: ``{"error": code, "message": message, "request_id": id}``
  (:class:`serve.http_schemas.ErrorResponse`);
- ``/v2``: the KServe v2 form ``{"error": message, "code": code, "request_id": id}``
  (:class:`serve.routes.v2.schemas.V2Error`), which is what v2 clients such as ``tritonclient``
  show. The ``/v2`` routes use :class:`V2ErrorRoute`, so the errors of their dependencies (API
  key, readiness) and of request validation answer in that form too.

The runtime raises :class:`ServeError` itself (:class:`serve.runtime.images.ImageError`), the v2
wire format its :class:`serve.routes.v2.protocol.ProtocolError`; every one carries its status,
code, message and headers, so one handler answers them all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.runtime.errors import ServeError

__all__ = [
    "RETRY_AFTER_S",
    "DeadlinePassed",
    "InvalidParameter",
    "MethodNotAllowed",
    "NotFound",
    "NotReady",
    "Overloaded",
    "ServeError",
    "TooManyImages",
    "Unauthorized",
    "V2ErrorRoute",
    "error_body",
    "error_response",
    "install_error_handlers",
]

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1
"""Seconds a client is told to wait (``Retry-After``) after a 503."""
_RETRY = {"Retry-After": str(RETRY_AFTER_S)}


class NotReady(ServeError):
    """The model is not loaded and warmed up yet, or the server is shutting down."""

    status, code, headers = 503, "not_ready", _RETRY


class Overloaded(ServeError):
    """No room in the inference queue."""

    status, code, headers = 503, "overloaded", _RETRY


class DeadlinePassed(ServeError):
    """No answer within the request deadline."""

    status, code = 504, "deadline_exceeded"


class Unauthorized(ServeError):
    """A missing or wrong API key."""

    status, code, headers = 401, "unauthorized", {"WWW-Authenticate": "Bearer"}


class InvalidParameter(ServeError):
    """A request parameter out of range or unknown (422 under ``/v1``, 400 under ``/v2``)."""

    status, code = 422, "invalid_parameter"


class TooManyImages(ServeError):
    """More images in one request than ``max_images``."""

    status, code = 413, "too_many_images"


class NotFound(ServeError):
    """An unknown model name or version."""

    status, code = 404, "not_found"


class MethodNotAllowed(ServeError):
    """A known path asked with a method it does not take (give the ``Allow`` header)."""

    status, code = 405, "method_not_allowed"


# ---------------------------------------------------------------------------- wire formats


def is_v2_path(path: str) -> bool:
    """Whether ``path`` is one of the KServe v2 routes' (answered in the v2 error form)."""
    return path.startswith("/v2/") or path == "/v2"


def error_body(code: str, message: str, request_id: str | None = None, path: str = "") -> bytes:
    """The JSON every error answers with: ``{"error": code, "message": ..., "request_id"}``;
    under ``/v2`` the KServe v2 form ``{"error": message, "code": ..., "request_id"}``."""
    if is_v2_path(path):
        return json.dumps({"error": message, "code": code, "request_id": request_id}).encode()
    return json.dumps({"error": code, "message": message, "request_id": request_id}).encode()


def request_id_of(request: Request) -> str | None:
    """The id :class:`serve.http_middleware.RequestContextMiddleware` gave the request."""
    return request.scope.get("state", {}).get("request_id")


def error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """An error answer in the format of the request's path (:func:`error_body`)."""
    body = error_body(code, message, request_id_of(request), request.url.path)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _serve_error(request: Request, exc: ServeError) -> Response:
    return error_response(request, exc.status, exc.code, exc.message, exc.headers)


# ---------------------------------------------------------------------------- /v1 and the rest

HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
              413: "body_too_large", 415: "unsupported_media_type"}  # fmt: skip


def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    """A query parameter or form field FastAPI refused: 422, naming each problem."""
    problems = []
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        where = ".".join(str(part) for part in loc)
        hint = ""
        if loc[:1] == ("body",) and error.get("type") == "missing":
            hint = f" (send it as multipart/form-data field '{loc[-1]}')"
        problems.append(f"{where}: {error.get('msg', 'invalid')}{hint}")
    code = "invalid_parameter"
    if any(e.get("loc", ("",))[0] == "body" for e in exc.errors()):
        code = "invalid_body"
    return error_response(request, 422, code, "; ".join(problems) or "invalid request")


def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """The framework's own errors (404, 405, a malformed multipart body...)."""
    code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = str(exc.detail)
    if exc.status_code == 400 and ("multipart" in message or "parsing the body" in message):
        code = "invalid_body"
        message += (" The multipart/form-data body could not be parsed: does the boundary "
                    "in its Content-Type header match the body?")  # fmt: skip
    return error_response(request, exc.status_code, code, message, exc.headers)


def _unexpected_error(request: Request, exc: Exception) -> Response:
    """A bug: 500, logged with its traceback; the answer names only the exception's type."""
    logger.exception("unhandled error in %s %s", request.method, request.url.path)
    return JSONResponse(
        {"error": "internal_error", "message": f"internal error ({type(exc).__name__})",
         "request_id": request_id_of(request)}, status_code=500)  # fmt: skip


def install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, answers JSON (``ErrorResponse``)."""

    @app.exception_handler(ServeError)
    async def _serve(request: Request, exc: ServeError) -> Response:
        return _serve_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return _validation_error(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return _http_error(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return _unexpected_error(request, exc)


# ---------------------------------------------------------------------------- /v2


def _v2_validation_error(request: Request, exc: RequestValidationError) -> Response:
    problems = "; ".join(
        f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()
    )
    return error_response(request, 400, "invalid_request", problems or "invalid request")


class V2ErrorRoute(APIRoute):
    """A route whose errors (from its dependencies too: API key, readiness) answer in the v2
    error format, with the protocol's statuses (a validation error is 400, not 422)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except ServeError as exc:
                return _serve_error(request, exc)
            except RequestValidationError as exc:
                return _v2_validation_error(request, exc)
            except StarletteHTTPException as exc:
                return error_response(
                    request, exc.status_code, f"http_{exc.status_code}", str(exc.detail),
                    exc.headers,
                )  # fmt: skip

        return answer
