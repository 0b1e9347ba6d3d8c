"""deploy/jetson.sh (run on the board) picks the right cuda-python for the JetPack it finds, and
the commands it runs are real ``detector`` commands. Run with ``DRY_RUN=1`` against a stand-in
``/etc/nv_tegra_release``: no Jetson here, so the script has not run on one."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "jetson.sh"
RELEASES = {
    6: "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n",
    7: "# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64\n",
}


def dry_run(
    tmp_path: Path, release: str, *args: str, **extra_env: str
) -> subprocess.CompletedProcess:
    (tmp_path / "nv_tegra_release").write_text(release)
    (tmp_path / "detector-0.1.0-py3-none-any.whl").write_bytes(b"PK")
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DRY_RUN": "1",
           "TEGRA_RELEASE": str(tmp_path / "nv_tegra_release"), **extra_env}  # fmt: skip
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip


CUDA_PYTHON = [(6, "cuda-python>=12.6,<13"), (7, "cuda-python>=13,<14")]


@pytest.mark.parametrize("jetpack, cuda", CUDA_PYTHON)
def test_jetpack_picks_cuda_python_and_runs_real_commands(tmp_path, jetpack, cuda):
    from detector.cli import build_parser

    done = dry_run(tmp_path, RELEASES[jetpack], "detector-0.1.0-py3-none-any.whl", "model.onnx")
    assert done.returncode == 0, done.stderr
    assert f"JetPack {jetpack}" in done.stdout
    steps = [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")]
    venv = tmp_path / "detector"
    assert steps[0] == ["python3", "-m", "venv", "--system-site-packages", str(venv)]
    assert cuda in steps[1] and "detector-0.1.0-py3-none-any.whl[serve]" in steps[1]
    engine, serve = steps[2], steps[3]
    assert engine[0] == serve[0] == str(venv / "bin" / "detector")
    for argv in (engine[1:], serve[1:]):  # what the board runs parses with the real CLI
        args = build_parser(argv[0]).parse_args(argv)
        assert args.command == argv[0]
    assert engine[1:3] == ["export", "engine"] and "model.engine" in engine
    assert serve[1] == "serve" and serve[serve.index("--model") + 1] == "model.engine"


def test_refuses_what_it_does_not_know(tmp_path):
    wheel = "detector-0.1.0-py3-none-any.whl"
    old = dry_run(tmp_path, "# R35 (release), REVISION: 5.0\n", wheel, "model.onnx")
    assert old.returncode == 2 and "JetPack 6 (r36) and 7 (r38)" in old.stderr
    missing = dry_run(tmp_path, RELEASES[6], wheel, "missing.onnx")
    assert missing.returncode == 2 and "missing.onnx: no such ONNX file" in missing.stderr
    bad = dry_run(tmp_path, RELEASES[6], wheel, "model.onnx", "int4")
    assert bad.returncode == 2 and "usage" in bad.stderr


WHEEL = "detector-0.1.0-py3-none-any.whl"


def _serve_step(done: subprocess.CompletedProcess) -> list[str]:
    steps = [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")]
    [serve] = [step for step in steps if step[1:2] == ["serve"]]
    return serve


def test_serves_this_board_only_unless_told_otherwise(tmp_path):
    done = dry_run(tmp_path, RELEASES[6], WHEEL, "model.onnx")
    assert done.returncode == 0, done.stderr
    serve = _serve_step(done)
    assert serve[serve.index("--host") + 1] == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_a_network_address_without_keys_is_refused_before_anything_runs(tmp_path, host):
    done = dry_run(tmp_path, RELEASES[6], WHEEL, "model.onnx", HOST=host)
    assert done.returncode == 2
    assert f"HOST={host} would serve the network without authentication" in done.stderr
    assert "DETECTOR_API_KEYS" in done.stderr and "DETECTOR_ALLOW_INSECURE" in done.stderr
    assert "+ " not in done.stdout  # no venv, no install, no engine build


@pytest.mark.parametrize(
    "env",
    [{"DETECTOR_API_KEYS": "k1,k2"}, {"DETECTOR_ALLOW_INSECURE": "1"}],
    ids=["keys", "opt-out"],
)
def test_a_network_address_with_keys_or_the_explicit_opt_out_serves(tmp_path, env):
    done = dry_run(tmp_path, RELEASES[7], WHEEL, "model.onnx", HOST="0.0.0.0", **env)
    assert done.returncode == 0, done.stderr
    serve = _serve_step(done)
    assert serve[serve.index("--host") + 1] == "0.0.0.0"
    assert "k1" not in done.stdout  # keys reach the server through its environment, not argv
