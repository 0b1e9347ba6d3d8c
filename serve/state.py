"""What the server holds while it runs (:class:`ServerState`, ``app.state.server``) and its
lifecycle: the models are loaded and warmed up in the app's :func:`lifespan` (never at import),
and ``ready`` turns true only after that. The models themselves, their versions, batchers and
swaps are the :class:`~serve.registry.ModelRegistry`'s.

Serving ONNX or TensorRT models imports no torch.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import cv2
from fastapi import FastAPI

from serve.http_metrics import Metrics
from serve.http_paths import Target
from serve.registry import ModelRegistry
from serve.runtime.predictor import Predictor
from serve.runtime.repository import UnknownModel
from serve.settings import ServeSettings
from serve.versions import (
    Lease,
    ServedVersion,
    StartupLoad,
    effective_max_batch,
    load_predictor,
)

__all__ = ["ServerState", "effective_max_batch", "lifespan", "load_predictor"]

logger = logging.getLogger(__name__)


@dataclass
class ServerState:
    """What the lifespan creates and the routes use (``app.state.server``)."""

    settings: ServeSettings
    metrics: Metrics = field(default_factory=Metrics)
    # loaded before the app (by the CLI): the --model file, or the repository's start-up load
    preloaded: Predictor | StartupLoad | None = None
    registry: ModelRegistry = field(init=False)
    image_pool: ThreadPoolExecutor | None = None  # decoding, letterboxing, drawing
    ready: bool = False

    def __post_init__(self) -> None:
        self.registry = ModelRegistry(self.settings, self.metrics)

    @property
    def not_started(self) -> str | None:
        """Why no request can be served now (the models not loaded yet, or the server shutting
        down), or ``None``."""
        return None if self.ready else "the model is not loaded yet"

    @property
    def not_serving(self) -> str | None:
        """Why the server is not ready, or ``None`` when it is: not started (or stopping), or
        inference failing on a serving version (its batcher's
        :attr:`~serve.runtime.batching.DynamicBatcher.health_problem`): what readiness
        reports."""
        if not self.ready:
            return self.not_started
        problem = self.registry.health_problem
        return None if problem is None else f"inference is failing: {problem}"

    @property
    def serving(self) -> bool:
        """Started, inference works on every serving version, not shutting down."""
        return self.not_serving is None

    def admit(self, target: Target) -> Lease | str | None:
        """For an inference request that has just arrived (its body not read yet): why it is
        refused now (its version's queue is full), or a lease on the version it is for with its
        place in that queue, not taken yet (the request takes it with
        :meth:`~serve.runtime.batching.Reservation.acquire` once its body has arrived, so a slow
        upload holds no place); ``None`` before the models are loaded, or for an unknown model
        or version (the route answers 503 or 404 itself)."""
        if not self.ready:
            return None
        try:
            served = self.registry.resolve(target.name, target.version)
        except UnknownModel:
            return None
        if not served.batcher.has_room:
            return self.refuse(served)
        return served.lease()

    def refuse(self, served: ServedVersion) -> str:
        """Count a refusal for a full queue of ``served``; the message the refused request
        gets."""
        self.metrics.reject(served.model, served.label, "queue_full")
        return (f"the server is at capacity ({served.batcher.pending} requests are already "
                "waiting for inference); retry shortly")  # fmt: skip


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load (or take over) the models, warm them up, start their batchers and the image pool; at
    shutdown stop taking requests, let the running batches answer, and close the models."""
    state: ServerState = app.state.server
    settings = state.settings
    preloaded, state.preloaded = state.preloaded, None  # the registry owns it from here
    await state.registry.start(preloaded)
    # Decoding and letterboxing (and drawing for format=image) run on a pool of their own with
    # ``decode_workers`` threads, shared by every model: they bound the memory of decoded
    # images, and a plain executor hands work over with less CPU than Starlette's
    # ``run_in_threadpool`` (an AnyIO capacity limiter and a thread per waiting call);
    # post-processing runs on the inference lanes. OpenCV's own thread pool is off, because
    # these threads and the lanes already fill the cores (see BENCHMARKS.md, 'Serving
    # throughput against the raw backend').
    cv2.setNumThreads(1)
    image_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="images")
    state.image_pool = image_pool
    state.ready = True
    try:
        yield
    finally:
        state.ready = False
        await state.registry.stop()
        image_pool.shutdown(wait=True)
