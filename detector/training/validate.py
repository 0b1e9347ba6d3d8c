"""Running a model over a dataset's validation split and scoring it with COCO mAP.

The images go through the same letterbox as serving (``detector.core.preprocess`` via the eval
loader);
detections are mapped back to original pixels and scored by :mod:`detector.eval`. Under
``torchrun`` every process predicts its own slice of the images and rank 0 scores them all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from detector.core.defaults import EVAL_CONF, EVAL_IOU, MAX_DET
from detector.core.preprocess import boxes_to_original
from detector.data import build_eval_loader
from detector.eval import CocoResult, detections_to_coco, evaluate_coco
from detector.ops import postprocess
from detector.training import distributed as dist

logger = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Detections of a whole split: per image ``[K, 6]`` (x1, y1, x2, y2 original pixels, score,
    class index), in dataset order, with the image ids."""

    image_ids: list[int]
    detections: list[np.ndarray]


@torch.no_grad()
def predict_split(
    model: nn.Module,
    dataset,
    imgsz: int | tuple[int, int],
    device: torch.device,
    batch_size: int = 8,
    workers: int = 0,
    conf_thres: float = EVAL_CONF,
    iou_thres: float = EVAL_IOU,
    max_det: int = MAX_DET,
) -> Predictions:
    """Predict every image of ``dataset`` (this process's slice of it under ``torchrun``) at
    input size ``imgsz`` (``N`` or ``(H, W)``); the thresholds default to the evaluation ones.

    Returns:
        per image ``[K, 6]`` detections in original pixels (see :class:`Predictions`).
    """
    indices = list(range(dist.rank(), len(dataset), dist.world_size()))
    subset = Subset(dataset, indices) if dist.world_size() > 1 else dataset
    loader = build_eval_loader(subset, imgsz, batch_size, workers)
    was_training = model.training
    model.eval()
    image_ids: list[int] = []
    detections: list[np.ndarray] = []
    for batch in loader:
        outputs = model(batch.images.to(device, non_blocking=True)).float()
        per_image = postprocess(
            outputs, conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det
        )
        for dets, image_id, ratio, hw in zip(
            per_image, batch.image_ids, batch.ratios, batch.original_hw
        ):
            dets = dets.cpu().numpy()
            if len(dets):
                dets[:, :4] = boxes_to_original(dets[:, :4], ratio, hw)
            image_ids.append(int(image_id))
            detections.append(dets)
    model.train(was_training)
    gathered = dist.all_gather_objects((image_ids, detections))
    all_ids = [i for ids, _ in gathered for i in ids]
    all_dets = [d for _, dets in gathered for d in dets]
    return Predictions(all_ids, all_dets)


def evaluate_predictions(predictions: Predictions, dataset) -> CocoResult:
    """COCO metrics of ``predictions`` against the dataset's own ground truth."""
    results = detections_to_coco(
        predictions.detections, predictions.image_ids, dataset.category_ids
    )
    return evaluate_coco(dataset.coco_ground_truth(), results)
