"""What a finished run does with --resume, and a checkpoint of another size given as --weights."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from detector.cli import main
from detector.models import CheckpointError
from detector.training.launch import train

QUICK = ["batch=4", "imgsz=128", "workers=0", "plots=false", "device=cpu", "threads=1"]


@pytest.fixture(scope="module")
def finished_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete 1-epoch yolox_nano run on the tiny generated dataset."""
    out = tmp_path_factory.mktemp("runs")
    return train("yolox_nano", tiny_data, [*QUICK, "epochs=1", f"output_dir={out}", "name=done"])


def test_resume_of_a_finished_run_says_it_is_complete(finished_run: Path, caplog, capsys):
    last = finished_run / "weights" / "last.pt"
    before = last.stat().st_mtime_ns, (finished_run / "metrics.csv").read_text()
    with caplog.at_level(logging.INFO, logger="detector.training.launch"):
        assert main(["train", "--resume", str(finished_run)]) == 0
    assert f"{finished_run} is already complete (1 of 1 epochs trained)" in caplog.text
    assert "epochs=N" in caplog.text
    assert "resumed after epoch" not in caplog.text  # nothing was loaded or trained
    assert (last.stat().st_mtime_ns, (finished_run / "metrics.csv").read_text()) == before
    assert sorted(p.name for p in finished_run.parent.iterdir()) == ["done"]  # no new run


def test_our_checkpoint_into_another_model_stops_before_training(
    finished_run: Path, tiny_data: Path, tmp_path: Path, capsys
):
    weights = finished_run / "weights" / "best.pt"
    with pytest.raises(CheckpointError, match=r"best\.pt: checkpoint is yolox_nano, not yolox_s"):
        train("yolox_s", tiny_data, [*QUICK, "epochs=1", f"output_dir={tmp_path}"], weights=weights)
    assert list(tmp_path.iterdir()) == []  # no run directory was started
    code = main(["train", "--model", "yolox_tiny", "--data", str(tiny_data),
                 "--weights", str(weights), *QUICK, f"output_dir={tmp_path}"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        f"error: {weights}: checkpoint is yolox_nano, not yolox_tiny (pass --model yolox_nano, "
        "or start yolox_tiny from an official yolox_tiny .pth or from scratch)"
    )
