"""``detector demo``: the whole job on the embedded default dataset, on any machine.

Generates a synthetic dataset, trains yolox_nano on it, evaluates the best weights and runs
predictions on a few validation images. Sized to finish in a few minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="generate data, train, evaluate and predict, end to end",
        description="Runs the whole path on a generated dataset: data synth -> train -> eval -> "
        "predict. Outputs under --out.",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--model", default="yolox_nano")
    parser.add_argument("--images", type=int, default=240, help="generated images")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--workers", type=int, help="loader worker processes (default: from the usable cores)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="train overrides")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from detector.cli.evaluate import run as run_eval
    from detector.cli.predict import run as run_predict
    from detector.data import build_dataset, load_data_config
    from detector.data.synth import make_synthetic_dataset
    from detector.engine.launch import train

    out = Path(args.out)
    data_yaml = out / "data" / "data.yaml"
    if data_yaml.is_file():
        print(f"[1/4] using the dataset already at {data_yaml}")
    else:
        print(f"[1/4] generating {args.images} images under {out / 'data'}")
        data_yaml = make_synthetic_dataset(out / "data", images=args.images, seed=0)
    print(f"[2/4] training {args.model} for {args.epochs} epochs at {args.imgsz}")
    overrides = [
        f"epochs={args.epochs}",
        f"imgsz={args.imgsz}",
        f"batch={args.batch}",
        *([f"workers={args.workers}"] if args.workers is not None else []),
        f"device={args.device}",
        f"output_dir={out}",
        "name=train",
        f"eval_interval={max(args.epochs // 3, 1)}",
        *args.overrides,
    ]
    run_dir = train(args.model, data_yaml, overrides)
    weights = run_dir / "weights" / "best.pt"
    print(f"[3/4] evaluating {weights}")
    metrics = out / "metrics.json"
    run_eval(
        argparse.Namespace(
            weights=str(weights), data=str(data_yaml), model=None, split="val", imgsz=None,
            conf=0.01, iou=0.65, batch=8, workers=args.workers, device=args.device, voc=False,
            json=str(metrics),
        )
    )  # fmt: skip
    val_set = build_dataset(load_data_config(data_yaml), "val")
    val_images = [record.path for record in val_set.records[:8]]
    print(f"[4/4] predicting {len(val_images)} validation images")
    run_predict(
        argparse.Namespace(
            model=str(weights), source=[str(p) for p in val_images], out=str(out / "predict"),
            arch=None, imgsz=None, conf=0.3, iou=0.45, device=args.device, backend=None,
            max_det=300, classes=None, save_txt=False,
        )
    )  # fmt: skip
    result = json.loads(metrics.read_text())
    print(
        f"demo done: val mAP {result['mAP']:.3f}, mAP50 {result['mAP50']:.3f}; "
        f"run in {run_dir}, predictions in {out / 'predict'}"
    )
    return 0
