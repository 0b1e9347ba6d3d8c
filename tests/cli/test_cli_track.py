"""``detector track`` on video files: JSON lines, stable track ids, annotated video, batching of
several sources, a missing source beside a good one, and SIGTERM mid-run.

The model is a real ONNX file run by the serving runtime (ONNX Runtime, the same
``Predictor`` as ``serve``), with nothing monkeypatched: a small hand-built graph that finds, per
colour channel, the box around the pixels where that channel dominates (a pure blue, green or
red shape on black) and outputs it in the raw ``[B, N, 5 + C]`` layout with objectness 1. The
fixtures' random-weight networks (``lively``, ``nano_onnx``) give detections that jump from
frame to frame, so they cannot show that a track follows a moving object; this graph detects
the moving shapes of the test video exactly, so the tracker's ids can be checked.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from colour_model import (  # tests/ is on sys.path (its conftest.py)
    HEIGHT,
    WIDTH,
    colour_finder_onnx,
    green_box,
    red_box,
    write_video,
)

from detector.cli import main
from serve.runtime.predictor import Predictor

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_finder_onnx(tmp_path_factory.mktemp("track_model") / "colours.onnx")


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("track_video") / "moving.mp4", 40)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def frame_count(path: Path) -> int:
    """Frames OpenCV decodes from ``path`` (0 when it cannot open it)."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.isOpened() and capture.grab():
        count += 1
    capture.release()
    return count


def test_model_finds_the_shapes(model: Path) -> None:
    """The test model through the serving runtime: the red and green squares' boxes."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[30:50, 10:30] = (0, 0, 255)
    predictor = Predictor.from_path(model)
    try:
        (found,) = predictor.predict([image])
    finally:
        predictor.close()
    assert found.classes.tolist() == [2]
    np.testing.assert_allclose(found.boxes[0], [10, 30, 30, 50], atol=1.5)


def test_track_writes_a_line_per_frame_with_stable_ids(
    model: Path, video: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code = main(["track", str(video), "--model", str(model), "--out", str(out)])
    assert code == 0
    records = read_jsonl(out / "moving.jsonl")
    assert [r["frame"] for r in records] == list(range(40))
    assert {r["source"] for r in records} == {"moving"}
    assert [r["timestamp"] for r in records[:3]] == [0.0, 0.04, 0.08]  # 25 fps
    for t, record in enumerate(records):
        by_class = {d["class_name"]: d for d in record["detections"]}
        assert set(by_class) == {"red", "green"}, record
        np.testing.assert_allclose(by_class["red"]["box"], red_box(t), atol=3)
        np.testing.assert_allclose(by_class["green"]["box"], green_box(t), atol=3)
    ids = {
        name: [next(d["track_id"] for d in r["detections"] if d["class_name"] == name)
               for r in records]
        for name in ("red", "green")
    }  # fmt: skip
    assert len(set(ids["red"])) == len(set(ids["green"])) == 1, ids
    assert ids["red"][0] != ids["green"][0] and None not in ids["red"] + ids["green"]
    assert frame_count(out / "moving.mp4") == 40


def test_no_video_and_append_for_a_service(model: Path, video: Path, tmp_path: Path) -> None:
    """``--no-video`` writes the JSON lines only; ``--append`` adds a second run's lines to the
    first's instead of rewriting the file (a service that restarts)."""
    out = tmp_path / "out"
    argv = ["track", str(video), "--model", str(model), "--out", str(out), "--no-video"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["moving.jsonl"]
    assert main([*argv, "--append"]) == 0
    frames = [r["frame"] for r in read_jsonl(out / "moving.jsonl")]
    assert frames == list(range(40)) * 2
    assert main(argv) == 0  # without --append: rewritten
    assert len(read_jsonl(out / "moving.jsonl")) == 40


def test_two_sources_run_in_one_batch(
    model: Path, video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both sources' frames go through one ``Predictor.run`` per step (a counting wrapper that
    calls the real method), and both outputs are complete."""
    second = write_video(tmp_path / "second.mp4", 25)
    seen: list[int] = []
    real_run = Predictor.run

    def counting_run(self: Predictor, batch: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(len(batch))
        return real_run(self, batch)

    monkeypatch.setattr(Predictor, "run", counting_run)
    out = tmp_path / "out"
    code = main(["track", str(video), str(second), "--model", str(model), "--out", str(out)])
    assert code == 0
    # one frame of each while both last; then two of the longer one per run, one at its end
    assert seen == [2] * 32 + [1]
    assert [r["frame"] for r in read_jsonl(out / "moving.jsonl")] == list(range(40))
    assert [r["frame"] for r in read_jsonl(out / "second.jsonl")] == list(range(25))
    assert frame_count(out / "second.mp4") == 25


@pytest.mark.parametrize("bad", ["file", "stream"])
def test_failing_source_is_named_and_the_good_one_completes(
    model: Path, video: Path, tmp_path: Path, capsys: pytest.CaptureFixture, bad: str
) -> None:
    """A file that does not exist, or a stream whose server accepts and never answers (given
    up after ``--open-timeout``)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    missing = str(tmp_path / "nowhere.mp4")
    if bad == "stream":
        missing = f"http://127.0.0.1:{listener.getsockname()[1]}/never"
    try:
        code = main(["track", missing, str(video), "--model", str(model), "--out",
                     str(tmp_path / "out"), "--open-timeout", "1"])  # fmt: skip
    finally:
        listener.close()
    assert code == 1
    assert f"error: {missing}" in capsys.readouterr().err
    assert len(read_jsonl(tmp_path / "out/moving.jsonl")) == 40


def test_zones_are_counted_per_frame(model: Path, video: Path, tmp_path: Path) -> None:
    """A line the red square crosses once (x = 60; its centre passes it at frame 20)."""
    zones = tmp_path / "zones.yaml"
    zones.write_text(
        "anchor: center\nzones:\n  - name: left\n    polygon: [[0, 0], [60, 0], [60, 120], "
        "[0, 120]]\nlines:\n  - name: gate\n    points: [[60, 0], [60, 120]]\n"
    )
    out = tmp_path / "out"
    assert main(["track", str(video), "--model", str(model), "--out", str(out), "--zones",
                 str(zones)]) == 0  # fmt: skip
    records = read_jsonl(out / "moving.jsonl")
    assert records[0]["zones"]["inside"]["left"] == {"red": 1}
    assert records[-1]["zones"]["inside"]["left"] == {}
    crossed = records[-1]["zones"]["crossings"]["gate"]
    assert sum(sum(c.values()) for c in crossed.values()) == 1
    assert sum(crossed["right_to_left"].values()) == 1  # top-to-bottom line, moving right


@pytest.mark.parametrize(
    ("option", "content", "message"),
    [
        ("--tracker", "high_threshold: [oops\n", "not valid YAML"),
        ("--tracker", "nonsense: 1\n", "unknown fields"),
        ("--zones", "lines:\n  - name: a\n    points: [[0, 0]]\n", "line 'a'"),
    ],
)
def test_bad_yaml_is_a_clear_error(
    model: Path, video: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
    option: str, content: str, message: str,
) -> None:  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(content)
    code = main(["track", str(video), "--model", str(model), option, str(config)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and str(config) in err and "Traceback" not in err


def test_missing_model_is_a_clear_error(
    video: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(["track", str(video), "--model", str(tmp_path / "none.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "none.onnx: no such model file" in err


class _Replay(http.server.BaseHTTPRequestHandler):
    """Serves the same video file at every request: a live stream that drops at the end of
    each pass and comes back when reopened."""

    video = b""

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(self.video)))
        self.end_headers()
        self.wfile.write(self.video)

    def log_message(self, *args: object) -> None:
        pass


def test_sigterm_mid_run_leaves_readable_outputs(model: Path, tmp_path: Path) -> None:
    """``detector track`` on a live HTTP stream (which never ends by itself: it is reopened
    after each pass) and a video file, in a subprocess; SIGTERM after the first JSON line."""
    long_video = write_video(tmp_path / "long.mp4", 300)
    _Replay.video = long_video.read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Replay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/live.mp4"
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "detector", "track", url, str(long_video), "--model", str(model),
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        live_jsonl = out / f"127.0.0.1_{server.server_address[1]}_live.mp4.jsonl"
        while process.poll() is None and not (
            live_jsonl.is_file() and live_jsonl.read_text().count("\n") >= 1
        ):
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGTERM)
        summary, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        server.shutdown()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    for name, spec in ((live_jsonl.stem, url), ("long", str(long_video))):
        records = read_jsonl(out / f"{name}.jsonl")  # every line parses
        assert len(records) >= 1
        assert frame_count(out / f"{name}.mp4") == len(records)
        assert f"{spec}: {len(records)} frames" in summary  # summed up on SIGTERM too
