"""The ``/v2`` routes, so a ``tritonclient`` program written against Triton serving the
repository of ``detector export triton`` works unchanged against this server, and back:

- ``GET /v2``: server metadata (extensions ``binary_tensor_data``, ``model_repository``,
  ``model_configuration``);
- ``GET /v2/health/live``, ``GET /v2/health/ready``: 200 with an empty body; not ready (models
  not loaded and warmed up, inference failing, or shutting down) is 503 with ``Retry-After``,
  like ``/readyz`` (the spec asks only for a non-200 answer; Triton answers 400);
- ``GET /v2/models/{name}[/versions/{version}]``: model metadata: its serving versions, input
  ``IMAGE`` ``BYTES [-1, 1]``, outputs ``num_dets``/``boxes``/``scores``/``classes``
  (:mod:`serve.routes.v2.io`), class names in ``parameters.class_names``;
- ``GET /v2/models/{name}[/versions/{version}]/ready``;
- ``GET /v2/models/{name}[/versions/{version}]/config``: its configuration in Triton's JSON form
  (``max_batch_size``, ``version_policy``, the input and outputs);
- ``POST /v2/models/{name}[/versions/{version}]/infer``: JSON, or JSON + binary tensor data
  (:mod:`serve.routes.v2.protocol`); request ``parameters`` ``conf``, ``iou``, ``max_det``,
  ``classes``;
- the repository extension, ``/v2/repository/...``: :mod:`serve.routes.v2.repository`.

``name`` is the setting ``name`` (``detector serve --name``, ``DETECTOR_NAME``, by default
``detector``, the default ``--name`` of ``detector export triton`` too) with one version, ``1``,
for ``--model FILE``; a repository's model folders and version folders otherwise. A path without
a version means the model's highest serving version. Any other name or version is 404.

Inference takes the path of ``/v1/detect/batch``: the same body limit (413 while reading),
API keys, image sniffing and decoding (415/400/413), decode slots, the version's own dynamic
batcher (503 when its queue is full, 504 past the deadline), post-processing and metrics
(requests by route template and status; batches by model and version). Every error answers the
protocol's ``{"error": message}``, with our ``code`` and ``request_id`` beside it
(:class:`serve.errors.V2ErrorRoute`).

The route functions carry no docstrings: FastAPI would publish them in the OpenAPI schema.
"""

from __future__ import annotations

import json
import math
from importlib import metadata as package_metadata
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response

from serve.deps import (
    ParamStyle,
    default_max_det,
    detect_params,
    healthy,
    named_version,
    require_api_key,
    served_version,
    server_state,
    started_state,
)
from serve.errors import (
    InvalidParameter,
    NotReady,
    TooManyImages,
    V2ErrorRoute,
)
from serve.http_paths import V2_MODEL, V2_VERSION
from serve.pipeline import run_images
from serve.routes.v2.io import IMAGE_INPUT, OUTPUT_NAMES, OUTPUT_SPECS, detections_to_tensors
from serve.routes.v2.protocol import (
    HEADER_LENGTH,
    InferRequest,
    encode_infer_response,
    inflate,
    parse_infer_request,
)
from serve.routes.v2.repository import add_repository_routes
from serve.routes.v2.schemas import V2Error, V2ModelMetadata, V2ServerMetadata, V2Tensor
from serve.runtime.predictor import Detections
from serve.state import ServerState
from serve.versions import ServedVersion

EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration"]

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": V2Error, "description": text}
    for status, text in {
        400: "malformed request (JSON, input name/datatype/shape, binary sizes, parameters); "
        "corrupt, truncated or empty image",
        401: "missing or wrong API key (only when keys are configured)",
        404: "unknown model name or version, or a model not loaded",
        413: "body, image pixel count or image count above the limits",
        415: "not a JPEG, PNG, BMP or WebP image (judged from its bytes)",
        503: "queue full or model not loaded; see Retry-After",
        504: "the request deadline passed",
    }.items()
}

_INFER_BODY = {
    "description": "a v2 inference request: JSON (BYTES elements as strings, or base64 with "
    "inputs[0].parameters.content_type='base64'), or JSON followed by binary tensor data with "
    f"the {HEADER_LENGTH} header (what tritonclient sends)",
    "content": {
        "application/json": {
            "example": {
                "id": "42",
                "parameters": {"conf": 0.3, "max_det": 50},
                "inputs": [
                    {
                        "name": IMAGE_INPUT,
                        "shape": [1, 1],
                        "datatype": "BYTES",
                        "parameters": {"content_type": "base64"},
                        "data": ["/9j/4AAQSkZJRgABAQ..."],
                    }
                ],
                "outputs": [{"name": name} for name in OUTPUT_NAMES],
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}

_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/octet-stream": {}},
        "description": "JSON, or JSON + binary outputs",
    }
}
_CONFIG_TYPES = {"BYTES": "TYPE_STRING", "INT32": "TYPE_INT32", "FP32": "TYPE_FP32"}


# ---------------------------------------------------------------------------- parameters


def _number(name: str, value: Any, whole: bool) -> float:
    """A request parameter given as a number or a numeric string: Triton and tritonclient took
    only bool, int64 and string parameters until double ones were added in early 2024, so
    clients written for them send ``"0.3"``."""
    kind = "whole number" if whole else "number"
    message = f"parameters.{name}: {value!r} is not a {kind}"
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(type(value).__name__)
        number = float(value)
    except ValueError as exc:
        raise InvalidParameter(message, status=400) from exc
    if not math.isfinite(number) or (whole and not number.is_integer()):
        raise InvalidParameter(message, status=400)
    return number


def _classes(value: Any) -> list[str] | None:
    """``classes``: one string of names or ids, comma-separated."""
    if value is not None and not isinstance(value, str):
        raise InvalidParameter(
            "parameters.classes: a string of class names or ids, comma-separated", status=400
        )
    return [value] if value else None


V2_PARAMS = ParamStyle(
    prefix="parameters.",
    status=400,
    above_limit="is not from 1 to the limit",
    number=_number,
    classes=_classes,
)
"""The inference request's ``parameters`` (:func:`serve.deps.detect_params`), read as Triton
clients send them; a bad one is 400, as the protocol answers."""


# ---------------------------------------------------------------------------- helpers


class _Element:
    """One ``IMAGE`` element as an upload (:class:`serve.pipeline.Upload`)."""

    def __init__(self, data: bytes, filename: str) -> None:
        self.data, self.filename = data, filename

    async def read(self) -> bytes:
        return self.data


def _tensor_shape(spec: tuple[str | int, ...]) -> list[int]:
    """An output's shape for the metadata: batch and K (the request's max_det) are -1."""
    return [-1, *(-1 if d == "K" else int(d) for d in spec)]


def _readiness(state: ServerState) -> Response:
    """200 with an empty body when serving, else 503 ``not_ready`` with ``Retry-After``."""
    problem = state.not_serving
    if problem is not None:
        raise NotReady(problem)
    return Response(status_code=200)


async def _read_infer_request(request: Request, state: ServerState) -> InferRequest:
    """The body, decompressed (at most ``max_body_bytes``) and parsed (at most ``max_images``
    images). Read from the stream rather than ``request.body()``, which would keep the raw body
    on the request until the answer: once parsed, only the images stay in memory."""
    settings = state.settings
    chunks = [chunk async for chunk in request.stream()]
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    del chunks
    body = inflate(body, request.headers.get("content-encoding"), settings.max_body_bytes)
    return parse_infer_request(body, request.headers.get(HEADER_LENGTH), settings.max_images)


def _check_image_count(parsed: InferRequest, state: ServerState) -> None:
    """At most ``max_images`` images in one request (else 413)."""
    limit = state.settings.max_images
    if len(parsed.images) > limit:
        raise TooManyImages(
            f"{len(parsed.images)} images is more than the limit of {limit} per request"
        )


# ---------------------------------------------------------------------------- routes


async def server_metadata() -> V2ServerMetadata:
    try:
        version = package_metadata.version("detector")
    except package_metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        version = "0"
    return V2ServerMetadata(name="detector", version=version, extensions=EXTENSIONS)


async def live() -> Response:
    return Response(status_code=200)


async def ready(state: Annotated[ServerState, Depends(server_state)]) -> Response:
    return _readiness(state)


async def model_ready(served: Annotated[ServedVersion, Depends(named_version)]) -> Response:
    healthy(served)
    return Response(status_code=200)


async def model_metadata(
    state: Annotated[ServerState, Depends(started_state)],
    served: Annotated[ServedVersion, Depends(named_version)],
) -> V2ModelMetadata:
    healthy(served)
    meta = served.predictor.metadata
    outputs = [
        V2Tensor(name=n, datatype=OUTPUT_SPECS[n][0], shape=_tensor_shape(OUTPUT_SPECS[n][2]))
        for n in OUTPUT_NAMES
    ]
    record = state.registry.record(served.model)
    return V2ModelMetadata(
        name=served.model,
        versions=[str(v) for v in record.serving],
        platform=f"detector_{served.predictor.backend.name}",
        inputs=[V2Tensor(name=IMAGE_INPUT, datatype="BYTES", shape=[-1, 1])],
        outputs=outputs,
        parameters={
            "class_names": json.dumps(list(meta.class_names)),
            "architecture": meta.model_name,
            "backend": served.predictor.backend.name,
            "precision": meta.precision,
            "max_batch": served.batcher.max_batch,
            "max_det_default": default_max_det(state.settings),
            "max_det_limit": state.settings.max_det_limit,
        },
    )


async def model_config(
    state: Annotated[ServerState, Depends(started_state)],
    served: Annotated[ServedVersion, Depends(named_version)],
) -> dict[str, Any]:
    meta = served.predictor.metadata
    record = state.registry.record(served.model)
    entry = record.entry
    policy = entry.config.policy if entry is not None else None
    outputs = [
        {"name": n, "data_type": _CONFIG_TYPES[OUTPUT_SPECS[n][0]],
         "dims": [-1 if d == "K" else int(d) for d in OUTPUT_SPECS[n][2]]}
        for n in OUTPUT_NAMES
    ]  # fmt: skip
    return {
        "name": served.model,
        "platform": f"detector_{served.predictor.backend.name}",
        "backend": served.predictor.backend.name,
        "max_batch_size": served.batcher.max_batch,
        "version_policy": (policy.to_json() if policy is not None
                           else {"latest": {"num_versions": 1}}),
        "input": [{"name": IMAGE_INPUT, "data_type": "TYPE_STRING", "dims": [1]}],
        "output": outputs,
        "parameters": {
            "class_names": {"string_value": json.dumps(list(meta.class_names))},
            "architecture": {"string_value": meta.model_name},
            "precision": {"string_value": meta.precision},
            "file": {"string_value": served.files.path.name},
        },
    }  # fmt: skip


async def infer(
    request: Request,
    state: Annotated[ServerState, Depends(started_state)],
    served: Annotated[ServedVersion, Depends(served_version)],
) -> Response:
    parsed = await _read_infer_request(request, state)
    params = detect_params(state, served, V2_PARAMS, parsed.options)
    _check_image_count(parsed, state)
    elements = [_Element(data, f"{IMAGE_INPUT}[{i}]") for i, data in enumerate(parsed.images)]
    finished = await run_images(state, served, elements, params)
    detections = [Detections(*result.finished[1:4]) for _, result in finished]
    tensors = detections_to_tensors(detections, params.max_det)
    content, headers, media_type = encode_infer_response(
        served.model, served.label, parsed.request_id, tensors, parsed.outputs
    )
    return Response(content, media_type=media_type, headers=headers)


# ---------------------------------------------------------------------------- the router


async def _name_param(
    name: Annotated[str, Path(description="the model's name (its repository folder)")],
) -> None:
    """Documents the path parameter ``name`` (the routes read it themselves)."""


async def _version_param(
    version: Annotated[str, Path(description="one of its versions (a version folder)")],
) -> None:
    """Documents the path parameter ``version``."""


def _add_model_routes(router: APIRouter, prefix: str, described: list[Any]) -> None:
    """Readiness, metadata, configuration and inference of the model (version) at ``prefix``."""
    keyed = [Depends(require_api_key), *described]
    router.add_api_route(f"{prefix}/ready", model_ready, methods=["GET"], dependencies=described,
                         summary="v2 model readiness")  # fmt: skip
    router.add_api_route(prefix, model_metadata, methods=["GET"], dependencies=keyed,
                         response_model=V2ModelMetadata, summary="v2 model metadata")  # fmt: skip
    router.add_api_route(f"{prefix}/config", model_config, methods=["GET"], dependencies=keyed,
                         summary="v2 model configuration (Triton's JSON form)")  # fmt: skip
    router.add_api_route(
        f"{prefix}/infer", infer, methods=["POST"], dependencies=keyed,
        summary="v2 inference: encoded images in, detections out",
        responses=_INFER_RESPONSES, openapi_extra={"requestBody": _INFER_BODY},
    )  # fmt: skip


def v2_router() -> APIRouter:
    """The ``/v2`` routes: health, the served models by name and version, the repository
    extension; requests for unknown names or versions get 404."""
    router = APIRouter(prefix="/v2", route_class=V2ErrorRoute, responses=ERRORS, tags=["v2"])
    router.add_api_route("", server_metadata, methods=["GET"], response_model=V2ServerMetadata,
                         summary="v2 server metadata")  # fmt: skip
    router.add_api_route("/health/live", live, methods=["GET"],
                         summary="v2 liveness: 200, empty body")  # fmt: skip
    router.add_api_route("/health/ready", ready, methods=["GET"],
                         summary="v2 readiness: 200 once loaded and warmed up")  # fmt: skip
    name, version = Depends(_name_param), Depends(_version_param)
    _add_model_routes(router, V2_MODEL.removeprefix("/v2"), [name])
    _add_model_routes(router, V2_VERSION.removeprefix("/v2"), [name, version])
    add_repository_routes(router)
    return router
