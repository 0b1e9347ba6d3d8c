"""Overload: how fast ``detector serve`` refuses work it has no room for, and that it recovers.

A server with a small queue (``--queue-size 4``) gets ``--clients`` (64) concurrent keep-alive
connections, each sending ``--rounds`` ``POST /v1/detect`` requests back to back (a 640x480
JPEG). Every answer must be 200 or 503 with ``Retry-After`` and a JSON body. Reported:

- client side: the latency of the 503s and of the 200s (median, p99), measured by a minimal
  asyncio HTTP/1.1 client (one pre-built request per send, no HTTP library in the way), and of
  a ``GET /healthz`` probe every 50 ms meanwhile (the floor the machine puts under any answer);
- server side: the same from the server's JSON access log (``duration_ms``, from the first
  byte of the request to the last byte of the answer inside the app);
- the server's ``/metrics`` counts by status, and a recovery check afterwards: ``--queue-size``
  requests at once, all 200.

Usage::

    python benchmarks/serve_throughput_overload.py [--model M.onnx] [--imgsz 416]
        [--clients 64] [--rounds 10] [--queue-size 4] [--json OUT]

Without ``--model`` a randomly initialised yolox_nano is exported at ``--imgsz``. Traffic goes
to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import BOUNDARY, Server, export_model, multipart  # noqa: E402


def request_bytes(host: str, port: int, body: bytes) -> bytes:
    head = (
        f"POST /v1/detect HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body: (status, headers, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def client(url: str, request: bytes, rounds: int) -> list[dict]:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    answers = []
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status, headers, body = await read_response(reader)
            seconds = time.perf_counter() - start
            error = None
            if status != 200:
                error = json.loads(body).get("error")
            answers.append({"status": status, "seconds": seconds,
                            "retry_after": headers.get("retry-after"), "error": error})  # fmt: skip
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    finally:
        writer.close()
    return answers


async def probe(url: str, stop: asyncio.Event, every_s: float = 0.05) -> list[float]:
    """``GET /healthz`` latencies (s) every ``every_s`` until ``stop``: the floor that the
    machine and the server's event loop put under any answer during the burst."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    request = f"GET /healthz HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n\r\n".encode()
    seconds = []
    try:
        while not stop.is_set():
            start = time.perf_counter()
            writer.write(request)
            await writer.drain()
            await read_response(reader)
            seconds.append(time.perf_counter() - start)
            await asyncio.sleep(every_s)
    finally:
        writer.close()
    return seconds


async def burst(
    url: str, request: bytes, clients: int, rounds: int
) -> tuple[list[dict], list[float]]:
    """All clients' answers, and the health probe's latencies meanwhile."""
    stop = asyncio.Event()
    prober = asyncio.create_task(probe(url, stop))
    results = await asyncio.gather(*(client(url, request, rounds) for _ in range(clients)))
    stop.set()
    return [answer for answers in results for answer in answers], await prober


def summary(milliseconds: list[float]) -> dict:
    if not milliseconds:
        return {"count": 0}
    values = np.asarray(milliseconds)
    return {"count": len(values), "p50_ms": round(float(np.median(values)), 2),
            "p99_ms": round(float(np.percentile(values, 99)), 2),
            "max_ms": round(float(values.max()), 2)}  # fmt: skip


def server_side(access_log: Path, since_line: int) -> dict:
    """Durations of the /v1/detect answers in the access log (lines after ``since_line``), by
    status."""
    by_status: dict[int, list[float]] = {}
    for line in access_log.read_text().splitlines()[since_line:]:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("path") == "/v1/detect":
            by_status.setdefault(entry["status"], []).append(entry["duration_ms"])
    return {str(status): summary(values) for status, values in sorted(by_status.items())}


def metrics_counts(url: str) -> dict[str, float]:
    import httpx

    text = httpx.get(f"{url}/metrics", trust_env=False, timeout=30).text
    counts = {}
    for line in text.splitlines():
        if line.startswith("detector_http_requests_total{") and 'route="/v1/detect"' in line:
            status = line.split('status="')[1].split('"')[0]
            counts[status] = counts.get(status, 0) + float(line.split()[-1])
        if line.startswith("detector_rejected_total{"):  # labels: model, reason, version
            reason = line.split('reason="')[1].split('"')[0]
            key = f'rejected "{reason}"'
            counts[key] = counts.get(key, 0) + float(line.split()[-1])
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="ONNX model (default: export nano)")
    parser.add_argument("--imgsz", type=int, default=416)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10, help="requests per client")
    parser.add_argument("--queue-size", type=int, default=4)
    parser.add_argument("--flags", default="", help="more `detector serve` flags, one string")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve_overload_"))
    model = args.model or export_model(work, args.imgsz)
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), np.uint8), (0, 0), 3)
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    body = multipart(jpeg)

    server = Server(model, work, "--queue-size", str(args.queue_size), *args.flags.split())
    try:
        parts = urlsplit(server.url)
        request = request_bytes(parts.hostname, parts.port, body)
        asyncio.run(burst(server.url, request, 2, 3))  # warm: connections, first runs
        time.sleep(0.5)
        log_lines = len(server.access_log.read_text().splitlines())
        rss_before = server.rss_mb()
        started = time.perf_counter()
        answers, health = asyncio.run(burst(server.url, request, args.clients, args.rounds))
        wall = time.perf_counter() - started
        time.sleep(0.5)  # the access log lines of the last answers
        statuses = sorted({a["status"] for a in answers})
        refused = [a for a in answers if a["status"] == 503]
        proper = all(a["retry_after"] and a["error"] == "overloaded" for a in refused)
        recovery, _ = asyncio.run(burst(server.url, request, args.queue_size, 1))
        report = {
            "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
            "model": str(model), "image": "640x480 JPEG", "clients": args.clients,
            "rounds": args.rounds, "queue_size": args.queue_size, "flags": args.flags,
            "answers": len(answers), "statuses": statuses, "wall_s": round(wall, 2),
            "served_per_s": round(sum(a["status"] == 200 for a in answers) / wall, 1),
            "refusals_have_retry_after_and_json": proper,
            "client_ms": {
                "503": summary([a["seconds"] * 1000 for a in refused]),
                "200": summary([a["seconds"] * 1000 for a in answers if a["status"] == 200]),
                "healthz_probe": summary([seconds * 1000 for seconds in health]),
            },
            "server_ms": server_side(server.access_log, log_lines),
            "metrics": metrics_counts(server.url),
            "recovery_statuses": [a["status"] for a in recovery],
            "rss_mb": [round(rss_before, 1), round(server.rss_mb(), 1)],
        }  # fmt: skip
    finally:
        server.stop()
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = (
        set(statuses) <= {200, 503}
        and proper
        and report["recovery_statuses"] == [200] * len(recovery)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
