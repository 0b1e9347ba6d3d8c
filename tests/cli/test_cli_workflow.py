"""The train -> eval -> predict commands as a user runs them, on a tiny generated dataset."""

from __future__ import annotations

import json
from pathlib import Path

from detector.cli import main


def test_train_writes_the_run_layout(trained: Path) -> None:
    for name in ("weights/last.pt", "weights/best.pt", "metrics.csv", "metrics.png",
                 "config.yaml", "pr_curves.png", "confusion_matrix.png",
                 "val_predictions.png"):  # fmt: skip
        assert (trained / name).is_file(), name


def test_eval_writes_coco_json(trained: Path, tiny_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "metrics.json"
    code = main(["eval", "--weights", str(trained / "weights/best.pt"), "--data",
                 str(tiny_data), "--json", str(out), "--voc"])  # fmt: skip
    assert code == 0
    metrics = json.loads(out.read_text())
    assert {"mAP", "mAP50", "voc_mAP50"} <= set(metrics)
    assert 0.0 <= metrics["mAP"] <= metrics["mAP50"] <= 1.0
    assert "Average Precision" in capsys.readouterr().out


def test_predict_writes_images_and_json(trained: Path, tiny_data: Path, tmp_path: Path) -> None:
    images = sorted((tiny_data.parent / "images").glob("*.jpg"))[:3]
    code = main(["predict", "--model", str(trained / "weights/best.pt"),
                 *map(str, images), "--out", str(tmp_path / "pred"), "--conf", "0.01"])  # fmt: skip
    assert code == 0
    records = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert [Path(r["image"]).name for r in records] == [p.name for p in images]
    for image in images:
        assert (tmp_path / "pred" / image.name).is_file()


def test_errors_name_what_is_wrong(tiny_data: Path, tmp_path: Path, capsys) -> None:
    assert main(["train", "--model", "yolox_nano", "--data", str(tiny_data), "epoch=3"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
    missing = tmp_path / "missing.pt"
    assert main(["eval", "--weights", str(missing), "--data", str(tiny_data)]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """``detector demo`` in one process: it generates data with OpenCV, then forks loader
    workers (OpenCV's thread pool does not survive fork unless shut down first: this hung)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "detector", "demo", "--out", str(tmp_path), "--images", "40",
           "--epochs", "2", "--imgsz", "128", "--workers", "2", "--device", "cpu"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "demo done: val mAP" in result.stdout
    assert (tmp_path / "metrics.json").is_file()
    assert len(list((tmp_path / "served").glob("*.jpg"))) == 8  # annotated by the server
