"""Inference lanes (``--lanes``): a live server with two lanes (its default for ONNX Runtime on
the CPU) answers concurrent requests with the same detections as with one; only ONNX Runtime may
have more than one lane, the TensorRT and torch backends refuse it with a clear error (flag,
variable, backend) and get one lane by default."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from detector.cli import main
from serve.app import create_app
from serve.runtime.predictor import Predictor
from serve.settings import (
    ServeSettings,
    SettingsError,
    check_lanes,
    default_lanes,
    load_settings,
)

sys.path.insert(0, str(Path(__file__).parent))
from serve_live import LiveServer, encode, noise  # noqa: E402

CONF, IOU = 0.3, 0.45
SIZES = [(128, 128), (256, 192), (90, 150), (200, 120), (64, 96), (150, 150), (100, 60), (77, 131)]


def detect_all(server: LiveServer, images: list[bytes]) -> list[list[dict]]:
    """All images sent at once, one connection each; their detections in image order."""

    def one(data: bytes) -> list[dict]:
        with server.client() as http:
            response = http.post(
                "/v1/detect", params={"conf": CONF, "iou": IOU}, files={"image": ("i.png", data)}
            )
        assert response.status_code == 200, response.text
        return response.json()["detections"]

    with ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(one, images))


def test_two_lanes_answer_what_one_lane_answers(serve_onnx, tmp_path):
    """Eight concurrent requests (max batch 2, so several batches run at once with two lanes):
    each image gets the same detections from a 2-lane server (the default here: ONNX Runtime on
    the CPU) as from a 1-lane one."""
    images = [encode(noise(h, w, seed)) for seed, (h, w) in enumerate(SIZES)]
    answers = {}
    for lanes, lane_flags in ((1, ("--lanes", "1")), (2, ())):
        flags = (*lane_flags, "--max-batch", "2", "--max-delay-ms", "0")
        server = LiveServer(serve_onnx, tmp_path / f"lanes{lanes}", *flags)
        try:
            answers[lanes] = [detect_all(server, images) for _ in range(2)]
            assert f"max batch 2, {lanes} lane(s)" in server.stderr_path.read_text()
        finally:
            server.stop()
    found = 0
    for one_lane, two_lanes in zip(answers[1][0] + answers[1][1], answers[2][0] + answers[2][1]):
        assert [d["class_id"] for d in two_lanes] == [d["class_id"] for d in one_lane]
        np.testing.assert_allclose(
            [d["score"] for d in two_lanes], [d["score"] for d in one_lane], atol=1e-4
        )
        np.testing.assert_allclose(
            np.reshape([d["box"] for d in two_lanes], (-1, 4)),
            np.reshape([d["box"] for d in one_lane], (-1, 4)),
            atol=0.02,  # the JSON rounds boxes to 0.01 px
        )
        found += len(one_lane)
    assert found > 0


def test_default_lanes_two_only_for_onnxruntime_on_the_cpu():
    assert default_lanes("onnxruntime", ["CPUExecutionProvider"]) == 2
    assert default_lanes("onnxruntime", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == 1
    assert default_lanes("tensorrt") == 1 and default_lanes("torch") == 1
    assert load_settings(model="m.engine").lanes is None  # chosen once the backend is known


def test_only_onnxruntime_may_have_more_than_one_lane():
    check_lanes("onnxruntime", 2)
    for backend in ("tensorrt", "torch"):
        check_lanes(backend, 1)
        check_lanes(backend, None)
        with pytest.raises(SettingsError) as caught:
            check_lanes(backend, 2)
        message = str(caught.value)
        assert f"the {backend} backend runs one batch at a time" in message
        assert "--lanes" in message and "DETECTOR_LANES" in message


@pytest.mark.parametrize("suffix", [".engine", ".pt"])
def test_serve_refuses_lanes_for_tensorrt_and_torch_before_reading_the_model(
    tmp_path, monkeypatch, capsys, suffix
):
    """``detector serve`` with 2 lanes (flag or variable) on an engine or a checkpoint stops
    with one ``error:`` line (exit 2), before the file is read (it is not even a model)."""
    model = tmp_path / f"model{suffix}"
    model.write_bytes(b"not a model")
    assert main(["serve", "--model", str(model), "--lanes", "2"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "lanes (--lanes or DETECTOR_LANES)" in err
    assert "Traceback" not in err
    monkeypatch.setenv("DETECTOR_LANES", "3")
    assert load_settings(model=model).lanes == 3
    assert main(["serve", "--model", str(model)]) == 2
    assert "got 3, use 1" in capsys.readouterr().err


def test_app_refuses_two_lanes_for_a_preloaded_torch_model(serve_onnx):
    """A torch predictor handed to ``create_app`` is checked too: the app does not start."""
    pytest.importorskip("torch")
    checkpoint = serve_onnx.with_name("nano.pt")
    predictor = Predictor.from_path(checkpoint, threads=1)
    app = create_app(ServeSettings(model=checkpoint, threads=1, lanes=2), predictor)
    with pytest.raises(SettingsError, match="the torch backend runs one batch at a time"):
        with TestClient(app):
            pass
