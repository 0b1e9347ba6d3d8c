"""The package layers are a checked contract: ``lint-imports`` reads ``[tool.importlinter]`` in
pyproject.toml (command line -> export -> serving -> models and training -> torch-free core, and
a core without torch or a web framework), so an import against the arrows fails ``make test``."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_follow_the_layers():
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout
    assert "Contracts: 0 kept" not in run.stdout  # the contracts were read and checked


def test_a_wrong_import_breaks_the_contract(tmp_path):
    """The check can fail: a core module that imports the serving layer is reported."""
    import shutil

    for package in ("detector", "export", "serve"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "detector" / "core" / "boxes.py", "a") as f:
        f.write("\nimport serve.runtime.predictor  # noqa: E402,F401\n")
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run(
        [str(lint), "--config", "pyproject.toml", "--no-cache"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(tmp_path), "PATH": ""},
    )  # fmt: skip
    assert run.returncode != 0
    assert "detector.core.boxes -> serve.runtime.predictor" in run.stdout
