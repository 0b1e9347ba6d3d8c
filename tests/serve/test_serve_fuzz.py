"""No input gets a 5xx: property-based fuzzing of a real ``detector serve`` from its own OpenAPI
schema (schemathesis) and from hand-written strategies for what the schema cannot express
(random bytes as images, broken multipart bodies, wrong binary-extension sizes), with the
server alive afterwards. A bounded run; ``benchmarks/serve_fuzz.py --cases N`` runs longer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import serve_fuzz  # noqa: E402

pytest.importorskip("schemathesis")

SCHEMA_CASES = 40  # per operation and mode (positive, negative)
HAND_CASES = 400  # per hand-written strategy


def test_no_input_gets_a_5xx_and_the_server_stays_up(server, client):
    tally = serve_fuzz.fuzz(server, SCHEMA_CASES, HAND_CASES)
    assert not tally.errors, "\n".join(tally.errors[:20])
    assert client.get("/readyz").status_code == 200
    assert tally.cases.get("schema", 0) >= 10 * SCHEMA_CASES  # every operation, not one
    assert all(tally.cases.get(source, 0) >= HAND_CASES // 2 for source in serve_fuzz.HAND_WRITTEN)
    access = [line for line in server.logs().splitlines() if '"status": 5' in line]
    assert not access, access[:5]
