"""The KServe v2 protocol (``/v2``) against a real ``detector serve`` (uvicorn) process on
127.0.0.1 serving the ONNX model the session exported: the real ``tritonclient.http`` client
(binary and JSON) gets the detections ``/v1/detect`` gives; raw JSON, base64 and raw binary
requests; metadata and health; and the bad-input suite of the v1 tests, answered 4xx JSON
in the v2 error format while the server keeps serving."""

from __future__ import annotations

import base64
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from detector.core.defaults import MAX_DET
from serve.app import create_app
from serve.settings import ServeSettings

sys.path.insert(0, str(Path(__file__).parent))
from serve_live import encode, noise  # noqa: E402
from test_serve_app import bomb_png, raw_post  # noqa: E402
from v2_client import OUTPUTS, describe, detect_v2  # noqa: E402

CONF, IOU = 0.3, 0.45
MODEL = "detector"
INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def address(server) -> str:
    return server.url.removeprefix("http://")


def v1_detect(client, data: bytes, **params) -> list[dict]:
    response = client.post("/v1/detect", params=params, files={"image": ("a.png", data)})
    assert response.status_code == 200, response.text
    return response.json()["detections"]


def assert_same_as_v1(answer: dict[str, np.ndarray], v1: list[dict]) -> None:
    """v2 (float32, unrounded) against /v1 (boxes to 0.01 px, scores to 1e-5)."""
    assert len(v1) > 0
    np.testing.assert_array_equal(answer["classes"], [d["class_id"] for d in v1])
    np.testing.assert_allclose(
        np.round(answer["boxes"].astype(np.float64), 2), [d["box"] for d in v1], atol=1e-3
    )
    np.testing.assert_allclose(
        np.round(answer["scores"].astype(np.float64), 5), [d["score"] for d in v1], atol=1e-6
    )


def binary_request(
    images: list[bytes], parameters: dict | None = None, outputs=None, tensor: bytes | None = None
) -> tuple:
    """A v2 request with the binary tensor data extension, built by hand: (body, headers).
    ``tensor``: the binary BYTES tensor to send instead of the one ``images`` make."""
    if tensor is None:
        tensor = b"".join(struct.pack("<I", len(data)) + data for data in images)
    request = {
        "inputs": [
            {
                "name": "IMAGE",
                "shape": [len(images), 1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(tensor)},
            }
        ],
        "parameters": parameters or {},
    }
    if outputs is not None:
        request["outputs"] = outputs
    head = json.dumps(request).encode()
    return head + tensor, {"Inference-Header-Content-Length": str(len(head))}


def decode_binary_response(response) -> dict[str, np.ndarray]:
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    dtypes = {"INT32": "<i4", "FP32": "<f4"}
    offset, tensors = length, {}
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        chunk = response.content[offset : offset + size]
        tensors[output["name"]] = np.frombuffer(chunk, dtypes[output["datatype"]]).reshape(
            output["shape"]
        )
        offset += size
    assert offset == len(response.content)
    return tensors


def test_tritonclient_gets_the_detections_of_v1(client, address):
    """The real tritonclient, binary outputs (its default) and JSON outputs, one image and a
    batch of three of different sizes and formats: the same detections as /v1/detect."""
    images = [
        encode(noise(128, 128, 0)),
        encode(noise(256, 192, 1), ".jpg"),
        encode(noise(90, 150, 2), ".webp"),
    ]
    expected = [v1_detect(client, data, conf=CONF, iou=IOU) for data in images]
    params = {"conf": CONF, "iou": IOU}
    for binary in (True, False):
        [single] = detect_v2(address, MODEL, images[:1], binary, params)
        assert_same_as_v1(single, expected[0])
        batch = detect_v2(address, MODEL, images, binary, params)
        assert len(batch) == 3
        for answer, v1 in zip(batch, expected):
            assert_same_as_v1(answer, v1)
    # numbers as strings, as clients of Triton releases without double parameters send them
    strings = {"conf": str(CONF), "max_det": "2"}
    [capped] = detect_v2(address, MODEL, images[:1], parameters=strings)
    assert len(capped["scores"]) == 2
    np.testing.assert_allclose(capped["scores"], single["scores"][:2])


def test_metadata_and_health_through_tritonclient(address, client):
    info = describe(address, MODEL)
    assert info["live"] and info["ready"] and info["model_ready"]
    assert info["server"]["name"] == "detector"
    assert "binary_tensor_data" in info["server"]["extensions"]
    model = info["model"]
    assert model["name"] == MODEL and model["versions"] == ["1"]
    assert model["platform"] == "detector_onnxruntime"
    assert model["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1, 1]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in model["outputs"]] == [
        ("num_dets", "INT32", [-1, 1]),
        ("boxes", "FP32", [-1, -1, 4]),
        ("scores", "FP32", [-1, -1]),
        ("classes", "INT32", [-1, -1]),
    ]
    assert json.loads(model["parameters"]["class_names"]) == ["a", "b", "c"]
    assert model["parameters"]["max_det_default"] == MAX_DET

    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready",
                 f"/v2/models/{MODEL}/versions/1/ready"):  # fmt: skip
        response = client.get(path)
        assert response.status_code == 200 and response.content == b"", path
    assert client.get(f"/v2/models/{MODEL}/versions/1").json()["name"] == MODEL
    for path in ("/v2/models/yolo", "/v2/models/yolo/ready", f"/v2/models/{MODEL}/versions/2"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "yolo" in response.json()["error"] or "version" in response.json()["error"]
    wrong_method = client.get(INFER)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert client.post(f"/v2/models/{MODEL}").status_code == 405
    schema = client.get("/openapi.json").json()["paths"]
    templates = {"/v2/models/{name}/infer", "/v2", "/v2/health/ready", "/v2/models/{name}"}
    assert templates <= set(schema)
    infer = schema["/v2/models/{name}/infer"]["post"]
    assert "application/json" in infer["requestBody"]["content"]
    assert [p["name"] for p in infer["parameters"]] == ["name"]  # the path's model name


def test_json_base64_raw_and_hand_built_binary_requests(client):
    """The other ways to speak v2: JSON with base64 strings (and the id echoed), JSON outputs by
    default, binary outputs on request, and a raw binary request (the body is the image)."""
    image = encode(noise(120, 100, 5), ".jpg")
    expected = v1_detect(client, image, conf=CONF)
    request = {
        "id": "req-7",
        "parameters": {"conf": CONF},
        "inputs": [
            {
                "name": "IMAGE",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(image).decode()],
            }
        ],
    }
    response = client.post(INFER, json=request)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"] == "req-7" and body["model_name"] == MODEL and body["model_version"] == "1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert list(outputs) == list(OUTPUTS)
    count = outputs["num_dets"]["data"][0]
    assert outputs["boxes"]["shape"] == [1, MAX_DET, 4] and count == len(expected)
    boxes = np.array(outputs["boxes"]["data"], np.float64).reshape(1, MAX_DET, 4)[0, :count]
    classes = outputs["classes"]["data"][:count]
    assert_same_as_v1(
        {"boxes": boxes, "scores": np.array(outputs["scores"]["data"][:count]),
         "classes": np.array(classes)}, expected,
    )  # fmt: skip

    content, headers = binary_request(
        [image], {"conf": CONF, "max_det": 10},
        outputs=[{"name": "boxes", "parameters": {"binary_data": True}}, {"name": "num_dets"}],
    )  # fmt: skip
    mixed = client.post(INFER, content=content, headers=headers)
    assert mixed.status_code == 200, mixed.text
    assert mixed.headers["content-type"] == "application/octet-stream"
    length = int(mixed.headers["inference-header-content-length"])
    header = json.loads(mixed.content[:length])
    assert [o["name"] for o in header["outputs"]] == ["boxes", "num_dets"]
    assert header["outputs"][1]["data"] == [min(len(expected), 10)]
    assert len(mixed.content) == length + 10 * 4 * 4

    raw = client.post(INFER, content=image, headers={"Inference-Header-Content-Length": "0"})
    assert raw.status_code == 200, raw.text
    tensors = decode_binary_response(raw)
    count = int(tensors["num_dets"][0, 0])
    expected_default = v1_detect(client, image)  # default thresholds on both routes
    assert_same_as_v1(
        {k: tensors[k][0, :count] for k in ("boxes", "scores", "classes")},
        expected_default[:MAX_DET],
    )


def bad_requests() -> list[tuple[str, dict, int]]:
    png = encode(noise(64, 64, 3))
    jpeg = encode(noise(96, 96, 4), ".jpg")

    def binary(images, parameters=None, **changes):
        content, headers = binary_request(images, parameters)
        return {"content": content, "headers": {**headers, **changes}}

    def binary_parts(images, tensor):
        content, headers = binary_request(images, tensor=tensor)
        return {"content": content, "headers": headers}

    def tensor(**fields):
        base = {"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES",
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(png).decode()]}  # fmt: skip
        return {"json": {"inputs": [{**base, **fields}]}}

    good, good_headers = binary_request([png])
    return [
        ("empty body", {}, 400),
        ("zero-byte image", binary([b""]), 400),
        ("truncated JPEG", binary([jpeg[: len(jpeg) // 2]]), 400),
        ("text bytes", binary([b"just some text\n" * 10]), 415),
        ("text as a JSON string", tensor(parameters={}, data=["just some text"]), 415),
        ("50000x50000 PNG", binary([bomb_png(50000, 50000)]), 413),
        ("second image corrupt", binary([png, jpeg[:300]]), 400),
        ("bad JSON", {"content": b'{"inputs": [', "headers": {}}, 400),
        ("JSON array", {"json": [1, 2]}, 400),
        ("binary without the header", {"content": good}, 400),
        ("wrong input name", tensor(name="INPUT0"), 400),
        ("wrong datatype", tensor(datatype="UINT8"), 400),
        ("wrong shape", tensor(shape=[1, 3]), 400),
        ("shape and data disagree", tensor(shape=[2, 1]), 400),
        ("not base64", tensor(data=["@@@"]), 400),
        ("numbers as BYTES", tensor(parameters={}, data=[1, 2]), 400),
        ("two inputs", {"json": {"inputs": [tensor()["json"]["inputs"][0]] * 2}}, 400),
        ("no inputs", {"json": {"inputs": []}}, 400),
        (
            "binary size above the body",
            binary([png], **{"Inference-Header-Content-Length": str(len(good) + 5)}),
            400,
        ),  # fmt: skip
        (
            "header length not a number",
            binary([png], **{"Inference-Header-Content-Length": "x"}),
            400,
        ),  # fmt: skip
        (
            "extra bytes after the tensor",
            {"content": good + b"tail", "headers": good_headers},
            400,
        ),  # fmt: skip
        (
            "element length past binary_data_size",
            binary_parts([png], tensor=struct.pack("<I", len(png) + 10) + png),
            400,
        ),
        (
            "body shorter than binary_data_size",
            {"content": good[:-10], "headers": good_headers},
            400,
        ),  # fmt: skip
        ("negative conf", binary([png], {"conf": -0.1}), 400),
        ("conf above 1", binary([png], {"conf": 1.5}), 400),
        ("iou=nan", binary([png], {"iou": float("nan")}), 400),
        ("max_det=10**9", binary([png], {"max_det": 10**9}), 400),
        ("max_det as a word", binary([png], {"max_det": "five"}), 400),
        ("max_det not whole", binary([png], {"max_det": 2.5}), 400),
        ("conf as a boolean", binary([png], {"conf": True}), 400),
        ("unknown class", binary([png], {"classes": "zebra"}), 400),
        ("unknown parameter", binary([png], {"confidence": 0.5}), 400),
        ("unknown output", {"json": {**tensor()["json"], "outputs": [{"name": "masks"}]}}, 400),
        ("gzip that is not", binary([png], **{"Content-Encoding": "gzip"}), 400),
        ("brotli", binary([png], **{"Content-Encoding": "br"}), 415),
        ("33 images", binary([png] * 33), 413),
    ]


def test_bad_inputs_get_json_4xx_and_the_server_keeps_serving(client, server):
    answers = {}
    for name, request, status in bad_requests():
        response = client.post(INFER, **request)
        assert response.headers["content-type"] == "application/json", name
        body = response.json()
        answers[name] = body["error"]
        assert response.status_code == status, (name, response.status_code, body)
        assert body["error"] and body["code"] and body["request_id"], name
        assert client.get("/v2/health/live").status_code == 200
    assert "pixels" in answers["50000x50000 PNG"]
    assert "IMAGE[1]" in answers["second image corrupt"]
    assert "INPUT0" in answers["wrong input name"] and "IMAGE" in answers["wrong input name"]
    assert "zebra" in answers["unknown class"]
    assert "Inference-Header-Content-Length" in answers["binary without the header"]
    unknown = client.post("/v2/models/yolo/infer", **binary_request_kwargs())
    assert unknown.status_code == 404 and "yolo" in unknown.json()["error"]
    assert client.post(INFER, **binary_request_kwargs()).status_code == 200
    assert server.process.poll() is None


def binary_request_kwargs() -> dict:
    content, headers = binary_request([encode(noise(64, 64, 6))])
    return {"content": content, "headers": headers}


def test_tritonclient_sees_errors_as_exceptions(address):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match=r"IMAGE\[0\]: corrupt"):
        detect_v2(address, MODEL, [encode(noise(96, 96, 4), ".jpg")[:500]])
    with pytest.raises(InferenceServerException, match="unknown model"):
        detect_v2(address, "yolo", [encode(noise(64, 64, 1))])
    with pytest.raises(InferenceServerException, match="max_det"):
        detect_v2(address, MODEL, [encode(noise(64, 64, 1))], parameters={"max_det": 10**9})


def test_30_mb_bodies_are_refused_and_counted(server, client):
    assert client.post(INFER, content=b"{").status_code == 400
    total = 30 * 1024 * 1024
    head = (f"POST {INFER} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Inference-Header-Content-Length: 100\r\n").encode()  # fmt: skip
    declared = raw_post(server.port, head + b"Content-Length: %d\r\n\r\n" % total, [])
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    # answered by the body-limit middleware, in the v2 form: the message under "error"
    error = json.loads(declared.split(b"\r\n\r\n", 1)[1])
    assert error["code"] == "body_too_large" and "larger than the limit" in error["error"]
    part = b"\x01" * 65536
    chunks = (b"%x\r\n" % len(part) + part + b"\r\n" for _ in range(total // len(part)))
    streamed = raw_post(server.port, head + b"Transfer-Encoding: chunked\r\n\r\n", chunks)
    assert streamed.startswith(b"HTTP/1.1 413"), streamed[:200]
    assert client.post(INFER, **binary_request_kwargs()).status_code == 200

    metrics = client.get("/metrics").text
    route = 'route="/v2/models/{name}/infer"'  # the template: one series for every model
    assert f'detector_http_requests_total{{method="POST",{route},status="200"}}' in metrics
    assert f'detector_http_requests_total{{method="POST",{route},status="400"}}' in metrics
    assert f'detector_http_requests_total{{method="POST",{route},status="413"}}' in metrics
    count = next(
        line for line in metrics.splitlines() if line.startswith("detector_batch_size_count")
    )
    assert float(count.split()[-1]) >= 1


def test_not_ready_and_api_keys_in_process(serve_onnx):
    """Outside the lifespan the model is not loaded: readiness 503, metadata and infer 503, all
    in the v2 error format; with API keys, metadata and infer need one, health does not."""
    settings = ServeSettings(model=serve_onnx, threads=1, api_keys=["k1"], name="nano")
    client = TestClient(create_app(settings))
    assert client.get("/v2/health/live").status_code == 200
    for path in ("/v2/health/ready", "/v2/models/nano/ready"):
        response = client.get(path)
        assert response.status_code == 503 and response.headers["retry-after"] == "1", path
        assert response.json()["code"] == "not_ready"
    with client:
        assert client.get("/v2/models/nano/ready").status_code == 200
        missing = client.get("/v2/models/nano")
        assert missing.status_code == 401 and "API key" in missing.json()["error"]
        content, headers = binary_request([encode(noise(64, 64, 2))])
        assert client.post("/v2/models/nano/infer", content=content,
                           headers=headers).status_code == 401  # fmt: skip
        keyed = client.post("/v2/models/nano/infer", content=content,
                            headers={**headers, "X-API-Key": "k1"})  # fmt: skip
        assert keyed.status_code == 200, keyed.text
        # the name is the setting's; the key is asked first, so names are not probed without one
        assert client.get("/v2/models/detector").status_code == 401
        other = client.get("/v2/models/detector", headers={"X-API-Key": "k1"})
        assert other.status_code == 404 and "unknown model 'detector'" in other.json()["error"]


def test_deadline_504_and_full_queue_503_in_process(serve_onnx):
    """The /v2 route shares the dynamic batcher: a batch that waits 3 s for company passes a
    0.2 s deadline (504); with a queue of one, a second request while the first waits is 503."""
    from concurrent.futures import ThreadPoolExecutor

    content, headers = binary_request([encode(noise(64, 64, 3))])
    late = ServeSettings(model=serve_onnx, threads=1, timeout_s=0.2, max_delay_ms=3000)
    with TestClient(create_app(late)) as client:
        response = client.post(INFER, content=content, headers=headers)
        assert response.status_code == 504 and response.json()["code"] == "deadline_exceeded"
        assert "0.2 s" in response.json()["error"]
    full = ServeSettings(model=serve_onnx, threads=1, queue_size=1, max_delay_ms=1500)
    with TestClient(create_app(full)) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, INFER, content=content, headers=headers)
        time.sleep(0.5)  # the first waits 1.5 s in the queue for company
        second = client.post(INFER, content=content, headers=headers)
        assert second.status_code == 503 and second.json()["code"] == "overloaded"
        # refused on arrival by the admission middleware (before its body was read), in the
        # v2 form: the message under "error"
        assert "requests are already waiting" in second.json()["error"]
        assert second.headers["retry-after"] == "1"
        assert first.result().status_code == 200


def test_the_client_script_runs_unchanged(address, client, tmp_path, capsys):
    """``python tests/serve/v2_client.py --url HOST:PORT --model NAME IMAGE`` (the command to
    point at Triton serving the exported repository) prints readiness and the detections."""
    from v2_client import main

    path = tmp_path / "frame.jpg"
    path.write_bytes(encode(noise(100, 140, 9), ".jpg"))
    assert main(["--url", address, "--model", MODEL, "--conf", str(CONF), str(path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"live": True, "ready": True, "model_ready": True}
    expected = v1_detect(client, path.read_bytes(), conf=CONF)
    answer = {k: np.array(lines[1][k]) for k in ("boxes", "scores", "classes")}
    assert_same_as_v1(answer, expected)


def test_compressed_requests_and_a_gzip_bomb(address, client):
    """tritonclient's request compression (gzip, deflate) is understood; a small gzip body that
    inflates past the body limit (30 MB of zeros in about 30 KB) is 413 without inflating it."""
    import gzip

    import tritonclient.http as httpclient

    image = encode(noise(100, 100, 11), ".jpg")
    expected = v1_detect(client, image, conf=CONF)
    triton = httpclient.InferenceServerClient(address)
    try:
        for algorithm in ("gzip", "deflate"):
            tensor = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[image]], dtype=object))
            result = triton.infer(MODEL, [tensor], parameters={"conf": CONF},
                                  request_compression_algorithm=algorithm)  # fmt: skip
            count = int(result.as_numpy("num_dets")[0, 0])
            answer = {k: result.as_numpy(k)[0, :count] for k in ("boxes", "scores", "classes")}
            assert_same_as_v1(answer, expected)
    finally:
        triton.close()
    bomb = gzip.compress(b"\0" * (30 * 1024 * 1024))
    assert len(bomb) < 100_000
    response = client.post(INFER, content=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413 and response.json()["code"] == "body_too_large"
