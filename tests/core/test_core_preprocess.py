"""The torch-free letterbox: geometry, round trip of boxes, equality with YOLOX's ``preproc``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from detector.core.preprocess import (
    PAD_VALUE,
    boxes_to_original,
    letterbox,
    letterbox_ratio,
    preprocess,
)

GOLDEN = Path(__file__).parent.parent / "models" / "golden" / "preproc.npz"
HAVE_YOLOX = importlib.util.find_spec("yolox") is not None


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("hw,size", [((45, 131), (64, 96)), ((97, 40), (64, 96)), ((64, 96), 32)])
def test_letterbox_top_left_and_padded(hw, size):
    canvas, ratio = letterbox(image(*hw), size)
    out_h, out_w = (size, size) if isinstance(size, int) else size
    assert canvas.shape == (out_h, out_w, 3) and canvas.dtype == np.uint8
    assert ratio == min(out_h / hw[0], out_w / hw[1])
    new_h, new_w = int(hw[0] * ratio), int(hw[1] * ratio)
    assert (canvas[new_h:] == PAD_VALUE).all() and (canvas[:, new_w:] == PAD_VALUE).all()


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(8, 400),
    w=st.integers(8, 400),
    size=st.sampled_from([32, 64, (64, 96), (96, 64)]),
    fractions=st.lists(st.tuples(*[st.floats(0, 1, allow_nan=False)] * 4), min_size=1, max_size=5),
)
def test_boxes_round_trip(h, w, size, fractions):
    """A box in the original image, mapped onto the letterboxed input and back, lands where it
    started."""
    ratio = letterbox_ratio((h, w), size)
    assume(int(h * ratio) >= 1 and int(w * ratio) >= 1)  # see test_extreme_aspect_ratio
    _, ratio = letterbox(np.zeros((h, w, 3), np.uint8), size)
    f = np.array(fractions)
    x1, x2 = np.minimum(f[:, 0], f[:, 2]) * w, np.maximum(f[:, 0], f[:, 2]) * w
    y1, y2 = np.minimum(f[:, 1], f[:, 3]) * h, np.maximum(f[:, 1], f[:, 3]) * h
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    on_input = boxes * ratio
    np.testing.assert_allclose(
        boxes_to_original(on_input, ratio, (h, w)), boxes, rtol=1e-5, atol=1e-3
    )


def test_extreme_aspect_ratio():
    """A very thin image still gets at least one row instead of an OpenCV error."""
    canvas, _ = letterbox(image(8, 257), 32)
    assert canvas.shape == (32, 32, 3)


def test_boxes_to_original_clips():
    out = boxes_to_original(np.array([[-4.0, -2.0, 80.0, 60.0]]), 0.5, (100, 120))
    assert out.tolist() == [[0.0, 0.0, 120.0, 100.0]]


def test_preprocess_layout():
    chw, ratio = preprocess(image(45, 131), (64, 96))
    canvas, same_ratio = letterbox(image(45, 131), (64, 96))
    assert chw.shape == (3, 64, 96) and chw.dtype == np.float32 and chw.flags.c_contiguous
    assert ratio == same_ratio
    np.testing.assert_array_equal(chw, canvas.transpose(2, 0, 1).astype(np.float32))


@pytest.mark.parametrize("tag", ["wide", "tall"])
def test_equals_official_preproc_golden(tag):
    """Golden output of yolox.data.data_augment.preproc (benchmarks/models_golden.py)."""
    golden = np.load(GOLDEN)
    chw, ratio = preprocess(golden[f"{tag}_image"], (64, 96))
    assert ratio == float(golden[f"{tag}_ratio"])
    np.testing.assert_array_equal(chw, golden[f"{tag}_input"])


@pytest.mark.skipif(not HAVE_YOLOX, reason="official yolox package not installed (optional)")
@pytest.mark.parametrize(
    "hw,size", [((45, 131), (64, 96)), ((480, 640), (416, 416)), ((7, 9), (64, 64))]
)
def test_equals_official_preproc_live(hw, size):
    from yolox.data.data_augment import preproc

    img = image(*hw, seed=3)
    expected, expected_ratio = preproc(img, size)
    chw, ratio = preprocess(img, size)
    assert ratio == expected_ratio
    np.testing.assert_array_equal(chw, expected)
