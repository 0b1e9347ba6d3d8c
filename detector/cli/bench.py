"""``detector bench``: latency (p50/p90/p99) and throughput of model files on any backend, with
pre-processing, inference and post-processing timed apart; an aligned table and JSON.

The measuring lives in :mod:`serve.runtime.bench` (torch-free), so this command benchmarks
``.onnx`` and
``.engine`` files in a serving install without PyTorch; a checkpoint brings torch in itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detector.cli.options import add_prediction_options

CHOICES_GRAPHS = {"off": (False,), "on": (True,), "both": (False, True)}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="latency and throughput of model files",
        description="Time the serving pipeline (pre-processing, inference, post-processing) of "
        "each model file at each batch size: p50/p90/p99 in ms and images/s. Uses --source "
        "images if given, else generated 640x480 images.",
    )
    parser.add_argument(
        "--model", action="append", required=True, metavar="PATH",
        help="model file (.pt/.pth, .onnx, .engine); repeat to compare several",
    )  # fmt: skip
    parser.add_argument(
        "--batch", type=batch_sizes, default=[1], metavar="N[,N...]",
        help="batch sizes, comma-separated (default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--backend", help="backend for every model (default: by suffix: .onnx onnxruntime, "
        ".engine tensorrt, .pt torch)"
    )  # fmt: skip
    parser.add_argument(
        "--device", default="auto",
        help="auto, cpu, cuda or cuda:N (ONNX Runtime: providers; torch: its device)",
    )  # fmt: skip
    parser.add_argument("--imgsz", type=int, help="input size of a checkpoint (default: its own)")
    parser.add_argument("--arch", help="model name, needed only for official YOLOX .pth files")
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "fp16"), default="auto",
        help="torch backend: network precision (auto: fp16 on CUDA, fp32 on the CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--cuda-graphs", choices=tuple(CHOICES_GRAPHS), default="off",
        help="torch backend on CUDA: replay captured CUDA graphs (both: measure off and on)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=count(1),
        help="CPU threads of ONNX Runtime and torch (default: each library's own choice)",
    )  # fmt: skip
    parser.add_argument(
        "--repeats",
        type=count(1),
        default=50,
        help="measured runs per model and batch (default: 50)",
    )
    parser.add_argument(
        "--warmup", type=count(0), default=5, help="uncounted runs first (default: 5)"
    )
    parser.add_argument(
        "--source", nargs="+", metavar="SRC", help="images, folders or globs to time on"
    )
    add_prediction_options(parser, max_det=False)
    parser.add_argument(
        "--sequential", action="store_true",
        help="measure one model/batch after the other instead of interleaving their runs",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    parser.set_defaults(func=run)


def batch_sizes(text: str) -> list[int]:
    """``"1,8"`` -> ``[1, 8]`` (positive, duplicates dropped, order kept)."""
    sizes: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise argparse.ArgumentTypeError(
                f"{text!r}: batch sizes are positive integers separated by commas, e.g. 1,8"
            )
        if int(part) not in sizes:
            sizes.append(int(part))
    return sizes


def count(minimum: int):
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= {minimum}")
        return int(text)

    return parse


def backend_options(args: argparse.Namespace, path: Path, backend: str) -> list[tuple[dict, str]]:
    """The constructor options for one model file on ``backend``, one entry per variant to
    measure (CUDA graphs off/on), with a label telling variants apart."""
    device = args.device
    if backend != "torch" and (args.imgsz or args.arch):
        raise ValueError(f"{path}: --imgsz and --arch apply to checkpoints only")
    threads = {"threads": args.threads} if args.threads else {}
    if backend == "onnxruntime":
        if device == "cpu":
            return [({"providers": ["CPUExecutionProvider"], **threads}, "")]
        if device.startswith("cuda"):
            if device not in ("cuda", "cuda:0"):
                raise ValueError(f"--device {device}: ONNX Runtime runs on cuda (GPU 0) or cpu")
            return [({"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}, "")]
        if device != "auto":
            raise ValueError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
        return [(threads, "")]
    if backend == "tensorrt":
        if device == "cpu":
            raise ValueError(f"{path}: TensorRT engines run on a GPU, not --device cpu")
        index = device.partition(":")[2] if device.startswith("cuda") else "0"
        if not index.isdigit() and device not in ("auto", "cuda"):
            raise ValueError(f"--device {device}: expected auto, cuda or cuda:N")
        return [({"device": int(index or 0)}, "")]
    half = {"auto": None, "fp32": False, "fp16": True}[args.precision]
    variants = []
    for graphs in CHOICES_GRAPHS[args.cuda_graphs]:
        options = {"device": device, "half": half, "cuda_graphs": graphs, **threads}
        if args.imgsz:
            options["imgsz"] = args.imgsz
        if args.arch:
            options["model_name"] = args.arch
        variants.append((options, "cuda-graphs" if graphs else ""))
    return variants


def load_sources(sources: list[str]) -> tuple[list, str]:
    """The readable images among ``sources`` (unreadable ones reported and skipped)."""
    import cv2

    from detector.cli.predict import collect_sources

    images = []
    for path in collect_sources(sources):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            print(f"skipped {path}: not a readable image", file=sys.stderr)
            continue
        images.append(image)
    if not images:
        raise ValueError(f"no readable images in {', '.join(sources)}")
    return images, f"{len(images)} files"


def run(args: argparse.Namespace) -> int:
    from serve.runtime.bench import (
        SYNTHETIC_SIZE,
        Target,
        format_table,
        run_benchmark,
        synthetic_images,
    )
    from serve.runtime.predictor import backend_for

    targets = []
    for name in args.model:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model file")
        backend = args.backend or backend_for(path)
        for options, label in backend_options(args, path, backend):
            targets.append(Target(path, backend, options, label))
    if args.source:
        images, label = load_sources(args.source)
    else:
        height, width = SYNTHETIC_SIZE
        images = synthetic_images(max(8, *args.batch))
        label = f"synthetic {width}x{height}"

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rows = run_benchmark(
        targets, args.batch, images, label, args.repeats, args.warmup, args.conf, args.iou,
        progress, interleave=not args.sequential,
    )  # fmt: skip
    print(format_table(rows))
    order = "one after the other" if args.sequential else "interleaved"
    print(f"milliseconds per batch; images: {label}; {args.repeats} runs ({order}) after "
          f"{args.warmup} warm-up; images/s = batch x runs / summed total time")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
