"""Bad data gets a clear message naming the file (and line / annotation id / object)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.data import DataError, build_dataset, load_data_config


def _coco(tmp_path: Path, annotations: list[dict], policy: str = "error", images=("a.png",)):
    (tmp_path / "images").mkdir(exist_ok=True)
    cv2.imwrite(str(tmp_path / "images/a.png"), np.full((40, 50, 3), 90, np.uint8))
    data = {
        "images": [
            {"id": i + 1, "file_name": f, "width": 50, "height": 40} for i, f in enumerate(images)
        ],  # fmt: skip
        "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
        "annotations": annotations,
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    (tmp_path / "d.yaml").write_text(
        f"format: coco\ntrain: ann.json\nval: ann.json\nimages: images\non_bad_image: {policy}\n"
    )
    return load_data_config(tmp_path / "d.yaml")


def _ann(i: int, bbox: list[float], cat: int = 1, image_id: int = 1) -> dict:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": 1.0}


def _yolo(tmp_path: Path, label_text: str) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images/im.jpg"), np.full((32, 32, 3), 50, np.uint8))
    (tmp_path / "labels/im.txt").write_text(label_text)
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images\nval: images\nnames: [a, b]\n")
    return tmp_path / "data.yaml"


def test_missing_image_stops_by_default_and_names_it(tmp_path: Path):
    cfg = _coco(tmp_path, [], images=("a.png", "gone.png"))
    with pytest.raises(DataError, match=r"gone\.png: image not found"):
        build_dataset(cfg, "train")


def test_missing_image_skipped_and_counted_once(tmp_path: Path, caplog):
    cfg = _coco(tmp_path, [], policy="skip", images=("a.png", "gone.png", "gone2.png"))
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(cfg, "train")
    assert len(ds) == 1
    lines = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert len(lines) == 1 and "skipped 2 missing images" in lines[0] and "gone.png" in lines[0]


def test_undecodable_image_names_the_file(tmp_path: Path, caplog):
    cfg = _coco(tmp_path, [_ann(1, [1, 1, 5, 5])], images=("a.png", "broken.png"))
    (tmp_path / "images/broken.png").write_bytes(b"not an image at all")
    ds = build_dataset(cfg, "train")
    with pytest.raises(DataError, match=r"broken\.png: cannot decode image"):
        ds.load(1)
    ds.on_bad_image = "skip"
    with caplog.at_level(logging.WARNING):
        sample = ds.load(1)
    assert sample.path.name == "a.png"  # the next readable image stands in
    assert any("broken.png" in r.getMessage() for r in caplog.records)


def test_unreadable_yolo_image_names_the_file(tmp_path: Path):
    path = _yolo(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "images/bad.jpg").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match=r"bad\.jpg: cannot read image"):
        build_dataset(load_data_config(path), "train")


def test_yolo_class_out_of_range_names_file_and_line(tmp_path: Path):
    path = _yolo(tmp_path, "0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"im\.txt:2: class id 5 out of range \[0, 2\)"):
        build_dataset(load_data_config(path), "train")


@pytest.mark.parametrize(
    "line", ["0 0.5 0.5 0.2", "a 0.5 0.5 0.2 0.2", "0 0.5 x 0.2 0.2", "0 0.1 0.1 0.2 0.2 0.3"]
)
def test_yolo_malformed_line_names_file_and_line(tmp_path: Path, line: str):
    path = _yolo(tmp_path, f"1 0.5 0.5 0.2 0.2\n\n{line}\n")
    with pytest.raises(DataError, match=r"im\.txt:3: malformed line"):
        build_dataset(load_data_config(path), "train")


def test_coco_unknown_category_names_file_and_annotation(tmp_path: Path):
    cfg = _coco(tmp_path, [_ann(1, [1, 1, 5, 5]), _ann(42, [1, 1, 5, 5], cat=9)])
    with pytest.raises(DataError, match=r"ann\.json: annotation id 42: category_id 9"):
        build_dataset(cfg, "train")


def test_coco_malformed_bbox_names_annotation(tmp_path: Path):
    cfg = _coco(tmp_path, [_ann(7, [1, 1, 5])])
    with pytest.raises(DataError, match=r"ann\.json: annotation id 7: bbox"):
        build_dataset(cfg, "train")


def test_voc_unknown_class_names_the_xml(tmp_path: Path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "ImageSets/Main").mkdir(parents=True)
    (tmp_path / "JPEGImages").mkdir()
    cv2.imwrite(str(tmp_path / "JPEGImages/x1.jpg"), np.zeros((20, 20, 3), np.uint8))
    (tmp_path / "ImageSets/Main/train.txt").write_text("x1\n")
    (tmp_path / "Annotations/x1.xml").write_text(
        "<annotation><filename>x1.jpg</filename><size><width>20</width><height>20</height>"
        "</size><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>"
        "<ymax>9</ymax></bndbox></object></annotation>"
    )
    (tmp_path / "d.yaml").write_text("format: voc\ntrain: train\nval: train\nnames: [cat]\n")
    with pytest.raises(DataError, match=r"x1\.xml: object 0 \('dog'\): class not in names"):
        build_dataset(load_data_config(tmp_path / "d.yaml"), "train")


def test_boxes_clipped_and_degenerate_dropped_with_one_log_line(tmp_path: Path, caplog):
    cfg = _coco(tmp_path, [
        _ann(1, [-5, 2, 20, 10]),      # partly outside: clipped
        _ann(2, [40, 30, 30, 30]),     # partly outside: clipped
        _ann(3, [10, 10, 0.5, 8]),     # under 1 px wide: dropped
        _ann(4, [60, 10, 5, 5]),       # wholly outside: dropped
        _ann(5, [10, 10, 8, 8], 2),    # fine
    ])  # fmt: skip
    with caplog.at_level(logging.INFO):
        ds = build_dataset(cfg, "train")
    boxes = ds.records[0].boxes
    np.testing.assert_array_equal(boxes, [[0, 2, 15, 12], [40, 30, 50, 40], [10, 10, 18, 18]])
    np.testing.assert_array_equal(ds.records[0].labels, [0, 0, 1])
    lines = [r.getMessage() for r in caplog.records if "clipped" in r.getMessage()]
    assert len(lines) == 1 and "clipped 2 boxes" in lines[0] and "dropped 2" in lines[0]


def test_yolo_image_without_label_file_has_no_boxes_and_skip_counts_bad(tmp_path: Path, caplog):
    path = _yolo(tmp_path, "1 0.5 0.5 0.5 0.25\n")
    cv2.imwrite(str(tmp_path / "images/nolabel.jpg"), np.full((16, 24, 3), 50, np.uint8))
    (tmp_path / "images/bad.jpg").write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(load_data_config(path, ["on_bad_image=skip"]), "train")
    assert sorted(r.path.name for r in ds.records) == ["im.jpg", "nolabel.jpg"]
    by_name = {r.path.name: r for r in ds.records}
    assert by_name["nolabel.jpg"].boxes.shape == (0, 4)
    np.testing.assert_allclose(by_name["im.jpg"].boxes, [[8, 12, 24, 20]])
    assert any("skipped 1 unreadable images" in r.getMessage() for r in caplog.records)


def test_yolo_polygon_line_counts_as_its_box(tmp_path: Path):
    path = _yolo(tmp_path, "1 0.25 0.5 0.75 0.25 0.5 0.75\n")
    ds = build_dataset(load_data_config(path), "train")
    np.testing.assert_allclose(ds.records[0].boxes, [[8, 8, 24, 24]])
