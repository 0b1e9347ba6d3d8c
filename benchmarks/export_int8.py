"""INT8 export: accuracy cost and ONNX Runtime CPU latency (results: benchmarks/export_int8.md).

Accuracy (COCO mAP on the data's val split, calibration on its train split):
  PyTorch (``detector eval``'s path) vs the FP32 ONNX vs INT8 for each calibration method
  (TensorRT target), quantize-everything, and the CPU target and its measured variants.
Latency (ONNX Runtime CPU provider, batch 1, the network alone): FP32 vs each INT8 file, the
  repeats interleaved (``serve.runtime.bench.time_calls``: every model once per repeat, the order
  rotated each repeat) so that the shared machine's load hits every model alike; medians and the
  ratio to FP32.

    python benchmarks/export_int8.py --weights runs/tiny_bccd/weights/best.pt \
        --data configs/data/bccd.yaml --out-dir runs/int8_bench
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detector.core.preprocess import preprocess  # noqa: E402
from detector.data import build_dataset, load_data_config  # noqa: E402
from export.int8 import DEFAULT_METHOD, METHODS, quantize_int8, replace_config  # noqa: E402
from export.int8_eval import evaluate_onnx  # noqa: E402
from export.onnx import export_onnx  # noqa: E402
from serve.runtime.bench import time_calls  # noqa: E402
from serve.runtime.metadata import read_onnx_metadata  # noqa: E402

# ONNX Runtime CPU forms tried for --target cpu (latency and accuracy); "cpu" is the shipped one
CPU_VARIANTS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "cpu_s8s8": {"activation_type": "QInt8", "activation_symmetric": True},
    "cpu_qoperator": {"quant_format": "QOperator"},
    "cpu_per_tensor": {"per_channel": False},
    "cpu_reduce_range": {"reduce_range": True},
    "cpu_conv_only": {"quantize_ops": ("Conv",)},
}


def pytorch_map(weights: Path, data: Path) -> tuple[float, float]:
    """mAP of the checkpoint as ``detector eval`` computes it (same functions, CPU)."""
    import torch

    from detector.models import load_inference_model
    from detector.training.validate import evaluate_predictions, predict_split

    dataset = build_dataset(load_data_config(data), "val")
    model, spec = load_inference_model(weights)
    predictions = predict_split(model, dataset, spec.input_size, torch.device("cpu"), batch_size=8)
    result = evaluate_predictions(predictions, dataset)
    return result.mAP, result.mAP50


def accuracy(args: argparse.Namespace, out: Path, fp32: Path, rows: dict[str, Any]) -> None:
    """Fill ``rows`` (those from an earlier run in the same --out-dir are kept)."""
    started = time.perf_counter()
    if "pytorch" not in rows:
        rows["pytorch"] = dict(zip(("mAP", "mAP50"), pytorch_map(args.weights, args.data)))
    if "onnx_fp32" not in rows:
        fp = evaluate_onnx(fp32, args.data)
        rows["onnx_fp32"] = {"mAP": fp.mAP, "mAP50": fp.mAP50}
    float_result = (rows["onnx_fp32"]["mAP"], rows["onnx_fp32"]["mAP50"])
    print(f"pytorch {rows['pytorch']}  onnx fp32 {rows['onnx_fp32']}", flush=True)

    def int8_row(name: str, **options: Any) -> None:
        t0 = time.perf_counter()
        report = quantize_int8(
            fp32,
            args.data,
            out / f"{name}.onnx",
            images=args.images,
            eval_data=args.data,
            float_result=float_result,
            **options,
        )
        rows[name] = {
            "mAP": report.int8_map,
            "mAP50": report.int8_map50,
            "drop": report.drop,
            "drop50": report.drop50,
            "method": report.method,
            "target": report.target,
            "calib_seconds": report.calib_seconds,
            "quantized_ops": report.quantized_ops,
            "float_ops": report.float_ops,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(
            f"{name}: mAP {report.int8_map:.4f} drop {report.drop:+.4f} "
            f"({rows[name]['seconds']} s)",
            flush=True,
        )

    for method in args.methods:
        int8_row(f"trt_{method}", method=method, target="tensorrt")
    if args.quantize_all:
        int8_row("trt_quantize_all", method=args.method, target="tensorrt", quantize_all=True)
    for name in args.cpu_variants:
        if name not in args.cpu_eval:  # built for the latency table only
            quantize_int8(
                fp32,
                args.data,
                out / f"{name}.onnx",
                images=args.images,
                method=args.method,
                target="cpu",
                config=replace_config("cpu", **CPU_VARIANTS[name]),
            )
            continue
        int8_row(
            name,
            method=args.method,
            target="cpu",
            config=replace_config("cpu", **CPU_VARIANTS[name]),
        )
    rows["seconds"] = round(time.perf_counter() - started, 1)


def latency(models: dict[str, Path], image: np.ndarray, repeats: int) -> dict[str, Any]:
    """Median ms per model, batch 1, interleaved repeats, and its speed-up over FP32."""
    import onnxruntime as ort

    sessions = {}
    for name, path in models.items():
        sessions[name] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"images": image}
    calls = {name: (lambda s=session: s.run(None, feed)) for name, session in sessions.items()}
    times = time_calls(calls, repeats, warmup=3)  # milliseconds, rotating order per repeat
    base = times["fp32"]
    return {
        name: {
            "median_ms": round(statistics.median(t), 2),
            # median of per-repeat ratios: each repeat's FP32 run against this model's run
            "speedup_vs_fp32": round(statistics.median(b / x for b, x in zip(base, t)), 3),
        }
        for name, t in times.items()
    }


def machine() -> dict[str, str]:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""

    lscpu = run(["lscpu"])
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "")
    import onnxruntime

    return {
        "cpu": fields.get("Model name", platform.processor()).strip(),
        "cores": fields.get("CPU(s)", "?").strip(),
        "vnni": str("avx512_vnni" in flags or "avx_vnni" in flags),
        "amx": str("amx_tile" in flags),
        "uptime": run(["uptime"]),
        "onnxruntime": onnxruntime.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="calibration (train) and val")
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "int8_bench")
    parser.add_argument("--images", type=int, default=128, help="calibration images")
    parser.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=sorted(METHODS),
        help="method for the quantize-all and CPU rows",
    )
    parser.add_argument("--methods", nargs="*", default=sorted(METHODS), choices=sorted(METHODS))
    parser.add_argument(
        "--cpu-variants", nargs="*", default=list(CPU_VARIANTS), choices=list(CPU_VARIANTS)
    )
    parser.add_argument(
        "--cpu-eval",
        nargs="*",
        default=["cpu", "cpu_conv_only"],
        help="CPU variants whose mAP is measured (the others: latency only)",
    )
    parser.add_argument(
        "--quantize-all",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure quantize-everything",
    )
    parser.add_argument("--repeats", type=int, default=30, help="latency repeats (0: none)")
    parser.add_argument("--skip-accuracy", action="store_true", help="latency of existing files")
    args = parser.parse_args()

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "fp32.onnx"
    if not fp32.exists():
        export_onnx(args.weights, fp32)
    results: dict[str, Any] = {
        "machine_before": machine(),
        "weights": str(args.weights),
        "data": str(args.data),
        "images": args.images,
    }
    previous = out / "results.json"
    rows = json.loads(previous.read_text()).get("accuracy", {}) if previous.exists() else {}
    results["accuracy"] = rows
    if not args.skip_accuracy:
        accuracy(args, out, fp32, rows)
    dataset = build_dataset(load_data_config(args.data), "val")
    size = read_onnx_metadata(fp32).input_size
    image = preprocess(dataset.read_image(0), size)[0][None]
    models = {"fp32": fp32}
    models.update({p.stem: p for p in sorted(out.glob("*.onnx")) if p.stem != "fp32"})
    if args.repeats > 0:
        results["latency"] = latency(models, image, args.repeats)
    results["machine_after"] = machine()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
