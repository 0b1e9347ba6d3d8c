"""The KServe v2 inference protocol (Open Inference Protocol, what NVIDIA Triton speaks) beside
``/v1``, so a ``tritonclient`` program written against Triton serving the repository of
``detector export triton`` works unchanged against this server, and back:

- ``GET /v2``: server metadata (extension ``binary_tensor_data``);
- ``GET /v2/health/live``, ``GET /v2/health/ready``: 200 with an empty body; not ready (model
  not loaded and warmed up, or shutting down) is 503 with ``Retry-After``, like ``/readyz``
  (the spec asks only for a non-200 answer; Triton answers 400);
- ``GET /v2/models/{name}[/versions/1]``: model metadata: input ``IMAGE`` ``BYTES [-1, 1]``,
  outputs ``num_dets``/``boxes``/``scores``/``classes`` (:mod:`serve.v2_io`), class names in
  ``parameters.class_names``;
- ``GET /v2/models/{name}[/versions/1]/ready``;
- ``POST /v2/models/{name}[/versions/1]/infer``: JSON, or JSON + binary tensor data
  (:mod:`serve.v2_protocol`); request ``parameters`` ``conf``, ``iou``, ``max_det``, ``classes``.

``name`` is the setting ``name`` (``detector serve --name``, ``DETECTOR_NAME``), by default
``detector``, the default ``--name`` of ``detector export triton`` too; the one version is ``1``,
as in that repository. Any other name or version is 404.

Inference takes the path of ``/v1/detect/batch``: the same body limit (413 while reading),
API keys, image sniffing and decoding (415/400/413), decode slots, dynamic batcher (503 when the
queue is full, 504 past the deadline), post-processing and metrics (requests by route template
and status). Every error answers the protocol's ``{"error": message}``, with our ``code`` and
``request_id`` beside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from importlib import metadata as package_metadata
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.app import (
    RETRY_AFTER_S,
    ApiError,
    DetectParams,
    ServerState,
    ready_state,
    require_api_key,
    run_images,
    server_state,
)
from serve.runtime.images import ImageError
from serve.runtime.predictor import Detections, UnknownClassError, resolve_classes
from serve.v2_io import (
    DEFAULT_CONF,
    DEFAULT_IOU,
    DEFAULT_MAX_DET,
    IMAGE_INPUT,
    OUTPUT_NAMES,
    OUTPUT_SPECS,
    detections_to_tensors,
)
from serve.v2_protocol import (
    HEADER_LENGTH,
    ProtocolError,
    encode_infer_response,
    inflate,
    parse_infer_request,
)
from serve.v2_schemas import V2Error, V2ModelMetadata, V2ServerMetadata, V2Tensor

MODEL_VERSION = "1"
EXTENSIONS = ["binary_tensor_data"]


def v2_error(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    request_id = request.scope.get("state", {}).get("request_id")
    body = json.dumps({"error": message, "code": code, "request_id": request_id})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class V2Route(APIRoute):
    """A route whose errors (from its dependencies too: API key, readiness) answer in the v2
    error format instead of the app's ``/v1`` one."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return v2_error(request, exc.status, exc.code, exc.message, exc.headers)
            except (ImageError, ProtocolError) as exc:
                return v2_error(request, exc.status, exc.code, str(exc))
            except RequestValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()
                )
                return v2_error(request, 400, "invalid_request", problems or "invalid request")
            except StarletteHTTPException as exc:
                return v2_error(
                    request,
                    exc.status_code,
                    f"http_{exc.status_code}",
                    str(exc.detail),
                    exc.headers,
                )

        return answer


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": V2Error, "description": text}
    for status, text in {
        400: "malformed request (JSON, input name/datatype/shape, binary sizes, parameters); "
        "corrupt, truncated or empty image",
        401: "missing or wrong API key (only when keys are configured)",
        404: "unknown model name or version",
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


def _number(options: dict[str, Any], name: str, default: float, whole: bool = False) -> float:
    """A request parameter given as a number or a numeric string: Triton and tritonclient took
    only bool, int64 and string parameters until double ones were added in early 2024
    (triton-inference-server/server#6755), so clients written for them send ``"0.3"``."""
    value = options.get(name, default)
    kind = "whole number" if whole else "number"
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(type(value).__name__)
        number = float(value)
    except ValueError as exc:
        raise ApiError(
            400, "invalid_parameter", f"parameters.{name}: {value!r} is not a {kind}"
        ) from exc
    if not math.isfinite(number) or (whole and not number.is_integer()):
        raise ApiError(400, "invalid_parameter", f"parameters.{name}: {value!r} is not a {kind}")
    return number


def detect_params(options: dict[str, Any], state: ServerState) -> DetectParams:
    """Request parameters -> the thresholds, validated as ``/v1/detect`` validates its query:
    ``conf`` and ``iou`` in 0-1, ``max_det`` 1 to the server's ``max_det_limit``."""
    assert state.predictor is not None
    conf, iou = _number(options, "conf", DEFAULT_CONF), _number(options, "iou", DEFAULT_IOU)
    for name, value in (("conf", conf), ("iou", iou)):
        if not 0 <= value <= 1:
            raise ApiError(400, "invalid_parameter", f"parameters.{name}: {value:g} is not in 0-1")
    limit = state.settings.max_det_limit
    max_det = int(_number(options, "max_det", min(DEFAULT_MAX_DET, limit), whole=True))
    if not 1 <= max_det <= limit:
        raise ApiError(
            400,
            "invalid_parameter",
            f"parameters.max_det: {max_det} is not from 1 to the limit {limit}",
        )
    classes = options.get("classes")
    if classes is not None and not isinstance(classes, str):
        raise ApiError(
            400,
            "invalid_parameter",
            "parameters.classes: a string of class names or ids, comma-separated",
        )
    try:
        wanted = resolve_classes(
            [classes] if classes else None, state.predictor.metadata.class_names
        )
    except UnknownClassError as exc:
        raise ApiError(400, "invalid_parameter", f"parameters.classes: {exc}") from exc
    return DetectParams(conf, iou, max_det, wanted)


class _Element:
    """One ``IMAGE`` element in the shape ``run_images`` reads uploads in."""

    def __init__(self, data: bytes, filename: str) -> None:
        self.data, self.filename = data, filename

    async def read(self) -> bytes:
        return self.data


def _tensor_shape(spec: tuple[str | int, ...]) -> list[int]:
    return [-1, *(-1 if d == "K" else int(d) for d in spec)]


def _ready(state: ServerState) -> bool:
    return state.ready and state.predictor is not None and state.batcher is not None


def _not_ready(request: Request) -> Response:
    return v2_error(
        request,
        503,
        "not_ready",
        "the model is not loaded yet",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


def v2_router(name: str) -> APIRouter:
    """The ``/v2`` routes for the model called ``name``; requests for other names get 404."""
    router = APIRouter(prefix="/v2", route_class=V2Route, responses=ERRORS, tags=["v2"])
    keyed = [Depends(require_api_key)]
    model = f"/models/{name}"
    versioned = f"{model}/versions/{{version}}"

    @router.get("", response_model=V2ServerMetadata, summary="v2 server metadata")
    async def server_metadata() -> V2ServerMetadata:
        try:
            version = package_metadata.version("detector")
        except package_metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
            version = "0"
        return V2ServerMetadata(name="detector", version=version, extensions=EXTENSIONS)

    @router.get("/health/live", summary="v2 liveness: 200, empty body")
    async def live() -> Response:
        return Response(status_code=200)

    @router.get("/health/ready", summary="v2 readiness: 200 once loaded and warmed up")
    async def ready(
        request: Request, state: Annotated[ServerState, Depends(server_state)]
    ) -> Response:
        return Response(status_code=200) if _ready(state) else _not_ready(request)

    async def model_ready(
        request: Request, state: Annotated[ServerState, Depends(server_state)]
    ) -> Response:
        _check_version(request)
        return Response(status_code=200) if _ready(state) else _not_ready(request)

    async def model_metadata(
        request: Request, state: Annotated[ServerState, Depends(ready_state)]
    ) -> V2ModelMetadata:
        _check_version(request)
        assert state.predictor is not None and state.batcher is not None
        meta = state.predictor.metadata
        outputs = [
            V2Tensor(name=n, datatype=OUTPUT_SPECS[n][0], shape=_tensor_shape(OUTPUT_SPECS[n][2]))
            for n in OUTPUT_NAMES
        ]
        return V2ModelMetadata(
            name=name,
            versions=[MODEL_VERSION],
            platform=f"detector_{state.predictor.backend.name}",
            inputs=[V2Tensor(name=IMAGE_INPUT, datatype="BYTES", shape=[-1, 1])],
            outputs=outputs,
            parameters={
                "class_names": json.dumps(list(meta.class_names)),
                "architecture": meta.model_name,
                "backend": state.predictor.backend.name,
                "precision": meta.precision,
                "max_batch": state.batcher.max_batch,
                "max_det_default": min(DEFAULT_MAX_DET, state.settings.max_det_limit),
                "max_det_limit": state.settings.max_det_limit,
            },
        )

    async def infer(
        request: Request, state: Annotated[ServerState, Depends(ready_state)]
    ) -> Response:
        _check_version(request)
        settings = state.settings
        body = inflate(
            await request.body(), request.headers.get("content-encoding"), settings.max_body_bytes
        )
        parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
        del body
        params = detect_params(parsed.options, state)
        if len(parsed.images) > settings.max_images:
            raise ApiError(
                413,
                "too_many_images",
                f"{len(parsed.images)} images is more than "
                f"the limit of {settings.max_images} per request",
            )
        elements = [_Element(data, f"{IMAGE_INPUT}[{i}]") for i, data in enumerate(parsed.images)]
        finished = await run_images(state, cast(list[UploadFile], elements), params)
        detections = [Detections(*result.finished[1:4]) for _, result in finished]
        tensors = detections_to_tensors(detections, params.max_det)
        content, headers, media_type = encode_infer_response(
            name, MODEL_VERSION, parsed.request_id, tensors, parsed.outputs
        )
        return Response(content, media_type=media_type, headers=headers)

    for prefix in (model, versioned):
        router.add_api_route(
            f"{prefix}/ready", model_ready, methods=["GET"], summary="v2 model readiness"
        )
        router.add_api_route(
            prefix,
            model_metadata,
            methods=["GET"],
            dependencies=keyed,
            response_model=V2ModelMetadata,
            summary="v2 model metadata",
        )
        router.add_api_route(
            f"{prefix}/infer",
            infer,
            methods=["POST"],
            dependencies=keyed,
            summary="v2 inference: encoded images in, detections out",
            responses={
                200: {
                    "content": {"application/octet-stream": {}},
                    "description": "JSON, or JSON + binary outputs",
                }
            },
            openapi_extra={"requestBody": _INFER_BODY},
        )

    async def unknown_model(request: Request) -> Response:
        asked = request.path_params.get("other", "")
        if asked == name:  # the model's own path with a method it does not take
            return v2_error(
                request,
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.url.path}",
                {"Allow": "POST" if request.url.path.endswith("/infer") else "GET"},
            )
        return v2_error(
            request,
            404,
            "not_found",
            f"unknown model {asked!r}; this server serves {name!r} (GET /v2/models/{name})",
        )

    for path in (
        "/models/{other}",
        "/models/{other}/ready",
        "/models/{other}/infer",
        "/models/{other}/versions/{version}",
        "/models/{other}/versions/{version}/ready",
        "/models/{other}/versions/{version}/infer",
    ):
        router.add_api_route(path, unknown_model, methods=["GET", "POST"], include_in_schema=False)
    return router


def _check_version(request: Request) -> None:
    """The one version, ``1``, when the path names one."""
    version = request.path_params.get("version", MODEL_VERSION)
    if version != MODEL_VERSION:
        raise ApiError(
            404,
            "not_found",
            f"unknown model version {version!r}; the one version is {MODEL_VERSION}",
        )
