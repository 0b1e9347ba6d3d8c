"""Training data pipeline throughput: ours vs the official YOLOX pipeline, side by side.

Both read BCCD's COCO JSON (train split, 292 images of 640x480) and run the yolox_s defaults
(Mosaic prob 1, MixUp on with prob 1, HSV, flip 0.5, degrees 10, translate 0.1, scale 0.1-2,
shear 2) into batches through a torch ``DataLoader``: official = ``yolox.data.COCODataset`` +
``MosaicDetection`` + ``TrainTransform`` (float32 CHW per sample, default collate); ours =
``detector.data.build_train_loader`` (uint8 until the collate, which makes float32 [B, 3, H, W]).
Each (size, workers) setting alternates the two over repeats; every measurement builds a fresh
loader, skips a warm-up (worker start-up), times ``--batches`` batches and shuts the workers down
before the next one. The table reports medians and the ratio of medians.

    .venv/bin/python benchmarks/data_pipeline.py --md benchmarks/data_pipeline.md
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import cv2
import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detector.data import AugmentConfig, build_dataset, build_train_loader, load_data_config  # noqa: E402


def yolox_loader(root: Path, json_name: str, size: int, batch: int, workers: int, cache: bool):
    """The official pipeline with the yolox_s training defaults (yolox_base.get_data_loader)."""
    from yolox.data import COCODataset, MosaicDetection, TrainTransform

    dataset = COCODataset(
        data_dir=str(root), json_file=json_name, name="images",
        img_size=(size, size), cache=cache,
        preproc=TrainTransform(max_labels=50, flip_prob=0.5, hsv_prob=1.0),
    )  # fmt: skip
    mosaic = MosaicDetection(
        dataset, mosaic=True, img_size=(size, size),
        preproc=TrainTransform(max_labels=120, flip_prob=0.5, hsv_prob=1.0),
        degrees=10.0, translate=0.1, mosaic_scale=(0.1, 2), mixup_scale=(0.5, 1.5), shear=2.0,
        enable_mixup=True, mosaic_prob=1.0, mixup_prob=1.0,
    )  # fmt: skip
    kwargs = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}  # as ours
    return DataLoader(mosaic, batch_size=batch, shuffle=True, num_workers=workers,
                      drop_last=True, **kwargs)  # fmt: skip


def forever(loader):
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def rate(make_loader, batches: int, warmup: int) -> float:
    """Images/s over ``batches`` batches of a fresh loader, after ``warmup`` batches (worker
    start-up); the loader and its workers are gone before the next measurement, so an idle
    pipeline never prefetches in the background while the other one is timed."""
    loader = make_loader()
    stream = forever(loader)
    for _ in range(warmup):
        next(stream)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        count += len(next(stream)[0])
    elapsed = time.perf_counter() - start
    del stream, loader
    gc.collect()
    return count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO / "configs/data/bccd_coco.yaml"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[416, 640])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", action="store_true", help="both pipelines cache images in RAM")
    parser.add_argument("--md", help="write the result table (markdown) here")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # same for both: workers (or the one process) are the parallelism
    torch.set_num_threads(1)

    cfg = load_data_config(args.data)
    ours_set = build_dataset(cfg, "train", cache=args.cache)
    json_path = cfg.root / cfg.train
    base = Path(tempfile.mkdtemp(prefix="yolox_layout_"))

    rows = []
    for size in args.sizes:
        # YOLOX wants root/annotations/<json>; one root per size, as its RAM cache file is
        # named after the split only
        tmp = base / str(size)
        (tmp / "annotations").mkdir(parents=True)
        (tmp / "annotations" / json_path.name).symlink_to(json_path)
        (tmp / "images").symlink_to(cfg.root / cfg.images)
        for workers in args.workers:
            makers = {
                "yolox": partial(yolox_loader, tmp, json_path.name, size, args.batch, workers,
                                 args.cache),
                "ours": partial(build_train_loader, ours_set, size, args.batch, AugmentConfig(),
                                True, workers, seed=0),
            }  # fmt: skip
            warmup = 1 + 2 * workers
            results: dict[str, list[float]] = {"yolox": [], "ours": []}
            for r in range(args.repeats):
                names = ["yolox", "ours"] if r % 2 == 0 else ["ours", "yolox"]
                for name in names:
                    results[name].append(rate(makers[name], args.batches, warmup))
            y, o = statistics.median(results["yolox"]), statistics.median(results["ours"])
            rows.append((size, workers, y, o, o / y, results))
            print(f"imgsz {size} workers {workers}: yolox {y:.1f}  ours {o:.1f} images/s "
                  f"({o / y:.2f}x)  runs yolox {[round(v, 1) for v in results['yolox']]} "
                  f"ours {[round(v, 1) for v in results['ours']]}", flush=True)  # fmt: skip

    load = os.getloadavg()
    lines = [
        "| imgsz | workers | official YOLOX (images/s) | ours (images/s) | ours / official |",
        "|---:|---:|---:|---:|---:|",
        *[f"| {s} | {w} | {y:.1f} | {o:.1f} | {x:.2f}x |" for s, w, y, o, x, _ in rows],
        "",
        f"batch {args.batch}, {args.batches} timed batches x {args.repeats} repeats per cell "
        f"(medians), cache={args.cache}, {os.cpu_count()} CPUs, load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
    ]  # fmt: skip
    print("\n".join(lines))
    if args.md:
        Path(args.md).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
