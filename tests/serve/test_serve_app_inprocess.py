"""The app in-process (``TestClient`` runs its lifespan): readiness, API keys, deadlines,
request limits, CORS; settings from flags and the environment; the ``serve`` command's errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from detector.cli import main
from serve.app import app_from_env, create_app
from serve.settings import ServeSettings, SettingsError, load_settings

sys.path.insert(0, str(Path(__file__).parent))
from serve_live import encode, noise  # noqa: E402

PNG = encode(noise(64, 64, 0))


def app_for(model: Path, **settings) -> TestClient:
    return TestClient(create_app(ServeSettings(model=model, threads=1, **settings)))


def upload(client: TestClient, path: str = "/v1/detect", **kwargs):
    return client.post(path, files={"image": ("a.png", PNG)}, **kwargs)


def test_ready_only_inside_the_lifespan(serve_onnx):
    client = app_for(serve_onnx)
    response = client.get("/readyz")  # no lifespan: the model is not loaded
    assert response.status_code == 503 and response.json()["error"] == "not_ready"
    assert response.headers["retry-after"] == "1"
    assert upload(client).status_code == 503
    assert client.get("/healthz").status_code == 200  # alive all the same
    with client:
        assert client.get("/readyz").json() == {"status": "ready"}
        assert upload(client).status_code == 200
    assert client.get("/readyz").status_code == 503  # after shutdown


def test_api_keys(serve_onnx):
    with app_for(serve_onnx, api_keys=["k-one", "k-two"], docs="open") as client:
        missing = upload(client)
        assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        assert upload(client, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert upload(client, headers={"X-API-Key": "k-one-and-more"}).status_code == 401
        assert upload(client, headers={"Authorization": "Bearer k-two"}).status_code == 200
        assert upload(client, headers={"X-API-Key": "k-one"}).status_code == 200
        assert client.get("/v1/models").status_code == 401
        for open_path in ("/healthz", "/readyz", "/metrics"):  # probes and scrapers need no key
            assert client.get(open_path).status_code == 200
        schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
        assert {"HTTPBearer", "APIKeyHeader"} <= set(schemes)


def test_deadline_answers_504(serve_onnx):
    # a batch waits 3 s for company; the deadline is 0.2 s
    with app_for(serve_onnx, timeout_s=0.2, max_delay_ms=3000) as client:
        response = upload(client)
        assert response.status_code == 504 and response.json()["error"] == "deadline_exceeded"
        assert "0.2 s" in response.json()["message"]
        metrics = client.get("/metrics").text
        labels = 'model="detector",reason="deadline",version="1"'
        assert f"detector_rejected_total{{{labels}}} 1.0" in metrics


def test_request_limits(serve_onnx):
    with app_for(serve_onnx, max_images=2, max_pixels=4000, max_det_limit=50) as client:
        three = [("images", (f"{i}.png", encode(noise(20, 20, i)))) for i in range(3)]
        too_many = client.post("/v1/detect/batch", files=three)
        assert too_many.status_code == 413 and "limit of 2" in too_many.json()["message"]
        assert client.post("/v1/detect/batch", files=three[:2]).status_code == 200
        big = client.post("/v1/detect", files={"image": ("big.png", encode(noise(80, 60, 1)))})
        assert big.status_code == 413 and "60x80" in big.json()["message"]
        assert upload(client, params={"max_det": 51}).status_code == 422
        assert client.get("/nowhere").json()["error"] == "not_found"
        assert client.get("/v1/detect").status_code == 405


def test_cors_only_when_configured(serve_onnx):
    origin = {"Origin": "https://app.example"}
    with app_for(serve_onnx) as client:
        assert "access-control-allow-origin" not in client.get("/healthz", headers=origin).headers
    with app_for(serve_onnx, cors_origins=["https://app.example"]) as client:
        allowed = client.get("/healthz", headers=origin).headers
        assert allowed["access-control-allow-origin"] == "https://app.example"
        other = client.get("/healthz", headers={"Origin": "https://evil.example"}).headers
        assert "access-control-allow-origin" not in other


def test_settings_flags_win_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTOR_MAX_BATCH", "4")
    monkeypatch.setenv("DETECTOR_API_KEYS", "a, b")
    monkeypatch.setenv("DETECTOR_PROVIDERS", "CPUExecutionProvider")
    settings = load_settings(model=tmp_path / "m.onnx", max_batch=2)
    assert settings.max_batch == 2  # the flag
    assert [k.get_secret_value() for k in settings.api_keys] == ["a", "b"]
    assert settings.providers == ["CPUExecutionProvider"]
    assert "a" not in repr(settings.api_keys)  # secrets stay out of logs
    assert load_settings(model="m.onnx").max_batch == 4  # the variable
    with pytest.raises(SettingsError, match=r"max_batch \(--max-batch or DETECTOR_MAX_BATCH\)"):
        load_settings(model="m.onnx", max_batch=0)
    monkeypatch.delenv("DETECTOR_MAX_BATCH")
    with pytest.raises(SettingsError, match="model"):
        load_settings()
    monkeypatch.setenv("DETECTOR_API_KEYS", ",")
    assert load_settings(model="m.onnx").api_keys == []


def test_serve_command_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DETECTOR_MODEL", raising=False)
    assert main(["serve", "--model", str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx: no such model file" in capsys.readouterr().err
    (tmp_path / "m.bin").write_bytes(b"x")
    assert main(["serve", "--model", str(tmp_path / "m.bin")]) == 2
    assert "unknown model file type '.bin'" in capsys.readouterr().err
    (tmp_path / "corrupt.onnx").write_bytes(b"x" * 100)
    assert main(["serve", "--model", str(tmp_path / "corrupt.onnx")]) == 2  # no traceback
    assert "corrupt.onnx: ONNX Runtime cannot load it" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path / "m.bin"), "--queue-size", "0"]) == 2
    assert "--queue-size or DETECTOR_QUEUE_SIZE" in capsys.readouterr().err
    result = subprocess.run([sys.executable, "-m", "detector", "serve", "--help"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0 and "--max-delay-ms" in result.stdout


def test_app_factory_from_the_environment(serve_onnx, monkeypatch):
    monkeypatch.setenv("DETECTOR_MODEL", str(serve_onnx))
    monkeypatch.setenv("DETECTOR_THREADS", "1")
    monkeypatch.setenv("DETECTOR_MAX_BATCH", "3")
    with TestClient(app_from_env()) as client:
        assert client.get("/v1/models").json()["models"][0]["max_batch"] == 3


def test_one_decode_at_a_time_still_serves_batches_and_pictures(serve_onnx):
    with app_for(serve_onnx, decode_workers=1) as client:
        three = [("images", (f"{i}.png", encode(noise(30, 40, i)))) for i in range(3)]
        batch = client.post("/v1/detect/batch", files=three)
        assert batch.status_code == 200 and len(batch.json()["results"]) == 3
        picture = upload(client, params={"format": "image"})
        assert picture.status_code == 200 and picture.content[:2] == b"\xff\xd8"


def test_decodes_at_once_never_exceed_decode_workers(serve_onnx, monkeypatch):
    """``decode_workers`` bounds the images decoded at the same time across all requests (the
    memory of decoded images): six requests at once, each decode held for 50 ms, two workers."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import serve.pipeline

    lock, running, most = threading.Lock(), [0], [0]
    real_decode = serve.pipeline.decode_image

    def slow_decode(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.05)
            return real_decode(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(serve.pipeline, "decode_image", slow_decode)
    with app_for(serve_onnx, decode_workers=2) as client, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: upload(client).status_code, range(6)))
    assert answers == [200] * 6
    assert most[0] == 2
