"""Property-based fuzzing of a real ``detector serve``: no input may get a 5xx, and the server
answers ``/readyz`` afterwards.

Two sources of requests:

- **the server's own OpenAPI schema** (schemathesis): for every operation, positive and
  negative cases (valid and invalid query parameters, path parameters, headers and bodies);
- **hand-written hypothesis strategies** for what the schema cannot say: multipart uploads of
  random bytes and of images cut short or garbled, multipart bodies with broken boundaries, v2
  binary-extension bodies with a wrong ``Inference-Header-Content-Length`` or
  ``binary_data_size``, random JSON and compressed bodies.

The test (``tests/serve/test_serve_fuzz.py``) runs a bounded number of cases; this script runs
as many as asked:

    python benchmarks/serve_fuzz.py --cases 50000 [--model M.onnx] [--minutes 10]

Without ``--model`` a randomly initialised yolox_nano is exported at 128 px. Prints the cases
run per source and every 5xx (status, method, path, a reproduction), and exits 1 on any.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import httpx
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from serve.launch import ServerProcess

INFER = "/v2/models/detector/infer"
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class Tally:
    """Cases run and the 5xx seen, per source."""

    cases: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def record(self, source: str, status: int, what: str) -> None:
        self.cases[source] = self.cases.get(source, 0) + 1
        if status >= 500:
            self.errors.append(f"{status} {what}")

    @property
    def total(self) -> int:
        return sum(self.cases.values())


def run_cases(strategy: st.SearchStrategy, cases: int, check: Callable[[object], None]) -> None:
    """``check`` on ``cases`` values drawn from ``strategy`` (generation only: a 5xx is counted,
    not shrunk, so one run reports every failure)."""

    @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(value=strategy)
    def run(value: object) -> None:
        check(value)

    try:
        run()
    except Unsatisfiable:  # nothing to vary (a negative case of an operation without inputs)
        pass


# ---------------------------------------------------------------------------- schemathesis


def openapi_schema(model: Path) -> dict:
    """The OpenAPI schema of a server for ``model``, built in-process (the served
    ``/openapi.json`` may be turned off)."""
    from serve.app import create_app
    from serve.settings import load_settings

    return create_app(load_settings(model=model)).openapi()


def fuzz_schema(
    url: str, raw: dict, cases_per_operation: int, tally: Tally, deadline: float
) -> None:
    """Positive and negative cases of every operation of the OpenAPI schema ``raw``."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(raw)
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() > deadline:
                return
            label = f"schema {operation.method.upper()} {operation.path} ({mode.value})"
            run_cases(operation.as_strategy(generation_mode=mode), cases_per_operation,
                      partial(_call_case, url, label, tally, deadline))  # fmt: skip


def _call_case(url: str, label: str, tally: Tally, deadline: float, case: object) -> None:
    """Send one schemathesis case and count its status."""
    if time.monotonic() > deadline:
        return
    try:
        response = case.call(base_url=url, timeout=60)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - a client-side refusal (a header it cannot send)
        if "Connection" in type(exc).__name__:
            tally.record("schema", 599, f"{label}: connection failed: {exc}")
        return
    tally.record("schema", response.status_code, f"{label}: {case.as_curl_command()}")  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- hand-written


def small_image(seed: int, ext: str) -> bytes:
    """A small image file of the given type."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (24 + seed % 40, 24 + seed % 50, 3), dtype=np.uint8)
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


IMAGES = [small_image(i, ext) for i, ext in enumerate((".jpg", ".png", ".bmp", ".webp"))]


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, or a real image cut short, garbled or with random bytes after it."""
    kind = draw(st.sampled_from(["random", "truncated", "garbled", "prefixed", "real"]))
    image = draw(st.sampled_from(IMAGES))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "truncated":
        return image[: draw(st.integers(0, len(image)))]
    if kind == "garbled":
        data = bytearray(image)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "prefixed":
        return image[:16] + draw(st.binary(max_size=256))
    return image


@st.composite
def multipart(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """A ``/v1`` multipart request, possibly broken: wrong or missing boundary, cut short,
    random parts, random query."""
    path = draw(st.sampled_from(["/v1/detect", "/v1/detect/batch"]))
    field_name = "image" if path == "/v1/detect" else "images"
    boundary = draw(st.text("abcdefXYZ0123456789-", min_size=1, max_size=30))
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([field_name, "image", "images", "other", ""]))
        filename = draw(st.sampled_from(['; filename="a.jpg"', "", '; filename=""']))
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\""
                     f"{filename}\r\n\r\n".encode() + draw(image_bytes()) + b"\r\n")  # fmt: skip
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    cut = draw(st.sampled_from(["whole", "truncated", "garbage"]))
    if cut == "truncated":
        body = body[: draw(st.integers(0, len(body)))]
    elif cut == "garbage":
        body = draw(st.binary(max_size=256)) + body
    declared = draw(st.sampled_from([boundary, boundary + "x", "", None]))
    content_type = "multipart/form-data" + ("" if declared is None else f"; boundary={declared}")
    query = draw(st.sampled_from(["", "?format=image", "?classes=a,1", "?classes=%C2%B2",
                                  "?max_det=0", "?conf=nan", "?classes=" + "9" * 30]))  # fmt: skip
    return path + query, body, {"Content-Type": content_type}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),  # fmt: skip
    max_leaves=20,
)


def v2_head(count: int, size: int | None, data: object = None, **tensor: object) -> dict:
    """A v2 request's JSON, with the binary extension's ``binary_data_size`` or ``data``."""
    entry: dict = {"name": "IMAGE", "shape": [count, 1], "datatype": "BYTES", **tensor}
    if size is not None:
        entry.setdefault("parameters", {})["binary_data_size"] = size
    if data is not None:
        entry["data"] = data
    return {"inputs": [entry]}


@st.composite
def v2_binary(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """A v2 binary-extension request whose header length, binary_data_size, element lengths or
    shape may be wrong; or a raw binary request (header length 0); or compressed."""
    elements = draw(st.lists(image_bytes(), min_size=0, max_size=3))
    tensor = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    if draw(st.booleans()):  # a wrong length prefix somewhere
        tensor = draw(st.binary(max_size=8)) + tensor[draw(st.integers(0, len(tensor))) :]
    size = len(tensor) + draw(st.sampled_from([0, 0, -1, 1, 4, -4, 1 << 31]))
    count = max(len(elements) + draw(st.sampled_from([0, 0, 1, -1, 1000])), 0)
    head = v2_head(count, max(size, 0))
    extra = draw(st.sampled_from([None, "content_type", "binary_data_size"]))
    if extra is not None:  # an unknown parameter, or binary_data_size of the wrong type
        head["inputs"][0]["parameters"][extra] = draw(json_values)
    options = [{}, {"conf": "0.3"}, {"max_det": "x"}, {"classes": "²"}, {"binary_data_output": 1}]
    head["parameters"] = draw(st.sampled_from(options))
    text = json.dumps(head).encode()
    body = text + tensor
    length = draw(st.sampled_from([str(len(text)), str(len(text) + 1), str(len(text) - 1), "0",
                                   "-1", "abc", "²", str(len(body) + 5), ""]))  # fmt: skip
    headers = {HEADER_LENGTH: length, "Content-Type": "application/octet-stream"}
    encoding = draw(st.sampled_from([None, None, "gzip", "deflate", "br", "gzip-broken"]))
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    elif encoding == "gzip-broken":
        body, encoding = gzip.compress(body)[: max(len(body) // 2, 1)], "gzip"
    if encoding:
        headers["Content-Encoding"] = encoding
    return INFER, body, headers


@st.composite
def v2_json(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """A v2 JSON request with random fields, data, parameters, outputs; or random JSON."""
    kind = draw(st.sampled_from(["request", "random", "nested", "bytes"]))
    if kind == "random":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "nested":
        depth = draw(st.integers(1, 5000))
        body = b'{"inputs":' + b"[" * depth + b"]" * draw(st.integers(0, depth)) + b"}"
    elif kind == "bytes":
        body = draw(st.binary(max_size=256))
    else:
        images = draw(st.lists(image_bytes(), max_size=3))
        b64 = draw(st.booleans())
        data = [base64.b64encode(i).decode() if b64 else i.decode("latin-1") for i in images]
        if draw(st.booleans()):
            data = [[d] for d in data]
        request = v2_head(len(images) + draw(st.sampled_from([0, 0, 1, -1])), None, data=data)
        if b64:
            request["inputs"][0]["parameters"] = {"content_type": "base64"}
        request["parameters"] = draw(st.dictionaries(
            st.sampled_from(["conf", "iou", "max_det", "classes", "binary_data_output", "x"]),
            json_values, max_size=3))  # fmt: skip
        if draw(st.booleans()):
            request["outputs"] = draw(json_values)
        if draw(st.booleans()):
            request["id"] = draw(json_values)
        body = json.dumps(request).encode()
    return INFER, body, {"Content-Type": "application/json"}


HAND_WRITTEN: dict[str, Callable[[], st.SearchStrategy]] = {
    "multipart": multipart,
    "v2_binary": v2_binary,
    "v2_json": v2_json,
}


def fuzz_hand_written(url: str, cases: int, tally: Tally, deadline: float) -> None:
    """``cases`` requests from each hand-written strategy."""
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
        for source, strategy in HAND_WRITTEN.items():
            run_cases(strategy(), cases, partial(_post, client, source, tally, deadline))


def _post(
    client: httpx.Client, source: str, tally: Tally, deadline: float, request: object
) -> None:
    """Send one hand-written request and count its status."""
    if time.monotonic() > deadline:
        return
    path, body, headers = request  # type: ignore[misc]
    try:
        sent = {name: value.encode() for name, value in headers.items()}  # UTF-8 values too
        status = client.post(path, content=body, headers=sent).status_code
        what = ""
    except httpx.TransportError as exc:
        status, what = 599, f"connection failed: {exc}"
    shown = f"{body[:200]!r} ({len(body)} bytes)"
    tally.record(source, status, f"{source} POST {path} {headers} {shown} {what}")


def fuzz(server: ServerProcess, schema_cases: int, hand_cases: int, seconds: float = 1e9) -> Tally:
    """Both sources against ``server``: ``schema_cases`` per operation and mode, ``hand_cases``
    per hand-written strategy, stopping after ``seconds``."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    fuzz_hand_written(server.url, hand_cases, tally, deadline)
    schema = openapi_schema(server.model)
    fuzz_schema(server.url, schema, schema_cases, tally, deadline)
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="ONNX model (default: nano exported here)")
    parser.add_argument("--cases", type=int, default=50_000, help="cases in all (about)")
    parser.add_argument("--minutes", type=float, default=1e6, help="stop after this long")
    args = parser.parse_args()
    from serve_bombs import export_model  # beside this script

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = args.model or export_model(folder)
        with ServerProcess(model, folder / "serve.log", ["--threads", "1"],
                           access_log=folder / "access.log") as server:  # fmt: skip
            operations = len(openapi_schema(model)["paths"])
            # half the cases from the schema (about 2 modes x 1.5 methods per path), half
            # from the hand-written strategies
            schema_cases = max(args.cases // 2 // (3 * operations), 1)
            hand_cases = max(args.cases // 2 // len(HAND_WRITTEN), 1)
            started = time.monotonic()
            tally = fuzz(server, schema_cases, hand_cases, args.minutes * 60)
            alive = httpx.get(f"{server.url}/readyz", trust_env=False).status_code == 200
    for error in tally.errors[:50]:
        print(error)
    print(json.dumps({"cases": tally.total, "by_source": tally.cases,
                      "server_errors": len(tally.errors), "alive_after": alive,
                      "seconds": round(time.monotonic() - started)}))  # fmt: skip
    return 0 if alive and not tally.errors else 1


if __name__ == "__main__":
    sys.exit(main())
