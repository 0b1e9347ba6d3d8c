"""COCO mAP of an exported model file on a dataset's val split, through the serving runtime.

Every image is read from the dataset, predicted by :class:`serve.runtime.predictor.Predictor` (the
same pre-processing, backend and post-processing that serving runs) at the evaluation thresholds
(``EVAL_CONF`` and ``EVAL_IOU`` of :mod:`detector.core.defaults`, as ``detector eval`` uses), and
scored by the project's pycocotools evaluation
(:func:`detector.training.validate.evaluate_predictions`), so the figure is comparable with
``detector eval`` on the PyTorch weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from detector.core.defaults import EVAL_CONF, EVAL_IOU, MAX_DET
from detector.data import build_dataset, load_data_config
from detector.eval import CocoResult
from detector.training.validate import Predictions, evaluate_predictions


def evaluate_onnx(
    model_path: str | Path,
    data: str | Path,
    split: str = "val",
    conf: float = EVAL_CONF,
    iou: float = EVAL_IOU,
    max_det: int = MAX_DET,
    progress: Callable[[int, int], None] | None = None,
) -> CocoResult:
    """Score ``model_path`` (any file the serving runtime loads) on ``split`` of ``data``."""
    from serve.runtime.predictor import Predictor

    dataset = build_dataset(load_data_config(data), split)
    predictor = Predictor.from_path(model_path)
    image_ids: list[int] = []
    detections: list[np.ndarray] = []
    try:
        for index, record in enumerate(dataset.records):
            image = dataset.read_image(index)
            if image is None:
                raise ValueError(f"{record.path}: cannot decode image")
            (found,) = predictor.predict([image], conf=conf, iou=iou, max_det=max_det)
            detections.append(
                np.concatenate(
                    [
                        np.asarray(found.boxes, np.float32).reshape(-1, 4),
                        np.asarray(found.scores, np.float32).reshape(-1, 1),
                        np.asarray(found.classes, np.float32).reshape(-1, 1),
                    ],
                    axis=1,
                )
            )
            image_ids.append(int(record.image_id))
            if progress is not None:
                progress(index + 1, len(dataset))
    finally:
        close = getattr(predictor, "close", None)
        if close is not None:
            close()
    return evaluate_predictions(Predictions(image_ids, detections), dataset)
