"""End-to-end training: a small model memorises a few images, a killed run resumes exactly,
two processes train together (gloo), and checkpoints are written atomically."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detector.models import build_model, read_checkpoint
from detector.training.checkpoint import save_atomic
from detector.training.launch import train

REPO = Path(__file__).resolve().parents[2]
QUICK = ["batch=4", "imgsz=128", "workers=0", "plots=false", "device=cpu"]


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_nano_memorises_a_few_images(memorise_data: Path, tmp_path: Path) -> None:
    """Loss falls and mAP@0.5 on the training images passes a bound; fine-tuning starts from
    an official-format checkpoint with 80 classes (the class predictions are re-initialised)."""
    official = tmp_path / "official_nano.pth"
    torch.save({"model": build_model("yolox_nano", num_classes=80).state_dict()}, official)
    run_dir = train(
        "yolox_nano",
        memorise_data,
        [
            *QUICK,
            "epochs=40",
            "eval_interval=40",
            f"output_dir={tmp_path}",
            "name=memorise",
            "optimizer=adamw",
            "lr_per_64=0.08",
            "augment.mosaic_prob=0",
            "augment.hsv_prob=0",
            "augment.flip_prob=0",
            "ema=false",
            "warmup_epochs=1",
            "no_aug_epochs=0",
        ],  # fmt: skip
        weights=official,
    )
    rows = read_metrics(run_dir)
    assert len(rows) == 40
    first, last = float(rows[0]["total"]), float(rows[-1]["total"])
    assert last < 0.5 * first, (first, last)
    assert float(rows[-1]["mAP50"]) > 0.5, rows[-1]
    # the loader's share of each epoch is recorded: a part of the epoch's time, never more
    assert all(0.0 <= float(r["data_wait_s"]) <= float(r["epoch_s"]) for r in rows)
    best = read_checkpoint(run_dir / "weights" / "best.pt")
    assert best["meta"]["class_names"] == ["circle", "rectangle", "triangle"]
    assert best["meta"]["model_name"] == "yolox_nano"


def _train_cmd(data: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "detector", "train", "--model", "yolox_nano", "--data", str(data),
        *QUICK, "epochs=4", "eval_interval=2", f"output_dir={out}", f"name={name}", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_killed_run_resumes_to_the_same_result(tiny_data: Path, tmp_path: Path) -> None:
    """SIGKILL mid-run, then --resume: the same optimizer steps and the same final weights as an
    uninterrupted run, and the checkpoint left by the kill loads."""
    subprocess.run(_train_cmd(tiny_data, tmp_path, "straight"), check=True, env=_env(),
                   capture_output=True, timeout=600)  # fmt: skip
    straight = read_checkpoint(tmp_path / "straight" / "weights" / "last.pt")

    proc = subprocess.Popen(_train_cmd(tiny_data, tmp_path, "killed"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    last = tmp_path / "killed" / "weights" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = read_checkpoint(last)  # loads: the kill left no half-written file
    assert 1 <= killed["epoch"] < 4, "the kill should land before the run finished"

    subprocess.run(
        [sys.executable, "-m", "detector", "train", "--resume", str(tmp_path / "killed")],
        check=True, env=_env(), capture_output=True, timeout=600,
    )  # fmt: skip
    resumed = read_checkpoint(last)
    assert resumed["epoch"] == straight["epoch"] == 4
    assert resumed["iteration"] == straight["iteration"]
    assert resumed["ema_updates"] == straight["ema_updates"] == straight["iteration"]
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=1e-4, atol=1e-5)
    rows = read_metrics(tmp_path / "killed")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_two_processes(data: Path, out: Path, options: list[str]) -> list[str]:
    """``torchrun --nproc_per_node 2 -m detector train`` of nano for 2 epochs into ``out/ddp``."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "detector", "train", "--model", "yolox_nano", "--data", str(data),
        *options, "epochs=2", "eval_interval=2", f"output_dir={out}", "name=ddp",
    ]  # fmt: skip


def test_two_processes_train_with_gloo(tiny_data: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes: one run directory, written by rank 0, with the steps of
    one epoch over the whole dataset."""
    cmd = torchrun_two_processes(tiny_data, tmp_path, QUICK)
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    ckpt = read_checkpoint(tmp_path / "ddp" / "weights" / "last.pt")
    train_images = 26
    assert ckpt["iteration"] == 2 * (train_images // 4)  # each rank: half the images, batch 2
    rows = read_metrics(tmp_path / "ddp")
    assert len(rows) == 2 and rows[-1]["mAP"] != ""


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure (or kill) in the middle of writing leaves the previous checkpoint intact."""
    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1}, path)

    def broken_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
