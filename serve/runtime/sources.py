"""Frame sources: image files, folders and globs, video files and live streams, one interface.

A source spec is what a user types; :func:`expand_sources` turns specs into
:class:`SourceSpec` s and :func:`make_source` into a :class:`FrameSource`. ``detector
predict`` and ``detector track`` both read their inputs through here, so "which inputs exist
and how they are read" has one home:

- an image file, a folder or a glob: its images (sorted) as one sequence of frames; each video
  file found in a folder or glob is a source of its own; a file named directly whose suffix is
  neither an image's nor a video's is an image when OpenCV has an image reader for it;
- a video file (``.mp4``, ``.avi``, ...): every frame, in order;
- live: ``rtsp://``, ``rtsps://``, ``rtmp://``, ``http(s)://`` URLs, a camera index (``0``) or a
  V4L2 device (``/dev/video0``), or a GStreamer pipeline (any spec containing ``!``, opened with
  ``cv2.CAP_GSTREAMER``; see *GStreamer pipelines* below);
- a ``.txt`` file: one spec per line (blank lines and ``#`` comments skipped).

Faults. A live source is read by a thread of its own that keeps only the newest frame: a frame
not taken before the next one arrives is dropped (``SourceStats.dropped``), so a slow consumer
sees the present, not a growing backlog. A live source is opened within ``open_timeout``
seconds (tried again with backoff until then, so a camera that is still starting is waited
for) or :meth:`~FrameSource.open` raises :class:`SourceError` naming it. A stream that drops
(server gone, connection closed, no data for ``read_timeout`` s) is reopened with exponential
backoff (``backoff`` s doubling up to ``max_backoff`` s, at most ``reconnect_tries`` tries in a
row, each logged and counted in ``SourceStats.reconnects``), then ends; the other sources are
not affected (each has its own thread). A frame that fails to decode, in a file or a stream, is
skipped, logged and counted (``SourceStats.decode_errors``); a file's frame index keeps
counting over it, so the gap shows where it was. Files are never dropped from: every frame that
decodes is read, in order.

Why OpenCV's FFmpeg backend (``cv2.CAP_FFMPEG``) and not PyAV or GStreamer: it is already
installed, as part of ``opencv-python-headless`` (a base dependency), and
``cv2.getBuildInformation()`` of that wheel reports ``FFMPEG: YES`` (avcodec, avformat,
swscale) and ``GStreamer: NO`` under *Video I/O*: RTSP/RTMP/HTTP and every common file format
decode with no new dependency, where PyAV would be one (a second copy of FFmpeg beside
OpenCV's) and GStreamer a system library that pip cannot install. What it costs, measured with
this wheel (OpenCV 5.1, FFmpeg 63.x libraries): OpenCV reports a packet that FFmpeg cannot
decode (a broken JPEG in an MJPEG file or HTTP stream) as the end of the stream, ``grab()``
returning ``False``, while the next ``grab()`` on the same capture goes on with the next frame;
so a failed grab is retried (at most :data:`BAD_FRAMES_IN_A_ROW` in a row, and never after one
that waited out ``read_timeout``) before the stream is taken as ended, and each failure
followed by a good frame is counted as a skipped frame. A frame that FFmpeg *conceals* (decodes
with errors, e.g. damaged H.264 slices) comes back as an image, and OpenCV gives no way to tell
it from a good one; PyAV would (``frame.is_corrupt``), the one reason to move to it. Nothing here
imports torch.

GStreamer pipelines. On a Jetson, hardware decoding goes through NVIDIA's GStreamer elements, so
a user passes a pipeline that ends in ``appsink``, e.g. for an H.264 RTSP camera::

    rtspsrc location=rtsp://cam/stream latency=200 ! rtph264depay ! h264parse ! nvv4l2decoder
    ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR
    ! appsink drop=true max-buffers=1

``rtspsrc`` (``location``, ``latency``), ``rtph264depay``, ``h264parse``, ``videoconvert`` and
``appsink`` (``drop``, ``max-buffers``: keep only the newest frame) are GStreamer's documented
elements and properties (checked with GStreamer 1.22's element factories); ``nvv4l2decoder``
(H.264/H.265 byte-stream in, NV12 in NVMM memory out) and ``nvvidconv`` (NVMM to system memory,
``BGRx``) are documented in NVIDIA's *Accelerated GStreamer* guide for Jetson Linux. On a PC,
``avdec_h264`` takes the place of ``nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx``. Such a
pipeline needs an OpenCV built with GStreamer (JetPack's is); the opencv-python-headless wheels
are not, so there a pipeline spec is refused with a message saying so. It has not been run on a
Jetson.
"""

from __future__ import annotations

import glob
import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from detector.core.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES

__all__ = [
    "Frame",
    "FrameSource",
    "ImageFilesSource",
    "LiveSource",
    "SourceError",
    "SourceSpec",
    "SourceStats",
    "VideoFileSource",
    "expand_sources",
    "make_source",
]

log = logging.getLogger(__name__)

LIVE_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://")
DEFAULT_FPS = 30.0  # for a source that does not say its frame rate
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0  # FFmpeg's own read timeout on a live stream: a stalled stream has dropped
BAD_FRAMES_IN_A_ROW = 25  # failed grabs in a row skipped as undecodable before the end is taken


class SourceError(Exception):
    """A source cannot be opened or read; the message names it."""


@dataclass(frozen=True)
class Frame:
    """One frame of a source.

    Attributes:
        source: the source's name.
        index: position in the source: the frame number of a video file (skipped frames leave
            gaps), the image's position in a folder, or the count of frames taken from a live
            source.
        timestamp: seconds into a video file, wall-clock seconds since the epoch when a live
            frame arrived, ``None`` for still images.
        image: ``[H, W, 3]`` BGR uint8.
        path: the image file it was read from (image sources only).
    """

    source: str
    index: int
    timestamp: float | None
    image: np.ndarray
    path: Path | None = None


@dataclass
class SourceStats:
    """What happened while reading a source (counts, updated as it goes)."""

    frames: int = 0  # frames handed out
    dropped: int = 0  # live frames replaced by a newer one before they were taken
    decode_errors: int = 0  # frames (or images) that failed to decode, skipped
    reconnects: int = 0  # attempts to reopen a dropped live stream
    reopened: int = 0  # of those, the ones that worked (the stream came back)


@dataclass(frozen=True)
class SourceSpec:
    """A source as resolved from what the user typed.

    Attributes:
        spec: the text as given (a path, URL, glob, camera index or pipeline).
        kind: ``images``, ``video``, ``live`` or ``missing`` (nothing there: opening fails).
        paths: the image files of an ``images`` source, in order.
    """

    spec: str
    kind: str
    paths: tuple[Path, ...] = field(default=())

    @property
    def name(self) -> str:
        """A short file-name-safe name: a file's stem, a folder's name (a glob's folder), a
        URL's host and path, ``camera0`` for camera index 0."""
        text = self.spec.strip()
        if self.kind == "live" and text.isdigit():
            return f"camera{text}"
        if "!" in text:
            return "gstreamer"
        if text.startswith(LIVE_PREFIXES):
            text = text.split("://", 1)[1].split("@")[-1]
        elif glob.has_magic(text):  # the folder the pattern looks in
            parts = Path(text).parts
            text = next((p for p in reversed(parts[:-1]) if not glob.has_magic(p)), "glob")
        else:
            path = Path(text)
            text = path.name if path.is_dir() else path.stem
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
        return name[:80] or "source"


def _read_list(path: Path) -> list[str]:
    """The specs of a ``.txt`` list: one per line, blank lines and ``#`` comments skipped."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _is_live(text: str) -> bool:
    return (
        "!" in text
        or text.startswith(LIVE_PREFIXES)
        or text.isdigit()
        or re.fullmatch(r"/dev/video[0-9]+", text) is not None
    )


def _file_kind(path: Path) -> str:
    """``images`` or ``video`` for a file named directly: by suffix, else an image when
    OpenCV has an image reader for its content."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
        return "images" if suffix in IMAGE_SUFFIXES else "video"
    return "images" if cv2.haveImageReader(str(path)) else "video"


def _from_files(spec: str, files: list[Path]) -> list[SourceSpec]:
    """A folder's or glob's files: its images as one source, each video as its own."""
    images = tuple(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)
    videos = [SourceSpec(str(p), "video") for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    return ([SourceSpec(spec, "images", images)] if images else []) + videos


def expand_sources(specs: Sequence[str]) -> list[SourceSpec]:
    """What the user typed -> the sources it names, in order (``.txt`` lists expanded).

    Never raises for a source that is not there: it comes back as kind ``missing`` (or as an
    empty folder or glob), and fails when opened, so that the other sources still run."""
    found: list[SourceSpec] = []
    for spec in specs:
        text = spec.strip()
        path = Path(text)
        if _is_live(text):
            found.append(SourceSpec(text, "live"))
        elif path.suffix.lower() == ".txt" and path.is_file():
            found += expand_sources(_read_list(path))
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
            found += _from_files(text, files) or [SourceSpec(text, "missing")]
        elif path.is_file():
            kind = _file_kind(path)
            found.append(SourceSpec(text, kind, (path,) if kind == "images" else ()))
        elif glob.has_magic(text):
            files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            found += _from_files(text, files) or [SourceSpec(text, "missing")]
        else:
            found.append(SourceSpec(text, "missing"))
    return found


class FrameSource(ABC):
    """Frames of one source, in order: :meth:`start`, :meth:`open`, then :meth:`read` (or
    iterate) until it returns ``None``; :meth:`close` at the end (also as a context manager).

    Attributes:
        name: the source's name (:attr:`SourceSpec.name`, made unique by the caller).
        spec: what the user typed.
        live: frames may be dropped (only the newest is kept) and timestamps are wall-clock.
        fps: the frame rate the source declares, :data:`DEFAULT_FPS` when it does not.
        stats: counts of frames, drops, decode errors and reconnects.
    """

    live = False

    def __init__(self, name: str, spec: str) -> None:
        self.name = name
        self.spec = spec
        self.fps = DEFAULT_FPS
        self.stats = SourceStats()
        self.started = self.closed = False
        self._exhausted = False  # read() has returned None

    def start(self) -> None:
        """Begin opening without waiting (a live source's thread); files only note it."""
        self.started = True

    @abstractmethod
    def open(self) -> None:
        """Open the source (after :meth:`start`). Raises :class:`SourceError` naming it."""

    @abstractmethod
    def read(self) -> Frame | None:
        """The next frame (a live source's newest, waiting for one), ``None`` at the end."""

    def close(self) -> None:
        """Release what the source holds; safe to call twice."""
        self.closed = True

    def poll(self, timeout: float | None = 0.0) -> Frame | None:
        """The next frame without waiting on a live stream longer than ``timeout`` s: a file's
        next frame (:meth:`read`), a live source's newest if one is there in time. ``None``
        when there is none (yet): :attr:`ended` tells whether more can come, so a loop over
        several sources goes on with the others while one is quiet or reconnecting."""
        frame = self.read()
        self._exhausted = frame is None
        return frame

    @property
    def ended(self) -> bool:
        """No frame will come any more."""
        return self._exhausted

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageFilesSource(FrameSource):
    """Image files read one after the other; an unreadable one is skipped, counted and listed
    in :attr:`skipped`."""

    def __init__(self, name: str, spec: str, paths: Sequence[Path]) -> None:
        super().__init__(name, spec)
        self.paths = list(paths)
        self.skipped: list[Path] = []  # the unreadable images, in order
        self._next = 0

    def open(self) -> None:
        if not self.paths:
            raise SourceError(f"{self.spec}: no images or videos found")

    def read(self) -> Frame | None:
        while self._next < len(self.paths):
            index, path = self._next, self.paths[self._next]
            self._next += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                log.warning("%s: skipped %s (not a readable image)", self.name, path)
                self.stats.decode_errors += 1
                self.skipped.append(path)
                continue
            self.stats.frames += 1
            return Frame(self.name, index, None, image, path)
        return None


def _grab(capture: cv2.VideoCapture, stall: float = float("inf")) -> tuple[bool, int]:
    """Grab the next frame that decodes: (whether there is one, frames skipped before it).

    OpenCV reports a packet FFmpeg cannot decode as the end (``grab()`` is ``False``) while the
    next ``grab()`` goes on after it, so a failed grab is tried again, up to
    :data:`BAD_FRAMES_IN_A_ROW` in a row; a failure that took ``stall`` seconds or more (a read
    timeout) or one too many ends it at once. Failures followed by a good frame were
    undecodable frames; failures at the end are not counted."""
    failed = 0
    while True:
        started = time.monotonic()
        if capture.grab():
            return True, failed
        if failed >= BAD_FRAMES_IN_A_ROW or time.monotonic() - started >= stall:
            return False, 0
        failed += 1


class VideoFileSource(FrameSource):
    """Every frame of a video file, in order, through OpenCV's FFmpeg backend; a frame that
    fails to decode is skipped and counted, its index left out."""

    def __init__(self, name: str, spec: str) -> None:
        super().__init__(name, spec)
        self._capture: cv2.VideoCapture | None = None
        self._position = 0  # index of the next frame in the file
        self.total = 0  # frames the file declares (0: unknown)

    def open(self) -> None:
        capture = cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.spec}: not a readable video")
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if np.isfinite(fps) and fps > 0 else DEFAULT_FPS
        self.total = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
        self._capture = capture

    def _skip(self, count: int) -> None:
        """``count`` frames at the current position failed to decode: log and count them."""
        if count:
            first, last = self._position, self._position + count - 1
            which = f"frame {first}" if count == 1 else f"frames {first}-{last}"
            log.warning("%s: %s failed to decode, skipped", self.spec, which)
            self.stats.decode_errors += count
            self._position += count

    def read(self) -> Frame | None:
        while self._capture is not None:
            grabbed, skipped = _grab(self._capture)
            self._skip(skipped)
            if not grabbed:
                return None
            ok, image = self._capture.retrieve()
            if not ok or image is None:
                self._skip(1)
                continue
            index = self._position
            self._position += 1
            self.stats.frames += 1
            return Frame(self.name, index, index / self.fps, image)
        return None

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
        super().close()


def _api_of(spec: str) -> tuple[str | int, int]:
    """A live spec -> (what ``cv2.VideoCapture`` opens, its backend)."""
    if "!" in spec:
        return spec, cv2.CAP_GSTREAMER
    if spec.isdigit():
        return int(spec), cv2.CAP_ANY
    if spec.startswith("/dev/video"):
        return spec, cv2.CAP_ANY
    return spec, cv2.CAP_FFMPEG


class LiveSource(FrameSource):
    """A live stream read by a thread of its own that keeps only the newest frame.

    Args:
        name: the source's name.
        spec: a URL, camera index, ``/dev/videoN`` or GStreamer pipeline.
        open_timeout: seconds the first open may take (tried again with backoff until then)
            before :meth:`open` fails.
        read_timeout: seconds without data after which a stream has dropped (FFmpeg URLs).
        reconnect_tries: reopen attempts in a row after the stream drops before it ends.
        backoff: seconds before the first reopen attempt; doubled after each failed one.
        max_backoff: the longest wait between attempts.
    """

    live = True

    def __init__(
        self,
        name: str,
        spec: str,
        open_timeout: float = OPEN_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        reconnect_tries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
    ) -> None:
        super().__init__(name, spec)
        self.target, self.api = _api_of(spec)
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.reconnect_tries = reconnect_tries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._failure: str | None = None
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, float] | None = None  # (image, arrival time)
        self._ended = False

    def _capture(self, open_timeout: float) -> cv2.VideoCapture | None:
        """The stream opened (FFmpeg giving up after ``open_timeout`` s), or ``None``."""
        params: list[int] = []
        if self.api == cv2.CAP_FFMPEG:
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, max(int(open_timeout * 1000), 1),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout * 1000),
            ]  # fmt: skip
        capture = cv2.VideoCapture(self.target, self.api, params)
        if not capture.isOpened():
            capture.release()
            return None
        return capture

    def start(self) -> None:
        if self._thread is not None or self._ended:
            return
        has_gstreamer = cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER)
        if self.api == cv2.CAP_GSTREAMER and not has_gstreamer:
            self._failure = (
                f"{self.spec}: this OpenCV is built without GStreamer (opencv-python-headless "
                "wheels are); use an rtsp:// or http(s):// URL (FFmpeg) instead"
            )
            self._ended = True
            self._opened.set()
            return
        self._thread = threading.Thread(target=self._run, name=f"source {self.name}", daemon=True)
        self._thread.start()

    def open(self) -> None:
        self.start()
        if not self._opened.wait(self.open_timeout + 1.0):  # FFmpeg's own timeout comes first
            self._stop.set()
            raise SourceError(f"{self.spec}: did not open within {self.open_timeout:g} s")
        if self._failure is not None:
            raise SourceError(self._failure)

    def _first_open(self) -> cv2.VideoCapture | None:
        """Open the stream, trying again with backoff until ``open_timeout`` has passed."""
        deadline = time.monotonic() + self.open_timeout
        delay = self.backoff
        while not self._stop.is_set():
            capture = self._capture(deadline - time.monotonic())
            if capture is not None or time.monotonic() + delay >= deadline:
                return capture
            log.info("%s: not open yet; trying again in %.1f s", self.spec, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, self.max_backoff)
        return None

    def _reopen(self) -> cv2.VideoCapture | None:
        """Reopen a dropped stream with exponential backoff; ``None`` when every try failed
        (or the source is closing)."""
        delay = self.backoff
        for attempt in range(1, self.reconnect_tries + 1):
            log.warning("%s: stream dropped; reopening in %.1f s (try %d of %d)", self.spec,
                        delay, attempt, self.reconnect_tries)  # fmt: skip
            if self._stop.wait(delay):
                return None
            self.stats.reconnects += 1
            capture = self._capture(self.open_timeout)
            if capture is not None:
                self.stats.reopened += 1
                log.warning("%s: reopened (reconnect %d)", self.spec, self.stats.reconnects)
                return capture
            delay = min(delay * 2, self.max_backoff)
        log.error("%s: gave up after %d reopen tries", self.spec, self.reconnect_tries)
        return None

    def _run(self) -> None:
        capture = self._first_open()
        if capture is not None and self._stop.is_set():  # given up on while it was opening
            capture.release()
            capture = None
        if capture is None:
            self._failure = (
                f"{self.spec}: cannot open the stream (tried for {self.open_timeout:g} s)"
            )
        else:
            fps = capture.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps) if np.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS
        self._opened.set()
        try:
            while capture is not None and not self._stop.is_set():
                grabbed, skipped = _grab(capture, stall=self.read_timeout / 2)
                if skipped:
                    log.warning("%s: %d frame(s) failed to decode, skipped", self.spec, skipped)
                    self.stats.decode_errors += skipped
                if not grabbed:
                    capture.release()
                    capture = self._reopen()
                    continue
                ok, image = capture.retrieve()
                if not ok or image is None:
                    log.warning("%s: a frame failed to decode, skipped", self.spec)
                    self.stats.decode_errors += 1
                    continue
                with self._cond:
                    if self._latest is not None:
                        self.stats.dropped += 1
                    self._latest = (image, time.time())
                    self._cond.notify_all()
        finally:
            if capture is not None:
                capture.release()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def poll(self, timeout: float | None = 0.0) -> Frame | None:
        """The newest frame, waiting at most ``timeout`` s for one (``None``: until there is
        one or the stream has ended); ``None`` when there is none yet, or none any more
        (:attr:`ended` tells which)."""
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None or self._ended, timeout)
            if self._latest is None:
                return None
            (image, arrived), self._latest = self._latest, None
            index = self.stats.frames
            self.stats.frames += 1
        return Frame(self.name, index, arrived, image)

    def read(self) -> Frame | None:
        """The newest frame, waiting for one; ``None`` once the stream has ended for good."""
        return self.poll(timeout=None)

    @property
    def ended(self) -> bool:
        """The stream is over for good (given up on, or closed) and its last frame taken."""
        with self._cond:
            return self._ended and self._latest is None

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the reader thread has ended (the stream is over for good); whether it
        has. The newest frame is still there to :meth:`read`."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self._ended

    def close(self) -> None:
        self._stop.set()
        # a thread still opening is not waited for: it is a daemon, and FFmpeg's own open
        # timeout ends it (it then sees the stop and releases what it opened)
        opened = self._opened.is_set()
        if opened and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.read_timeout + 1)
        super().close()


def make_source(
    spec: SourceSpec, name: str | None = None, open_timeout: float = OPEN_TIMEOUT_S
) -> FrameSource:
    """The :class:`FrameSource` of ``spec`` (not yet opened), called ``name`` (default
    ``spec.name``). A ``missing`` spec gives a source whose :meth:`~FrameSource.open` raises
    :class:`SourceError` naming it."""
    name = name or spec.name
    if spec.kind == "live":
        return LiveSource(name, spec.spec, open_timeout=open_timeout)
    if spec.kind == "video":
        return VideoFileSource(name, spec.spec)
    if spec.kind == "images":
        return ImageFilesSource(name, spec.spec, spec.paths)
    return _MissingSource(name, spec.spec)


class _MissingSource(FrameSource):
    """A spec that names nothing: opening it fails with a message naming it."""

    def open(self) -> None:
        raise SourceError(f"{self.spec}: no such image, video, folder or stream")

    def read(self) -> Frame | None:
        return None
