"""The live view of ``detector track`` in a browser, and its metrics: a small HTTP server.

Routes (``NAME`` is a source's name, URL-quoted):

- ``/``: a page listing the sources, each as an ``<img>`` of its stream;
- ``/stream/NAME``: the source's annotated frames as MJPEG (``multipart/x-mixed-replace``), what
  a browser shows in an ``<img>`` and what FFmpeg, VLC and OpenCV read as a stream;
- ``/snapshot/NAME``: the newest annotated frame as one JPEG;
- ``/metrics``: the run's Prometheus metrics (:class:`~serve.runtime.track_metrics.TrackMetrics`);
- ``/healthz``: ``ok`` while the process runs.

With ``streams=False`` only ``/metrics`` and ``/healthz`` are served (``--metrics-port``).

Only the newest frame of each source is kept. The tracking loop hands a frame over with
:meth:`PreviewServer.publish`, which stores a reference and returns at once: no encoding, no
waiting for a viewer. Each viewer's thread waits for a frame newer than the one it sent last,
so a slow viewer skips the frames it had no time for instead of slowing the tracking; a frame is
JPEG-encoded once, by the first viewer that needs it, and only when someone is watching.

The standard library's ``ThreadingHTTPServer`` (a thread per connection) is enough for a few
viewers and a Prometheus scraper; no web framework is needed here, and none may be imported by
the serving runtime. There is no authentication: the default address is loopback.
"""

from __future__ import annotations

import html
import http.server
import logging
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from serve.runtime.track_metrics import TrackMetrics

__all__ = ["BOUNDARY", "PreviewServer"]

log = logging.getLogger(__name__)

BOUNDARY = "frame"  # the multipart boundary between the JPEGs of a stream
JPEG_QUALITY = 80
# full-resolution colour (4:4:4): the usual 4:2:0 halves the colour resolution, which smears the
# one-pixel boxes, trails and labels of the annotation into their background
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
               cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]  # fmt: skip
MAX_VIEWERS = 32  # streams open at once; more are answered 503
WRITE_TIMEOUT_S = 30.0  # a viewer that takes no data for this long is disconnected
POLL_S = 1.0  # how often a waiting viewer checks that the server is still up
# the page loads its streams from this server and nothing else, and runs no script
PAGE_POLICY = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"


class _Slot:
    """The newest frame of one source, and its JPEG once a viewer asked for it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._encode = threading.Lock()
        self._seq = 0  # frames published so far
        self._image: np.ndarray | None = None
        self._jpeg: tuple[int, bytes] | None = None  # (seq, bytes) of the last one encoded
        self.ended = False  # the source has no more frames
        self.closed = False  # the server is stopping

    def publish(self, image: np.ndarray) -> None:
        with self._cond:
            self._seq += 1
            self._image = image
            self._cond.notify_all()

    def finish(self, closed: bool = False) -> None:
        with self._cond:
            self.ended = True
            self.closed = self.closed or closed
            self._cond.notify_all()

    def newer(self, seen: int) -> tuple[int, bytes] | None:
        """The JPEG of the newest frame after frame ``seen`` (waiting up to :data:`POLL_S`
        for one), as ``(seq, jpeg)``; ``(seen, b"")`` when none came; ``None`` when no frame
        newer than ``seen`` will ever come."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > seen or self.ended, POLL_S)
            if self.closed or self._seq <= seen:
                return None if self.ended else (seen, b"")
            seq, image = self._seq, self._image
        return self._jpeg_of(seq, image)

    def _jpeg_of(self, seq: int, image: Any) -> tuple[int, bytes]:
        """``(seq, jpeg)`` of frame ``seq`` (or of a newer one another viewer encoded)."""
        with self._encode:  # one encoding per frame, whoever asks first
            if self._jpeg is None or self._jpeg[0] < seq:
                ok, data = cv2.imencode(".jpg", image, JPEG_PARAMS)
                if not ok:
                    raise RuntimeError("OpenCV could not encode a preview frame as JPEG")
                self._jpeg = (seq, data.tobytes())
            return self._jpeg


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a viewer's connection never holds the process open
    preview: PreviewServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = WRITE_TIMEOUT_S  # the socket's timeout: a stalled viewer is let go
    protocol_version = "HTTP/1.0"  # one request per connection; a stream ends by closing

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        preview = self.server.preview
        path = urllib.parse.urlsplit(self.path).path
        route, _, name = path.lstrip("/").partition("/")
        name = urllib.parse.unquote(name)
        if path == "/healthz":
            self._send(200, "text/plain; charset=utf-8", b"ok\n")
        elif path == "/metrics" and preview.metrics is not None:
            self._send(200, preview.metrics.content_type, preview.metrics.exposition())
        elif not preview.streams:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")
        elif path == "/":
            self._send(200, "text/html; charset=utf-8", preview.index_html().encode())
        elif route == "stream" and name in preview.slots:
            self._stream(preview, name)
        elif route == "snapshot" and name in preview.slots:
            got = preview.slots[name].newer(0)
            if got is None or not got[1]:
                self._send(503, "text/plain; charset=utf-8", b"no frame yet\n")
            else:
                self._send(200, "image/jpeg", got[1])
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", PAGE_POLICY)
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, preview: PreviewServer, name: str) -> None:
        if not preview.viewers.acquire(blocking=False):
            self._send(503, "text/plain; charset=utf-8", b"too many viewers\n")
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            slot, seen = preview.slots[name], 0
            while (got := slot.newer(seen)) is not None:
                seen, jpeg = got
                if jpeg:
                    head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                            f"Content-Length: {len(jpeg)}\r\n\r\n")  # fmt: skip
                    self.wfile.write(head.encode() + jpeg + b"\r\n")
                    self.wfile.flush()
        except OSError:  # the viewer left (or stalled past WRITE_TIMEOUT_S)
            pass
        finally:
            preview.viewers.release()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("%s %s", self.address_string(), format % args)


class PreviewServer:
    """The preview and metrics server of one ``detector track`` run, on its own thread.

    Args:
        host: the address to listen on (``127.0.0.1``: this machine only; ``0.0.0.0``: every
            network; there is no authentication).
        port: the TCP port; 0 picks a free one (see :attr:`port`).
        sources: the sources' names, in the order the page lists them.
        metrics: the run's metrics, served at ``/metrics`` (none: 404).
        streams: serve the page, the streams and the snapshots (False: only ``/metrics`` and
            ``/healthz``).

    Raises:
        OSError: the address cannot be listened on (in use, not this machine's); the message
            names it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        sources: Sequence[str] = (),
        metrics: TrackMetrics | None = None,
        streams: bool = True,
    ) -> None:
        self.metrics = metrics
        self.streams = streams
        self.slots = {name: _Slot() for name in sources} if streams else {}
        self.viewers = threading.BoundedSemaphore(MAX_VIEWERS)
        server_class = _Server6 if ":" in host else _Server
        try:
            self._httpd = server_class((host, port), _Handler)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port} ({exc.strerror})") from exc
        self._httpd.preview = self
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"preview {host}:{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """The server's base URL, ending in ``/``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def publish(self, name: str, image: np.ndarray) -> None:
        """Make ``image`` (``[H, W, 3]`` BGR uint8, not changed afterwards) the newest frame
        of source ``name``; returns at once."""
        slot = self.slots.get(name)
        if slot is not None:
            slot.publish(image)

    def end(self, name: str) -> None:
        """Source ``name`` has no more frames: its viewers get the last one and the stream
        closes."""
        slot = self.slots.get(name)
        if slot is not None:
            slot.finish()

    def index_html(self) -> str:
        """The page listing every source's stream."""
        metrics = '<p><a href="metrics">metrics</a></p>\n' if self.metrics is not None else ""
        items = "\n".join(
            f'<figure><img src="stream/{urllib.parse.quote(name, safe="")}" '
            f'alt="{html.escape(name)}"><figcaption>{html.escape(name)} &middot; '
            f'<a href="snapshot/{urllib.parse.quote(name, safe="")}">snapshot</a></figcaption>'
            "</figure>"
            for name in self.slots
        )
        return (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<title>detector track</title><link rel="icon" href="data:,"><style>'
            "body{font-family:sans-serif;margin:1em;background:#111;color:#eee}"
            "figure{display:inline-block;margin:0 1em 1em 0}"
            "img{max-width:100%;image-rendering:pixelated;background:#000}a{color:#9cf}"
            "</style></head><body>\n<h1>detector track</h1>\n"
            f"{items}\n{metrics}</body></html>\n"
        )

    def close(self) -> None:
        """Stop serving: open streams end, the port is released."""
        for slot in self.slots.values():
            slot.finish(closed=True)
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
