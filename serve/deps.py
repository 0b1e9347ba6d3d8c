"""What the routes of both APIs share: the server state, readiness, API keys, the model version a
request runs on (:func:`served_version`), and the one builder of a request's prediction
parameters (:func:`detect_params`).

The dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool,
a hand-off per dependency and request for work that never blocks (see BENCHMARKS.md, 'Serving
throughput against the raw backend').
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from detector.core.defaults import MAX_DET, PREDICT_CONF, PREDICT_IOU, PredictParams
from serve.errors import InvalidParameter, NotReady, Unauthorized
from serve.http_middleware import key_problem
from serve.runtime.predictor import UnknownClassError, resolve_classes
from serve.settings import ServeSettings
from serve.state import ServerState
from serve.versions import Lease, ServedVersion


async def server_state(request: Request) -> ServerState:
    """The app's :class:`ServerState`."""
    return request.app.state.server


async def ready_state(state: Annotated[ServerState, Depends(server_state)]) -> ServerState:
    """The state of a server that is serving, else 503 ``not_ready`` with ``Retry-After``
    (not loaded yet, shutting down, or inference failing: :attr:`ServerState.not_serving`):
    what readiness reports."""
    problem = state.not_serving
    if problem is not None:
        raise NotReady(problem)
    return state


async def started_state(state: Annotated[ServerState, Depends(server_state)]) -> ServerState:
    """The state of a server that has loaded its models and is not shutting down, else 503
    ``not_ready`` (whether a model's inference works is its own version's matter:
    :func:`served_version`)."""
    problem = state.not_started
    if problem is not None:
        raise NotReady(problem)
    return state


def healthy(served: ServedVersion) -> ServedVersion:
    """``served``, else 503 ``not_ready`` when its inference is failing (its batcher's
    :attr:`~serve.runtime.batching.DynamicBatcher.health_problem`)."""
    problem = served.batcher.health_problem
    if problem is not None:
        raise NotReady(f"inference is failing: {problem}")
    return served


async def served_version(
    request: Request, state: Annotated[ServerState, Depends(started_state)]
) -> AsyncIterator[ServedVersion]:
    """The model version an inference request runs on: the one the admission middleware leased
    it when its headers arrived (``scope["state"]["lease"]``), whatever has been loaded since;
    else the one its path names now (path parameters ``name`` and ``version``; the default
    model and its default version without them), leased for the request. 404 for an unknown
    model or version, 503 when its inference is failing."""
    lease: Lease | None = request.scope.get("state", {}).get("lease")
    if lease is not None:
        yield healthy(lease.version)
        return
    params = request.path_params
    lease = state.registry.lease(params.get("name"), params.get("version"))
    try:
        yield healthy(lease.version)
    finally:
        lease.release()


async def named_version(
    request: Request, state: Annotated[ServerState, Depends(started_state)]
) -> ServedVersion:
    """The model version a path names (``name``, and ``version`` when given), for the routes
    that only describe it (no lease: nothing runs on it). 404 for an unknown one."""
    params = request.path_params
    return state.registry.resolve(params.get("name"), params.get("version"))


_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer API_KEY")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")


async def require_api_key(
    state: Annotated[ServerState, Depends(server_state)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key_header)],
) -> None:
    """With API keys configured, one of them must come as a bearer token or ``X-API-Key``
    (:func:`serve.http_middleware.key_problem`). The inference routes are checked earlier too,
    from the headers alone, before their body is read (:class:`AdmissionMiddleware`); this
    dependency covers the other keyed routes and documents the schemes in the OpenAPI schema."""
    given = (bearer.credentials if bearer else None) or header_key
    problem = key_problem(state.settings.api_keys, given)
    if problem is not None:
        raise Unauthorized(problem)


# ---------------------------------------------------------------------------- parameters


def _number_as_given(name: str, value: Any, whole: bool) -> float:
    """A value the framework has already validated as a number of the right kind."""
    return value


def _classes_as_given(value: Any) -> Sequence[str] | None:
    """A value the framework has already validated as a list of strings."""
    return value


@dataclass(frozen=True)
class ParamStyle:
    """How one API names its request parameters, reads them, and answers a bad one."""

    prefix: str  # put before a parameter's name in messages
    status: int  # the HTTP status of a bad value
    above_limit: str  # how a max_det out of range is told, before the limit
    # (name, value, whole) -> the value as a number, or InvalidParameter
    number: Callable[[str, Any, bool], float] = _number_as_given
    # the value -> class names or ids (each may be comma-separated), or InvalidParameter
    classes: Callable[[Any], Sequence[str] | None] = _classes_as_given


def default_max_det(settings: ServeSettings) -> int:
    """``max_det`` when a request gives none: :data:`~detector.core.defaults.MAX_DET`, at most
    the server's ``max_det_limit``."""
    return min(MAX_DET, settings.max_det_limit)


def detect_params(
    state: ServerState, served: ServedVersion, style: ParamStyle, given: Mapping[str, Any]
) -> PredictParams:
    """A request's thresholds, read and checked, for either API: ``given`` holds the values the
    request gave (``conf``, ``iou``, ``max_det``, ``classes``); one it did not give takes its
    default from :mod:`detector.core.defaults` (``max_det`` at most ``settings.max_det_limit``).
    ``classes`` (names or ids) are resolved against the class names of ``served``, the version
    the request runs on.

    Raises:
        InvalidParameter: naming the parameter as ``style`` does, with its status.
    """
    conf = style.number("conf", given["conf"], False) if "conf" in given else PREDICT_CONF
    iou = style.number("iou", given["iou"], False) if "iou" in given else PREDICT_IOU
    for name, value in (("conf", conf), ("iou", iou)):
        if not 0 <= value <= 1:
            raise InvalidParameter(
                f"{style.prefix}{name}: {value:g} is not in 0-1", status=style.status
            )
    limit = state.settings.max_det_limit
    max_det = (
        int(style.number("max_det", given["max_det"], True))
        if "max_det" in given
        else default_max_det(state.settings)
    )
    if not 1 <= max_det <= limit:
        raise InvalidParameter(
            f"{style.prefix}max_det: {max_det} {style.above_limit} {limit}", status=style.status
        )
    classes = style.classes(given["classes"]) if "classes" in given else None
    try:
        wanted = resolve_classes(classes, served.predictor.metadata.class_names)
    except UnknownClassError as exc:
        raise InvalidParameter(f"{style.prefix}classes: {exc}", status=style.status) from exc
    return PredictParams(conf, iou, max_det, wanted)
