"""Training quality on real images: train on BCCD from scratch, time it, score it.

Runs ``detector train`` with the given model and overrides on ``configs/data/bccd_coco.yaml``
(292 train / 72 val images), measures the wall time of the whole run (evaluation included),
then scores ``best.pt`` on the val split with pycocotools through ``detector eval``, and appends
a row to ``benchmarks/train_quality.md``.

    .venv/bin/python benchmarks/train_quality.py --model yolox_nano epochs=40 batch=8 imgsz=416

The anchors (official YOLOX nano recipe, Ultralytics yolo11n) are the reference runs the
project's goals were set from, measured on the same 2-core machine class; see the table's notes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolox_nano")
    parser.add_argument("--data", default=str(REPO / "configs/data/bccd_coco.yaml"))
    parser.add_argument("--out", default="/tmp/train_quality")
    parser.add_argument("--note", default="")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    name = f"{args.model}_{int(time.time())}"
    cmd = [sys.executable, "-m", "detector", "train", "--model", args.model, "--data", args.data,
           f"output_dir={args.out}", f"name={name}", "plots=false", *args.overrides]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    minutes = (time.perf_counter() - started) / 60
    run_dir = Path(args.out) / name
    metrics = run_dir / "eval.json"
    subprocess.run([sys.executable, "-m", "detector", "eval", "--weights",
                    str(run_dir / "weights/best.pt"), "--data", args.data, "--json",
                    str(metrics)], check=True)  # fmt: skip
    result = json.loads(metrics.read_text())
    row = (f"| {args.model} | `{' '.join(args.overrides)}` | {result['mAP']:.3f} | "
           f"{result['mAP50']:.3f} | {minutes:.1f} | {args.note} |")  # fmt: skip
    print(row)
    table = REPO / "benchmarks" / "train_quality.md"
    with table.open("a") as handle:
        handle.write(row + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
