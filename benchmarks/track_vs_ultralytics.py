"""Whole tracking pipeline on one video file: ``detector track`` against Ultralytics ``yolo track``.

Both read the same generated 640 x 480 video (``track_common.write_shapes_video``: moving
shapes, 30 fps, ``--frames`` frames) every frame in order, run a network at 416 x 416 with
ONNX Runtime on the CPU, track with ByteTrack and write their usual outputs:

- ours: ``detector track VIDEO --model nano_416.onnx``: yolox_nano, 80 classes, random
  weights (``track_common.build_nano_onnx``), exported like ``detector export onnx``; writes
  ``VIDEO.jsonl`` and an annotated ``VIDEO.mp4``;
- theirs: ``yolo track model=yolo11n.onnx tracker=bytetrack.yaml imgsz=416 device=cpu
  save=True save_txt=True``: ``yolo11n.yaml`` built with random weights and exported by
  ``yolo export format=onnx imgsz=416`` (its defaults: opset 18, onnxslim); writes an annotated
  video and a label file per frame with detections, and logs a line per frame (its default).

With random weights neither network finds anything (both heads start from a tiny score
prior): zero detections per frame on both sides, counted and reported, so tracking and drawing
see empty frames; the tracker's own cost at 10 and 100 objects is ``tracker_bench.py``'s.

Per-frame time: each tool reports a frame when it is done with it (ours: its JSON line, read
through a FIFO put where ``VIDEO.jsonl`` goes; theirs: its log line on stdout, through a
pipe); time per frame = (last stamp - stamp of frame ``--warmup``) / frames between, so start-up
(imports, model load) is left out. Network time: the same ONNX file's ``session.run`` on one
``[1, 3, 416, 416]`` input, median of ``--net-runs``, each side's session made as its tool
makes it (ours: ``serve.runtime.backends.onnxruntime.OnnxRuntimeBackend``, spinning off;
theirs: ONNX Runtime's default options, as ``ultralytics.nn.backends.onnx`` does).

Overhead outside the network, two ways:

- subtracted: time per frame minus network time (what the goal is stated in);
- direct: time per frame of the same run with a network-free twin of each model
  (``track_common.null_onnx``: same input, output shape and metadata, all-zero output), which
  needs no subtraction of two noisy numbers.

The sides alternate (ours first in even repeats), each repeat running both models of both
sides and both network timings; medians over ``--repeats``.

Ultralytics is AGPL and not a dependency: install it in an environment of its own that reuses
this one's torch and ONNX Runtime, and point ``--peer-python`` at it::

    python3 -m venv /tmp/ultra-venv
    site=lib/python3.11/site-packages
    echo $PWD/.venv/$site > /tmp/ultra-venv/$site/project.pth
    /tmp/ultra-venv/bin/pip install ultralytics
    .venv/bin/python benchmarks/track_vs_ultralytics.py --peer-python /tmp/ultra-venv/bin/python

Ultralytics runs with ``YOLO_OFFLINE=1`` and its settings in the work folder: it fetches
nothing (its text is drawn with OpenCV, so no font is downloaded).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from track_common import (  # noqa: E402
    ROOT,
    LineStamps,
    build_nano_onnx,
    busy_processes,
    command_line,
    machine,
    make_fifo,
    median,
    null_onnx,
    versions,
    write_results,
    write_shapes_video,
)

sys.path.insert(0, str(ROOT))
IMGSZ = 416
THEIR_FRAME_LINE = re.compile(r"^video \d+/\d+ \(frame (\d+)/(\d+)\)")
THEIR_SPEED_LINE = re.compile(r"Speed: ([\d.]+)ms preprocess, ([\d.]+)ms inference, "
                              r"([\d.]+)ms postprocess")  # fmt: skip
SIDES = ("ours", "ultralytics")


def export_peer(folder: Path) -> None:
    """Run by ``--peer-python``: yolo11n from its YAML (random weights) -> ONNX at 416."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    path = YOLO("yolo11n.yaml").export(format="onnx", imgsz=IMGSZ)
    print(Path(path).resolve())


def peer_env(work: Path) -> dict[str, str]:
    env = dict(os.environ, YOLO_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["YOLO_CONFIG_DIR"] = str(work / "ultralytics_settings")
    return env


def per_frame_ms(stamps: list[float], warmup: int) -> float:
    """Mean time per frame after the first ``warmup`` frames, ms."""
    if len(stamps) < warmup + 2:
        raise RuntimeError(f"only {len(stamps)} frames reported")
    return (stamps[-1] - stamps[warmup]) / (len(stamps) - 1 - warmup) * 1e3


def run_ours(video: Path, model: Path, out: Path, warmup: int) -> dict:
    """``detector track`` on ``video``; its JSON lines time-stamped through a FIFO."""
    fifo = make_fifo(out / f"{video.stem}.jsonl")
    stamps = LineStamps(fifo)
    started = time.time()
    with (out / "log.txt").open("w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "detector", "track", str(video), "--model", str(model),
             "--out", str(out), "--progress-every", "0"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, check=False,
        )  # fmt: skip
    wall = time.time() - started
    stamps.join(30)
    if proc.returncode != 0:
        raise RuntimeError(f"detector track failed ({proc.returncode}): see {out / 'log.txt'}")
    records = [json.loads(line) for _, line in stamps.lines]
    return {
        "frames": len(records),
        "ms_per_frame": per_frame_ms([t for t, _ in stamps.lines], warmup),
        "detections_per_frame": float(np.mean([len(r["detections"]) for r in records])),
        "wall_s": wall,
    }


def run_theirs(video: Path, model: Path, out: Path, warmup: int, peer: Path, work: Path) -> dict:
    """``yolo track`` on ``video``; its per-frame log lines time-stamped through a pipe."""
    yolo = peer.parent / "yolo"
    command = [str(yolo)] if yolo.is_file() else [str(peer), "-m", "ultralytics"]
    command += ["track", f"model={model}", f"source={video}", "tracker=bytetrack.yaml",
                f"imgsz={IMGSZ}", "device=cpu", "save=True", "save_txt=True",
                f"project={out}", "name=run", "exist_ok=True"]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=peer_env(work), cwd=out)  # fmt: skip
    stamps = LineStamps(proc.stdout)
    proc.wait()
    wall = time.time() - started
    stamps.join(30)
    lines = [line for _, line in stamps.lines]
    (out / "log.txt").write_text("".join(lines))
    if proc.returncode != 0:
        raise RuntimeError(f"yolo track failed ({proc.returncode}): see {out / 'log.txt'}")
    frame_times = [t for t, line in stamps.lines if THEIR_FRAME_LINE.match(line)]
    labels = list((out / "run" / "labels").glob("*.txt"))
    detections = sum(len(p.read_text().splitlines()) for p in labels)
    speed = next((m.groups() for line in lines if (m := THEIR_SPEED_LINE.search(line))), None)
    return {
        "frames": len(frame_times),
        "ms_per_frame": per_frame_ms(frame_times, warmup),
        "detections_per_frame": detections / max(len(frame_times), 1),
        "wall_s": wall,
        "own_speed_ms": None
        if speed is None
        else dict(zip(("preprocess", "inference", "postprocess"), map(float, speed))),  # fmt: skip
    }


def network_ms(side: str, model: Path, runs: int) -> float:
    """Median ``session.run`` time on one ``[1, 3, 416, 416]`` input, the session made as the
    side's tool makes it."""
    rng = np.random.default_rng(0)
    if side == "ours":
        from serve.runtime.backends.onnxruntime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(model)
        x = rng.uniform(0, 255, (1, 3, IMGSZ, IMGSZ)).astype(np.float32)

        def call() -> None:
            backend.infer(x)
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        x = rng.uniform(0, 1, (1, 3, IMGSZ, IMGSZ)).astype(np.float32)

        def call() -> None:
            session.run(None, {name: x})

    for _ in range(5):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def summarise(repeats: list[dict]) -> dict:
    """Medians over repeats, per side, and the ratios ours / theirs."""
    out: dict = {}
    for side in SIDES:
        real = [r[side]["network"]["ms_per_frame"] for r in repeats]
        null = [r[side]["null"]["ms_per_frame"] for r in repeats]
        net = [r[side]["network_ms"] for r in repeats]
        out[side] = {
            "ms_per_frame": median(real),
            "frames_per_s": 1e3 / median(real),
            "network_ms": median(net),
            "overhead_subtracted_ms": median([a - b for a, b in zip(real, net)]),
            "overhead_direct_ms": median(null),
            "frames_per_s_without_network": 1e3 / median(null),
            "detections_per_frame": median(
                [r[side][k]["detections_per_frame"] for r in repeats for k in ("network", "null")]
            ),
        }
    speeds = [r["ultralytics"]["network"].get("own_speed_ms") for r in repeats]
    if all(speeds):
        out["ultralytics"]["own_inference_ms"] = median([x["inference"] for x in speeds])
    ours, theirs = out["ours"], out["ultralytics"]
    out["ratio_ours_over_theirs"] = {
        "overhead_subtracted": ours["overhead_subtracted_ms"] / theirs["overhead_subtracted_ms"],
        "overhead_direct": ours["overhead_direct_ms"] / theirs["overhead_direct_ms"],
        "frames_per_s": ours["frames_per_s"] / theirs["frames_per_s"],
    }
    return out


def busy_note(meta: dict) -> str:
    """``; also running: ...`` from the processes busy when the run began."""
    busy = meta.get("busy_processes_before") or []
    return f"; also running: {'; '.join(busy)}" if busy else ""


def markdown(result: dict) -> str:
    meta, s = result["meta"], result["summary"]
    ours, theirs, ratio = s["ours"], s["ultralytics"], s["ratio_ours_over_theirs"]
    load = ", ".join(f"{x:g}" for x in meta["load_average_before"])
    lines = [
        "## Whole pipeline: `detector track` against Ultralytics `yolo track`",
        "",
        f"- date: {meta['date']}, commit {meta['commit']}",
        f"- CPU: {meta['cpu']}, {meta['cores']} cores, shared (load average {load} before "
        f"the run{busy_note(meta)})",
        f"- command: `{meta['command']}`",
        f"- video: {meta['video']}",
        f"- models: {meta['models']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
        f"Medians of {meta['repeats']} repeats, sides alternating. Time per frame: steady "
        f"state after {meta['warmup_frames']} frames, from each tool's per-frame output. "
        "Overhead = time per frame outside the network: subtracted (time per frame - the "
        "network's own `session.run` time) and direct (the same run with a network-free twin "
        "of the model). Method: the docstring of `benchmarks/track_vs_ultralytics.py`.",
        "",
        "| | frames/s | ms per frame | network ms | overhead, subtracted (ms) | "
        "overhead, direct (ms) | detections per frame |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in (("ours (`detector track`, yolox_nano)", ours),
                     ("Ultralytics (`yolo track`, yolo11n)", theirs)):  # fmt: skip
        lines.append(
            f"| {label} | {r['frames_per_s']:.1f} | {r['ms_per_frame']:.1f} | "
            f"{r['network_ms']:.1f} | {r['overhead_subtracted_ms']:.1f} | "
            f"{r['overhead_direct_ms']:.1f} | {r['detections_per_frame']:.0f} |"
        )
    lines.append(
        f"| **ours / theirs** | {ratio['frames_per_s']:.2f}x | | | "
        f"**{ratio['overhead_subtracted']:.2f}x** | **{ratio['overhead_direct']:.2f}x** | |"
    )
    own = theirs.get("own_inference_ms")
    if own is not None:
        lines += [
            "",
            f"Ultralytics' own log puts its inference at {own:.1f} ms per frame in these runs "
            f"(median); the same `session.run` alone took {theirs['network_ms']:.1f} ms. The "
            "subtracted overhead is a whole run minus a network timed apart, so it moves with "
            "whatever the network's time does between the two (Ultralytics keeps ONNX "
            "Runtime's default spin-waiting threads, whose time depends on what else runs); "
            "the direct one has no such term and is the one to read on a shared machine.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer-python", type=Path, default=Path("/tmp/ultra-venv/bin/python"),
                        help="a Python with ultralytics installed (see the docstring)")  # fmt: skip
    parser.add_argument("--frames", type=int, default=300, help="frames of the video")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10, help="frames left out at the start")
    parser.add_argument("--net-runs", type=int, default=50, help="timed network runs per repeat")
    parser.add_argument("--work", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks/results/track_vs_ultralytics_nano416.json"
    )
    parser.add_argument(
        "--md",
        default=str(ROOT / "benchmarks/tracker_bench.md"),
        help="page whose section this run rewrites ('' for none)",
    )
    parser.add_argument("--peer-export", type=Path, help=argparse.SUPPRESS)  # run by the peer
    args = parser.parse_args()
    if args.peer_export:
        export_peer(args.peer_export)
        return 0
    if not args.peer_python.is_file():
        parser.error(f"--peer-python {args.peer_python}: no such file (see --help)")

    meta = machine()
    load_before = meta.pop("load_average_1_5_15")
    busy = busy_processes()
    work = args.work or Path(tempfile.mkdtemp(prefix="track_vs_ultralytics_"))
    video = write_shapes_video(work / "shapes_640x480.mp4", args.frames)
    ours = build_nano_onnx(work / "ours", IMGSZ)
    exported = subprocess.run(
        [str(args.peer_python), __file__, "--peer-export", str(work / "ultralytics")],
        capture_output=True, text=True, env=peer_env(work), check=False,
    )  # fmt: skip
    if exported.returncode != 0:
        raise SystemExit(f"yolo11n export failed:\n{exported.stderr[-3000:]}")
    theirs = Path(exported.stdout.strip().splitlines()[-1])
    models = {
        "ours": {"network": ours, "null": null_onnx(ours, work / "ours" / "null.onnx")},
        "ultralytics": {"network": theirs,
                        "null": null_onnx(theirs, work / "ultralytics" / "null.onnx")},
    }  # fmt: skip
    peer_versions = subprocess.run(
        [str(args.peer_python), "-c", "import ultralytics, torch, onnxruntime as o; "
         "print(ultralytics.__version__, torch.__version__, o.__version__)"],
        capture_output=True, text=True, env=peer_env(work), check=True,
    ).stdout.split()  # fmt: skip

    repeats = []
    for r in range(args.repeats):
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        repeat: dict = {"order": list(order)}
        for side in order:
            repeat[side] = {}
            for variant in ("network", "null"):
                out = work / "runs" / f"{r}_{side}_{variant}"
                model = models[side][variant]
                if side == "ours":
                    run = run_ours(video, model, out, args.warmup)
                else:
                    run = run_theirs(video, model, out, args.warmup, args.peer_python, work)
                repeat[side][variant] = run
                print(f"repeat {r} {side:<11} {variant:<7} {run['ms_per_frame']:6.2f} ms/frame "
                      f"({run['frames']} frames, {run['detections_per_frame']:.1f} det/frame, "
                      f"wall {run['wall_s']:.1f} s)", flush=True)  # fmt: skip
            repeat[side]["network_ms"] = network_ms(side, models[side]["network"], args.net_runs)
            print(f"repeat {r} {side:<11} network {repeat[side]['network_ms']:6.2f} ms",
                  flush=True)  # fmt: skip
        repeats.append(repeat)

    meta.update({
        "load_average_before": load_before,
        "busy_processes_before": busy,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "command": command_line("track_vs_ultralytics.py", sys.argv[1:]),
        "repeats": args.repeats,
        "warmup_frames": args.warmup,
        "video": f"{video.name}: {args.frames} frames, 640 x 480, 30 fps, mp4v, 8 moving shapes "
                 "on a gradient (benchmarks/track_common.py)",
        "models": "random weights on both sides: yolox_nano (80 classes, 416, dynamic batch, "
                  "exported by export.onnx) and yolo11n (from yolo11n.yaml, 80 classes, 416, "
                  "yolo export's defaults); each also as a network-free twin (all-zero output)",
        "versions": {**versions("onnxruntime", "cv2", "numpy"),
                     **dict(zip(("ultralytics", "torch (Ultralytics)", "onnxruntime (Ultralytics)"),
                                peer_versions))},
    })  # fmt: skip
    result = {"meta": meta, "summary": summarise(repeats), "repeats": repeats}
    write_results(result, args.json, args.md, "track_vs_ultralytics", markdown(result), work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
