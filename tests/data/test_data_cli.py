"""``detector data synth | show | bench`` end to end, in process."""

from __future__ import annotations

from pathlib import Path

from detector.cli import main


def test_synth_show_bench(tmp_path: Path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--images", "10"]) == 0
    data = tmp_path / "d/data.yaml"
    assert data.is_file()
    png = tmp_path / "show.png"
    assert main(["data", "show", "--data", str(data), "--out", str(png), "--imgsz", "96",
                 "--count", "4"]) == 0  # fmt: skip
    assert png.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    args = ["data", "bench", "--data", str(data), "--imgsz", "64", "--batch", "2", "--batches", "2"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("images/s")
