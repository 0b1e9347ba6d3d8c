"""The image pipeline behind both APIs: uploaded bytes sniffed, size-checked from the header,
decoded and letterboxed (on the server's image pool) -> the dynamic batcher (``lanes``
inference threads) -> post-processing with the request's own thresholds, on the same inference
thread right after the batch -> boxes in the uploaded image's pixels.

The pieces are the runtime's own (``Predictor.prepare_one`` / ``run`` / ``postprocess``), so the
server answers exactly what ``Predictor.predict`` does for the same image.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import cv2
import numpy as np

from detector.core.defaults import PredictParams
from detector.core.preprocess import boxes_to_original
from detector.core.visualize import draw_boxes
from serve.errors import DeadlinePassed, NotReady, Overloaded
from serve.http_schemas import Detection
from serve.runtime.batching import (
    BatcherClosed,
    BatchResult,
    DeadlineExceeded,
    InferenceFailed,
    QueueFull,
)
from serve.runtime.errors import ServeError
from serve.runtime.images import decode_image
from serve.runtime.predictor import Predictor
from serve.state import ServerState
from serve.versions import ServedVersion

T = TypeVar("T")
JPEG_QUALITY = 90

Finished = tuple[list[Detection], np.ndarray, np.ndarray, np.ndarray]
"""What :func:`finish` answers for one image: its detections as JSON models, and its boxes (in
its own pixels), scores and class ids as arrays."""


class Upload(Protocol):
    """One uploaded image: a ``fastapi.UploadFile``, or a v2 request's ``IMAGE`` element."""

    filename: str | None

    async def read(self) -> bytes:
        """The file's bytes."""
        ...


@dataclass
class Prepared:
    """One upload, decoded and letterboxed."""

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
    predictor: Predictor, prepared: Prepared, params: PredictParams, outputs: dict[str, np.ndarray]
) -> Finished:
    """One image's outputs (its rows, batch dimension 1) -> detections in its own pixels (the
    steps of ``Predictor.predict``). Runs on the inference lane right after the batch."""
    raw = predictor.postprocess(
        outputs, conf=params.conf, iou=params.iou, max_det=params.max_det, classes=params.classes
    )[0]
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


def upload_names(uploads: Sequence[Upload]) -> list[str]:
    """How to call each upload in error messages."""
    if len(uploads) == 1:
        return [uploads[0].filename or "image"]
    return [f"images[{i}] ({u.filename or 'unnamed'})" for i, u in enumerate(uploads)]


async def run_images(
    state: ServerState, served: ServedVersion, uploads: Sequence[Upload], params: PredictParams,
    keep_images: bool = False,
) -> list[tuple[Prepared, BatchResult]]:  # fmt: skip
    """Decode, batch, infer and post-process the uploads of one request on the model version
    ``served`` (its predictor and its own batcher): per upload, what was
    prepared and its batch result, whose ``finished`` is :func:`finish`'s answer. At most
    ``settings.decode_workers`` images are decoded at once across all requests (the image
    pool's threads), which bounds the memory that decoded images can take (each up to
    ``max_pixels`` x 3 bytes).

    The request's deadline (``settings.timeout_s``) counts from here: past it, its images still
    waiting for a decoder are not decoded, and those waiting for a batch are dropped; so are
    they when the request's task is cancelled (its client went away).

    Raises:
        Overloaded, DeadlinePassed, NotReady: the batcher's queue is full, the request's
            deadline passed, the batcher stopped.
        ServeError: 500 ``inference_failed``, the network's run raised for its batch.
    """
    predictor, batcher, settings = served.predictor, served.batcher, state.settings
    labels = (served.model, served.label)
    deadline = asyncio.get_running_loop().time() + settings.timeout_s
    payloads = [await upload.read() for upload in uploads]
    decodes = [
        asyncio.ensure_future(in_image_pool(state, prepare_upload, predictor, data,
                                            settings.max_pixels, name, keep_images))
        for data, name in zip(payloads, upload_names(uploads))
    ]  # fmt: skip
    del payloads
    try:
        async with asyncio.timeout_at(deadline):
            prepared = await asyncio.gather(*decodes)
    except TimeoutError as exc:
        state.metrics.reject(*labels, "deadline")
        raise DeadlinePassed(
            f"no answer within the request deadline of {settings.timeout_s:g} s (still decoding)"
        ) from exc
    finally:
        # a bad image, the deadline, or the client gone (the task cancelled): the request's
        # other images still waiting for a decoder are never decoded
        for decode in decodes:
            decode.cancel()
    try:
        results = await batcher.submit_many(
            [p.tensor for p in prepared], deadline,
            [partial(finish, predictor, item, params) for item in prepared],
        )  # fmt: skip
    except QueueFull as exc:
        state.metrics.reject(*labels, "queue_full")
        raise Overloaded(f"the server is at capacity ({exc}); retry shortly") from exc
    except DeadlineExceeded as exc:
        state.metrics.reject(*labels, "deadline")
        raise DeadlinePassed(
            f"no answer within the request deadline of {settings.timeout_s:g} s ({exc})"
        ) from exc
    except BatcherClosed as exc:
        raise NotReady(str(exc)) from exc
    except InferenceFailed as exc:  # the batcher logged it; answered 500 without a traceback
        raise ServeError(f"{exc}; the server logged the details", status=500,
                         code="inference_failed") from exc  # fmt: skip
    return list(zip(prepared, results))


def annotate(item: Prepared, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
             names: Sequence[str]) -> bytes:  # fmt: skip
    """The upload with its boxes drawn, as JPEG bytes (runs on the image pool)."""
    assert item.image is not None
    drawn = draw_boxes(item.image, boxes, classes.tolist(), names, scores.tolist())
    ok, encoded = cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR image
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()
