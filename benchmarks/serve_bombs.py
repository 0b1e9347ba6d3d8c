"""Decompression and parser bombs against a real ``detector serve``: each kind is refused (4xx),
and the server's peak memory stays bounded while 16 of them arrive at once.

Kinds (each small on the wire, huge once expanded):

- ``gzip_zeros``: a gzip /v2 body that inflates past the body limit;
- ``gzip_json_strings``: a gzip /v2 JSON body of millions of two-letter strings, just under the
  body limit once inflated (parsed naively, one Python object each);
- ``json_nesting``: a /v2 JSON body nested 100 000 deep;
- ``png16_rgba``: a 16-bit RGBA PNG of ``max_pixels`` pixels (8 bytes per pixel decoded);
- ``png16_rgb``: a 16-bit RGB PNG of 90 % of ``max_pixels`` (6 bytes per pixel);
- ``palette_png``: a palette PNG of twice ``max_pixels``;

and, for comparison, the largest images the server *accepts* (200): ``accepted_png16_gray``
and ``accepted_palette`` at ``max_pixels`` (decoded through the 16-bit and palette paths).

The peak is the server process's ``VmHWM`` (``/proc/PID/status``), reset before each kind by
writing ``5`` to ``/proc/PID/clear_refs``, so each row is the peak during that kind alone; idle
is the resident memory before it.

    python benchmarks/serve_bombs.py [--model M.onnx] [--concurrency 16] [--max-pixels N]

Without ``--model`` a randomly initialised yolox_nano is exported at 128 px.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import struct
import sys
import tempfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from machine_info import cpu_name  # beside this script (benchmarks/ is on sys.path)

from serve.launch import ServerProcess
from serve.settings import ServeSettings

INFER = "/v2/models/detector/infer"
V1 = "/v1/detect"
MiB = 1024 * 1024


# ---------------------------------------------------------------------------- bomb makers


def png(width: int, height: int, colour: int, depth: int, palette: bool = False) -> bytes:
    """A PNG of zero pixels of ``width`` x ``height``, colour type ``colour`` (0 gray, 2 RGB,
    3 palette, 6 RGBA) at ``depth`` bits per sample, compressed row by row (never held whole:
    a 40 MP image costs a few hundred kilobytes to make)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    row = b"\0" * (1 + (width * channels * depth + 7) // 8)  # filter byte + samples

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    parts = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", header)]
    if palette or colour == 3:
        parts.append(chunk(b"PLTE", bytes(range(3)) * 2))
        parts.append(chunk(b"tRNS", b"\x80"))
    parts += [chunk(b"IDAT", idat), chunk(b"IEND", b"")]
    return b"".join(parts)


def side(pixels: int) -> int:
    """The side of a square image of about ``pixels`` pixels."""
    return max(int(pixels**0.5), 1)


def v2_json(elements: str) -> bytes:
    """A /v2 JSON request whose ``IMAGE`` data is the JSON text ``elements``."""
    head = '{"inputs":[{"name":"IMAGE","shape":[1,1],"datatype":"BYTES","data":'
    return (head + elements + "}]}").encode()


Request = tuple[str, bytes, dict[str, str], str]  # path, body, headers, multipart field ("": raw)


def bombs(max_pixels: int, max_body_bytes: int) -> dict[str, Request]:
    """Every bomb kind -> its request, for a server with these limits."""
    gzip_headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    strings = (max_body_bytes - 200) // 5  # '"ab",' each
    s = side(max_pixels)
    return {
        "gzip_zeros": (INFER, gzip.compress(b"\0" * (max_body_bytes + MiB), 9), gzip_headers, ""),
        "gzip_json_strings": (
            INFER,
            gzip.compress(v2_json("[" + '"ab",' * strings + '"ab"]'), 9),
            gzip_headers,
            "",
        ),
        "json_nesting": (INFER, v2_json("[" * 100_000), {"Content-Type": "application/json"}, ""),
        "png16_rgba": (V1, png(s, s, 6, 16), {}, "image"),
        "png16_rgb": (
            V1,
            png(side(max_pixels * 9 // 10), side(max_pixels * 9 // 10), 2, 16),
            {},
            "image",
        ),  # fmt: skip
        "palette_png": (V1, png(2 * s, s, 3, 8), {}, "image"),
    }


def accepted(max_pixels: int) -> dict[str, Request]:
    """The largest images of the 16-bit and palette paths the server decodes (200)."""
    s = side(max_pixels)
    return {
        "accepted_png16_gray": (V1, png(s, s, 0, 16), {}, "image"),
        "accepted_palette": (V1, png(s, s, 3, 8), {}, "image"),
    }


def send(client: httpx.Client, request: Request) -> int:
    """One request -> its status."""
    path, body, headers, field = request
    if field:
        return client.post(path, files={field: ("bomb.png", body, "image/png")}).status_code
    return client.post(path, content=body, headers=headers).status_code


# ---------------------------------------------------------------------------- measuring


def memory_mib(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` (peak) of a process, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]
            for key in ("VmRSS", "VmHWM")}  # fmt: skip


def reset_peak(pid: int) -> bool:
    """Reset a process's ``VmHWM`` to its current RSS (``clear_refs`` 5); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def barrage(
    server: ServerProcess, request: Request, concurrency: int
) -> tuple[list[int], dict[str, float], dict[str, float]]:
    """``concurrency`` copies of ``request`` at once -> their statuses, memory before, memory
    after (peak during)."""
    reset_peak(server.pid)
    before = memory_mib(server.pid)
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as client:
        with ThreadPoolExecutor(concurrency) as pool:
            statuses = list(pool.map(lambda _: send(client, request), range(concurrency)))
        assert client.get("/readyz").status_code == 200, "the server stopped answering"
    return statuses, before, memory_mib(server.pid)


def measure(
    server: ServerProcess, requests: dict[str, Request], concurrency: int,
    report: Callable[[dict], None] = lambda row: None,
) -> list[dict]:  # fmt: skip
    """One row per kind: statuses, idle RSS and peak RSS (MiB) while ``concurrency`` arrive."""
    rows = []
    for kind, request in requests.items():
        statuses, before, after = barrage(server, request, concurrency)
        row = {"kind": kind, "wire_kib": round(len(request[1]) / 1024, 1),
               "statuses": sorted(set(statuses)), "idle_mib": round(before["VmRSS"], 1),
               "peak_mib": round(after["VmHWM"], 1)}  # fmt: skip
        report(row)
        rows.append(row)
    return rows


def export_model(folder: Path) -> Path:
    """A randomly initialised yolox_nano at 128 px (3 classes), as ONNX."""
    import torch

    from detector.models import build_model
    from detector.training.checkpoint import save_atomic
    from export.onnx import export_onnx

    torch.manual_seed(0)
    model = build_model("yolox_nano", num_classes=3)
    meta = {"model_name": "yolox_nano", "num_classes": 3, "class_names": ["a", "b", "c"],
            "input_size": [128, 128]}  # fmt: skip
    weights = save_atomic({"model": model.state_dict(), "meta": meta}, folder / "nano.pt")
    return export_onnx(weights, folder / "nano.onnx", dynamic=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="ONNX model (default: nano exported here)")
    parser.add_argument("--concurrency", type=int, default=16)
    defaults = ServeSettings.model_fields
    parser.add_argument("--max-pixels", type=int, default=defaults["max_pixels"].default)
    parser.add_argument("--max-body-bytes", type=int, default=defaults["max_body_bytes"].default)
    parser.add_argument("--flags", default="", help="more detector serve flags")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = args.model or export_model(folder)
        flags = ["--threads", "1", "--max-pixels", str(args.max_pixels), "--max-body-bytes",
                 str(args.max_body_bytes), *args.flags.split()]  # fmt: skip
        with ServerProcess(model, folder / "serve.log", flags, access_log=folder / "a.log") as srv:
            if not reset_peak(srv.pid):
                print("note: /proc/PID/clear_refs refused; peaks are since start", file=sys.stderr)
            print(json.dumps({"cpu": cpu_name(), "concurrency": args.concurrency,
                              "max_pixels": args.max_pixels,
                              "max_body_bytes": args.max_body_bytes}))  # fmt: skip
            requests = {**bombs(args.max_pixels, args.max_body_bytes), **accepted(args.max_pixels)}
            rows = measure(srv, requests, args.concurrency, lambda row: print(json.dumps(row)))
        refused = all(
            s // 100 == 4
            for row in rows
            if not row["kind"].startswith("accepted")
            for s in row["statuses"]
        )
    print(json.dumps({"bombs_all_4xx": refused, "peak_mib": max(r["peak_mib"] for r in rows)}))
    return 0 if refused else 1


if __name__ == "__main__":
    sys.exit(main())
