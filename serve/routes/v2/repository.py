"""Triton's model repository extension under ``/v2/repository``, so ``tritonclient``'s
``get_model_repository_index``, ``load_model`` and ``unload_model`` (and an operator's tooling
built on them) work against this server as against Triton:

- ``POST /v2/repository/index``: body empty or ``{"ready": bool}``; answers a JSON array of
  ``{"name", "version", "state", "reason"}`` (states READY, UNAVAILABLE, LOADING, UNLOADING;
  a model with no version loaded, failed or finishing has one entry without ``version``);
  ``ready: true`` keeps the READY entries. Needs an API key when keys are configured (an admin
  key does too).
- ``POST /v2/repository/models/{name}/load``: body empty or ``{"parameters": {"config":
  "<JSON of a model config>"}}``, of which ``version_policy`` is used (the versions to serve for
  this load; the folder's ``config.pbtxt`` otherwise). Loads or reloads the model: new and
  changed versions are loaded and checked before they take over (200 once they serve); a
  version that fails leaves the serving ones serving and answers 400 with the reason.
- ``POST /v2/repository/models/{name}/unload``: body empty or ``{"parameters":
  {"unload_dependents": bool}}`` (accepted; our models have no dependents). 200 once new
  requests for it are refused (404); the requests it holds still finish.

Load and unload need an admin key (``--admin-key``, ``DETECTOR_ADMIN_KEYS``; checked from the
headers by :class:`serve.http_middleware.AdmissionMiddleware`: 403 when none is configured) and
``--model-control-mode explicit`` (409 otherwise: in modes none and poll Triton refuses them
too). Answers to success are empty, as Triton's; errors are ``{"error": message}``.

The route functions carry no docstrings: FastAPI would publish them in the OpenAPI schema.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse

from serve.deps import started_state
from serve.errors import InvalidParameter
from serve.http_paths import REPOSITORY_INDEX, REPOSITORY_LOAD, REPOSITORY_UNLOAD
from serve.runtime.repository import RepositoryError, VersionPolicy, config_from
from serve.state import ServerState

MAX_CONTROL_BODY = 64 * 1024
"""Largest body of a repository call (a model config in JSON is a few KiB)."""

Name = Annotated[str, Path(description="the model's name (its repository folder)")]
Started = Annotated[ServerState, Depends(started_state)]


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; ``{}`` for an empty body.

    Raises:
        InvalidParameter: not a JSON object, or larger than :data:`MAX_CONTROL_BODY` (400).
    """
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_CONTROL_BODY:
            raise InvalidParameter(
                f"the request body is larger than {MAX_CONTROL_BODY} bytes", status=400
            )
        chunks.append(chunk)
    body = b"".join(chunks).strip()
    if not body:
        return {}
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidParameter(f"the request body is not JSON ({exc})", status=400) from exc
    if not isinstance(value, dict):
        raise InvalidParameter("the request body must be a JSON object", status=400)
    return value


def _parameters(body: dict[str, Any], accepted: tuple[str, ...]) -> dict[str, Any]:
    """The body's ``parameters`` object, refusing fields and parameters it does not take."""
    unknown = set(body) - {"parameters"}
    if unknown:
        raise InvalidParameter(
            f"unknown field(s) {sorted(unknown)}; the body has only 'parameters'", status=400
        )
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidParameter("parameters: must be a JSON object", status=400)
    files = [key for key in parameters if str(key).startswith("file:")]
    if files:
        raise InvalidParameter(
            f"parameters {files}: model files cannot be sent in a load call here; copy them "
            "into the repository folder (NAME/VERSION/model.onnx) and load the model",
            status=400,
        )
    unknown = set(parameters) - set(accepted)
    if unknown:
        raise InvalidParameter(
            f"unknown parameter(s) {sorted(unknown)}; accepted: {', '.join(accepted)}", status=400
        )
    return parameters


def _policy(parameters: dict[str, Any]) -> VersionPolicy | None:
    """The ``version_policy`` of a load call's ``config`` parameter, if it gives one."""
    text = parameters.get("config")
    if text is None:
        return None
    if not isinstance(text, str):
        raise InvalidParameter("parameters.config: must be a string of JSON", status=400)
    try:
        values = json.loads(text)
    except ValueError as exc:
        raise InvalidParameter(f"parameters.config: not JSON ({exc})", status=400) from exc
    if not isinstance(values, dict):
        raise InvalidParameter("parameters.config: must be a JSON object", status=400)
    if "version_policy" not in values and "versionPolicy" not in values:
        return None
    try:
        return config_from(values, "parameters.config").policy
    except RepositoryError as exc:
        raise InvalidParameter(exc.message, status=400) from exc


async def repository_index(request: Request, state: Started) -> JSONResponse:
    body = await _json_body(request)
    unknown = set(body) - {"ready", "repository_name"}
    if unknown:
        raise InvalidParameter(f"unknown field(s) {sorted(unknown)}; the index request has "
                               "'ready'", status=400)  # fmt: skip
    ready_only = body.get("ready", False)
    if not isinstance(ready_only, bool):
        raise InvalidParameter("ready: must be true or false", status=400)
    return JSONResponse(await state.registry.index(ready_only))


async def load_model(name: Name, request: Request, state: Started) -> Response:
    state.registry.check_control()
    policy = _policy(_parameters(await _json_body(request), ("config",)))
    await state.registry.load(name, policy)
    return Response(status_code=200)


async def unload_model(name: Name, request: Request, state: Started) -> Response:
    state.registry.check_control()
    parameters = _parameters(await _json_body(request), ("unload_dependents",))
    if not isinstance(parameters.get("unload_dependents", False), bool):
        raise InvalidParameter("parameters.unload_dependents: must be true or false", status=400)
    await state.registry.unload(name)
    return Response(status_code=200)


def add_repository_routes(router: APIRouter) -> None:
    """The three routes, on the ``/v2`` router (its v2 error form)."""
    router.add_api_route(REPOSITORY_INDEX.removeprefix("/v2"), repository_index,
                         methods=["POST"], summary="v2 repository index: every model and "
                         "version, loaded or not, with its state")  # fmt: skip
    router.add_api_route(REPOSITORY_LOAD.removeprefix("/v2"), load_model, methods=["POST"],
                         summary="v2 repository: load or reload a model (admin key)")  # fmt: skip
    router.add_api_route(REPOSITORY_UNLOAD.removeprefix("/v2"), unload_model, methods=["POST"],
                         summary="v2 repository: unload a model (admin key)")  # fmt: skip
