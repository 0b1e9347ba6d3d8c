"""What the server holds while it runs (:class:`ServerState`, ``app.state.server``) and its
lifecycle: the model is loaded and warmed up in the app's :func:`lifespan` (never at import),
and ``ready`` turns true only after that.

Serving ONNX or TensorRT models imports no torch.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from serve.http_metrics import Metrics
from serve.runtime.batching import DynamicBatcher, Reservation
from serve.runtime.predictor import Predictor, backend_for
from serve.settings import ServeSettings, SettingsError, check_lanes, default_lanes

logger = logging.getLogger(__name__)


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

    @property
    def not_serving(self) -> str | None:
        """Why the server cannot answer inference requests now, or ``None`` when it can: the
        model is not loaded and warmed up yet, the server is shutting down, or inference is
        failing (the batcher's :attr:`~serve.runtime.batching.DynamicBatcher.health_problem`)."""
        if not self.ready or self.predictor is None or self.batcher is None:
            return "the model is not loaded yet"
        problem = self.batcher.health_problem
        return None if problem is None else f"inference is failing: {problem}"

    @property
    def serving(self) -> bool:
        """The model is loaded and warmed up, inference works (its last batches did not all
        fail), and the server is not shutting down: what readiness reports."""
        return self.not_serving is None

    def admit(self) -> Reservation | str | None:
        """For an inference request that has just arrived (its body not read yet): why it is
        refused now (queue full), or its place in the queue, not taken yet (the request takes it
        with :meth:`~serve.runtime.batching.Reservation.acquire` once its body has arrived, so
        a slow upload holds no place); ``None`` before the model is loaded (the route answers
        503 itself)."""
        batcher = self.batcher
        if batcher is None:
            return None
        if not batcher.has_room:
            return self.refuse()
        return batcher.reservation()

    def refuse(self) -> str:
        """Count a refusal for a full queue; the message a refused request gets."""
        self.metrics.rejected.labels("queue_full").inc()
        pending = self.batcher.pending if self.batcher is not None else 0
        return (f"the server is at capacity ({pending} requests are already waiting for "
                "inference); retry shortly")  # fmt: skip


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
        options = {"device": settings.device, "allow_host_code": settings.allow_engine_host_code}
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


async def _open_predictor(state: ServerState) -> Predictor:
    """The preloaded model (its lanes checked), else the model file loaded now."""
    predictor = state.preloaded
    state.preloaded = None  # the lifespan owns it from here and closes it at shutdown
    if predictor is None:
        return await run_in_threadpool(load_predictor, state.settings)  # checks the lanes first
    try:
        check_lanes(predictor.backend.name, state.settings.lanes)
    except SettingsError:
        predictor.close()
        raise
    return predictor


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load (or take over) the model, warm it up, start the batcher and the image pool; at
    shutdown stop taking requests, let the running batches answer, and close the model."""
    state: ServerState = app.state.server
    settings = state.settings
    predictor = await _open_predictor(state)
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
        unhealthy_after=settings.unhealthy_after,
        probe_interval_s=settings.probe_interval_s,
        # a batch running this long has wedged its lane (a hung driver call, a deadlock)
        stuck_after_s=max(3 * settings.timeout_s, 30.0),
    )
    await batcher.start()
    state.metrics.track_queue(lambda: batcher.depth)
    # Decoding and letterboxing (and drawing for format=image) run on a pool of their own with
    # ``decode_workers`` threads: they bound the memory of decoded images, and a plain executor
    # hands work over with less CPU than Starlette's ``run_in_threadpool`` (an AnyIO capacity
    # limiter and a thread per waiting call); post-processing runs on the inference lanes.
    # OpenCV's own thread pool is off, because these threads and the lanes already fill the
    # cores (see BENCHMARKS.md, 'Serving throughput against the raw backend').
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
