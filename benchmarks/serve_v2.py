"""``/v2`` binary against ``/v1`` multipart: throughput of one ``detector serve`` at concurrency 16.

The same server, model and image for both; the load generator is ``wrk`` (not ours), sending
the same prepared body again and again:

- ``/v1/detect``: ``multipart/form-data`` with the JPEG in field ``image``;
- ``/v2/models/detector/infer``: the KServe v2 request with the binary tensor data extension
  (what ``tritonclient.http`` sends): a JSON header, then the JPEG as a ``BYTES`` element
  (4-byte length + bytes), outputs asked as binary (``binary_data_output``).

Each repeat runs both routes back to back for ``--seconds`` each (the order alternates), after
a warm-up, so a busy neighbour on the machine weighs on both alike; the figures are medians over
the repeats, and the ratio is v2 / v1 per repeat, then its median. Before measuring, one request
on each route checks that both give the same detections.

Usage::

    python benchmarks/serve_v2.py [--model M.onnx] [--imgsz 416] [--repeats 5] [--seconds 10]

Without ``--model`` a randomly initialised yolox_nano is exported at ``--imgsz``. Writes a table
to stdout and ``benchmarks/results/serve_v2.json`` (``--out`` to name it). Traffic goes to
127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import serve_throughput  # beside this script: its Server runs detector serve
from machine_info import cpu_name  # beside this script (benchmarks/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
BOUNDARY = "benchv2boundary"
WRK_SCRIPT = """
wrk.method = "POST"
%(headers)s
local file = io.open("%(body)s", "rb")
wrk.body = file:read("*a")
file:close()
"""


def export_model(folder: Path, imgsz: int) -> Path:
    import torch

    from detector.models import build_model
    from detector.training.checkpoint import save_atomic
    from export.onnx import export_onnx

    torch.manual_seed(0)
    model = build_model("yolox_nano", num_classes=80)
    meta = {
        "model_name": "yolox_nano",
        "num_classes": 80,
        "class_names": [f"c{i}" for i in range(80)],
        "input_size": [imgsz, imgsz],
    }
    weights = save_atomic({"model": model.state_dict(), "meta": meta}, folder / "nano.pt")
    return export_onnx(weights, folder / f"nano_{imgsz}.onnx", dynamic=True)


def test_image() -> bytes:
    """A 640x480 JPEG with shapes and mild noise (about the size of a camera frame's JPEG)."""
    rng = np.random.default_rng(0)
    image = np.full((480, 640, 3), 120, np.uint8)
    image[:] = np.linspace(60, 200, 640, dtype=np.uint8)[None, :, None]
    for _ in range(12):
        x, y = rng.integers(0, 560), rng.integers(0, 400)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(image, (x, y), (x + int(rng.integers(20, 120)), y + 80), color, -1)
    image = cv2.add(image, rng.integers(0, 12, image.shape, dtype=np.uint8))
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def v1_body(jpeg: bytes) -> tuple[bytes, dict[str, str]]:
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; '
        'filename="image.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()
    body += jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def v2_body(jpeg: bytes, conf: float) -> tuple[bytes, dict[str, str]]:
    tensor = struct.pack("<I", len(jpeg)) + jpeg
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "IMAGE",
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(tensor)},
                }
            ],
            "parameters": {"binary_data_output": True, "conf": conf, "max_det": 100},
        }
    ).encode()
    return head + tensor, {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def wrk(url: str, script: Path, connections: int, seconds: int, warm_up: bool = False) -> dict:
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    out = result.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if result.returncode != 0 or rate is None:
        raise RuntimeError(f"wrk failed:\n{out}\n{result.stderr}")

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\b", out, re.M)
        assert match, out
        return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]

    total = re.search(r"(\d+) requests in", out)
    if warm_up:
        return {}
    if total is None or int(total.group(1)) == 0:
        raise RuntimeError(
            f"no request answered within {seconds} s (machine too busy? raise --seconds):\n{out}"
        )
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests_per_s": float(rate.group(1)),
        "requests": int(total.group(1)),
        "non_2xx": int(failed.group(1)) if failed else 0,
        "socket_errors": errors.group(1) if errors else None,
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
    }


def same_detections(url: str, jpeg: bytes, conf: float) -> int:
    """One request on each route: the same boxes (to /v1's 0.01 px) and classes."""
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
        v1 = client.post(
            "/v1/detect", files={"image": ("a.jpg", jpeg)}, params={"max_det": 100, "conf": conf}
        )
        v1.raise_for_status()
        body, headers = v2_body(jpeg, conf)
        v2 = client.post("/v2/models/detector/infer", content=body, headers=headers)
        v2.raise_for_status()
    length = int(v2.headers["inference-header-content-length"])
    outputs = json.loads(v2.content[:length])["outputs"]
    offset, tensors = length, {}
    for output in outputs:
        size = output["parameters"]["binary_data_size"]
        dtype = "<f4" if output["datatype"] == "FP32" else "<i4"
        raw = np.frombuffer(v2.content[offset : offset + size], dtype)
        tensors[output["name"]] = raw.reshape(output["shape"])
        offset += size
    count = int(tensors["num_dets"][0, 0])
    detections = v1.json()["detections"]
    assert count == len(detections), (count, len(detections))
    boxes = np.round(tensors["boxes"][0, :count].astype(np.float64), 2)
    np.testing.assert_allclose(
        boxes, np.reshape([d["box"] for d in detections], (-1, 4)), atol=1e-3
    )
    assert tensors["classes"][0, :count].tolist() == [d["class_id"] for d in detections]
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="ONNX model (default: nano exported here)")
    parser.add_argument("--imgsz", type=int, default=416)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--conf", type=float, default=0.25, help="score threshold, both routes")
    parser.add_argument("--image", type=Path, help="a JPEG to send (default: a 640x480 made here)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_v2.json"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = args.model or export_model(folder, args.imgsz)
        jpeg = args.image.read_bytes() if args.image else test_image()
        routes = {
            "v1_multipart": (f"/v1/detect?max_det=100&conf={args.conf}", v1_body(jpeg)),
            "v2_binary": ("/v2/models/detector/infer", v2_body(jpeg, args.conf)),
        }
        scripts = {}
        for name, (_, (body, headers)) in routes.items():
            (folder / f"{name}.body").write_bytes(body)
            lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
            script = folder / f"{name}.lua"
            script.write_text(WRK_SCRIPT % {"headers": lines, "body": folder / f"{name}.body"})
            scripts[name] = script
        server = serve_throughput.Server(model, folder)
        try:
            detections = same_detections(server.url, jpeg, args.conf)
            for name, (path, _) in routes.items():  # warm-up: connections, threads, allocator
                wrk(server.url + path, scripts[name], args.connections, 10, warm_up=True)
                time.sleep(2)  # the server finishes what the last connections sent
            runs: dict[str, list[dict]] = {name: [] for name in routes}
            for repeat in range(args.repeats):
                order = list(routes) if repeat % 2 == 0 else list(reversed(routes))
                for name in order:
                    cpu_before, load_before = server.cpu_s(), os.getloadavg()[0]
                    point = wrk(
                        server.url + routes[name][0], scripts[name], args.connections, args.seconds
                    )
                    point["server_cpu_ms_per_request"] = (
                        (server.cpu_s() - cpu_before) * 1000 / point["requests"]
                    )
                    point["load_average_1min"] = [load_before, os.getloadavg()[0]]
                    runs[name].append(point)
                    time.sleep(2)
                    print(
                        f"repeat {repeat + 1} {name}: {point['requests_per_s']:.1f} req/s, "
                        f"p50 {point['p50_ms']:.1f} ms, p99 {point['p99_ms']:.1f} ms, "
                        f"server CPU {point['server_cpu_ms_per_request']:.1f} ms/request, "
                        f"non-2xx {point['non_2xx']}, load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
        finally:
            server.stop()
    summary = {
        name: {
            "requests_per_s_median": statistics.median(r["requests_per_s"] for r in points),
            "p50_ms_median": statistics.median(r["p50_ms"] for r in points),
            "p99_ms_median": statistics.median(r["p99_ms"] for r in points),
            "server_cpu_ms_per_request_median": statistics.median(
                r["server_cpu_ms_per_request"] for r in points
            ),
            "non_2xx_total": sum(r["non_2xx"] for r in points),
            "requests_total": sum(r["requests"] for r in points),
        }
        for name, points in runs.items()
    }
    cpu_ratios = [
        v2["server_cpu_ms_per_request"] / v1["server_cpu_ms_per_request"]
        for v1, v2 in zip(runs["v1_multipart"], runs["v2_binary"])
    ]
    ratios = [
        v2["requests_per_s"] / v1["requests_per_s"]
        for v1, v2 in zip(runs["v1_multipart"], runs["v2_binary"])
    ]
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "model": "yolox_nano (random weights)" if args.model is None else str(args.model),
        "imgsz": args.imgsz,
        "image": f"{args.image or '640x480 JPEG made here'}, {len(jpeg)} bytes",
        "conf": args.conf,
        "detections_per_image": detections,
        "connections": args.connections,
        "seconds_per_run": args.seconds,
        "repeats": args.repeats,
        "summary": summary,
        "ratio_v2_over_v1_median": statistics.median(ratios),
        "ratios": ratios,
        "cpu_ratio_v2_over_v1_median": statistics.median(cpu_ratios),
        "cpu_ratios": cpu_ratios,
        "runs": runs,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\n{'route':14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>10} {'non-2xx':>8}"
    )
    for name, row in summary.items():
        print(
            f"{name:14} {row['requests_per_s_median']:8.1f} {row['p50_ms_median']:8.1f} "
            f"{row['p99_ms_median']:8.1f} {row['server_cpu_ms_per_request_median']:10.1f} "
            f"{row['non_2xx_total']:8d}"
        )
    print(
        f"v2 / v1 throughput (median of per-repeat ratios): {report['ratio_v2_over_v1_median']:.3f}"
    )
    print(
        f"v2 / v1 server CPU per request (median of ratios): "
        f"{report['cpu_ratio_v2_over_v1_median']:.3f}"
    )
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
