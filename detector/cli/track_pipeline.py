"""``detector track``'s stages, overlapped: taking and pre-processing the next step's frames, the
network run, and tracking and writing the step before, each on a thread of its own.

The model runs through :class:`serve.runtime.predictor.Predictor`, split into the three calls
that :meth:`~serve.runtime.predictor.Predictor.predict` makes one after the other
(:meth:`~serve.runtime.predictor.Predictor.prepare`, ``run`` then ``postprocess``), so the
detections are those of ``predict``, ``serve`` and ``bench``; only *when* each part runs
differs. While the network runs on step ``k`` (ONNX Runtime and OpenCV release the GIL), the
collector thread takes and letterboxes the frames of step ``k + 1`` and the caller's thread
tracks, annotates and writes step ``k - 1``; the collector takes a step's frames only once the
network has taken the step before, so a live frame waits for one network run at most. Steps go
from stage to stage through queues of one, in order, so each source's frames reach its tracker
in order, as in a loop that does everything in series.
"""

from __future__ import annotations

import argparse
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STOP_POLL_S = 0.1  # how often a stage blocked on a queue checks whether the run is stopping
JOIN_S = 60.0  # how long closing waits for a stage to finish what it is doing


@dataclass
class Model:
    """A model file opened for tracking: the predictor, its thresholds, class names and the
    most frames per network run."""

    predictor: Any  # serve.runtime.predictor.Predictor
    conf: float
    iou: float
    max_det: int
    class_names: list[str]
    batch: int

    def prepare(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[float]]:
        """``[H, W, 3]`` BGR images -> (``[B, 3, h, w]`` float32 batch, their ratios)."""
        return self.predictor.prepare(images)

    def detect(self, batch: np.ndarray, ratios: list[float], images: list[np.ndarray]) -> list[Any]:
        """The network run over a prepared ``batch`` and its post-processing: one
        :class:`~serve.runtime.predictor.Detections` per image, boxes in its own pixels."""
        from detector.core.preprocess import boxes_to_original
        from serve.runtime.predictor import Detections

        outputs = self.predictor.run(batch)
        raw = self.predictor.postprocess(outputs, self.conf, self.iou, self.max_det)
        return [
            Detections(boxes_to_original(r.boxes, ratio, image.shape[:2]), r.scores, r.classes)
            for r, ratio, image in zip(raw, ratios, images)
        ]

    def close(self) -> None:
        self.predictor.close()


def open_model(args: argparse.Namespace) -> Model:
    """The model of ``--model`` (``--backend``, ``--device``, ``--imgsz``, ``--conf``,
    ``--iou``, ``--max-det``, ``--batch``), chosen as ``detector predict`` chooses it."""
    from detector.cli.predict import open_predictor
    from detector.core.defaults import PredictParams

    params = PredictParams(args.conf, args.iou, args.max_det)  # checked before the model loads
    predictor, batch = open_predictor(args)
    class_names = list(predictor.metadata.class_names)
    return Model(predictor, params.conf, params.iou, params.max_det, class_names, batch)


@dataclass
class Step:
    """One step on its way through the stages.

    Attributes:
        frames: ``(source run, frame, capture time)`` of each frame taken.
        ended: the source runs that ended while this step was taken (reported after it).
        batch: the frames letterboxed, ``[B, 3, h, w]`` float32 (after the collector).
        ratios: each frame's letterbox ratio.
        found: each frame's detections (after the network).
    """

    frames: list[tuple[Any, Any, float]]
    ended: list[Any] = field(default_factory=list)
    batch: np.ndarray | None = None
    ratios: list[float] = field(default_factory=list)
    found: list[Any] = field(default_factory=list)


class _Failed:
    """A stage's exception, passed down to be raised in the caller's thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()  # every source has ended


class Pipeline:
    """The collector and network stages on threads of their own; iterate for the steps, in
    order, with their detections; :meth:`close` stops both (also as a context manager).

    Args:
        take: the next :class:`Step` (``None`` when every source has ended; one with neither
            frames nor ended sources is asked again); called on the collector thread, over and
            over, and must not block for long (the run's stop is checked between calls).
        model: the model (``prepare`` on the collector thread, ``detect`` on the network one).
    """

    def __init__(self, take: Callable[[], Step | None], model: Model) -> None:
        self.take, self.model = take, model
        self.stop = threading.Event()
        self.prepared: queue.Queue = queue.Queue(maxsize=1)
        self.detected: queue.Queue = queue.Queue(maxsize=1)
        # the collector takes the next step's frames only once the network has taken the last
        # prepared step: a live frame waits for one network run at most, not two
        self.slot = threading.Semaphore(1)
        self.threads = [
            threading.Thread(target=self._collect, name="track collector", daemon=True),
            threading.Thread(target=self._network, name="track network", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _put(self, into: queue.Queue, item: object) -> bool:
        """Put ``item`` when there is room; False when the run stopped first."""
        while not self.stop.is_set():
            try:
                into.put(item, timeout=STOP_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, source: queue.Queue) -> object | None:
        """The next item; ``None`` when the run stopped first."""
        while not self.stop.is_set():
            try:
                return source.get(timeout=STOP_POLL_S)
            except queue.Empty:
                continue
        return None

    def _collect(self) -> None:
        try:
            while not self.stop.is_set():
                if not self.slot.acquire(timeout=STOP_POLL_S):
                    continue
                step = self.take()
                if step is None:
                    self._put(self.prepared, _END)
                    return
                if not step.frames and not step.ended:
                    self.slot.release()
                    continue  # nothing came this time (every source quiet): ask again
                if step.frames:
                    images = [frame.image for _, frame, _ in step.frames]
                    step.batch, step.ratios = self.model.prepare(images)
                if not self._put(self.prepared, step):
                    return
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            self._put(self.prepared, _Failed(exc))

    def _network(self) -> None:
        try:
            while (item := self._get(self.prepared)) is not None:
                self.slot.release()  # the collector may take the next step's frames
                if isinstance(item, Step) and item.frames:
                    images = [frame.image for _, frame, _ in item.frames]
                    item.found = self.model.detect(item.batch, item.ratios, images)
                    item.batch = None  # the tensor is not needed any more
                if not self._put(self.detected, item) or not isinstance(item, Step):
                    return
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            self._put(self.detected, _Failed(exc))

    def __iter__(self) -> Iterator[Step]:
        while True:
            try:
                item = self.detected.get(timeout=STOP_POLL_S)
            except queue.Empty:
                if not any(thread.is_alive() for thread in self.threads) and self.detected.empty():
                    raise RuntimeError("the collector and network stages ended early") from None
                continue
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def close(self) -> None:
        """Stop both stages after what each is doing (a frame being read, a network run) and
        wait for them; steps not yet written are dropped."""
        self.stop.set()
        for thread in self.threads:
            thread.join(JOIN_S)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
