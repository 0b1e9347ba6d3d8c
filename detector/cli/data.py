"""``detector data``: generate the synthetic dataset, preview augmented samples, time the loader."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="datasets: synth, show, bench")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    synth = sub.add_parser("synth", help="write the generated COCO-format dataset")
    synth.add_argument("--out", required=True, help="output folder (gets data.yaml)")
    synth.add_argument("--images", type=int, default=500, help="number of images (500)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (0)")
    synth.add_argument("--val-fraction", type=float, default=0.2, help="share of val images")
    synth.add_argument("--easy", action="store_true",
                       help="small images, few large objects (quick training checks)")  # fmt: skip
    synth.add_argument("--demo", action="store_true",
                       help="the demo's data: 1-6 objects, 24-160 px, little clutter")  # fmt: skip
    synth.add_argument("--objects", type=int, nargs=2, metavar=("MIN", "MAX"),
                       help="objects per image (default 0 20)")  # fmt: skip
    synth.add_argument("--object-size", type=float, nargs=2, metavar=("MIN", "MAX"),
                       help="object size range in pixels (default 8 300)")  # fmt: skip
    synth.add_argument("--relative-min", type=float,
                       help="smallest object / image short side (0.025)")  # fmt: skip
    synth.add_argument("--clutter", type=int, help="most background lines per image (6)")
    synth.add_argument("--classes", type=int, help="number of classes, 1-5 (5)")
    synth.add_argument("--lookalike", action="store_true",
                       help="classes differ only by a small symbol on a shared card")  # fmt: skip
    synth.set_defaults(func=run_synth)

    show = sub.add_parser("show", help="grid of augmented training samples + class histogram")
    show.add_argument("--data", required=True, help="dataset config YAML")
    show.add_argument("--out", default="runs/data_preview.png", help="PNG to write")
    show.add_argument("--imgsz", type=int, default=416, help="input size (416)")
    show.add_argument("--count", type=int, default=8, help="samples to show (8)")
    show.add_argument("--model", default="yolox_s", help="per-size augmentation defaults")
    show.add_argument("--no-mosaic", action="store_true", help="final-phase pipeline")
    show.add_argument("--seed", type=int, default=0)
    show.set_defaults(func=run_show)

    bench = sub.add_parser("bench", help="images/s of the training pipeline")
    bench.add_argument("--data", required=True, help="dataset config YAML")
    bench.add_argument("--imgsz", type=int, default=640, help="input size (640)")
    bench.add_argument("--workers", type=int, default=0, help="worker processes (0)")
    bench.add_argument("--batch", type=int, default=16, help="batch size (16)")
    bench.add_argument("--batches", type=int, default=10, help="timed batches (10)")
    bench.add_argument("--model", default="yolox_s", help="per-size augmentation defaults")
    bench.add_argument("--cache", action="store_true", help="decode images into RAM first")
    bench.add_argument("--no-mosaic", action="store_true", help="final-phase pipeline")
    bench.set_defaults(func=run_bench)


def run_synth(args: argparse.Namespace) -> int:
    import time
    from dataclasses import replace

    from detector.data.synth import SynthSpec, make_synthetic_dataset

    start = time.perf_counter()
    spec = SynthSpec.easy() if args.easy else SynthSpec.demo() if args.demo else SynthSpec()
    given = {"objects": args.objects, "object_size": args.object_size, "clutter": args.clutter,
             "relative_min": args.relative_min, "num_classes": args.classes}  # fmt: skip
    spec = replace(spec, **{k: tuple(v) if isinstance(v, list) else v
                            for k, v in given.items() if v is not None})  # fmt: skip
    if args.lookalike:
        spec = replace(spec, lookalike=True)
    path = make_synthetic_dataset(args.out, args.images, args.seed, spec, args.val_fraction)
    print(f"wrote {args.images} images in {time.perf_counter() - start:.1f} s; use --data {path}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from detector.data import AugmentConfig, build_dataset, load_data_config
    from detector.data.show import describe, render_preview

    dataset = build_dataset(load_data_config(args.data), "train")
    augment = AugmentConfig.for_model(args.model)
    out = render_preview(dataset, args.out, args.imgsz, args.count, augment, not args.no_mosaic,
                         args.seed)  # fmt: skip
    print(describe(dataset))
    print(f"wrote {out}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    import cv2

    from detector.data import AugmentConfig, build_dataset, build_train_loader, load_data_config
    from detector.data.bench import images_per_second

    cv2.setNumThreads(1)
    dataset = build_dataset(load_data_config(args.data), "train", cache=args.cache)
    loader = build_train_loader(
        dataset, args.imgsz, args.batch, AugmentConfig.for_model(args.model),
        mosaic=not args.no_mosaic, workers=args.workers, seed=0, drop_last=False,
    )  # fmt: skip
    rate = images_per_second(_forever(loader), args.batches, warmup=1 + 2 * args.workers)
    print(f"{dataset.name}: imgsz {args.imgsz}, batch {args.batch}, workers {args.workers}, "
          f"mosaic {not args.no_mosaic}, cache {args.cache}: {rate:.1f} images/s")  # fmt: skip
    return 0


def _forever(loader: Any) -> Iterator[Any]:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1
