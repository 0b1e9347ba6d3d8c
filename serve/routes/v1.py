"""``/v1``: multipart image uploads in, JSON detections (or the annotated JPEG) out.

- ``POST /v1/detect``, ``/v1/detect/batch``: the default model (``--model FILE``'s, or the
  repository's ``--default-model``), its default version;
- ``POST /v1/models/{name}/detect[/batch]``: model ``name``, its default (highest serving)
  version; ``POST /v1/models/{name}/versions/{version}/detect[/batch]``: that version;
- ``GET /v1/models``: every model version served; ``GET /v1/models/{name}``: one model's.

A request runs on the version it was admitted to (:func:`serve.deps.served_version`), even when a
newer one takes over before it is answered. An unknown model or version is 404.

The route functions carry no docstrings: FastAPI would publish them as the operations'
descriptions in the OpenAPI schema, whose text is part of the API.

Errors answer ``{"error": code, "message": ..., "request_id": ...}``
(:class:`serve.http_schemas.ErrorResponse`).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Path, Query, UploadFile
from fastapi.responses import Response

from detector.core.defaults import MAX_DET, PREDICT_CONF, PREDICT_IOU, PredictParams
from serve.deps import (
    ParamStyle,
    detect_params,
    ready_state,
    require_api_key,
    served_version,
    started_state,
)
from serve.errors import TooManyImages
from serve.http_schemas import (
    BatchDetectResponse,
    DetectResponse,
    ErrorResponse,
    ImageResult,
    ImageSize,
    ModelInfo,
    ModelsResponse,
    Timings,
)
from serve.pipeline import Prepared, annotate, in_image_pool, run_images
from serve.runtime.batching import BatchResult
from serve.runtime.repository import UnknownModel
from serve.state import ServerState
from serve.versions import ServedVersion

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "corrupt, truncated or empty image; malformed multipart body",
        401: "missing or wrong API key (only when keys are configured)",
        404: "unknown model or version, or a model not loaded",
        413: "body, image pixel count or image count above the limits",
        415: "not a JPEG, PNG, BMP or WebP image (judged from its bytes)",
        422: "invalid query parameter or missing form field",
        503: "queue full or model not loaded; see Retry-After",
        504: "the request deadline passed",
    }.items()
}

V1_PARAMS = ParamStyle(prefix="", status=422, above_limit="is above the limit")
"""Query parameters, whose types and ranges FastAPI has checked already (else 422)."""

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=ERRORS)

Started = Annotated[ServerState, Depends(started_state)]
Served = Annotated[ServedVersion, Depends(served_version)]
ModelName = Annotated[str, Path(description="the model's name (GET /v1/models: model_name)")]
ModelVersion = Annotated[str, Path(description="one of its versions (model_version)")]
ImageFile = Annotated[UploadFile, File(description="a JPEG, PNG, BMP or WebP image")]
ImageFiles = Annotated[list[UploadFile], File(description="JPEG, PNG, BMP or WebP images")]
Format = Annotated[Literal["json", "image"], Query(
    description="json: detections; image: the annotated image as JPEG")]  # fmt: skip


async def query_params(
    state: Started,
    served: Served,
    conf: Annotated[float, Query(ge=0, le=1, allow_inf_nan=False,
                                 description="score threshold")] = PREDICT_CONF,
    iou: Annotated[float, Query(ge=0, le=1, allow_inf_nan=False,
                                description="NMS IoU threshold")] = PREDICT_IOU,
    max_det: Annotated[int | None, Query(
        ge=1, description=f"most detections per image (default {MAX_DET}, at most the "
        "server's max_det_limit)")] = None,
    classes: Annotated[list[str] | None, Query(
        description="keep only these classes: names or ids, repeated or comma-separated")] = None,
) -> PredictParams:  # fmt: skip
    """The query's thresholds (:func:`serve.deps.detect_params`), for the version it runs on."""
    given = {"conf": conf, "iou": iou, "max_det": max_det, "classes": classes}
    return detect_params(state, served, V1_PARAMS,
                         {k: v for k, v in given.items() if v is not None})  # fmt: skip


Params = Annotated[PredictParams, Depends(query_params)]


def image_result(item: Prepared, result: BatchResult, started: float) -> ImageResult:
    """One image's detections and timings."""
    height, width = item.shape
    return ImageResult(
        image=ImageSize(width=width, height=height),
        detections=result.finished[0],
        timings=Timings(
            decode_ms=round(item.decode_s * 1000, 3),
            queue_ms=round(result.queue_s * 1000, 3),
            inference_ms=round(result.inference_s * 1000, 3),
            postprocess_ms=round(result.finish_s * 1000, 3),
            total_ms=round((time.perf_counter() - started) * 1000, 3),
            batch_size=result.batch_size,
        ),
    )


async def detect_one(
    state: ServerState, served: ServedVersion, params: PredictParams, image: UploadFile,
    format: str,
) -> Any:  # fmt: skip
    """One image on ``served``: its detections, or the annotated JPEG with ``format=image``."""
    started = time.perf_counter()
    [(item, result)] = await run_images(state, served, [image], params,
                                        keep_images=format == "image")  # fmt: skip
    _, boxes, scores, classes = result.finished
    if format == "image":
        names = served.predictor.metadata.class_names
        jpeg = await in_image_pool(state, annotate, item, boxes, scores, classes, names)
        return Response(jpeg, media_type="image/jpeg")
    single = image_result(item, result, started)
    return DetectResponse(**single.model_dump(), model=served.predictor.metadata.model_name,
                          model_name=served.model, model_version=served.label)  # fmt: skip


async def detect_many(
    state: ServerState, served: ServedVersion, params: PredictParams, images: list[UploadFile]
) -> BatchDetectResponse:
    """Several images on ``served``, in upload order."""
    started = time.perf_counter()
    if len(images) > state.settings.max_images:
        raise TooManyImages(f"{len(images)} images is more than the limit of "
                            f"{state.settings.max_images} per request")  # fmt: skip
    finished = await run_images(state, served, images, params)
    return BatchDetectResponse(
        results=[image_result(item, result, started) for item, result in finished],
        model=served.predictor.metadata.model_name,
        model_name=served.model,
        model_version=served.label,
        total_ms=round((time.perf_counter() - started) * 1000, 3),
    )


_DETECT = {
    "response_model": DetectResponse,
    "responses": {200: {"content": {"image/jpeg": {}},
                        "description": "JSON detections, or the annotated JPEG with format=image"}},
}  # fmt: skip


@router.post("/detect", summary="Detect objects in one image (the default model)", **_DETECT)
async def detect(
    state: Started, served: Served, params: Params, image: ImageFile, format: Format = "json"
) -> Any:
    return await detect_one(state, served, params, image, format)


@router.post("/models/{name}/detect", summary="Detect objects in one image with a model",
             **_DETECT)  # fmt: skip
async def detect_with_model(
    name: ModelName, state: Started, served: Served, params: Params, image: ImageFile,
    format: Format = "json",
) -> Any:  # fmt: skip
    return await detect_one(state, served, params, image, format)


@router.post("/models/{name}/versions/{version}/detect",
             summary="Detect objects in one image with a model version", **_DETECT)  # fmt: skip
async def detect_with_version(
    name: ModelName, version: ModelVersion, state: Started, served: Served, params: Params,
    image: ImageFile, format: Format = "json",
) -> Any:  # fmt: skip
    return await detect_one(state, served, params, image, format)


@router.post("/detect/batch", response_model=BatchDetectResponse,
             summary="Detect objects in several images (the default model)")  # fmt: skip
async def detect_batch(
    state: Started, served: Served, params: Params, images: ImageFiles
) -> BatchDetectResponse:
    return await detect_many(state, served, params, images)


@router.post("/models/{name}/detect/batch", response_model=BatchDetectResponse,
             summary="Detect objects in several images with a model")  # fmt: skip
async def detect_batch_with_model(
    name: ModelName, state: Started, served: Served, params: Params, images: ImageFiles
) -> BatchDetectResponse:
    return await detect_many(state, served, params, images)


@router.post("/models/{name}/versions/{version}/detect/batch", response_model=BatchDetectResponse,
             summary="Detect objects in several images with a model version")  # fmt: skip
async def detect_batch_with_version(
    name: ModelName, version: ModelVersion, state: Started, served: Served, params: Params,
    images: ImageFiles,
) -> BatchDetectResponse:  # fmt: skip
    return await detect_many(state, served, params, images)


def model_info(served: ServedVersion, default_version: bool) -> ModelInfo:
    """What ``GET /v1/models`` says of one version."""
    meta = served.predictor.metadata
    backend = served.predictor.backend
    providers = getattr(backend, "providers", None)
    return ModelInfo(
        name=meta.model_name,
        file=served.files.path.name,
        backend=backend.name,
        precision=meta.precision,
        layout=meta.layout,
        input_size=list(meta.input_size),
        class_names=list(meta.class_names),
        fixed_batch=meta.batch,
        max_batch=served.batcher.max_batch,
        providers=list(providers) if providers else None,
        int8_report=meta.extra.get("int8"),
        model_name=served.model,
        model_version=served.label,
        default_version=default_version,
    )


def _default_model(state: ServerState) -> str | None:
    try:
        return state.registry.default_model()
    except UnknownModel:
        return None


@router.get("/models", response_model=ModelsResponse, summary="The model versions this server runs")
async def models(state: Annotated[ServerState, Depends(ready_state)]) -> ModelsResponse:
    rows = state.registry.listing()
    return ModelsResponse(models=[model_info(served, top) for served, top, _ in rows],
                          default_model=_default_model(state))  # fmt: skip


@router.get("/models/{name}", response_model=ModelsResponse,
            summary="The versions of one model this server runs")  # fmt: skip
async def model_versions(name: ModelName, state: Started) -> ModelsResponse:
    state.registry.resolve(name, None)  # 404 for an unknown model or one not loaded
    rows = state.registry.listing(name)
    return ModelsResponse(models=[model_info(served, top) for served, top, _ in rows],
                          default_model=_default_model(state))  # fmt: skip
