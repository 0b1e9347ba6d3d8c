"""Several live streams at once: one ``detector track`` process for N streams against N processes
of one stream each, on the same cores.

The streams are live-like: a local HTTP server (``StreamServer``) plays each as MJPEG
(``multipart/x-mixed-replace``, what IP cameras and ``--serve-preview`` send) at a fixed frame
rate, frames on a wall-clock schedule (a frame whose time has passed while the socket was
blocked is skipped, as a camera does), so that a pipeline slower than the streams drops
frames: ``serve.runtime.sources.LiveSource`` keeps only the newest. The frames are those of
the moving-shapes video (``track_common.write_shapes_video``, 640 x 480), JPEG-encoded once.

For each stream count and each mode (``one``: one process with N sources, batching them into
one network run per step; ``separate``: N processes of one source each; for N = 1 they are the
same run), the server plays N streams; once all N are connected it lets ``--warmup`` s pass,
then measures ``--seconds`` s and ends the streams, and the processes are stopped with SIGINT
(``detector track`` closes its files on it). Measured in that window:

- frames/s: frames processed (JSON lines whose ``timestamp``, the frame's arrival time at its
  reader, lies in the window) over the window, all streams together;
- dropped: frames the server sent in the window minus those processed (dropped by the readers
  for newer ones), as a count and a share of those sent;
- capture-to-result latency, p50 and p99 over all processed frames: the time each JSON line
  arrives at this script (``detector track`` writes ``<source>.jsonl`` into a FIFO put there,
  flushed per frame) minus its ``timestamp`` (both ``time.time()`` on this machine).

Repeats alternate the order of the modes; medians over repeats. The model by default:
yolox_nano at 416, random weights (``track_common.build_nano_onnx``; no detections), ONNX
Runtime on the CPU::

    .venv/bin/python benchmarks/track_streams.py                     # 1, 4, 8 streams
    python benchmarks/track_streams.py --model nano.pt --track-args="--device cuda" --streams 8 32
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
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
    versions,
    write_results,
    write_shapes_video,
)

sys.path.insert(0, str(ROOT))
MODES = ("one", "separate")


@dataclass
class Played:
    """One stream as the server played it."""

    connected: float | None = None  # time.time() of the request
    sent: list[float] = field(default_factory=list)  # time.time() of each frame sent
    skipped: int = 0  # frames whose time passed while the socket was blocked


class StreamServer:
    """MJPEG streams ``/cam{i}.mjpg`` (i < ``count``) over HTTP on 127.0.0.1, each played once
    at ``fps`` (a second request for it gets 404, so a reader that reconnects after the end
    finds nothing). Each stream starts when it is requested and plays ``jpegs`` in a loop until
    :meth:`stop_at` time; :attr:`all_connected` is set when every stream has been requested."""

    def __init__(self, jpegs: list[bytes], fps: float, count: int, max_seconds: float) -> None:
        self.jpegs, self.fps, self.count, self.max_seconds = jpegs, fps, count, max_seconds
        self.played = [Played() for _ in range(count)]
        self.all_connected = threading.Event()
        self.end: float | None = None
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                outer._serve(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        port = self.httpd.server_address[1]
        self.urls = [f"http://127.0.0.1:{port}/cam{i}.mjpg" for i in range(count)]

    def stop_at(self, end: float) -> None:
        """End every stream at ``end`` (``time.time()``)."""
        self.end = end

    def _serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        name = handler.path.lstrip("/")
        index = int(name[3:-5]) if name.startswith("cam") and name.endswith(".mjpg") else -1
        with self._lock:
            fresh = 0 <= index < self.count and self.played[index].connected is None
            if fresh:
                played = self.played[index]
                played.connected = start = time.time()
                if all(p.connected is not None for p in self.played):
                    self.all_connected.set()
        if not fresh:
            handler.send_error(404)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        handler.end_headers()
        period, k = 1.0 / self.fps, 0
        try:
            while True:
                now = time.time()
                if (self.end is not None and now >= self.end) or now - start > self.max_seconds:
                    break
                due = start + k * period
                if now < due:
                    time.sleep(due - now)
                    continue
                if now > due + period:  # fell behind: skip to the present, as a camera does
                    late = int((now - start) / period)
                    played.skipped += late - k
                    k = late
                jpeg = self.jpegs[k % len(self.jpegs)]
                head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                handler.wfile.write(head.encode() + jpeg + b"\r\n")
                played.sent.append(time.time())
                k += 1
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def stream_jpegs(video: Path, quality: int = 80) -> list[bytes]:
    """Every frame of ``video`` as JPEG bytes."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    jpegs = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        jpegs.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
    capture.release()
    if not jpegs:
        raise RuntimeError(f"{video}: no frames")
    return jpegs


def source_name(url: str) -> str:
    """The name ``detector track`` gives a URL source (its JSONL file's stem)."""
    from serve.runtime.sources import SourceSpec

    return SourceSpec(url, "live").name


def run_config(
    streams: int, mode: str, model: Path, jpegs: list[bytes], out: Path, args: argparse.Namespace,
) -> dict:  # fmt: skip
    """One measurement: ``streams`` streams through ``mode`` (``one`` or ``separate``)."""
    server = StreamServer(jpegs, args.fps, streams, args.connect_timeout + args.warmup
                          + args.seconds + 30)  # fmt: skip
    base = [sys.executable, "-m", "detector", "track", "--model", str(model), "--progress-every",
            "0", *shlex.split(args.track_args)]  # fmt: skip
    groups = [server.urls] if mode == "one" else [[url] for url in server.urls]
    cpus = set(args.cpus) if args.cpus else os.sched_getaffinity(0)
    stamps: list[LineStamps] = []
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for g, urls in enumerate(groups):
            folder = out / f"p{g}"
            for url in urls:
                stamps.append(LineStamps(make_fifo(folder / f"{source_name(url)}.jsonl")))
            logs.append((folder / "log.txt").open("w"))
            procs.append(subprocess.Popen(
                [*base, "--out", str(folder), *urls], stdout=logs[-1], stderr=subprocess.STDOUT,
                cwd=ROOT, preexec_fn=lambda: os.sched_setaffinity(0, cpus),
            ))  # fmt: skip
        if not server.all_connected.wait(args.connect_timeout):
            failed = [u for u, p in zip(server.urls, server.played) if p.connected is None]
            raise RuntimeError(f"{streams} streams, {mode}: not connected within "
                               f"{args.connect_timeout:g} s: {failed}; logs in {out}")  # fmt: skip
        start = max(p.connected for p in server.played) + args.warmup
        end = start + args.seconds
        server.stop_at(end)
        time.sleep(max(end - time.time(), 0) + args.grace)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stamp in stamps:
            stamp.join(10)
        for log in logs:
            log.close()
        server.close()
    return measure(server.played, stamps, start, end, streams, mode)


def measure(played: list[Played], stamps: list[LineStamps], start: float, end: float,
            streams: int, mode: str) -> dict:  # fmt: skip
    """Frames/s, drops and latency of the frames whose timestamp lies in ``[start, end)``."""
    processed, sent, latencies, per_stream, detections = 0, 0, [], [], 0
    for play, stamp in zip(played, stamps):
        lines = [(t, json.loads(line)) for t, line in stamp.lines]
        kept = [(t, r["timestamp"]) for t, r in lines if start <= r["timestamp"] < end]
        detections += sum(len(r["detections"]) for _, r in lines if start <= r["timestamp"] < end)
        sent_here = sum(start <= t < end for t in play.sent)
        processed += len(kept)
        sent += sent_here
        latencies += [t - ts for t, ts in kept]
        per_stream.append(len(kept) / (end - start))
    lat = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return {
        "streams": streams,
        "mode": mode,
        "window_s": round(end - start, 3),
        "frames_per_s": processed / (end - start),
        "sent": sent,
        "processed": processed,
        "dropped": sent - processed,
        "dropped_share": (sent - processed) / sent if sent else float("nan"),
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p99": float(np.percentile(lat, 99)),
        "detections_per_frame": detections / processed if processed else float("nan"),
        "per_stream_frames_per_s": [round(x, 2) for x in per_stream],
        "server_skipped": sum(p.skipped for p in played),
    }


def summarise(runs: list[dict], counts: list[int]) -> list[dict]:
    """Per stream count and mode: medians over repeats; per count, one / separate frames/s."""
    rows = []
    for n in counts:
        by_mode = {}
        for mode in MODES:
            mine = [
                r for r in runs if r["streams"] == n and r["mode"] == (mode if n > 1 else "one")
            ]
            by_mode[mode] = {key: median([r[key] for r in mine]) for key in (
                "frames_per_s", "dropped", "dropped_share", "sent", "latency_ms_p50",
                "latency_ms_p99")}  # fmt: skip
        rows.append({
            "streams": n,
            **{mode: by_mode[mode] for mode in MODES},
            "frames_per_s_one_over_separate": by_mode["one"]["frames_per_s"]
            / by_mode["separate"]["frames_per_s"],
        })  # fmt: skip
    return rows


def markdown(result: dict) -> str:
    meta = result["meta"]
    load = ", ".join(f"{x:g}" for x in meta["load_average_before"])
    busy = meta.get("busy_processes_before") or []
    lines = [
        "## Several streams: one `detector track` process against one process per stream",
        "",
        f"- date: {meta['date']}, commit {meta['commit']}",
        f"- CPU: {meta['cpu']}, {meta['cores']} cores for the tracking processes "
        f"({meta['cpus']}), shared (load average {load} before the run"
        + (f"; also running: {'; '.join(busy)}" if busy else "")
        + ")",
        f"- command: `{meta['command']}`",
        f"- streams: {meta['streams_desc']}",
        f"- model: {meta['model']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
        f"Medians of {meta['repeats']} repeats, modes alternating; a {meta['seconds']:g} s "
        f"window after all streams are connected and {meta['warmup']:g} s more. Dropped: "
        "frames sent in the window and not processed (share of those sent). Latency: from a "
        "frame's arrival at its reader to its JSON line. Method: the docstring of "
        "`benchmarks/track_streams.py`.",
        "",
        "| streams | mode | frames/s (all streams) | dropped | latency p50 / p99 (ms) | "
        "one / separate, frames/s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in result["summary"]:
        for mode in MODES if row["streams"] > 1 else ("one",):
            r = row[mode]
            label = {"one": "one process", "separate": f"{row['streams']} processes"}[mode]
            ratio = f"**{row['frames_per_s_one_over_separate']:.2f}x**" if mode == "one" else ""
            if row["streams"] == 1:
                label, ratio = "one process (= 1 process)", "1 (same run)"
            lines.append(
                f"| {row['streams']} | {label} | {r['frames_per_s']:.1f} | "
                f"{r['dropped']:.0f} ({100 * r['dropped_share']:.0f} %) | "
                f"{r['latency_ms_p50']:.0f} / {r['latency_ms_p99']:.0f} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path,
                        help="model file for detector track (default: yolox_nano at 416, random "
                             "weights, exported to ONNX here)")  # fmt: skip
    parser.add_argument(
        "--track-args",
        default="",
        help='more detector track options, e.g. --track-args="--device cuda"',
    )
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate of each stream")
    parser.add_argument("--seconds", type=float, default=12.0, help="measured window")
    parser.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        help="seconds between the last stream connecting and the window",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=1.0,
        help="seconds after the window before the processes are stopped",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=120.0,
        help="seconds for every stream to be requested (process start-up)",
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--cpus",
        type=int,
        nargs="+",
        help="cores for the tracking processes (default: all this one may use)",
    )
    parser.add_argument("--work", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks/results/track_streams_nano416.json"
    )
    parser.add_argument(
        "--md",
        default=str(ROOT / "benchmarks/tracker_bench.md"),
        help="page whose section this run rewrites ('' for none)",
    )
    args = parser.parse_args()

    meta = machine()
    load_before = meta.pop("load_average_1_5_15")
    busy = busy_processes()
    work = args.work or Path(tempfile.mkdtemp(prefix="track_streams_"))
    video = write_shapes_video(work / "shapes_640x480.mp4", 150)
    jpegs = stream_jpegs(video)
    model = args.model or build_nano_onnx(work / "model", 416)

    runs = []
    for r in range(args.repeats):
        for n in args.streams:
            modes = MODES if r % 2 == 0 else MODES[::-1]
            for mode in modes if n > 1 else ("one",):
                run = run_config(n, mode, model, jpegs, work / "runs" / f"{r}_{n}_{mode}", args)
                runs.append(run)
                print(f"repeat {r} {n:>3} streams {mode:<8} {run['frames_per_s']:7.1f} frames/s, "
                      f"dropped {run['dropped']} of {run['sent']}, latency p50 "
                      f"{run['latency_ms_p50']:.0f} ms p99 {run['latency_ms_p99']:.0f} ms",
                      flush=True)  # fmt: skip

    cpus = sorted(set(args.cpus) if args.cpus else os.sched_getaffinity(0))
    meta.update({
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "busy_processes_before": busy,
        "command": command_line("track_streams.py", sys.argv[1:]),
        "cpus": ",".join(map(str, cpus)),
        "repeats": args.repeats,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "fps": args.fps,
        "streams_desc": f"MJPEG over HTTP from 127.0.0.1, {args.fps:g} fps each, 640 x 480 "
                        f"(JPEG quality 80, {len(jpegs)} frames of the moving-shapes video "
                        "looped)",
        "model": str(args.model) if args.model else "yolox_nano at 416, 80 classes, random "
                 "weights (no detections), ONNX (dynamic batch), ONNX Runtime CPU",
        "track_args": args.track_args,
        "versions": versions("onnxruntime", "cv2", "numpy"),
    })  # fmt: skip
    result = {"meta": meta, "summary": summarise(runs, args.streams), "runs": runs}
    write_results(result, args.json, args.md, "track_streams", markdown(result), work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
