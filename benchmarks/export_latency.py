"""ONNX Runtime CPU latency, batch 1: our exported ONNX against the official YOLOX ONNX.

Both graphs hold the same weights (the deterministic golden fill of ``tests/models``): the
official model is built by the installed ``yolox`` package (``make reference``) and exported the
way its ``tools/export_onnx.py`` does it (``nn.SiLU`` replaced by its own ``SiLU``, the head's
``decode_in_inference`` on so both graphs return decoded ``[1, N, 85]``, opset 11, input
``images``, output ``output``, onnx-simplifier when installed), with ``torch.onnx.export`` in
place of the removed ``torch.onnx._export``; ours is ``export.onnx.export_onnx`` of the same
weights (batch norm fused, onnxslim, opset 17). Outputs are checked equal before timing.

Rows:
- ``graph``: ``session.run`` alone, on the same letterboxed image;
- ``pipeline``: one JPEG's bytes -> image decode -> pre-processing -> inference ->
  post-processing (NMS) -> detections. Ours: ``cv2.imdecode`` +
  ``serve.runtime.predictor.Predictor``;
  official: ``cv2.imdecode`` + ``yolox.data.data_augment.preproc`` + the session +
  ``yolox.utils.multiclass_nms`` (what its ONNX Runtime demo does).

Every repeat runs each side once, in alternating order, so the load of the shared machine hits
both alike; reported are medians (ms) and the median of per-repeat ratios (ours / official).

    .venv/bin/python benchmarks/export_latency.py [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "models"))
sys.path.insert(0, str(ROOT))

from golden_fill import fill_state_dict  # noqa: E402

from detector.core.preprocess import preprocess  # noqa: E402
from detector.models import build_model  # noqa: E402
from detector.training.checkpoint import save_atomic  # noqa: E402
from export.onnx import export_onnx  # noqa: E402
from serve.runtime.bench import time_calls  # noqa: E402
from serve.runtime.predictor import Predictor  # noqa: E402

CASES = [("yolox_nano", "yolox-nano", 416), ("yolox_s", "yolox-s", 640)]
REFERENCE_MS = {"yolox_nano": 9.2, "yolox_s": 108.0}  # official ONNX timings quoted as reference
IMAGE = ROOT / "data" / "bccd" / "images" / "BloodImage_00000.jpg"
CONF, IOU = 0.25, 0.45


def official_onnx(official_name: str, gain: float, size: int, out: Path) -> torch.nn.Module:
    """Export the official model as its tools/export_onnx.py does; returns the model."""
    from torch import nn
    from yolox.exp import get_exp
    from yolox.models.network_blocks import SiLU
    from yolox.utils import replace_module

    exp = get_exp(None, official_name)
    model = exp.get_model()
    model.eval()
    model.load_state_dict(fill_state_dict(model.state_dict(), gain))
    model = replace_module(model, nn.SiLU, SiLU)
    model.head.decode_in_inference = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(  # the script's torch.onnx._export, which torch no longer has
            model,
            torch.randn(1, 3, size, size),
            str(out),
            input_names=["images"],
            output_names=["output"],
            opset_version=11,
            dynamo=False,
        )
    try:
        import onnx
        from onnxsim import simplify
    except ModuleNotFoundError:
        return model  # the script's --no-onnxsim path
    simplified, ok = simplify(onnx.load(str(out)))
    assert ok, "onnx-simplifier could not validate the official model"
    onnx.save(simplified, str(out))
    return model


def our_onnx(name: str, state: dict, size: int, folder: Path) -> Path:
    model = build_model(name)
    model.load_state_dict(state, strict=True)
    meta = {"model_name": name, "num_classes": 80, "class_names": [str(i) for i in range(80)],
            "input_size": [size, size]}  # fmt: skip
    weights = save_atomic({"model": model.state_dict(), "meta": meta}, folder / f"{name}.pt")
    return export_onnx(weights, folder / f"{name}.onnx", imgsz=size)


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def official_pipeline(sess: ort.InferenceSession, size: int) -> Callable[[bytes], object]:
    from yolox.data.data_augment import preproc
    from yolox.utils import multiclass_nms

    def run(data: bytes) -> object:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        tensor, ratio = preproc(image, (size, size))
        (output,) = sess.run(None, {"images": tensor[None]})
        pred = output[0]
        boxes = np.empty_like(pred[:, :4])
        boxes[:, :2] = pred[:, :2] - pred[:, 2:4] / 2
        boxes[:, 2:] = pred[:, :2] + pred[:, 2:4] / 2
        return multiclass_nms(boxes / ratio, pred[:, 4:5] * pred[:, 5:], IOU, CONF)

    return run


def our_pipeline(predictor: Predictor) -> Callable[[bytes], object]:
    def run(data: bytes) -> object:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        return predictor.predict([image], conf=CONF, iou=IOU)

    return run


def int8_rows(args: argparse.Namespace) -> list[str]:
    """INT8 rows for the table (``| model | what | ours | official | ratio | ... |``).

    Empty here: INT8 against FP32 per target is measured by ``benchmarks/export_int8.py``.
    A row added here must time its INT8 session interleaved with the FP32 one, as above."""
    return []


def measure(name: str, official_name: str, size: int, args: argparse.Namespace) -> dict:
    gain = float(np.load(ROOT / "tests" / "models" / "golden" / f"{name}.npz")["gain"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        official_model = official_onnx(official_name, gain, size, folder / "official.onnx")
        ours_path = our_onnx(name, official_model.state_dict(), size, folder)
        theirs = session(folder / "official.onnx", args.threads)
        predictor = Predictor.from_path(
            ours_path, providers=["CPUExecutionProvider"], threads=args.threads
        )
        ours = predictor.backend.session
        data = IMAGE.read_bytes()
        x = preprocess(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), size)[0]
        x = x[None]
        (a,) = ours.run(None, {"images": x})
        (b,) = theirs.run(None, {"images": x})
        scale = float(np.abs(b[..., :4]).max())
        diff = float(np.abs(a - b).max())
        assert np.allclose(a[..., :4], b[..., :4], atol=1e-4 * scale, rtol=1e-4), diff
        assert np.allclose(a[..., 4:], b[..., 4:], atol=1e-4), diff
        graph = time_calls(
            {
                "ours": lambda: ours.run(None, {"images": x}),
                "official": lambda: theirs.run(None, {"images": x}),
            },
            args.repeats,
        )
        ours_run, theirs_run = our_pipeline(predictor), official_pipeline(theirs, size)
        pipeline = time_calls(
            {"ours": lambda: ours_run(data), "official": lambda: theirs_run(data)}, args.repeats
        )
        return {"graph": graph, "pipeline": pipeline, "diff": diff, "scale": scale}


def cpu_description() -> str:
    model, flags = "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    present = [
        f for f in ("avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8") if f in flags
    ]
    return f"{model}, {os.cpu_count()} CPUs, flags: {', '.join(present) or 'no AVX-512/AMX'}"


def yolox_version() -> str:
    import yolox

    return yolox.__version__


def onnxsim_version() -> str:
    try:
        import onnxsim
    except ModuleNotFoundError:
        return "nothing (onnxsim not installed: the script's --no-onnxsim path)"
    return f"onnxsim {onnxsim.__version__}"


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--md", type=Path, default=ROOT / "benchmarks" / "export_latency.md")
    parser.add_argument("--note", default="", help="free text for the results file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load()
    rows = []
    for name, official_name, size in CASES:
        result = measure(name, official_name, size, args)
        for what in ("graph", "pipeline"):
            times = result[what]
            med = {k: statistics.median(v) for k, v in times.items()}
            ratio = statistics.median(a / b for a, b in zip(times["ours"], times["official"]))
            rows.append(
                f"| {name} @{size} | {what} | {med['ours']:.1f} | {med['official']:.1f} | "
                f"{ratio:.3f} | {REFERENCE_MS[name] if what == 'graph' else '-'} |"
            )
            print(rows[-1], flush=True)
        print(f"{name}: outputs equal (max diff {result['diff']:.2g}, box scale "
              f"{result['scale']:.4g})", flush=True)  # fmt: skip
    rows += int8_rows(args)
    lines = [
        "# Export latency: our ONNX vs the official YOLOX ONNX (ONNX Runtime CPU, batch 1)",
        "",
        f"Command: `.venv/bin/python benchmarks/export_latency.py --repeats {args.repeats}"
        + (f" --threads {args.threads}" if args.threads != 2 else "")
        + "`",
        "",
        f"Machine: {cpu_description()}; onnxruntime {ort.__version__} "
        f"(CPUExecutionProvider, intra-op threads {args.threads}), torch {torch.__version__}, "
        f"yolox {yolox_version()}, official graph simplified with {onnxsim_version()}.",
        f"Load before: `{load_before}`; after: `{load()}`. The CPU is shared with other jobs,",
        "so both sides run interleaved (alternating order per repeat, 3 warm-up runs) and the",
        "ratio is the median of per-repeat ratios, which cancels slow load changes; absolute",
        "milliseconds move with the load.",
        "",
        "Same weights on both sides (golden fill), outputs checked equal before timing. `graph`:",
        "`session.run` alone. `pipeline`: JPEG bytes -> decode -> letterbox -> inference -> NMS",
        f"(conf {CONF}, IoU {IOU}); ours through `Predictor`, official through",
        "`yolox.data.data_augment.preproc` + `yolox.utils.multiclass_nms`.",
        "",
    ]
    if args.note:
        lines += [args.note, ""]
    lines += [
        "| model | what | ours (ms) | official (ms) | ours / official | reference official (ms) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "INT8 against FP32 (per target): see `benchmarks/export_int8.md`.",
    ]
    args.md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
