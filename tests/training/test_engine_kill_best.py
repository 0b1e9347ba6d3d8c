"""``best.pt`` and ``best_map`` stay consistent whatever moment a run is killed at.

The end-of-epoch writes are interrupted at each step in turn (24 trials): mid-write (half of
the bytes in the temporary file, then the kill) or just after a file is renamed into place.
After each kill ``last.pt`` loads and agrees with its own history, ``best.pt`` holds the
weights of the best evaluation up to its epoch, and resuming to the end never writes a
``best.pt`` worse than the one before it.

The kill is an exception that nothing in the trainer catches, raised in-process (a SIGKILL of a
subprocess would pay PyTorch's import per trial, too slow for CI's 2 cores). For the same
reason the epochs are stand-ins: a random step on the weights and an EMA update instead of the
data loader and the optimizer, and a scripted mAP instead of COCO evaluation (so that a re-run
epoch can score between the old and the new best, the case that used to lose ``best.pt``).
Everything from ``Trainer.fit`` down to the checkpoint files is the real code.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from detector.core.atomic import atomic_writer
from detector.models import read_checkpoint
from detector.training import trainer as trainer_module
from detector.training.launch import train
from detector.training.trainer import LOSS_TERMS, Trainer

QUICK = ["batch=4", "imgsz=128", "workers=0", "plots=false", "device=cpu", "threads=1"]
EPOCHS = 4
RERUN_PENALTY = 0.15  # a re-run epoch scores this much less than its first run did
SCRIPTS = {
    "rising": (0.2, 0.5, 0.3, 0.6),  # best at epochs 1, 2, 4: 7 writes
    "falling": (0.6, 0.4, 0.5, 0.3),  # best at epoch 1 only: 5 writes
}
WRITES = {"rising": 7, "falling": 5}
TRIALS = [
    (script, call, moment)
    for script, count in WRITES.items()
    for call in range(count)
    for moment in ("mid-write", "after-rename")
]


class Killed(BaseException):
    """Stands for SIGKILL: not an ``Exception``, so no handler in the trainer stops it."""


def fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class World:
    """The stand-ins' shared record: what was evaluated, what was written, when to kill."""

    maps: tuple[float, ...]
    kill_call: int | None = None
    kill_moment: str = "mid-write"
    attempt: int = 0
    calls: int = 0
    evaluations: list[tuple[int, int, float, str]] = field(default_factory=list)
    best_writes: list[float] = field(default_factory=list)

    def epoch(self, trainer: Trainer, epoch: int, use_l1: bool) -> dict[str, Any]:
        """A stand-in epoch: a random step on the weights (seeded by epoch and attempt, so a
        re-run epoch gives other weights) and an EMA update."""
        generator = torch.Generator().manual_seed(1000 * self.attempt + epoch)
        with torch.no_grad():
            for param in trainer.model.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 1e-3)
        if trainer.ema is not None:
            trainer.ema.update(trainer.model)
        trainer.state.iteration += trainer.iters_per_epoch
        losses = dict.fromkeys(LOSS_TERMS, 1.0)
        return {"epoch": epoch + 1, "iteration": trainer.state.iteration, "lr": 0.01, **losses,
                "images_per_s": 1.0, "data_wait_s": 0.0}  # fmt: skip

    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        """A scripted mAP (lower when the epoch was evaluated before) for the real weights."""
        epoch = trainer.state.epoch + 1
        seen = any(e == epoch for _, e, _, _ in self.evaluations)
        score = self.maps[epoch - 1] - (RERUN_PENALTY if seen else 0.0)
        self.evaluations.append(
            (self.attempt, epoch, score, fingerprint(trainer.eval_model.state_dict()))
        )
        return {"mAP": score, "mAP50": score}

    def save(self, state: dict[str, Any], path: str | Path) -> Path:
        """The real atomic checkpoint write, killed at the chosen call: mid-write (half of the
        bytes in the temporary file) or right after the rename."""
        path = Path(path)
        call, self.calls = self.calls, self.calls + 1
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        with atomic_writer(path) as handle:
            if call == self.kill_call and self.kill_moment == "mid-write":
                handle.write(data[: len(data) // 2])
                raise Killed(f"mid-write of {path.name}")
            handle.write(data)
        if path.name == "best.pt":
            self.best_writes.append(float(state["best_map"]))
        if call == self.kill_call:
            raise Killed(f"after {path.name}")
        return path


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    world = World(maps=())
    monkeypatch.setattr(
        Trainer, "train_one_epoch", lambda self, e, use_l1: world.epoch(self, e, use_l1)
    )
    monkeypatch.setattr(Trainer, "evaluate", lambda self: world.evaluate(self))
    monkeypatch.setattr(trainer_module, "save_atomic", world.save)
    return world


def check_consistent(run_dir: Path, world: World) -> dict[str, Any] | None:
    """The files on disk after a kill (or the end): returns ``last.pt`` (``None`` if none)."""
    weights = run_dir / "weights"
    last = read_checkpoint(weights / "last.pt") if (weights / "last.pt").is_file() else None
    best = read_checkpoint(weights / "best.pt") if (weights / "best.pt").is_file() else None
    if last is not None:
        scores = [row["mAP"] for row in last["history"] if "mAP" in row]
        assert last["best_map"] >= max(scores), "last.pt's best_map is below its history's best"
        assert best is not None and best["best_map"] >= last["best_map"]
    if best is not None:
        evaluated = {(e, s): fp for _, e, s, fp in world.evaluations}
        assert fingerprint(best["model"]) == evaluated[(best["epoch"], best["best_map"])], (
            "best.pt's weights are not those of the evaluation it records"
        )
        assert best["best_map"] == max(row["mAP"] for row in best["history"] if "mAP" in row)
    return last


@pytest.mark.parametrize(("script", "call", "moment"), TRIALS)
def test_kill_at_any_write_keeps_best_consistent(
    script: str, call: int, moment: str, world: World, tiny_data: Path, tmp_path: Path
) -> None:
    world.maps, world.kill_call, world.kill_moment = SCRIPTS[script], call, moment
    overrides = [
        *QUICK,
        f"epochs={EPOCHS}",
        "eval_interval=1",
        f"output_dir={tmp_path}",
        "name=run",
    ]
    with pytest.raises(Killed):
        train("yolox_nano", tiny_data, overrides)
    run_dir = tmp_path / "run"
    last = check_consistent(run_dir, world)
    best_at_kill = list(world.best_writes)
    if last is None:  # killed before the first last.pt: nothing to resume, best.pt if any is fine
        assert world.calls <= 2
        return

    world.attempt, world.kill_call = 1, None
    assert train(None, None, [], resume=run_dir) == run_dir
    final = check_consistent(run_dir, world)
    assert final is not None and final["epoch"] == EPOCHS
    writes = world.best_writes
    assert writes == sorted(set(writes)), f"best.pt was replaced by a worse model: {writes}"
    resumed = [score for attempt, _, score, _ in world.evaluations if attempt == 1]
    expected = max([*best_at_kill[-1:], *resumed])
    assert final["best_map"] == expected
    assert read_checkpoint(run_dir / "weights" / "best.pt")["best_map"] == expected
