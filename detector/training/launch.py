"""Starting and resuming training runs (what ``detector train`` calls)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from detector.models import get_model_config, read_checkpoint
from detector.training.config import build_train_config
from detector.training.trainer import Trainer

logger = logging.getLogger(__name__)


def find_resume_checkpoint(run: str | Path) -> Path:
    """``run`` is a run directory or a checkpoint file; returns the checkpoint to resume from."""
    path = Path(run)
    if path.is_dir():
        path = path / "weights" / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    return path


def train(
    model: str | None,
    data: str | Path | None,
    overrides: list[str] | tuple[str, ...] = (),
    weights: str | Path | None = None,
    resume: str | Path | None = None,
) -> Path:
    """Train a new run, or resume one; returns the run directory.

    A resumed run keeps its model, data and config; overrides may still change keys such as
    ``epochs`` or ``workers``.
    """
    if resume is not None:
        path = find_resume_checkpoint(resume)
        ckpt: dict[str, Any] = read_checkpoint(path)
        missing = [k for k in ("train_model", "train_config", "epoch") if k not in ckpt]
        if missing:
            raise ValueError(f"{path}: not a resumable training checkpoint (no {missing[0]})")
        config = build_train_config(
            overrides=overrides, base=ckpt["train_config"], source=f"{path} train_config"
        )
        run_dir = path.parent.parent
        done = int(ckpt["epoch"])
        if done >= config.epochs:
            logger.info(
                "%s is already complete (%d of %d epochs trained); nothing to resume. To train "
                "longer: detector train --resume %s epochs=N (N > %d)",
                run_dir, done, config.epochs, resume, done,
            )  # fmt: skip
            return run_dir
        trainer = Trainer(
            config, ckpt["model_name"], data or ckpt["data"], resume=ckpt, run_dir=run_dir
        )
        return trainer.fit()
    if model is None or data is None:
        raise ValueError("detector train needs --model and --data (or --resume RUN)")
    model_config = get_model_config(model)
    config = build_train_config(model_defaults=model_config.train, overrides=overrides)
    return Trainer(config, model, data, weights=weights).fit()
