"""The README's quick examples run as written on a fresh copy of the project.

The command lines are read from the README's "What is in it" block, so the test breaks when the
README drifts. They run with ``python -m detector`` from a copy of the project in a temporary
folder (only what a clone has: the package, configs, the shipped BCCD data), with nothing beside
it (no ``../shared``). To keep the test short, a few arguments are appended (later ones win):
one epoch at 128 px, fewer generated images, fewer timed batches; and the copy's BCCD splits are
cut to 16 training and 8 validation images.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# appended to the README's command lines to keep them quick (the last value of a flag wins)
QUICK_ARGS: dict[str, list[str]] = {
    "data synth": ["--images", "12"],
    "data bench": ["--batches", "2", "--batch", "4"],
    "train": ["epochs=1", "imgsz=128"],
}
EXPECTED_COMMANDS = ["--version", "info", "data synth", "data show", "data bench", "train",
                     "eval", "predict"]  # fmt: skip


def readme_commands() -> list[str]:
    """The ``detector ...`` lines of the README's "What is in it" code block, comments removed."""
    text = (REPO / "README.md").read_text()
    section = text.split("## What is in it", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block, "README: no code block under 'What is in it'"
    lines = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line.startswith("detector ")]


def command_key(argv: list[str]) -> str:
    """``["data", "synth", ...]`` -> ``"data synth"``; ``["train", ...]`` -> ``"train"``."""
    if argv[0] == "data":
        return f"data {argv[1]}"
    return argv[0]


def _cut_bccd(root: Path, train: int, val: int) -> None:
    """Keep the first ``train``/``val`` images of the copy's VOC splits and COCO JSONs."""
    sets = root / "ImageSets/Main"
    for name, count in (("trainval", train), ("test", val)):
        ids = (sets / f"{name}.txt").read_text().split()[:count]
        (sets / f"{name}.txt").write_text("\n".join(ids) + "\n")
    for name, count in (("train", train), ("val", val)):
        path = root / f"coco/instances_{name}.json"
        data = json.loads(path.read_text())
        data["images"] = data["images"][:count]
        keep = {image["id"] for image in data["images"]}
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
        path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a clone holds that the examples use, in a folder with nothing beside it."""
    copy = tmp_path_factory.mktemp("fresh") / "detector"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("detector", "configs", "data/bccd"):
        shutil.copytree(REPO / name, copy / name, ignore=ignore)
    for name in ("README.md", "pyproject.toml"):
        shutil.copy2(REPO / name, copy / name)
    _cut_bccd(copy / "data/bccd", train=16, val=8)
    assert not (copy.parent / "shared").exists()
    return copy


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("BCCD_ROOT", "PYTHONPATH")}
    env["PYTHONPATH"] = str(cwd)  # the copy's package, not the editable install's
    return subprocess.run([sys.executable, "-m", "detector", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.mark.slow
def test_readme_examples_run_as_written(fresh_copy: Path) -> None:
    commands = readme_commands()
    keys = [command_key(shlex.split(line)[1:]) for line in commands]
    assert keys == EXPECTED_COMMANDS, "README examples changed: update this test"
    probe = subprocess.run(
        [sys.executable, "-c", "import detector; print(detector.__file__)"], cwd=fresh_copy,
        env={**os.environ, "PYTHONPATH": str(fresh_copy)}, capture_output=True, text=True,
    )  # fmt: skip
    assert probe.stdout.strip() == str(fresh_copy / "detector/__init__.py"), probe.stderr
    before = {p for p in fresh_copy.rglob("*") if "__pycache__" not in p.parts}

    outputs: dict[str, str] = {}
    for line, key in zip(commands, keys):
        argv = shlex.split(line)[1:] + QUICK_ARGS.get(key, [])
        done = _run(argv, fresh_copy)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        outputs[key] = done.stdout

    runs = fresh_copy / "runs"
    assert re.fullmatch(r"detector \S+\n", outputs["--version"])
    assert "GFLOPs" in outputs["info"]
    assert (runs / "data/synth/data.yaml").is_file()
    assert (runs / "samples.png").stat().st_size > 10_000
    assert outputs["data bench"].rstrip().endswith("images/s")
    for name in ("weights/best.pt", "metrics.png", "val_predictions.png"):
        assert (runs / "exp" / name).is_file(), name
    metrics = json.loads((runs / "m.json").read_text())
    assert 0.0 <= metrics["mAP"] <= metrics["mAP50"] <= 1.0
    predictions = json.loads((runs / "predict/predictions.json").read_text())
    assert predictions, "predict wrote no predictions"
    # everything the examples wrote is under runs/ (covered by .gitignore)
    after = {p for p in fresh_copy.rglob("*") if "__pycache__" not in p.parts}
    assert all(runs in p.parents or p == runs for p in after - before), sorted(after - before)
