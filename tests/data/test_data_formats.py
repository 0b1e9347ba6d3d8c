"""The three readers agree: BCCD in VOC and COCO form, and a YOLO copy made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from data_paths import BCCD_COCO, BCCD_VOC

from detector.core.boxes import xyxy_to_cxcywh
from detector.data import build_dataset, load_data_config
from detector.data.dataset import DetectionDataset


def _by_name(dataset: DetectionDataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for record in dataset.records:
        order = np.lexsort(np.c_[np.round(record.boxes, 1), record.labels].T)
        out[record.path.name] = (record.boxes[order], record.labels[order])
    return out


def _assert_same(a: DetectionDataset, b: DetectionDataset, atol: float = 0.0) -> None:
    ta, tb = _by_name(a), _by_name(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        np.testing.assert_allclose(ta[name][0], tb[name][0], atol=atol, err_msg=name)
        np.testing.assert_array_equal(ta[name][1], tb[name][1], err_msg=name)


def test_coco_and_voc_give_identical_targets_on_bccd():
    voc, coco = load_data_config(BCCD_VOC), load_data_config(BCCD_COCO)
    for split in ("train", "val"):
        a, b = build_dataset(voc, split), build_dataset(coco, split)
        assert len(a) == len(b) > 0
        _assert_same(a, b)
    sample = b.load(0)
    assert sample.image.dtype == np.uint8 and sample.image.shape[2] == 3
    assert sample.boxes.dtype == np.float32 and sample.labels.dtype == np.int64


def test_yolo_copy_of_bccd_agrees(tmp_path: Path):
    coco = build_dataset(load_data_config(BCCD_COCO), "val")
    images, labels = tmp_path / "images/val", tmp_path / "labels/val"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for record in coco.records[:20]:
        (images / record.path.name).symlink_to(record.path)
        scale = np.array([record.width, record.height] * 2, np.float32)
        rows = xyxy_to_cxcywh(record.boxes) / scale
        lines = [f"{c} " + " ".join(f"{v:.8f}" for v in row) for c, row in zip(record.labels, rows)]
        (labels / f"{record.path.stem}.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "data.yaml").write_text(
        f"path: {tmp_path}\ntrain: images/val\nval: images/val\nnames: {{0: RBC, 1: WBC, 2: P}}\n"
    )
    yolo = build_dataset(load_data_config(tmp_path / "data.yaml"), "val")
    coco.records = coco.records[:20]
    _assert_same(yolo, coco, atol=1e-3)


def test_coco_non_contiguous_ids_map_and_map_back(tmp_path: Path):
    (tmp_path / "images").mkdir()
    import cv2

    cv2.imwrite(str(tmp_path / "images/a.png"), np.zeros((50, 60, 3), np.uint8))
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": 60, "height": 50}],
        "categories": [{"id": 90, "name": "z"}, {"id": 3, "name": "a"}, {"id": 17, "name": "m"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 17, "bbox": [1, 2, 10, 20], "area": 200},
            {"id": 2, "image_id": 7, "category_id": 90, "bbox": [5, 5, 4, 4], "area": 12.5},
            {
                "id": 3,
                "image_id": 7,
                "category_id": 3,
                "bbox": [0, 0, 30, 30],
                "area": 700,
                "iscrowd": 1,
            },
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    (tmp_path / "d.yaml").write_text("format: coco\ntrain: ann.json\nval: ann.json\n")
    cfg = load_data_config(tmp_path / "d.yaml")
    assert cfg.names == ["a", "m", "z"]
    ds = build_dataset(cfg, "train")
    assert ds.category_ids == [3, 17, 90]
    np.testing.assert_array_equal(ds.records[0].labels, [1, 2])
    np.testing.assert_array_equal(ds.records[0].boxes[0], [1, 2, 11, 22])
    assert len(ds.records[0].labels) == 2  # the crowd region is no training target
    gt = ds.coco_ground_truth()
    assert [a["category_id"] for a in gt["annotations"]] == [17, 90, 3]
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 0, 1]
    assert [a["area"] for a in gt["annotations"]] == [200, 12.5, 700]  # as annotated
    assert gt["annotations"][0]["bbox"] == [1.0, 2.0, 10.0, 20.0]
    assert gt["images"][0] == {"id": 7, "file_name": "a.png", "width": 60, "height": 50}
    assert {c["id"]: c["name"] for c in gt["categories"]} == {3: "a", 17: "m", 90: "z"}
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    assert len(coco.getAnnIds()) == 3
