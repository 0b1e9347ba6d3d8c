"""detector.core.defaults: the prediction and evaluation values, checked where they are made."""

from __future__ import annotations

import subprocess
import sys

import pytest

from detector.core.defaults import (
    EVAL_CONF,
    MAX_DET,
    PREDICT_CONF,
    PREDICT_IOU,
    PredictParams,
    check_input_size,
)


def test_prediction_and_evaluation_values_are_separate_decisions():
    assert PredictParams() == PredictParams(PREDICT_CONF, PREDICT_IOU, MAX_DET, None)
    # mAP needs the low-score detections that a user does not want to see
    assert EVAL_CONF < PREDICT_CONF
    assert MAX_DET == 300


@pytest.mark.parametrize(
    ("values", "message"),
    [({"conf": 1.5}, "conf must be within"), ({"iou": -0.1}, "iou must be within"),
     ({"max_det": 0}, "max_det must be at least 1")],
)  # fmt: skip
def test_predict_params_refuse_values_out_of_range(values, message):
    with pytest.raises(ValueError, match=message):
        PredictParams(**values)


def test_check_input_size():
    assert check_input_size(416) == (416, 416)
    assert check_input_size((320, 640)) == (320, 640)
    assert check_input_size([64, 96]) == (64, 96)
    for bad in (100, 0, -32, (64,), (64, 64, 64), (64, 100)):
        with pytest.raises(ValueError, match=r"--imgsz: input size must be positive multiples"):
            check_input_size(bad, source="--imgsz")


def test_importing_them_needs_no_third_party_package():
    code = "import sys, detector.core.defaults\nassert 'numpy' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
