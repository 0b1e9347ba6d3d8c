"""ByteTrack side by side: ours (detector.core.tracking), the official code and supervision's.

Generates MOT-format sequences with ground truth (``gt.txt``) and a simulated detector's output
(``det.txt``: noisy boxes, missed detections and occlusions, low-score boxes, false positives)
at 10 and 100 objects per frame, runs the three trackers on the same detections and reports
MOTA and IDF1 (motmetrics) and the median time of one tracker update per frame.

    .venv/bin/python benchmarks/tracker_bench.py            # writes tracker_bench.md and .json

The official tracker (github.com/ifzhang/ByteTrack, ``yolox/tracker/``) is read from a git
mirror (``--official-git``) into a temporary package and imported with a small shim: its
``import torch`` lines are dropped (unused on numpy input), ``np.float`` (removed in NumPy 1.24)
becomes ``np.float64``, ``yolox.tracker`` imports become relative, and ``cython_bbox`` (a
compiled extension with no wheel for this Python) is replaced by a numpy IoU with the same
``+1`` pixel convention; its assignment stays its own ``lap.lapjv``. Its ``args`` are a
namespace with the reference MOT17 values. supervision's ``ByteTrack`` (removed from
supervision after 0.26; pin ``supervision==0.26.1``) runs through its public
``update_with_detections``, which reports the detection boxes of matched tracks (ours and the
official one report the Kalman-filtered boxes).

All three get the same settings: high threshold 0.6, new-track threshold 0.7, first-association
cost 0.8 with score fusion, a 30-frame buffer at 30 fps; one class, so class-aware and
class-agnostic matching agree. motmetrics' own ``iou_matrix`` calls ``np.asfarray`` (gone in
NumPy 2), so the IoU distances are computed here (match when IoU >= 0.5).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector.core.boxes import box_iou_numpy  # noqa: E402
from detector.core.tracking import ByteTracker, TrackerConfig  # noqa: E402

WIDTH, HEIGHT = 1920, 1080
OFFICIAL_FILES = ("basetrack.py", "kalman_filter.py", "matching.py", "byte_tracker.py")

# one tracker step: (boxes [N, 4] xyxy, scores [N]) -> (boxes [M, 4] xyxy, ids [M])
Step = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


# ------------------------------------------------------------------------------ sequences


def generate(n_objects: int, frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One sequence in MOT text rows: ground truth ``[G, 10]`` and detections ``[D, 10]``
    (``frame, id, x, y, w, h, conf, -1, -1, -1``, frames from 1, id -1 for detections).

    About ``n_objects`` objects are in view at a time: each lives 150-500 frames on a curved
    path (constant velocity plus a slow sinusoid), new ones replacing those that end or leave
    the picture. Detections: box noise 3 % of the size, 2 % of frames starting a 5-20 frame miss
    (occlusion), 10 % of boxes low-scored (0.15-0.55), false positives at 2 % of the object
    count per frame (80 % of them low-scored).
    """
    rng = np.random.default_rng(seed)
    gt_rows: list[list[float]] = []
    det_rows: list[list[float]] = []
    next_id = 1
    objects: list[dict] = []

    def spawn(t: int) -> dict:
        nonlocal next_id
        w = rng.uniform(30, 110)
        obj = {
            "id": next_id,
            "t0": t,
            "t1": t + int(rng.integers(150, 500)),
            "p0": rng.uniform([0, 0], [WIDTH, HEIGHT]),
            "v": rng.normal(0, 2.5, 2),
            "amp": rng.uniform(0, 40, 2),
            "freq": rng.uniform(0.01, 0.05),
            "phase": rng.uniform(0, 2 * np.pi),
            "size": np.array([w, w * rng.uniform(1.0, 2.5)]),
            "miss_until": -1,
        }
        next_id += 1
        return obj

    objects = [spawn(0) for _ in range(n_objects)]
    for t in range(frames):
        alive = []
        for obj in objects:
            dt_ = t - obj["t0"]
            c = (
                obj["p0"]
                + obj["v"] * dt_
                + obj["amp"] * (np.sin(obj["freq"] * dt_ + obj["phase"]) - np.sin(obj["phase"]))
            )
            w, h = obj["size"]
            box = np.array([c[0] - w / 2, c[1] - h / 2, c[0] + w / 2, c[1] + h / 2])
            clipped = np.clip(box, 0, [WIDTH, HEIGHT, WIDTH, HEIGHT])
            cw, ch = clipped[2] - clipped[0], clipped[3] - clipped[1]
            if t >= obj["t1"] or cw * ch < 0.5 * w * h:
                continue  # gone: ended, or less than half in the picture
            alive.append(obj)
            gt_rows.append([t + 1, obj["id"], clipped[0], clipped[1], cw, ch, 1, -1, -1, -1])
            if t > obj["miss_until"] and rng.random() < 0.02:
                obj["miss_until"] = t + int(rng.integers(5, 21))
            if t <= obj["miss_until"]:
                continue
            noisy = clipped + rng.normal(0, 0.03, 4) * np.array([cw, ch, cw, ch])
            score = rng.uniform(0.15, 0.55) if rng.random() < 0.1 else rng.uniform(0.65, 0.95)
            x1, y1, x2, y2 = noisy
            det_rows.append([t + 1, -1, x1, y1, x2 - x1, y2 - y1, score, -1, -1, -1])
        objects = alive + [spawn(t + 1) for _ in range(n_objects - len(alive))]
        for _ in range(rng.poisson(0.02 * n_objects)):
            w, h = rng.uniform(20, 100, 2)
            x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
            score = rng.uniform(0.7, 0.9) if rng.random() < 0.2 else rng.uniform(0.1, 0.5)
            det_rows.append([t + 1, -1, x, y, w, h, score, -1, -1, -1])
    return np.array(gt_rows), np.array(det_rows)


def write_mot(path: Path, rows: np.ndarray) -> None:
    """Write ``[R, 10]`` rows as a MOT Challenge text file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, rows, fmt="%d,%d,%.2f,%.2f,%.2f,%.2f,%.4f,%d,%d,%d")


def read_mot(path: Path) -> dict[int, np.ndarray]:
    """MOT text file -> frame -> ``[R, 10]`` rows of that frame."""
    rows = np.loadtxt(path, delimiter=",", ndmin=2)
    return {int(f): rows[rows[:, 0] == f] for f in np.unique(rows[:, 0])}


def xywh_to_xyxy(rows: np.ndarray) -> np.ndarray:
    """``[R, 10]`` MOT rows -> ``[R, 4]`` xyxy boxes."""
    b = rows[:, 2:6].copy()
    b[:, 2:] += b[:, :2]
    return b


# ------------------------------------------------------------------------------- trackers


def ours_factory() -> Step:
    tracker = ByteTracker(TrackerConfig())

    def step(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = tracker.update(boxes.astype(np.float32), scores, np.zeros(len(boxes), np.int64))
        return out.boxes, out.track_ids

    return step


def load_official(git_dir: Path, into: Path) -> types.ModuleType | None:
    """Copy the official tracker out of its git mirror into ``into`` with the shim applied;
    its ``byte_tracker`` module, or None when the mirror is missing."""
    pkg = into / "bytetrack_official"
    pkg.mkdir(parents=True, exist_ok=True)
    try:
        for name in OFFICIAL_FILES:
            src = subprocess.run(
                ["git", f"--git-dir={git_dir}", "show", f"HEAD:yolox/tracker/{name}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            src = re.sub(r"^import torch.*$", "", src, flags=re.M)
            src = re.sub(r"\bnp\.float\b", "np.float64", src)
            src = src.replace("from yolox.tracker import", "from . import")
            (pkg / name).write_text(src)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
    (pkg / "__init__.py").write_text("")

    def bbox_overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # cython_bbox's IoU: areas with the +1 pixel convention
        lt = np.maximum(a[:, None, :2], b[None, :, :2])
        rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
        inter = (rb - lt + 1).clip(0).prod(-1)
        area_a = (a[:, 2:] - a[:, :2] + 1).prod(-1)
        area_b = (b[:, 2:] - b[:, :2] + 1).prod(-1)
        return inter / (area_a[:, None] + area_b[None, :] - inter)

    sys.modules["cython_bbox"] = types.SimpleNamespace(bbox_overlaps=bbox_overlaps)  # type: ignore[assignment]
    sys.path.insert(0, str(into))
    return importlib.import_module("bytetrack_official.byte_tracker")


def official_factory(module: types.ModuleType) -> Step:
    args = types.SimpleNamespace(track_thresh=0.6, track_buffer=30, match_thresh=0.8, mot20=False)
    module.BaseTrack._count = 0  # ids are a class-wide counter: restart them per sequence
    tracker = module.BYTETracker(args, frame_rate=30)
    size = (HEIGHT, WIDTH)

    def step(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dets = np.concatenate([boxes, scores[:, None]], axis=1).astype(np.float64)
        tracks = tracker.update(dets, size, size)
        if not tracks:
            return np.zeros((0, 4)), np.zeros(0, np.int64)
        return np.array([t.tlbr for t in tracks]), np.array([t.track_id for t in tracks])

    return step


def supervision_factory() -> Step:
    import supervision as sv

    tracker = sv.ByteTrack(
        track_activation_threshold=0.6,
        lost_track_buffer=30,
        minimum_matching_threshold=0.8,
        frame_rate=30,
        minimum_consecutive_frames=1,
    )

    def step(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dets = sv.Detections(
            xyxy=boxes.astype(np.float32).reshape(-1, 4),
            confidence=scores.astype(np.float32),
            class_id=np.zeros(len(boxes), dtype=int),
        )
        out = tracker.update_with_detections(dets)
        return out.xyxy, np.asarray(out.tracker_id)

    return step


# ------------------------------------------------------------------------------ evaluation


def evaluate(step: Step, gt: dict[int, np.ndarray], det: dict[int, np.ndarray], frames: int):
    """Run ``step`` over a sequence: (motmetrics accumulator, ``[frames]`` seconds per update)."""
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    times = np.zeros(frames)
    empty = np.zeros((0, 10))
    for f in range(1, frames + 1):
        d = det.get(f, empty)
        boxes, scores = xywh_to_xyxy(d), d[:, 6].copy()
        t0 = time.perf_counter()
        hyp_boxes, hyp_ids = step(boxes, scores)
        times[f - 1] = time.perf_counter() - t0
        g = gt.get(f, empty)
        iou = box_iou_numpy(xywh_to_xyxy(g), np.asarray(hyp_boxes, dtype=np.float64).reshape(-1, 4))
        acc.update(
            g[:, 1].astype(int),
            np.asarray(hyp_ids, dtype=int),
            np.where(iou >= 0.5, 1 - iou, np.nan),
        )
    return acc, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--sequences", type=int, default=3)
    parser.add_argument("--objects", type=int, nargs="+", default=[10, 100])
    parser.add_argument(
        "--official-git", type=Path, default=Path("/work/.mirror/ifzhang+ByteTrack/repo")
    )
    parser.add_argument("--data", type=Path, default=None, help="where to write the MOT files")
    parser.add_argument("--md", type=Path, default=ROOT / "benchmarks" / "tracker_bench.md")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "tracker_bench.json"
    )
    args = parser.parse_args()
    import motmetrics as mm

    tmp = Path(tempfile.mkdtemp(prefix="tracker_bench_"))
    data = args.data or tmp / "mot"
    official = load_official(args.official_git, tmp / "official")
    trackers: dict[str, Callable[[], Step]] = {"ours": ours_factory}
    if official is not None:
        trackers["official ByteTrack"] = lambda: official_factory(official)
    else:
        print(f"official ByteTrack not found at {args.official_git}: skipped")
    try:
        import supervision  # noqa: F401

        trackers["supervision ByteTrack"] = supervision_factory
    except ImportError:
        print("supervision not installed: skipped")

    results: dict[str, dict[str, dict[str, float]]] = {}
    for n in args.objects:
        seqs = []
        for s in range(args.sequences):
            name = f"SYN-{n:03d}-{s + 1:02d}"
            gt_rows, det_rows = generate(n, args.frames, seed=1000 * n + s)
            write_mot(data / name / "gt" / "gt.txt", gt_rows)
            write_mot(data / name / "det" / "det.txt", det_rows)
            seqs.append(
                (
                    name,
                    read_mot(data / name / "gt" / "gt.txt"),
                    read_mot(data / name / "det" / "det.txt"),
                )
            )
        for label, factory in trackers.items():
            accs, names, times = [], [], []
            for name, gt, det in seqs:
                acc, t = evaluate(factory(), gt, det, args.frames)
                accs.append(acc)
                names.append(name)
                times.append(t)
            summary = mm.metrics.create().compute_many(
                accs, names=names, metrics=["mota", "idf1", "num_switches"], generate_overall=True
            )
            overall = summary.loc["OVERALL"]
            results.setdefault(f"{n} objects", {})[label] = {
                "mota": float(overall["mota"]),
                "idf1": float(overall["idf1"]),
                "id_switches": int(overall["num_switches"]),
                "median_ms_per_frame": float(np.median(np.concatenate(times)) * 1e3),
            }
            r = results[f"{n} objects"][label]
            print(
                f"{n:>4} objects  {label:<22} MOTA {r['mota']:.4f}  IDF1 {r['idf1']:.4f}  "
                f"switches {r['id_switches']:>4}  median {r['median_ms_per_frame']:.3f} ms/frame",
                flush=True,
            )

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in subprocess.run(
                ["lscpu"], capture_output=True, text=True
            ).stdout.splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    command = "python benchmarks/tracker_bench.py " + " ".join(sys.argv[1:])
    meta = {
        "date": dt.date.today().isoformat(),
        "cpu": cpu,
        "command": command.strip(),
        "frames": args.frames,
        "sequences": args.sequences,
        "versions": versions(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    args.md.write_text(markdown(meta, results))
    print(f"wrote {args.md} and {args.json}; MOT files in {data}")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "motmetrics", "supervision", "lap"):
        try:
            out[name] = importlib.import_module(name).__version__
        except (ImportError, AttributeError):
            pass
    return out


def markdown(meta: dict, results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "# ByteTrack: ours vs the official code vs supervision",
        "",
        f"- date: {meta['date']}",
        f"- CPU: {meta['cpu']} (one process; the machine was shared with a niced job)",
        f"- command: `{meta['command']}`",
        f"- data: generated MOT sequences, {meta['sequences']} x {meta['frames']} frames per "
        "object count (see the docstring of `benchmarks/tracker_bench.py`)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
        "MOTA and IDF1 over all sequences (motmetrics, match at IoU >= 0.5); time: median of one "
        "tracker update over all frames; time ratio = that tracker's median / ours (> 1: slower "
        "than ours).",
        "",
        "MOTA is low for all three by design: the simulated detector misses objects for 5-20 "
        "frames at a time (about a fifth of the ground truth has no detection), and no "
        "tracker reports a lost track. The official tracker runs through a shim (no torch, "
        "`np.float`, a numpy `cython_bbox`; its own `lap` assignment); supervision's reports "
        "detection boxes, the other two Kalman boxes. Details: the docstring of "
        "`benchmarks/tracker_bench.py`.",
        "",
        "| objects | tracker | MOTA | IDF1 | ID switches | median ms/frame | time ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, rows in results.items():
        base = rows["ours"]["median_ms_per_frame"]
        for label, r in rows.items():
            lines.append(
                f"| {group.split()[0]} | {label} | {r['mota']:.4f} | {r['idf1']:.4f} | "
                f"{r['id_switches']} | {r['median_ms_per_frame']:.3f} | "
                f"{r['median_ms_per_frame'] / base:.2f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
