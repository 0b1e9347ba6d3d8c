"""Plots are written as valid PNGs; the confusion matrix counts hand-made cases right."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.eval import evaluate_coco
from detector.eval.plots import (
    confusion_matrix,
    plot_confusion_matrix,
    plot_metrics,
    plot_pr_curves,
    plot_predictions_grid,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    assert path.exists()
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100


def test_plot_metrics(tmp_path: Path) -> None:
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(
        "epoch,iteration,total,iou,obj,cls,l1,lr,images_per_s,mAP,mAP50\n"
        "1,10,9.0,3.0,4.0,2.0,,0.001,50.5,,\n"
        "2,20,7.5,2.5,3.2,1.8,,0.01,51.0,0.10,0.30\n"
        "3,30,6.1,2.0,2.6,1.5,0.9,0.009,49.0,,\n"
        "4,40,5.2,1.7,2.2,1.3,0.8,0.005,50.0,0.25,0.52\n"
    )
    _assert_png(plot_metrics(csv_path, tmp_path / "out" / "metrics.png"))
    only_loss = tmp_path / "loss.csv"
    only_loss.write_text("epoch,loss\n1,2.0\n")
    _assert_png(plot_metrics(only_loss, tmp_path / "loss.png"))
    no_epoch = tmp_path / "bad.csv"
    no_epoch.write_text("step,loss\n1,2.0\n")
    with pytest.raises(ValueError, match="'epoch'"):
        plot_metrics(no_epoch, tmp_path / "bad.png")


def test_plot_pr_curves(tmp_path: Path) -> None:
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "none"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 20, 20],
                "area": 400,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 2,
                "bbox": [50, 50, 30, 30],
                "area": 900,
                "iscrowd": 0,
            },
        ],
    }
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [0, 60, 10, 10], "score": 0.8},
        {"image_id": 1, "category_id": 2, "bbox": [52, 50, 30, 30], "score": 0.7},
    ]
    result = evaluate_coco(gt, dets)
    _assert_png(plot_pr_curves(result, result.class_names, tmp_path / "pr.png"))
    _assert_png(plot_pr_curves(result.precision, ["a", "b", "none"], tmp_path / "pr2.png"))
    with pytest.raises(ValueError, match="K=2"):
        plot_pr_curves(result, ["a", "b"], tmp_path / "bad.png")


def test_confusion_matrix_hand_cases(tmp_path: Path) -> None:
    a, b, c = [0, 0, 10, 10], [20, 20, 40, 40], [60, 60, 80, 80]
    detections = [
        np.array(
            [
                a + [0.9, 0],  # on A, right class        -> [0, 0]
                b + [0.8, 0],  # on B (class 1), class 0  -> [0, 1]
                [1, 0, 11, 10, 0.7, 0],  # second box on A -> [0, bg] (A already taken)
                c + [0.9, 1],  # on nothing               -> [1, bg]
                c + [0.1, 1],  # below conf_thres: ignored
            ]
        ),
        np.zeros((0, 6)),  # image 2: C (class 1) missed -> [bg, 1]
        np.zeros((0, 6)),  # image 3: nothing at all
        np.array([[0, 0, 10, 10, 0.5, 1]]),  # image 4: no gt -> [1, bg]
    ]
    ground_truth = [
        np.array([a + [0], b + [1]]),
        np.array([c + [1]]),
        np.zeros((0, 5)),
        None,
    ]
    m = confusion_matrix(detections, ground_truth, num_classes=2)
    expected = np.array(
        [
            [1, 1, 1],
            [0, 0, 2],
            [0, 1, 0],
        ]
    )
    np.testing.assert_array_equal(m, expected)
    assert m.sum() == 6  # 2 matched pairs + 1 missed gt + 3 unmatched detections
    # the matched pairs overlap exactly, so a strict IoU threshold changes nothing
    strict = confusion_matrix(detections, ground_truth, num_classes=2, iou_thres=0.95)
    np.testing.assert_array_equal(strict, expected)
    # lowering conf_thres lets the 0.1 detection in as a second false positive on C
    low = confusion_matrix(detections, ground_truth, num_classes=2, conf_thres=0.05)
    assert low[1, 2] == 3
    _assert_png(plot_confusion_matrix(m, ["a", "b"], tmp_path / "cm.png"))
    _assert_png(plot_confusion_matrix(m, ["a", "b"], tmp_path / "cm_counts.png", normalize=False))
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([np.array([a + [0.9, 5]])], [None], num_classes=2)
    with pytest.raises(ValueError, match="does not fit"):
        plot_confusion_matrix(m, ["a"], tmp_path / "bad.png")


def test_confusion_matrix_prefers_higher_iou() -> None:
    """Two detections compete for one gt: the better-overlapping one wins it."""
    gt = [np.array([[0, 0, 10, 10, 0]])]
    dets = [np.array([[0, 0, 10, 12, 0.9, 1], [0, 0, 10, 10, 0.5, 0]])]
    m = confusion_matrix(dets, gt, num_classes=2)
    assert m[0, 0] == 1 and m[1, 2] == 1 and m.sum() == 2


def test_plot_predictions_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 80, 3), dtype=np.uint8) for _ in range(3)]
    dets = [np.array([[5, 5, 30, 30, 0.9, 0], [40, 10, 70, 50, 0.2, 1]]), np.zeros((0, 6)), None]
    gts = [np.array([[6, 6, 30, 31, 0]]), np.zeros((0, 5)), np.array([[1, 1, 10, 10, 1]])]
    _assert_png(plot_predictions_grid(images, dets, gts, ["a", "b"], tmp_path / "grid.png"))
    _assert_png(plot_predictions_grid(images[:1], dets[:1], None, ["a", "b"], tmp_path / "g1.png"))
    with pytest.raises(ValueError, match="no images"):
        plot_predictions_grid([], [], None, ["a"], tmp_path / "none.png")
