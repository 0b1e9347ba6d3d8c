"""``detector demo``: the whole job on the embedded default dataset, on any machine.

Seven steps, each timed: generate a dataset (``SynthSpec.demo()``), train yolox_nano, evaluate
it (the COCO table), export ONNX and INT8 ONNX (with its accuracy report; on a GPU with
TensorRT also an engine), serve the model with ``detector serve`` in a child process and send
the sample images over HTTP, print the detections and write annotated images, then measure the
serving-path latency per backend (``serve.runtime.bench``) and print a summary. The server is
stopped (SIGTERM, then SIGKILL) even when a step fails. Sized to train in about 10 minutes on a
2-core CPU (benchmarks/demo_accuracy.md).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from detector.core.defaults import EVAL_CONF, EVAL_IOU, MAX_DET, PREDICT_CONF, PREDICT_IOU

STEPS = 7
# The demo trains with the shipped defaults: nano's short-run rate (0.024 per 64 images) and
# 3 no-aug epochs began as demo overrides (benchmarks/demo_accuracy.md) and are nano's own
# short-run values since the recipe check (benchmarks/recipe_check.md,
# configs/models/yolox_nano.yaml).


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="generate data, train, evaluate, export, serve and query, end to end",
        description="Runs the whole path on a generated dataset: data -> train -> eval -> "
        "export ONNX/INT8 (+ TensorRT on a GPU) -> serve over HTTP -> annotated detections -> "
        "latency and summary. Outputs under --out.",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (runs/demo)")
    parser.add_argument("--model", default="yolox_nano")
    parser.add_argument("--images", type=int, default=480, help="generated images (480)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (20)")
    parser.add_argument("--imgsz", type=int, default=320, help="input size (320)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (8)")
    parser.add_argument(
        "--workers", type=int, help="loader worker processes (default: from the usable cores)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--samples", type=int, default=8, help="val images sent to the server")
    parser.add_argument("--calib-images", type=int, default=32, help="INT8 calibration images")
    parser.add_argument(
        "--no-int8-eval", action="store_true", help="skip the INT8 accuracy report (faster)"
    )
    parser.add_argument("--runs", type=int, default=20, help="timed runs per latency figure")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="train overrides")
    parser.set_defaults(func=run)


@contextmanager
def _step(number: int, title: str, timings: dict[str, float]) -> Iterator[None]:
    print(f"\n[{number}/{STEPS}] {title}", flush=True)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        print(f"[{number}/{STEPS}] FAILED after {time.perf_counter() - start:.1f} s", flush=True)
        raise
    seconds = time.perf_counter() - start
    timings[title.split(":")[0]] = seconds
    print(f"[{number}/{STEPS}] done in {seconds:.1f} s", flush=True)


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.2f} MB"


def run(args: argparse.Namespace) -> int:
    timings: dict[str, float] = {}
    out = Path(args.out)
    started = time.perf_counter()
    summary: dict[str, Any] = {"files": {}, "latency": []}

    with _step(1, "data: the generated dataset", timings):
        data_yaml = _data(out, args.images)
    with _step(2, f"train: {args.model}, {args.epochs} epochs at {args.imgsz}", timings):
        run_dir = _train(args, out, data_yaml)
    weights = run_dir / "weights" / "best.pt"
    summary["files"]["checkpoint"] = weights
    with _step(3, "eval: COCO mAP on the val split", timings):
        summary["metrics"] = _evaluate(args, weights, data_yaml, out / "metrics.json")
    with _step(4, "export: ONNX, INT8 ONNX, TensorRT engine", timings):
        exported = _export(args, weights, data_yaml, out / "export", summary)
    serve_model, serve_args = exported["serve"]
    samples = _samples(data_yaml, args.samples)
    with _step(5, f"serve: {serve_model.name} over HTTP", timings):
        answers = _serve_and_query(out, serve_model, serve_args, samples, summary)
    with _step(6, "detections: per image, annotated images", timings):
        _print_detections(answers)
    with _step(7, "latency: serving path per backend and precision", timings):
        _latency(args, weights, exported, samples, summary)
    summary["total_s"] = time.perf_counter() - started
    _print_summary(summary, timings, out)
    return 0


def _data(out: Path, images: int) -> Path:
    import shutil

    from detector.data.synth import SynthSpec, make_synthetic_dataset, synth_header

    data_yaml = out / "data" / "data.yaml"
    spec = SynthSpec.demo()
    if data_yaml.is_file():
        with open(data_yaml) as handle:
            header = handle.readline()
        if header == synth_header(images, 0, spec):
            print(f"using the dataset already at {data_yaml}")
            return data_yaml
        if not header.startswith("# generated by 'detector data synth'"):
            raise ValueError(f"{data_yaml}: not a dataset the demo generated; choose another --out")
        print(f"{data_yaml} was generated with other settings: generating it again")
        shutil.rmtree(out / "data")
    print(f"generating {images} images under {out / 'data'} (SynthSpec.demo())")
    return make_synthetic_dataset(out / "data", images=images, seed=0, spec=spec)


def _train(args: argparse.Namespace, out: Path, data_yaml: Path) -> Path:
    from detector.training.launch import train

    overrides = [
        f"epochs={args.epochs}",
        f"imgsz={args.imgsz}",
        f"batch={args.batch}",
        *([f"workers={args.workers}"] if args.workers is not None else []),
        f"device={args.device}",
        f"output_dir={out}",
        "name=train",
        f"eval_interval={max(args.epochs // 4, 1)}",
        *args.overrides,
    ]
    print("overrides: " + " ".join(overrides))
    return train(args.model, data_yaml, overrides)


def _evaluate(
    args: argparse.Namespace, weights: Path, data_yaml: Path, metrics: Path
) -> dict[str, float]:
    from detector.cli.evaluate import run as run_eval

    run_eval(
        argparse.Namespace(
            weights=str(weights), data=str(data_yaml), model=None, split="val", imgsz=None,
            conf=EVAL_CONF, iou=EVAL_IOU, batch=8, workers=args.workers, device=args.device,
            voc=False, json=str(metrics),
        )
    )  # fmt: skip
    return json.loads(metrics.read_text())


def _export(
    args: argparse.Namespace, weights: Path, data_yaml: Path, folder: Path, summary: dict
) -> dict[str, Any]:
    """ONNX (verified against PyTorch), INT8 ONNX (with --eval unless --no-int8-eval) and, where
    TensorRT runs, an engine; returns the paths and what the server should run."""
    from detector.cli.export_int8 import run as run_int8
    from detector.cli.export_onnx import run_export

    folder.mkdir(parents=True, exist_ok=True)
    onnx = folder / f"{args.model}.onnx"
    int8 = folder / f"{args.model}.int8.onnx"
    print(f"-- ONNX -> {onnx}")
    status = run_export(
        argparse.Namespace(
            weights=str(weights), model=None, out=str(onnx), imgsz=None, batch=1, dynamic=False,
            nms=False, half=False, conf=PREDICT_CONF, iou=PREDICT_IOU, max_det=MAX_DET, opset=17,
            no_verify=False,
        )
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(f"{onnx}: the ONNX export did not match PyTorch")
    print(f"\n-- INT8 -> {int8} ({args.calib_images} calibration images from the train split)")
    report_json = folder / "int8_report.json"
    status = run_int8(
        argparse.Namespace(
            onnx=str(onnx), calib=str(data_yaml), out=str(int8), images=args.calib_images,
            method="minmax", target="cpu", eval=None if args.no_int8_eval else str(data_yaml),
            max_drop=None, quantize_ops=None, exclude=[], include=[], quantize_all=False,
            json=str(report_json),
        )
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(f"{int8}: INT8 export failed")
    summary["int8"] = json.loads(report_json.read_text())
    summary["files"].update(onnx=onnx, int8=int8)
    exported: dict[str, Any] = {"onnx": onnx, "int8": int8, "serve": (onnx, [])}
    engine = _engine(onnx, folder, args.device)
    if isinstance(engine, Path):
        summary["files"]["engine"] = engine
        exported["engine"] = engine
        exported["serve"] = (engine, ["--backend", "tensorrt"])
    else:
        summary["engine_skipped"] = engine
        print(f"\n-- TensorRT engine skipped: {engine}")
    return exported


def _engine(onnx: Path, folder: Path, device: str) -> Path | str:
    """An FP16 TensorRT engine (FP32 where the TensorRT line takes precision from the ONNX
    only), or the reason why none was built."""
    if device == "cpu":
        return "--device cpu"
    try:
        from serve.runtime.backends.tensorrt import unavailable_reason
    except ImportError as exc:
        return f"the TensorRT backend does not import ({exc})"
    reason = unavailable_reason()
    if reason is not None:
        return reason
    from detector.cli.export_engine import run_engine
    from export.engine import EngineBuildError

    engine = folder / f"{onnx.stem}.engine"
    for precision in ("fp16", "fp32"):
        print(f"\n-- TensorRT {precision} engine -> {engine}")
        namespace = argparse.Namespace(
            onnx=str(onnx), out=str(engine), precision=precision, min_batch=None,
            opt_batch=None, max_batch=None, workspace=2.0, timing_cache=None,
            version_compatible=False, no_verify=False,
        )  # fmt: skip
        try:
            if run_engine(namespace) == 0:
                return engine
        except EngineBuildError as exc:
            print(f"   {precision} not built: {exc}")
    return "the engine build failed (see above)"


def _samples(data_yaml: Path, count: int) -> list[Path]:
    from detector.data import build_dataset, load_data_config

    records = build_dataset(load_data_config(data_yaml), "val").records
    return [Path(record.path) for record in records[:count]]


def _serve_and_query(
    out: Path, model: Path, serve_args: list[str], samples: list[Path], summary: dict
) -> list[tuple[Path, dict[str, Any], Path]]:
    """Start ``detector serve``, POST each sample to /v1/detect (JSON, then ?format=image), stop
    the server (also on failure); returns (image, JSON answer, annotated JPEG) per sample."""
    from detector.cli.demo_server import ServerProcess, detect, get_json, post_image

    annotated = out / "served"
    annotated.mkdir(parents=True, exist_ok=True)
    answers = []
    server = ServerProcess(model, out / "serve.log", extra_args=serve_args)
    print(f"starting: detector serve --model {model} --port {server.port} (log {server.log})")
    with server:
        info = get_json(server.url, "/v1/models")["models"][0]
        print(f"ready at {server.url}: {info['name']} on {info['backend']} ({info['precision']})")
        summary["server"] = {"url": server.url, "backend": info["backend"]}
        for path in samples:
            answer = detect(server.url, path)
            jpeg, _ = post_image(server.url, path, "conf=0.3&format=image")
            target = annotated / f"{path.stem}.jpg"
            target.write_bytes(jpeg)
            answers.append((path, answer, target))
    how = "cleanly on SIGTERM" if server.stopped_cleanly else f"exit status {server.exit_code}"
    print(f"server stopped ({how}{', killed after the timeout' if server.killed else ''})")
    summary["files"]["annotated images"] = annotated
    summary["files"]["server log"] = server.log
    return answers


def _print_detections(answers: list[tuple[Path, dict[str, Any], Path]]) -> None:
    for path, answer, target in answers:
        found = answer["detections"]
        ms = answer["timings"]["total_ms"]
        print(f"{path.name}: {len(found)} objects ({ms:.1f} ms on the server) -> {target}")
        for det in found:
            box = ", ".join(f"{v:.0f}" for v in det["box"])
            print(f"    {det['class_name']:<10} {det['score']:.2f}  [{box}]")


def _latency(
    args: argparse.Namespace,
    weights: Path,
    exported: dict[str, Any],
    samples: list[Path],
    summary: dict,
) -> None:
    """Median times of the serving path (``serve.runtime.bench``: pre-processing, network, post-
    processing) per backend and precision, batch 1, over the sample images."""
    import cv2

    from serve.runtime.bench import Target, run_benchmark

    # threads: each backend's default here (torch keeps the training's CPU plan, 1 thread on
    # 2 cores: 2 threads run >50x slower beside a busy process, benchmarks/cpu_defaults.md)
    targets = [
        Target(weights, "torch", {"device": args.device}),
        Target(exported["onnx"], "onnxruntime"),
        Target(exported["int8"], "onnxruntime"),
    ]
    if "engine" in exported:
        targets.append(Target(exported["engine"], "tensorrt"))
    images = [cv2.imread(str(path)) for path in samples]
    rows = run_benchmark(targets, [1], images, "demo val samples", args.runs, warmup=3)
    for target, row in zip(targets, rows):
        row["path"] = target.path
        summary["latency"].append(row)
        print(f"{row['backend']:<12} {row['precision']:<5} {row['device']:<8} network "
              f"{row['infer_p50_ms']:7.2f} ms, whole path {row['total_p50_ms']:7.2f} ms  "
              f"({target.path.name})")  # fmt: skip


def _print_summary(summary: dict, timings: dict[str, float], out: Path) -> None:
    metrics, int8 = summary["metrics"], summary.get("int8") or {}
    print("\n" + "=" * 78 + "\ndemo summary\n" + "=" * 78)
    print(f"val mAP@0.5:0.95 {metrics['mAP']:.3f}   mAP@0.5 {metrics['mAP50']:.3f}   (PyTorch)")
    if int8.get("int8_map") is not None:
        print(
            f"INT8 ONNX        {int8['int8_map']:.3f}   mAP@0.5 {int8['int8_map50']:.3f}   "
            f"(float ONNX {int8['float_map']:.3f} / {int8['float_map50']:.3f})"
        )
    print(f"\n{'backend':<12} {'prec.':<5} {'device':<8} {'network':>10} {'whole path':>11} "
          f"{'file size':>10}  file")  # fmt: skip
    for row in summary["latency"]:
        size = _mb(row["path"])
        print(f"{row['backend']:<12} {row['precision']:<5} {row['device']:<8} "
              f"{row['infer_p50_ms']:7.2f} ms {row['total_p50_ms']:8.2f} ms {size:>10}  "
              f"{row['path']}")  # fmt: skip
    print("latency: medians, batch 1 (serve.runtime.bench); whole path = letterbox + network + NMS")
    if summary.get("engine_skipped"):
        print(f"TensorRT: skipped ({summary['engine_skipped']})")
    print("\nsteps: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print(f"total: {summary['total_s']:.0f} s")
    print("\nfiles:")
    for label, path in summary["files"].items():
        print(f"  {label:<17} {path}")
    print(f"  {'metrics':<17} {out / 'metrics.json'}")
    print(
        f"\ndemo done: val mAP {metrics['mAP']:.3f}, mAP50 {metrics['mAP50']:.3f}; outputs in {out}"
    )
