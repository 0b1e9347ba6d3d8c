"""What the model is fed: a grid of augmented training samples with their boxes, and a histogram
of boxes per class."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from detector.core.visualize import draw_boxes
from detector.data.augment import AugmentConfig
from detector.data.dataset import DetectionDataset
from detector.data.loader import TrainBatch, build_train_loader


def batch_grid(batch: TrainBatch, class_names: list[str], columns: int = 4) -> np.ndarray:
    """Tile a ``TrainBatch`` into one BGR uint8 image with its boxes drawn."""
    tiles = []
    for image, boxes, labels in zip(batch.images, batch.boxes, batch.labels):
        keep = labels >= 0
        picture = image.permute(1, 2, 0).clamp(0, 255).byte().numpy()
        tiles.append(draw_boxes(picture, boxes[keep].numpy(), labels[keep].tolist(), class_names))
    rows = math.ceil(len(tiles) / columns)
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (rows * columns - len(tiles))
    return np.vstack([np.hstack(tiles[r * columns : (r + 1) * columns]) for r in range(rows)])


def render_preview(
    dataset: DetectionDataset,
    out: str | Path,
    imgsz: int = 416,
    count: int = 8,
    augment: AugmentConfig | None = None,
    mosaic: bool = True,
    seed: int = 0,
) -> Path:
    """Write a PNG: ``count`` augmented samples (left) and boxes per class (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loader = build_train_loader(dataset, imgsz, min(count, len(dataset)), augment, mosaic=mosaic,
                                workers=0, seed=seed, drop_last=False)  # fmt: skip
    grid = batch_grid(next(iter(loader)), dataset.class_names)
    counts = dataset.class_counts()
    fig, (ax_img, ax_hist) = plt.subplots(
        1, 2, figsize=(16, 7), gridspec_kw={"width_ratios": [3, 1]}
    )
    ax_img.imshow(grid[:, :, ::-1])
    ax_img.set_title(f"{dataset.name}: augmented samples at {imgsz} (mosaic={mosaic})")
    ax_img.axis("off")
    ax_hist.barh(dataset.class_names, counts)
    ax_hist.invert_yaxis()
    ax_hist.set_title(f"boxes per class ({len(dataset)} images, {int(counts.sum())} boxes)")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def describe(dataset: DetectionDataset) -> str:
    """A few lines about a split: images, boxes per image, box sizes, boxes per class."""
    per_image = np.asarray([len(r.labels) for r in dataset.records])
    boxes = [r.boxes for r in dataset.records if len(r.boxes)]
    lines = [f"{dataset.name}: {len(dataset)} images, {int(per_image.sum())} boxes "
             f"({per_image.mean():.1f} per image, max {per_image.max()}, "
             f"{int((per_image == 0).sum())} images without boxes)"]  # fmt: skip
    if boxes:
        stacked = np.concatenate(boxes)
        side = np.sqrt((stacked[:, 2] - stacked[:, 0]) * (stacked[:, 3] - stacked[:, 1]))
        p5, p50, p95 = np.percentile(side, [5, 50, 95])
        lines.append(f"box size (sqrt of area, px): 5% {p5:.0f}, median {p50:.0f}, 95% {p95:.0f}")
    counts = ", ".join(f"{n} {c}" for n, c in zip(dataset.class_names, dataset.class_counts()))
    lines.append(f"boxes per class: {counts}")
    return "\n".join(lines)
