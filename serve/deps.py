"""What the routes of both APIs share: the server state, readiness, API keys, and the one
builder of a request's prediction parameters (:func:`detect_params`).

The dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool,
a hand-off per dependency and request for work that never blocks (see BENCHMARKS.md, 'Serving
throughput against the raw backend').
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


async def server_state(request: Request) -> ServerState:
    """The app's :class:`ServerState`."""
    return request.app.state.server


async def ready_state(state: Annotated[ServerState, Depends(server_state)]) -> ServerState:
    """The state of a server that is serving, else 503 ``not_ready`` with ``Retry-After``
    (not loaded yet, shutting down, or inference failing: :attr:`ServerState.not_serving`)."""
    problem = state.not_serving
    if problem is not None:
        raise NotReady(problem)
    return state


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


def detect_params(state: ServerState, style: ParamStyle, given: Mapping[str, Any]) -> PredictParams:
    """A request's thresholds, read and checked, for either API: ``given`` holds the values the
    request gave (``conf``, ``iou``, ``max_det``, ``classes``); one it did not give takes its
    default from :mod:`detector.core.defaults` (``max_det`` at most ``settings.max_det_limit``).
    ``classes`` (names or ids) are resolved against the model's class names.

    Raises:
        InvalidParameter: naming the parameter as ``style`` does, with its status.
    """
    assert state.predictor is not None
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
        wanted = resolve_classes(classes, state.predictor.metadata.class_names)
    except UnknownClassError as exc:
        raise InvalidParameter(f"{style.prefix}classes: {exc}", status=style.status) from exc
    return PredictParams(conf, iou, max_det, wanted)
