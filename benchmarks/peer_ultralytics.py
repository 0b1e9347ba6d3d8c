"""The peer of ``train_quality.py``: Ultralytics YOLO trained on BCCD on this machine, scored by
the same pycocotools evaluation as ours.

Writes the BCCD COCO splits (``configs/data/bccd_coco.yaml``, 292 train / 72 val) as an
Ultralytics YOLO dataset (symlinked images, ``labels/*.txt``, ``data.yaml``), trains
``yolo11n.yaml`` from random initialisation with the given budget (40 epochs, 416, batch 8 by
default, Ultralytics' own defaults otherwise: AdamW chosen by ``optimizer=auto``, its
augmentations, float32 on the CPU), times the whole run, then predicts the val split with
``best.pt`` (conf 0.001, its NMS IoU 0.7, as its own validation does) and scores those detections
with ``detector.eval.evaluate_coco`` against the same ground truth ``detector eval`` uses. The
row is appended to ``benchmarks/train_quality.md``.

Ultralytics is AGPL and is not a dependency of this project: install it in a separate
environment that reuses this one's torch, for example

    python3 -m venv /tmp/ulv
    echo $PWD/.venv/lib/python3.11/site-packages > /tmp/ulv/lib/python3.11/site-packages/zz.pth
    /tmp/ulv/bin/pip install ultralytics
    /tmp/ulv/bin/python benchmarks/peer_ultralytics.py            # yolo11n, 40 epochs, 416, b8

Run it on a quiet machine, one training at a time, like ``train_quality.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("YOLO_OFFLINE", "1")  # no update checks or hub calls (no internet here)

from detector.data import build_dataset, load_data_config  # noqa: E402
from detector.eval import detections_to_coco, evaluate_coco  # noqa: E402


def write_yolo_dataset(data_cfg_path: Path, out: Path) -> tuple[Path, object]:
    """``out/{train,val}/{images,labels}`` + ``out/data.yaml``; returns (data.yaml, val dataset)."""
    cfg = load_data_config(data_cfg_path)
    val_set = None
    for split in ("train", "val"):
        dataset = build_dataset(cfg, split)
        images, labels = out / split / "images", out / split / "labels"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i, record in enumerate(dataset.records):
            link = images / record.path.name
            if not link.exists():
                link.symlink_to(record.path.resolve())
            height, width = dataset.image_size(i)
            lines = []
            for (x1, y1, x2, y2), label in zip(record.boxes, record.labels):
                cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
                w, h = (x2 - x1) / width, (y2 - y1) / height
                lines.append(f"{int(label)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            (labels / f"{record.path.stem}.txt").write_text("\n".join(lines) + "\n")
        if split == "val":
            val_set = dataset
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(val_set.class_names))
    data_yaml = out / "data.yaml"
    data_yaml.write_text(f"path: {out}\ntrain: train/images\nval: val/images\nnames:\n{names}\n")
    return data_yaml, val_set


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolo11n.yaml", help="model YAML (random init)")
    parser.add_argument("--data", default=str(REPO / "configs/data/bccd_coco.yaml"))
    parser.add_argument("--out", default="/tmp/peer_ultralytics")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--imgsz", type=int, default=416)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads for training (ours use 2 on 2 cores; Ultralytics "
        "itself would take cpu_count - 1 = 1 here)",
    )
    parser.add_argument("--fraction", type=float, default=1.0, help="share of train images (smoke)")
    parser.add_argument("--note", default="")
    parser.add_argument("--no-table", action="store_true", help="do not append to the table")
    args = parser.parse_args()

    from ultralytics import YOLO  # AGPL peer, installed separately (see the docstring)
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = args.threads  # select_device() sets torch's thread count from it

    out = Path(args.out)
    data_yaml, val_set = write_yolo_dataset(Path(args.data), out / "dataset")
    name = f"{Path(args.model).stem}_{int(time.time())}"
    model = YOLO(args.model)
    started = time.perf_counter()
    model.train(data=str(data_yaml), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
                device="cpu", workers=args.workers, pretrained=False, amp=False, plots=False,
                project=str(out / "runs"), name=name, seed=0, deterministic=False,
                fraction=args.fraction, verbose=False)  # fmt: skip
    minutes = (time.perf_counter() - started) / 60
    best = out / "runs" / name / "weights" / "best.pt"

    trained = YOLO(str(best))
    per_image, image_ids = [], []
    for record in val_set.records:
        result = trained.predict(str(record.path), imgsz=args.imgsz, conf=0.001, iou=0.7,
                                 max_det=300, device="cpu", verbose=False)[0]  # fmt: skip
        boxes = result.boxes
        rows = [[*xyxy, conf, cls] for xyxy, conf, cls in zip(
            boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist())]  # fmt: skip
        per_image.append(rows or None)
        image_ids.append(record.image_id)
    per_image = [None if r is None else np.asarray(r, np.float32) for r in per_image]
    detections = detections_to_coco(per_image, image_ids, val_set.category_ids)
    result = evaluate_coco(val_set.coco_ground_truth(), detections)
    print(result.summary())
    row = (f"| {Path(args.model).stem} (Ultralytics) | `epochs={args.epochs} batch={args.batch} "
           f"imgsz={args.imgsz} workers={args.workers} threads={args.threads}` | "
           f"{result.mAP:.3f} | {result.mAP50:.3f} | {minutes:.1f} | {args.note} |")  # fmt: skip
    print(row)
    if not args.no_table:
        with (REPO / "benchmarks" / "train_quality.md").open("a") as handle:
            handle.write(row + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
