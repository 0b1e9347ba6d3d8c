"""Command-line options that several commands share, each written once with its one default.

The defaults come from :mod:`detector.core.defaults` (torch-free, so ``detector --help`` works in
a serving install): ``predict``, ``bench``, ``export onnx --nms`` and ``export triton`` take the
prediction thresholds, ``eval`` the evaluation ones. Each help text shows the default.
"""

from __future__ import annotations

import argparse

from detector.core.defaults import EVAL_CONF, EVAL_IOU, MAX_DET, PREDICT_CONF, PREDICT_IOU


def add_prediction_options(
    parser: argparse.ArgumentParser, *, of: str = "", max_det: bool = True
) -> None:
    """``--conf``, ``--iou`` and (with ``max_det``) ``--max-det`` with the prediction defaults.

    Args:
        parser: the command's parser.
        of: when the options apply, appended to each help text (e.g. ``" with --nms"``).
        max_det: also add ``--max-det``.
    """
    parser.add_argument(
        "--conf", type=float, default=PREDICT_CONF,
        help=f"score threshold{of}, objectness x class (default {PREDICT_CONF})",
    )  # fmt: skip
    parser.add_argument(
        "--iou", type=float, default=PREDICT_IOU,
        help=f"NMS IoU threshold{of} (default {PREDICT_IOU})",
    )  # fmt: skip
    if max_det:
        parser.add_argument(
            "--max-det", type=int, default=MAX_DET,
            help=f"most detections per image{of} (default {MAX_DET})",
        )  # fmt: skip


def add_eval_options(parser: argparse.ArgumentParser) -> None:
    """``--conf`` and ``--iou`` with the evaluation defaults (a low score threshold, so that the
    precision-recall curve behind mAP is complete)."""
    parser.add_argument(
        "--conf", type=float, default=EVAL_CONF,
        help=f"score threshold of the evaluated detections (default {EVAL_CONF})",
    )  # fmt: skip
    parser.add_argument(
        "--iou", type=float, default=EVAL_IOU,
        help=f"NMS IoU threshold of the evaluated detections (default {EVAL_IOU})",
    )  # fmt: skip
