"""Soak: ``detector serve`` under 16 clients for a long time; does its memory grow?

One ``wrk`` run of ``--minutes`` at 16 connections (``POST /v1/detect``, one JPEG) against a
real server on 127.0.0.1, the server's resident memory (``/proc/PID/status`` ``VmRSS``) sampled
every ``--every`` seconds meanwhile. Reported: requests, errors (non-2xx answers from wrk and the
server's own ``/metrics`` count, socket errors), and the RSS slope in MB per hour, fitted
(least squares) over the samples after the first ``--settle`` minutes (allocator pools, ONNX
Runtime arenas and Python's caches grow at first and then stay). Writes the samples and the
figures to ``--out`` (JSON) and the RSS curve to ``--plot`` (PNG, for BENCHMARKS.md).

Usage::

    python benchmarks/serve_soak.py --model nano_416.onnx --minutes 60

Without ``--model`` a randomly initialised yolox_nano is exported at ``--imgsz`` (memory use
does not depend on the weights). Needs ``wrk`` (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import ROOT, Server, export_model, multipart, wrk  # noqa: E402


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rss_slope_mb_per_h(samples: list[tuple[float, float]], settle_s: float) -> float | None:
    """Least-squares slope of RSS (MB) against time, per hour, over samples after ``settle_s``;
    ``None`` with fewer than 3 such samples."""
    kept = [(t, mb) for t, mb in samples if t >= settle_s]
    if len(kept) < 3:
        return None
    t, mb = np.array(kept, dtype=np.float64).T
    return float(np.polyfit(t, mb, 1)[0] * 3600.0)


def plot(samples: list[tuple[float, float]], settle_s: float, title: str, path: Path) -> None:
    """The RSS curve (minutes on x, MB on y), the settling time marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, mb = np.array(samples, dtype=np.float64).T
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(t / 60.0, mb, lw=1.2)
    ax.axvline(settle_s / 60.0, color="grey", ls=":", lw=1)
    ax.set_xlabel("minutes under load (16 clients)")
    ax.set_ylabel("server RSS (MB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="ONNX model (default: export nano)")
    parser.add_argument("--imgsz", type=int, default=416)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=15.0, help="seconds between RSS samples")
    parser.add_argument("--settle", type=float, default=5.0, help="minutes left out of the slope")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_soak_nano416.json"
    )
    parser.add_argument(
        "--plot", type=Path, default=ROOT / "benchmarks" / "plots" / "serve_soak_rss.png"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or export_model(work, args.imgsz)
        image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
        ok, jpeg = cv2.imencode(".jpg", image)
        assert ok
        body = work / "body.bin"
        body.write_bytes(multipart(jpeg.tobytes()))

        server = Server(model, work)
        samples: list[tuple[float, float]] = []
        done = threading.Event()

        def sample() -> None:
            start = time.monotonic()
            samples.append((0.0, round(server.rss_mb(), 1)))
            while not done.wait(args.every):
                samples.append((round(time.monotonic() - start, 1), round(server.rss_mb(), 1)))

        sampler = threading.Thread(target=sample, daemon=True)
        try:
            sampler.start()
            load = wrk(server.url, body, 16, 0, max_s=int(args.minutes * 60))
            done.set()
            sampler.join()
            counts = server.request_counts()
        finally:
            done.set()
            server.stop()

    settle_s = args.settle * 60.0
    slope = rss_slope_mb_per_h(samples, settle_s)
    # 499: requests wrk still had in flight when its time was up (it closes their connections)
    client_gone = counts.get("499", 0)
    server_errors = sum(n for status, n in counts.items() if status[0] != "2" and status != "499")
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_name(),
        "model": str(args.model or f"yolox_nano@{args.imgsz} (random weights)"),
        "minutes": args.minutes,
        "wrk": load,
        "server_counts": counts,
        "server_errors": server_errors,
        "client_gone_at_the_end": client_gone,
        "rss_first_mb": samples[0][1] if samples else None,
        "rss_after_settle_mb": next((mb for t, mb in samples if t >= settle_s), None),
        "rss_last_mb": samples[-1][1] if samples else None,
        "rss_slope_mb_per_h": slope,
        "settle_minutes": args.settle,
        "rss_samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    title = (f"detector serve, 16 clients, {args.minutes:g} min: {load['requests']:,} requests, "
             f"RSS slope {slope if slope is not None else float('nan'):+.1f} MB/h")  # fmt: skip
    plot(samples, settle_s, title, args.plot)
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples"}, indent=1))
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
