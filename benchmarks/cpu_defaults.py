"""Torch threads and loader workers on a small CPU machine: the default against the alternatives.

Each measurement is a fresh process (``--child``) that builds the real ``Trainer`` (yolox_nano,
the shipped BCCD data cut to ``--iters`` batches per epoch, Mosaic on, the short-run defaults),
trains two epochs and evaluates once, with the given ``threads=`` and ``workers=`` overrides or
with neither (``auto``: what ``detector train`` chooses). It reports the first epoch (loader
workers start in it), the second (steady state) and the evaluation (its loader's workers start
each time), in seconds. A measurement that takes longer than ``--cap-s`` in all is stopped and
shown as slower than the cap.

The parent runs every configuration once per repeat, in an order rotated each repeat, first
alone and then beside a second busy process (``python -c "while True: pass"``), and prints the
medians as a Markdown table together with the CPU model, the usable cores and the load average
(``/proc/loadavg``) before and after each condition.

    .venv/bin/python benchmarks/cpu_defaults.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import cpu_name  # beside this script (benchmarks/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["auto", "t1w0", "t2w0", "t1w1", "t2w1", "t1w2", "t2w2", "t1w4", "t2w4"]


def parse_config(name: str) -> list[str]:
    """``"t2w4"`` -> ``["threads=2", "workers=4"]``; ``"auto"`` -> ``[]``."""
    if name == "auto":
        return []
    threads, workers = name[1:].split("w")
    return [f"threads={int(threads)}", f"workers={int(workers)}"]


def subset_json(src: Path, dst: Path, images: int) -> None:
    """The first ``images`` images of a COCO JSON and their annotations."""
    data = json.loads(src.read_text())
    data["images"] = data["images"][:images]
    keep = {image["id"] for image in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    dst.write_text(json.dumps(data))


def child(args: argparse.Namespace) -> None:
    """One measurement: build the trainer, time two epochs and one evaluation, print JSON."""
    import logging

    import torch

    from detector.models import get_model_config
    from detector.training.config import build_train_config
    from detector.training.trainer import Trainer

    logging.disable(logging.INFO)
    bccd = REPO / "data/bccd"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        subset_json(bccd / "coco/instances_train.json", tmp_path / "train.json",
                    args.iters * args.batch)  # fmt: skip
        subset_json(bccd / "coco/instances_val.json", tmp_path / "val.json", args.val_images)
        data = tmp_path / "data.yaml"
        data.write_text(
            f"format: coco\nroot: {bccd}\ntrain: {tmp_path / 'train.json'}\n"
            f"val: {tmp_path / 'val.json'}\nimages: images\nnames: [RBC, WBC, Platelets]\n"
        )
        overrides = [
            "epochs=10", f"batch={args.batch}", f"imgsz={args.imgsz}", "plots=false",
            "device=cpu", f"output_dir={tmp_path / 'runs'}", *parse_config(args.config),
        ]  # fmt: skip
        model = "yolox_nano"
        config = build_train_config(model_defaults=get_model_config(model).train,
                                    overrides=overrides)  # fmt: skip
        trainer = Trainer(config, model, data)
        times = []
        for epoch in range(2):
            start = time.perf_counter()
            trainer.train_one_epoch(epoch, use_l1=False)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        trainer.evaluate()
        eval_s = time.perf_counter() - start
        result = {"first_epoch_s": times[0], "epoch_s": times[1], "eval_s": eval_s,
                  "threads": torch.get_num_threads(), "workers": trainer.workers}  # fmt: skip
        print(json.dumps(result))


TIMED_OUT = {"first_epoch_s": math.inf, "epoch_s": math.inf, "eval_s": math.inf}


def run_child(config: str, args: argparse.Namespace) -> dict:
    """One measurement in a fresh process (its own session, so that a measurement over
    ``--cap-s`` is stopped with its loader workers and counted as slower than the cap)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cmd = [sys.executable, __file__, "--child", "--config", config, "--iters", str(args.iters),
           "--batch", str(args.batch), "--imgsz", str(args.imgsz),
           "--val-images", str(args.val_images)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=args.cap_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        threads, workers = (parse_config(config) + ["auto", "auto"])[:2]
        return {**TIMED_OUT, "threads": threads.split("=")[-1], "workers": workers.split("=")[-1]}
    if proc.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--configs", nargs="+", default=CONFIGS,
                        help="auto, or tNwM: N torch threads, M loader workers")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=4, help="batches per training epoch")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--val-images", type=int, default=24)
    parser.add_argument("--cap-s", type=float, default=150.0,
                        help="stop a measurement after this many seconds")  # fmt: skip
    parser.add_argument("--conditions", nargs="+", default=["alone", "busy"],
                        choices=["alone", "busy"])  # fmt: skip
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from detector.training.resources import cpu_plan, usable_cpus

    plan = cpu_plan()
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, {usable_cpus()} usable; "
          f"auto = {plan.threads} thread(s), {plan.workers} worker(s)")  # fmt: skip
    print(f"yolox_nano, imgsz {args.imgsz}, batch {args.batch}, {args.iters} iterations/epoch, "
          f"eval on {args.val_images} images; medians of {args.repeats} repeats")  # fmt: skip
    results: dict[str, dict[str, list[dict]]] = {}
    for condition in args.conditions:
        busy = None
        if condition == "busy":
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        print(f"{condition}: load average before {loadavg()}", flush=True)
        try:
            for repeat in range(args.repeats):
                shift = repeat % len(args.configs)
                order = args.configs[shift:] + args.configs[:shift]
                for config in order:
                    result = run_child(config, args)
                    results.setdefault(condition, {}).setdefault(config, []).append(result)
                    print(f"  {condition} repeat {repeat + 1} {config} ({loadavg()}): "
                          + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in result.items()), flush=True)  # fmt: skip
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        print(f"{condition}: load average after {loadavg()}", flush=True)

    def med(rows: list[dict], key: str) -> str:
        value = statistics.median(r[key] for r in rows)
        return f"> cap ({args.cap_s:.0f} s for all)" if math.isinf(value) else f"{value:.2f}"

    header = "| config | threads | workers |"
    rule = "|---|---:|---:|"
    for condition in args.conditions:
        header += f" {condition}: epoch s | {condition}: 1st epoch s | {condition}: eval s |"
        rule += "---:|---:|---:|"
    print()
    print(header)
    print(rule)
    for config in args.configs:
        first = min(results[args.conditions[0]][config], key=lambda r: r["epoch_s"])
        line = f"| {config} | {first['threads']} | {first['workers']} |"
        for condition in args.conditions:
            rows = results[condition][config]
            line += f" {med(rows, 'epoch_s')} | {med(rows, 'first_epoch_s')} | "
            line += f"{med(rows, 'eval_s')} |"
        print(line)


if __name__ == "__main__":
    main()
