"""The evaluator's numbers equal pycocotools' on the same detections."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.eval import (
    STAT_NAMES,
    detections_to_coco,
    evaluate_coco,
    format_per_class_table,
)

BCCD_VAL = Path(__file__).resolve().parents[2] / "data/bccd/coco/instances_val.json"


def _bccd_val() -> dict:
    return json.loads(BCCD_VAL.read_text())  # shipped with the repository


def _synthetic_detections(gt: dict, seed: int) -> list[dict]:
    """Jittered gt boxes (some dropped, some relabelled) plus random false positives, with
    seeded random scores."""
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in gt["categories"]]
    sizes = {img["id"]: (img["width"], img["height"]) for img in gt["images"]}
    dets = []
    for ann in gt["annotations"]:
        if rng.random() < 0.15:
            continue  # missed
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0.0, 0.08, size=4) * np.array([w, h, w, h])
        cat = ann["category_id"] if rng.random() > 0.05 else int(rng.choice(cat_ids))
        box = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]
        dets.append(
            {
                "image_id": ann["image_id"],
                "category_id": cat,
                "bbox": [float(v) for v in box],
                "score": float(rng.uniform(0.3, 1.0)),
            }
        )
    for img in gt["images"]:
        width, height = sizes[img["id"]]
        for _ in range(int(rng.integers(0, 6))):
            w, h = rng.uniform(5, 120, size=2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            dets.append(
                {
                    "image_id": img["id"],
                    "category_id": int(rng.choice(cat_ids)),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "score": float(rng.uniform(0.0, 0.7)),
                }
            )
    return dets


def _pycocotools_on_files(gt: dict, dets: list[dict], tmp_path: Path) -> COCOeval:
    """The official recipe, run by hand on JSON files."""
    gt_file = tmp_path / "gt.json"
    dt_file = tmp_path / "dt.json"
    gt_file.write_text(json.dumps(gt))
    dt_file.write_text(json.dumps(dets))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        coco_dt = coco_gt.loadRes(str(dt_file))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _assert_equal_to_pycocotools(gt: dict, dets: list[dict], tmp_path: Path) -> None:
    result = evaluate_coco(gt, dets)
    ev = _pycocotools_on_files(gt, dets, tmp_path)
    ours = [result.stats[name] for name in STAT_NAMES]
    assert ours == [float(v) for v in ev.stats]  # to the last digit
    np.testing.assert_array_equal(result.precision, ev.eval["precision"])
    for k, cls in enumerate(result.per_class):
        p = ev.eval["precision"][:, :, k, 0, 2]
        assert cls.ap == (float(np.mean(p[p > -1])) if (p > -1).any() else -1.0)
        assert cls.ap50 == (float(np.mean(p[0][p[0] > -1])) if (p[0] > -1).any() else -1.0)


def test_equals_pycocotools_on_bccd(tmp_path: Path) -> None:
    gt = _bccd_val()
    dets = _synthetic_detections(gt, seed=0)
    _assert_equal_to_pycocotools(gt, dets, tmp_path)
    result = evaluate_coco(gt, dets)
    assert 0.2 < result.mAP < result.mAP50 < 1.0  # a realistic, non-trivial case
    # with every class present, mAP is the mean of the per-class APs
    assert result.mAP == pytest.approx(np.mean([c.ap for c in result.per_class]), abs=1e-12)
    assert [c.name for c in result.per_class] == ["RBC", "WBC", "Platelets"]
    assert sum(c.num_gt for c in result.per_class) == len(gt["annotations"])


def test_class_without_gt_and_images_without_gt(tmp_path: Path) -> None:
    gt = _bccd_val()
    dets = _synthetic_detections(gt, seed=1)
    gt["categories"].append({"id": 9, "name": "ghost", "supercategory": "none"})
    gt["images"].append({"id": 100000, "file_name": "empty.jpg", "width": 640, "height": 480})
    dets.append(
        {"image_id": 100000, "category_id": 9, "bbox": [1.0, 2.0, 30.0, 40.0], "score": 0.9}
    )
    dets.append(
        {"image_id": 100000, "category_id": 1, "bbox": [5.0, 5.0, 50.0, 40.0], "score": 0.8}
    )
    _assert_equal_to_pycocotools(gt, dets, tmp_path)
    ghost = evaluate_coco(gt, dets).per_class[-1]
    assert (ghost.name, ghost.num_gt, ghost.ap, ghost.ap50) == ("ghost", 0, -1.0, -1.0)


def test_no_detections_gives_zero() -> None:
    gt = _bccd_val()
    result = evaluate_coco(gt, [], with_voc=True)
    assert result.mAP == 0.0 and result.mAP50 == 0.0
    assert all(c.ap == 0.0 and c.ap50 == 0.0 for c in result.per_class)
    assert result.voc is not None and result.voc.map50 == 0.0
    assert result.num_detections == 0


def test_perfect_detections_and_inputs_left_alone() -> None:
    gt = _bccd_val()
    gt_before = copy.deepcopy(gt)
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in gt["annotations"]
    ]
    dets_before = copy.deepcopy(dets)
    result = evaluate_coco(gt, dets, with_voc=True)
    assert result.mAP == 1.0 and result.mAP50 == 1.0
    assert result.voc is not None and result.voc.map50 == 1.0
    assert gt == gt_before and dets == dets_before  # loadRes would add ids/areas in place


def test_json_and_table(tmp_path: Path) -> None:
    gt = _bccd_val()
    result = evaluate_coco(gt, _synthetic_detections(gt, seed=2), with_voc=True)
    path = result.to_json(tmp_path / "sub" / "metrics.json")
    data = json.loads(path.read_text())
    assert data["mAP"] == result.stats["AP"] and data["mAP50"] == result.stats["AP50"]
    assert set(STAT_NAMES) <= set(data)
    assert set(data["per_class"]) == {"RBC", "WBC", "Platelets"}
    assert data["per_class"]["WBC"]["AP"] == result.per_class[1].ap
    assert data["voc"]["mAP50"] == result.voc.map50
    table = format_per_class_table(result)
    lines = table.splitlines()
    assert lines[0].split() == ["class", "gt", "AP", "AP50", "VOC50"]
    assert [line.split()[0] for line in lines[2:]] == ["RBC", "WBC", "Platelets", "all"]
    assert lines[-1].split()[2] == f"{result.mAP:.3f}"


def test_bad_inputs_are_named() -> None:
    gt = _bccd_val()
    det = {"image_id": gt["images"][0]["id"], "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1}
    with pytest.raises(ValueError, match="image_id 424242"):
        evaluate_coco(gt, [{**det, "image_id": 424242}])
    with pytest.raises(ValueError, match="category_id 77"):
        evaluate_coco(gt, [{**det, "category_id": 77}])
    with pytest.raises(ValueError, match="'score'"):
        evaluate_coco(gt, [{k: v for k, v in det.items() if k != "score"}])
    with pytest.raises(ValueError, match="'categories'"):
        evaluate_coco({"images": []}, [])


def test_detections_to_coco() -> None:
    per_image = [
        torch.tensor([[10.0, 20.0, 50.0, 80.0, 0.9, 1.0], [0.0, 0.0, 4.0, 4.0, 0.1, 0.0]]),
        np.zeros((0, 6)),
        None,
        np.array([[1.5, 2.5, 3.5, 5.5, 0.5, 2.0]]),
    ]
    out = detections_to_coco(per_image, [7, 8, 9, 10], category_ids=[3, 5, 11])
    assert out == [
        {
            "image_id": 7,
            "category_id": 5,
            "bbox": [10.0, 20.0, 40.0, 60.0],
            "score": pytest.approx(0.9),
        },
        {
            "image_id": 7,
            "category_id": 3,
            "bbox": [0.0, 0.0, 4.0, 4.0],
            "score": pytest.approx(0.1),
        },
        {"image_id": 10, "category_id": 11, "bbox": [1.5, 2.5, 2.0, 3.0], "score": 0.5},
    ]
    assert all(isinstance(v, float) for d in out for v in d["bbox"])
    with pytest.raises(ValueError, match=r"\[K, 6\]"):
        detections_to_coco([np.zeros((2, 5))], [1], [1])
    with pytest.raises(ValueError, match="class index 3"):
        detections_to_coco([np.array([[0, 0, 1, 1, 0.5, 3]])], [1], [1, 2, 3])
    with pytest.raises(ValueError, match="2 detection arrays but 1 image ids"):
        detections_to_coco([None, None], [1], [1])


def test_detections_to_coco_round_trip() -> None:
    """gt boxes as model output (xyxy, class index) -> COCO results -> perfect score."""
    gt = _bccd_val()
    cat_ids = [c["id"] for c in gt["categories"]]
    image_ids = [img["id"] for img in gt["images"]]
    per_image = []
    for image_id in image_ids:
        anns = [a for a in gt["annotations"] if a["image_id"] == image_id]
        rows = [
            [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
            + [1.0, cat_ids.index(a["category_id"])]
            for a in anns
        ]
        per_image.append(np.array(rows).reshape(-1, 6))
    result = evaluate_coco(gt, detections_to_coco(per_image, image_ids, cat_ids))
    assert result.mAP == pytest.approx(1.0)


def test_minimal_ground_truth_gets_defaults(tmp_path: Path) -> None:
    """Annotations without ``id``/``area``/``iscrowd`` score as if they had the defaults."""
    gt = _bccd_val()
    dets = _synthetic_detections(gt, seed=3)
    minimal = copy.deepcopy(gt)
    for ann in minimal["annotations"]:
        for key in ("id", "area", "iscrowd", "segmentation"):
            ann.pop(key)
    full = copy.deepcopy(gt)
    for n, ann in enumerate(full["annotations"], start=1):
        ann.update(id=n, area=ann["bbox"][2] * ann["bbox"][3], iscrowd=0)
    assert evaluate_coco(minimal, dets).stats == evaluate_coco(full, dets).stats
    _assert_equal_to_pycocotools(full, dets, tmp_path)


def test_scoring_imports_without_torch() -> None:
    """INT8 accuracy checks run scoring on machines without PyTorch: keep it torch-free."""
    import subprocess
    import sys

    code = "import sys, detector.eval, detector.eval.plots; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
