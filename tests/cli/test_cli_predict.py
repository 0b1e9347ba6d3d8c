"""``detector predict`` on a checkpoint and on its ONNX export: one vocabulary, one output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detector.cli import main
from export.onnx import export_onnx


@pytest.fixture(scope="module")
def onnx_model(lively: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("predict_onnx") / "model.onnx"
    export_onnx(lively, out)
    return out


@pytest.fixture(scope="module")
def images(tiny_data: Path) -> list[Path]:
    return sorted((tiny_data.parent / "images").glob("*.jpg"))[:3]


def predict(out: Path, *args: str) -> tuple[int, list[dict]]:
    code = main(["predict", *args, "--out", str(out)])
    path = out / "predictions.json"
    return code, json.loads(path.read_text()) if path.is_file() else []


def test_onnx_gives_the_checkpoints_detections(
    lively: Path, onnx_model: Path, images: list[Path], tmp_path: Path
) -> None:
    sources = [str(p) for p in images]
    code_pt, from_pt = predict(tmp_path / "pt", "--model", str(lively), *sources, "--conf",
                               "0.3")  # fmt: skip
    code_onnx, from_onnx = predict(tmp_path / "onnx", "--model", str(onnx_model), *sources,
                                   "--conf", "0.3")  # fmt: skip
    assert code_pt == code_onnx == 0
    assert [r["image"] for r in from_pt] == [r["image"] for r in from_onnx] == sources
    for a, b in zip(from_pt, from_onnx):
        assert 0 < len(a["detections"]) == len(b["detections"]) < 300, a["image"]

        # equal scores (saturated sigmoids) may come in either order: compare sorted by box
        def by_box(d: dict) -> tuple:
            return (d["class_id"], *d["box"])

        for da, db in zip(sorted(a["detections"], key=by_box), sorted(b["detections"], key=by_box)):
            assert (da["class_id"], da["class_name"]) == (db["class_id"], db["class_name"])
            np.testing.assert_allclose(da["box"], db["box"], atol=1e-3)
            assert da["score"] == pytest.approx(db["score"], abs=1e-4)


def test_classes_by_name_and_max_det(onnx_model: Path, images: list[Path], tmp_path: Path) -> None:
    glob = str(images[0].parent / "*.jpg")  # a quoted glob, expanded by predict itself
    _, everything = predict(tmp_path / "all", "--model", str(onnx_model), glob, "--conf", "0.2")
    assert len(everything) == len(list(images[0].parent.glob("*.jpg")))
    found = [d["class_name"] for r in everything for d in r["detections"]]
    assert len(set(found)) >= 2, "need two classes among the detections to test the filter"
    name = found[0]
    _, only = predict(tmp_path / "one", "--model", str(onnx_model), glob, "--conf", "0.2",
                      "--classes", name)  # fmt: skip
    kept = [d for r in only for d in r["detections"]]
    assert kept and {d["class_name"] for d in kept} == {name}
    assert len(kept) == found.count(name)
    _, capped = predict(tmp_path / "cap", "--model", str(onnx_model), glob, "--conf", "0.2",
                        "--max-det", "2")  # fmt: skip
    assert max(len(r["detections"]) for r in capped) == 2
    for full, cut in zip(everything, capped):
        assert cut["detections"] == full["detections"][:2]


def test_unknown_class_lists_the_valid_names(onnx_model: Path, images: list[Path], capsys) -> None:
    assert main(["predict", "--model", str(onnx_model), str(images[0]), "--classes", "dragon"]) == 2
    err = capsys.readouterr().err
    assert "dragon" in err and "valid names" in err


def test_corrupt_image_is_reported_and_skipped(
    lively: Path, images: list[Path], tmp_path: Path, capsys
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    sources = [str(images[0]), str(broken), str(images[1])]
    code, records = predict(tmp_path / "pred", "--model", str(lively),
                            *sources)  # fmt: skip
    assert code == 1
    assert f"skipped {broken}: not a readable image" in capsys.readouterr().out
    assert [r["image"] for r in records] == [str(images[0]), str(images[1])]
    assert (tmp_path / "pred" / images[0].name).is_file()
    assert (tmp_path / "pred" / images[1].name).is_file()
    missing = tmp_path / "nowhere.jpg"
    assert main(["predict", "--model", str(lively), str(missing)]) == 2
    assert "nowhere.jpg" in capsys.readouterr().err


def test_save_txt_writes_yolo_lines(onnx_model: Path, images: list[Path], tmp_path: Path) -> None:
    import cv2

    code, records = predict(tmp_path, "--model", str(onnx_model), str(images[0]), "--conf",
                            "0.01", "--save-txt")  # fmt: skip
    assert code == 0
    lines = (tmp_path / "labels" / f"{images[0].stem}.txt").read_text().splitlines()
    detections = records[0]["detections"]
    assert len(lines) == len(detections) > 0
    height, width = cv2.imread(str(images[0])).shape[:2]
    for line, det in zip(lines, detections):
        label, cx, cy, w, h = line.split()
        x1, y1, x2, y2 = det["box"]
        assert int(label) == det["class_id"]
        np.testing.assert_allclose(
            [float(cx), float(cy), float(w), float(h)],
            [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height],
            atol=1e-5,
        )


def test_nms_is_not_a_predict_flag(onnx_model: Path, images: list[Path], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", str(onnx_model), str(images[0]), "--nms", "0.5"])
    assert exit_info.value.code == 2
    assert "--nms" in capsys.readouterr().err
