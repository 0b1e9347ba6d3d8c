"""``detector eval``: COCO mAP of a checkpoint on a dataset split."""

from __future__ import annotations

import argparse
from pathlib import Path

from detector.cli.options import add_eval_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint (COCO mAP)",
        description="Evaluate weights on a dataset split with pycocotools: prints the 12 COCO "
        "numbers and a per-class AP table; --json writes them (keys mAP and mAP50 included).",
    )
    parser.add_argument("--weights", required=True, help="our .pt checkpoint or official .pth")
    parser.add_argument("--data", required=True, help="dataset config YAML")
    parser.add_argument("--model", help="model name, needed only for official YOLOX .pth files")
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--imgsz", type=int, help="input size (default: the checkpoint's)")
    add_eval_options(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--workers", type=int, help="loader worker processes (default: from the usable cores)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--voc", action="store_true", help="also report VOC-style mAP@0.5")
    parser.add_argument("--json", metavar="OUT", help="write the metrics as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from detector.data import build_dataset, load_data_config
    from detector.eval import format_per_class_table, voc_map50_from_predictions
    from detector.models import load_inference_model
    from detector.models.device import resolve_device
    from detector.training.resources import apply_threads, cpu_plan
    from detector.training.validate import evaluate_predictions, predict_split

    device = resolve_device(args.device)
    plan = cpu_plan(accelerator=device.type != "cpu")
    workers = plan.eval_workers if args.workers is None else args.workers
    apply_threads(plan.threads)
    dataset = build_dataset(load_data_config(args.data), args.split)
    model, spec = load_inference_model(args.weights, args.model, args.imgsz)
    if spec.num_classes != dataset.num_classes:
        raise ValueError(
            f"{args.weights}: the model has {spec.num_classes} classes but {args.data} has "
            f"{dataset.num_classes}"
        )
    model = model.to(device).eval()
    predictions = predict_split(
        model, dataset, spec.input_size, device, args.batch, workers, args.conf, args.iou
    )
    result = evaluate_predictions(predictions, dataset)
    report = result.to_dict()
    print(result.summary())
    print(format_per_class_table(result))
    if args.voc:
        report["voc_mAP50"] = voc_map50_from_predictions(predictions, dataset)
        print(f"VOC mAP@0.5: {report['voc_mAP50']:.4f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"metrics written to {args.json}")
    return 0
