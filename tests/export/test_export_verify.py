"""Verification after export: passes for the right weights, fails loudly for the wrong ones, and
never leaves a failed file marked verified; ``export check`` errors name the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import lively_checkpoint

from detector.cli import main
from export.onnx import export_onnx, load_model
from export.verify import TOLERANCES, is_verified, sample_images, verify_onnx


@pytest.fixture(scope="module")
def exported(nano_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("verify")
    out = folder / "nano.onnx"
    assert main(["export", "onnx", "--weights", str(nano_ckpt), "--out", str(out),
                 "--imgsz", "96", "--dynamic"]) == 0  # fmt: skip
    return out


def test_export_verifies_and_records_it(exported, nano_ckpt, capsys):
    assert is_verified(exported)
    code = main(["export", "check", str(exported), "--weights", str(nano_ckpt)])
    out = capsys.readouterr().out
    assert code == 0
    assert "largest difference vs PyTorch" in out and "OK: matches PyTorch" in out
    assert "batch 1/3" in out  # a dynamic model is checked at batch 1 and 3


def test_wrong_weights_fail_and_unmark(exported, tmp_path, capsys):
    exported = Path(shutil.copy(exported, tmp_path / "copy.onnx"))
    assert is_verified(exported)
    other = lively_checkpoint(tmp_path / "other.pt", "yolox_nano", seed=9, imgsz=96)
    code = main(["export", "check", str(exported), "--weights", str(other)])
    captured = capsys.readouterr()
    assert code == 1
    assert "FAILED" in captured.out and "outputs differ beyond tolerance" in captured.out
    assert str(exported) in captured.err and "not marked verified" in captured.err
    assert not is_verified(exported)  # the earlier pass is no longer claimed


def test_report_figures(nano_ckpt, tmp_path):
    out = export_onnx(nano_ckpt, tmp_path / "m.onnx", imgsz=96, batch=2)
    model, _ = load_model(nano_ckpt)
    images, source = sample_images(2)
    report = verify_onnx(out, model, images=images, record=False)
    assert report.ok, report.summary()
    assert report.batches == [2] and report.tolerance == TOLERANCES["fp32"]
    assert 0 < report.max_box_diff < 1e-4 * report.box_scale
    assert report.detections_torch == report.detections_onnx > 0
    assert not is_verified(out)  # record=False leaves the file as it was


def test_check_bad_files_name_the_file(exported, nano_ckpt, tmp_path, capsys):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported.read_bytes()[:2000])
    assert main(["export", "check", str(truncated), "--weights", str(nano_ckpt)]) == 2
    assert str(truncated) in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)))
    assert main(["export", "check", str(corrupt), "--weights", str(nano_ckpt)]) == 2
    assert str(corrupt) in capsys.readouterr().err
    missing = tmp_path / "missing.pt"
    assert main(["export", "check", str(exported), "--weights", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert onnx.load(str(exported))  # the good file is untouched by these
