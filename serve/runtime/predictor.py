"""The serving runtime: load a model file, run images through it, get detections.

``Predictor`` is the one path from images to detections for every backend: pre-processing is
``detector.core.preprocess.preprocess`` (the function training-time evaluation uses),
post-processing is :mod:`serve.runtime.postprocess`, boxes go back to the original image with
``detector.core.preprocess.boxes_to_original``. ``detector predict`` and ``bench``, export
verification and the server all run through it, so what was verified or benchmarked is exactly
what serves. The threshold defaults are :mod:`detector.core.defaults`. Nothing here imports
torch for ONNX or TensorRT models.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.core.defaults import MAX_DET, PREDICT_CONF, PREDICT_IOU
from detector.core.preprocess import boxes_to_original, preprocess
from serve.runtime.backends.base import Backend
from serve.runtime.metadata import NMS_OUTPUTS, RAW_OUTPUT, ModelMetadata
from serve.runtime.postprocess import RawDetections, postprocess_nms, postprocess_raw

# backend name -> (module, class); modules are imported only when asked for
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("serve.runtime.backends.onnxruntime", "OnnxRuntimeBackend"),
    "tensorrt": ("serve.runtime.backends.tensorrt", "TensorRTBackend"),
    "torch": ("serve.runtime.backends.torch", "TorchBackend"),
}
SUFFIXES = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".pt": "torch",
            ".pth": "torch"}  # fmt: skip


@dataclass
class Detections:
    """One image's detections, in ORIGINAL image pixels, sorted by descending score."""

    boxes: np.ndarray  # [K, 4] float32 xyxy
    scores: np.ndarray  # [K] float32
    classes: np.ndarray  # [K] int64


class UnknownClassError(ValueError):
    """A class filter names a class the model does not have."""


_CLASS_ID = re.compile(r"[0-9]{1,9}")
"""A class id as a request may give it: ASCII digits, short enough to convert cheaply."""


def resolve_classes(values: Sequence[str] | None, names: Sequence[str]) -> list[int] | None:
    """A class filter as users write it (names or ids, repeated or comma-separated:
    ``["RBC", "2"]``, ``["RBC,2"]``) -> sorted class ids; ``None`` when it keeps every class.
    A token that is a class name means that class, else a string of ASCII digits means that id
    (``str.isdigit`` also takes digits such as ``"²"`` that ``int`` refuses).

    Raises:
        UnknownClassError: a token is neither a name nor an id of this model.
    """
    if not values:
        return None
    names = list(names)
    wanted: set[int] = set()
    for token in (t.strip() for value in values for t in value.split(",")):
        if not token:
            continue
        if token in names:
            wanted.add(names.index(token))
        elif _CLASS_ID.fullmatch(token) and int(token) < len(names):
            wanted.add(int(token))
        else:
            raise UnknownClassError(
                f"unknown class {token!r}; valid names: {', '.join(names)} "
                f"(or ids 0-{len(names) - 1})"
            )
    return sorted(wanted) or None


def backend_for(path: str | Path) -> str:
    """The backend name for a model file, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{path}: unknown model file type '{suffix}' (expected one of "
            f"{', '.join(sorted(SUFFIXES))}); name the backend explicitly"
        )
    return SUFFIXES[suffix]


def load_backend(path: str | Path, backend: str | None = None, **options: Any) -> Backend:
    """Open a model file with ``backend`` (default: chosen by suffix: ``.onnx`` ONNX Runtime,
    ``.engine`` TensorRT, ``.pt``/``.pth`` PyTorch). ``options`` go to the backend's constructor
    (e.g. ``providers=``, ``threads=`` for ONNX Runtime)."""
    name = backend or backend_for(path)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise NotImplementedError(f"the {name} backend is not available yet") from exc
        raise
    return getattr(module, class_name)(path, **options)


class Predictor:
    """Images in, :class:`Detections` out, through one backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @classmethod
    def from_path(cls, path: str | Path, backend: str | None = None, **options: Any) -> Predictor:
        return cls(load_backend(path, backend, **options))

    @property
    def metadata(self) -> ModelMetadata:
        return self.backend.metadata

    def close(self) -> None:
        self.backend.close()

    def prepare(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[float]]:
        """BGR uint8 ``[H, W, 3]`` images -> (``[B, 3, h, w]`` float32 batch, ratios)."""
        prepared = [self.prepare_one(image) for image in images]
        return np.stack([tensor for tensor, _ in prepared]), [ratio for _, ratio in prepared]

    def prepare_one(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """One BGR uint8 ``[H, W, 3]`` image -> (``[3, h, w]`` float32, ratio): what
        :meth:`prepare` stacks, without the copy into a batch of one."""
        pad = self.metadata.preprocess.pad_value if self.metadata.preprocess else 114
        return preprocess(image, self.metadata.input_size, pad)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The backend's outputs for a ``[B, 3, h, w]`` batch of any B: split into chunks of
        the model's fixed batch (the last padded with copies, the padding dropped again), or
        run whole for a dynamic-batch model."""
        fixed = self.metadata.batch
        if fixed is None or len(batch) == fixed:
            return self.backend.infer(batch)
        chunks: list[dict[str, np.ndarray]] = []
        for start in range(0, len(batch), fixed):
            chunk = batch[start : start + fixed]
            real = len(chunk)
            if real < fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - real, axis=0)])
            outputs = self.backend.infer(chunk)
            chunks.append({k: v[:real] for k, v in outputs.items()})
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    def postprocess(
        self,
        outputs: dict[str, np.ndarray],
        conf: float = PREDICT_CONF,
        iou: float = PREDICT_IOU,
        max_det: int = MAX_DET,
        classes: Sequence[int] | None = None,
    ) -> list[RawDetections]:
        """Named outputs -> per-image detections in input pixels. For the NMS layout the graph's
        own thresholds applied; ``conf`` filters its results further and ``iou`` is unused."""
        if self.metadata.layout == "nms":
            num_dets, boxes, scores, labels = (outputs[k] for k in NMS_OUTPUTS)
            return postprocess_nms(num_dets, boxes, scores, labels, conf, max_det, classes)
        return postprocess_raw(outputs[RAW_OUTPUT], conf, iou, max_det, classes)

    def predict(
        self,
        images: Sequence[np.ndarray],
        conf: float = PREDICT_CONF,
        iou: float = PREDICT_IOU,
        max_det: int = MAX_DET,
        classes: Sequence[int] | None = None,
    ) -> list[Detections]:
        """Detect objects in BGR uint8 ``[H, W, 3]`` images; one :class:`Detections` per image,
        boxes in its own pixels."""
        if len(images) == 0:
            return []
        batch, ratios = self.prepare(images)
        raw = self.postprocess(self.run(batch), conf, iou, max_det, classes)
        return [
            Detections(boxes_to_original(r.boxes, ratio, image.shape[:2]), r.scores, r.classes)
            for r, ratio, image in zip(raw, ratios, images)
        ]
