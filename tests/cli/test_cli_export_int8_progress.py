"""``detector export int8`` progress: redrawn in place on a terminal, plain lines elsewhere."""

import io
import sys

from detector.cli import export_int8


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_plain_lines_when_not_a_terminal(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    show = export_int8._progress("calibrating", interval_s=3600)
    for done in range(1, 101):
        show(done, 100)
    assert "\r" not in err.getvalue()
    assert err.getvalue().splitlines() == ["calibrating: 100/100 images"]


def test_progress_redraws_on_a_terminal(monkeypatch):
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    show = export_int8._progress("calibrating")
    for done in range(1, 4):
        show(done, 3)
    assert err.getvalue() == "".join(f"\rcalibrating: {d}/3 images" for d in range(1, 4)) + "\n"
