"""Training and evaluation plots (matplotlib, Agg backend: no display needed).

- ``plot_metrics``: loss terms, mAP and lr per epoch from a run's ``metrics.csv``.
- ``plot_pr_curves``: precision-recall per class at IoU 0.5 from COCOeval's precision array.
- ``confusion_matrix`` / ``plot_confusion_matrix``: class confusion with a background row/col.
- ``plot_predictions_grid``: images with predicted (solid) and ground-truth (dashed) boxes, and a
  legend saying which is which.

Detections everywhere are ``[K, 6]`` (x1, y1, x2, y2, score, class index); ground truth is
``[M, 5]`` (x1, y1, x2, y2, class index), both in the pixels of the image they belong to.

The confusion matrix and the prediction grid show what a user of ``detector predict`` would
see: detections at the prediction score threshold (:data:`detector.core.defaults.PREDICT_CONF`),
matched to ground truth at the prediction IoU (``PREDICT_IOU``), not at the evaluation ones.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
import numpy as np  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from detector.core.boxes import box_iou_numpy  # noqa: E402
from detector.core.defaults import PREDICT_CONF, PREDICT_IOU  # noqa: E402

LOGGER = logging.getLogger(__name__)

_MAP_COLUMNS = ("mAP", "mAP50")
_LR_COLUMNS = ("lr",)
_SKIP_COLUMNS = ("iteration", "step")  # counters, not metrics


def _as_array(x: Any, width: int) -> np.ndarray:
    """``ndarray | Tensor | None`` -> float ``[N, width]`` numpy array."""
    if x is None:
        return np.zeros((0, width))
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, width))
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"expected an array of shape [N, {width}], got {list(arr.shape)}")
    return arr


def _save(fig: plt.Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _read_metrics(csv_path: str | Path) -> tuple[list[float], dict[str, list[float]]]:
    """``metrics.csv`` -> (epochs, column -> values with NaN where a row left it empty)."""
    path = Path(csv_path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "epoch" not in reader.fieldnames:
            raise ValueError(f"{path}: no 'epoch' column (found {reader.fieldnames})")
        columns = [c for c in reader.fieldnames if c != "epoch"]
        epochs: list[float] = []
        values: dict[str, list[float]] = {c: [] for c in columns}
        for row in reader:
            epochs.append(float(row["epoch"]))
            for c in columns:
                cell = (row.get(c) or "").strip()
                try:
                    values[c].append(float(cell) if cell else math.nan)
                except ValueError:
                    values[c].append(math.nan)  # a non-numeric column (e.g. a time stamp)
    return epochs, {c: v for c, v in values.items() if not all(math.isnan(x) for x in v)}


def plot_metrics(csv_path: str | Path, out_png: str | Path) -> Path:
    """One panel per loss term (and any other numeric column, e.g. throughput), one for
    mAP/mAP50 and one for lr, against the epoch.

    ``csv_path``: a CSV with an ``epoch`` column and any of loss terms, ``mAP``, ``mAP50``,
    ``lr`` (empty cells where a value was not measured, e.g. mAP between evaluations);
    ``iteration``/``step`` columns are not drawn.
    """
    epochs, values = _read_metrics(csv_path)
    losses = [c for c in values if c not in _MAP_COLUMNS + _LR_COLUMNS + _SKIP_COLUMNS]
    panels: list[tuple[str, list[str]]] = [(c, [c]) for c in losses]
    maps = [c for c in _MAP_COLUMNS if c in values]
    if maps:
        panels.append(("mAP", maps))
    if "lr" in values:
        panels.append(("lr", ["lr"]))
    if not panels:
        raise ValueError(f"{csv_path}: no numeric column besides 'epoch' to plot")
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    x = np.asarray(epochs, dtype=np.float64)
    span = float(x.max() - x.min()) if len(x) else 0.0
    margin = max(0.5, 0.03 * span) if span > 0 else 1.0  # one epoch: whole-number ticks around it
    for ax, (title, names) in zip(axes.flat, panels, strict=False):
        if title == "mAP":
            _plot_map_panel(ax, x, values, names)
        else:
            for name in names:
                y = np.asarray(values[name])
                keep = ~np.isnan(y)
                ax.plot(x[keep], y[keep], marker=".", label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if len(x):  # every panel spans all epochs, even one evaluated at a single epoch
            ax.set_xlim(x.min() - margin, x.max() + margin)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, out_png)


_MAP_STYLE = {  # mAP50 >= mAP: a large hollow circle, so that mAP's square shows inside it
    "mAP50": {"marker": "o", "markersize": 9, "markerfacecolor": "none", "ls": "--", "zorder": 2},
    "mAP": {"marker": "s", "markersize": 5, "ls": "-", "zorder": 3},
}


def _plot_map_panel(ax: plt.Axes, x: np.ndarray, values: dict[str, list[float]],
                    names: list[str]) -> None:  # fmt: skip
    """mAP and mAP50 on a 0-based axis; the legend gives each one's latest value."""
    top = 0.0
    for name in sorted(names, key=lambda n: n != "mAP50"):  # mAP50 first, mAP on top
        y = np.asarray(values[name])
        keep = ~np.isnan(y)
        label = f"{name} {y[keep][-1]:.3f}" if keep.any() else name
        ax.plot(x[keep], y[keep], label=label, **_MAP_STYLE.get(name, {"marker": "."}))
        if keep.any():
            top = max(top, float(y[keep].max()))
    upper = min(1.05, top * 1.2) if top > 0 else 0.1
    ax.set_ylim(-0.03 * upper, upper)  # 0 sits just above the frame, not on it
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: not labels[i].startswith("mAP "))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="best")


def plot_pr_curves(
    result_or_precision: Any, class_names: Sequence[str], out_png: str | Path
) -> Path:
    """Precision-recall curve per class at IoU 0.5 (area all, 100 detections per image).

    ``result_or_precision``: a ``CocoResult`` (its ``precision``) or COCOeval's
    ``eval["precision"]`` array ``[T, R=101, K, A, M]``; ``class_names``: ``K`` names.
    """
    precision = getattr(result_or_precision, "precision", result_or_precision)
    if precision is None:
        raise ValueError("plot_pr_curves: the result holds no precision array")
    precision = np.asarray(precision)
    if precision.ndim != 5 or precision.shape[2] != len(class_names):
        raise ValueError(
            f"plot_pr_curves: expected precision [T, R, K={len(class_names)}, A, M], "
            f"got {list(precision.shape)}"
        )
    recall = np.linspace(0.0, 1.0, precision.shape[1])
    fig, ax = plt.subplots(figsize=(6, 5))
    curves = []
    for k, name in enumerate(class_names):
        p = precision[0, :, k, 0, -1]
        if (p < 0).all():
            continue  # no ground truth for this class
        p = np.clip(p, 0, None)
        curves.append(p)
        ax.plot(recall, p, linewidth=1, label=f"{name} {p.mean():.3f}")
    if curves:
        mean = np.mean(curves, axis=0)
        ax.plot(recall, mean, color="black", linewidth=2.5, label=f"all {mean.mean():.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall @ IoU 0.5")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="lower left", fontsize="small")
    fig.tight_layout()
    return _save(fig, out_png)


def confusion_matrix(
    detections: Sequence[Any],
    ground_truth: Sequence[Any],
    num_classes: int,
    iou_thres: float = PREDICT_IOU,
    conf_thres: float = PREDICT_CONF,
) -> np.ndarray:
    """Detection confusion matrix ``[C + 1, C + 1]``: rows = predicted class, columns = true
    class, index ``C`` = background.

    Per image, detections with score >= ``conf_thres`` are matched one-to-one to ground truth
    by IoU (class-agnostic, highest IoU first, IoU > ``iou_thres``). A matched pair counts at
    ``[pred, true]``; an unmatched gt at ``[C, true]`` (missed); an unmatched detection at
    ``[pred, C]`` (false positive).

    Args:
        detections: per image ``[K, 6]`` (x1, y1, x2, y2, score, class).
        ground_truth: per image ``[M, 5]`` (x1, y1, x2, y2, class).
    """
    if len(detections) != len(ground_truth):
        raise ValueError(
            f"confusion_matrix: {len(detections)} detection arrays but "
            f"{len(ground_truth)} ground-truth arrays"
        )
    bg = num_classes
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for dets, gts in zip(detections, ground_truth, strict=True):
        dets = _as_array(dets, 6)
        gts = _as_array(gts, 5)
        dets = dets[dets[:, 4] >= conf_thres]
        det_cls = dets[:, 5].astype(np.int64)
        gt_cls = gts[:, 4].astype(np.int64)
        for name, cls in (("detection", det_cls), ("ground-truth", gt_cls)):
            if ((cls < 0) | (cls >= num_classes)).any():
                raise ValueError(f"confusion_matrix: a {name} class is outside 0..{bg - 1}")
        gt_matched = np.zeros(len(gts), dtype=bool)
        det_matched = np.zeros(len(dets), dtype=bool)
        if len(dets) and len(gts):
            iou = box_iou_numpy(gts[:, :4], dets[:, :4])  # [M, K]
            gi, di = np.nonzero(iou > iou_thres)
            order = np.argsort(-iou[gi, di], kind="stable")
            for g, d in zip(gi[order], di[order], strict=True):
                if gt_matched[g] or det_matched[d]:
                    continue
                gt_matched[g] = det_matched[d] = True
                matrix[det_cls[d], gt_cls[g]] += 1
        np.add.at(matrix, (np.full((~gt_matched).sum(), bg), gt_cls[~gt_matched]), 1)
        np.add.at(matrix, (det_cls[~det_matched], np.full((~det_matched).sum(), bg)), 1)
    return matrix


def plot_confusion_matrix(
    matrix: np.ndarray,
    class_names: Sequence[str],
    out_png: str | Path,
    normalize: bool = True,
) -> Path:
    """Heat map of a ``[C + 1, C + 1]`` matrix from ``confusion_matrix`` (columns normalised to
    sum to 1 when ``normalize``; counts printed in each cell when there are few classes)."""
    matrix = np.asarray(matrix)
    names = list(class_names) + ["background"]
    if matrix.shape != (len(names), len(names)):
        raise ValueError(
            f"plot_confusion_matrix: matrix shape {list(matrix.shape)} does not fit "
            f"{len(class_names)} classes + background"
        )
    shown = matrix.astype(np.float64)
    if normalize:
        shown = shown / np.maximum(shown.sum(axis=0, keepdims=True), 1)
    size = max(4.0, 0.5 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    if len(names) <= 30:
        for i in range(len(names)):
            for j in range(len(names)):
                if matrix[i, j]:
                    text = f"{shown[i, j]:.2f}" if normalize else str(int(matrix[i, j]))
                    color = "white" if shown[i, j] > 0.5 * (shown.max() or 1) else "black"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    ax.set_title("Confusion matrix" + (" (column-normalised)" if normalize else ""))
    fig.tight_layout()
    return _save(fig, out_png)


def plot_predictions_grid(
    images: Sequence[np.ndarray],
    detections: Sequence[Any],
    gts: Sequence[Any] | None,
    class_names: Sequence[str],
    out_png: str | Path,
    conf_thres: float = PREDICT_CONF,
    max_images: int = 9,
) -> Path:
    """A grid of images (``[H, W, 3]`` uint8 BGR) with predicted boxes (solid, class colour,
    label and score) and, when ``gts`` is given, ground truth (dashed white, outlined in black);
    a legend says which is which. Each image is drawn at about its own pixel size (320 to 640 px
    wide), so that labels stay readable."""
    n = min(len(images), max_images)
    if n == 0:
        raise ValueError("plot_predictions_grid: no images")
    if len(detections) < n or (gts is not None and len(gts) < n):
        raise ValueError("plot_predictions_grid: fewer detection/gt arrays than images")
    cols = min(3, n)
    rows = math.ceil(n / cols)
    height, width = np.asarray(images[0]).shape[:2]
    cell_w = min(max(width, 320), 640) / 100  # inches at dpi 100
    cell_h = cell_w * height / max(width, 1)
    fig, axes = plt.subplots(
        rows, cols, figsize=(cell_w * cols, cell_h * rows + 0.8), squeeze=False
    )
    cmap = plt.get_cmap("tab10")
    outline = [patheffects.withStroke(linewidth=3, foreground="black")]
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(np.asarray(images[i])[..., ::-1])  # BGR -> RGB
        if gts is not None:
            for x1, y1, x2, y2, _ in _as_array(gts[i], 5):
                box = plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", lw=1.5,
                                    ls="--", zorder=2)  # fmt: skip
                box.set_path_effects(outline)
                ax.add_patch(box)
        for x1, y1, x2, y2, score, c in _as_array(detections[i], 6):
            if score < conf_thres:
                continue
            color = cmap(int(c) % 10)
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=color, lw=2,
                                       zorder=3))  # fmt: skip
            name = class_names[int(c)] if 0 <= int(c) < len(class_names) else str(int(c))
            ax.text(
                x1,
                y1,
                f"{name} {score:.2f}",
                fontsize=9,
                color="white",
                va="bottom",
                zorder=4,
                bbox={"facecolor": color, "alpha": 0.85, "pad": 1.5, "lw": 0},
            )
    handles = []
    if gts is not None:
        gt_handle = Line2D([], [], color="white", lw=1.5, ls="--", label="ground truth")
        gt_handle.set_path_effects(outline)
        handles.append(gt_handle)
    handles += [
        Line2D([], [], color=cmap(k % 10), lw=2.5, label=f"prediction: {name}")
        for k, name in enumerate(class_names[:10])
    ]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), fontsize=11,
               frameon=False, title=f"predictions with score >= {conf_thres:g} (label: class "
               "score)", title_fontsize=11)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.8 / (cell_h * rows + 0.8)))
    return _save(fig, out_png)


def coco_to_per_image_gt(
    ground_truth: dict[str, Any], image_ids: Sequence[int], category_ids: Sequence[int]
) -> list[np.ndarray]:
    """COCO ground truth -> per image of ``image_ids`` a ``[M, 5]`` array (x1, y1, x2, y2,
    class index); crowd boxes are left out."""
    index_of = {int(c): i for i, c in enumerate(category_ids)}
    rows: dict[int, list[list[float]]] = {int(i): [] for i in image_ids}
    for ann in ground_truth.get("annotations", []):
        image_id = int(ann["image_id"])
        if image_id not in rows or ann.get("iscrowd", 0):
            continue
        if int(ann["category_id"]) not in index_of:
            raise ValueError(
                f"ground truth: category_id {ann['category_id']} is not in {list(category_ids)}"
            )
        x, y, w, h = (float(v) for v in ann["bbox"])
        rows[image_id].append([x, y, x + w, y + h, index_of[int(ann["category_id"])]])
    return [np.asarray(rows[int(i)], dtype=np.float64).reshape(-1, 5) for i in image_ids]


def confusion_matrix_from_coco(
    detections: Sequence[Any],
    image_ids: Sequence[int],
    ground_truth: dict[str, Any],
    category_ids: Sequence[int],
    iou_thres: float = PREDICT_IOU,
    conf_thres: float = PREDICT_CONF,
) -> np.ndarray:
    """``confusion_matrix`` of per-image ``[K, 6]`` detections (in the order of ``image_ids``)
    against a COCO ground-truth dict; ``category_ids[class index]`` is the COCO category id."""
    gts = coco_to_per_image_gt(ground_truth, image_ids, category_ids)
    return confusion_matrix(detections, gts, len(category_ids), iou_thres, conf_thres)


def plot_predictions_grid_from_dataset(
    dataset: Any,
    predictions: Any,
    class_names: Sequence[str],
    out_png: str | Path,
    conf_thres: float = PREDICT_CONF,
    max_images: int = 9,
) -> Path:
    """``plot_predictions_grid`` for the first ``max_images`` images of a split's predictions.

    ``dataset``: has ``records[i].image_id`` and ``load(i)`` -> sample with ``image`` (BGR),
    ``boxes`` ``[M, 4]`` xyxy and ``labels`` ``[M]`` (a ``DetectionDataset``);
    ``predictions``: ``image_ids`` and per-image ``detections`` ``[K, 6]`` in original pixels.
    """
    index_of = {int(r.image_id): i for i, r in enumerate(dataset.records)}
    images, dets, gts = [], [], []
    for image_id, det in list(zip(predictions.image_ids, predictions.detections, strict=True))[
        :max_images
    ]:
        if int(image_id) not in index_of:
            raise ValueError(f"plot_predictions_grid_from_dataset: image id {image_id} unknown")
        sample = dataset.load(index_of[int(image_id)])
        images.append(sample.image)
        dets.append(det)
        labels = np.asarray(sample.labels, dtype=np.float64).reshape(-1, 1)
        gts.append(np.concatenate([np.asarray(sample.boxes).reshape(-1, 4), labels], axis=1))
    return plot_predictions_grid(images, dets, gts, class_names, out_png, conf_thres, max_images)
