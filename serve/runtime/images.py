"""Uploaded bytes -> a BGR uint8 image, safely: type sniffed, size checked before decoding.

The order matters against hostile uploads:

1. The type comes from the bytes (Pillow identifies the format from the file's signature,
   restricted to :data:`FORMATS`), never from the file name or Content-Type: anything else is
   :class:`UnsupportedImage` (HTTP 415).
2. ``Image.open`` reads only the header, so the declared width x height is checked against
   ``max_pixels`` before a single pixel is decoded: a 50000 x 50000 PNG of a few kilobytes (a
   decompression bomb) is :class:`ImageTooLarge` (413) without allocating its 7.5 GB.
3. Decoding is strict: a truncated or corrupt file is :class:`BadImage` (400), not a half-grey
   picture.

A plain colour JPEG (three components, no EXIF rotation, ending in its end-of-image marker: what
cameras and browsers send) is decoded by OpenCV straight to BGR: the same pixels as Pillow's
decoder and the conversion (both are libjpeg-turbo; tested on baseline and progressive files, every
chroma subsampling), for less CPU in the server (see BENCHMARKS.md, 'Serving throughput against
the raw backend'). Anything else, and any JPEG OpenCV cannot decode, goes through Pillow, which
says what is wrong.

Every mode becomes 3-channel BGR uint8 (what the network takes): grayscale is repeated, alpha is
dropped, palettes are expanded, 16-bit samples keep their high byte. The EXIF orientation is
applied, as ``cv2.imread`` does, so boxes refer to the image as viewers show it.
"""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from serve.runtime.errors import ServeError

FORMATS = ("JPEG", "PNG", "BMP", "WEBP")


class ImageError(ServeError, ValueError):
    """An upload that is not an acceptable image (a :class:`ServeError`: ``status`` is the HTTP
    status to answer)."""

    status = 400
    code = "bad_image"


class BadImage(ImageError):
    """Empty, corrupt or truncated."""


class UnsupportedImage(ImageError):
    """Not one of the accepted formats (judged from the bytes)."""

    status = 415
    code = "unsupported_media_type"


class ImageTooLarge(ImageError):
    """Declares more pixels than allowed."""

    status = 413
    code = "image_too_large"


def decode_image(data: bytes, max_pixels: int, name: str = "image") -> np.ndarray:
    """Decode an uploaded file to ``[H, W, 3]`` BGR uint8.

    Args:
        data: the file's bytes.
        max_pixels: largest ``width * height`` accepted (checked from the header).
        name: how to call the file in error messages.

    Raises:
        BadImage, UnsupportedImage, ImageTooLarge: with a message naming ``name``.
    """
    if not data:
        raise BadImage(f"{name}: the file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own limit, checked in open
        raise ImageTooLarge(
            f"{name}: declares more pixels than the limit of {max_pixels} ({exc})"
        ) from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedImage(
            f"{name}: not a {', '.join(FORMATS)} image (judged from its bytes, "
            f"which start with {data[:8]!r})"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # a recognised but broken header
        raise BadImage(f"{name}: corrupt {image_kind(data)} header ({exc})") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{name}: {width}x{height} = {width * height} pixels is more than the limit of "
            f"{max_pixels} pixels"
        )
    if width < 1 or height < 1:
        raise BadImage(f"{name}: declares an empty {width}x{height} image")
    if plain_jpeg(image, data):
        decoded = cv2.imdecode(
            np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        )
        if decoded is not None and decoded.shape[:2] == (height, width):
            return decoded
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_bgr(image)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{name}: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"{name}: corrupt or truncated {image.format} image ({exc})") from exc


def plain_jpeg(image: Image.Image, data: bytes) -> bool:
    """A colour JPEG (YCbCr) that needs no rotation and ends in its end-of-image marker, so it is
    not cut short (OpenCV would decode a truncated file it does not reject to a grey-filled
    picture; Pillow refuses it)."""
    if image.format != "JPEG" or image.mode != "RGB" or not data.endswith(b"\xff\xd9"):
        return False
    try:
        return image.getexif().get(ExifTags.Base.Orientation, 1) == 1
    except (OSError, SyntaxError, ValueError, EOFError, struct.error):  # a malformed EXIF block:
        return False  # Pillow's path reads what it can, as for any other upload


def image_kind(data: bytes) -> str:
    """A name for what the bytes claim to be, for messages."""
    signatures = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"BM": "BMP", b"RIFF": "WebP"}
    return next((kind for sig, kind in signatures.items() if data.startswith(sig)), "image")


def to_bgr(image: Image.Image) -> np.ndarray:
    """Any decoded Pillow image -> ``[H, W, 3]`` BGR uint8."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: keep the high byte
        array = np.asarray(image).astype(np.int64)
        gray = (array >> 8).clip(0, 255).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if image.mode == "L":
        return cv2.cvtColor(np.asarray(image), cv2.COLOR_GRAY2BGR)
    if image.mode != "RGB":
        image = image.convert("RGB")  # RGBA, LA, P, PA, CMYK, YCbCr, 1, F
    return cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)
