"""The top-level command: --version, and a misspelt command gets a suggestion."""

from __future__ import annotations

import importlib.metadata

import pytest

from detector.cli import COMMANDS, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"detector {importlib.metadata.version('detector')}"


@pytest.mark.parametrize(
    ("typed", "meant"), [("trian", "train"), ("evl", "eval"), ("predcit", "predict")]
)
def test_misspelt_command_suggests_the_right_one(capsys, typed, meant):
    with pytest.raises(SystemExit) as exit_info:
        main([typed, "--data", "x.yaml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"unknown command '{typed}' (did you mean '{meant}'?)" in err
    assert "Traceback" not in err


def test_unknown_command_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["-v", "xyzzy"])
    err = capsys.readouterr().err
    assert "unknown command 'xyzzy'; the commands are " + ", ".join(COMMANDS) in err
