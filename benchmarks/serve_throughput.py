"""Server throughput and latency against the bare model, with ``wrk`` as the load generator.

Measures, in one run on this machine:

- the bare model: network-only latency at batch 1 (p50), and the raw backend's throughput
  (images/s) at batch 1 and at the server's max batch (one caller: the ratio's baseline); for
  reference also two threads calling the same session at once (and a 1-thread session called
  by two), which is what the server does with ``--lanes 2``;
- ``detector serve`` on 127.0.0.1 with batching on (max batch 8, no added delay: requests that
  arrive during a run form the next batch) and off (max batch 1): throughput and p50/p99 at
  concurrency 1, 4 and 16 (``wrk``, a fixed number of requests per point), the ratio to the
  raw backend, and the whole-request p50 against the bare model's;
- a load run: 16 connections x ``--requests`` requests each, every answer counted, the server's
  RSS before and after;
- or, with ``--pairs N``, only the two targets (concurrency 16 against the raw backend, the
  whole request at concurrency 1 against the network) in N rounds, each server run between two
  measurements of the bare model: the ratio of adjacent measurements does not move with the
  machine's speed between them, which on a shared 2-core VM moves the raw backend by +-15 %.

Usage::

    python benchmarks/serve_throughput.py [--model M.onnx] [--imgsz 416] [--requests 1000]
        [--lanes 2] [--threads 1] [--only-batching]
    python benchmarks/serve_throughput.py --model M.onnx --pairs 8   # the two targets, paired

Without ``--model`` a randomly initialised yolox_nano is exported at ``--imgsz`` (speed does not
depend on the weights). Needs ``wrk`` (Debian: ``apt-get install wrk``). Writes a table to
stdout and ``benchmarks/results/serve_throughput.json`` (``--out``: name the file after what the
run measured). Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from serve.launch import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
BOUNDARY = "benchboundary7f3a"

WRK_SCRIPT = Path(__file__).with_name("serve_throughput_wrk.lua")  # POSTs the body file


def export_model(folder: Path, imgsz: int) -> Path:
    import torch

    from detector.models import build_model
    from detector.training.checkpoint import save_atomic
    from export.onnx import export_onnx

    torch.manual_seed(0)
    model = build_model("yolox_nano", num_classes=80)
    meta = {"model_name": "yolox_nano", "num_classes": 80,
            "class_names": [f"c{i}" for i in range(80)], "input_size": [imgsz, imgsz]}  # fmt: skip
    weights = save_atomic({"model": model.state_dict(), "meta": meta}, folder / "nano.pt")
    return export_onnx(weights, folder / f"nano_{imgsz}.onnx", dynamic=True)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def warm_predictor(model: Path, image: np.ndarray, max_batch: int):
    """The bare model (ONNX Runtime, the server's defaults), its input at batch 1
    (``[1, 3, h, w]``) and at ``max_batch``, after three warm-up runs of each."""
    from serve.runtime.predictor import Predictor

    predictor = Predictor.from_path(model)
    one, _ = predictor.prepare([image])
    many = np.repeat(one, max_batch, axis=0)
    for _ in range(3):
        predictor.run(one)
        predictor.run(many)
    return predictor, one, many


def network_latencies(predictor, one: np.ndarray, runs: int) -> list[float]:
    """Seconds of ``runs`` network runs at batch 1."""
    latency = []
    for _ in range(runs):
        start = time.perf_counter()
        predictor.run(one)
        latency.append(time.perf_counter() - start)
    return latency


def paired(
    model: Path,
    image: np.ndarray,
    body: Path,
    server_flags: list[str],
    pairs: int,
    requests: int,
    runs: int,
    max_batch: int = 8,
    raw_s: float = 6.0,
) -> dict:
    """The two targets measured in ``pairs`` rounds, each server run between two measurements of
    the bare model (its mean is that round's baseline), so a change of the machine's speed
    during the run moves both sides of a ratio: per round the raw backend at ``max_batch``
    (images/s, for ``raw_s`` seconds) and the network p50 at batch 1 (``runs`` runs), then
    ``wrk`` at concurrency 1 (``2 x requests``, at least 100) and 16 (``requests`` per
    connection; batching on), then the bare model again. Medians over rounds."""
    predictor, one, many = warm_predictor(model, image, max_batch)

    def bare() -> tuple[float, float]:
        latency = network_latencies(predictor, one, runs)
        batches, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < raw_s:  # seconds, like a server run:
            predictor.run(many)  # a second or so would catch one of the VM's fast/slow spells
            batches += 1
        return batches * max_batch / elapsed, statistics.median(latency)

    server = Server(model, body.parent, "--queue-size", "256", "--max-batch", str(max_batch),
                    "--max-delay-ms", "0", *server_flags)  # fmt: skip
    rounds = []
    try:
        wrk(server.url, body, 16, 3)  # warm the connections and the lanes
        bare()  # and the bare model once more, now beside the idle server
        for index in range(pairs):
            raw_before, network_before = bare()
            c1 = wrk(server.url, body, 1, max(2 * requests, 100))
            c16 = wrk(server.url, body, 16, requests)
            raw_after, network_after = bare()
            raw, network_s = (raw_before + raw_after) / 2, (network_before + network_after) / 2
            rounds.append({
                "raw_images_per_s": [raw_before, raw_after], "network_p50_ms": network_s * 1000,
                "c1_p50_ms": c1.get("p50_ms"), "c16_requests_per_s": c16["requests_per_s"],
                "c16_p50_ms": c16.get("p50_ms"), "c16_p99_ms": c16.get("p99_ms"),
                "non_2xx": c1["non_2xx"] + c16["non_2xx"],
                "c16_vs_raw": c16["requests_per_s"] / raw,
                "c1_request_p50_vs_network_p50": c1["p50_ms"] / (network_s * 1000),
            })  # fmt: skip
            print(f"round {index + 1}: raw {raw_before:.1f} / {raw_after:.1f} images/s, c=16 "
                  f"{c16['requests_per_s']:.1f} req/s ({rounds[-1]['c16_vs_raw']:.2f}x), c=1 p50 "
                  f"{c1['p50_ms']:.2f} ms vs network {network_s * 1000:.2f} ms "
                  f"({rounds[-1]['c1_request_p50_vs_network_p50']:.2f}x)", flush=True)  # fmt: skip
    finally:
        server.stop()
        predictor.close()
    c16_ratios = [r["c16_vs_raw"] for r in rounds]
    c1_ratios = [r["c1_request_p50_vs_network_p50"] for r in rounds]
    return {
        "rounds": rounds, "lanes": server.lanes,
        "c16_vs_raw_median": statistics.median(c16_ratios),
        "c16_vs_raw_range": [min(c16_ratios), max(c16_ratios)],
        "c16_rounds_at_or_above_0.85": sum(r >= 0.85 for r in c16_ratios),
        "c1_request_p50_vs_network_p50_median": statistics.median(c1_ratios),
        "c1_request_p50_vs_network_p50_range": [min(c1_ratios), max(c1_ratios)],
        "c1_rounds_under_1.6": sum(r < 1.6 for r in c1_ratios),
    }  # fmt: skip


def two_callers(predictor, many: np.ndarray, batches: int) -> float:
    """Images/s with two threads each running ``batches`` x ``many`` on the same predictor."""
    threads = [
        threading.Thread(target=lambda: [predictor.run(many) for _ in range(batches)])
        for _ in range(2)
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 2 * batches * len(many) / (time.perf_counter() - start)


def bare_model(model: Path, image: np.ndarray, max_batch: int, runs: int) -> dict:
    """Network-only latency at batch 1, raw throughput at batch 1 and ``max_batch``, and the
    whole ``Predictor.predict`` (pre + network + post) latency; for reference, the throughput
    at ``max_batch`` with two concurrent callers (same session; a 1-thread session)."""
    from serve.runtime.predictor import Predictor

    predictor, one, many = warm_predictor(model, image, max_batch)
    latency = network_latencies(predictor, one, runs)
    predict = []
    for _ in range(max(runs // 2, 5)):
        start = time.perf_counter()
        predictor.predict([image])
        predict.append(time.perf_counter() - start)
    start = time.perf_counter()
    batches = max(runs // max_batch, 3)
    for _ in range(batches):
        predictor.run(many)
    batched = batches * max_batch / (time.perf_counter() - start)
    both = two_callers(predictor, many, max(batches // 2, 2))
    single = Predictor.from_path(model, threads=1)
    two_callers(single, many, 1)  # warm-up
    both_single = two_callers(single, many, max(batches // 2, 2))
    single.close()
    return {
        "network_p50_ms": statistics.median(latency) * 1000,
        "network_p99_ms": percentile(latency, 99) * 1000,
        "predict_p50_ms": statistics.median(predict) * 1000,
        "raw_images_per_s_batch1": 1 / statistics.mean(latency),
        f"raw_images_per_s_batch{max_batch}": batched,
        # reference only (not the ratio's baseline): two threads calling run at once
        f"raw_images_per_s_batch{max_batch}_two_callers": both,
        f"raw_images_per_s_batch{max_batch}_two_callers_1thread_session": both_single,
        "providers": getattr(predictor.backend, "providers", None),
    }


class Server(ServerProcess):
    """``detector serve`` on 127.0.0.1 (a free port), started by :mod:`serve.launch` and ready
    on construction; its log and JSON access log in ``folder``. ``prelude``: Python run in the
    server process before the CLI (e.g. to try a backend option that has no flag). Adds what the
    benchmarks read: the lanes it runs, and its own count of answers (``/metrics``)."""

    def __init__(self, model: Path, folder: Path, *flags: str, prelude: str = "") -> None:
        stem = folder / f"server_{int(time.time() * 1000)}"
        super().__init__(model, stem.with_suffix(".log"), flags,
                         access_log=stem.with_suffix(".access.jsonl"), prelude=prelude, cwd=ROOT,
                         stop_timeout=60)  # fmt: skip
        self.start(ready_timeout=300)
        lanes = re.search(r"(\d+) lane\(s\)", self.log_text())
        self.lanes = int(lanes.group(1)) if lanes else None

    def request_counts(self) -> dict[str, float]:
        """The server's own count of ``/v1/detect`` answers by status (``/metrics``)."""
        import httpx

        text = httpx.get(f"{self.url}/metrics", trust_env=False, timeout=30).text
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("detector_http_requests_total{") and '"/v1/detect"' in line:
                status = line.split('status="')[1].split('"')[0]
                counts[status] = counts.get(status, 0) + float(line.split()[-1])
        return counts


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk(
    url: str, body: Path, connections: int, requests_per_connection: int, max_s: int = 3600
) -> dict:
    """Run wrk (one thread) until ``connections x requests_per_connection`` requests are
    answered (or ``max_s`` passed); ``body``: the multipart body file."""
    total = connections * requests_per_connection
    env = {**os.environ, "WRK_BODY": str(body), "WRK_BOUNDARY": BOUNDARY, "WRK_QUOTA": str(total)}
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max_s}s", "--timeout", "30s", "--latency",
         "-s", str(WRK_SCRIPT), f"{url}/v1/detect"],
        capture_output=True, text=True, timeout=max_s + 60, env=env,
    )  # fmt: skip
    out = result.stdout
    latency = {}
    for q, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
        latency[f"p{q}_ms"] = float(value) * UNITS[unit]
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if done is None:
        raise RuntimeError(f"wrk failed:\n{out}\n{result.stderr}")
    count, seconds = int(done.group(1)), float(done.group(2)) * UNITS[done.group(3)] / 1000
    return {
        "connections": connections,
        "requests": count,
        "seconds": seconds,
        "requests_per_s": count / seconds,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(1) if errors else None,
        **latency,
    }


def load_run(server: Server, body: Path, requests: int, every_s: float = 5.0) -> dict:
    """16 connections x ``requests`` through wrk; the server's RSS sampled every ``every_s``
    meanwhile (flat, or growing?) and its own count of answers by status afterwards."""
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        start = time.monotonic()
        while not done.wait(every_s):
            samples.append((round(time.monotonic() - start, 1), round(server.rss_mb(), 1)))

    rss_before = server.rss_mb()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        load = wrk(server.url, body, 16, requests)
    finally:
        done.set()
        sampler.join()
    load.update(rss_before_mb=rss_before, rss_after_mb=server.rss_mb(),
                rss_samples=samples, server_counts=server.request_counts())  # fmt: skip
    print(f"load 16 x {requests}: {json.dumps(load)}", flush=True)
    return load


def multipart(image_bytes: bytes) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="bench.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + image_bytes + f"\r\n--{BOUNDARY}--\r\n".encode()
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="ONNX model (default: export nano)")
    parser.add_argument("--imgsz", type=int, default=416)
    parser.add_argument("--requests", type=int, default=1000, help="per connection, load run")
    parser.add_argument("--sweep-requests", type=int, default=60,
                        help="per connection at each concurrency of the sweep")  # fmt: skip
    parser.add_argument("--runs", type=int, default=100, help="bare-model timing runs")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_throughput.json"
    )
    parser.add_argument(
        "--load-only", action="store_true", help="only the load run: no bare model, no sweep"
    )
    parser.add_argument("--lanes", type=int, help="the server's --lanes (default: its own)")
    parser.add_argument("--threads", type=int, help="the server's --threads (default: its own)")
    parser.add_argument(
        "--only-batching", action="store_true", help="batching sweep only: no unbatched, no load"
    )
    parser.add_argument(
        "--pairs", type=int, metavar="N", help="only the two targets, in N rounds that measure "
        "the bare model before and after each server run (see paired())",
    )  # fmt: skip
    args = parser.parse_args()
    server_flags = [*(["--lanes", str(args.lanes)] if args.lanes else []),
                    *(["--threads", str(args.threads)] if args.threads else [])]  # fmt: skip
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    model = args.model or export_model(work, args.imgsz)
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), np.uint8), (0, 0), 3)
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    body = work / "request.body"
    body.write_bytes(multipart(jpeg))

    report: dict = {"machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                                "load_avg": os.getloadavg(), "python": platform.python_version()},
                    "model": str(model), "image": "640x480 JPEG", "sweep": [],
                    "server_flags": server_flags}  # fmt: skip
    if args.pairs:
        report["paired"] = paired(model, image, body, server_flags, args.pairs,
                                  args.sweep_requests, args.runs)  # fmt: skip
        summary = {k: v for k, v in report["paired"].items() if k != "rounds"}
        print(json.dumps(summary, indent=1))
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0
    if args.load_only:
        server = Server(model, work, "--queue-size", "256", "--max-batch", "8", *server_flags)
        try:
            wrk(server.url, body, 16, 3)  # warm the connections
            report["load"] = load_run(server, body, args.requests)
        finally:
            server.stop()
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0
    report["bare"] = bare_model(model, image, 8, args.runs)
    print(f"bare model: {json.dumps(report['bare'])}", flush=True)

    modes = {"batching": ["--max-batch", "8", "--max-delay-ms", "0"],
             "no batching": ["--max-batch", "1", "--max-delay-ms", "0"]}  # fmt: skip
    if args.only_batching:
        del modes["no batching"]
    for mode, flags in modes.items():
        server = Server(model, work, "--queue-size", "256", *flags, *server_flags)
        try:
            for connections in (1, 4, 16):
                wrk(server.url, body, connections, 3)  # warm the connections
                server_cpu, children = server.cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN)
                point = wrk(server.url, body, connections, args.sweep_requests)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk's, once it has exited
                point["mode"], point["lanes"] = mode, server.lanes
                point["server_cpu_ms_per_request"] = (
                    (server.cpu_s() - server_cpu) * 1000 / point["requests"]
                )
                point["wrk_cpu_ms_per_request"] = (
                    (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime)
                    * 1000 / point["requests"]
                )  # fmt: skip
                report["sweep"].append(point)
                print(f"{mode:12s} c={connections:2d}: {point['requests_per_s']:7.1f} req/s, "
                      f"p50 {point.get('p50_ms', 0):7.2f} ms, p99 {point.get('p99_ms', 0):7.2f} "
                      f"ms, non-2xx {point['non_2xx']}, CPU ms/request: server "
                      f"{point['server_cpu_ms_per_request']:.1f}, wrk "
                      f"{point['wrk_cpu_ms_per_request']:.1f}", flush=True)  # fmt: skip
            if mode == "batching" and not args.only_batching:
                report["load"] = load_run(server, body, args.requests)
        finally:
            server.stop()

    bare = report["bare"]
    raw = max(bare["raw_images_per_s_batch1"], bare["raw_images_per_s_batch8"])
    c16 = {p["mode"]: p for p in report["sweep"] if p["connections"] == 16}
    c1 = {p["mode"]: p for p in report["sweep"] if p["connections"] == 1}
    report["ratios"] = {
        "c16_batching_vs_raw": c16["batching"]["requests_per_s"] / raw,
        "c1_request_p50_vs_network_p50": c1["batching"]["p50_ms"] / bare["network_p50_ms"],
        "c1_request_p50_vs_predict_p50": c1["batching"]["p50_ms"] / bare["predict_p50_ms"],
        # reference: against the bare session with two concurrent callers
        "c16_batching_vs_raw_two_callers": c16["batching"]["requests_per_s"]
        / bare["raw_images_per_s_batch8_two_callers"],
    }
    if "no batching" in c16:
        report["ratios"]["c16_no_batching_vs_raw"] = c16["no batching"]["requests_per_s"] / raw
    report["machine"]["load_avg_after"] = os.getloadavg()
    print("\n| mode | concurrency | req/s | p50 ms | p99 ms | vs raw |\n|---|---|---|---|---|---|")
    for p in report["sweep"]:
        print(f"| {p['mode']} | {p['connections']} | {p['requests_per_s']:.1f} | "
              f"{p.get('p50_ms', 0):.2f} | {p.get('p99_ms', 0):.2f} | "
              f"{p['requests_per_s'] / raw:.2f} |")  # fmt: skip
    print(f"\nraw backend: {raw:.1f} images/s; network p50 {bare['network_p50_ms']:.2f} ms; "
          f"predict p50 {bare['predict_p50_ms']:.2f} ms; for reference two callers at batch 8: "
          f"{bare['raw_images_per_s_batch8_two_callers']:.1f} images/s (same session), "
          f"{bare['raw_images_per_s_batch8_two_callers_1thread_session']:.1f} (1-thread "
          f"session)")  # fmt: skip
    print(json.dumps(report["ratios"], indent=1))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
