"""The generated dataset: deterministic, COCO-valid, objects within the promised ranges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from detector.data import build_dataset, load_data_config
from detector.data.synth import CLASS_NAMES, SynthSpec, make_synthetic_dataset, synth_image


def test_same_seed_same_files(tmp_path: Path):
    spec = SynthSpec(image_size=(64, 96), objects=(0, 5))
    a = make_synthetic_dataset(tmp_path / "a", images=6, seed=7, spec=spec)
    b = make_synthetic_dataset(tmp_path / "b", images=6, seed=7, spec=spec)
    c = make_synthetic_dataset(tmp_path / "c", images=6, seed=8, spec=spec)
    for name in ("annotations/instances_train.json", "images/000003.jpg"):
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes()
    assert (a.parent / "images/000003.jpg").read_bytes() != (
        c.parent / "images/000003.jpg"
    ).read_bytes()


def test_default_images_cover_the_promised_ranges():
    sizes, counts, widths, labels = set(), [], [], set()
    for i in range(30):
        image, boxes, lab = synth_image(np.random.default_rng([0, i]))
        sizes.add(image.shape[:2])
        counts.append(len(boxes))
        widths += np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).tolist()
        labels |= set(lab.tolist())
        assert (
            image.dtype == np.uint8 and 320 <= min(image.shape[:2]) <= max(image.shape[:2]) <= 640
        )
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= image.shape[1]).all()
        assert (boxes[:, 3] <= image.shape[0]).all()
    assert len(sizes) > 20 and max(counts) <= 20 and min(counts) < max(counts)
    assert min(widths) >= 8 and max(widths) <= 300 * 1.5 and max(widths) > 150
    assert labels == set(range(len(CLASS_NAMES)))


def test_data_yaml_loads_with_both_splits(small_synth: Path):
    cfg = load_data_config(small_synth)
    assert cfg.format == "coco" and cfg.names == list(CLASS_NAMES[:3])
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) + len(val) == 24 and len(val) >= 1
    gt = json.loads((small_synth.parent / "annotations/instances_val.json").read_text())
    assert {a["category_id"] for a in gt["annotations"]} <= {1, 2, 3}
    assert val.coco_ground_truth()["images"][0]["id"] == gt["images"][0]["id"]


def test_demo_spec_objects_are_visible_at_a_320_input():
    """The demo's data: 1-6 objects per image, none of the few-pixel dots of the default spec."""
    spec = SynthSpec.demo()
    counts, sides = [], []
    for i in range(40):
        image, boxes, _ = synth_image(np.random.default_rng([0, i]), spec)
        assert 320 <= min(image.shape[:2]) <= max(image.shape[:2]) <= 480
        counts.append(len(boxes))
        scale = 320 / max(image.shape[:2])  # letterboxed to 320
        sides += (np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * scale).tolist()
    assert 1 <= min(counts) and max(counts) <= 6
    assert np.percentile(sides, 5) >= 12 and max(sides) <= 160 * 1.5


def test_clutter_bounds_the_background_lines():
    """clutter=0 draws no lines: the background is smooth noise only (small local contrast)."""
    plain = SynthSpec(image_size=(96, 96), objects=(0, 0), clutter=0)
    busy = SynthSpec(image_size=(96, 96), objects=(0, 0), clutter=40)

    def edges(spec: SynthSpec) -> float:
        image = synth_image(np.random.default_rng([3, 0]), spec)[0].astype(np.float32)
        return float(np.abs(np.diff(image, axis=1)).max())

    assert edges(busy) > 2 * edges(plain)
