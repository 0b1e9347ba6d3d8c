"""``detector bench`` on a real ONNX export and its checkpoint: the table, the JSON rows, images
from --source, torch-free for ONNX, and clear errors for bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.cli import main
from serve.runtime.bench import PERCENTILES, STAGES, schedule, synthetic_images

FIELDS = {"model", "backend", "precision", "device", "batch", "imgsz", "images", "repeats",
          "throughput"} | {f"{s}_p{p}_ms" for s in STAGES for p in PERCENTILES}  # fmt: skip
QUICK = ["--repeats", "3", "--warmup", "1", "--threads", "1"]


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """``--threads 1`` sets torch's process-wide thread count; give the next tests theirs."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def onnx_model(lively: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "lively.onnx"
    assert main(["export", "onnx", "--weights", str(lively), "--out", str(out), "--dynamic"]) == 0
    return out


def check_rows(rows: list[dict], expected: list[tuple[str, str, int]]) -> None:
    assert [(r["model"], r["backend"], r["batch"]) for r in rows] == expected
    for r in rows:
        assert set(r) == FIELDS
        assert r["precision"] == "fp32" and r["device"] == "cpu" and r["imgsz"] == "128x128"
        assert r["repeats"] == 3 and r["throughput"] > 0
        for stage in STAGES:
            values = [r[f"{stage}_p{p}_ms"] for p in PERCENTILES]
            assert values[0] > 0 and values == sorted(values), (stage, values)
        for p in PERCENTILES:  # every run's total is the sum of its stages
            assert r[f"total_p{p}_ms"] >= r[f"infer_p{p}_ms"] - 1e-3


def test_bench_onnx_and_checkpoint(onnx_model, lively, tmp_path, capsys):
    out = tmp_path / "rows.json"
    code = main(["bench", "--model", str(onnx_model), "--model", str(lively),
                 "--batch", "1,2", "--json", str(out), *QUICK])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    rows = json.loads(out.read_text())
    check_rows(rows, [("lively.onnx", "onnxruntime", 1), ("lively.onnx", "onnxruntime", 2),
                      ("lively.pt", "torch", 1), ("lively.pt", "torch", 2)])  # fmt: skip
    assert all(r["images"] == "synthetic 640x480" for r in rows)
    lines = captured.out.splitlines()
    assert lines[0].split()[:5] == ["model", "backend", "prec", "device", "batch"]
    assert lines[0].split()[-1] == "images/s"
    table = lines[1:5]
    assert [line.split()[:2] for line in table] == [["lively.onnx", "onnxruntime"]] * 2 + [
        ["lively.pt", "torch"]
    ] * 2
    assert len({len(line) for line in lines[:5]}) == 1  # aligned: numbers right-justified
    assert lines[1].split()[-1] == f"{rows[0]['throughput']:.2f}"
    assert "warm-up" in captured.out and f"wrote {out}" in captured.out
    assert "4 cells x (1 warm-up + 3 runs), interleaved" in captured.err  # progress
    assert "measured 12/12 runs" in captured.err


def test_bench_on_source_images(onnx_model, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(synthetic_images(3, (90, 120), seed=1)):
        cv2.imwrite(str(folder / f"{i}.jpg"), image)
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "rows.json"
    assert main(["bench", "--model", str(onnx_model), "--source", str(folder),
                 "--json", str(out), *QUICK]) == 0  # fmt: skip
    [row] = json.loads(out.read_text())
    check_rows([row], [("lively.onnx", "onnxruntime", 1)])
    assert row["images"] == "3 files"
    assert "skipped" in capsys.readouterr().err


def test_schedule_interleaves_and_rotates():
    cells = [(0, 1), (0, 8), (1, 1)]
    runs = list(schedule(cells, repeats=3, warmup=2))
    assert runs[:6] == [(c, False) for c in cells for _ in range(2)]
    measured = [cell for cell, counted in runs[6:]]
    assert measured == [*cells, *cells[1:], cells[0], cells[2], *cells[:2]]
    sequential = list(schedule(cells, repeats=3, warmup=1, interleave=False))
    assert sequential[:4] == [((0, 1), False), ((0, 1), True), ((0, 1), True), ((0, 1), True)]
    assert len(sequential) == 12 and sum(counted for _, counted in sequential) == 9


def test_bench_sequential(onnx_model, capsys):
    assert main(["bench", "--model", str(onnx_model), "--sequential", *QUICK]) == 0
    captured = capsys.readouterr()
    assert "one cell after the other" in captured.err and "(one after the other)" in captured.out


def test_synthetic_images_look_like_frames():
    images = synthetic_images(4)
    assert len(images) == 4 and all(
        i.shape == (480, 640, 3) and i.dtype == np.uint8 for i in images
    )
    assert not np.array_equal(images[0], images[1])
    assert all(i.std() > 10 for i in images)
    assert np.array_equal(synthetic_images(1)[0], images[0])  # seeded


def test_bench_onnx_imports_no_torch(onnx_model):
    code = textwrap.dedent(
        f"""
        import sys
        from detector.cli import main
        assert main(["bench", "--model", {str(onnx_model)!r}, "--repeats", "2", "--warmup", "0",
                     "--threads", "1"]) == 0
        assert "torch" not in sys.modules, "detector bench on an ONNX model imported torch"
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "onnxruntime" in result.stdout


@pytest.mark.parametrize("batch", ["1,x", "0", "1,,8", "-1", "2.5"])
def test_bad_batch_is_a_usage_error(batch, onnx_model, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--model", str(onnx_model), "--batch", batch])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--batch" in err and "positive integers" in err and "Traceback" not in err


def test_bad_batch_from_the_shell_has_no_traceback(onnx_model):
    result = subprocess.run(
        [sys.executable, "-m", "detector", "bench", "--model", str(onnx_model), "--batch", "a"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "positive integers" in result.stderr and "Traceback" not in result.stderr


def test_clear_errors(onnx_model, tmp_path, capsys):
    assert main(["bench", "--model", str(tmp_path / "none.onnx")]) == 2
    assert "none.onnx: no such model file" in capsys.readouterr().err
    assert main(["bench", "--model", str(onnx_model), "--imgsz", "320"]) == 2
    assert "--imgsz and --arch apply to checkpoints only" in capsys.readouterr().err
    assert main(["bench", "--model", str(onnx_model), "--device", "tpu"]) == 2
    assert "--device tpu" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["bench", "--model", str(onnx_model), "--source", str(empty)]) == 2
    assert "found in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--model", str(onnx_model), "--repeats", "0"])
    assert "expected an integer >= 1" in capsys.readouterr().err
