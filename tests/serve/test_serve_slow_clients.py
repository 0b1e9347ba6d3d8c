"""Slow and hostile clients against a live ``detector serve`` with API keys, over real sockets:
uploads that stall hold no queue place and are closed by the server within the body / head
deadline; a request without a key is answered 401 from its headers, before its body is sent; a
full queue answers 503 from the headers; invented methods add no metric series; the docs are off
and ``/metrics`` can ask for a key. Statuses and closes are asserted, never timings
(``benchmarks/serve_slow_clients.py`` measures the latencies)."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_live import LiveServer, encode, noise  # noqa: E402

KEY = "k-slow-clients"
DEADLINE_S = 3.0  # body and head deadlines of the server below
MARGIN_S = 5.0  # scheduling slack on a loaded 2-core machine
SLOW = 200
BOUNDARY = "slowboundary"


@pytest.fixture(scope="module")
def server(serve_onnx, tmp_path_factory):
    live = LiveServer(
        serve_onnx, tmp_path_factory.mktemp("live_slow"), "--api-key", KEY,
        "--body-timeout-s", str(DEADLINE_S), "--header-timeout-s", str(DEADLINE_S),
        "--queue-size", "4", "--max-connections", "1000",
    )  # fmt: skip
    yield live
    live.stop()


def head(path: str, length: int, key: str | None, multipart: bool = True) -> bytes:
    """A POST's request line and headers, announcing a body of ``length`` bytes."""
    kind = f"multipart/form-data; boundary={BOUNDARY}" if multipart else "application/json"
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {kind}",
             f"Content-Length: {length}"]  # fmt: skip
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def part_opening() -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()  # fmt: skip


def connect(server: LiveServer) -> socket.socket:
    assert server.port is not None
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed
    (``time.monotonic()``); fails when it is still open ``limit_s`` from now."""
    data = b""
    sock.settimeout(0.5)
    give_up = time.monotonic() + limit_s
    while time.monotonic() < give_up:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data, time.monotonic()
        if not chunk:
            return data, time.monotonic()
        data += chunk
    raise AssertionError(f"the server kept the connection open; it sent {data[:200]!r}")


def read_answer(sock: socket.socket) -> bytes:
    """One whole answer (head and its Content-Length of body), the connection left open."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole answer: {data!r}"
        data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head_bytes.lower().split(b"\r\n")
                  if line.startswith(b"content-length:"))  # fmt: skip
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole answer: {data!r}"
        body += chunk
    return head_bytes + b"\r\n\r\n" + body


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    return int(answer.split(b" ", 2)[1])


def test_stalled_uploads_hold_nothing_and_are_closed(server):
    """200 connections send headers and the start of a body, then nothing: half with the key (to
    /v1/detect), half without (to the v2 infer route). Meanwhile a keyed client's 100 requests
    are all answered 200 (the stalled ones took no queue place: the queue holds 4). The server
    answers the keyed ones 408 and closes them at the body deadline, the unkeyed ones 401 at
    once and closes them at the head deadline."""
    image = encode(noise(64, 64, 1))
    slow: list[tuple[socket.socket, bool, float]] = []
    try:
        for i in range(SLOW):
            keyed = i % 2 == 0
            path = "/v1/detect" if keyed else "/v2/models/detector/infer"
            sock = connect(server)
            sock.sendall(head(path, 100_000, KEY if keyed else None) + part_opening() + b"\x89PNG")
            slow.append((sock, keyed, time.monotonic()))
        with server.client() as http:
            statuses = [
                http.post("/v1/detect", files={"image": ("a.png", image)},
                          headers={"X-API-Key": KEY}).status_code
                for _ in range(100)
            ]  # fmt: skip
        assert statuses == [200] * 100
        for sock, keyed, sent in slow:
            answer, closed = read_until_closed(sock, DEADLINE_S + MARGIN_S)
            assert status_of(answer) == (408 if keyed else 401), answer[:200]
            assert closed - sent <= DEADLINE_S + MARGIN_S
            if keyed:
                assert b'"error":"body_timeout"' in answer.replace(b" ", b"")
    finally:
        for sock, _, _ in slow:
            sock.close()
    with server.client() as http:  # nothing left over: the queue and the server are fine
        assert http.get("/readyz").status_code == 200
        metrics = http.get("/metrics").text
        assert 'status="408"' in metrics and 'status="401"' in metrics


@pytest.mark.parametrize("path", ["/v1/detect", "/v2/models/detector/infer"])
def test_a_request_without_a_key_is_refused_before_its_body(server, path):
    for key in (None, "wrong-key"):
        with connect(server) as sock:
            sock.sendall(head(path, 5_000_000, key, multipart=path.startswith("/v1")))
            answer = read_answer(sock)  # nothing of the body was sent
        assert status_of(answer) == 401, answer[:200]
        assert b"www-authenticate: bearer" in answer.lower() and b"unauthorized" in answer


def test_a_connection_that_never_finishes_its_head_is_closed(server):
    with connect(server) as sock:
        sent = time.monotonic()
        sock.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        answer, closed = read_until_closed(sock, DEADLINE_S + MARGIN_S)
    assert answer == b"" and closed - sent <= DEADLINE_S + MARGIN_S


@pytest.fixture(scope="module")
def small_queue(serve_onnx, tmp_path_factory):
    """A queue of one, and batches that wait 3 s for company (one request fills the queue),
    /metrics behind the key."""
    live = LiveServer(
        serve_onnx, tmp_path_factory.mktemp("live_small_queue"), "--api-key", KEY,
        "--queue-size", "1", "--max-batch", "8", "--max-delay-ms", "3000",
        "--metrics-key-required",
    )  # fmt: skip
    yield live
    live.stop()


def metrics_text(client: httpx.Client) -> str:
    return client.get("/metrics", headers={"X-API-Key": KEY}).text


def test_a_full_queue_refuses_from_the_headers(small_queue):
    image = encode(noise(64, 64, 2))
    first: list[int] = []

    def waiting() -> None:
        with small_queue.client() as http:
            first.append(http.post("/v1/detect", files={"image": ("a.png", image)},
                                   headers={"X-API-Key": KEY}).status_code)  # fmt: skip

    thread = threading.Thread(target=waiting)
    thread.start()
    try:
        with small_queue.client() as http:
            give_up = time.monotonic() + 30
            queued = 'detector_queue_depth{model="detector",version="1"} 1.0'
            while queued not in metrics_text(http):
                assert time.monotonic() < give_up, "the first request never reached the queue"
                time.sleep(0.02)
        with connect(small_queue) as sock:  # headers only: refused without the body
            sock.sendall(head("/v1/detect", 1_000_000, KEY))
            answer = read_answer(sock)
        assert status_of(answer) == 503 and b"retry-after: 1" in answer.lower(), answer[:300]
        assert b"overloaded" in answer
    finally:
        thread.join(timeout=60)
    assert first == [200]


def test_invented_methods_add_no_metric_series(small_queue):
    with small_queue.client() as http:
        http.request("BREW", "/healthz")  # the "other" series exist from here on
        http.request("BREW", "/nowhere/0")
        before = metrics_text(http).splitlines()
        for i in range(300):
            http.request(f"M{i}ETHOD", "/healthz" if i % 2 else f"/nowhere/{i}")
        after = metrics_text(http)
    request_lines = [line for line in after.splitlines() if "detector_http_requests_total{" in line]
    assert not any("ETHOD" in line or "/nowhere/" in line for line in request_lines)
    assert any('method="other"' in line and 'route="unmatched"' in line for line in request_lines)
    assert len(after.splitlines()) == len(before)


def test_docs_are_off_and_metrics_ask_for_the_key(small_queue):
    with small_queue.client() as http:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert http.get(path).status_code == 404, path
        refused = http.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        assert http.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200


def test_a_network_address_without_keys_is_refused(serve_onnx, capsys, monkeypatch):
    from detector.cli import main

    for name in ("DETECTOR_API_KEYS", "DETECTOR_ALLOW_INSECURE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve", "--model", str(serve_onnx), "--host", "0.0.0.0"]) == 2
    error = capsys.readouterr().err
    assert "host 0.0.0.0 would serve the network without authentication" in error
    assert "DETECTOR_API_KEYS" in error and "--allow-insecure" in error
    assert "Traceback" not in error


def test_uvicorn_is_told_the_limits_and_tls(tmp_path, serve_onnx):
    import ssl

    from detector.cli.serve import uvicorn_config
    from serve.settings import load_settings

    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("not read before start-up")
    settings = load_settings(
        model=serve_onnx, host="0.0.0.0", api_keys=["k"], max_connections=64,
        header_timeout_s=2.5, ssl_certfile=tmp_path / "cert.pem",
        ssl_keyfile=tmp_path / "key.pem", ssl_ca_certs=tmp_path / "ca.pem",
    )  # fmt: skip
    config = uvicorn_config(object(), settings)
    assert config.limit_concurrency == 64 and config.http.head_timeout_s == 2.5
    assert config.ssl_certfile == str(tmp_path / "cert.pem")
    assert config.ssl_ca_certs == str(tmp_path / "ca.pem")
    assert config.ssl_cert_reqs == ssl.CERT_REQUIRED


@pytest.fixture(scope="module")
def small_budget(serve_onnx, tmp_path_factory):
    """Bodies of at most 64 KiB, at most 128 KiB of them held at once."""
    live = LiveServer(
        serve_onnx, tmp_path_factory.mktemp("live_small_budget"), "--api-key", KEY,
        "--max-body-bytes", "65536", "--max-bodies-bytes", "131072",
    )  # fmt: skip
    yield live
    live.stop()


def test_bodies_held_at_once_are_bounded(small_budget):
    """Two uploads of 60,000 declared bytes that stall hold 120,000 of the 131,072 bytes: a
    third is refused 503 from its headers, and a chunked upload (no Content-Length) as soon as
    its streamed bytes pass what is left; once the stalled ones go, the budget is back."""
    image = encode(noise(64, 64, 3))
    stalled = [connect(small_budget) for _ in range(2)]
    try:
        for sock in stalled:
            sock.sendall(head("/v1/detect", 60_000, KEY) + part_opening())
        with small_budget.client() as http:  # the two are in (a request after them is served)
            assert http.get("/healthz").status_code == 200
        with connect(small_budget) as sock:
            sock.sendall(head("/v1/detect", 60_000, KEY))
            answer = read_answer(sock)
        assert status_of(answer) == 503 and b"retry-after: 1" in answer.lower(), answer[:300]
        assert b"overloaded" in answer
        with connect(small_budget) as sock:
            chunked = head("/v1/detect", 0, KEY).replace(
                b"Content-Length: 0", b"Transfer-Encoding: chunked"
            )
            sock.sendall(chunked)
            for _ in range(4):  # 4 x 8 KiB: past the 11,072 bytes left
                piece = b"x" * 8192
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            answer, _ = read_until_closed(sock, MARGIN_S + 10)
        assert status_of(answer) == 503 and b"overloaded" in answer, answer[:300]
    finally:
        for sock in stalled:
            sock.close()
    with small_budget.client() as http:
        give_up = time.monotonic() + 30
        while True:  # the stalled requests end when the server sees their clients gone
            status = http.post("/v1/detect", files={"image": ("a.png", image)},
                               headers={"X-API-Key": KEY}).status_code  # fmt: skip
            if status == 200 or time.monotonic() > give_up:
                break
            time.sleep(0.2)
        assert status == 200
