"""A real RTSP server on 127.0.0.1 for the stream tests: GStreamer's ``gst-rtsp-server``.

:class:`RtspServer` runs this file as a subprocess under Debian's own Python
(:data:`SERVER_PYTHON`, which has PyGObject; the project's environment does not), serving one
video file at ``rtsp://127.0.0.1:PORT/PATH``. Each client that connects gets the file from its
first frame, paced in real time by the server's clock (``filesrc ! qtdemux ! rtpmp4vpay``: the
MPEG-4 Part 2 video that OpenCV writes, sent as RTP without re-encoding; ``max-ptime=1`` makes
the payloader send each frame in packets of its own, as a camera does, where by default it packs
the small frames of these videos into one packet up to the MTU and they arrive in bursts).
:meth:`RtspServer.kill` ends the server with SIGKILL (a camera that loses power) and
:meth:`RtspServer.start` brings it back on the same port.

Debian packages: ``gir1.2-gst-rtsp-server-1.0``, ``gstreamer1.0-plugins-base`` and
``gstreamer1.0-plugins-good`` (and ``python3-gi``); :func:`missing_reason` says which part is
absent, for a skip. ``.ci/run`` installs them.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SERVER_PYTHON = "/usr/bin/python3"
PACKAGES = (
    "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good python3-gi"
)
ELEMENTS = ("filesrc", "qtdemux", "rtpmp4vpay")
READY = "ready"  # the server's first line on stdout: "ready PORT"


@functools.cache
def missing_reason() -> str | None:
    """Why the server cannot run here (naming the Debian packages to install), or ``None``."""
    if not Path(SERVER_PYTHON).is_file():
        return f"{SERVER_PYTHON} (Debian's Python, for PyGObject) is not installed"
    check = subprocess.run(
        [SERVER_PYTHON, __file__, "--check"], capture_output=True, text=True, timeout=60
    )
    if check.returncode != 0:
        detail = (check.stderr.strip().splitlines() or ["no output"])[-1]
        return f"GStreamer's RTSP server is not usable ({detail}); apt-get install {PACKAGES}"
    return None


class RtspServer:
    """GStreamer's RTSP server serving ``video`` at ``rtsp://127.0.0.1:PORT/mount``.

    Args:
        video: an MPEG-4 Part 2 ``.mp4`` (what ``cv2.VideoWriter`` writes with ``mp4v``).
        mount: the URL's path.
    """

    def __init__(self, video: Path, mount: str = "shapes") -> None:
        self.video = video
        self.mount = mount
        self.port = 0  # chosen by the first start, kept by later ones
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{self.mount}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (on the port of the previous start, if any) and wait until it
        listens."""
        deadline = time.monotonic() + timeout
        while True:
            self.process = subprocess.Popen(
                [SERVER_PYTHON, __file__, str(self.video), str(self.port), self.mount],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            line = self.process.stdout.readline().split()
            if line[:1] == [READY]:
                self.port = int(line[1])
                self.starts += 1
                return
            error = self.process.stderr.read()
            self.process.wait()
            # the port of a killed server can take a moment to be free again
            if time.monotonic() > deadline:
                raise RuntimeError(f"the RTSP server did not start: {error.strip()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """End the server at once (SIGKILL): its clients' connections drop."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def close(self) -> None:
        self.kill()

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(video: str, port: int, mount: str) -> None:
    """Run the server until killed (Debian's Python with PyGObject)."""
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer.new()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory.new()
    # one pipeline per client (not shared): each gets the file from its first frame
    factory.set_launch(
        f'( filesrc location="{video}" ! qtdemux ! rtpmp4vpay name=pay0 pt=96 max-ptime=1 )'
    )
    server.get_mount_points().add_factory(f"/{mount}", factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    print(READY, server.get_bound_port(), flush=True)
    GLib.MainLoop().run()


def _check() -> None:
    """Exit 0 when PyGObject, gst-rtsp-server and the pipeline's elements are all there."""
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import Gst, GstRtspServer  # noqa: F401 - importable is the check

    Gst.init(None)
    missing = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        raise SystemExit(f"GStreamer elements missing: {', '.join(missing)}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        _check()
    else:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        _serve(sys.argv[1], int(sys.argv[2]), sys.argv[3])
