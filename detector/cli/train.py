"""``detector train``: train a model on a dataset, or resume a run."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model",
        description="Train a YOLOX model. Outputs go to runs/<name>/ (weights/last.pt, "
        "weights/best.pt, metrics.csv, plots). Keys of configs/train/default.yaml can be "
        "overridden as key=value, e.g. epochs=40 batch=8 augment.mixup_prob=0.",
    )
    parser.add_argument("--model", help="model name (yolox_nano ... yolox_x, yolox_darknet53)")
    parser.add_argument("--data", help="dataset config YAML (e.g. configs/data/bccd.yaml)")
    parser.add_argument("--weights", help="initial weights: our .pt or an official YOLOX .pth")
    parser.add_argument("--resume", metavar="RUN", help="run directory or last.pt to continue")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from detector.training.launch import train

    run_dir = train(args.model, args.data, args.overrides, weights=args.weights, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        print(f"run written to {run_dir}")
    return 0
