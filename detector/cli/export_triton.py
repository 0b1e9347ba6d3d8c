"""``detector export triton``: a Triton Inference Server model repository from an ONNX or engine.

The logic is ``export/triton.py``; this module parses the flags and prints what was written.
"""

from __future__ import annotations

import argparse

from detector.cli.options import add_prediction_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "triton",
        help="write a Triton model repository (model + Python pre/post-processing + ensemble)",
        description="Write a Triton model repository: the network (onnxruntime_onnx or "
        "tensorrt_plan), Python-backend pre- and post-processing models that run our own "
        "torch-free code, and an ensemble N that takes encoded image bytes (IMAGE) and returns "
        "num_dets/boxes/scores/classes in original image pixels, the same tensors as our "
        'server\'s /v2 routes. The Triton container needs pip install "detector[serve]".',
    )
    parser.add_argument("--model", required=True, help="M.onnx, or M.engine with M.engine.json")
    parser.add_argument("--out", required=True, help="model repository folder (created)")
    parser.add_argument(
        "--name", help="ensemble name clients call (default detector, as detector serve --name)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        help="max_batch_size (default: 8 for a dynamic ONNX, the profile's max for an engine; "
        "a fixed-batch model gets 0)",
    )
    parser.add_argument("--instances", type=int, default=1, help="instances per model (default 1)")
    parser.add_argument(
        "--preferred-batch",
        type=int,
        nargs="+",
        default=[],
        help="dynamic batcher's preferred sizes",
    )
    parser.add_argument(
        "--queue-delay-us", type=int, help="dynamic batcher's max queue delay, µs (default 100)"
    )
    parser.add_argument(
        "--kind", choices=("gpu", "cpu"), default="gpu", help="where the network runs (default gpu)"
    )
    add_prediction_options(parser, of=" when a request names none")
    parser.set_defaults(func=run_triton)


def run_triton(args: argparse.Namespace) -> int:
    from export.triton import TritonOptions, describe, write_repository

    options = TritonOptions(
        name=args.name,
        max_batch=args.max_batch,
        instances=args.instances,
        preferred_batch=tuple(args.preferred_batch),
        queue_delay_us=args.queue_delay_us,
        kind=args.kind,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
    )
    print(describe(write_repository(args.model, args.out, options)))
    return 0
