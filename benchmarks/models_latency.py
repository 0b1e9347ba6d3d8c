"""PyTorch eval latency, batch 1, 2 threads: ours (unfused, fused) against the official YOLOX.

All variants hold the same weights (the deterministic golden fill, so activations look like a
trained network's rather than the tiny values of a fresh init) and run interleaved in one
process: each repeat times every variant once, in rotating order, so load from other processes
hits all of them alike. Reports medians and ratios to the official model, checks that the
outputs agree, and writes ``benchmarks/models_latency.md``.

    .venv/bin/python benchmarks/models_latency.py [--repeats 30] [--md benchmarks/models_latency.md]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "models"))
sys.path.insert(0, str(ROOT))

from golden_fill import fill_state_dict, golden_input  # noqa: E402

from detector.models import build_model, fuse_model  # noqa: E402
from serve.runtime.bench import time_calls  # noqa: E402

CASES = [("yolox_nano", "yolox-nano", 416), ("yolox_s", "yolox-s", 640)]
REFERENCE_MS = {"yolox_nano": 46.0, "yolox_s": 205.0}  # official timings quoted as reference


def variants(name: str, official_name: str) -> dict[str, torch.nn.Module]:
    from yolox.exp import get_exp
    from yolox.utils import fuse_model as official_fuse

    official = get_exp(None, official_name).get_model().eval()
    gain = float(np.load(ROOT / "tests" / "models" / "golden" / f"{name}.npz")["gain"])
    official.load_state_dict(fill_state_dict(official.state_dict(), gain))
    ours = build_model(name).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    return {
        "ours": ours,
        "ours fused": fuse_model(copy.deepcopy(ours)),
        "official": official,
        "official fused": official_fuse(copy.deepcopy(official)),
    }


def bench(models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int) -> dict[str, list]:
    calls: dict[str, Callable[[], torch.Tensor]] = {
        k: (lambda m=m: m(x)) for k, m in models.items()
    }
    with torch.inference_mode():
        outs = {k: c() for k, c in calls.items()}
        for k in calls:
            torch.testing.assert_close(outs[k], outs["official"], rtol=1e-3, atol=1e-3)
        return time_calls(calls, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--md", type=Path, default=ROOT / "benchmarks" / "models_latency.md")
    parser.add_argument("--note", default="", help="free text for the results file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name, official_name, size in CASES:
        models = variants(name, official_name)
        times = bench(models, golden_input((1, 3, size, size)), args.repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        # ratio within each repeat (same moment, same load), then the median over repeats
        for k in ("ours", "ours fused", "official fused"):
            med[f"{k} ratio"] = statistics.median(
                a / b for a, b in zip(times[k], times["official"])
            )
        rows.append((name, size, med))
        print(name, size, {k: round(v, 3) for k, v in med.items()}, flush=True)

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        "# PyTorch eval latency: ours vs the official YOLOX (batch 1)",
        "",
        f"Command: `.venv/bin/python benchmarks/models_latency.py --repeats {args.repeats}"
        + (f" --threads {args.threads}" if args.threads != 2 else "")
        + "`",
        "",
        f"Machine: {cpu}, {os.cpu_count()} CPUs, torch.set_num_threads({args.threads}), "
        f"torch {torch.__version__}. Same weights in every variant; variants interleaved per "
        f"repeat (rotating order), {args.repeats} repeats after 3 warm-up runs; medians in ms. "
        "Outputs checked equal before timing.",
        "",
    ]
    if args.note:
        lines += [args.note, ""]
    lines += [
        "Ratios are medians of per-repeat ratios (each variant against the official run of the "
        "same repeat), which cancels slow changes in the machine's load.",
        "",
        "| model | input | ours | ours fused | official | official fused | ours / official "
        "| ours fused / official | official fused / official | reference official |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, size, med in rows:
        lines.append(
            f"| {name} | {size} | {med['ours']:.1f} | {med['ours fused']:.1f} | "
            f"{med['official']:.1f} | {med['official fused']:.1f} | "
            f"{med['ours ratio']:.3f} | {med['ours fused ratio']:.3f} | "
            f"{med['official fused ratio']:.3f} | {REFERENCE_MS[name]:.0f} |"
        )
    args.md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
