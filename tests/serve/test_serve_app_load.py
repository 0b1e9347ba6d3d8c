"""Overload and shutdown against a live ``detector serve`` process on 127.0.0.1: a queue of 4
under 64 concurrent clients answers 503 (with Retry-After, JSON) on arrival and recovers;
SIGTERM while requests wait in the queue loses none of them. Every loop is bounded in count and
time; no timing is asserted (``benchmarks/serve_throughput_overload.py`` measures them)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_live import LiveServer, encode, noise  # noqa: E402

CLIENTS = 64
ROUNDS = 2


@pytest.fixture(scope="module")
def server(serve_onnx, tmp_path_factory):
    # batches wait up to 1 s to fill (max batch 8 > queue 4), so admitted requests stay queued
    # long enough for the tests to see them there
    live = LiveServer(
        serve_onnx, tmp_path_factory.mktemp("live_load"),
        "--queue-size", "4", "--max-batch", "8", "--max-delay-ms", "1000",
    )  # fmt: skip
    yield live
    live.stop()


def queue_depth(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("detector_queue_depth{"):
            return float(line.split()[-1])
    raise AssertionError("no detector_queue_depth{...} in /metrics")


def test_overload_answers_503_at_once_and_recovers(server):
    image = encode(noise(64, 64, 1))

    async def burst() -> list[tuple[int, float, dict, dict]]:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(
            base_url=server.url, timeout=60, trust_env=False, limits=limits
        ) as http:

            async def client() -> list[tuple[int, float, dict, dict]]:
                answers = []
                for _ in range(ROUNDS):
                    start = time.perf_counter()
                    response = await http.post("/v1/detect", files={"image": ("a.png", image)})
                    answers.append((response.status_code, time.perf_counter() - start,
                                    dict(response.headers), response.json()))  # fmt: skip
                return answers

            results = await asyncio.gather(*(client() for _ in range(CLIENTS)))
        return [answer for answers in results for answer in answers]

    answers = asyncio.run(burst())
    statuses = [status for status, *_ in answers]
    assert len(answers) == CLIENTS * ROUNDS
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    refused = [a for a in answers if a[0] == 503]
    assert refused and statuses.count(200) >= 4
    for _, _, headers, body in refused:
        assert headers["retry-after"] == "1" and headers["content-type"] == "application/json"
        assert body["error"] == "overloaded" and body["request_id"] == headers["x-request-id"]
        # refused on arrival (admission, before the body is read), not after reading and
        # decoding it: admitted requests hold their place in the queue until they reach it
        assert "requests are already waiting" in body["message"], body["message"]
    for _, _, _, body in (a for a in answers if a[0] == 200):
        assert "detections" in body
    refusal_ms = statistics.median(seconds for _, seconds, *_ in refused) * 1000
    print(f"\n{len(refused)}/{len(answers)} refused with 503; median refusal {refusal_ms:.1f} ms")

    with server.client() as http:  # recovered: a full queue's worth at once all answered
        metrics = http.get("/metrics").text
        labels = 'model="detector",reason="queue_full",version="1"'
        assert f"detector_rejected_total{{{labels}}}" in metrics
        counted = [line for line in metrics.splitlines()
                   if line.startswith("detector_http_requests_total{")
                   and 'route="/v1/detect"' in line and 'status="503"' in line]  # fmt: skip
        assert counted and float(counted[0].split()[-1]) >= len(refused)

        def one(results: list[int]) -> None:
            results.append(http.post("/v1/detect", files={"image": ("a.png", image)}).status_code)

        results: list[int] = []
        threads = [threading.Thread(target=one, args=(results,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert results == [200] * 4


def test_sigterm_answers_the_queued_requests(server):
    image = encode(noise(96, 96, 2))
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def one() -> None:
        with server.client() as http:
            response = http.post("/v1/detect", files={"image": ("a.png", image)})
            with lock:
                results.append((response.status_code, response.json()))

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    with server.client() as http:
        deadline = time.monotonic() + 30
        while queue_depth(http) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert queue_depth(http) == 3, "the requests never reached the queue"
    server.terminate()  # while all three wait for their batch
    for thread in threads:
        thread.join(timeout=60)
    assert [status for status, _ in results] == [200] * 3
    assert all("detections" in body for _, body in results)
    assert server.process.wait(timeout=60) in (0, -15)  # uvicorn re-raises SIGTERM after it
    log = server.stderr_path.read_text()
    assert "Application shutdown complete" in log
