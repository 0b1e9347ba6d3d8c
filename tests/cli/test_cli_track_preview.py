"""``detector track``'s live outputs, end to end: the MJPEG preview in a real headless browser
(Debian's chromium driven by playwright, as in ``tests/serve/test_serve_web.py``), the
Prometheus metrics of a run over a known video, and ``--show`` without a display.

One real ``detector track`` process runs for the whole module on two sources: a camera (a local
HTTP server sending the moving squares of ``colour_model`` as MJPEG at 25 frames/s, as an IP
camera does, so it never ends) and the 40-frame video file; the model is the real ONNX colour
finder run by the serving runtime. Nothing is monkeypatched.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
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

from detector.cli import main
from detector.cli.track import display_problem
from detector.core.visualize import class_colour

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FRAMES = 40  # of the video file
CAMERA_FPS = 25.0
DEADLINE_S = 120  # for anything the tests wait for (a slow CI machine), never asserted on
RED = 2  # the colour finder's class of the red square


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not Path(CHROMIUM).is_file():
        return f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    return None


def camera_frame(t: int) -> np.ndarray:
    """Frame ``t`` of the camera: the video file's moving squares, looping every 50 frames."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    x1, y1, x2, y2 = red_box(t % 50)
    image[y1:y2, x1:x2] = (0, 0, 255)
    x1, y1, x2, y2 = green_box(t % 50)
    image[y1:y2, x1:x2] = (0, 255, 0)
    return image


class _Camera(http.server.BaseHTTPRequestHandler):
    """An IP camera's MJPEG stream: a new JPEG every 1/25 s for as long as the client reads."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=cam")
        self.end_headers()
        start, t = time.monotonic(), 0
        try:
            while True:
                _, jpeg = cv2.imencode(".jpg", camera_frame(t), [cv2.IMWRITE_JPEG_QUALITY, 95])
                self.wfile.write(b"--cam\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg.tobytes()
                                 + b"\r\n")  # fmt: skip
                t += 1
                time.sleep(max(start + t / CAMERA_FPS - time.monotonic(), 0.0))
        except OSError:  # the reader left
            pass

    def log_message(self, *args: object) -> None:
        pass


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def metric_values(text: str) -> dict[tuple[str, str], float]:
    """``(sample name, source label) -> value`` of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, sample.labels.get("source", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "le" not in sample.labels
    }


def wait_for(what: str, check, process: subprocess.Popen, log: Path):  # noqa: ANN001, ANN201
    """Poll ``check()`` until it returns something other than None or False (returned); fail
    when the track process has exited or after :data:`DEADLINE_S`."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"track exited:\n{log.read_text()[-3000:]}"
        found = check()
        if found is not None and found is not False:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {DEADLINE_S} s\n{log.read_text()[-3000:]}")


class Run:
    """The ``detector track`` process: its URLs, output folder and log."""

    def __init__(self, process: subprocess.Popen, out: Path, log: Path) -> None:
        self.process, self.out, self.log = process, out, log
        self.camera: str | None = None  # the camera source's name, once known
        text = wait_for("the server addresses", lambda: self._addresses(), process, log)
        self.preview, self.metrics = text

    def _addresses(self) -> tuple[str, str] | None:
        text = self.log.read_text()
        preview = re.search(r"track: preview at (\S+)", text)
        metrics = re.search(r"track: metrics at (\S+)", text)
        return (preview.group(1), metrics.group(1)) if preview and metrics else None

    def wait_for(self, what: str, check):  # noqa: ANN001, ANN201
        return wait_for(what, check, self.process, self.log)

    def lines(self, name: str) -> list[dict]:
        path = self.out / f"{name}.jsonl"
        text = path.read_text() if path.is_file() else ""
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_finder_onnx(tmp_path_factory.mktemp("preview_model") / "colours.onnx")


@pytest.fixture(scope="module")
def run(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    folder = tmp_path_factory.mktemp("preview_run")
    video = write_video(folder / "moving.mp4", FRAMES)
    camera = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Camera)
    camera.daemon_threads = True
    threading.Thread(target=camera.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{camera.server_address[1]}/cam"
    log = folder / "track.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "detector", "track", url, str(video), "--model", str(model),
             "--out", str(folder / "out"), "--serve-preview", "0", "--metrics-port", "0",
             "--progress-every", "0"],
            stdout=subprocess.DEVNULL, stderr=err, env=env,
        )  # fmt: skip
    try:
        yield Run(process, folder / "out", log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        camera.shutdown()
        camera.server_close()


def camera_name(run: Run) -> str:
    """The camera source's name (from its URL's host, port and path), once its file exists."""
    if run.camera is None:
        names = run.wait_for("the camera's output", lambda: [
            p.stem for p in run.out.glob("*.jsonl") if p.stem != "moving"] or None)  # fmt: skip
        assert len(names) == 1, names
        run.camera = names[0]
    return run.camera


# ---------------------------------------------------------------------------- metrics


def test_metrics_count_every_frame_of_the_video(run: Run) -> None:
    """Once the video file has ended (the camera goes on): read = processed = its 40 frames,
    none dropped or corrupt, a latency for each, its 2 squares as active tracks; the camera's
    counts grow and it has its 2 tracks too. The same metrics on the preview's /metrics."""

    def video_done() -> dict | None:
        values = metric_values(get(run.metrics).decode())
        return values if values.get(("detector_track_source_running", "moving")) == 0 else None

    values = run.wait_for("the video's end in /metrics", video_done)
    video = {name: value for (name, source), value in values.items() if source == "moving"}
    assert video["detector_track_frames_read_total"] == FRAMES
    assert video["detector_track_frames_processed_total"] == FRAMES
    assert video["detector_track_latency_seconds_count"] == FRAMES
    assert video["detector_track_frames_dropped_total"] == 0
    assert video["detector_track_frames_corrupt_total"] == 0
    assert video["detector_track_reconnects_total"] == 0
    assert video["detector_track_active_tracks"] == 2  # the red and the green square
    assert len(run.lines("moving")) == FRAMES

    camera = camera_name(run)

    def camera_values() -> dict | None:
        values = metric_values(get(run.preview + "metrics").decode())  # the preview's /metrics
        processed = values.get(("detector_track_frames_processed_total", camera), 0)
        # both squares tracked (not at the frame where they jump back to the start, every 50)
        tracked = values.get(("detector_track_active_tracks", camera)) == 2
        return values if processed >= 10 and tracked else None

    values = run.wait_for("camera frames and its 2 tracks in /metrics", camera_values)
    assert values[("detector_track_source_running", camera)] == 1
    read = values[("detector_track_frames_read_total", camera)]
    assert read >= values[("detector_track_frames_processed_total", camera)]
    assert get(run.metrics.removesuffix("metrics") + "healthz") == b"ok\n"


# ---------------------------------------------------------------------------- preview


def red_square(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x1, y1, x2, y2)`` of the red square's pixels in a BGR frame, or None."""
    b, g, r = (image[..., c].astype(int) for c in range(3))
    ys, xs = np.nonzero((r > 180) & (g < 90) & (b < 90))
    if len(xs) < 100:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def annotated_track(image: np.ndarray) -> bool:
    """Whether the frame shows the red square as a tracked object: the square (20 px) at one
    of its known positions, its box drawn around it in its class colour, and marks in that
    colour inside it: its ``#id`` label and its trail, which are drawn only for a detection
    with a track id (an untracked one gets its box and class label only, outside the square;
    a share of 0 of its inside then, against 0.09-0.18 with a track, measured)."""
    square = red_square(image)
    if square is None:
        return False
    x1, y1, x2, y2 = square
    if not any(abs(x1 - red_box(t)[0]) <= 2 for t in range(50)) or abs(y1 - 30) > 2:
        return False
    colour = np.array(class_colour(RED), float)

    def near(pixels: np.ndarray) -> float:  # share of pixels within JPEG noise of the colour
        return float(np.mean(np.abs(pixels.astype(float) - colour).max(axis=-1) < 60))

    box = near(image[y1 + 2 : y2 - 2, min(x2, WIDTH - 1)])  # the box's right edge
    marks = near(image[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2])
    return box > 0.7 and marks > 0.05


@pytest.mark.skipif(_missing_browser() is not None, reason=str(_missing_browser()))
def test_browser_shows_the_tracked_camera(run: Run) -> None:
    """The index page in chromium lists both sources as MJPEG ``<img>`` s; the camera's, drawn
    onto a canvas and read back as PNG, is a 160 x 120 frame that shows the red square with its
    box, track id and trail; the camera's JSON lines carry track ids."""
    from playwright.sync_api import sync_playwright

    camera = camera_name(run)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(run.preview)
            images = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => [i.alt, i.getAttribute('src')])"
            )
            assert sorted(images) == sorted([[camera, f"stream/{camera}"],
                                             ["moving", "stream/moving"]])  # fmt: skip
            selector = f"img[alt='{camera}']"
            page.wait_for_selector(selector)

            def frame() -> np.ndarray | None:
                from PIL import Image

                url = page.eval_on_selector(
                    selector,
                    """img => {
                        if (!img.complete || img.naturalWidth === 0) return null;
                        const canvas = document.createElement('canvas');
                        canvas.width = img.naturalWidth;
                        canvas.height = img.naturalHeight;
                        canvas.getContext('2d').drawImage(img, 0, 0);
                        return canvas.toDataURL('image/png');
                    }""",
                )
                if url is None:
                    return None
                png = base64.b64decode(url.removeprefix("data:image/png;base64,"))
                rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
                return rgb[..., ::-1]  # BGR, as OpenCV drew it

            def tracked_frame() -> np.ndarray | None:
                image = frame()
                return image if image is not None and annotated_track(image) else None

            shown = run.wait_for("an annotated camera frame in the browser", tracked_frame)
            assert shown.shape == (HEIGHT, WIDTH, 3)
            assert errors == []
        finally:
            browser.close()
    # the squares jump back to their start every 50 frames: new tracks, without an id in the
    # one frame before they are confirmed
    found = [d["track_id"] for r in run.lines(camera) for d in r["detections"]]
    assert len(found) >= 20 and found.count(None) <= 0.1 * len(found)
    assert len(set(found) - {None}) >= 2


def test_stream_is_mjpeg_that_opencv_reads(run: Run) -> None:
    """The camera's /stream is ``multipart/x-mixed-replace`` JPEGs: FFmpeg (through OpenCV)
    opens it as a video stream and decodes frames of the source's size; /snapshot is one."""
    camera = camera_name(run)
    with urllib.request.urlopen(f"{run.preview}stream/{camera}", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        head = response.read(200)
    assert b"Content-Type: image/jpeg" in head and b"\xff\xd8" in head
    capture = cv2.VideoCapture(f"{run.preview}stream/{camera}", cv2.CAP_FFMPEG)
    try:
        decoded = [capture.read() for _ in range(3)]
    finally:
        capture.release()
    assert all(ok and image.shape == (HEIGHT, WIDTH, 3) for ok, image in decoded)
    snapshot = cv2.imdecode(np.frombuffer(get(f"{run.preview}snapshot/{camera}"), np.uint8),
                            cv2.IMREAD_COLOR)  # fmt: skip
    assert snapshot is not None and snapshot.shape == (HEIGHT, WIDTH, 3)
    with pytest.raises(urllib.error.HTTPError, match="404"):
        get(f"{run.preview}stream/nonesuch")


def test_a_stalled_viewer_does_not_slow_tracking(run: Run) -> None:
    """A viewer that opens the camera's stream and never reads: the tracking goes on at the
    camera's pace (another 50 frames, 2 s of camera), and other viewers are still served."""
    camera = camera_name(run)
    port = int(run.preview.rsplit(":", 1)[1].strip("/"))
    stalled = socket.create_connection(("127.0.0.1", port))
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(f"GET /stream/{camera} HTTP/1.0\r\n\r\n".encode())
        before = len(run.lines(camera))
        run.wait_for("50 more camera frames", lambda: len(run.lines(camera)) >= before + 50)
        assert get(f"{run.preview}snapshot/{camera}")[:2] == b"\xff\xd8"
    finally:
        stalled.close()


def test_sigterm_ends_the_run_and_closes_the_servers(run: Run) -> None:
    """Last in the module: SIGTERM stops the camera's run cleanly (130, no traceback), every
    JSON line parses, and the preview's port is released."""
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(timeout=60) == 130
    log = run.log.read_text()
    assert "Traceback" not in log
    assert len(run.lines(camera_name(run))) > 0
    with pytest.raises(OSError):
        get(run.preview)


# ---------------------------------------------------------------------------- --show


def test_show_without_a_display_is_a_clear_error(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    video = write_video(tmp_path / "clip.mp4", 3)
    code = main(["track", str(video), "--model", str(model), "--out", str(tmp_path / "out"),
                 "--show"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    [line] = err.strip().splitlines()  # one line, no traceback
    assert line.startswith("error: --show needs a display") and "DISPLAY" in line
    assert "--serve-preview PORT" in line
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_headless_opencv_is_named() -> None:
    """A display but an OpenCV without a GUI (opencv-python-headless's build information)."""
    headless = "  GUI:                           NONE\n  Media I/O:\n"
    problem = display_problem({"DISPLAY": ":0"}, headless)
    assert problem is not None and "opencv-python-headless" in problem
    assert display_problem({"DISPLAY": ":0"}, "  GUI:   QT5\n") is None


def test_preview_port_in_use_is_a_clear_error(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        video = write_video(tmp_path / "clip.mp4", 3)
        code = main(["track", str(video), "--model", str(model), "--serve-preview", str(port)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: --serve-preview {port}: cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err
