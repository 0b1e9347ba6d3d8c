"""Decompression and parser bombs against a real server: gzip and JSON bombs on /v2, 16-bit
and palette PNG bombs on /v1, 16 of a kind at once: every one is refused (4xx) before it is
expanded, the server's peak resident memory (``VmHWM`` of its process) stays bounded, and it
keeps serving. ``benchmarks/serve_bombs.py`` prints the peak per kind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import serve_bombs  # noqa: E402

from serve.settings import ServeSettings  # noqa: E402

CONCURRENCY = 16
PEAK_BOUND_MIB = 1024
"""Generous: the server idles near 250 MiB and the bombs add tens of MiB (measured in
README.md, 'Memory'); unbounded, the JSON-strings bomb alone added 557 MB per request."""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_bombs_are_refused_with_bounded_memory(server, client):
    defaults = ServeSettings.model_fields
    requests = serve_bombs.bombs(defaults["max_pixels"].default,
                                 defaults["max_body_bytes"].default)  # fmt: skip
    rows = serve_bombs.measure(server, requests, CONCURRENCY)
    for row in rows:
        assert all(400 <= status < 500 for status in row["statuses"]), row
        assert row["peak_mib"] < PEAK_BOUND_MIB, row
    by_kind = {row["kind"]: row["statuses"] for row in rows}
    assert by_kind["gzip_zeros"] == [413] and by_kind["gzip_json_strings"] == [413]
    assert by_kind["json_nesting"] == [400]
    assert by_kind["png16_rgba"] == by_kind["png16_rgb"] == by_kind["palette_png"] == [413]
    assert client.get("/readyz").status_code == 200
