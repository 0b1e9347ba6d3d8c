"""``detector export onnx`` / ``check`` from the command line: files written, clear errors."""

from __future__ import annotations

import pytest
import torch

from detector.cli import main
from detector.models import build_model
from serve.runtime.metadata import read_onnx_metadata


def test_export_onnx_command(nano_ckpt, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code = main(["export", "onnx", "--weights", str(nano_ckpt), "--out", str(out), "--imgsz", "96",
                 "--dynamic"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"wrote {out}" in captured.out
    meta = read_onnx_metadata(out)
    assert meta.batch is None and meta.input_size == (96, 96)


def test_missing_weights_names_the_file(tmp_path, capsys):
    missing = tmp_path / "nowhere.pt"
    code = main(["export", "onnx", "--weights", str(missing), "--out", str(tmp_path / "m.onnx")])
    assert code == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_official_pth_without_model_names_the_file(tmp_path, capsys):
    official = tmp_path / "yolox_nano.pth"  # the official layout: {"model": state_dict}, no meta
    torch.save({"model": build_model("yolox_nano", num_classes=80).state_dict()}, official)
    code = main(["export", "onnx", "--weights", str(official), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2
    assert str(official) in err and "--model" in err
    assert not (tmp_path / "m.onnx").exists()


def test_export_nms_half_command(golden_ckpt, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    options = ["--dynamic", "--nms", "--half", "--conf", "0.5", "--iou", "0.6", "--max-det", "50"]
    code = main(["export", "onnx", "--weights", str(golden_ckpt), "--out", str(out), *options])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "(fp16, nms layout, batch 1/3" in captured.out and "OK: matches PyTorch" in captured.out
    meta = read_onnx_metadata(out)
    assert meta.precision == "fp16" and meta.layout == "nms" and meta.batch is None
    assert (meta.nms.score_threshold, meta.nms.iou_threshold, meta.nms.max_detections) == (
        0.5,
        0.6,
        50,
    )
    assert "verified" in meta.extra


def test_batch_and_dynamic_exclude_each_other(nano_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", "onnx", "--weights", str(nano_ckpt), "--out", str(tmp_path / "m.onnx"),
              "--batch", "2", "--dynamic"])  # fmt: skip
    assert "not allowed with argument" in capsys.readouterr().err
