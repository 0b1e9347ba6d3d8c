"""Latency and throughput of a model file on any backend, with the three stages timed apart.

One measurement runs the serving path of :class:`serve.runtime.predictor.Predictor` on a batch of
``B`` images: pre-processing (``Predictor.prepare``: letterbox, normalise, stack), inference
(``Predictor.run``: the backend, including host/device copies) and post-processing
(``Predictor.postprocess`` and ``boxes_to_original``). Each stage is timed with
``time.perf_counter``; warm-up runs are not counted. Throughput is images over the summed
whole-pipeline time of the measured runs (one batch at a time, no overlap between stages).

The run order of every timing here is :func:`schedule` (warm-up, then repeats that rotate which
side runs first), also behind :func:`time_calls`, the loop the latency benchmarks in
``benchmarks/`` time their own calls with.

No torch here: ``detector bench`` on ``.onnx``/``.engine`` runs in a slim serving install; the
torch backend imports torch itself when a checkpoint is benchmarked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from detector.core.defaults import PREDICT_CONF, PREDICT_IOU
from detector.core.preprocess import boxes_to_original
from serve.runtime.predictor import Predictor

STAGES = ("pre", "infer", "post", "total")
PERCENTILES = (50, 90, 99)
SYNTHETIC_SIZE = (480, 640)  # (height, width): a VGA camera frame
Progress = Callable[[str], None]
Cell = tuple[int, int]  # (target index, batch size)
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """One thing to measure: a model file on a backend with its constructor options.

    ``label`` tells apart two targets on the same file and backend (e.g. ``cuda_graphs``)."""

    path: Path
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""


def synthetic_images(count: int, size: tuple[int, int] = SYNTHETIC_SIZE,
                     seed: int = 0) -> list[np.ndarray]:  # fmt: skip
    """``count`` BGR uint8 ``[H, W, 3]`` images: a smooth gradient with noise and a few filled
    rectangles and circles, so that decoding-free pre-processing and NMS see camera-like input."""
    rng = np.random.default_rng(seed)
    height, width = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    images = []
    for _ in range(count):
        base = np.stack([(xs / width) * rng.uniform(60, 200), (ys / height) * rng.uniform(60, 200),
                         np.full_like(xs, rng.uniform(40, 160))], axis=2)  # fmt: skip
        image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        for _ in range(int(rng.integers(3, 9))):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            x, y = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
            w, h = int(rng.integers(20, width // 3)), int(rng.integers(20, height // 3))
            if rng.random() < 0.5:
                cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness=-1)
            else:
                cv2.circle(image, (x, y), max(w, h) // 2, colour, thickness=-1)
        images.append(image)
    return images


def percentiles(values_ms: Sequence[float]) -> dict[int, float]:
    """``{50: p50, 90: p90, 99: p99}`` of a list of milliseconds (linear interpolation)."""
    return {p: float(np.percentile(values_ms, p)) for p in PERCENTILES}


def time_once(
    predictor: Predictor, images: Sequence[np.ndarray], conf: float, iou: float
) -> tuple[float, float, float, float]:
    """One pass of the serving pipeline over a batch: milliseconds of (pre, infer, post,
    total)."""
    clock = time.perf_counter
    t0 = clock()
    tensor, ratios = predictor.prepare(images)
    t1 = clock()
    outputs = predictor.run(tensor)
    t2 = clock()
    for found, ratio, image in zip(predictor.postprocess(outputs, conf, iou), ratios, images):
        boxes_to_original(found.boxes, ratio, image.shape[:2])
    t3 = clock()
    return tuple((b - a) * 1000.0 for a, b in ((t0, t1), (t1, t2), (t2, t3), (t0, t3)))  # type: ignore[return-value]


def device_of(predictor: Predictor) -> str:
    """Where the backend runs, in words: the torch device, the ONNX Runtime provider in use, or
    ``cuda`` for TensorRT."""
    backend = predictor.backend
    device = getattr(backend, "device", None)
    if isinstance(device, int):  # a GPU index (TensorRT)
        return f"cuda:{device}"
    if device is not None:
        return str(device)
    providers = getattr(backend, "providers", None)
    if providers:
        return str(providers[0]).removesuffix("ExecutionProvider").lower()
    return "cpu"


def row(target: Target, predictor: Predictor, batch: int, times: dict[str, list[float]],
        images: str) -> dict[str, Any]:  # fmt: skip
    """One result row (the JSON schema of ``detector bench --json``)."""
    meta = predictor.metadata
    result: dict[str, Any] = {
        "model": target.path.name,
        "backend": target.backend + (f" {target.label}" if target.label else ""),
        "precision": meta.precision,
        "device": device_of(predictor),
        "batch": batch,
        "imgsz": f"{meta.input_size[0]}x{meta.input_size[1]}",
        "images": images,
        "repeats": len(times["total"]),
    }
    for stage in STAGES:
        for p, value in percentiles(times[stage]).items():
            result[f"{stage}_p{p}_ms"] = round(value, 3)
    total_s = sum(times["total"]) / 1000.0
    result["throughput"] = round(batch * len(times["total"]) / total_s, 2)  # images/s
    return result


def schedule(
    cells: Sequence[T], repeats: int, warmup: int, interleave: bool = True
) -> Iterator[tuple[T, bool]]:
    """The order of the runs: ``(cell, counted)`` pairs, ``counted`` False for warm-up runs.

    Interleaved: every cell's warm-up first, then each repeat runs every cell once, in an order
    rotated by one each repeat. Sequential: each cell's warm-up and repeats, one cell after the
    other."""
    if not interleave:
        for cell in cells:
            for run in range(warmup + repeats):
                yield cell, run >= warmup
        return
    for cell in cells:
        for _ in range(warmup):
            yield cell, False
    for repeat in range(repeats):
        shift = repeat % len(cells)
        for cell in [*cells[shift:], *cells[:shift]]:
            yield cell, True


def time_calls(
    calls: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 3,
    interleave: bool = True,
) -> dict[str, list[float]]:
    """Milliseconds of each call, one per counted run, in :func:`schedule`'s order: ``warmup``
    untimed runs of each call first, then ``repeats`` rounds that run every call once, starting
    one later in the order each round, so slow changes of the machine's load hit every side alike
    and no side always runs first. A ratio of two sides is best taken per round (same moment,
    same load), then its median."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    times: dict[str, list[float]] = {name: [] for name in calls}
    clock = time.perf_counter
    for name, counted in schedule(list(calls), repeats, warmup, interleave):
        start = clock()
        calls[name]()
        elapsed = (clock() - start) * 1000.0
        if counted:
            times[name].append(elapsed)
    return times


def run_benchmark(
    targets: Sequence[Target],
    batches: Sequence[int],
    images: Sequence[np.ndarray],
    images_label: str,
    repeats: int,
    warmup: int,
    conf: float = PREDICT_CONF,
    iou: float = PREDICT_IOU,
    progress: Progress | None = None,
    interleave: bool = True,
) -> list[dict[str, Any]]:
    """Measure every target at every batch size; one row each (see :func:`row`), targets in
    order, batches in order within each.

    All models are loaded first. By default the runs are interleaved (:func:`schedule`), so a
    load that changes over time (a shared machine) falls on every cell alike instead of on
    whichever ran last; with more than one CPU thread per library, pool threads that spin on
    after a run can slow the next cell of another library, so compare those with
    ``interleave=False`` too. Each run takes the next ``batch`` images of ``images`` in turn. A
    model with a fixed batch runs other batch sizes in chunks of its own (as the server does).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if not images:
        raise ValueError("no images to benchmark with")
    predictors: list[Predictor] = []
    try:
        for target in targets:
            if progress:
                progress(f"loading {target.path.name} [{_name(target)}]")
            predictors.append(Predictor.from_path(target.path, target.backend, **target.options))
        cells = [(t, b) for t in range(len(targets)) for b in batches]
        times: dict[Cell, dict[str, list[float]]] = {c: {s: [] for s in STAGES} for c in cells}
        served = dict.fromkeys(cells, 0)
        total, done = len(cells) * repeats, 0
        mode = "interleaved" if interleave else "one cell after the other"
        if progress:
            progress(f"{len(cells)} cells x ({warmup} warm-up + {repeats} runs), {mode}")
        for (target, batch), counted in schedule(cells, repeats, warmup, interleave):
            start = served[(target, batch)]
            served[(target, batch)] += batch
            chunk = [images[(start + i) % len(images)] for i in range(batch)]
            measured = time_once(predictors[target], chunk, conf, iou)
            if counted:
                for stage, value in zip(STAGES, measured):
                    times[(target, batch)][stage].append(value)
                done += 1
                if progress and (done % max(1, total // 10) == 0 or done == total):
                    progress(f"measured {done}/{total} runs")
        return [row(targets[t], predictors[t], b, times[(t, b)], images_label) for t, b in cells]
    finally:
        for predictor in predictors:
            predictor.close()


def _name(target: Target) -> str:
    return f"{target.backend} {target.label}".strip()


TABLE_COLUMNS = (
    ("model", "model"), ("backend", "backend"), ("precision", "prec"), ("device", "device"),
    ("batch", "batch"),
    ("pre_p50_ms", "pre p50"), ("infer_p50_ms", "infer p50"), ("infer_p90_ms", "p90"),
    ("infer_p99_ms", "p99"), ("post_p50_ms", "post p50"), ("total_p50_ms", "total p50"),
    ("total_p90_ms", "p90"), ("total_p99_ms", "p99"), ("throughput", "images/s"),
)  # fmt: skip


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """An aligned plain-text table of the rows (milliseconds; text left, numbers right)."""
    header = [title for _, title in TABLE_COLUMNS]
    body = [
        [f"{r[key]:.2f}" if isinstance(r[key], float) else str(r[key]) for key, _ in TABLE_COLUMNS]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    numeric = [isinstance(rows[0][key], (int, float)) if rows else False
               for key, _ in TABLE_COLUMNS]  # fmt: skip

    def fmt(line: list[str]) -> str:
        cells = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(line, widths, numeric)]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(header), *(fmt(line) for line in body)])
