"""``detector track``: detect and track objects in image sequences, video files and live streams.

Sources are read through :mod:`serve.runtime.sources` (files every frame in order, live streams
newest frame only). Each step takes frames from the sources (one from each live source, up to
``--batch`` in all, round robin) and runs them through one
:meth:`serve.runtime.predictor.Predictor.predict` call: the serving runtime, so ``track`` finds
what ``predict`` and ``serve`` find. Each source has its own
:class:`~detector.core.tracking.ByteTracker` (and, with ``--zones``, its own
:class:`~detector.core.tracking.ZoneCounter`).

Per source, ``--out`` gets ``<name>.jsonl`` (one line per frame, flushed as written) and
``<name>.mp4`` (annotated: boxes, class, score, track id and a short trail). A source that
cannot be opened is reported and the others go on; the exit status is 1 when any source
failed. Ctrl-C or SIGTERM stops the run and closes every file, so each is readable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from detector.cli.options import add_prediction_options
from detector.core.media import VIDEO_FOURCC

TRAIL = 30  # frames of a track's trail drawn on the video
PROGRESS_EVERY = 100  # default frames between progress lines
MATCH_IOU = 0.5  # a detection belongs to the track whose (filtered) box overlaps it this much


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "track",
        help="track objects in videos, image sequences and live streams",
        description="Detect objects with a model file (checkpoint, ONNX, TensorRT engine) and "
        "track them with ByteTrack. SOURCE: video files, image files, folders, globs, "
        "rtsp:// rtmp:// http(s):// URLs, a camera index (0) or /dev/videoN, a GStreamer "
        "pipeline (contains '!'), or a .txt file with one source per line. Writes "
        "<source>.jsonl (one line per frame) and an annotated <source>.mp4 to --out.",
    )
    parser.add_argument("source", nargs="+", help="sources (see above)")
    parser.add_argument("--model", required=True, help="checkpoint (.pt/.pth), .onnx or .engine")
    parser.add_argument("--out", default="runs/track", help="output folder")
    parser.add_argument("--tracker", help="YAML of ByteTrack settings (TrackerConfig fields)")
    parser.add_argument("--zones", help="YAML of zones and counting lines (counted per source)")
    add_prediction_options(parser)
    parser.add_argument("--imgsz", type=int, help="input size of a checkpoint (default: its own)")
    parser.add_argument(
        "--batch", type=int, help="most frames per network run (default: the number of sources)"
    )
    parser.add_argument(
        "--backend", help="backend for an exported model (default: by suffix, e.g. onnxruntime)"
    )
    parser.add_argument("--device", default="auto", help="device of a checkpoint (auto, cpu, cuda)")
    parser.add_argument(
        "--open-timeout", type=float, default=10.0,
        help="seconds a live source may take to open before it is given up (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--progress-every", type=int, default=PROGRESS_EVERY,
        help=f"frames between progress lines on stderr (default {PROGRESS_EVERY}; 0: none)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def _read_yaml(path_text: str, what: str) -> Any:
    """A YAML file's content; missing file -> FileNotFoundError, bad YAML -> ValueError."""
    import yaml

    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{what} {path}: not valid YAML ({exc})") from exc


def load_tracker_config(path_text: str | None) -> tuple[Any, bool]:
    """``--tracker`` -> (:class:`TrackerConfig`, whether it sets ``frame_rate`` itself)."""
    from detector.core.tracking import TrackerConfig

    if path_text is None:
        return TrackerConfig(), False
    data = _read_yaml(path_text, "--tracker") or {}
    if not isinstance(data, dict):
        raise ValueError(f"--tracker {path_text}: expected a mapping of TrackerConfig fields")
    known = {f.name for f in dataclasses.fields(TrackerConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--tracker {path_text}: unknown fields {unknown}; known: "
                         f"{', '.join(sorted(known))}")  # fmt: skip
    try:
        return TrackerConfig(**data), "frame_rate" in data
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--tracker {path_text}: {exc}") from exc


def load_zone_spec(path_text: str | None) -> tuple[list, list, str] | None:
    """``--zones`` -> (zones, lines, anchor), or None without it."""
    from detector.core.tracking import load_zones

    if path_text is None:
        return None
    _read_yaml(path_text, "--zones")  # the file exists and parses
    try:
        return load_zones(Path(path_text))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"--zones {path_text}: {exc}") from exc


def match_tracks(boxes: np.ndarray, classes: np.ndarray, tracks: Any) -> list[int | None]:
    """The track id of each detection: ``boxes [N, 4]`` xyxy and ``classes [N]`` against the
    frame's :class:`~detector.core.tracking.Tracks` (``M`` Kalman-filtered boxes), one to one,
    best overlap first (IoU >= :data:`MATCH_IOU`, same class); ``None`` for an untracked one."""
    from detector.core.boxes import box_iou_numpy

    ids: list[int | None] = [None] * len(boxes)
    if len(boxes) == 0 or len(tracks) == 0:
        return ids
    iou = box_iou_numpy(np.asarray(boxes, np.float64), np.asarray(tracks.boxes, np.float64))
    iou[np.asarray(classes)[:, None] != np.asarray(tracks.classes)[None, :]] = 0.0
    for flat in np.argsort(-iou, axis=None):
        d, t = np.unravel_index(flat, iou.shape)
        if iou[d, t] < MATCH_IOU:
            break
        if ids[d] is None and int(tracks.track_ids[t]) not in ids:
            ids[d] = int(tracks.track_ids[t])
    return ids


@dataclass
class SourceRun:
    """One source's tracker, counter and output files during a run."""

    source: Any  # serve.runtime.sources.FrameSource
    tracker: Any  # ByteTracker
    counter: Any  # ZoneCounter | None
    jsonl: TextIO
    video_path: Path
    video: Any = None  # cv2.VideoWriter, opened at the first frame
    size: tuple[int, int] | None = None  # (width, height) of the video
    trails: dict[int, deque] = field(default_factory=dict)
    done: bool = False

    def close(self) -> None:
        if self.video is not None:
            self.video.release()
            self.video = None
        if not self.jsonl.closed:
            self.jsonl.close()
        self.source.close()


def _counts_by_name(counts: Any, class_names: list[str]) -> dict:
    """:class:`ZoneCounts` with class names for class ids."""

    def named(by_class: dict[int, int]) -> dict[str, int]:
        return {class_names[c] if 0 <= c < len(class_names) else str(c): n
                for c, n in by_class.items()}  # fmt: skip

    return {
        "inside": {zone: named(c) for zone, c in counts.inside.items()},
        "crossings": {
            line: {d: named(c) for d, c in by_dir.items()}
            for line, by_dir in counts.crossings.items()
        },
    }


def annotate(
    image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
    ids: list[int | None], trails: dict[int, deque], class_names: list[str],
    zones: tuple[list, list, str] | None,
) -> np.ndarray:  # fmt: skip
    """A copy of ``image [H, W, 3]`` with ``boxes [N, 4]`` (class, score, ``#id``), each
    tracked object's trail (its last :data:`TRAIL` box centres, updated here) and the zones."""
    import cv2

    from detector.core.visualize import class_colour, draw_boxes

    out = draw_boxes(image, boxes, classes.tolist(), class_names, scores)
    if zones is not None:
        for zone in zones[0]:
            cv2.polylines(out, [zone.polygon.astype(np.int32)], True, (0, 255, 255), 1)
        for line in zones[1]:
            start, end = (tuple(int(v) for v in p) for p in (line.start, line.end))
            cv2.line(out, start, end, (255, 0, 255), 2)
    for box, cls, track_id in zip(boxes, classes, ids):
        if track_id is None:
            continue
        colour = class_colour(int(cls))
        corner = (int(box[0]) + 2, max(int(box[3]) - 4, 10))
        cv2.putText(out, f"#{track_id}", corner, cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1,
                    cv2.LINE_AA)  # fmt: skip
        trail = trails.setdefault(track_id, deque(maxlen=TRAIL))
        trail.append((int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)))
        if len(trail) > 1:
            points = np.array(trail, np.int32).reshape(-1, 1, 2)
            cv2.polylines(out, [points], False, colour, 2)
    return out


def _write_frame(run: SourceRun, frame: Any, found: Any, class_names: list[str],
                 zones: tuple[list, list, str] | None) -> int:  # fmt: skip
    """Track one frame's detections, write its JSON line and annotated frame; returns the
    number of detections."""
    import cv2

    boxes, scores, classes = found.boxes, found.scores, found.classes
    tracks = run.tracker.update(boxes, scores, classes)
    ids = match_tracks(boxes, classes, tracks)
    record: dict[str, Any] = {
        "source": run.source.name,
        "frame": frame.index,
        "timestamp": None if frame.timestamp is None else round(frame.timestamp, 6),
        "detections": [
            {"box": [round(float(v), 2) for v in box], "score": round(float(score), 5),
             "class_id": int(cls), "class_name": class_names[int(cls)], "track_id": tid}
            for box, score, cls, tid in zip(boxes, scores, classes, ids)
        ],
    }  # fmt: skip
    if run.counter is not None:
        record["zones"] = _counts_by_name(run.counter.update(tracks), class_names)
    run.jsonl.write(json.dumps(record) + "\n")
    run.jsonl.flush()

    image = frame.image
    if run.video is None:
        height, width = image.shape[:2]
        run.size = (width, height)
        run.video = cv2.VideoWriter(
            str(run.video_path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), run.source.fps,
            run.size,
        )  # fmt: skip
        if not run.video.isOpened():
            raise RuntimeError(f"{run.video_path}: OpenCV cannot write {VIDEO_FOURCC} video here")
    if (image.shape[1], image.shape[0]) != run.size:  # a stream that changes size
        scale = np.array([run.size[0] / image.shape[1], run.size[1] / image.shape[0]] * 2)
        image, boxes = cv2.resize(image, run.size), boxes * scale
    drawn = annotate(image, boxes, scores, classes, ids, run.trails, class_names, zones)
    run.video.write(drawn)
    return len(boxes)


class _Stopper:
    """SIGTERM and Ctrl-C as ``KeyboardInterrupt``, held back while a step's frames are being
    written (each frame's JSON line and video frame go out together) and raised right after."""

    def __init__(self) -> None:
        self.writing = False
        self.pending = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.writing:
            self.pending = True
            return
        raise KeyboardInterrupt

    def done_writing(self) -> None:
        self.writing = False
        if self.pending:
            raise KeyboardInterrupt


def unique_names(names: list[str]) -> list[str]:
    """``names`` with repeats made unique: ``a``, ``a_2``, ``a_3``."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def run(args: argparse.Namespace) -> int:
    from detector.cli.predict import model_detector
    from detector.core.tracking import ByteTracker, ZoneCounter
    from serve.runtime.sources import SourceError, expand_sources, make_source

    model_path = Path(args.model)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no such model file")
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    tracker_config, fixed_rate = load_tracker_config(args.tracker)
    zones = load_zone_spec(args.zones)
    specs = expand_sources(args.source)
    if not specs:
        raise FileNotFoundError(f"no sources in {' '.join(args.source)}")

    args.classes, args.arch = None, None  # what predict's model_detector also reads
    args.batch = args.batch or len(specs)
    class_names, detect, close_model, batch = model_detector(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    names = unique_names([spec.name for spec in specs])
    sources = [make_source(s, n, args.open_timeout) for s, n in zip(specs, names)]
    runs: list[SourceRun] = []
    failed = 0
    stopper = _Stopper()
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        previous = signal.signal(signal.SIGTERM, stopper), signal.signal(signal.SIGINT, stopper)
    try:
        for source in sources:
            source.start()  # live sources open side by side
        for source in sources:
            try:
                source.open()
            except SourceError as exc:
                print(f"error: {exc}", file=sys.stderr)
                source.close()
                failed += 1
                continue
            config = tracker_config
            if not fixed_rate:
                config = dataclasses.replace(config, frame_rate=source.fps)
            counter = ZoneCounter(zones[0], zones[1], zones[2]) if zones else None
            jsonl = (out_dir / f"{source.name}.jsonl").open("w")
            runs.append(SourceRun(source, ByteTracker(config), counter, jsonl,
                                  out_dir / f"{source.name}.mp4"))  # fmt: skip
        _track(runs, detect, batch, class_names, zones, args.progress_every, stopper)
    finally:
        if in_main:  # a second signal must not cut the closing short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        for source_run in runs:
            source_run.close()
        for source in sources:
            source.close()
        close_model()
        if in_main:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])
    for source_run in runs:
        stats = source_run.source.stats
        extra = "".join(
            f", {n} {what}" for n, what in ((stats.dropped, "dropped"),
            (stats.decode_errors, "undecodable"), (stats.reconnects, "reconnects")) if n
        )  # fmt: skip
        video = source_run.video_path
        print(f"{source_run.source.spec}: {stats.frames} frames{extra} -> "
              f"{video.with_suffix('.jsonl')}, {video}")  # fmt: skip
    return 1 if failed else 0


def _track(
    runs: list[SourceRun], detect: Any, batch: int, class_names: list[str],
    zones: tuple[list, list, str] | None, progress_every: int, stopper: _Stopper,
) -> None:  # fmt: skip
    """Read, detect (one network run per step, up to ``batch`` frames), track and write until
    every source has ended."""
    frames_done = 0
    next_report = progress_every
    started = time.monotonic()
    active = list(runs)
    while active:
        step: list[tuple[SourceRun, Any]] = []
        takers = list(active)
        while len(step) < batch and takers:
            for source_run in list(takers):
                if len(step) >= batch:
                    break
                frame = source_run.source.read()
                if frame is None:
                    source_run.done = True
                    takers.remove(source_run)
                    continue
                step.append((source_run, frame))
                if source_run.source.live:
                    takers.remove(source_run)  # only its newest frame in a step
        active = [r for r in active if not r.done]
        if not step:
            break
        found = detect_step(detect, [frame.image for _, frame in step])
        stopper.writing = True  # a step's frames are written together
        for (source_run, frame), result in zip(step, found):
            _write_frame(source_run, frame, result, class_names, zones)
        stopper.done_writing()
        frames_done += len(step)
        if progress_every and frames_done >= next_report:
            next_report = frames_done + progress_every
            rate = frames_done / max(time.monotonic() - started, 1e-9)
            per_source = ", ".join(f"{r.source.name} {r.source.stats.frames}" for r in runs)
            print(f"track: {frames_done} frames ({per_source}), {rate:.1f} frames/s",
                  file=sys.stderr, flush=True)  # fmt: skip


@dataclass
class _Found:
    boxes: np.ndarray  # [K, 4] xyxy original pixels
    scores: np.ndarray  # [K]
    classes: np.ndarray  # [K]


def detect_step(detect: Any, images: list[np.ndarray]) -> list[_Found]:
    """One network run over ``images`` (``[H, W, 3]`` BGR each) -> their detections."""
    return [_Found(*result) for result in detect(images)]
