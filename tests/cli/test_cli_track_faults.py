"""``detector track`` on live sources under real faults: an RTSP stream from GStreamer's RTSP
server (``tests/rtsp_server.py``) that is killed mid-stream and started again, URLs with nothing
behind them beside good sources, and frames that cannot be decoded.

The model is the colour finder of ``tests/colour_model.py`` (a real ONNX file run by the serving
runtime), which finds the moving squares of its videos exactly, so each JSON line can be checked
against the squares' known paths and the track ids against the squares' identities.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from io import TextIOBase
from pathlib import Path

import cv2
import numpy as np
import pytest
from colour_model import (  # tests/ is on sys.path (its conftest.py)
    HEIGHT,
    WIDTH,
    colour_finder_onnx,
    green_box,
    red_box,
    write_video,
)
from media_faults import write_mjpeg
from rtsp_server import RtspServer, missing_reason

from detector.cli import main

REPO = Path(__file__).resolve().parents[2]
needs_rtsp = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_finder_onnx(tmp_path_factory.mktemp("faults_model") / "colours.onnx")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def frame_count(path: Path) -> int:
    """Frames OpenCV decodes from ``path`` (0 when it cannot open it)."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.isOpened() and capture.grab():
        count += 1
    capture.release()
    return count


def shapes_frame(t: int) -> np.ndarray:
    """Frame ``t`` of the colour model's video, ``[HEIGHT, WIDTH, 3]``."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for (x1, y1, x2, y2), colour in ((red_box(t), (0, 0, 255)), (green_box(t), (0, 255, 0))):
        image[y1:y2, x1:x2] = colour
    return image


def shapes_time(record: dict) -> int:
    """The frame number t of a JSON line, from its red square, checked against both squares'
    known paths: exactly one red and one green detection, where frame t has them."""
    by_class = {d["class_name"]: d for d in record["detections"]}
    assert sorted(d["class_name"] for d in record["detections"]) == ["green", "red"], record
    t = round((by_class["red"]["box"][0] - red_box(0)[0]) / 2)
    np.testing.assert_allclose(by_class["red"]["box"], red_box(t), atol=3)
    np.testing.assert_allclose(by_class["green"]["box"], green_box(t), atol=3)
    return t


def track_ids(records: list[dict], name: str) -> list[int | None]:
    return [next(d["track_id"] for d in r["detections"] if d["class_name"] == name)
            for r in records]  # fmt: skip


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str) -> None:
    """Poll ``condition`` until it holds; fail, with the process's output, if it ends first
    or it takes longer than two minutes (a hang, not a timing)."""
    deadline = time.monotonic() + 120
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"gave up waiting for {what}; exit {process.returncode}\n{out}\n{err}")
        time.sleep(0.05)


def lines(path: Path) -> list[dict]:
    """The complete JSON lines written so far (none when the file is not there yet)."""
    if not path.is_file():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


@pytest.fixture
def silent_url() -> Iterator[str]:
    """An rtsp:// URL whose server accepts the connection and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    yield f"rtsp://127.0.0.1:{listener.getsockname()[1]}/silent"
    listener.close()


@needs_rtsp
def test_rtsp_stream_survives_a_server_restart(
    model: Path, silent_url: str, tmp_path: Path
) -> None:
    """``detector track`` on GStreamer's RTSP server and on a URL that never answers, in a
    subprocess. The silent URL fails within ``--open-timeout`` naming it while the stream runs;
    after 10 frames the server is killed and started again: the stream is reopened (logged),
    frames come again, the squares keep one id each between the jumps, and SIGTERM at the end
    leaves readable outputs."""
    video = write_video(tmp_path / "shapes.mp4", 50, fps=10.0)  # 5 s, no wrap of the paths
    server = RtspServer(video)
    server.start()
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "detector", "track", server.url, silent_url, "--model",
         str(model), "--out", str(out), "--open-timeout", "2", "--progress-every", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    jsonl = out / f"127.0.0.1_{server.port}_shapes.jsonl"
    try:
        wait_for(lambda: len(lines(jsonl)) >= 10, process, "10 frames of the stream")
        server.kill()
        server.start()
        restarted = time.time()

        def resumed() -> bool:
            return sum(r["timestamp"] > restarted for r in lines(jsonl)) >= 10

        wait_for(resumed, process, "10 frames after the server's restart")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        server.close()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert f"error: {silent_url}: " in err  # named, and the stream went on without it
    assert f"{server.url}: stream dropped" in err and f"{server.url}: reopened" in err
    records = read_jsonl(jsonl)  # every line parses
    assert frame_count(out / f"{jsonl.stem}.mp4") == len(records)
    times = [shapes_time(r) for r in records]  # every frame whole and where the squares are
    # the video from the start again after each reopen: cut there, each piece in order
    cuts = [0] + [i + 1 for i, (a, b) in enumerate(zip(times, times[1:])) if b < a]
    assert len(cuts) >= 2, times
    pieces = [records[a:b] for a, b in zip(cuts, cuts[1:] + [len(records)])]
    for piece in pieces:  # ByteTrack confirms a track made after its first frame on its second
        red, green = track_ids(piece[1:], "red"), track_ids(piece[1:], "green")
        assert None not in red + green, (times, red, green)
        assert len(set(red)) == len(set(green)) == 1 and red[0] != green[0], (times, red, green)


def test_urls_with_nothing_behind_them_fail_and_a_good_source_completes(
    model: Path, silent_url: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A URL whose server never answers and one where no server listens: each fails within
    ``--open-timeout`` with a message naming it; the video file beside them is read whole."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        refused = f"rtsp://127.0.0.1:{probe.getsockname()[1]}/nothing"
    video = write_video(tmp_path / "good.mp4", 20)
    out = tmp_path / "out"
    code = main(["track", silent_url, refused, str(video), "--model", str(model), "--out",
                 str(out), "--open-timeout", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert f"error: {silent_url}: " in err and f"error: {refused}: " in err
    records = read_jsonl(out / "good.jsonl")
    assert [r["frame"] for r in records] == list(range(20))
    assert [shapes_time(r) for r in records] == list(range(20))


def test_undecodable_frames_are_skipped_counted_and_tracked_over(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An MJPEG video whose frames 7 and 8 are junk: their lines are left out (the frame
    indices keep counting), the summary counts them, and each square keeps its id over the
    gap."""
    video = write_mjpeg(tmp_path / "glitch.avi", [shapes_frame(t) for t in range(20)], 25.0,
                        broken={7, 8})  # fmt: skip
    out = tmp_path / "out"
    assert main(["track", str(video), "--model", str(model), "--out", str(out)]) == 0
    assert f"{video}: 18 frames, 2 undecodable" in capsys.readouterr().out
    records = read_jsonl(out / "glitch.jsonl")
    good = [t for t in range(20) if t not in (7, 8)]
    assert [r["frame"] for r in records] == good
    assert [shapes_time(r) for r in records] == good
    assert len(set(track_ids(records, "red"))) == len(set(track_ids(records, "green"))) == 1
    assert frame_count(out / "glitch.mp4") == 18


class _Cameras(http.server.BaseHTTPRequestHandler):
    """Two IP cameras' MJPEG streams of the moving squares at 25 frames/s: ``/good`` for as long
    as the client reads; ``/flaky`` sends :attr:`FLAKY_FRAMES` frames, then drops the
    connection (its time in :attr:`dropped_at`) and answers every later request with 503, a
    camera that is down while the reader keeps reconnecting."""

    FLAKY_FRAMES = 10
    dropped_at: float | None = None  # time.time() when /flaky dropped

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        flaky = self.path == "/flaky"
        if flaky and _Cameras.dropped_at is not None:
            self.send_error(503)
            return
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=cam")
        self.end_headers()
        start, t = time.monotonic(), 0
        try:
            while not (flaky and t == self.FLAKY_FRAMES):
                _, jpeg = cv2.imencode(".jpg", shapes_frame(t % 50))
                self.wfile.write(b"--cam\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg.tobytes()
                                 + b"\r\n")  # fmt: skip
                t += 1
                time.sleep(max(start + t / 25.0 - time.monotonic(), 0.0))
        except OSError:  # the reader left
            return
        self.wfile.flush()
        _Cameras.dropped_at = time.time()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def _collect(stream: TextIOBase, into: list[str]) -> threading.Thread:
    """A thread that appends each line of ``stream`` to ``into`` as it comes."""
    thread = threading.Thread(target=lambda: into.extend(iter(stream.readline, "")), daemon=True)
    thread.start()
    return thread


def test_a_camera_that_is_down_does_not_hold_up_a_good_one(model: Path, tmp_path: Path) -> None:
    """Two live MJPEG cameras in one ``detector track`` process; one drops after 10 frames and
    is down from then on (503), so its reader keeps reconnecting with backoff before it gives
    up. The good camera's frames keep being tracked meanwhile: 20 of them after the drop are
    written before the down one's reader gives up (a loop that waits on the down camera would
    write none until then). SIGTERM then ends the run, and the summary on stdout still names
    each source with its frames and the down one's reconnects."""
    _Cameras.dropped_at = None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Cameras)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "detector", "track", f"{base}/good", f"{base}/flaky", "--model",
         str(model), "--out", str(out), "--open-timeout", "5", "--progress-every", "0",
         "--no-video"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    err: list[str] = []
    reader = _collect(process.stderr, err)
    port = server.server_address[1]
    good, flaky = out / f"127.0.0.1_{port}_good.jsonl", out / f"127.0.0.1_{port}_flaky.jsonl"
    try:
        wait_for(lambda: _Cameras.dropped_at is not None, process, "the flaky camera to drop")

        def after_drop() -> int:
            return sum(r["timestamp"] > _Cameras.dropped_at for r in lines(good))

        wait_for(lambda: after_drop() >= 20, process, "20 good frames after the drop")
        log = "".join(err)
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        server.shutdown()
        server.server_close()
    reader.join(10)
    assert f"{base}/flaky: stream dropped" in log, log  # it was reconnecting meanwhile
    assert f"{base}/flaky: gave up" not in log, log  # and had not given up
    assert process.returncode == 130, "".join(err)
    assert "Traceback" not in "".join(err)
    records = read_jsonl(good)
    assert [r["frame"] for r in records] == list(range(len(records)))
    for record in records:
        shapes_time(record)  # whole frames, the squares where they are
    summary = {line.split(": ", 1)[0]: line for line in stdout.splitlines()}
    assert f"{len(records)} frames" in summary[f"{base}/good"], stdout
    flaky_frames = len(read_jsonl(flaky))
    assert 1 <= flaky_frames <= _Cameras.FLAKY_FRAMES
    reconnects = re.search(r", (\d+) reconnects", summary[f"{base}/flaky"])
    assert f": {flaky_frames} frames" in summary[f"{base}/flaky"], stdout
    assert reconnects is not None and int(reconnects.group(1)) >= 1, stdout
