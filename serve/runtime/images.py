"""Uploaded bytes -> a BGR uint8 image, safely: type sniffed, size checked before decoding.

The order matters against hostile uploads:

1. The type comes from the bytes (Pillow identifies the format from the file's signature,
   restricted to :data:`FORMATS`), never from the file name or Content-Type: anything else is
   :class:`UnsupportedImage` (HTTP 415).
2. ``Image.open`` reads only the header, so the declared width x height is checked against
   ``max_pixels`` before a single pixel is decoded: a 50000 x 50000 PNG of a few kilobytes (a
   decompression bomb) is :class:`ImageTooLarge` (413) without allocating its 7.5 GB. So are
   the bytes it decodes to (:func:`decoded_bytes`: width x height x channels x bytes per
   sample, from the header: 16-bit samples count twice, a palette as the RGBA it expands to),
   at most :data:`MAX_BYTES_PER_PIXEL` x ``max_pixels``: a 16-bit RGBA image may have half
   the pixels of an 8-bit RGBA one.
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
applied, as ``cv2.imread`` does, so boxes refer to the image as viewers show it. The conversion
frees each stage as soon as the next exists, so decoding an image of ``P`` pixels peaks at
about ``8 P`` bytes (Pillow's 4-byte pixels of an RGBA conversion plus the 3-byte array it is
copied to; then that array and the BGR result), whatever the mode.
"""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from serve.runtime.errors import ServeError

FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
MAX_BYTES_PER_PIXEL = 4
"""An image may decode to at most this many bytes per allowed pixel (``max_pixels``): 8-bit
RGBA at the full pixel limit, 16-bit RGB or RGBA at a half to two thirds of it."""

# Pillow mode -> (channels, bytes per sample) of the decoded pixels; a palette counts as the
# RGBA it may expand to
_MODE_SIZES = {
    "1": (1, 1), "L": (1, 1), "P": (4, 1), "LA": (2, 1), "La": (2, 1), "PA": (4, 1),
    "I;16": (1, 2), "I;16L": (1, 2), "I;16B": (1, 2), "I;16N": (1, 2), "I": (1, 4),
    "F": (1, 4), "RGB": (3, 1), "YCbCr": (3, 1), "LAB": (3, 1), "HSV": (3, 1),
    "RGBA": (4, 1), "RGBa": (4, 1), "RGBX": (4, 1), "CMYK": (4, 1),
}  # fmt: skip
# PNG colour type -> channels (3: palette, expanded to RGBA)
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}


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
    size = decoded_bytes(image, data)
    if size > MAX_BYTES_PER_PIXEL * max_pixels:
        raise ImageTooLarge(
            f"{name}: {width}x{height} {image.mode} decodes to {size} bytes, more than the limit "
            f"of {MAX_BYTES_PER_PIXEL * max_pixels} bytes ({MAX_BYTES_PER_PIXEL} bytes per pixel "
            f"of the {max_pixels}-pixel limit)"
        )
    if plain_jpeg(image, data):
        decoded = cv2.imdecode(
            np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        )
        if decoded is not None and decoded.shape[:2] == (height, width):
            return decoded
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return to_bgr(image, release=True)
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


def decoded_bytes(image: Image.Image, data: bytes) -> int:
    """The bytes ``image`` (opened, not loaded) decodes to: width x height x channels x bytes
    per sample, from its header; for a PNG from its IHDR chunk (Pillow opens a 16-bit RGB PNG
    as 8-bit ``RGB``, but it still inflates 16-bit rows)."""
    width, height = image.size
    channels, sample = _MODE_SIZES.get(image.mode, (4, 4))
    if image.format == "PNG" and len(data) >= 26 and data[12:16] == b"IHDR":
        depth, colour = data[24], data[25]
        channels = _PNG_CHANNELS.get(colour, channels)
        sample = 2 if depth == 16 and colour != 3 else 1
    return width * height * channels * sample


def to_bgr(image: Image.Image, release: bool = False) -> np.ndarray:
    """Any decoded Pillow image -> ``[H, W, 3]`` BGR uint8. ``release``: close ``image`` (free
    its pixels) as soon as they are copied out, so that at most two stages of the conversion
    are in memory at once."""

    def pixels(source: Image.Image) -> np.ndarray:
        array = np.asarray(source)  # a copy of Pillow's pixels
        if release or source is not image:
            source.close()
        return array

    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16/32-bit grayscale: the high byte
        wide = pixels(image)
        high = wide >> 8
        del wide
        if mode == "I":
            np.clip(high, 0, 255, out=high)
        return cv2.cvtColor(high.astype(np.uint8), cv2.COLOR_GRAY2BGR)
    if mode == "L":
        return cv2.cvtColor(pixels(image), cv2.COLOR_GRAY2BGR)
    if mode != "RGB":  # RGBA, LA, P, PA, CMYK, YCbCr, 1, F
        converted = image.convert("RGB")
        if release:
            image.close()
        return cv2.cvtColor(pixels(converted), cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(pixels(image), cv2.COLOR_RGB2BGR)
