"""Our augmentation primitives against the official YOLOX ones, fed the same random draws
(skipped where the reference ``yolox`` package is not installed)."""

from __future__ import annotations

import numpy as np
import pytest
from data_paths import BCCD_COCO

from detector.data.augment import augment_hsv, random_affine_matrix, transform_boxes

yolox_augment = pytest.importorskip("yolox.data.data_augment")


class Replay:
    """Stands in for ``numpy.random.Generator`` (and ``random``), returning recorded draws."""

    def __init__(self, uniforms: list, integers: list | None = None) -> None:
        self.uniforms, self.ints = list(uniforms), list(integers or [])

    def uniform(self, low=0.0, high=1.0, size=None):
        value = self.uniforms.pop(0)
        return np.asarray(value) if size is not None else value

    def integers(self, low, high=None, size=None):
        return np.asarray(self.ints.pop(0))

    def randint(self, low, high, size=None):
        return np.asarray(self.ints.pop(0))

    def random(self):
        return self.uniforms.pop(0)


@pytest.mark.parametrize(
    "draws", [[3.0, 1.4, 1.5, -0.7, 0.05, -0.08], [-9.9, 0.2, 0.0, 2.0, -0.1, 0.1]]
)
def test_affine_matrix_matches_yolox(monkeypatch, draws):
    # ours draws value in [-d, d] directly; YOLOX draws the same ranges via random.uniform
    replay = Replay(draws)
    monkeypatch.setattr(yolox_augment.random, "uniform", replay.uniform)
    theirs, their_scale = yolox_augment.get_affine_matrix((320, 256), 10.0, 0.1, (0.1, 2), 2.0)
    ours, our_scale = random_affine_matrix(Replay(draws), (256, 320), 10.0, 0.1, (0.1, 2.0), 2.0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    assert our_scale == their_scale
    boxes = np.array([[10, 20, 60, 90], [0, 0, 5, 5]], np.float32)
    expected = yolox_augment.apply_affine_to_bboxes(
        np.c_[boxes, [1, 2]].astype(np.float64), (320, 256), theirs, their_scale
    )[:, :4]
    moved = transform_boxes(boxes, ours)
    moved[:, [0, 2]] = moved[:, [0, 2]].clip(0, 320)
    moved[:, [1, 3]] = moved[:, [1, 3]].clip(0, 256)
    np.testing.assert_allclose(moved, expected, atol=1e-3)


@pytest.mark.parametrize("gains", [[0.6, -0.3, 0.9], [-1.0, 1.0, -0.5]])
@pytest.mark.parametrize("switch", [[1, 1, 1], [0, 1, 0], [1, 0, 1]])
def test_hsv_matches_yolox(monkeypatch, gains, switch):
    image = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    monkeypatch.setattr(yolox_augment.np.random, "uniform", Replay([gains]).uniform)
    monkeypatch.setattr(yolox_augment.np.random, "randint", Replay([], [switch]).randint)
    theirs = image.copy()
    yolox_augment.augment_hsv(theirs)
    ours = augment_hsv(image, Replay([gains], [switch]))
    np.testing.assert_array_equal(ours, theirs)


def test_mosaic_tile_placement_matches_yolox():
    from yolox.data.datasets.mosaicdetection import get_mosaic_coordinate

    from detector.data.mosaic import tile_placement

    rng = np.random.default_rng(0)
    for _ in range(200):
        size = (int(rng.integers(64, 700)), int(rng.integers(64, 700)))
        xc, yc = int(rng.uniform(0.5, 1.5) * size[1]), int(rng.uniform(0.5, 1.5) * size[0])
        w, h = int(rng.integers(8, size[1] + 1)), int(rng.integers(8, size[0] + 1))
        for k in range(4):
            theirs = get_mosaic_coordinate(None, k, xc, yc, w, h, size[0], size[1])
            assert tile_placement(k, xc, yc, w, h, size) == tuple(theirs)


@pytest.mark.parametrize(
    ("draws", "indices"),
    [
        ([300.4, 250.9, 4.0, 0.8, 1.0, -1.5, 0.04, -0.06], [5, 17, 250, 3]),
        ([530.0, 610.2, -8.0, 0.45, -2.0, 0.5, -0.09, 0.1], [0, 1, 2, 3]),
        ([220.0, 400.0, 0.0, 1.3, 0.0, 0.0, 0.0, 0.0], [100, 101, 102, 103]),
    ],
)
def test_mosaic_matches_official_pipeline_on_bccd(monkeypatch, tmp_path, draws, indices):
    """Same images, same centre and affine draws: the official Mosaic (2x canvas, two
    interpolations) and ours (one warp per tile) give the same boxes and nearly the same
    pixels."""
    import random

    from yolox.data import COCODataset, MosaicDetection, TrainTransform

    from detector.data import AugmentConfig, build_dataset, load_data_config
    from detector.data.mosaic import mosaic

    cfg = load_data_config(BCCD_COCO)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/train.json").symlink_to(cfg.root / cfg.train)
    (tmp_path / "images").symlink_to(cfg.root / cfg.images)
    size = 416
    no_aug = TrainTransform(max_labels=50, flip_prob=0.0, hsv_prob=0.0)
    theirs_set = COCODataset(str(tmp_path), "train.json", "images", (size, size), no_aug)
    official = MosaicDetection(theirs_set, mosaic=True, img_size=(size, size),
                               preproc=TrainTransform(max_labels=120, flip_prob=0.0, hsv_prob=0.0),
                               enable_mixup=False)  # fmt: skip
    replay = Replay(draws, [[i] for i in indices[1:]])
    monkeypatch.setattr(random, "uniform", replay.uniform)
    monkeypatch.setattr(random, "randint", lambda a, b: int(replay.ints.pop(0)[0]))
    monkeypatch.setattr(random, "random", lambda: 0.5)
    their_img, their_labels, _, _ = official[indices[0]]

    ours_set = build_dataset(cfg, "train")
    names = [theirs_set.annotations[i][3] for i in indices]
    assert [ours_set.records[i].path.name for i in indices] == names
    aug = AugmentConfig(enable_mixup=False, hsv_prob=0.0, flip_prob=0.0)
    image, boxes, labels = mosaic(ours_set, indices, Replay(draws), (size, size), aug)

    their_img = their_img.transpose(1, 2, 0)
    diff = np.abs(image.astype(np.float32) - their_img)
    print(f"mean |ours - official| = {diff.mean():.2f} grey levels")
    assert diff.mean() < 4.0, diff.mean()
    kept = their_labels[their_labels[:, 3] > 0]
    cx, cy, w, h = kept[:, 1], kept[:, 2], kept[:, 3], kept[:, 4]
    their_boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    key = lambda b: np.lexsort(np.round(b, 0).T[::-1])  # noqa: E731
    assert len(boxes) == len(their_boxes)
    np.testing.assert_allclose(boxes[key(boxes)], their_boxes[key(their_boxes)], atol=1.5)


@pytest.mark.parametrize(
    ("jitter", "flip", "index", "offsets"),
    [(1.3, 0.7, 12, (40, 100)), (0.6, 0.2, 200, (0, 0)), (1.05, 0.9, 7, (3, 1))],
)
def test_mixup_matches_official_pipeline_on_bccd(monkeypatch, tmp_path, jitter, flip, index,
                                                 offsets):  # fmt: skip
    import random

    from yolox.data import COCODataset, MosaicDetection, TrainTransform

    from detector.data import AugmentConfig, build_dataset, load_data_config
    from detector.data.mosaic import mixup

    cfg = load_data_config(BCCD_COCO)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/train.json").symlink_to(cfg.root / cfg.train)
    (tmp_path / "images").symlink_to(cfg.root / cfg.images)
    size = 320
    no_aug = TrainTransform(max_labels=50, flip_prob=0.0, hsv_prob=0.0)
    theirs_set = COCODataset(str(tmp_path), "train.json", "images", (size, size), no_aug)
    official = MosaicDetection(theirs_set, img_size=(size, size), enable_mixup=True)
    rng = np.random.default_rng(index)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    base_boxes = np.array([[10, 20, 100, 120], [200, 30, 260, 90]], np.float32)
    base_labels = np.array([0, 2], np.int64)

    extent = int(size * jitter)
    y_off = min(offsets[0], max(extent - size - 1, 0))
    x_off = min(offsets[1], max(extent - size - 1, 0))
    monkeypatch.setattr(random, "uniform", Replay([jitter, flip]).uniform)
    ints = [index, y_off, x_off] if extent > size else [index]
    monkeypatch.setattr(random, "randint", lambda a, b: ints.pop(0))
    their_img, their_labels = official.mixup(
        base.copy(), np.c_[base_boxes, base_labels].astype(np.float64), (size, size)
    )

    ours_set = build_dataset(cfg, "train")
    draws = Replay([jitter, flip], [index] + ([y_off, x_off] if extent > size else []))
    image, boxes, labels = mixup(base, base_boxes, base_labels, ours_set, draws, AugmentConfig())
    diff = np.abs(image.astype(np.float32) - their_img)
    print(f"mean |ours - official| = {diff.mean():.2f} grey levels")
    assert diff.mean() < 3.0
    their_boxes = their_labels[:, :4]
    keep = ((their_boxes[:, 2] - their_boxes[:, 0]) > 1) & (
        (their_boxes[:, 3] - their_boxes[:, 1]) > 1
    )
    their_boxes, their_cls = their_boxes[keep], their_labels[keep, 4]
    key = lambda b: np.lexsort(np.round(b, 0).T[::-1])  # noqa: E731
    assert len(boxes) == len(their_boxes)
    np.testing.assert_allclose(boxes[key(boxes)], their_boxes[key(their_boxes)], atol=1.5)
    np.testing.assert_array_equal(labels[key(boxes)], their_cls[key(their_boxes)])
