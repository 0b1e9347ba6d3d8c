"""``detector predict`` on a checkpoint and on its ONNX export: one vocabulary, one output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detector.cli import main
from export.onnx import export_onnx


@pytest.fixture(scope="module")
def onnx_model(lively: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("predict_onnx") / "model.onnx"
    export_onnx(lively, out)
    return out


@pytest.fixture(scope="module")
def images(tiny_data: Path) -> list[Path]:
    return sorted((tiny_data.parent / "images").glob("*.jpg"))[:3]


def predict(out: Path, *args: str) -> tuple[int, list[dict]]:
    code = main(["predict", *args, "--out", str(out)])
    path = out / "predictions.json"
    return code, json.loads(path.read_text()) if path.is_file() else []


def test_onnx_gives_the_checkpoints_detections(
    lively: Path, onnx_model: Path, images: list[Path], tmp_path: Path
) -> None:
    sources = [str(p) for p in images]
    code_pt, from_pt = predict(tmp_path / "pt", "--model", str(lively), *sources, "--conf",
                               "0.3")  # fmt: skip
    code_onnx, from_onnx = predict(tmp_path / "onnx", "--model", str(onnx_model), *sources,
                                   "--conf", "0.3")  # fmt: skip
    assert code_pt == code_onnx == 0
    assert [r["image"] for r in from_pt] == [r["image"] for r in from_onnx] == sources
    for a, b in zip(from_pt, from_onnx):
        assert 0 < len(a["detections"]) == len(b["detections"]) < 300, a["image"]

        # equal scores (saturated sigmoids) may come in either order: compare sorted by box
        def by_box(d: dict) -> tuple:
            return (d["class_id"], *d["box"])

        for da, db in zip(sorted(a["detections"], key=by_box), sorted(b["detections"], key=by_box)):
            assert (da["class_id"], da["class_name"]) == (db["class_id"], db["class_name"])
            np.testing.assert_allclose(da["box"], db["box"], atol=1e-3)
            assert da["score"] == pytest.approx(db["score"], abs=1e-4)


def test_checkpoint_runs_through_the_serving_runtime(
    lively: Path, images: list[Path], tmp_path: Path
) -> None:
    """``predict`` on a checkpoint answers what ``serve`` and ``bench`` answer: the runtime's
    PyTorch backend, its pre- and post-processing (OpenCV NMS), at the default thresholds."""
    import cv2

    from serve.runtime.predictor import Predictor

    code, records = predict(tmp_path, "--model", str(lively), *map(str, images), "--device",
                            "cpu")  # fmt: skip
    assert code == 0
    predictor = Predictor.from_path(lively, device="cpu")
    try:
        assert predictor.backend.name == "torch"
        found = [predictor.predict([cv2.imread(str(path))])[0] for path in images]
    finally:
        predictor.close()
    assert sum(len(r["detections"]) for r in records) > 0
    for record, expected in zip(records, found):
        assert [d["class_id"] for d in record["detections"]] == expected.classes.tolist()
        assert [d["score"] for d in record["detections"]] == [
            round(float(s), 6) for s in expected.scores
        ]
        boxes = [d["box"] for d in record["detections"]]
        assert boxes == [[round(float(v), 4) for v in box] for box in expected.boxes]


def test_checkpoint_flags_and_their_errors(
    lively: Path, images: list[Path], tmp_path: Path, capsys
) -> None:
    """--imgsz is checked, an official .pth (no meta) needs --arch, and class names then are
    the class ids."""
    import torch

    from detector.models import read_checkpoint

    code = main(["predict", "--model", str(lively), str(images[0]), "--imgsz", "100",
                 "--out", str(tmp_path / "bad")])  # fmt: skip
    assert code == 2 and "multiples of 32" in capsys.readouterr().err
    official = tmp_path / "official.pth"
    torch.save({"model": read_checkpoint(lively)["model"]}, official)
    assert main(["predict", "--model", str(official), str(images[0])]) == 2
    assert "pass the model name" in capsys.readouterr().err
    code, records = predict(tmp_path / "pth", "--model", str(official), str(images[0]), "--arch",
                            "yolox_nano", "--imgsz", "128", "--conf", "0.2")  # fmt: skip
    assert code == 0 and records[0]["detections"]
    assert {d["class_name"] for d in records[0]["detections"]} <= {"0", "1", "2"}
    code = main(["predict", "--model", str(lively), str(images[0]), "--max-det", "0",
                 "--out", str(tmp_path / "zero")])  # fmt: skip
    assert code == 2 and "max_det must be at least 1" in capsys.readouterr().err


def test_classes_by_name_and_max_det(onnx_model: Path, images: list[Path], tmp_path: Path) -> None:
    glob = str(images[0].parent / "*.jpg")  # a quoted glob, expanded by predict itself
    _, everything = predict(tmp_path / "all", "--model", str(onnx_model), glob, "--conf", "0.2")
    assert len(everything) == len(list(images[0].parent.glob("*.jpg")))
    found = [d["class_name"] for r in everything for d in r["detections"]]
    assert len(set(found)) >= 2, "need two classes among the detections to test the filter"
    name = found[0]
    _, only = predict(tmp_path / "one", "--model", str(onnx_model), glob, "--conf", "0.2",
                      "--classes", name)  # fmt: skip
    kept = [d for r in only for d in r["detections"]]
    assert kept and {d["class_name"] for d in kept} == {name}
    assert len(kept) == found.count(name)
    _, capped = predict(tmp_path / "cap", "--model", str(onnx_model), glob, "--conf", "0.2",
                        "--max-det", "2")  # fmt: skip
    assert max(len(r["detections"]) for r in capped) == 2
    for full, cut in zip(everything, capped):
        assert cut["detections"] == full["detections"][:2]


def test_unknown_class_lists_the_valid_names(onnx_model: Path, images: list[Path], capsys) -> None:
    assert main(["predict", "--model", str(onnx_model), str(images[0]), "--classes", "dragon"]) == 2
    err = capsys.readouterr().err
    assert "dragon" in err and "valid names" in err


def test_corrupt_image_is_reported_and_skipped(
    lively: Path, images: list[Path], tmp_path: Path, capsys
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    sources = [str(images[0]), str(broken), str(images[1])]
    code, records = predict(tmp_path / "pred", "--model", str(lively),
                            *sources)  # fmt: skip
    assert code == 1
    assert f"skipped {broken}: not a readable image" in capsys.readouterr().out
    assert [r["image"] for r in records] == [str(images[0]), str(images[1])]
    assert (tmp_path / "pred" / images[0].name).is_file()
    assert (tmp_path / "pred" / images[1].name).is_file()
    missing = tmp_path / "nowhere.jpg"
    assert main(["predict", "--model", str(lively), str(missing)]) == 2
    assert "nowhere.jpg" in capsys.readouterr().err


def test_save_txt_writes_yolo_lines(onnx_model: Path, images: list[Path], tmp_path: Path) -> None:
    import cv2

    code, records = predict(tmp_path, "--model", str(onnx_model), str(images[0]), "--conf",
                            "0.01", "--save-txt")  # fmt: skip
    assert code == 0
    lines = (tmp_path / "labels" / f"{images[0].stem}.txt").read_text().splitlines()
    detections = records[0]["detections"]
    assert len(lines) == len(detections) > 0
    height, width = cv2.imread(str(images[0])).shape[:2]
    for line, det in zip(lines, detections):
        label, cx, cy, w, h = line.split()
        x1, y1, x2, y2 = det["box"]
        assert int(label) == det["class_id"]
        np.testing.assert_allclose(
            [float(cx), float(cy), float(w), float(h)],
            [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height],
            atol=1e-5,
        )


def test_nms_is_not_a_predict_flag(onnx_model: Path, images: list[Path], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", str(onnx_model), str(images[0]), "--nms", "0.5"])
    assert exit_info.value.code == 2
    assert "--nms" in capsys.readouterr().err


# ---------------------------------------------------------------------------- batches, videos


@pytest.fixture(scope="module")
def dynamic_model(lively: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("predict_dynamic") / "dynamic.onnx"
    return export_onnx(lively, out, dynamic=True)


@pytest.fixture(scope="module")
def mixed_sizes(images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven images of different sizes and aspect ratios (each letterboxed differently)."""
    import cv2

    folder = tmp_path_factory.mktemp("mixed")
    sizes = [(96, 128), (128, 96), (64, 64), (200, 150), (50, 120), (128, 128), (77, 91)]
    for i, (height, width) in enumerate(sizes):
        image = cv2.imread(str(images[i % len(images)]))
        cv2.imwrite(str(folder / f"img{i}.png"), cv2.resize(image, (width, height)))
    return folder


def test_batches_give_the_same_detections_as_single_images(
    dynamic_model: Path, mixed_sizes: Path, tmp_path: Path
) -> None:
    folder = str(mixed_sizes)
    code1, single = predict(tmp_path / "b1", "--model", str(dynamic_model), folder, "--batch", "1",
                            "--conf", "0.2")  # fmt: skip
    code4, four = predict(tmp_path / "b4", "--model", str(dynamic_model), folder, "--batch", "4",
                          "--conf", "0.2")  # fmt: skip
    code_default, default = predict(tmp_path / "b8", "--model", str(dynamic_model), folder,
                                    "--conf", "0.2")  # fmt: skip
    assert code1 == code4 == code_default == 0
    assert len(single) == 7 and sum(len(r["detections"]) for r in single) > 0
    assert four == single  # 4 + 3: a full and a partial batch
    assert default == single  # the default batch of a dynamic model (8): all in one run


def test_fixed_batch_model_runs_its_own_batch(
    lively: Path, dynamic_model: Path, mixed_sizes: Path, tmp_path: Path
) -> None:
    fixed = export_onnx(lively, tmp_path / "fixed3.onnx", batch=3)
    _, reference = predict(tmp_path / "ref", "--model", str(dynamic_model), str(mixed_sizes),
                           "--batch", "1", "--conf", "0.2")  # fmt: skip
    code, batched = predict(tmp_path / "fixed", "--model", str(fixed), str(mixed_sizes),
                            "--conf", "0.2")  # fmt: skip
    assert code == 0
    assert batched == reference  # 3 + 3 + 1 (padded to 3): the padding adds nothing


def write_video(path: Path, images: list[Path], frames: int = 10, fourcc: str = "mp4v") -> Path:
    """``frames`` frames of 96x128 at 10 fps: the images in turn, shifted a little each frame."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (128, 96))
    assert writer.isOpened()
    for i in range(frames):
        frame = cv2.resize(cv2.imread(str(images[i % len(images)])), (128, 96))
        writer.write(np.roll(frame, 3 * i, axis=1))
    writer.release()
    return path


def read_frames(path: Path) -> tuple[list[np.ndarray], float]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


@pytest.mark.parametrize("suffix, fourcc", [(".mp4", "mp4v"), (".avi", "MJPG")])
def test_video_is_annotated_frame_by_frame(
    dynamic_model: Path, images: list[Path], tmp_path: Path, suffix: str, fourcc: str, capsys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from detector.cli import predict as predict_module
    from serve.runtime.predictor import Predictor

    monkeypatch.setattr(predict_module, "PROGRESS_EVERY_S", 0.0)  # report after every batch
    clip = write_video(tmp_path / f"clip{suffix}", images, fourcc=fourcc)
    code, records = predict(tmp_path / "out", "--model", str(dynamic_model), str(clip),
                            "--batch", "4", "--conf", "0.2", "--save-txt")  # fmt: skip
    assert code == 0
    out, err = capsys.readouterr()
    assert f"{clip}: 10 frames" in out
    assert f"{clip}: frame 4/10" in err and f"{clip}: frame 8/10" in err  # progress, stderr
    annotated, fps = read_frames(tmp_path / "out" / "clip.mp4")
    assert len(annotated) == 10 and fps == pytest.approx(10.0)
    assert all(frame.shape == (96, 128, 3) for frame in annotated)
    assert [(r["video"], r["frame"]) for r in records] == [(str(clip), i) for i in range(10)]
    assert len(list((tmp_path / "out" / "labels").glob("clip_*.txt"))) == 10

    # each frame's detections are the model's on that decoded frame, alone
    frames, _ = read_frames(clip)
    predictor = Predictor.from_path(dynamic_model)
    try:
        for frame, record in zip(frames, records):
            [alone] = predictor.predict([frame], conf=0.2)
            assert len(record["detections"]) == len(alone.scores)
            for det, box, score in zip(record["detections"], alone.boxes, alone.scores):
                np.testing.assert_allclose(det["box"], box, atol=1e-3)
                assert det["score"] == pytest.approx(float(score), abs=1e-5)
    finally:
        predictor.close()
    assert sum(len(r["detections"]) for r in records) > 0
    # the drawn boxes changed the frames: the annotated video is not a copy
    assert any(np.abs(a.astype(int) - b.astype(int)).mean() > 1 for a, b in zip(annotated, frames))


def test_corrupt_video_is_reported_and_the_rest_processed(
    onnx_model: Path, images: list[Path], tmp_path: Path, capsys
) -> None:
    clip = write_video(tmp_path / "good.mp4", images, frames=4)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    sources = [str(images[0]), str(broken), str(clip), str(images[1])]
    code, records = predict(tmp_path / "out", "--model", str(onnx_model), *sources)
    assert code == 1
    assert f"skipped {broken}: not a readable video" in capsys.readouterr().out
    assert [r.get("image") or (r["video"], r["frame"]) for r in records] == [
        str(images[0]), *((str(clip), i) for i in range(4)), str(images[1])
    ]  # fmt: skip
    assert len(read_frames(tmp_path / "out" / "good.mp4")[0]) == 4
    assert not (tmp_path / "out" / "broken.mp4").exists()


# ------------------------------------------------------------------- streams and broken frames


def test_list_file_with_a_dead_stream_is_reported_and_the_rest_processed(
    onnx_model: Path, images: list[Path], tmp_path: Path, capsys
) -> None:
    """Sources from a ``.txt`` list, read through the same sources module as ``detector
    track``: a stream whose server never answers is skipped after ``--open-timeout`` with its
    URL named, and the images around it are predicted."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"rtsp://127.0.0.1:{listener.getsockname()[1]}/silent"
        listing = tmp_path / "sources.txt"
        listing.write_text(f"# two images and a camera\n{images[0]}\n{url}\n\n{images[1]}\n")
        code, records = predict(tmp_path / "out", "--model", str(onnx_model), str(listing),
                                "--open-timeout", "1")  # fmt: skip
    assert code == 1
    assert f"skipped {url}: " in capsys.readouterr().out
    assert [r["image"] for r in records] == [str(images[0]), str(images[1])]


def test_undecodable_video_frames_are_skipped_and_reported(
    onnx_model: Path, images: list[Path], tmp_path: Path, capsys
) -> None:
    """An MJPEG video whose frame 3 is junk: the other frames are predicted under their own
    indices, the annotated video has them all, and the skipped frame is reported."""
    import cv2
    from media_faults import write_mjpeg  # tests/ is on sys.path (its conftest.py)

    frames = [cv2.resize(cv2.imread(str(images[i % 3])), (128, 96)) for i in range(8)]
    clip = write_mjpeg(tmp_path / "glitch.avi", frames, 10.0, broken={3})
    code, records = predict(tmp_path / "out", "--model", str(onnx_model), str(clip))
    assert code == 0
    out, err = capsys.readouterr()
    assert f"{clip}: 7 frames" in out
    assert f"warning: {clip}: 1 frames failed to decode, skipped" in err
    assert [r["frame"] for r in records] == [0, 1, 2, 4, 5, 6, 7]
    assert len(read_frames(tmp_path / "out" / "glitch.mp4")[0]) == 7


def test_live_rtsp_stream_until_interrupted(tmp_path: Path) -> None:
    """``detector predict`` on GStreamer's RTSP server (``tests/rtsp_server.py``) in a
    subprocess: frames are predicted as they come (the colour finder finds the moving squares
    where they are) until Ctrl-C, which still writes predictions.json and a readable video."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from colour_model import colour_finder_onnx, green_box, red_box, write_video
    from rtsp_server import RtspServer, missing_reason

    if missing_reason() is not None:
        pytest.skip(str(missing_reason()))
    model = colour_finder_onnx(tmp_path / "colours.onnx")
    server = RtspServer(write_video(tmp_path / "shapes.mp4", 50, fps=10.0))
    server.start()
    out = tmp_path / "out"
    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "detector", "predict", "--model", str(model), server.url,
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )  # fmt: skip
    video = out / f"127.0.0.1_{server.port}_shapes.mp4"
    try:
        deadline = time.monotonic() + 120  # a hang guard, not a timing
        while not video.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a few more frames
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        server.close()
    assert process.returncode == 130, err
    records = json.loads((out / "predictions.json").read_text())
    assert records and {r["video"] for r in records} == {server.url}
    assert [r["frame"] for r in records] == list(range(len(records)))
    for record in records:
        boxes = {d["class_name"]: d["box"] for d in record["detections"]}
        assert sorted(boxes) == ["green", "red"], record
        t = round((boxes["red"][0] - red_box(0)[0]) / 2)
        np.testing.assert_allclose(boxes["red"], red_box(t), atol=3)
        np.testing.assert_allclose(boxes["green"], green_box(t), atol=3)
    assert len(read_frames(video)[0]) == len(records)
