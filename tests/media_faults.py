"""Broken media for the fault tests: MJPEG videos and camera streams with undecodable frames.

A JPEG frame overwritten with junk of the same length keeps its container readable (the AVI
chunk sizes and index still hold) while FFmpeg cannot decode that one frame: what a damaged
file or a glitching camera gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

JUNK = b"\x55"  # no 0xFF byte: no JPEG marker can appear in it
BOUNDARY = "frame"
MJPEG_STREAM_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
"""The Content-Type of an IP camera's MJPEG stream over HTTP."""


def break_jpegs(path: Path, frames: set[int]) -> Path:
    """Overwrite the JPEG data of ``frames`` (0-based) in MJPEG video ``path`` with junk of the
    same length, so that the container still reads and only those frames cannot decode."""
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\xff\xd8\xff"]
    for k in frames:
        end = data.index(b"\xff\xd9", starts[k]) + 2
        data[starts[k] : end] = JUNK * (end - starts[k])
    path.write_bytes(bytes(data))
    return path


def write_mjpeg(path: Path, images: Sequence[np.ndarray], fps: float, broken: set[int]) -> Path:
    """An MJPEG ``.avi`` of ``images`` (``[H, W, 3]`` BGR each) whose frames ``broken`` are
    junk."""
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for image in images:
        writer.write(image)
    writer.release()
    return break_jpegs(path, broken)


def mjpeg_stream(images: Sequence[np.ndarray], broken: set[int]) -> bytes:
    """The body of an MJPEG-over-HTTP stream (:data:`MJPEG_STREAM_TYPE`) of ``images``, the
    JPEGs of ``broken`` kept to their start marker and junk after it."""
    parts = []
    for t, image in enumerate(images):
        jpeg = cv2.imencode(".jpg", image)[1].tobytes()
        if t in broken:
            jpeg = jpeg[:2] + JUNK * (len(jpeg) - 2)
        head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
        parts.append(head.encode() + jpeg + b"\r\n")
    return b"".join(parts)
