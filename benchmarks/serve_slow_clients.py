"""Latency of a keyed client while slow clients hold connections open.

Starts ``detector serve --model MODEL --api-key KEY`` on 127.0.0.1, then measures a keyed
client's ``POST /v1/detect`` latency (one request at a time, a 64x64 PNG) twice: idle, and while
``--slow`` connections have sent their headers and the first bytes of a multipart body and then
nothing (half with the key, half without). Prints the p50 / p99 of both and how the slow
connections ended.

    .venv/bin/python benchmarks/serve_slow_clients.py --model runs/export/nano.onnx
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

from serve.launch import ServerProcess

KEY = "bench-key"
BOUNDARY = "slowboundary"


def png() -> bytes:
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


def latencies(http: httpx.Client, data: bytes, count: int) -> list[float]:
    """Seconds of ``count`` requests in a row (each must answer 200)."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        response = http.post("/v1/detect", files={"image": ("a.png", data)})
        times.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise SystemExit(f"a keyed request got {response.status_code}: {response.text}")
    return times


def open_slow(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send headers and the start of a body, then nothing."""
    socks = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = f"Authorization: Bearer {KEY}\r\n" if i % 2 == 0 else ""
        sock.sendall(
            (f"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\n{key}Content-Length: 100000\r\n"
             f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n--{BOUNDARY}\r\n"
             'Content-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n').encode()
        )  # fmt: skip
        socks.append(sock)
    return socks


def summary(name: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    return f"{name:<28} n={len(ms):4d}  p50 {statistics.median(ms):7.2f} ms  p99 {p99:7.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an .onnx model")
    parser.add_argument("--requests", type=int, default=300, help="keyed requests per phase")
    parser.add_argument("--slow", type=int, default=200, help="slow connections")
    parser.add_argument("--body-timeout-s", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    data = png()
    with tempfile.TemporaryDirectory() as folder:
        flags = ["--api-key", KEY, "--threads", str(args.threads),
                 "--body-timeout-s", str(args.body_timeout_s)]  # fmt: skip
        with ServerProcess(args.model, Path(folder) / "serve.log", flags,
                           access_log=Path(folder) / "access.log") as server:  # fmt: skip
            assert server.port is not None
            with httpx.Client(base_url=server.url, timeout=60, trust_env=False,
                              headers={"X-API-Key": KEY}) as http:  # fmt: skip
                latencies(http, data, 20)  # warm
                idle = latencies(http, data, args.requests)
                socks = open_slow(server.port, args.slow)
                try:
                    held = latencies(http, data, args.requests)
                    still_open = sum(1 for s in socks if _open(s))
                finally:
                    for sock in socks:
                        sock.close()
    print(summary("idle", idle))
    print(summary(f"with {args.slow} slow connections", held))
    print(f"slow connections still held open by their clients after the run: {still_open}")


def _open(sock: socket.socket) -> bool:
    """The server has not closed the connection (an early 401 answer may be waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
