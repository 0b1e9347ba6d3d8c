"""Training on CUDA: float16 autocast with loss scaling, and NCCL DDP.

Skipped where there is no GPU (CI never has one); on a GPU machine run
``pytest tests/training/test_engine_train_cuda.py``.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import torch
from test_engine_train import QUICK, _env, read_metrics, torchrun_two_processes

from detector.models import read_checkpoint
from detector.training.launch import train

GPU_QUICK = [o for o in QUICK if not o.startswith("device=")] + ["device=cuda"]
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (CI and the dev machine have none)"
)


@needs_cuda
def test_cuda_training_uses_float16_with_loss_scaling(tiny_data: Path, tmp_path: Path) -> None:
    run_dir = train(
        "yolox_nano", tiny_data,
        [*GPU_QUICK, "epochs=2", "eval_interval=2", "amp=true",
         f"output_dir={tmp_path}", "name=cuda"],
    )  # fmt: skip
    rows = read_metrics(run_dir)
    assert len(rows) == 2 and all(math.isfinite(float(r["total"])) for r in rows)
    assert rows[-1]["mAP"] != ""
    ckpt = read_checkpoint(run_dir / "weights" / "last.pt")
    assert ckpt["scaler"].get("scale", 0) > 0  # the GradScaler ran and was saved for --resume


@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs for an NCCL run (CI has none)"
)
def test_two_gpus_train_with_nccl(tiny_data: Path, tmp_path: Path) -> None:
    cmd = torchrun_two_processes(tiny_data, tmp_path, GPU_QUICK)
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    rows = read_metrics(tmp_path / "ddp")
    assert len(rows) == 2 and rows[-1]["mAP"] != ""
