"""``/v1``: multipart image uploads in, JSON detections (or the annotated JPEG) out.

The route functions carry no docstrings: FastAPI would publish them as the operations'
descriptions in the OpenAPI schema, whose text is part of the API.

Errors answer ``{"error": code, "message": ..., "request_id": ...}``
(:class:`serve.http_schemas.ErrorResponse`).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Query, UploadFile
from fastapi.responses import Response

from detector.core.defaults import MAX_DET, PREDICT_CONF, PREDICT_IOU, PredictParams
from serve.deps import ParamStyle, detect_params, ready_state, require_api_key
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
from serve.state import ServerState

INFERENCE_PATHS = ("/v1/detect", "/v1/detect/batch")
"""The routes that queue images for inference (admitted or refused before their body is read)."""

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "corrupt, truncated or empty image; malformed multipart body",
        401: "missing or wrong API key (only when keys are configured)",
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


async def query_params(
    state: Annotated[ServerState, Depends(ready_state)],
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
    """The query's thresholds (:func:`serve.deps.detect_params`)."""
    given = {"conf": conf, "iou": iou, "max_det": max_det, "classes": classes}
    return detect_params(state, V1_PARAMS, {k: v for k, v in given.items() if v is not None})


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


@router.post(
    "/detect",
    response_model=DetectResponse,
    summary="Detect objects in one image",
    responses={200: {"content": {"image/jpeg": {}},
                     "description": "JSON detections, or the annotated JPEG with format=image"}},
)  # fmt: skip
async def detect(
    state: Annotated[ServerState, Depends(ready_state)],
    params: Annotated[PredictParams, Depends(query_params)],
    image: Annotated[UploadFile, File(description="a JPEG, PNG, BMP or WebP image")],
    format: Annotated[Literal["json", "image"], Query(
        description="json: detections; image: the annotated image as JPEG")] = "json",
) -> Any:  # fmt: skip
    started = time.perf_counter()
    [(item, result)] = await run_images(state, [image], params, keep_images=format == "image")
    _, boxes, scores, classes = result.finished
    assert state.predictor is not None
    if format == "image":
        names = state.predictor.metadata.class_names
        jpeg = await in_image_pool(state, annotate, item, boxes, scores, classes, names)
        return Response(jpeg, media_type="image/jpeg")
    single = image_result(item, result, started)
    return DetectResponse(**single.model_dump(), model=state.predictor.metadata.model_name)


@router.post("/detect/batch", response_model=BatchDetectResponse,
             summary="Detect objects in several images")  # fmt: skip
async def detect_batch(
    state: Annotated[ServerState, Depends(ready_state)],
    params: Annotated[PredictParams, Depends(query_params)],
    images: Annotated[list[UploadFile], File(description="JPEG, PNG, BMP or WebP images")],
) -> BatchDetectResponse:
    started = time.perf_counter()
    if len(images) > state.settings.max_images:
        raise TooManyImages(f"{len(images)} images is more than the limit of "
                            f"{state.settings.max_images} per request")  # fmt: skip
    finished = await run_images(state, images, params)
    assert state.predictor is not None
    return BatchDetectResponse(
        results=[image_result(item, result, started) for item, result in finished],
        model=state.predictor.metadata.model_name,
        total_ms=round((time.perf_counter() - started) * 1000, 3),
    )


@router.get("/models", response_model=ModelsResponse, summary="The model this server runs")
async def models(state: Annotated[ServerState, Depends(ready_state)]) -> ModelsResponse:
    assert state.predictor is not None and state.batcher is not None
    meta = state.predictor.metadata
    backend = state.predictor.backend
    providers = getattr(backend, "providers", None)
    return ModelsResponse(
        models=[
            ModelInfo(
                name=meta.model_name,
                file=state.settings.model.name,
                backend=backend.name,
                precision=meta.precision,
                layout=meta.layout,
                input_size=list(meta.input_size),
                class_names=list(meta.class_names),
                fixed_batch=meta.batch,
                max_batch=state.batcher.max_batch,
                providers=list(providers) if providers else None,
                int8_report=meta.extra.get("int8"),
            )
        ]
    )
