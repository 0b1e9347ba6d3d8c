"""Our augmentation primitives against the official YOLOX ones, fed the same random draws
(skipped where the reference ``yolox`` package is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

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

    from detector.data.augment import _tile_placement

    rng = np.random.default_rng(0)
    for _ in range(200):
        size = (int(rng.integers(64, 700)), int(rng.integers(64, 700)))
        xc, yc = int(rng.uniform(0.5, 1.5) * size[1]), int(rng.uniform(0.5, 1.5) * size[0])
        w, h = int(rng.integers(8, size[1] + 1)), int(rng.integers(8, size[0] + 1))
        for k in range(4):
            theirs = get_mosaic_coordinate(None, k, xc, yc, w, h, size[0], size[1])
            assert _tile_placement(k, xc, yc, w, h, size) == tuple(theirs)
