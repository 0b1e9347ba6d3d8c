"""Every command's threshold flags default to detector.core.defaults, and a help text says so."""

from __future__ import annotations

import pytest

from detector.cli import build_parser
from detector.core.defaults import EVAL_CONF, EVAL_IOU, MAX_DET, PREDICT_CONF, PREDICT_IOU

PREDICTION = {"conf": PREDICT_CONF, "iou": PREDICT_IOU, "max_det": MAX_DET}


def defaults(*argv: str) -> dict[str, object]:
    args = build_parser(argv[0]).parse_args(list(argv))
    return {k: getattr(args, k) for k in ("conf", "iou", "max_det") if hasattr(args, k)}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("predict", "--model", "m.onnx", "a.jpg"), PREDICTION),
        (("export", "onnx", "--weights", "w.pt", "--out", "m.onnx"), PREDICTION),
        (("export", "triton", "--model", "m.onnx", "--out", "repo"), PREDICTION),
        (("bench", "--model", "m.onnx"), {"conf": PREDICT_CONF, "iou": PREDICT_IOU}),
        (("eval", "--weights", "w.pt", "--data", "d.yaml"), {"conf": EVAL_CONF, "iou": EVAL_IOU}),
    ],
)
def test_flag_defaults(argv, expected):
    assert defaults(*argv) == expected


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser("predict").parse_args(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {PREDICT_CONF})" in text and f"(default {PREDICT_IOU})" in text
    assert f"(default {MAX_DET})" in text
    with pytest.raises(SystemExit):
        build_parser("eval").parse_args(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {EVAL_CONF})" in text and f"(default {EVAL_IOU})" in text
