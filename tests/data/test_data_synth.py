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


def test_lookalike_objects_carry_their_class_only_in_the_symbol():
    """Every object is a pale card; its centre is the dark symbol, except for the hollow ring."""
    import cv2

    spec = SynthSpec(image_size=(160, 200), object_size=(60, 90), objects=(1, 1), clutter=0,
                     lookalike=True, relative_min=0.3)  # fmt: skip
    seen = set()
    for i in range(30):
        image, boxes, labels = synth_image(np.random.default_rng([4, i]), spec)
        (x0, y0, x1, y1), label = boxes[0], int(labels[0])
        if min(x0, y0) <= 0 or x1 >= image.shape[1] or y1 >= image.shape[0]:
            continue  # cut by the frame: the centre is not the card's
        value = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[..., 2]
        centre = value[int((y0 + y1) / 2), int((x0 + x1) / 2)]
        assert (centre > 150) if label == CLASS_NAMES.index("ring") else (centre < 110), label
        seen.add(label)
    assert len(seen) >= 4


def test_synth_cli_options_and_bad_values(tmp_path: Path, capsys):
    from detector.cli import main

    out = tmp_path / "look"
    args = ["--images", "6", "--lookalike", "--objects", "1", "3", "--classes", "3",
            "--object-size", "30", "90", "--clutter", "0"]  # fmt: skip
    assert main(["data", "synth", "--out", str(out), *args]) == 0
    train = json.loads((out / "annotations/instances_train.json").read_text())
    per_image: dict[int, int] = {}
    for ann in train["annotations"]:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
        assert ann["category_id"] in (1, 2, 3)
    assert all(1 <= n <= 3 for n in per_image.values())
    assert [c["name"] for c in train["categories"]] == list(CLASS_NAMES[:3])
    assert main(["data", "synth", "--out", str(tmp_path / "bad"), "--classes", "9"]) == 2
    assert "num_classes must be 1-5" in capsys.readouterr().err
