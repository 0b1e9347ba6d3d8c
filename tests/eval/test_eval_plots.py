"""Plots are written as valid PNGs; the confusion matrix counts hand-made cases right."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.eval import evaluate_coco, plots
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


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures the plot functions save (they are still written as PNGs)."""
    figures: list = []
    save = plots._save

    def keep(fig, out_png):
        figures.append(fig)
        return save(fig, out_png)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def _map_axes(fig):
    return next(ax for ax in fig.axes if ax.get_title() == "mAP")


def test_metrics_with_one_evaluation(tmp_path: Path, drawn: list) -> None:
    """One evaluated epoch: whole-number epochs around it, mAP from 0, and mAP visible in front
    of mAP50 with both values in the legend."""
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("epoch,total,lr,mAP,mAP50\n1,9.0,0.001,,\n2,7.5,0.001,0.0123,0.0456\n")
    _assert_png(plot_metrics(csv_path, tmp_path / "metrics.png"))
    ax = _map_axes(drawn[-1])
    left, right = ax.get_xlim()
    assert left < 1 and right > 2
    assert all(float(t).is_integer() for t in ax.get_xticks() if left <= t <= right)
    bottom, top = ax.get_ylim()
    assert bottom <= 0 < 0.0456 < top <= 1.05
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mAP 0.012", "mAP50 0.046"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["mAP 0.012"].get_zorder() > lines["mAP50 0.046"].get_zorder()
    assert lines["mAP50 0.046"].get_markerfacecolor() == "none"  # mAP shows through it

    single = tmp_path / "single.csv"
    single.write_text("epoch,total,mAP,mAP50\n2,7.5,0.0,0.0\n")
    plot_metrics(single, tmp_path / "single.png")
    ax = _map_axes(drawn[-1])
    left, right = ax.get_xlim()
    visible = [t for t in ax.get_xticks() if left <= t <= right]
    assert visible == [1.0, 2.0, 3.0]  # not 1.9 ... 2.1
    assert ax.get_ylim()[0] < 0 < ax.get_ylim()[1]  # a zero mAP is drawn inside the frame


def test_predictions_grid_has_a_legend_and_readable_labels(tmp_path: Path, drawn: list) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(2)]
    dets = [np.array([[5, 5, 60, 60, 0.9, 0], [100, 100, 200, 220, 0.8, 1]]), np.zeros((0, 6))]
    gts = [np.array([[6, 6, 60, 61, 0]]), np.array([[1, 1, 40, 40, 1]])]
    _assert_png(plot_predictions_grid(images, dets, gts, ["RBC", "WBC"], tmp_path / "grid.png"))
    fig = drawn[-1]
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [
        "ground truth",
        "prediction: RBC",
        "prediction: WBC",
    ]
    labels = [t for ax in fig.axes for t in ax.texts]
    assert sorted(t.get_text() for t in labels) == ["RBC 0.90", "WBC 0.80"]
    assert min(t.get_fontsize() for t in labels) >= 9
    width, height = fig.get_size_inches() * fig.dpi
    assert width >= 2 * 600  # each image at about its own size, not shrunk to a thumbnail
