"""ONNX Runtime intra-op spinning for ``detector serve``: ``session.intra_op.allow_spinning``
"0" (idle threads sleep) against "1" (they spin-wait, ONNX Runtime's default), under ``wrk``
at concurrency 16, the server otherwise at its defaults (threads = the usable cores).

The two settings alternate ``--repeats`` times (a fresh server each), so that a change in the
machine's load hits both alike. Reports requests/s, p50 and p99 per run and the medians, and
the server's CPU time per request (user + system, from /proc), which spinning inflates.

Usage::

    python benchmarks/serve_throughput_spinning.py [--model M.onnx] [--imgsz 416]
        [--requests 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import Server, export_model, multipart, wrk  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="ONNX model (default: export nano)")
    parser.add_argument("--imgsz", type=int, default=416)
    parser.add_argument("--requests", type=int, default=40, help="per connection, per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve_spin_"))
    model = args.model or export_model(work, args.imgsz)
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), np.uint8), (0, 0), 3)
    body = work / "request.body"
    body.write_bytes(multipart(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
                               .tobytes()))  # fmt: skip
    runs: list[dict] = []
    for repeat in range(args.repeats):
        for spinning in ("0", "1"):
            prelude = (
                "import serve.runtime.backends.onnxruntime as b; "
                f"b.INTRA_OP_SPINNING = {spinning!r}"
            )
            server = Server(model, work, "--max-batch", "8", "--queue-size", "256",
                            prelude=prelude)  # fmt: skip
            try:
                wrk(server.url, body, args.connections, 2)  # warm
                before = server.cpu_s()
                point = wrk(server.url, body, args.connections, args.requests)
                cpu = server.cpu_s() - before
            finally:
                server.stop()
            point.update(spinning=spinning, repeat=repeat, load_avg=os.getloadavg()[0],
                         server_cpu_ms_per_request=cpu * 1000 / point["requests"])  # fmt: skip
            runs.append(point)
            print(f"spinning={spinning} #{repeat}: {point['requests_per_s']:.1f} req/s, p50 "
                  f"{point.get('p50_ms', 0):.0f} ms, p99 {point.get('p99_ms', 0):.0f} ms, cpu "
                  f"{point['server_cpu_ms_per_request']:.1f} ms/request, non-2xx "
                  f"{point['non_2xx']}, load {point['load_avg']:.1f}", flush=True)  # fmt: skip
    summary = {}
    for spinning in ("0", "1"):
        mine = [r for r in runs if r["spinning"] == spinning]
        summary[spinning] = {
            key: round(statistics.median(r[key] for r in mine), 2)
            for key in ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request")
        }
    print(json.dumps({"connections": args.connections, "cpus": os.cpu_count(),
                      "median_by_spinning": summary}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
