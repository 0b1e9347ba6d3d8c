"""``detector export int8``: calibrated Q/DQ INT8 ONNX that states what it costs."""

from __future__ import annotations

import argparse
import json
import sys
import time

from detector.core.console import is_terminal


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# kept equal to export.int8's tables by tests/export/test_export_int8.py (importing export.int8
# here would load ONNX Runtime's quantizer for every 'detector export' command)
METHODS = ("entropy", "minmax", "percentile")
TARGETS = ("cpu", "tensorrt")
DEFAULT_METHOD = "minmax"
DEFAULT_IMAGES = 128


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "int8",
        help="float ONNX -> INT8 Q/DQ ONNX calibrated on real images (with its mAP cost)",
        description="Calibrate a float ONNX (from 'detector export onnx') on real images passed "
        "through the serving pre-processing and write a Q/DQ INT8 ONNX with ONNX Runtime's "
        "quantizer. The backbone, neck and head convolutions are quantized; the box decode, the "
        "sigmoids and the output concat stay float. --eval scores the float and INT8 models on "
        "the data's val split; --max-drop refuses (exit 1, no file) a larger mAP drop.",
    )
    parser.add_argument("--onnx", required=True, help="float ONNX written by 'export onnx'")
    parser.add_argument(
        "--calib", required=True, help="dataset config YAML (its train split) or image directory"
    )
    parser.add_argument("--out", required=True, help="INT8 ONNX file to write")
    parser.add_argument(
        "--images",
        type=int,
        default=DEFAULT_IMAGES,
        help=f"calibration images, spread over the source (default {DEFAULT_IMAGES})",
    )
    parser.add_argument(
        "--method",
        choices=sorted(METHODS),
        default=DEFAULT_METHOD,
        help=f"range calibration (default {DEFAULT_METHOD})",
    )
    parser.add_argument(
        "--target",
        choices=sorted(TARGETS),
        default="tensorrt",
        help="tensorrt: symmetric signed INT8 Q/DQ, per-channel weights (default); cpu: the "
        "form that runs fastest on ONNX Runtime's CPU provider",
    )
    parser.add_argument("--eval", metavar="DATA", help="dataset config: report mAP float vs INT8")
    parser.add_argument(
        "--max-drop",
        type=float,
        metavar="X",
        help="fail (no file written) when mAP@0.5:0.95 drops by more than X (e.g. 0.01)",
    )
    parser.add_argument(
        "--quantize-ops",
        type=_names,
        metavar="OP,...",
        help="op types to quantize (default: the target's, e.g. Conv for tensorrt)",
    )
    parser.add_argument(
        "--exclude",
        type=_names,
        default=[],
        metavar="NODE,...",
        help="more node names to keep float",
    )
    parser.add_argument(
        "--include",
        type=_names,
        default=[],
        metavar="NODE,...",
        help="node names to quantize although the plan keeps them float",
    )
    parser.add_argument(
        "--quantize-all",
        action="store_true",
        help="quantize every node ONNX Runtime can (no float decode/sigmoid; for comparison)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    parser.set_defaults(func=run)


def _progress(label: str, interval_s: float = 30.0):
    """Progress of calibration or evaluation: redrawn in place on a terminal, else a line every
    ``interval_s`` seconds and one at the end (CI, ``docker logs``)."""
    terminal = is_terminal(sys.stderr)
    last = [time.monotonic()]

    def show(done: int, total: int) -> None:
        if terminal:
            end = "\n" if done >= total else ""
            print(f"\r{label}: {done}/{total} images", end=end, file=sys.stderr, flush=True)
        elif done >= total or time.monotonic() - last[0] >= interval_s:
            last[0] = time.monotonic()
            print(f"{label}: {done}/{total} images", file=sys.stderr, flush=True)

    return show


def run(args: argparse.Namespace) -> int:
    from export.int8 import AccuracyDropError, quantize_int8

    def eval_progress(which: str, done: int, total: int) -> None:
        _progress(f"evaluating {which}")(done, total)

    try:
        report = quantize_int8(
            args.onnx,
            args.calib,
            args.out,
            images=args.images,
            method=args.method,
            target=args.target,
            quantize_ops=args.quantize_ops,
            exclude=args.exclude,
            include=args.include,
            quantize_all=args.quantize_all,
            eval_data=args.eval,
            max_drop=args.max_drop,
            progress=_progress("calibrating"),
            eval_progress=eval_progress,
        )
    except AccuracyDropError as exc:
        _print_report(exc.report)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print_report(report)
    print(f"wrote {report.output}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report.to_dict(), handle, indent=2)
            handle.write("\n")
    return 0


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{op} {n}" for op, n in counts.items()) or "none"


def _print_report(report) -> None:  # noqa: ANN001 - export.int8.Int8Report, imported lazily
    settings = report.settings
    print(
        f"INT8 ({report.target}): {report.method} calibration on {report.images} images "
        f"from {report.calib_source} ({report.calib_seconds:.0f} s)"
    )
    print(
        f"  activations {settings['activation_type']} "
        f"{'symmetric' if settings['activation_symmetric'] else 'asymmetric'}, weights "
        f"{settings['weight_type']} {'per channel' if settings['per_channel'] else 'per tensor'}"
        f", format {settings['quant_format']}"
    )
    print(f"  on INT8 inputs: {_counts(report.quantized_ops)}")
    print(f"  float:          {_counts(report.float_ops)}")
    print(
        f"  kept float by the plan: {len(report.kept_float_nodes)} nodes (decode, sigmoids, "
        f"output concat, --exclude); {report.qdq_nodes} Q/DQ nodes"
    )
    if report.drop is not None:
        print(
            f"  mAP@0.5:0.95  float {report.float_map:.4f}  int8 {report.int8_map:.4f}  "
            f"drop {report.drop:+.4f}"
        )
        print(
            f"  mAP@0.5       float {report.float_map50:.4f}  int8 {report.int8_map50:.4f}  "
            f"drop {report.drop50:+.4f}"
        )
