"""The HTTP server: ``create_app(settings)`` builds the FastAPI app.

The model is loaded and warmed up in the app's lifespan (never at import); ``/readyz`` answers
200 only after that. Requests flow: body-size limit -> multipart parse -> image sniffed, size
checked from its header, decoded and letterboxed (the image pool's threads) -> the dynamic
batcher (``lanes`` inference threads) -> post-processing with the request's own
``conf``/``iou``/``max_det``/``classes``, on the same inference thread right after the batch ->
boxes in the uploaded image's pixels. The pieces
are the runtime's own (``Predictor.prepare`` / ``run`` / ``postprocess``), so the server answers
exactly what ``Predictor.predict`` does for the same image.

Serving ONNX or TensorRT models imports no torch.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

import cv2
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from detector.core.preprocess import boxes_to_original
from detector.core.visualize import draw_boxes
from serve.http_metrics import Metrics
from serve.http_middleware import (
    AdmissionMiddleware,
    BodyLimitMiddleware,
    RequestContextMiddleware,
    error_body,
)
from serve.http_schemas import (
    BatchDetectResponse,
    Detection,
    DetectResponse,
    ErrorResponse,
    ImageResult,
    ImageSize,
    ModelInfo,
    ModelsResponse,
    Status,
    Timings,
)
from serve.runtime.batching import (
    BatcherClosed,
    BatchResult,
    DeadlineExceeded,
    DynamicBatcher,
    QueueFull,
    Reservation,
)
from serve.runtime.images import ImageError, decode_image
from serve.runtime.predictor import Predictor, UnknownClassError, backend_for, resolve_classes
from serve.settings import ServeSettings, SettingsError, check_lanes, default_lanes
from serve.web import router as web_router

logger = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_AFTER_S = 1
DEFAULT_MAX_DET = 300
INFERENCE_PATHS = ("/v1/detect", "/v1/detect/batch")
JPEG_QUALITY = 90


class ApiError(Exception):
    """An error answered as ``{"error": code, "message": message}`` with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


@dataclass
class ServerState:
    """What the lifespan creates and the routes use (``app.state.server``)."""

    settings: ServeSettings
    metrics: Metrics = field(default_factory=Metrics)
    predictor: Predictor | None = None
    preloaded: Predictor | None = None  # loaded before the app (by the CLI), else by lifespan
    batcher: DynamicBatcher | None = None
    image_pool: ThreadPoolExecutor | None = None  # decoding, letterboxing, drawing
    ready: bool = False

    def admit(self) -> Reservation | str | None:
        """A place in the queue held for a new inference request, or why it is refused now
        (queue full); ``None`` before the model is loaded (the route answers 503 itself)."""
        batcher = self.batcher
        if batcher is None:
            return None
        reservation = batcher.reserve()
        if reservation is None:
            self.metrics.rejected.labels("queue_full").inc()
            return (f"the server is at capacity ({batcher.pending} requests are already waiting "
                    "for inference); retry shortly")  # fmt: skip
        return reservation


# ---------------------------------------------------------------------------- model lifecycle


def load_predictor(settings: ServeSettings) -> Predictor:
    """Open the model file with the options its backend takes (``lanes > 1`` with a backend
    that runs one batch at a time is refused before the model is read)."""
    backend = settings.backend or backend_for(settings.model)
    check_lanes(backend, settings.lanes)
    options: dict[str, Any] = {}
    if backend == "onnxruntime":
        options = {"providers": settings.providers or None, "threads": settings.threads}
    elif backend == "torch":
        options = {"device": settings.device, "threads": settings.threads}
    elif backend == "tensorrt":
        options = {"device": settings.device}
    return Predictor.from_path(settings.model, backend, **options)


def effective_max_batch(predictor: Predictor, settings: ServeSettings) -> int:
    """A fixed-batch model runs its own batch; a dynamic one up to ``settings.max_batch``, and
    no more than a TensorRT engine's optimisation profile allows."""
    fixed = predictor.metadata.batch
    if fixed is not None:
        return fixed
    largest = settings.max_batch
    profile_max = getattr(predictor.backend, "max_shape", None)
    if profile_max:
        largest = min(largest, int(profile_max[0]))
    return largest


def warm_up(predictor: Predictor, max_batch: int) -> None:
    """Run the network at batch 1 and at the largest batch, so the first requests do not pay
    for lazy allocations and kernel selection."""
    height, width = predictor.metadata.input_size
    for size in sorted({1, max_batch}):
        outputs = predictor.run(np.full((size, 3, height, width), 114, np.float32))
        predictor.postprocess(outputs)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServerState = app.state.server
    settings = state.settings
    predictor = state.preloaded
    state.preloaded = None  # the lifespan owns it from here and closes it at shutdown
    if predictor is None:
        predictor = await run_in_threadpool(load_predictor, settings)  # checks the lanes first
    else:
        try:
            check_lanes(predictor.backend.name, settings.lanes)
        except SettingsError:
            predictor.close()
            raise
    max_batch = effective_max_batch(predictor, settings)
    if settings.warmup:
        await run_in_threadpool(warm_up, predictor, max_batch)
    lanes = settings.lanes or default_lanes(
        predictor.backend.name, getattr(predictor.backend, "providers", None)
    )
    batcher = DynamicBatcher(
        predictor.run,
        max_batch=max_batch,
        max_delay_s=settings.max_delay_ms / 1000,
        queue_size=settings.queue_size,
        observer=state.metrics.observe_batch,
        lanes=lanes,
    )
    await batcher.start()
    state.metrics.track_queue(lambda: batcher.depth)
    # Decoding and letterboxing (and drawing for format=image) run on a pool of their own with
    # ``decode_workers`` threads: they bound the memory of decoded images, and a plain executor
    # hands work over with less CPU than Starlette's ``run_in_threadpool`` (an AnyIO capacity
    # limiter and a thread per waiting call); post-processing runs on the inference lanes.
    # OpenCV's own thread pool is off, because these threads and the lanes already fill the
    # cores (benchmarks/serve_throughput.md, session 6).
    cv2.setNumThreads(1)
    image_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="images")
    state.image_pool = image_pool
    state.predictor, state.batcher, state.ready = predictor, batcher, True
    logger.info(
        "serving %s (%s, %s) max batch %d, %d lane(s)", settings.model, predictor.backend.name,
        predictor.metadata.precision, max_batch, lanes,
    )  # fmt: skip
    try:
        yield
    finally:
        state.ready = False
        await batcher.stop()
        image_pool.shutdown(wait=True)
        predictor.close()


# ---------------------------------------------------------------------------- dependencies


# The dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool,
# a hand-off per dependency and request (a sixth of the server's Python time at concurrency 16)
# for work that never blocks.
async def server_state(request: Request) -> ServerState:
    return request.app.state.server


async def ready_state(state: Annotated[ServerState, Depends(server_state)]) -> ServerState:
    if not state.ready or state.predictor is None or state.batcher is None:
        raise ApiError(503, "not_ready", "the model is not loaded yet",
                       {"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
    return state


_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer API_KEY")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")


async def require_api_key(
    state: Annotated[ServerState, Depends(server_state)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key_header)],
) -> None:
    """With API keys configured, one of them must come as a bearer token or ``X-API-Key``;
    compared in constant time against every key."""
    keys = state.settings.api_keys
    if not keys:
        return
    given = (bearer.credentials if bearer else None) or header_key
    if not given:
        raise ApiError(401, "unauthorized", "an API key is required (Authorization: Bearer "
                       "KEY or X-API-Key: KEY)", {"WWW-Authenticate": "Bearer"})  # fmt: skip
    given_bytes = given.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given_bytes, key.get_secret_value().encode())
    if not matched:
        raise ApiError(401, "unauthorized", "the API key is not valid",
                       {"WWW-Authenticate": "Bearer"})  # fmt: skip


@dataclass(frozen=True)
class DetectParams:
    conf: float
    iou: float
    max_det: int
    classes: list[int] | None


async def detect_params(
    state: Annotated[ServerState, Depends(ready_state)],
    conf: Annotated[float, Query(ge=0, le=1, allow_inf_nan=False,
                                 description="score threshold")] = 0.25,
    iou: Annotated[float, Query(ge=0, le=1, allow_inf_nan=False,
                                description="NMS IoU threshold")] = 0.45,
    max_det: Annotated[int | None, Query(
        ge=1, description=f"most detections per image (default {DEFAULT_MAX_DET}, at most the "
        "server's max_det_limit)")] = None,
    classes: Annotated[list[str] | None, Query(
        description="keep only these classes: names or ids, repeated or comma-separated")] = None,
) -> DetectParams:  # fmt: skip
    limit = state.settings.max_det_limit
    if max_det is None:
        max_det = min(DEFAULT_MAX_DET, limit)
    elif max_det > limit:
        raise ApiError(422, "invalid_parameter", f"max_det: {max_det} is above the limit {limit}")
    assert state.predictor is not None
    names = state.predictor.metadata.class_names
    try:
        wanted = resolve_classes(classes, names)
    except UnknownClassError as exc:
        raise ApiError(422, "invalid_parameter", f"classes: {exc}") from exc
    return DetectParams(conf, iou, max_det, wanted)


# ---------------------------------------------------------------------------- the work


@dataclass
class Prepared:
    shape: tuple[int, int]  # (height, width) of the decoded upload
    tensor: np.ndarray  # [3, h, w] float32, letterboxed
    ratio: float
    decode_s: float
    image: np.ndarray | None = None  # [H, W, 3] BGR uint8, kept only to draw on


def prepare_upload(
    predictor: Predictor, data: bytes, max_pixels: int, name: str, keep_image: bool = False
) -> Prepared:
    """Bytes -> network input (runs on a worker thread). The decoded image (up to
    ``max_pixels`` x 3 bytes) is dropped once letterboxed unless ``keep_image``."""
    start = time.perf_counter()
    image = decode_image(data, max_pixels, name)
    tensor, ratio = predictor.prepare_one(image)
    return Prepared(image.shape[:2], tensor, ratio, time.perf_counter() - start,
                    image if keep_image else None)  # fmt: skip


def finish(
    predictor: Predictor, prepared: Prepared, params: DetectParams, outputs: dict[str, np.ndarray]
) -> tuple[list[Detection], np.ndarray, np.ndarray, np.ndarray]:
    """One image's outputs (its rows, batch dimension 1) -> detections in its own pixels (the
    steps of ``Predictor.predict``). Runs on the inference lane right after the batch."""
    raw = predictor.postprocess(outputs, params.conf, params.iou, params.max_det, params.classes)[0]
    boxes = boxes_to_original(raw.boxes, prepared.ratio, prepared.shape)
    names = predictor.metadata.class_names
    detections = [
        Detection(
            box=[round(float(v), 2) for v in box],
            score=round(float(score), 5),
            class_id=int(label),
            class_name=names[int(label)] if 0 <= label < len(names) else str(int(label)),
        )
        for box, score, label in zip(boxes, raw.scores, raw.classes)
    ]
    return detections, boxes, raw.scores, raw.classes


async def in_image_pool(state: ServerState, work: Callable[..., T], *args: Any) -> T:
    """Run ``work(*args)`` on the server's image pool (off the event loop)."""
    assert state.image_pool is not None
    return await asyncio.get_running_loop().run_in_executor(state.image_pool, work, *args)


async def run_images(
    state: ServerState, uploads: Sequence[UploadFile], params: DetectParams,
    keep_images: bool = False,
) -> list[tuple[Prepared, BatchResult]]:  # fmt: skip
    """Decode, batch, infer and post-process the uploads of one request: per upload, what was
    prepared and its batch result, whose ``finished`` is :func:`finish`'s answer. At most
    ``settings.decode_workers`` images are decoded at once across all requests (the image
    pool's threads), which bounds the memory that decoded images can take (each up to
    ``max_pixels`` x 3 bytes)."""
    predictor, batcher, settings = state.predictor, state.batcher, state.settings
    assert predictor is not None and batcher is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.timeout_s
    payloads = [await upload.read() for upload in uploads]
    names = (
        [upload.filename or "image" for upload in uploads]
        if len(uploads) == 1
        else [f"images[{i}] ({u.filename or 'unnamed'})" for i, u in enumerate(uploads)]
    )
    prepared = await asyncio.gather(
        *(in_image_pool(state, prepare_upload, predictor, data, settings.max_pixels, name,
                        keep_images) for data, name in zip(payloads, names))
    )  # fmt: skip
    try:
        results = await batcher.submit_many(
            [p.tensor for p in prepared], deadline,
            [partial(finish, predictor, item, params) for item in prepared],
        )  # fmt: skip
    except QueueFull as exc:
        state.metrics.rejected.labels("queue_full").inc()
        raise ApiError(503, "overloaded", f"the server is at capacity ({exc}); retry shortly",
                       {"Retry-After": str(RETRY_AFTER_S)}) from exc  # fmt: skip
    except DeadlineExceeded as exc:
        state.metrics.rejected.labels("deadline").inc()
        raise ApiError(504, "deadline_exceeded", f"no answer within the request deadline of "
                       f"{settings.timeout_s:g} s ({exc})") from exc  # fmt: skip
    except BatcherClosed as exc:
        raise ApiError(503, "not_ready", str(exc), {"Retry-After": str(RETRY_AFTER_S)}) from exc
    return list(zip(prepared, results))


def image_result(item: Prepared, result: BatchResult, started: float) -> ImageResult:
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


def annotate(item: Prepared, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
             names: Sequence[str]) -> bytes:  # fmt: skip
    """The upload with its boxes drawn, as JPEG bytes."""
    assert item.image is not None
    drawn = draw_boxes(item.image, boxes, classes.tolist(), names, scores.tolist())
    ok, encoded = cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR image
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()


# ---------------------------------------------------------------------------- routes

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

v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=ERRORS)


@v1.post(
    "/detect",
    response_model=DetectResponse,
    summary="Detect objects in one image",
    responses={200: {"content": {"image/jpeg": {}},
                     "description": "JSON detections, or the annotated JPEG with format=image"}},
)  # fmt: skip
async def detect(
    state: Annotated[ServerState, Depends(ready_state)],
    params: Annotated[DetectParams, Depends(detect_params)],
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


@v1.post("/detect/batch", response_model=BatchDetectResponse,
         summary="Detect objects in several images")  # fmt: skip
async def detect_batch(
    state: Annotated[ServerState, Depends(ready_state)],
    params: Annotated[DetectParams, Depends(detect_params)],
    images: Annotated[list[UploadFile], File(description="JPEG, PNG, BMP or WebP images")],
) -> BatchDetectResponse:
    started = time.perf_counter()
    if len(images) > state.settings.max_images:
        raise ApiError(413, "too_many_images",
                       f"{len(images)} images is more than the limit of "
                       f"{state.settings.max_images} per request")  # fmt: skip
    finished = await run_images(state, images, params)
    assert state.predictor is not None
    return BatchDetectResponse(
        results=[image_result(item, result, started) for item, result in finished],
        model=state.predictor.metadata.model_name,
        total_ms=round((time.perf_counter() - started) * 1000, 3),
    )


@v1.get("/models", response_model=ModelsResponse, summary="The model this server runs")
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


ops = APIRouter()


@ops.get("/healthz", response_model=Status, summary="Liveness: the process answers")
async def healthz() -> Status:
    return Status(status="ok")


@ops.get("/readyz", response_model=Status, summary="Readiness: model loaded and warmed up",
         responses={503: {"model": ErrorResponse, "description": "not ready yet"}})  # fmt: skip
async def readyz(state: Annotated[ServerState, Depends(ready_state)]) -> Status:
    return Status(status="ready")


@ops.get("/metrics", summary="Prometheus metrics",
         responses={200: {"content": {"text/plain": {}}}})  # fmt: skip
async def metrics(state: Annotated[ServerState, Depends(server_state)]) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


# ---------------------------------------------------------------------------- errors


def _request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def _json_error(request: Request, status: int, code: str, message: str,
                headers: dict[str, str] | None = None) -> Response:  # fmt: skip
    body = error_body(code, message, _request_id(request), request.url.path)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
              413: "body_too_large", 415: "unsupported_media_type"}  # fmt: skip


def install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, answers ``ErrorResponse`` JSON."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return _json_error(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, exc: ImageError) -> Response:
        return _json_error(request, exc.status, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
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
        return _json_error(request, 422, code, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = str(exc.detail)
        if exc.status_code == 400 and ("multipart" in message or "parsing the body" in message):
            code = "invalid_body"
            message += (" The multipart/form-data body could not be parsed: does the boundary "
                        "in its Content-Type header match the body?")  # fmt: skip
        return _json_error(request, exc.status_code, code, message, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return JSONResponse(
            {"error": "internal_error", "message": f"internal error ({type(exc).__name__})",
             "request_id": _request_id(request)}, status_code=500)  # fmt: skip


# ---------------------------------------------------------------------------- the factory


def create_app(settings: ServeSettings, predictor: Predictor | None = None) -> FastAPI:
    """The server for ``settings.model``; the model is loaded when the app's lifespan starts
    (``uvicorn``, or ``with TestClient(app)``), and warmed up there before ``/readyz`` says
    ready. ``predictor``: an already loaded model (the CLI loads it first, so that a bad file is
    a one-line error rather than a failed startup); the lifespan still warms it up."""
    app = FastAPI(
        title="detector",
        summary="Object detection over HTTP (YOLOX-style models: ONNX Runtime, TensorRT, PyTorch)",
        version="1",
        lifespan=lifespan,
    )
    state = ServerState(settings, preloaded=predictor)
    app.state.server = state
    app.include_router(v1)
    app.include_router(ops)
    from serve.v2 import v2_router  # the KServe v2 protocol; it builds on this module

    app.include_router(v2_router(settings.name))
    app.include_router(web_router)
    install_error_handlers(app)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"], allow_headers=["*"])  # fmt: skip
    # the last added is the outermost: request ids -> body limit -> admission -> routes
    v2_infer = (f"/v2/models/{settings.name}/infer", f"/v2/models/{settings.name}/versions/1/infer")
    app.add_middleware(AdmissionMiddleware, paths=INFERENCE_PATHS + v2_infer, admit=state.admit,
                       retry_after_s=RETRY_AFTER_S)  # fmt: skip
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    paths = frozenset(app.openapi()["paths"])  # the routes; FastAPI 0.165 nests included ones
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics, paths=paths)  # outermost
    return app


def app_from_env() -> FastAPI:
    """The app configured by ``DETECTOR_*`` variables alone, for process managers that import
    an app factory: ``DETECTOR_MODEL=m.onnx uvicorn --factory serve.app:app_from_env``."""
    from serve.settings import load_settings

    return create_app(load_settings())
