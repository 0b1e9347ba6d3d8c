"""The entry points the trainer and ``detector eval`` use, on the real BCCD split."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.eval import detections_to_coco, evaluate_coco, voc_map50, voc_map50_from_predictions
from detector.eval.plots import (
    coco_to_per_image_gt,
    confusion_matrix,
    confusion_matrix_from_coco,
    plot_predictions_grid_from_dataset,
)

DATA_CFG = Path(__file__).resolve().parents[2] / "configs" / "data" / "bccd_coco.yaml"


@dataclass
class _Predictions:  # the shape of detector.training.validate.Predictions
    image_ids: list[int]
    detections: list[np.ndarray]


@pytest.fixture(scope="module")
def split():
    """The BCCD val split and noisy predictions for it (class indices, original pixels)."""
    from detector.data import build_dataset, load_data_config

    dataset = build_dataset(load_data_config(DATA_CFG), "val")  # BCCD ships in data/bccd
    rng = np.random.default_rng(0)
    ids, dets = [], []
    for record in dataset.records:
        boxes = record.boxes + rng.normal(0, 3, record.boxes.shape)
        labels = np.where(rng.random(len(boxes)) < 0.1, 0, record.labels)
        scores = rng.uniform(0.2, 1.0, len(boxes))
        keep = rng.random(len(boxes)) > 0.1
        dets.append(np.column_stack([boxes, scores, labels])[keep])
        ids.append(record.image_id)
    return dataset, _Predictions(ids, dets)


def test_summary_is_pycocotools_printout(split) -> None:
    dataset, preds = split
    gt = dataset.coco_ground_truth()
    results = detections_to_coco(preds.detections, preds.image_ids, dataset.category_ids)
    result = evaluate_coco(gt, results)
    coco_gt = COCO()
    coco_gt.dataset = gt
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
    with contextlib.redirect_stdout(out := io.StringIO()):
        ev.summarize()
    assert result.summary() == out.getvalue().rstrip("\n")
    assert 0.3 < result.mAP50 < 1.0


def test_voc_from_predictions(split) -> None:
    dataset, preds = split
    results = detections_to_coco(preds.detections, preds.image_ids, dataset.category_ids)
    expected = voc_map50(dataset.coco_ground_truth(), results).map50
    assert voc_map50_from_predictions(preds, dataset) == expected
    assert 0.3 < expected < 1.0


def test_confusion_matrix_from_coco(split) -> None:
    dataset, preds = split
    gt = dataset.coco_ground_truth()
    gts = coco_to_per_image_gt(gt, preds.image_ids, dataset.category_ids)
    for record, g in zip(dataset.records, gts, strict=True):
        np.testing.assert_allclose(g[:, :4], record.boxes, atol=1e-4)
        np.testing.assert_array_equal(g[:, 4], record.labels)
    m = confusion_matrix_from_coco(preds.detections, preds.image_ids, gt, dataset.category_ids)
    assert m.shape == (4, 4)
    assert np.array_equal(m, confusion_matrix(preds.detections, gts, 3))
    assert m[:3, :3].trace() > 0.7 * m[:3, :3].sum()  # mostly right, some relabelled to class 0
    assert m[:, :3].sum() == sum(len(g) for g in gts)  # every gt counted once


def test_predictions_grid_from_dataset(split, tmp_path: Path) -> None:
    dataset, preds = split
    out = plot_predictions_grid_from_dataset(
        dataset, preds, dataset.class_names, tmp_path / "val.png", max_images=4
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = _Predictions([123456], [np.zeros((0, 6))])
    with pytest.raises(ValueError, match="123456"):
        plot_predictions_grid_from_dataset(dataset, bad, dataset.class_names, tmp_path / "x.png")
