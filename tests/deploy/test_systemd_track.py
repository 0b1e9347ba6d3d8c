"""deploy/detector-track.service: its command line is a valid ``detector track`` for a service,
its paths fit the unit's own sandbox, and ``systemd-analyze verify`` (when installed) finds
nothing wrong with it."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "detector-track.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def exec_start() -> list[str]:
    return shlex.split(unit()["Service"]["ExecStart"])


def test_command_line_is_a_track_service():
    from detector.cli import build_parser

    argv = exec_start()
    assert PurePosixPath(argv[0]).name == "detector" and argv[1] == "track"
    args = build_parser("track").parse_args(argv[1:])
    assert args.append and args.no_video and args.progress_every == 0
    assert args.metrics_port is not None and args.metrics_host == "127.0.0.1"
    assert not args.show and args.serve_preview is None
    # the output is under the unit's state directory, the only place it may write
    service = unit()["Service"]
    state = PurePosixPath("/var/lib") / service["StateDirectory"]
    assert PurePosixPath(args.out).is_relative_to(state)
    assert service["ProtectSystem"] == "strict"  # so every other path is read-only


def test_runs_unprivileged_and_restarts():
    service = unit()["Service"]
    assert service["User"] not in ("root", "0")
    assert service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == "" and service["AmbientCapabilities"] == ""
    assert service["ProtectHome"] == "yes" and service["PrivateTmp"] == "yes"
    assert service["Restart"] == "always"
    # systemctl stop sends SIGTERM, which closes every file; the default signal is kept
    assert service.get("KillSignal", "SIGTERM") == "SIGTERM"
    assert float(service["TimeoutStopSec"]) >= 10
    assert "CPUQuota" in service and "MemoryMax" in service
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_systemd_analyze_verify(tmp_path):
    """The unit as systemd reads it: unknown keys, bad values and a missing program are
    reported. The program is pointed at this environment's ``detector`` (the unit's
    ``/opt/detector`` install is not here)."""
    program = Path(sys.executable).with_name("detector")
    assert program.is_file(), program
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(exec_start()[0], str(program)))
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert UNIT.name not in output, output  # a warning about the unit, e.g. an unknown key
