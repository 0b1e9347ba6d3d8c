"""Frame sources (``serve.runtime.sources``): what each spec means, files read whole and in
order, and live streams over real HTTP (a local server FFmpeg reads from): newest frame only,
a stream that drops reopened and counted, a stream that never answers failing with its URL."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from serve.runtime.sources import (
    ImageFilesSource,
    LiveSource,
    SourceError,
    VideoFileSource,
    expand_sources,
    make_source,
)

FRAMES = 30


def write_video(path: Path, frames: int = FRAMES) -> Path:
    """An mp4v video whose frame t is a white bar at x = 4 t on black (64 x 48, 10 fps)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for t in range(frames):
        image = np.zeros((48, 64, 3), np.uint8)
        image[:, 2 * t : 2 * t + 4] = 255
        writer.write(image)
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
    specs = expand_sources([
        str(folder), str(listing), "0", "/dev/video2", "rtmp://host/live/key",
        "https://host/feed.mjpg", "videotestsrc ! videoconvert ! appsink", str(tmp_path / "no.mp4"),
        str(tmp_path / "*.nothing"),
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
    ]
    assert [p.name for p in specs[0].paths] == ["a.png", "b.jpg"]
    with pytest.raises(SourceError, match="no.mp4"):
        make_source(specs[-2]).open()


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
    assert source.fps == 10.0
    assert [f.index for f in frames] == list(range(FRAMES))
    assert [f.timestamp for f in frames[:3]] == [0.0, 0.1, 0.2]
    assert [bar_position(f.image) for f in frames] == [2 * t for t in range(FRAMES)]


def test_unreadable_video_is_named(tmp_path: Path) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(SourceError, match="fake.mp4: not a readable video"):
        VideoFileSource("fake", str(fake)).open()


class _Server:
    """A local HTTP server that serves ``data`` to the first ``passes`` requests, then 404:
    a live stream that plays ``passes`` times, dropping at the end of each."""

    def __init__(self, data: bytes, passes: int) -> None:
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
                self.send_header("Content-Type", "video/mp4")
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


def test_live_source_that_never_answers_fails_naming_it() -> None:
    """A server that accepts the connection and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/never"
    source = LiveSource("never", url, open_timeout=1.0)
    try:
        with pytest.raises(SourceError, match=url):
            source.open()
    finally:
        source.close()
        listener.close()


def test_gstreamer_pipeline_without_gstreamer_is_explained() -> None:
    if cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        pytest.skip("this OpenCV has GStreamer")
    source = make_source(expand_sources(["videotestsrc num-buffers=5 ! videoconvert ! appsink"])[0])
    with pytest.raises(SourceError, match="built without GStreamer"):
        source.open()
