"""NCHW against channels-last for the torch backend on the CPU (the measurement behind
``serve.runtime.backends.torch.CPU_CHANNELS_LAST``).

Runs ``TorchBackend.infer`` on one checkpoint with both memory layouts, interleaved by
``serve.runtime.bench.time_calls`` (the order alternates each repeat), after two warm-up runs
each, and prints the medians and the per-pair ratios (channels-last / NCHW; below 1 =
channels-last faster). Results: backends_bench.md.

    .venv/bin/python benchmarks/backends_bench_layout.py --weights W.pt --threads 1
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from serve.runtime.backends.torch import TorchBackend
from serve.runtime.bench import time_calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="checkpoint (.pt)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch", default="1,8", help="batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=12, help="interleaved pairs per batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backends = {
        layout: TorchBackend(args.weights, device="cpu", channels_last=layout == "channels_last")
        for layout in ("nchw", "channels_last")
    }
    height, width = backends["nchw"].metadata.input_size
    for batch in (int(b) for b in args.batch.split(",")):
        images = np.random.default_rng(0).uniform(0, 255, (batch, 3, height, width))
        images = images.astype(np.float32)
        calls = {layout: (lambda b=b, x=images: b.infer(x)) for layout, b in backends.items()}
        times = time_calls(calls, args.repeats, warmup=2)
        nchw, last = np.median(times["nchw"]), np.median(times["channels_last"])
        pairs = np.round(np.array(times["channels_last"]) / np.array(times["nchw"]), 2)
        print(
            f"threads {args.threads} batch {batch}: NCHW median {nchw:.1f} ms, channels-last "
            f"{last:.1f} ms, ratio {last / nchw:.2f}; per-pair ratios {pairs.tolist()}",
            flush=True,
        )


if __name__ == "__main__":
    main()
