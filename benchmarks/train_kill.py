"""Kill ``detector train`` with SIGKILL at random moments, then check and resume it.

The test suite interrupts the end-of-epoch writes in-process at every write in turn
(``tests/training/test_engine_kill_best.py``); this is the same promise checked against the
real thing: a ``detector train`` process on a small generated dataset, killed by the OS at a
random moment (starting from weights pre-trained here for 40 epochs, so that each
epoch's mAP differs), half of the trials while a checkpoint is being written (a hidden ``.*.tmp``
appears in ``weights/``), half at a uniformly random time of the run. After each kill:

- ``last.pt`` (when there is one) loads, and its ``best_map`` is at least every mAP of its
  history;
- ``best.pt`` loads, its ``best_map`` is the best mAP of its own history and at least
  ``last.pt``'s, and its weights, evaluated again here with ``detector eval``'s code, score that
  ``best_map`` (they are the weights that were evaluated, not others);
- ``detector train --resume`` runs to the end, and the final ``best.pt`` is not worse than the
  one on disk at the kill, and again scores its own ``best_map``.

    python benchmarks/train_kill.py --trials 20 --out benchmarks/results/train_kill.json

Results: one JSON with each trial (mode, kill time, files present, checks) and the totals.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from machine_info import cpu_name  # benchmarks/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
COMMON_KEYS = ["batch=4", "imgsz=128", "workers=0", "plots=false", "device=cpu", "threads=1",
               "optimizer=adamw", "lr_per_64=0.08", "augment.mosaic_prob=0", "augment.hsv_prob=0",
               "augment.flip_prob=0", "no_aug_epochs=0"]  # fmt: skip
TRAIN_KEYS = [*COMMON_KEYS, f"epochs={EPOCHS}", "eval_interval=1", "warmup_epochs=0"]
# the trials start from weights that already find objects, so each epoch's mAP differs and a
# best.pt with other weights than the ones evaluated would score another mAP
PRETRAIN_KEYS = [*COMMON_KEYS, "epochs=40", "eval_interval=40", "warmup_epochs=1", "ema=false"]
MAP_TOLERANCE = 1e-6  # re-evaluating the same weights on the same CPU gives the same mAP


def train_command(data: Path, out: Path, name: str, weights: Path | None = None,
                  keys: list[str] = TRAIN_KEYS) -> list[str]:  # fmt: skip
    start = ["--weights", str(weights)] if weights is not None else []
    return [sys.executable, "-m", "detector", "train", "--model", "yolox_nano", "--data",
            str(data), *start, *keys, f"output_dir={out}", f"name={name}"]  # fmt: skip


def resume_command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "detector", "train", "--resume", str(run_dir)]


def evaluate_weights(path: Path, data: Path) -> float:
    """COCO mAP of ``path`` on the validation split, the way ``detector eval`` and the trainer
    compute it (same thresholds: the eval defaults)."""
    import torch

    from detector.core.defaults import EVAL_CONF, EVAL_IOU
    from detector.data import build_dataset, load_data_config
    from detector.models import load_inference_model
    from detector.training.validate import evaluate_predictions, predict_split

    torch.set_num_threads(1)
    dataset = build_dataset(load_data_config(data), "val")
    model, spec = load_inference_model(path, None, None)
    model = model.eval()
    predictions = predict_split(model, dataset, spec.input_size, torch.device("cpu"), 8, 0,
                                EVAL_CONF, EVAL_IOU)  # fmt: skip
    return float(evaluate_predictions(predictions, dataset).mAP)


def check_files(run_dir: Path, data: Path) -> dict:
    """What is on disk in ``run_dir/weights``, and whether it keeps the promises."""
    from detector.models import read_checkpoint

    weights = run_dir / "weights"
    found: dict = {"last": None, "best": None, "problems": []}
    last = best = None
    if (weights / "last.pt").is_file():
        last = read_checkpoint(weights / "last.pt")
        scores = [row["mAP"] for row in last["history"] if "mAP" in row]
        found["last"] = {"epoch": last["epoch"], "best_map": last["best_map"]}
        if scores and last["best_map"] < max(scores):
            found["problems"].append("last.pt's best_map is below its history's best")
    if (weights / "best.pt").is_file():
        best = read_checkpoint(weights / "best.pt")
        own = max(row["mAP"] for row in best["history"] if "mAP" in row)
        rescored = evaluate_weights(weights / "best.pt", data)
        found["best"] = {"epoch": best["epoch"], "best_map": best["best_map"], "rescored": rescored}
        if best["best_map"] != own:
            found["problems"].append("best.pt's best_map is not its history's best")
        if abs(rescored - best["best_map"]) > MAP_TOLERANCE:
            found["problems"].append(f"best.pt scores {rescored}, records {best['best_map']}")
    if last is not None and (best is None or best["best_map"] < last["best_map"]):
        found["problems"].append("best.pt is missing or below last.pt's best_map")
    return found


def wait_for_write(proc: subprocess.Popen, weights: Path, nth: int, deadline: float) -> bool:
    """Poll until the ``nth`` checkpoint write has begun (a hidden temp file seen for the nth
    time); False if the process ended or the deadline passed first."""
    seen: set[str] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        if weights.is_dir():
            for tmp in weights.glob(".*.tmp"):
                seen.add(tmp.name)
            if len(seen) >= nth:
                return True
        time.sleep(0.0005)
    return False


def trial(index: int, mode: str, data: Path, work: Path, weights: Path, duration: float,
          rng: random.Random) -> dict:  # fmt: skip
    name = f"trial{index}"
    run_dir = work / name
    proc = subprocess.Popen(train_command(data, work, name, weights), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    started = time.monotonic()
    if mode == "during-write":
        nth = rng.randint(1, 2 * EPOCHS)  # each epoch writes last.pt, and best.pt when better
        wait_for_write(proc, run_dir / "weights", nth, started + 3 * duration)
        time.sleep(rng.uniform(0.0, 0.05))
    else:
        time.sleep(rng.uniform(0.2, 1.0) * duration)
    killed_after = time.monotonic() - started
    finished_first = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = {"trial": index, "mode": mode, "killed_after_s": round(killed_after, 3),
              "finished_before_kill": finished_first}  # fmt: skip
    result["at_kill"] = check_files(run_dir, data)
    best_at_kill = (result["at_kill"]["best"] or {}).get("best_map", -1.0)
    if result["at_kill"]["last"] is None:
        result["resumed"] = None  # nothing to resume from: a new run would start over
    else:
        done = subprocess.run(resume_command(run_dir), cwd=ROOT, capture_output=True, text=True)
        after = check_files(run_dir, data)
        if done.returncode != 0 and "already complete" not in done.stderr:
            after["problems"].append(f"resume failed: {done.stderr.strip()[-300:]}")
        if after["best"] is None or after["best"]["best_map"] < best_at_kill:
            after["problems"].append("the resumed run's best.pt is worse than at the kill")
        result["resumed"] = after
    result["ok"] = not result["at_kill"]["problems"] and not (result["resumed"] or {}).get(
        "problems"
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/train_kill.json")
    args = parser.parse_args()

    from detector.data.synth import SynthSpec, make_synthetic_dataset

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        spec = SynthSpec(image_size=(96, 128), object_size=(28, 64), objects=(1, 3), num_classes=3)
        generated = make_synthetic_dataset(work / "data", images=32, seed=3, spec=spec)
        # validation on the training images: a few epochs then reach an mAP well above 0
        config = yaml.safe_load(generated.read_text())
        config["val"] = config["train"]
        data = generated.parent / "memorise.yaml"
        data.write_text(yaml.safe_dump(config))
        print("pre-training the starting weights (40 epochs)", file=sys.stderr)
        pretrain = train_command(data, work, "pretrain", keys=PRETRAIN_KEYS)
        subprocess.run(pretrain, cwd=ROOT, check=True, capture_output=True)
        weights = work / "pretrain" / "weights" / "last.pt"
        started = time.monotonic()
        subprocess.run(train_command(data, work, "reference", weights), cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        duration = time.monotonic() - started
        reference = check_files(work / "reference", data)
        print(f"reference run: {duration:.1f} s for {EPOCHS} epochs", file=sys.stderr)
        results = []
        for index in range(args.trials):
            mode = "during-write" if index % 2 == 0 else "random-time"
            result = trial(index, mode, data, work, weights, duration, rng)
            results.append(result)
            print(f"trial {index:2d} {mode:12s} killed at {result['killed_after_s']:6.2f} s: "
                  f"{'ok' if result['ok'] else 'FAILED'}", file=sys.stderr)  # fmt: skip
    summary = {
        "command": " ".join(["python", "benchmarks/train_kill.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),  # fmt: skip
        "reference_run_s": round(duration, 2),
        "reference_run": reference,
        "trials": len(results),
        "ok": sum(r["ok"] for r in results),
        "with_last_pt_at_kill": sum(r["at_kill"]["last"] is not None for r in results),
        "with_best_pt_at_kill": sum(r["at_kill"]["best"] is not None for r in results),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{summary['ok']} of {summary['trials']} trials kept their promises -> {out}",
          file=sys.stderr)  # fmt: skip
    return 0 if summary["ok"] == summary["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
