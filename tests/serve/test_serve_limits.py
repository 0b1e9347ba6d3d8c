"""Upload decoding: type from the bytes, pixel limit from the header, strict decoding, every
mode to BGR uint8, and the same pixels as ``cv2.imread`` (what ``detector predict`` reads)."""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from serve.runtime.images import BadImage, ImageTooLarge, UnsupportedImage, decode_image

LIMIT = 10_000_000


def pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def colourful(width: int = 48, height: int = 32) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp"])
def test_pixels_equal_opencv(ext):
    data = cv2.imencode(ext, colourful())[1].tobytes()
    ours = decode_image(data, LIMIT)
    theirs = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert ours.dtype == np.uint8 and ours.shape == (32, 48, 3)
    np.testing.assert_array_equal(ours, theirs)


def test_exif_orientation_is_applied_like_opencv():
    image = Image.fromarray(colourful()[..., ::-1])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    data = pil_bytes(image, "JPEG", exif=exif.tobytes(), quality=95)
    ours = decode_image(data, LIMIT)
    theirs = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert ours.shape == theirs.shape == (48, 32, 3)
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 2


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_every_mode_becomes_bgr(mode):
    base = Image.fromarray(colourful()[..., ::-1])
    image = base.convert("L").convert(mode) if mode in ("I;16", "1") else base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode_image(pil_bytes(image, fmt), LIMIT)
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    if mode in ("L", "LA", "I;16", "1"):
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_sixteen_bit_keeps_the_high_byte():
    gray = np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)
    out = decode_image(cv2.imencode(".png", gray)[1].tobytes(), LIMIT)
    np.testing.assert_array_equal(out[..., 0], (gray >> 8).astype(np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))  # fmt: skip


def test_pixel_limit_comes_from_the_header():
    # 12000 x 9000 = 108 M pixels: above our limit, below Pillow's own bomb error
    with pytest.raises(ImageTooLarge, match="12000x9000 = 108000000 pixels.*10000000"):
        decode_image(png_header_only(12000, 9000), LIMIT)
    with pytest.raises(ImageTooLarge, match="limit of 10000000"):  # Pillow's error, reworded
        decode_image(png_header_only(50000, 50000), LIMIT)
    with pytest.raises(ImageTooLarge) as caught:
        decode_image(png_header_only(50000, 50000), LIMIT)
    assert caught.value.status == 413


def test_bad_bytes():
    jpeg = cv2.imencode(".jpg", colourful(256, 256))[1].tobytes()
    png = cv2.imencode(".png", colourful(256, 256))[1].tobytes()
    gif = pil_bytes(Image.fromarray(colourful()), "GIF")
    with pytest.raises(BadImage, match="empty"):
        decode_image(b"", LIMIT)
    with pytest.raises(BadImage, match="truncated"):
        decode_image(jpeg[: len(jpeg) * 2 // 3], LIMIT, name="cut.jpg")
    with pytest.raises(BadImage, match="cut.png"):
        decode_image(png[: len(png) // 2], LIMIT, name="cut.png")
    corrupt = bytearray(png)
    corrupt[len(png) // 2 : len(png) // 2 + 64] = b"\xff" * 64
    with pytest.raises(BadImage):
        decode_image(bytes(corrupt), LIMIT)
    with pytest.raises(UnsupportedImage, match="GIF8") as caught:
        decode_image(gif, LIMIT)
    assert caught.value.status == 415
    with pytest.raises(UnsupportedImage):
        decode_image(b"<svg xmlns='http://www.w3.org/2000/svg'/>", LIMIT)
    assert decode_image(png, LIMIT, name="named.jpg").shape == (256, 256, 3)  # bytes decide


def pillow_decoded(data: bytes) -> np.ndarray:
    """What the strict Pillow path gives: decode, EXIF rotation, RGB -> BGR."""
    from PIL import ImageOps

    return np.ascontiguousarray(
        np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))[..., ::-1]
    )


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
@pytest.mark.parametrize("size", [(480, 640), (31, 47), (1, 1)])
def test_plain_jpegs_decode_to_the_same_pixels_as_pillow(size, subsampling, progressive):
    """Plain colour JPEGs take OpenCV's decoder (the fast path); their pixels must be exactly
    Pillow's, or the server's answers would depend on which decoder read the upload."""
    from serve.runtime.images import plain_jpeg

    picture = cv2.GaussianBlur(colourful(size[1], size[0]), (0, 0), 2)
    data = pil_bytes(Image.fromarray(picture), "JPEG", quality=90, subsampling=subsampling,
                     progressive=progressive)  # fmt: skip
    assert plain_jpeg(Image.open(io.BytesIO(data)), data)
    np.testing.assert_array_equal(decode_image(data, LIMIT), pillow_decoded(data))


def test_which_jpegs_take_the_fast_path():
    """Only a complete colour JPEG without an EXIF rotation; the others go through Pillow,
    which still applies the rotation, decodes CMYK and grey, and refuses a cut-short file."""
    from serve.runtime.images import plain_jpeg

    colour = Image.fromarray(colourful())
    plain = pil_bytes(colour, "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = pil_bytes(colour, "JPEG", exif=exif.tobytes(), quality=95)
    trailing = plain + b"trailing bytes after the end marker"
    cases = {"plain": plain, "rotated": rotated, "grey": pil_bytes(colour.convert("L"), "JPEG"),
             "cmyk": pil_bytes(colour.convert("CMYK"), "JPEG"), "trailing": trailing}  # fmt: skip
    taken = {name: plain_jpeg(Image.open(io.BytesIO(data)), data) for name, data in cases.items()}
    assert taken == {"plain": True, "rotated": False, "grey": False, "cmyk": False,
                     "trailing": False}  # fmt: skip
    assert decode_image(rotated, LIMIT).shape == (48, 32, 3)  # rotated by Pillow
    np.testing.assert_array_equal(decode_image(trailing, LIMIT), decode_image(plain, LIMIT))
    with pytest.raises(BadImage, match="truncated"):
        decode_image(plain[:-300], LIMIT)


@pytest.mark.filterwarnings("ignore:.*(EXIF|Truncated File Read|Tag data).*:UserWarning")
def test_a_damaged_exif_block_is_never_a_server_error():
    """Every byte of a JPEG's EXIF block set to 0x00, 0x7f or 0xff in turn: each upload decodes
    or is an ImageError (a 4xx), never another exception (a 500), whichever decoder it reaches."""
    from serve.runtime.images import ImageError

    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 1, "maker"
    data = pil_bytes(Image.fromarray(colourful()), "JPEG", exif=exif.tobytes())
    start = data.find(b"Exif\x00\x00") + 6
    outcomes = set()
    for position in range(start, start + 60):
        for value in (0x00, 0x7F, 0xFF):
            damaged = bytearray(data)
            damaged[position] = value
            try:
                decode_image(bytes(damaged), LIMIT)
                outcomes.add("decoded")
            except ImageError:
                outcomes.add("refused")
    assert "decoded" in outcomes


@pytest.mark.parametrize(
    ("depth", "colour", "refused"),
    [(16, 6, True), (16, 2, True), (8, 6, False), (16, 0, False), (8, 3, False)],
)
def test_decoded_bytes_are_checked_from_the_header(depth, colour, refused):
    """Within the pixel limit, an image may still decode to more than 4 bytes per allowed
    pixel: 16-bit RGBA (8) and RGB (6) are 413 before decoding; 8-bit RGBA, 16-bit gray and
    palettes pass that check and decode."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from serve_bombs import png

    data = png(1000, 1000, colour, depth)
    if refused:
        with pytest.raises(ImageTooLarge, match="decodes to"):
            decode_image(data, 1_000_000)
    else:
        assert decode_image(data, 1_000_000).shape == (1000, 1000, 3)


def test_16_bit_and_palette_images_decode_to_bgr_with_the_high_byte():
    gray16 = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    out = decode_image(cv2.imencode(".png", gray16)[1].tobytes(), LIMIT)
    np.testing.assert_array_equal(out[..., 0], (gray16 >> 8).astype(np.uint8))
    palette = Image.fromarray(colourful()[..., ::-1]).convert("P")
    out = decode_image(pil_bytes(palette, "PNG"), LIMIT)
    expected = np.asarray(palette.convert("RGB"))[..., ::-1]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("token", ["\u00b2", "\u0663", "9" * 5000, "-1", "1.0"])
def test_class_ids_are_ascii_digits(token):
    """A token that is not a class name nor a short ASCII number is an unknown class (the
    server's 422/400), never an exception int() raises."""
    from serve.runtime.predictor import UnknownClassError, resolve_classes

    with pytest.raises(UnknownClassError):
        resolve_classes([token], ["a", "b"])
    assert resolve_classes(["1,a"], ["a", "b"]) == [0, 1]
