"""End to end against a real ``detector serve`` (uvicorn) process on 127.0.0.1, serving the ONNX
model the session exported: the routes, the same detections as the runtime and as PyTorch, and
a bad-input suite that must get JSON 4xx answers while the server keeps serving."""

from __future__ import annotations

import json
import re
import select
import socket
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from serve.runtime.predictor import Predictor

sys.path.insert(0, str(Path(__file__).parent))
from serve_live import encode, noise  # noqa: E402

CONF, IOU = 0.3, 0.45


def detect(client, data: bytes, name: str = "image.png", **params):
    return client.post("/v1/detect", params=params, files={"image": (name, data)})


def as_arrays(detections: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.array([d["box"] for d in detections], np.float32).reshape(-1, 4)
    scores = np.array([d["score"] for d in detections], np.float32)
    classes = np.array([d["class_id"] for d in detections], np.int64)
    return boxes, scores, classes


def test_detect_equals_runtime_and_pytorch(client, serve_onnx):
    """The server's answer for a PNG equals ``Predictor.predict`` on the decoded image, and the
    PyTorch model of the checkpoint it was exported from (``detector.ops.postprocess``)."""
    import torch

    from detector.core.preprocess import boxes_to_original, preprocess
    from detector.models import model_from_checkpoint
    from detector.ops import postprocess

    predictor = Predictor.from_path(serve_onnx, providers=["CPUExecutionProvider"], threads=1)
    model, _ = model_from_checkpoint(serve_onnx.parent / "nano.pt")
    model.eval()
    for seed, (height, width) in enumerate([(128, 128), (256, 192), (90, 150)]):
        image = noise(height, width, seed)
        response = detect(client, encode(image), conf=CONF, iou=IOU)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["image"] == {"width": width, "height": height}
        assert body["model"] == "yolox_nano"
        assert set(body["timings"]) >= {"decode_ms", "queue_ms", "inference_ms", "total_ms"}
        boxes, scores, classes = as_arrays(body["detections"])
        assert len(scores) > 0
        assert [d["class_name"] for d in body["detections"]] == ["abc"[c] for c in classes.tolist()]

        alone = predictor.predict([image], conf=CONF, iou=IOU)[0]
        np.testing.assert_array_equal(classes, alone.classes)
        np.testing.assert_allclose(scores, alone.scores, atol=1e-4)
        np.testing.assert_allclose(boxes, alone.boxes, atol=0.01)  # the JSON rounds to 0.01 px

        tensor, ratio = preprocess(image, (128, 128))
        with torch.no_grad():
            ref = postprocess(model(torch.from_numpy(tensor)[None]), CONF, IOU)[0].numpy()
        np.testing.assert_array_equal(classes, ref[:, 5].astype(np.int64))
        np.testing.assert_allclose(scores, ref[:, 4], atol=1e-4)
        np.testing.assert_allclose(
            boxes, boxes_to_original(ref[:, :4], ratio, (height, width)), atol=0.02
        )


def test_filters_batch_and_annotated_image(client):
    images = [noise(128, 128, 7), noise(100, 160, 8), noise(64, 64, 9)]
    singles = [detect(client, encode(im), conf=CONF).json()["detections"] for im in images]
    files = [("images", (f"{i}.png", encode(im))) for i, im in enumerate(images)]
    batch = client.post("/v1/detect/batch", params={"conf": CONF}, files=files)
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["image"]["width"] for r in results] == [128, 160, 64]
    for result, single in zip(results, singles):
        got, want = as_arrays(result["detections"]), as_arrays(single)
        np.testing.assert_array_equal(got[2], want[2])
        np.testing.assert_allclose(got[0], want[0], atol=0.011)

    every = singles[0]
    some = detect(client, encode(images[0]), conf=CONF, classes="b,2", max_det=2).json()
    wanted = [d for d in every if d["class_name"] in ("b", "c")][:2]
    assert [d["class_id"] for d in some["detections"]] == [d["class_id"] for d in wanted]
    assert len(some["detections"]) <= 2

    picture = detect(client, encode(images[1]), conf=CONF, format="image")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
    drawn = cv2.imdecode(np.frombuffer(picture.content, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == images[1].shape
    plain = cv2.imdecode(np.frombuffer(encode(images[1], ".jpg"), np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(drawn.astype(int) - plain.astype(int)).mean() > 1  # boxes were drawn


def test_models_health_readiness_metrics_and_request_ids(client, server):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    model = client.get("/v1/models").json()["models"][0]
    assert model["name"] == "yolox_nano" and model["class_names"] == ["a", "b", "c"]
    assert model["input_size"] == [128, 128] and model["backend"] == "onnxruntime"
    assert model["precision"] == "fp32" and model["fixed_batch"] is None
    assert model["max_batch"] == 8 and model["providers"] == ["CPUExecutionProvider"]

    response = detect(client, encode(noise(64, 64, 1)), conf=CONF)
    response = client.post(
        "/v1/detect", files={"image": ("a.png", encode(noise(64, 64, 1)))},
        headers={"X-Request-ID": "trace-42"},
    )  # fmt: skip
    assert response.status_code == 200 and response.headers["x-request-id"] == "trace-42"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32

    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'detector_http_requests_total{method="POST",route="/v1/detect",status="200"}' in text
    assert "detector_http_request_duration_seconds_bucket" in text
    assert 'detector_queue_depth{model="detector",version="1"} 0.0' in text
    count = next(line for line in text.splitlines() if line.startswith("detector_batch_size_count"))
    assert float(count.split()[-1]) >= 2
    assert "detector_inference_seconds_sum" in text

    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line["request_id"] == "trace-42"]
    assert mine and mine[0]["status"] == 200 and mine[0]["route"] == "/v1/detect"
    assert {"method", "path", "duration_ms", "client"} <= set(mine[0])


def test_openapi_schema_is_complete(client):
    schema = client.get("/openapi.json").json()
    detect_op = schema["paths"]["/v1/detect"]["post"]
    assert {p["name"] for p in detect_op["parameters"]} >= {"conf", "iou", "max_det", "classes"}
    assert "multipart/form-data" in detect_op["requestBody"]["content"]
    for status in ("200", "400", "413", "415", "422", "503", "504"):
        assert status in detect_op["responses"], status
    assert "image/jpeg" in detect_op["responses"]["200"]["content"]
    components = schema["components"]["schemas"]
    assert {"DetectResponse", "Detection", "ErrorResponse", "ModelsResponse"} <= set(components)
    assert components["DetectResponse"]["examples"]
    for path in ("/v1/detect/batch", "/v1/models", "/healthz", "/readyz", "/metrics"):
        assert path in schema["paths"]


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))  # fmt: skip


def bad_requests() -> list[tuple[str, dict, int]]:
    png = encode(noise(64, 64, 3))
    jpeg = encode(noise(96, 96, 4), ".jpg")
    wrong_boundary = (
        b'--aaa\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        + png + b"\r\n--aaa--\r\n"
    )  # fmt: skip
    return [
        ("empty body", {}, 422),
        ("zero-byte file", {"files": {"image": ("a.jpg", b"")}}, 400),
        ("truncated JPEG", {"files": {"image": ("a.jpg", jpeg[: len(jpeg) // 2])}}, 400),
        ("text named .jpg", {"files": {"image": ("a.jpg", b"just some text\n" * 10)}}, 415),
        ("50000x50000 PNG", {"files": {"image": ("bomb.png", bomb_png(50000, 50000))}}, 413),
        ("wrong form field", {"files": {"picture": ("a.png", png)}}, 422),
        (
            "mismatched boundary",
            {
                "content": wrong_boundary,
                "headers": {"content-type": "multipart/form-data; boundary=bbb"},
            },
            400,
        ),  # fmt: skip
        ("JSON instead of a form", {"json": {"image": "aGVsbG8="}}, 422),
        ("negative conf", {"files": {"image": ("a.png", png)}, "params": {"conf": -0.1}}, 422),
        ("iou=nan", {"files": {"image": ("a.png", png)}, "params": {"iou": "nan"}}, 422),
        ("max_det=10**9", {"files": {"image": ("a.png", png)}, "params": {"max_det": 10**9}}, 422),
        (
            "unknown class",
            {"files": {"image": ("a.png", png)}, "params": {"classes": "zebra"}},
            422,
        ),
        (
            "class id out of range",
            {"files": {"image": ("a.png", png)}, "params": {"classes": "7"}},
            422,
        ),  # fmt: skip
    ]


def test_bad_inputs_get_json_4xx_and_the_server_keeps_serving(client, server):
    answers = {}
    for name, request, status in bad_requests():
        response = client.post("/v1/detect", **request)
        body = response.json()
        answers[name] = (response.status_code, body.get("message"))
        assert response.status_code == status, (name, response.status_code, body)
        assert body["error"] and body["message"] and body["request_id"], name
        assert client.get("/healthz").status_code == 200
    assert (
        "50000x50000" in answers["50000x50000 PNG"][1] or "pixels" in answers["50000x50000 PNG"][1]
    )
    assert "image" in answers["wrong form field"][1]
    assert "zebra" in answers["unknown class"][1]
    files = [("images", ("good.png", encode(noise(64, 64, 5)))), ("images", ("bad.jpg", b"no"))]
    batch = client.post("/v1/detect/batch", files=files)
    assert batch.status_code == 415 and "images[1] (bad.jpg)" in batch.json()["message"]
    assert detect(client, encode(noise(64, 64, 5))).status_code == 200
    assert server.process.poll() is None


def raw_post(port: int, head: bytes, body_chunks, timeout: float = 60) -> bytes:
    """Send a request over a plain socket, stop sending once the server answers, return the
    raw response (a server that refuses early closes the connection after answering)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(head)
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except OSError:
                break
        response = b""
        try:
            while data := sock.recv(65536):
                response += data
                head_end = response.find(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", response[:head_end], re.I)
                if head_end >= 0 and length and len(response) >= head_end + 4 + int(length[1]):
                    break  # the whole answer is in
        except OSError:
            pass
        return response
    finally:
        sock.close()


def test_30_mb_bodies_are_refused_before_they_are_read(server, client):
    """Declared (Content-Length) or streamed (chunked), a 30 MB body gets 413 JSON; with a
    declared length nothing of the body is read (the answer comes before any is sent)."""
    total = 30 * 1024 * 1024
    part = b"\x01" * 65536
    head = (b"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=xyz\r\n")  # fmt: skip
    declared = raw_post(server.port, head + b"Content-Length: %d\r\n\r\n" % total, [])
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert b'"error": "body_too_large"' in declared

    form = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    pieces = [form, *[part] * (total // len(part))]
    chunks = (b"%x\r\n" % len(piece) + piece + b"\r\n" for piece in pieces)
    streamed = raw_post(server.port, head + b"Transfer-Encoding: chunked\r\n\r\n", chunks)
    assert streamed.startswith(b"HTTP/1.1 413"), streamed[:200]
    assert b"larger than the limit" in streamed

    big = client.post("/v1/detect", files={"image": ("big.png", b"\0" * total)})
    assert big.status_code == 413 and big.json()["error"] == "body_too_large"
    metrics = client.get("/metrics").text  # refused before routing, still counted by route
    assert 'route="/v1/detect",status="413"' in metrics
    assert detect(client, encode(noise(64, 64, 6))).status_code == 200


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("grayscale", lambda: encode(noise(80, 60, 1, channels=3)[..., 0])),
        ("RGBA", lambda: encode(np.dstack([noise(70, 90, 2), np.full((70, 90), 128, np.uint8)]))),
        ("16-bit PNG", lambda: encode(noise(64, 64, 3).astype(np.uint16) * 257)),
        ("16-bit grayscale", lambda: encode(noise(64, 64, 3)[..., 1].astype(np.uint16) * 257)),
        ("BMP", lambda: encode(noise(50, 70, 4), ".bmp")),
        ("WebP", lambda: encode(noise(50, 70, 5), ".webp")),
        ("JPEG", lambda: encode(noise(50, 70, 6), ".jpg")),
        ("1x1", lambda: encode(np.full((1, 1, 3), 200, np.uint8))),
    ],
)
def test_odd_images_are_answered(client, name, make):
    response = detect(client, make(), name="upload.bin", conf=0.01)
    assert response.status_code == 200, (name, response.text)
    assert response.json()["image"]["width"] >= 1


def test_16_bit_png_keeps_its_content(client):
    """A 16-bit PNG answers like its 8-bit twin (samples keep their high byte)."""
    image = noise(96, 96, 12)
    eight = detect(client, encode(image), conf=CONF).json()["detections"]
    sixteen = detect(client, encode(image.astype(np.uint16) * 257), conf=CONF).json()
    assert sixteen["detections"] == eight


def test_the_server_process_has_no_torch(server):
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "libtorch" not in maps, "the server process loaded libtorch for an ONNX model"


def test_serving_onnx_imports_no_torch(serve_onnx):
    """A fresh process creates the app, serves a request through its lifespan, and never
    imports torch."""
    code = textwrap.dedent(
        f"""
        import sys
        import cv2, numpy as np
        from fastapi.testclient import TestClient
        from serve.app import create_app
        from serve.settings import ServeSettings
        app = create_app(ServeSettings(model={str(serve_onnx)!r}, threads=1))
        with TestClient(app) as client:
            image = cv2.imencode(".png", np.full((50, 60, 3), 90, np.uint8))[1].tobytes()
            response = client.post("/v1/detect", files={{"image": ("a.png", image)}})
            assert response.status_code == 200, response.text
            assert client.get("/v1/models").status_code == 200
        assert "torch" not in sys.modules, "serving an ONNX model imported torch"
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
