"""The serving install without PyTorch: ``pip install "detector[serve]"`` into a fresh virtual
environment, then ``detector serve`` on an exported ONNX answers a real request there.

The ONNX is exported here with the development environment's PyTorch; the fresh environment
only ever sees the file. Nothing is written outside ``tmp_path`` but pip's download cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "detector", "export", "serve", "configs")
STARTED = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
CONF, IOU = 0.3, 0.45

pytestmark = pytest.mark.slow  # a fresh venv and a pip install: about a minute


def run(*command: str | Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=timeout, **kwargs
    )


@pytest.fixture(scope="module")
def slim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``detector[serve]`` installed (non-editable) from a copy of the tree;
    returns its ``bin`` folder."""
    root = tmp_path_factory.mktemp("slim")
    source = root / "src"
    source.mkdir()
    skip = shutil.ignore_patterns("__pycache__")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=skip)
        else:
            shutil.copy2(ROOT / name, source / name)
    venv = root / "venv"
    done = run(sys.executable, "-m", "venv", venv)
    assert done.returncode == 0, done.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    done = run(venv / "bin" / "python", "-m", "pip", "install", "--quiet",
               f"{source}[serve]", timeout=900, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return venv / "bin"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    cv2.rectangle(pixels, (30, 30), (90, 90), (40, 200, 90), -1)
    path = tmp_path_factory.mktemp("slim_image") / "noise.png"
    assert cv2.imwrite(str(path), pixels)
    return path


def test_no_torch_and_dependencies_consistent(slim: Path):
    assert run(slim / "python", "-m", "pip", "check").returncode == 0
    for module in ("torch", "torchvision", "pycocotools", "matplotlib"):
        probe = run(slim / "python", "-c", f"import {module}")
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, module
    # the serving stack itself imports (and pulls no PyTorch in through a side door)
    probe = run(slim / "python", "-c", "import serve.app, serve.runtime.predictor, export.engine")
    assert probe.returncode == 0, probe.stderr


def test_cli_starts_and_training_commands_name_the_extra(slim: Path, tmp_path: Path):
    helped = run(slim / "detector", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "serve" in helped.stdout and "train" in helped.stdout
    for command, words in [
        (["train", "--model", "yolox_nano", "--data", "data.yaml"], "train"),
        (["eval", "--weights", "w.pt", "--data", "data.yaml"], "eval"),
        (["export", "onnx", "--weights", "w.pt", "--out", "m.onnx"], "export onnx"),
        (["demo"], "demo"),
    ]:
        done = run(slim / "detector", *command, cwd=tmp_path)
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr == (
            f"error: 'detector {words}' needs PyTorch: pip install \"detector[train]\"\n"
        )


def expected(onnx_model: Path, image: Path):
    """What the runtime in this (full) environment detects on ``image``."""
    from serve.runtime.predictor import Predictor

    predictor = Predictor.from_path(onnx_model, providers=["CPUExecutionProvider"], threads=1)
    [dets] = predictor.predict([cv2.imread(str(image))], conf=CONF, iou=IOU)
    assert len(dets.scores) > 0
    return dets


def assert_same(detections: list[dict], dets, box_atol: float) -> None:
    assert [d["class_id"] for d in detections] == dets.classes.tolist()
    np.testing.assert_allclose([d["score"] for d in detections], dets.scores, atol=1e-4)
    np.testing.assert_allclose([d["box"] for d in detections], dets.boxes, atol=box_atol)


def test_predict_runs_an_onnx_model(slim: Path, onnx_model: Path, image: Path, tmp_path: Path):
    done = run(slim / "detector", "predict", "--model", onnx_model, image, "--out", tmp_path,
               "--conf", str(CONF), "--iou", str(IOU))  # fmt: skip
    assert done.returncode == 0, done.stderr
    [result] = json.loads((tmp_path / "predictions.json").read_text())
    assert_same(result["detections"], expected(onnx_model, image), box_atol=1e-3)
    assert (tmp_path / image.name).is_file()  # the annotated copy


@pytest.mark.skipif(not (ROOT / "detector" / "cli" / "bench.py").is_file(), reason="no bench yet")
def test_bench_runs_an_onnx_model(slim: Path, onnx_model: Path):
    done = run(slim / "detector", "bench", "--model", onnx_model, "--repeats", "2")
    assert done.returncode == 0, done.stderr
    assert "images/s" in done.stdout


def test_serve_answers_a_detect_request(slim: Path, onnx_model: Path, image: Path, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    stderr_path = tmp_path / "stderr.log"
    command = [slim / "detector", "serve", "--model", onnx_model, "--host", "127.0.0.1",
               "--port", "0", "--threads", "1"]  # fmt: skip
    with open(stderr_path, "w") as err:
        process = subprocess.Popen([str(c) for c in command], stderr=err, env=env)
    try:
        deadline, port = time.monotonic() + 120, None
        while port is None and time.monotonic() < deadline and process.poll() is None:
            match = STARTED.search(stderr_path.read_text())
            port = int(match.group(1)) if match else time.sleep(0.1)
        assert port is not None, stderr_path.read_text()[-3000:]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, trust_env=False) as c:
            response = c.post(
                "/v1/detect",
                params={"conf": CONF, "iou": IOU},
                files={"image": (image.name, image.read_bytes(), "image/png")},
            )
            page = c.get("/")  # the web page's files ship in the wheel
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert page.status_code == 200 and "<html" in page.text.lower(), page.text[:300]
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "yolox_nano"
    assert body["image"] == {"width": 160, "height": 120}
    assert_same(body["detections"], expected(onnx_model, image), box_atol=0.01)


def test_wheel_install_carries_the_configs(slim: Path, tmp_path: Path):
    # a non-editable install has no project folder beside the package: the YAML configs come
    # with the wheel (pyproject's data-files) and detector.core.config.configs_dir() finds them
    code = (
        "from detector.core.config import configs_dir; d = configs_dir(); print(d); "
        "print(sorted(p.name for p in (d / 'models').glob('*.yaml')))"
    )
    probe = run(slim / "python", "-c", code, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    where, names = probe.stdout.splitlines()
    assert Path(where).is_relative_to(slim.parent), where
    assert "yolox_nano.yaml" in names and "yolox_x.yaml" in names
    assert (Path(where) / "train" / "default.yaml").is_file()
