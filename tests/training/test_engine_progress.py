"""Training progress: a bar on a terminal; elsewhere one log line per epoch and one per interval,
never a carriage return."""

from __future__ import annotations

import io
import logging
import os
from functools import partial
from pathlib import Path

import pytest

from detector.training.launch import train
from detector.training.progress import EpochProgress, is_terminal

QUICK = ["batch=4", "imgsz=128", "workers=0", "plots=false", "device=cpu"]


class FakeTerminal(io.StringIO):
    """An in-memory stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Clock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def loss_status(step: int) -> str:
    return f"loss {1.0 / (step + 1):.3f}"


def run_epochs(stream: io.StringIO, epochs: int, steps: int, seconds_per_step: float) -> None:
    clock = Clock()
    for epoch in range(epochs):
        progress = EpochProgress(
            f"epoch {epoch + 1}/{epochs}", steps, stream=stream, interval_s=30.0, clock=clock
        )
        for step in range(steps):
            clock.now += seconds_per_step
            progress.update(partial(loss_status, step))
        progress.close(f"loss {1.0 / steps:.3f} {steps * seconds_per_step:.0f} s")


def test_not_a_terminal_logs_one_line_per_epoch_and_per_interval(caplog) -> None:
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="detector.training.progress"):
        run_epochs(stream, epochs=2, steps=100, seconds_per_step=1.0)
    assert stream.getvalue() == "", "no bar drawn on a stream that is not a terminal"
    lines = [record.getMessage() for record in caplog.records]
    assert not any("\r" in line for line in lines)
    assert lines == [
        "epoch 1/2 step 30/100: loss 0.033",
        "epoch 1/2 step 60/100: loss 0.017",
        "epoch 1/2 step 90/100: loss 0.011",
        "epoch 1/2: loss 0.010 100 s",
        "epoch 2/2 step 30/100: loss 0.033",
        "epoch 2/2 step 60/100: loss 0.017",
        "epoch 2/2 step 90/100: loss 0.011",
        "epoch 2/2: loss 0.010 100 s",
    ]


def test_short_epochs_log_only_their_summary(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="detector.training.progress"):
        run_epochs(io.StringIO(), epochs=3, steps=50, seconds_per_step=0.1)
    assert [r.getMessage() for r in caplog.records] == [
        f"epoch {k}/3: loss 0.020 5 s" for k in (1, 2, 3)
    ]


def test_a_terminal_keeps_the_bar(caplog) -> None:
    stream = FakeTerminal()
    with caplog.at_level(logging.INFO, logger="detector.training.progress"):
        run_epochs(stream, epochs=2, steps=100, seconds_per_step=1.0)
    drawn = stream.getvalue()
    assert "\r" in drawn and "epoch 1/2" in drawn and "epoch 2/2" in drawn
    assert "100/100" in drawn and "loss 0.010" in drawn
    assert not caplog.records, "no log lines besides the bar"


def test_disabled_progress_shows_nothing(caplog) -> None:
    stream = FakeTerminal()
    with caplog.at_level(logging.INFO, logger="detector.training.progress"):
        progress = EpochProgress("epoch 1/1", 3, enabled=False, stream=stream)
        for _ in range(3):
            progress.update(lambda: "x")
        progress.close("done")
    assert stream.getvalue() == "" and not caplog.records


def test_is_terminal() -> None:
    read, write = os.pipe()
    with os.fdopen(read) as pipe_in, os.fdopen(write, "w") as pipe_out:
        assert not is_terminal(pipe_out) and not is_terminal(pipe_in)
    assert not is_terminal(pipe_out)  # closed: isatty() raises ValueError
    assert not is_terminal(io.StringIO()) and not is_terminal(object())
    assert is_terminal(FakeTerminal())


def test_a_terminal_of_no_size_is_not_watched() -> None:
    """A pseudo terminal of size 0 (detached ``docker run -t``, ``script``: a bar draws nothing
    there) gets log lines; one with a size gets the bar."""
    pty = pytest.importorskip("pty")
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            for rows, columns, watched in ((0, 0, False), (0, 120, False), (24, 120, True)):
                _set_size(follower, rows, columns)
                assert is_terminal(terminal) is watched, (rows, columns)
    finally:
        os.close(leader)
        os.close(follower)


def _set_size(fd: int, rows: int, columns: int) -> None:
    """Set the size of the terminal ``fd``."""
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def test_training_without_a_terminal_logs_one_line_per_epoch(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog
) -> None:
    """A real run with stderr captured (not a terminal): no bar, no carriage return, one line
    per epoch with its losses, learning rate, speed and time."""
    with caplog.at_level(logging.INFO, logger="detector.training.progress"):
        overrides = [*QUICK, "epochs=2", "eval_interval=2", f"output_dir={tmp_path}", "name=logs"]
        train("yolox_nano", tiny_data, overrides)
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out
    lines = [r.getMessage() for r in caplog.records if r.name == "detector.training.progress"]
    assert len(lines) == 2, lines
    for epoch, line in enumerate(lines, 1):
        assert line.startswith(f"epoch {epoch}/2: total ")
        for part in (" iou ", " obj ", " cls ", " l1 ", " lr ", " img/s "):
            assert part in line, line
        assert line.endswith(" s")
