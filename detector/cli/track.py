"""``detector track``: detect and track objects in image sequences, video files and live streams.

Sources are read through :mod:`serve.runtime.sources` (files every frame in order, live streams
newest frame only). Each step takes frames from the sources (one from each live source that has
one, up to ``--batch`` in all, round robin) and runs them through one
:class:`serve.runtime.predictor.Predictor` run (its ``prepare``, ``run`` and ``postprocess``,
what ``Predictor.predict`` calls): the serving runtime, so ``track`` finds what ``predict`` and
``serve`` find. A live source is polled, never waited on: one that is quiet or reconnecting is
passed over while the others go on. Taking and letterboxing the next step, the network run and
the writing of the step before overlap (:mod:`detector.cli.track_pipeline`). Each source has
its own
:class:`~detector.core.tracking.ByteTracker` (and, with ``--zones``, its own
:class:`~detector.core.tracking.ZoneCounter`).

Per source, ``--out`` gets ``<name>.jsonl`` (one line per frame, flushed as written; with
``--append`` added to what an earlier run wrote) and ``<name>.mp4`` (annotated: boxes, class,
score, track id and a short trail; not with ``--no-video``). A source that cannot be opened is
reported and the others go on; the exit status is 1 when any source failed. Ctrl-C or SIGTERM
stops the run and closes every file, so each is readable. Either way a line per source on stdout
sums it up (frames, dropped, undecodable, reconnects).

Live outputs: ``--show`` opens an OpenCV window per source (``q`` or Esc stops the run);
``--serve-preview PORT`` serves the annotated frames as MJPEG to a browser, and
``--metrics-port PORT`` the run's Prometheus metrics (:mod:`serve.runtime.preview`,
:mod:`serve.runtime.track_metrics`; the preview server serves ``/metrics`` too).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
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
from detector.cli.track_pipeline import Model, Pipeline, Step, open_model
from detector.core.media import VIDEO_FOURCC

TRAIL = 30  # frames of a track's trail drawn on the video
PROGRESS_EVERY = 100  # default frames between progress lines
LOOPBACK = "127.0.0.1"  # the default address of the preview and metrics servers
QUIT_KEYS = (ord("q"), 27)  # keys that stop a run with --show: q and Esc


def register(subparsers: argparse._SubParsersAction) -> None:
    from serve.runtime.sources import OPEN_TIMEOUT_S

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
        "--open-timeout", type=float, default=OPEN_TIMEOUT_S,
        help="seconds a live source may take to open before it is given up "
        f"(default {OPEN_TIMEOUT_S:g})",
    )  # fmt: skip
    parser.add_argument(
        "--progress-every", type=int, default=PROGRESS_EVERY,
        help=f"frames between progress lines on stderr (default {PROGRESS_EVERY}; 0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--no-video", action="store_true",
        help="write no annotated .mp4 (a long-running service: JSON lines and metrics only)",
    )  # fmt: skip
    parser.add_argument(
        "--append", action="store_true",
        help="add to existing <source>.jsonl files instead of rewriting them (a service that "
        "restarts keeps what it wrote; an .mp4 is still rewritten)",
    )  # fmt: skip
    live = parser.add_argument_group("live view and metrics")
    live.add_argument(
        "--show", action="store_true",
        help="show each source's annotated frames in a window (needs a display; q or Esc "
        "stops); without one, use --serve-preview",
    )  # fmt: skip
    live.add_argument(
        "--serve-preview", type=int, metavar="PORT",
        help="serve the annotated frames to a browser: http://HOST:PORT/ lists the sources, "
        "/stream/NAME is MJPEG, /metrics the Prometheus metrics (PORT 0: a free one)",
    )  # fmt: skip
    live.add_argument(
        "--preview-host", default=LOOPBACK,
        help=f"address of --serve-preview (default {LOOPBACK}: this machine only; there is "
        "no authentication)",
    )  # fmt: skip
    live.add_argument(
        "--metrics-port", type=int, metavar="PORT",
        help="serve the Prometheus metrics at http://HOST:PORT/metrics (and /healthz)",
    )  # fmt: skip
    live.add_argument(
        "--metrics-host", default=LOOPBACK,
        help=f"address of --metrics-port (default {LOOPBACK}; 0.0.0.0 for a scraper elsewhere)",
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


def track_ids_of(count: int, tracks: Any) -> list[int | None]:
    """The track id of each of a frame's ``count`` detections, from the tracker's
    :class:`~detector.core.tracking.Tracks` of that frame (each track names the detection it
    was updated with); ``None`` for a detection no track took."""
    ids: list[int | None] = [None] * count
    for row, track_id in zip(tracks.detection_indices.tolist(), tracks.track_ids.tolist()):
        ids[row] = track_id
    return ids


def display_problem(environ: Any = None, build_info: str | None = None) -> str | None:
    """Why ``--show`` cannot open a window here, or None: on Linux no ``DISPLAY`` or
    ``WAYLAND_DISPLAY`` in ``environ`` (default ``os.environ``), or an OpenCV without a GUI
    backend (``build_info``, default ``cv2.getBuildInformation()``, says ``GUI: NONE``; the
    opencv-python-headless wheels are built so)."""
    environ = os.environ if environ is None else environ
    if sys.platform.startswith("linux") and not (
        environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")
    ):
        return "there is no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    if build_info is None:
        import cv2

        build_info = cv2.getBuildInformation()
    gui = re.search(r"^\s*GUI:\s*(\S+)", build_info, re.M)
    if gui is not None and gui.group(1).upper() == "NONE":
        return ("this OpenCV has no GUI (opencv-python-headless is built without one; "
                "opencv-python has it)")  # fmt: skip
    return None


class Windows:
    """``--show``: one OpenCV window per source, drawn once per step; ``q`` or Esc stops."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def show(self, name: str, image: np.ndarray) -> None:
        import cv2

        try:
            cv2.imshow(f"detector track: {name}", image)
        except cv2.error as exc:  # a GUI backend that cannot open a window after all
            raise ValueError(f"--show: OpenCV cannot open a window here ({exc.err}); "
                             "use --serve-preview PORT to watch in a browser") from exc  # fmt: skip
        self.names.add(name)

    def quit_pressed(self) -> bool:
        """Let the windows draw (1 ms); whether ``q`` or Esc was pressed in one."""
        import cv2

        return bool(self.names) and (cv2.waitKey(1) & 0xFF) in QUIT_KEYS

    def close(self) -> None:
        if self.names:
            import cv2

            cv2.destroyAllWindows()
            cv2.waitKey(1)
            self.names.clear()


@dataclass
class LiveOutputs:
    """Where a run's frames go besides its files: the preview server, the metrics server(s),
    the windows; each optional."""

    preview: Any = None  # serve.runtime.preview.PreviewServer with streams
    metrics: Any = None  # serve.runtime.track_metrics.TrackMetrics
    servers: list = field(default_factory=list)  # every PreviewServer to close
    windows: Windows | None = None

    @property
    def draws(self) -> bool:
        """Whether annotated frames are wanted live."""
        return self.preview is not None or self.windows is not None

    def frame_done(self, name: str, drawn: np.ndarray | None, tracks: int, latency: float) -> None:
        """One frame of source ``name`` written: ``drawn`` (annotated, or None) to the preview
        and the window, its ``tracks`` count and capture-to-result ``latency`` (s) to the
        metrics."""
        if drawn is not None:
            if self.preview is not None:
                self.preview.publish(name, drawn)
            if self.windows is not None:
                self.windows.show(name, drawn)
        if self.metrics is not None:
            self.metrics.frame_done(name, latency, tracks)

    def watch(self, source: Any) -> None:
        if self.metrics is not None:
            self.metrics.watch(source.name, source.stats)

    def ended(self, name: str) -> None:
        if self.metrics is not None:
            self.metrics.ended(name)
        if self.preview is not None:
            self.preview.end(name)

    def close(self) -> None:
        if self.windows is not None:
            self.windows.close()
        for server in self.servers:
            server.close()
        self.servers = []


def _check_port(option: str, port: int | None) -> None:
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"{option} must be a TCP port (0-65535), got {port}")


def start_live_outputs(args: argparse.Namespace, names: list[str]) -> LiveOutputs:
    """The windows and servers that ``--show``, ``--serve-preview`` and ``--metrics-port`` ask
    for; a port that cannot be listened on is a ``ValueError`` naming the option."""
    _check_port("--serve-preview", args.serve_preview)
    _check_port("--metrics-port", args.metrics_port)
    live = LiveOutputs()
    if args.show:
        problem = display_problem()
        if problem is not None:
            raise ValueError(f"--show needs a display, and {problem}; use --serve-preview PORT "
                             "to watch in a browser instead")  # fmt: skip
        live.windows = Windows()
    if args.serve_preview is None and args.metrics_port is None:
        return live
    from serve.runtime.preview import PreviewServer
    from serve.runtime.track_metrics import TrackMetrics

    live.metrics = TrackMetrics()
    wanted = [("--serve-preview", args.preview_host, args.serve_preview, True),
              ("--metrics-port", args.metrics_host, args.metrics_port, False)]  # fmt: skip
    try:
        for option, host, port, streams in wanted:
            if port is None:
                continue
            same = port != 0 and (host, port) == (args.preview_host, args.serve_preview)
            if not streams and live.preview is not None and same:
                continue  # the preview server has /metrics already
            try:
                server = PreviewServer(host, port, names if streams else (), live.metrics,
                                       streams=streams)  # fmt: skip
            except OSError as exc:
                raise ValueError(f"{option} {port}: {exc.strerror or exc}") from exc
            live.servers.append(server)
            if streams:
                live.preview = server
                if host not in (LOOPBACK, "localhost", "::1"):
                    print(f"warning: --preview-host {host}: the preview shows the video to "
                          "anyone who can reach this address (no authentication)",
                          file=sys.stderr)  # fmt: skip
            what = "preview" if streams else "metrics"
            path = "" if streams else "metrics"
            print(f"track: {what} at {server.url}{path}", file=sys.stderr, flush=True)
    except BaseException:
        live.close()
        raise
    return live


@dataclass
class SourceRun:
    """One source's tracker, counter and output files during a run."""

    source: Any  # serve.runtime.sources.FrameSource
    tracker: Any  # ByteTracker
    counter: Any  # ZoneCounter | None
    jsonl: TextIO
    video_path: Path | None  # None: no video (--no-video)
    video: Any = None  # cv2.VideoWriter, opened at the first frame
    size: tuple[int, int] | None = None  # (width, height) of the video
    trails: dict[int, deque] = field(default_factory=dict)
    written: int = 0  # frames written
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


def _write_frame(
    run: SourceRun, frame: Any, found: Any, class_names: list[str],
    zones: tuple[list, list, str] | None, draw: bool,
) -> tuple[np.ndarray | None, int]:  # fmt: skip
    """Track one frame's detections, write its JSON line and (with a video) its annotated
    frame; returns the annotated frame (when there is a video or ``draw``, else None) and the
    number of tracks in the frame."""
    import cv2

    boxes, scores, classes = found.boxes, found.scores, found.classes
    tracks = run.tracker.update(boxes, scores, classes)
    ids = track_ids_of(len(boxes), tracks)
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
    run.written += 1
    if run.video_path is None and not draw:
        return None, len(tracks)

    image = frame.image
    if run.size is None:
        run.size = (image.shape[1], image.shape[0])
    if run.video is None and run.video_path is not None:
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
    if run.video is not None:
        run.video.write(drawn)
    return drawn, len(tracks)


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
    from serve.runtime.sources import expand_sources

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
    names = unique_names([spec.name for spec in specs])
    live = start_live_outputs(args, names)  # before the model: a port in use fails at once
    try:
        return _run(args, specs, names, tracker_config, fixed_rate, zones, live)
    finally:
        live.close()


def _run(
    args: argparse.Namespace, specs: list, names: list[str], tracker_config: Any,
    fixed_rate: bool, zones: tuple[list, list, str] | None, live: LiveOutputs,
) -> int:  # fmt: skip
    """Load the model, open the sources, track until they end or the run is stopped, close
    everything; the exit status."""
    from detector.core.tracking import ByteTracker, ZoneCounter
    from serve.runtime.sources import SourceError, make_source

    args.batch = args.batch or len(specs)
    model = open_model(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    sources = [make_source(s, n, args.open_timeout) for s, n in zip(specs, names)]
    runs: list[SourceRun] = []
    failed = 0
    stopper = _Stopper()
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        previous = signal.signal(signal.SIGTERM, stopper), signal.signal(signal.SIGINT, stopper)
    try:
        for source in sources:
            live.watch(source)
            source.start()  # live sources open side by side
        for source in sources:
            try:
                source.open()
            except SourceError as exc:
                print(f"error: {exc}", file=sys.stderr)
                source.close()
                live.ended(source.name)
                failed += 1
                continue
            config = tracker_config
            if not fixed_rate:
                config = dataclasses.replace(config, frame_rate=source.fps)
            counter = ZoneCounter(zones[0], zones[1], zones[2]) if zones else None
            jsonl = (out_dir / f"{source.name}.jsonl").open("a" if args.append else "w")
            video = None if args.no_video else out_dir / f"{source.name}.mp4"
            runs.append(SourceRun(source, ByteTracker(config), counter, jsonl, video))
        _track(runs, model, zones, args.progress_every, stopper, live)
    finally:
        if in_main:  # a second signal must not cut the closing short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        for source_run in runs:
            source_run.close()
            live.ended(source_run.source.name)
        for source in sources:
            source.close()
        model.close()
        print_summary(runs)  # also after Ctrl-C or SIGTERM
        if in_main:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])
    return 1 if failed else 0


def print_summary(runs: list[SourceRun]) -> None:
    """One line per source on stdout: the frames written, what was dropped, undecodable or
    reconnected, and the files."""
    for source_run in runs:
        stats = source_run.source.stats
        extra = "".join(
            f", {n} {what}" for n, what in ((stats.dropped, "dropped"),
            (stats.decode_errors, "undecodable"), (stats.reconnects, "reconnects")) if n
        )  # fmt: skip
        written = ", ".join(str(p) for p in (source_run.jsonl.name, source_run.video_path) if p)
        print(f"{source_run.source.spec}: {source_run.written} frames{extra} -> {written}",
              flush=True)  # fmt: skip


QUIET_WAIT_S = 0.05  # how long a step with no frame waits on a live source before trying again


def _take_frames(active: list[SourceRun], batch: int, first: int) -> Step:
    """One step's frames, ``(source, frame, capture time)``: up to ``batch``, round robin from
    ``active[first]``. A file gives its next frame on each turn (every frame, in order); a live
    source at most its newest, without waiting: a live source that is quiet or reconnecting is
    passed over this step, so it never holds up the others. A source that has ended is marked
    done and listed in the step's ``ended``."""
    step = Step([])
    takers = active[first:] + active[:first]
    while len(step.frames) < batch and takers:
        for source_run in list(takers):
            if len(step.frames) >= batch:
                break
            source = source_run.source
            frame = source.poll(0.0) if source.live else source.read()
            if frame is None:
                if not source.live or source.ended:
                    source_run.done = True
                    step.ended.append(source_run)
                takers.remove(source_run)
                continue
            # a live frame's timestamp is its arrival (wall clock); a file's, its position
            live_frame = source.live and frame.timestamp is not None
            captured = frame.timestamp if live_frame else time.time()
            step.frames.append((source_run, frame, captured))
            if source.live:
                takers.remove(source_run)  # only its newest frame in a step
    return step


class _Steps:
    """What the collector stage calls for each step: the sources' next frames (see
    :func:`_take_frames`), ``None`` once every source has ended. When every source left is
    live and none had a frame, it waits up to :data:`QUIET_WAIT_S` on one of them (taking
    turns) rather than spin, and returns what it got, perhaps nothing."""

    def __init__(self, runs: list[SourceRun], batch: int) -> None:
        self.active, self.batch, self.turn = list(runs), batch, 0

    def __call__(self) -> Step | None:
        if not self.active:
            return None
        step = _take_frames(self.active, self.batch, self.turn % len(self.active))
        self.turn += 1
        self.active = [r for r in self.active if not r.done]
        if step.frames or not self.active:
            return step
        source_run = self.active[self.turn % len(self.active)]
        frame = source_run.source.poll(QUIET_WAIT_S)
        if frame is not None:
            captured = frame.timestamp if frame.timestamp is not None else time.time()
            step.frames.append((source_run, frame, captured))
        return step  # perhaps empty: the collector asks again


def _track(
    runs: list[SourceRun], model: Model, zones: tuple[list, list, str] | None,
    progress_every: int, stopper: _Stopper, live: LiveOutputs,
) -> None:  # fmt: skip
    """Read, detect (one network run per step, up to ``model.batch`` frames), track and write
    until every source has ended (or ``q`` is pressed in a ``--show`` window). Reading and
    letterboxing the next step and the network run go on beside the writing
    (:class:`~detector.cli.track_pipeline.Pipeline`); frames are tracked and written here, in
    the order they were taken."""
    frames_done = 0
    next_report = progress_every
    started = time.monotonic()
    with Pipeline(_Steps(runs, model.batch), model) as steps:
        for step in steps:
            stopper.writing = True  # a step's frames are written together
            for (source_run, frame, captured), result in zip(step.frames, step.found):
                drawn, tracks = _write_frame(source_run, frame, result, model.class_names,
                                             zones, live.draws)  # fmt: skip
                live.frame_done(source_run.source.name, drawn, tracks, time.time() - captured)
            for source_run in step.ended:
                live.ended(source_run.source.name)
            stopper.done_writing()
            frames_done += len(step.frames)
            if live.windows is not None and live.windows.quit_pressed():
                print("track: stopped from the window", file=sys.stderr)
                break
            if progress_every and frames_done >= next_report:
                next_report = frames_done + progress_every
                rate = frames_done / max(time.monotonic() - started, 1e-9)
                per_source = ", ".join(f"{r.source.name} {r.written}" for r in runs)
                print(f"track: {frames_done} frames ({per_source}), {rate:.1f} frames/s",
                      file=sys.stderr, flush=True)  # fmt: skip
