"""Seconds per training step, ours against the official YOLOX, side by side in one process (CPU).

One step = forward in train mode + loss (SimOTA included) + backward + SGD step, on a fixed
synthetic batch (random images, a few random boxes per image, 80 classes). The official trainer is
CUDA-only, so its model, its loss (``YOLOXHead.get_losses``) and its SGD (``exp.get_optimizer``)
are timed in the same loop; ours uses ``detector.training.optim.build_sgd`` (the same three groups).
The two sides alternate (order flipped every round); we report medians over the rounds and the
share of the step spent in label assignment (``simota_assign`` here, ``get_assignments`` summed
over the images there). A third side, ``ours_amp``, is ours with mixed precision as the trainer
applies it by default (``amp: true``: bfloat16 autocast on CPUs with AMX). Each round also times
the loss alone (forward + backward from the same raw maps) on both sides, which isolates the
assignment and loss from the network.

    .venv/bin/python benchmarks/train_step.py                       # nano@416 b8, s@640 b4
    .venv/bin/python benchmarks/train_step.py --cases nano --repeats 5
"""

from __future__ import annotations

import argparse
import functools
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

import detector.losses
from detector.core.boxes import xyxy_to_cxcywh
from detector.losses import YOLOXLoss
from detector.models import build_model
from detector.training.optim import build_sgd
from detector.training.precision import autocast_dtype, describe

LOG = logging.getLogger("train_step")

# name -> (our model name, official exp name, input size, batch)
CASES = {
    "nano": ("yolox_nano", "yolox-nano", 416, 8),
    "tiny": ("yolox_tiny", "yolox-tiny", 416, 8),
    "s": ("yolox_s", "yolox-s", 640, 4),
}
NUM_CLASSES = 80
SIMOTA_ASSIGN = detector.losses.simota_assign  # the loss module calls it by this name


@dataclass
class Timer:
    """Accumulates the time spent in a wrapped function during one step."""

    seconds: float = 0.0
    calls: int = 0
    per_step: list[float] = field(default_factory=list)

    def wrap(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        return timed

    def close_step(self) -> None:
        self.per_step.append(self.seconds)
        self.seconds = 0.0


def synthetic_batch(
    size: int, batch: int, boxes_per_image: int, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Images ``[B, 3, S, S]`` (0..255 like YOLOX's training input), boxes ``[B, M, 4]`` xyxy
    and labels ``[B, M]``; image ``i`` has ``1 + i % boxes_per_image`` boxes, the rest padding."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g) * 255
    centre = torch.rand(batch, boxes_per_image, 2, generator=g) * size * 0.7 + size * 0.15
    wh = torch.rand(batch, boxes_per_image, 2, generator=g) * size * 0.3 + 16
    boxes = torch.cat((centre - wh / 2, centre + wh / 2), -1).clamp(1, size - 1)
    counts = 1 + torch.arange(batch) % boxes_per_image
    mask = torch.arange(boxes_per_image)[None] < counts[:, None]
    labels = torch.randint(0, NUM_CLASSES, (batch, boxes_per_image), generator=g)
    return images, boxes * mask[..., None], torch.where(mask, labels, -1)


class Side:
    """One model + loss + optimiser, with a ``step()`` that returns its wall time."""

    name: str
    assign_timer: Timer

    def step(self) -> float:
        raise NotImplementedError

    def loss_only(self, maps: list[Tensor]) -> float:
        """Seconds for the loss forward + backward from raw maps ``[B, 5 + C, H_i, W_i]``."""
        raise NotImplementedError


class Ours(Side):
    name = "ours"

    def __init__(self, model_name: str, images: Tensor, boxes: Tensor, labels: Tensor) -> None:
        # as our trainer runs it by default (channels_last: true): NHWC network and input
        self.model = build_model(model_name, NUM_CLASSES).train()
        self.model = self.model.to(memory_format=torch.channels_last)
        self.loss = YOLOXLoss(NUM_CLASSES)
        self.optim = build_sgd(self.model, lr=1e-4)  # our trainer's: YOLOX's three groups
        images = images.contiguous(memory_format=torch.channels_last)
        self.images, self.boxes, self.labels = images, boxes, labels
        self.assign_timer = Timer()
        self._timed_assign = self.assign_timer.wrap(SIMOTA_ASSIGN)

    def _time_assignment(self) -> None:
        """Route the loss module's ``simota_assign`` through this side's timer."""
        detector.losses.simota_assign = self._timed_assign

    def forward(self) -> list[Tensor]:
        """The raw maps of the fixed batch, float32."""
        return self.model(self.images)

    def step(self) -> float:
        self._time_assignment()
        start = time.perf_counter()
        loss = self.loss(self.forward(), self.boxes, self.labels)["total"]
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        elapsed = time.perf_counter() - start
        self.assign_timer.close_step()
        return elapsed

    def loss_only(self, maps: list[Tensor]) -> float:
        self._time_assignment()
        start = time.perf_counter()
        self.loss(maps, self.boxes, self.labels)["total"].backward()
        elapsed = time.perf_counter() - start
        self.assign_timer.close_step()
        return elapsed


class OursAmp(Ours):
    """Ours with ``amp: true`` as the trainer applies it on this device (bfloat16 autocast on CPUs
    with AMX, float32 elsewhere); the loss runs on float32 maps, as in the trainer."""

    name = "ours_amp"

    def __init__(self, model_name: str, images: Tensor, boxes: Tensor, labels: Tensor) -> None:
        super().__init__(model_name, images, boxes, labels)
        self.dtype = autocast_dtype(torch.device("cpu"), amp=True)

    def forward(self) -> list[Tensor]:
        with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype is not None):
            maps = self.model(self.images)
        return [m.float() for m in maps]


class OursNCHW(Ours):
    """Ours in float32 with ``channels_last: false``: what the NHWC layout is worth here."""

    name = "ours_nchw"

    def __init__(self, model_name: str, images: Tensor, boxes: Tensor, labels: Tensor) -> None:
        super().__init__(model_name, images, boxes, labels)
        # in place: the parameters stay the ones the optimizer built above holds
        self.model = self.model.to(memory_format=torch.contiguous_format)
        self.images = images.contiguous()


class Yolo11n(Side):
    """Ultralytics yolo11n as its trainer takes a step on the CPU: float32, NCHW, its
    ``v8DetectionLoss`` (task-aligned assignment, DFL) through ``model.loss``, AdamW (what its
    ``optimizer=auto`` picks for short runs). Only where ``ultralytics`` is importable (AGPL: a
    separate environment, see peer_ultralytics.py); its assignment time is not split out."""

    name = "yolo11n"

    def __init__(self, images: Tensor, boxes: Tensor, labels: Tensor) -> None:
        from ultralytics.cfg import get_cfg
        from ultralytics.nn.tasks import DetectionModel

        self.model = DetectionModel("yolo11n.yaml", nc=NUM_CLASSES, verbose=False).train()
        self.model.args = get_cfg()  # the loss gains (box, cls, dfl) its trainer sets
        self.optim = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        size = images.shape[-1]
        keep = labels >= 0
        image_index = torch.arange(labels.shape[0])[:, None].expand_as(labels)[keep]
        self.batch = {
            "img": images / 255.0,  # its loader's float input
            "batch_idx": image_index.float(),
            "cls": labels[keep].float()[:, None],
            "bboxes": xyxy_to_cxcywh(boxes[keep]) / size,  # normalised cx, cy, w, h
        }
        self.assign_timer = Timer()

    def step(self) -> float:
        start = time.perf_counter()
        loss, _ = self.model.loss(self.batch)
        self.optim.zero_grad(set_to_none=True)
        loss.sum().backward()
        self.optim.step()
        elapsed = time.perf_counter() - start
        self.assign_timer.close_step()
        return elapsed

    def loss_only(self, maps: list[Tensor]) -> float:
        """Not comparable (other head outputs): reported as 0."""
        self.assign_timer.close_step()
        return 0.0


def peer_available() -> bool:
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        return False
    return True


class Official(Side):
    name = "official"

    def __init__(self, exp_name: str, images: Tensor, boxes: Tensor, labels: Tensor) -> None:
        from yolox.exp import get_exp

        exp = get_exp(exp_name=exp_name)
        exp.num_classes = NUM_CLASSES
        self.model = exp.get_model().train()
        self.optim = exp.get_optimizer(images.shape[0])  # its trainer's: the same three groups
        # official targets: [B, M, 5] = class, cx, cy, w, h; padding rows all zero
        targets = torch.cat((labels[..., None].float(), xyxy_to_cxcywh(boxes)), -1)
        self.targets = targets * (labels >= 0)[..., None]
        self.images = images
        self.assign_timer = Timer()
        head = self.model.head
        head.get_assignments = self.assign_timer.wrap(head.get_assignments)

    def step(self) -> float:
        start = time.perf_counter()
        loss = self.model(self.images, self.targets)["total_loss"]
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        elapsed = time.perf_counter() - start
        self.assign_timer.close_step()
        return elapsed

    def loss_only(self, maps: list[Tensor]) -> float:
        """The official head's own training-mode path from its raw outputs: decode per level
        (``get_output_and_grid``), then ``get_losses``."""
        head = self.model.head
        maps = [m.clone() for m in maps]  # non-leaf, as in its forward (it decodes in place)
        start = time.perf_counter()
        outputs, x_shifts, y_shifts, strides = [], [], [], []
        for k, (m, stride) in enumerate(zip(maps, head.strides)):
            out, grid = head.get_output_and_grid(m, k, stride, m.type())
            outputs.append(out)
            x_shifts.append(grid[:, :, 0])
            y_shifts.append(grid[:, :, 1])
            strides.append(torch.full((1, grid.shape[1]), float(stride)))
        losses = head.get_losses(
            None, x_shifts, y_shifts, strides, self.targets, torch.cat(outputs, 1), [], m.dtype
        )
        losses[0].backward()
        elapsed = time.perf_counter() - start
        self.assign_timer.close_step()
        return elapsed


def run_case(
    case: str, repeats: int, warmup: int, boxes_per_image: int, extra: bool = False
) -> dict[str, object]:
    """Time every side on one case; ``extra`` adds ``ours_nchw`` and, where Ultralytics is
    installed, ``yolo11n``."""
    ours_name, exp_name, size, batch = CASES[case]
    images, boxes, labels = synthetic_batch(size, batch, boxes_per_image, seed=0)
    torch.manual_seed(0)
    sides: list[Side] = [
        Official(exp_name, images, boxes, labels),
        Ours(ours_name, images, boxes, labels),
        OursAmp(ours_name, images, boxes, labels),
    ]
    if extra:
        sides.append(OursNCHW(ours_name, images, boxes, labels))
        if peer_available():
            sides.append(Yolo11n(images, boxes, labels))
    with torch.no_grad():
        raw = [m.detach() for m in sides[1].model(images)]  # type: ignore[attr-defined]
    times: dict[str, list[float]] = {s.name: [] for s in sides}
    loss_times: dict[str, list[float]] = {s.name: [] for s in sides}
    for round_index in range(warmup + repeats):
        order = sides if round_index % 2 == 0 else sides[::-1]
        for side in order:
            elapsed = side.step()
            loss_elapsed = side.loss_only([m.clone().requires_grad_(True) for m in raw])
            side.assign_timer.per_step.pop()  # keep the assignment time of the full steps
            if round_index >= warmup:
                times[side.name].append(elapsed)
                loss_times[side.name].append(loss_elapsed)
            else:
                side.assign_timer.per_step.clear()
        LOG.info(
            "%s round %d: step %s, loss only %s",
            case,
            round_index,
            {k: v[-1:] for k, v in times.items()},
            {k: v[-1:] for k, v in loss_times.items()},
        )
    result: dict[str, object] = {"case": case, "size": size, "batch": batch}
    for side in sides:
        step = statistics.median(times[side.name])
        assign = statistics.median(side.assign_timer.per_step)
        result[side.name] = {
            "step_s": step,
            "step_min_s": min(times[side.name]),
            "assign_s": assign,
            "assign_share": assign / step,
            "loss_s": statistics.median(loss_times[side.name]),
        }
    official = result["official"]
    for name in [s.name for s in sides if s.name != "official"]:
        ours = result[name]
        result[f"{name}_ratio"] = ours["step_s"] / official["step_s"]  # type: ignore[index]
        result[f"{name}_loss_ratio"] = ours["loss_s"] / official["loss_s"]  # type: ignore[index]
        result[f"{name}_min_ratio"] = ours["step_min_s"] / official["step_min_s"]  # type: ignore[index]
    result["sides"] = [s.name for s in sides]
    detector.losses.simota_assign = SIMOTA_ASSIGN
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--boxes", type=int, default=4, help="at most this many boxes per image")
    parser.add_argument(
        "--extra",
        action="store_true",
        help="also ours in NCHW float32 and, where Ultralytics is installed, yolo11n",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"threads {args.threads}, repeats {args.repeats} (+{args.warmup} warm-up), "
        f"1..{args.boxes} boxes per image, {NUM_CLASSES} classes; ours_amp = "
        f"{describe(autocast_dtype(torch.device('cpu'), amp=True))}"
    )
    print(
        "| case | side | step s (median) | side / official | step s (min) | side / official "
        "| assignment s (in the step) | assignment share | loss fwd+bwd alone s | side / official |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        r = run_case(case, args.repeats, args.warmup, args.boxes, args.extra)
        for side in r["sides"]:  # type: ignore[union-attr]
            s = r[side]
            ratio = f"{r[side + '_ratio']:.2f}" if side != "official" else ""
            loss_ratio = f"{r[side + '_loss_ratio']:.2f}" if side != "official" else ""
            if side == "yolo11n":  # its loss is not split out
                loss_ratio = "-"
            min_ratio = f"{r[side + '_min_ratio']:.2f}" if side != "official" else ""
            print(
                f"| {case}@{r['size']} b{r['batch']} | {side} | {s['step_s']:.3f} | {ratio} | "
                f"{s['step_min_s']:.3f} | {min_ratio} | "
                f"{s['assign_s']:.4f} | {s['assign_share']:.1%} | {s['loss_s']:.3f} | "
                f"{loss_ratio} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
