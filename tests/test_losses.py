"""The YOLOX loss: named terms, images without boxes, gradients, L1 phase, a hand case and the
official YOLOXHead.get_losses on the same raw outputs."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from detector.core.boxes import xyxy_to_cxcywh
from detector.losses import YOLOXLoss, paired_iou_loss

STRIDES = (8, 16, 32)
TERMS = {"total", "iou", "obj", "cls", "l1", "num_fg"}


def random_maps(
    seed: int, batch: int = 2, num_classes: int = 3, size: int = 64, box_size: float = 0.0
) -> list[torch.Tensor]:
    """Raw maps with logits ~ N(0, 0.5); with ``box_size``, predicted boxes are about that big on
    every level (so they overlap the gts, dynamic k exceeds 1 and gts compete for anchors)."""
    g = torch.Generator().manual_seed(seed)
    maps = []
    for s in STRIDES:
        m = torch.randn(batch, 5 + num_classes, size // s, size // s, generator=g) * 0.5
        if box_size:
            m[:, 2:4] += math.log(box_size / s)
        maps.append(m.requires_grad_(True))
    return maps


def random_targets(
    seed: int, batch: int = 2, max_gt: int = 4, num_classes: int = 3, size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded targets (real boxes first); image 0 has none."""
    g = torch.Generator().manual_seed(seed + 1000)
    centre = torch.rand(batch, max_gt, 2, generator=g) * size * 0.8 + size * 0.1
    wh = torch.rand(batch, max_gt, 2, generator=g) * size * 0.4 + 6
    boxes = torch.cat((centre - wh / 2, centre + wh / 2), -1).clamp(0.5, size - 0.5)
    counts = torch.randint(1, max_gt + 1, (batch,), generator=g)
    counts[0] = 0
    mask = torch.arange(max_gt)[None] < counts[:, None]
    labels = torch.randint(0, num_classes, (batch, max_gt), generator=g)
    return boxes * mask[..., None], torch.where(mask, labels, -1)


def test_terms_are_named_finite_and_add_up() -> None:
    maps = random_maps(0)
    boxes, labels = random_targets(0)
    out = YOLOXLoss(3)(maps, boxes, labels, use_l1=True)
    assert set(out) == TERMS
    for name, value in out.items():
        assert value.ndim == 0 and torch.isfinite(value), name
    parts = out["iou"] + out["obj"] + out["cls"] + out["l1"]
    torch.testing.assert_close(out["total"], parts)
    assert out["num_fg"] > 0 and not out["num_fg"].requires_grad


def test_images_without_boxes_only_push_objectness_down() -> None:
    maps = random_maps(1)
    boxes = torch.zeros(2, 3, 4)
    labels = torch.full((2, 3), -1)
    out = YOLOXLoss(3)(maps, boxes, labels, use_l1=True)
    assert out["num_fg"] == 0
    for name in ("iou", "cls", "l1"):
        assert out[name] == 0, name
    assert out["obj"] > 0 and out["total"] == out["obj"]
    out["total"].backward()
    for m in maps:
        assert (m.grad[:, 4] > 0).all()  # descent lowers every objectness logit
        assert not m.grad[:, :4].any() and not m.grad[:, 5:].any()


def test_gradients_reach_every_level_and_channel_group() -> None:
    maps = random_maps(2)
    boxes, labels = random_targets(2)
    YOLOXLoss(3)(maps, boxes, labels, use_l1=True)["total"].backward()
    for m in maps:
        assert torch.isfinite(m.grad).all()
    grads = torch.cat([m.grad.flatten(2) for m in maps], dim=2)  # [B, 5 + C, N]
    assert grads[:, :4].abs().sum() > 0  # reg (IoU + L1)
    assert grads[:, 4].abs().sum() > 0  # obj
    assert grads[:, 5:].abs().sum() > 0  # cls


def test_l1_only_with_use_l1() -> None:
    maps = random_maps(3)
    boxes, labels = random_targets(3)
    loss = YOLOXLoss(3)
    without = loss(maps, boxes, labels)
    with_l1 = loss(maps, boxes, labels, use_l1=True)
    assert without["l1"] == 0 and with_l1["l1"] > 0
    for name in ("iou", "obj", "cls", "num_fg"):
        torch.testing.assert_close(without[name], with_l1[name])
    torch.testing.assert_close(with_l1["total"] - without["total"], with_l1["l1"])


def test_tiny_hand_case() -> None:
    # one level, stride 8, 4x4 cells, one class; the gt is cell (1, 1) = anchor 5
    raw = torch.zeros(1, 6, 4, 4)
    raw[0, 0:2] = 0.5  # every anchor predicts a box centred in its own cell ...
    raw[0, 2:4, 1, 1] = math.log(2.0)  # ... of 8x8, except anchor 5: 16x16, [4, 4, 20, 20]
    loss = YOLOXLoss(1, strides=(8,))
    out = loss([raw], torch.tensor([[[8.0, 8.0, 16.0, 16.0]]]), torch.tensor([[0]]), use_l1=True)
    # IoU(anchor 5, gt) = 64 / 256; every other box does not overlap -> k = 1, one fg anchor
    assert out["num_fg"] == 1
    torch.testing.assert_close(out["iou"], torch.tensor(5.0 * (1 - 0.25**2)))
    torch.testing.assert_close(out["obj"], torch.tensor(16 * math.log(2.0)))  # logit 0 everywhere
    torch.testing.assert_close(out["cls"], torch.tensor(math.log(2.0)))  # target 0.25, logit 0
    # target offsets (12 / 8 - 1, 12 / 8 - 1, log 1, log 1) vs raw (0.5, 0.5, log 2, log 2)
    torch.testing.assert_close(out["l1"], torch.tensor(2 * math.log(2.0)))


def test_giou_type_and_bad_arguments() -> None:
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    torch.testing.assert_close(paired_iou_loss(pred, target, "iou"), torch.tensor([0.0, 1.0]))
    # GIoU of disjoint boxes: 0 - (300 - 200) / 300
    torch.testing.assert_close(
        paired_iou_loss(pred, target, "giou"), torch.tensor([0.0, 1 + 1 / 3])
    )
    with pytest.raises(ValueError, match="iou_type"):
        YOLOXLoss(3, iou_type="diou")
    maps = random_maps(4)
    boxes, labels = random_targets(4)
    with pytest.raises(ValueError, match="maps"):
        YOLOXLoss(4)(maps, boxes, labels)
    with pytest.raises(ValueError, match="labels"):
        YOLOXLoss(3)(maps, boxes, labels[:, :1])
    out = YOLOXLoss(3, iou_type="giou")(maps, boxes, labels)
    assert torch.isfinite(out["total"])


def test_autocast_inputs_give_float32_terms() -> None:
    maps = random_maps(5)
    boxes, labels = random_targets(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = YOLOXLoss(3)([m.bfloat16() for m in maps], boxes, labels, use_l1=True)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    out["total"].backward()
    assert all(torch.isfinite(m.grad).all() for m in maps)


# ---- against the official YOLOX ----------------------------------------------------------------

HAVE_YOLOX = importlib.util.find_spec("yolox") is not None


def official_losses(
    maps: list[torch.Tensor], boxes: torch.Tensor, labels: torch.Tensor, use_l1: bool
) -> dict[str, float]:
    """``YOLOXHead.get_losses`` on the same raw maps, targets as ``[B, M, 5]`` class, cx, cy, w, h
    (padding rows all zero, after the real ones)."""
    from yolox.models.yolo_head import YOLOXHead

    num_classes = maps[0].shape[1] - 5
    head = YOLOXHead(num_classes, width=0.25, strides=list(STRIDES))
    head.use_l1 = use_l1  # the official switch; set here on a throw-away head only
    outputs, x_shifts, y_shifts, strides, origin = [], [], [], [], []
    for m, stride in zip(maps, STRIDES):
        batch, _, height, width = m.shape
        flat = m.flatten(2).permute(0, 2, 1)  # [B, HW, 5 + C]
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        grid = torch.stack((xs, ys), 2).reshape(1, -1, 2).float()
        decoded = torch.cat(
            ((flat[..., :2] + grid) * stride, flat[..., 2:4].exp() * stride, flat[..., 4:]), -1
        )
        outputs.append(decoded)
        x_shifts.append(grid[..., 0])
        y_shifts.append(grid[..., 1])
        strides.append(torch.full((1, height * width), float(stride)))
        origin.append(flat[..., :4])
    targets = torch.cat((labels[..., None].float(), xyxy_to_cxcywh(boxes)), -1)
    targets = targets * (labels >= 0)[..., None]
    total, iou, obj, cls, l1, _ = head.get_losses(
        None, x_shifts, y_shifts, strides, targets, torch.cat(outputs, 1), origin, torch.float32
    )
    return {"total": total, "iou": iou, "obj": obj, "cls": cls, "l1": l1}


@pytest.mark.skipif(
    not HAVE_YOLOX,
    reason="the official yolox package is not installed ('make reference' installs it); "
    "nothing to compare against",
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("use_l1", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_official_get_losses(seed: int, use_l1: bool) -> None:
    num_classes, batch = 4 + seed, 3
    maps = random_maps(seed, batch=batch, num_classes=num_classes, size=96, box_size=32)
    boxes, labels = random_targets(seed, batch=batch, max_gt=8, num_classes=num_classes, size=96)
    ours = YOLOXLoss(num_classes)(maps, boxes, labels, use_l1=use_l1)
    assert ours["num_fg"] > (labels >= 0).sum()  # dynamic k > 1 for some gts
    theirs = official_losses(maps, boxes, labels, use_l1)
    for name, value in theirs.items():
        expected = torch.as_tensor(value, dtype=torch.float32)
        torch.testing.assert_close(ours[name].detach(), expected.detach(), rtol=1e-4, atol=1e-4)
    # and the gradients agree too
    grads_ours = torch.autograd.grad(ours["total"], maps)
    theirs = official_losses(maps, boxes, labels, use_l1)
    grads_theirs = torch.autograd.grad(theirs["total"], maps)
    for a, b in zip(grads_ours, grads_theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_with_the_real_nano_model() -> None:
    from detector.models import build_model

    torch.manual_seed(0)
    model = build_model("yolox_nano", num_classes=3).train()
    boxes, labels = random_targets(6, batch=2, num_classes=3, size=64)
    maps = model(torch.rand(2, 3, 64, 64) * 255)
    out = YOLOXLoss(3)(maps, boxes, labels, use_l1=True)
    assert out["num_fg"] > 0 and torch.isfinite(out["total"])
    out["total"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
