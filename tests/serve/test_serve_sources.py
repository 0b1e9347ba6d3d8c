"""Frame sources (``serve.runtime.sources``): what each spec means, files read whole and in
order, and live streams from real servers on 127.0.0.1 that FFmpeg reads from: over HTTP
(newest frame only, a stream that drops reopened and counted, a stream that never answers
failing with its URL, an MJPEG camera stream with a broken JPEG) and over RTSP from GStreamer's
RTSP server (``tests/rtsp_server.py``), killed mid-stream and restarted. Undecodable frames in a
file or a stream are skipped and counted."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from colour_model import green_box, red_box  # tests/ is on sys.path (its conftest.py)
from colour_model import write_video as write_shapes
from media_faults import MJPEG_STREAM_TYPE, mjpeg_stream, write_mjpeg
from rtsp_server import RtspServer, missing_reason

from serve.runtime.sources import (
    ImageFilesSource,
    LiveSource,
    SourceError,
    VideoFileSource,
    expand_sources,
    make_source,
)

FRAMES = 30


def bar_frame(t: int) -> np.ndarray:
    """Frame t of the bar videos: a white bar at x = 2 t on black, ``[48, 64, 3]``."""
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, 2 * t : 2 * t + 4] = 255
    return image


def write_video(path: Path, frames: int = FRAMES) -> Path:
    """An mp4v video of :func:`bar_frame` 0 .. frames - 1 (64 x 48, 10 fps)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for t in range(frames):
        writer.write(bar_frame(t))
    writer.release()
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("sources") / "bar.mp4")


def bar_position(image: np.ndarray) -> int:
    """The x of the white bar's left edge in a decoded frame."""
    return int(np.flatnonzero(image[24, :, 0] > 128)[0])


def test_specs_are_recognised(tmp_path: Path, video: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("b.jpg", "a.png"):
        cv2.imwrite(str(folder / name), np.zeros((8, 8, 3), np.uint8))
    (folder / "clip.mp4").write_bytes(video.read_bytes())
    (folder / "notes.md").write_text("not an image")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# cameras\nrtsp://user:pw@cam.local:554/stream1\n\n{video}\n")
    still, recording = tmp_path / "still.pgm", tmp_path / "recording.dat"  # by content
    cv2.imwrite(str(still), np.zeros((8, 8), np.uint8))
    recording.write_bytes(video.read_bytes())
    specs = expand_sources([
        str(folder), str(listing), "0", "/dev/video2", "rtmp://host/live/key",
        "https://host/feed.mjpg", "videotestsrc ! videoconvert ! appsink", str(tmp_path / "no.mp4"),
        str(tmp_path / "*.nothing"), str(still), str(recording),
    ])  # fmt: skip
    assert [(s.kind, s.name) for s in specs] == [
        ("images", "folder"),
        ("video", "clip"),
        ("live", "cam.local_554_stream1"),
        ("video", "bar"),
        ("live", "camera0"),
        ("live", "video2"),
        ("live", "host_live_key"),
        ("live", "host_feed.mjpg"),
        ("live", "gstreamer"),
        ("missing", "no"),
        ("missing", tmp_path.name),
        ("images", "still"),
        ("video", "recording"),
    ]
    assert [p.name for p in specs[0].paths] == ["a.png", "b.jpg"]
    with pytest.raises(SourceError, match="no.mp4"):
        make_source(specs[-4]).open()


def test_images_in_order_and_unreadable_ones_skipped(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), np.full((8, 8, 3), 10 * i, np.uint8))
    broken = tmp_path / "1b.png"
    broken.write_bytes(b"not a png")
    source = ImageFilesSource("imgs", "imgs", [paths[0], broken, paths[1], paths[2]])
    source.open()
    frames = list(source)
    assert [f.index for f in frames] == [0, 2, 3]
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 10, 20]
    assert all(f.timestamp is None for f in frames)
    assert (source.stats.frames, source.stats.decode_errors) == (3, 1)


def test_video_file_gives_every_frame_in_order(video: Path) -> None:
    with VideoFileSource("bar", str(video)) as source:
        source.open()
        frames = list(source)
        assert source.poll() is None and source.ended
    assert source.fps == 10.0
    assert [f.index for f in frames] == list(range(FRAMES))
    assert [f.timestamp for f in frames[:3]] == [0.0, 0.1, 0.2]
    assert [bar_position(f.image) for f in frames] == [2 * t for t in range(FRAMES)]


def test_unreadable_video_is_named(tmp_path: Path) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(SourceError, match="fake.mp4: not a readable video"):
        VideoFileSource("fake", str(fake)).open()


def test_undecodable_frames_in_a_file_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An MJPEG file whose frames 5, 9 and 10 are junk: the rest come, in order, with their own
    indices (the file does not end at the first bad frame), and the three are counted."""
    bad = {5, 9, 10}
    video = write_mjpeg(tmp_path / "broken.avi", [bar_frame(t) for t in range(FRAMES)], 10.0, bad)
    with caplog.at_level(logging.WARNING), VideoFileSource("broken", str(video)) as source:
        source.open()
        frames = list(source)
    good = [t for t in range(FRAMES) if t not in bad]
    assert [f.index for f in frames] == good
    assert [bar_position(f.image) for f in frames] == [2 * t for t in good]
    assert (source.stats.frames, source.stats.decode_errors) == (len(good), len(bad))
    assert "frame 5 failed to decode" in caplog.text and "frames 9-10" in caplog.text


class _Server:
    """A local HTTP server that serves ``data`` to the first ``passes`` requests, then 404:
    a live stream that plays ``passes`` times, dropping at the end of each."""

    def __init__(self, data: bytes, passes: int, content_type: str = "video/mp4") -> None:
        self.passes = passes
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                outer.requests += 1
                if outer.requests > outer.passes:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mp4"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stream(video: Path, request: pytest.FixtureRequest) -> Iterator[_Server]:
    server = _Server(video.read_bytes(), request.param)
    yield server
    server.close()


@pytest.mark.parametrize("stream", [1], indirect=True)
def test_live_keeps_only_the_newest_frame(stream: _Server, video: Path) -> None:
    """Nothing is taken until the stream is over: only its last frame is left, every other
    one counted as dropped; after the drop, the reopen tries (404) are counted and it ends."""
    source = LiveSource("cam", stream.url, reconnect_tries=2, backoff=0.01)
    source.open()
    assert source.join(timeout=60)
    frame = source.read()
    assert frame is not None and frame.index == 0
    assert bar_position(frame.image) == 2 * (FRAMES - 1)
    assert source.read() is None
    assert (source.stats.frames, source.stats.dropped) == (1, FRAMES - 1)
    assert source.stats.reconnects == 2 and stream.requests == 3
    source.close()


@pytest.mark.parametrize("stream", [2], indirect=True)
def test_live_stream_that_drops_is_reopened(stream: _Server) -> None:
    """Taking frames as they come: frames of both passes arrive, in order within each pass;
    taken plus dropped is every frame the server sent."""
    source = make_source(expand_sources([stream.url])[0], open_timeout=10)
    assert isinstance(source, LiveSource)
    source.reconnect_tries, source.backoff = 1, 0.01
    source.open()
    positions = [bar_position(frame.image) for frame in source]
    source.close()
    assert source.stats.frames + source.stats.dropped == 2 * FRAMES
    assert source.stats.reconnects == 2  # one that worked, one that got the 404
    wraps = sum(b < a for a, b in zip(positions, positions[1:]))
    assert wraps <= 1 and positions[-1] == 2 * (FRAMES - 1)
    assert source.stats.decode_errors == 0


def test_broken_jpeg_in_an_mjpeg_stream_is_skipped_and_counted() -> None:
    """An IP camera's MJPEG over HTTP (``multipart/x-mixed-replace``) with frame 10 a broken
    JPEG: the stream goes on after it without a reconnect; every other frame is taken or
    dropped, the broken one counted."""
    body = mjpeg_stream([bar_frame(t) for t in range(FRAMES)], broken={10})
    server = _Server(body, 1, MJPEG_STREAM_TYPE)
    source = LiveSource("camera", server.url.replace(".mp4", ".mjpg"), reconnect_tries=1,
                        backoff=0.01)  # fmt: skip
    try:
        source.open()
        positions = [bar_position(frame.image) for frame in source]
    finally:
        source.close()
        server.close()
    assert source.stats.decode_errors == 1
    assert source.stats.frames + source.stats.dropped == FRAMES - 1
    assert source.stats.reopened == 0 and server.requests == 2  # the pass, one failed reopen
    assert 2 * 10 not in positions and positions == sorted(positions)
    assert positions[-1] == 2 * (FRAMES - 1)


@pytest.mark.parametrize("scheme", ["http", "rtsp"])
def test_live_source_that_never_answers_fails_naming_it(scheme: str) -> None:
    """A server that accepts the connection and never answers: given up on after the open
    timeout, with the URL in the message."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/never"
    source = LiveSource("never", url, open_timeout=1.0)
    try:
        source.start()
        assert source.poll() is None and not source.ended  # still opening: not waited for
        with pytest.raises(SourceError, match=url):
            source.open()
    finally:
        source.close()
        listener.close()


def test_live_source_with_nothing_behind_it_fails_naming_it() -> None:
    """A port nobody listens on (connection refused): tried until the open timeout, then named."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"rtsp://127.0.0.1:{probe.getsockname()[1]}/nothing"
    source = LiveSource("nothing", url, open_timeout=1.0, backoff=0.1)
    try:
        with pytest.raises(SourceError, match=f"{url}: cannot open the stream"):
            source.open()
    finally:
        source.close()
    assert source.poll() is None and source.ended


needs_rtsp = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))


def shapes_time(image: np.ndarray) -> int:
    """The frame number t (mod 50) of a decoded ``colour_model`` frame, checked against both
    squares' known paths: the red square gives t, the green one must agree."""
    red = np.argwhere((image[..., 2] > 128) & (image[..., 1] < 128))
    green = np.argwhere((image[..., 1] > 128) & (image[..., 2] < 128))
    (y1, x1), (y2, x2) = red.min(axis=0), red.max(axis=0) + 1
    t = round((x1 - red_box(0)[0]) / 2)
    np.testing.assert_allclose((x1, y1, x2, y2), red_box(t), atol=2)
    (gy1, gx1), (gy2, gx2) = green.min(axis=0), green.max(axis=0) + 1
    np.testing.assert_allclose((gx1, gy1, gx2, gy2), green_box(t), atol=2)
    return t


@pytest.fixture(scope="module")
def shapes_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four seconds of the colour model's moving squares (25 fps, 160 x 120)."""
    return write_shapes(tmp_path_factory.mktemp("rtsp") / "shapes.mp4", 100)


@needs_rtsp
def test_rtsp_server_killed_and_restarted_is_reconnected(
    shapes_video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """GStreamer's RTSP server plays the moving squares; after 10 frames it is killed and
    started again on its port. The reader reopens the stream (logged, counted) and frames come
    again from the start of the video; every frame is a whole, known one; nothing is raised."""
    server = RtspServer(shapes_video)
    server.start()
    source = LiveSource("cam", server.url, open_timeout=5, reconnect_tries=20, backoff=0.1,
                        max_backoff=0.4)  # fmt: skip
    times: list[int] = []  # the frame number (mod 50) of each frame taken
    try:
        with caplog.at_level(logging.INFO):
            source.open()
            while len(times) < 10:
                times.append(shapes_time(source.read().image))
            server.kill()
            server.start()
            while not any(b < a for a, b in zip(times, times[1:])) or times[-8] > times[-1]:
                frame = source.read()
                assert frame is not None, "the stream ended instead of coming back"
                times.append(shapes_time(frame.image))
        assert not source.ended
    finally:
        source.close()
        server.close()
    assert source.stats.reconnects >= 1 and source.stats.reopened >= 1
    assert source.stats.decode_errors == 0
    assert f"{server.url}: stream dropped" in caplog.text
    assert f"{server.url}: reopened" in caplog.text
    # in order (newest frames only: gaps allowed) but for one wrap: the restarted server's
    # video from its start, at least 8 frames of it
    wraps = [i for i, (a, b) in enumerate(zip(times, times[1:])) if b < a]
    assert len(wraps) == 1 and wraps[0] >= 9 and len(times) - wraps[0] > 8, times
