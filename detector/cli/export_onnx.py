"""``detector export onnx`` and ``detector export check``: write an ONNX model, verify it."""

from __future__ import annotations

import argparse

from detector.cli.options import add_prediction_options


def register(subparsers: argparse._SubParsersAction) -> None:
    onnx = subparsers.add_parser(
        "onnx",
        help="checkpoint -> ONNX (decode, optional NMS in the graph), verified against PyTorch",
        description="Export a checkpoint to ONNX: input 'images' [B,3,H,W] float32 BGR 0-255, "
        "output 'output' [B,N,5+C] decoded (or, with --nms, num_dets/boxes/scores/classes). "
        "The file carries its metadata and is checked with ONNX Runtime against PyTorch.",
    )
    onnx.add_argument("--weights", required=True, help="checkpoint (.pt, or official .pth)")
    onnx.add_argument("--model", help="model name, needed only for official YOLOX .pth files")
    onnx.add_argument("--out", required=True, help="ONNX file to write")
    onnx.add_argument("--imgsz", type=int, help="input size (default: the checkpoint's)")
    batch = onnx.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="fixed batch size (default 1)")
    batch.add_argument("--dynamic", action="store_true", help="dynamic batch dimension")
    onnx.add_argument("--nms", action="store_true", help="class-aware NMS inside the graph")
    onnx.add_argument("--half", action="store_true", help="FP16 weights and compute")
    add_prediction_options(onnx, of=" with --nms")
    onnx.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    onnx.add_argument(
        "--no-verify", action="store_true", help="skip the check against PyTorch (not advised)"
    )
    onnx.set_defaults(func=run_export)

    check = subparsers.add_parser(
        "check",
        help="compare an exported ONNX file with its checkpoint",
        description="Run an ONNX file through the serving runtime (ONNX Runtime) and PyTorch on "
        "the same images; print the largest difference and whether the detections agree. "
        "Exit status 1 when they disagree beyond the tolerance.",
    )
    check.add_argument("onnx", help="ONNX file written by 'detector export onnx'")
    check.add_argument("--weights", required=True, help="the checkpoint it was exported from")
    check.add_argument("--model", help="model name, needed only for official YOLOX .pth files")
    check.set_defaults(func=run_check)


def run_export(args: argparse.Namespace) -> int:
    from export.onnx import OnnxExportOptions, export_model, load_model

    options = OnnxExportOptions(
        batch=args.batch,
        dynamic=args.dynamic,
        nms=args.nms,
        half=args.half,
        score_threshold=args.conf,
        iou_threshold=args.iou,
        max_detections=args.max_det,
        opset=args.opset,
    )
    options.validate()
    model, spec = load_model(args.weights, args.model, args.imgsz)
    path = export_model(model, spec, args.out, options)
    print(f"wrote {path}")
    if args.no_verify:
        print("not verified (--no-verify)")
        return 0
    return _verify(path, model)


def run_check(args: argparse.Namespace) -> int:
    from export.onnx import load_model

    model, _ = load_model(args.weights, args.model)
    return _verify(args.onnx, model)


def _verify(path: str, model: object) -> int:
    import sys

    from export.verify import verify_onnx

    report = verify_onnx(path, model)
    print(report.summary())
    if not report.ok:
        print(
            f"error: {path} does not match PyTorch within the {report.precision} tolerance; "
            "the file is kept for inspection but not marked verified",
            file=sys.stderr,
        )
        return 1
    return 0
