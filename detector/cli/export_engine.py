"""``detector export engine`` and ``detector export torch2trt``: TensorRT engines.

``engine`` builds from our ONNX with TensorRT's Python API on TensorRT 10.x or 11.x (see
``export/engine.py``), then runs the engine and its ONNX on the same batch and prints how far
apart they are. ``torch2trt`` is YOLOX's own path, for the TensorRT versions torch2trt supports.
Both write the raw plan plus a ``M.engine.json`` sidecar.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    engine = subparsers.add_parser(
        "engine",
        help="build a TensorRT engine from an exported ONNX",
        description="Build a TensorRT engine (raw plan, loadable by trtexec and Triton) from an "
        "ONNX written by 'detector export onnx' or 'export int8', with a JSON metadata sidecar "
        "(M.engine.json). TensorRT 10.x sets FP16/INT8 builder flags; TensorRT 11.x takes the "
        "precision from the ONNX itself (fp16: the --half ONNX; int8: the Q/DQ ONNX).",
    )
    engine.add_argument("--onnx", required=True, help="ONNX file to build from")
    engine.add_argument("--out", required=True, help="engine file to write (M.engine)")
    engine.add_argument(
        "--precision", choices=("fp32", "fp16", "int8"), default="fp32", help="default fp32"
    )
    engine.add_argument("--min-batch", type=int, help="smallest batch (dynamic-batch ONNX)")
    engine.add_argument("--opt-batch", type=int, help="batch to tune for (default: max)")
    engine.add_argument("--max-batch", type=int, help="largest batch (dynamic-batch ONNX)")
    engine.add_argument(
        "--workspace", type=float, default=2.0, help="builder workspace limit, GiB (default 2)"
    )
    engine.add_argument("--timing-cache", help="timing cache file to reuse and update")
    engine.add_argument(
        "--version-compatible",
        action="store_true",
        help="build a plan that also runs on later TensorRT versions (can be slower)",
    )
    engine.add_argument(
        "--no-verify", action="store_true", help="skip running the engine against ONNX Runtime"
    )
    engine.set_defaults(func=run_engine)

    t2t = subparsers.add_parser(
        "torch2trt",
        help="build a TensorRT engine with torch2trt (YOLOX's path; TensorRT 8.x)",
        description="Convert a checkpoint with NVIDIA-AI-IOT/torch2trt (installed from source) "
        "and write the same raw engine and sidecar as 'export engine'. torch2trt calls "
        "TensorRT APIs that 10.x and 11.x removed; there, use 'export onnx' + 'export engine'.",
    )
    t2t.add_argument("--weights", required=True, help="checkpoint (ours or an official .pth)")
    t2t.add_argument("--model", help="model name (required for official YOLOX .pth files)")
    t2t.add_argument("--out", required=True, help="engine file to write (M.engine)")
    t2t.add_argument("--imgsz", type=int, help="square input side (default: the checkpoint's)")
    t2t.add_argument("--half", action="store_true", help="FP16 (torch2trt fp16_mode)")
    t2t.set_defaults(func=run_torch2trt)


def run_engine(args: argparse.Namespace) -> int:
    from export.engine import build_engine, compare_with_onnx
    from serve.runtime.metadata import read_sidecar

    out = build_engine(
        args.onnx,
        args.out,
        precision=args.precision,
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        workspace_gib=args.workspace,
        timing_cache=args.timing_cache,
        version_compatible=args.version_compatible,
    )
    extra = read_sidecar(out).extra
    profile = extra["profile"]
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.name}.json: TensorRT "
        f"{extra['tensorrt_version']}, {extra['gpu_name']} (sm {extra['compute_capability']}), "
        f"{args.precision}, batch {profile['min'][0]}..{profile['max'][0]}"
    )
    if args.no_verify:
        return 0
    failed = False
    for batch in sorted({profile["min"][0], profile["max"][0]}):
        result = compare_with_onnx(
            out, args.onnx, batch=batch, allow_host_code=args.version_compatible
        )
        verdict = "ok" if result.ok else "MISMATCH"
        print(
            f"check vs ONNX Runtime, batch {batch}: max |diff| boxes {result.box_diff:.4g} px, "
            f"scores {result.prob_diff:.4g} -> {verdict}"
        )
        failed |= not result.ok
    if failed:
        print(f"error: {out} disagrees with {args.onnx} beyond the {args.precision} tolerance")
        return 1
    return 0


def run_torch2trt(args: argparse.Namespace) -> int:
    from export.torch2trt import export_torch2trt

    out = export_torch2trt(
        args.weights, args.out, model_name=args.model, imgsz=args.imgsz, half=args.half
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.name}.json with torch2trt")
    return 0
