"""SimOTA: hand-computed cases, and the vectorised version against the per-image reference."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from simota_reference import simota_assign_reference

from detector.assign import Assignment, simota_assign
from detector.models.decode import make_grid

STRIDES = (8, 16, 32)


def one_level(size: int = 32, stride: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres ``[N, 2]`` and strides ``[N]`` of one level (row-major cells)."""
    grid, stride_col = make_grid([(size // stride, size // stride)], [stride])
    return (grid + 0.5) * stride_col, stride_col[:, 0]


def cell_boxes(centres: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """``[1, N, 4]``: every anchor predicts exactly its own cell."""
    half = stride / 2
    return torch.cat((centres - half, centres + half), dim=1)[None]


def run_both(**kwargs: torch.Tensor) -> Assignment:
    """Run the vectorised and the reference version, check they agree, return the result."""
    fast = simota_assign(**kwargs)
    slow = simota_assign_reference(**kwargs)
    assert_same(fast, slow)
    return fast


def assert_same(a: Assignment, b: Assignment) -> None:
    assert torch.equal(a.fg_mask, b.fg_mask)
    assert torch.equal(a.gt_index, b.gt_index)
    torch.testing.assert_close(a.iou, b.iou, rtol=1e-5, atol=1e-6)
    assert a.num_fg == b.num_fg


def random_batch(
    seed: int, batch: int = 4, max_gt: int = 6, num_classes: int = 5, size: int = 128
) -> dict[str, torch.Tensor]:
    """Random predictions and padded targets; gt counts vary from 0 to ``max_gt``."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(size // s, size // s) for s in STRIDES]
    grid, stride = make_grid(shapes, STRIDES)
    n = len(grid)
    centre = torch.rand(batch, n, 2, generator=g) * size
    wh = torch.rand(batch, n, 2, generator=g) * size / 3 + 2
    gt_centre = torch.rand(batch, max_gt, 2, generator=g) * size
    gt_wh = torch.rand(batch, max_gt, 2, generator=g) * size / 2 + 4
    counts = torch.randint(0, max_gt + 1, (batch,), generator=g)
    counts[0] = 0  # always one image without boxes
    mask = torch.arange(max_gt)[None] < counts[:, None]
    gt = torch.cat((gt_centre - gt_wh / 2, gt_centre + gt_wh / 2), -1).clamp(0, size)
    labels = torch.randint(0, num_classes, (batch, max_gt), generator=g)
    return {
        "pred_boxes": torch.cat((centre - wh / 2, centre + wh / 2), -1),
        "cls_logits": torch.randn(batch, n, num_classes, generator=g) * 2,
        "obj_logits": torch.randn(batch, n, generator=g) * 2,
        "anchor_centers": (grid + 0.5) * stride,
        "anchor_strides": stride[:, 0],
        "gt_boxes": gt * mask[..., None],
        "gt_labels": torch.where(mask, labels, -1),
        "gt_mask": mask,
    }


def hand_inputs(
    pred: torch.Tensor, gt: list[list[float]], labels: list[int], num_classes: int = 2
) -> dict[str, torch.Tensor]:
    centres, strides = one_level()
    n = len(centres)
    return {
        "pred_boxes": pred,
        "cls_logits": torch.zeros(1, n, num_classes),
        "obj_logits": torch.zeros(1, n),
        "anchor_centers": centres,
        "anchor_strides": strides,
        "gt_boxes": torch.tensor([gt], dtype=torch.float32),
        "gt_labels": torch.tensor([labels]),
        "gt_mask": torch.ones(1, len(labels), dtype=torch.bool),
    }


def test_no_ground_truth_gives_all_background() -> None:
    inputs = random_batch(0, batch=2)
    inputs["gt_mask"] = torch.zeros_like(inputs["gt_mask"])
    inputs["gt_labels"] = torch.full_like(inputs["gt_labels"], -1)
    result = run_both(**inputs)
    n = inputs["pred_boxes"].shape[1]
    assert result.num_fg == 0
    assert not result.fg_mask.any()
    assert torch.equal(result.gt_index, torch.full((2, n), -1))
    assert not result.iou.any()


def test_zero_width_padding_gives_all_background() -> None:
    inputs = random_batch(0, batch=2)
    for key in ("gt_boxes", "gt_labels", "gt_mask"):
        inputs[key] = inputs[key][:, :0]
    result = simota_assign(**inputs)
    assert result.num_fg == 0 and result.fg_mask.shape == inputs["pred_boxes"].shape[:2]


def test_dynamic_k_from_ious_and_class_breaks_the_tie() -> None:
    # 4x4 cells of stride 8; gt = cell (1, 1) = anchor 5, the only anchor inside the box.
    centres, _ = one_level()
    pred = cell_boxes(centres)
    pred[0, 4] = torch.tensor([8.0, 8.0, 16.0, 12.0])  # IoU 0.5 with the gt
    pred[0, 6] = torch.tensor([8.0, 12.0, 16.0, 16.0])  # IoU 0.5 with the gt
    inputs = hand_inputs(pred, [[8, 8, 16, 16]], [1])
    inputs["cls_logits"][0, 6, 1] = 3.0  # anchor 6 is more confident -> cheaper than 4
    result = run_both(**inputs)
    # k = int(1 + 0.5 + 0.5) = 2: anchor 5 (in box and centre) and the cheaper of 4 / 6
    assert result.fg_mask[0].nonzero().flatten().tolist() == [5, 6]
    assert result.gt_index[0, [5, 6]].tolist() == [0, 0]
    assert result.iou[0, [5, 6]].tolist() == [1.0, 0.5]
    assert result.num_fg == 2


def test_two_boxes_competing_for_one_anchor_go_to_the_cheaper() -> None:
    centres, _ = one_level()
    pred = cell_boxes(centres)  # anchor 5 predicts [8, 8, 16, 16]
    inputs = hand_inputs(pred, [[4, 4, 20, 20], [8, 8, 16, 16]], [0, 0])
    result = run_both(**inputs)
    # both gts have k = 1 and pick anchor 5 (their only anchor in box and centre region);
    # IoU 0.25 vs 1 -> it goes to gt 1, gt 0 is left without an anchor
    assert result.fg_mask[0].nonzero().flatten().tolist() == [5]
    assert int(result.gt_index[0, 5]) == 1
    assert float(result.iou[0, 5]) == 1.0

    # the same boxes, but the class score now favours gt 0 by more than the IoU cost difference
    inputs = hand_inputs(pred, [[4, 4, 20, 20], [8, 8, 16, 16]], [0, 1])
    inputs["cls_logits"][0, 5] = torch.tensor([8.0, -8.0])
    inputs["obj_logits"][0, 5] = 8.0
    result = run_both(**inputs)
    assert int(result.gt_index[0, 5]) == 0
    assert math.isclose(float(result.iou[0, 5]), 0.25)


@pytest.mark.parametrize("seed", range(8))
def test_vectorised_equals_reference_on_random_batches(seed: int) -> None:
    inputs = random_batch(seed, batch=4, max_gt=3 + seed % 5, num_classes=3 + seed)
    result = run_both(**inputs)
    assert result.num_fg > 0
    assert not result.fg_mask[0].any()  # image 0 has no boxes
    # every foreground anchor points at a real (unpadded) box of its own image
    b, n = result.fg_mask.nonzero(as_tuple=True)
    assert inputs["gt_mask"][b, result.gt_index[b, n]].all()
    assert (result.iou[result.fg_mask] >= 0).all() and (result.iou <= 1).all()


def test_padding_position_does_not_matter() -> None:
    inputs = random_batch(3, batch=3, max_gt=4)
    base = simota_assign(**inputs)
    # more padding rows at the end change nothing
    padded = dict(inputs)
    padded["gt_boxes"] = torch.cat((inputs["gt_boxes"], torch.zeros(3, 5, 4)), 1)
    padded["gt_labels"] = torch.cat((inputs["gt_labels"], torch.full((3, 5), -1)), 1)
    padded["gt_mask"] = torch.cat((inputs["gt_mask"], torch.zeros(3, 5, dtype=torch.bool)), 1)
    assert_same(base, simota_assign(**padded))


def test_inputs_untouched_no_grad_and_frozen_result() -> None:
    inputs = random_batch(1, batch=2)
    inputs["cls_logits"].requires_grad_(True)
    before = {k: v.detach().clone() for k, v in inputs.items()}
    result = simota_assign(**inputs)
    for key, value in inputs.items():
        assert torch.equal(value.detach(), before[key]), key
    assert not result.iou.requires_grad
    assert result.fg_mask.dtype == torch.bool and result.gt_index.dtype == torch.long
    assert result.iou.dtype == torch.float32
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.num_fg = 3  # type: ignore[misc]


def test_half_precision_inputs_are_assigned_in_float32() -> None:
    inputs = random_batch(2, batch=2)
    half = {k: v.half() if v.is_floating_point() else v for k, v in inputs.items()}
    result = simota_assign(**half)
    assert result.iou.dtype == torch.float32 and result.num_fg > 0


def test_bad_shapes_name_the_argument() -> None:
    inputs = random_batch(0, batch=2)
    inputs["obj_logits"] = inputs["obj_logits"][..., None]
    with pytest.raises(ValueError, match="obj_logits"):
        simota_assign(**inputs)
    inputs = random_batch(0, batch=2)
    inputs["gt_labels"] = inputs["gt_labels"][:, :1]
    with pytest.raises(ValueError, match="gt_labels"):
        simota_assign(**inputs)
