"""The v2 wire format on its own (no server): BYTES tensors, request parsing, and responses that
``tritonclient``'s own decoder reads back."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serve.routes.v2.io import OUTPUT_NAMES, detections_to_tensors
from serve.routes.v2.protocol import (
    BodyTooLarge,
    ProtocolError,
    encode_infer_response,
    inflate,
    join_bytes_tensor,
    parse_infer_request,
    split_bytes_tensor,
)
from serve.runtime.predictor import Detections


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_bytes_tensor_round_trip(elements):
    assert split_bytes_tensor(join_bytes_tensor(elements)) == elements


def test_bytes_tensor_matches_tritonclient():
    """Our layout of a BYTES tensor is tritonclient's (``serialize_byte_tensor``)."""
    from tritonclient.utils import serialize_byte_tensor

    elements = [b"\xff\xd8\xff jpeg", b"", b"\x89PNG png"]
    theirs = serialize_byte_tensor(np.array(elements, dtype=object)).item()
    assert join_bytes_tensor(elements) == theirs
    assert split_bytes_tensor(theirs) == elements


def request_body(elements: list[bytes], **extra) -> tuple[bytes, str]:
    tensor = join_bytes_tensor(elements)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "IMAGE",
                    "shape": [len(elements), 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(tensor)},
                }
            ],
            **extra,
        }
    ).encode()
    return head + tensor, str(len(head))


def test_parse_binary_json_and_raw_requests():
    body, length = request_body([b"one", b"two"], id="x", parameters={"conf": 0.5})
    parsed = parse_infer_request(body, length)
    assert parsed.images == [b"one", b"two"] and parsed.request_id == "x"
    assert parsed.options == {"conf": 0.5}
    assert parsed.outputs == [(name, False) for name in OUTPUT_NAMES]  # JSON unless asked

    body, length = request_body(
        [b"a"],
        parameters={"binary_data_output": True},
        outputs=[{"name": "scores"}, {"name": "boxes", "parameters": {"binary_data": False}}],
    )
    assert parse_infer_request(body, length).outputs == [("scores", True), ("boxes", False)]

    nested = {
        "inputs": [
            {"name": "IMAGE", "shape": [2, 1], "datatype": "BYTES", "data": [["first"], ["second"]]}
        ]
    }
    assert parse_infer_request(json.dumps(nested).encode(), None).images == [b"first", b"second"]

    raw = parse_infer_request(b"\xff\xd8 an image", "0")
    assert raw.images == [b"\xff\xd8 an image"]
    assert raw.outputs == [(name, True) for name in OUTPUT_NAMES]


def _with_header(head: bytes, tail: bytes = b"") -> tuple[bytes, str]:
    return head + tail, str(len(head))


_IMAGE = b'{"inputs": [{"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES", '


@pytest.mark.parametrize(
    ("body", "length", "words"),
    [
        (b"", None, "empty"),
        (b"[]", None, "JSON object"),
        (b'{"inputs": [], "extra": 1}', None, "unknown request field"),
        (_IMAGE.replace(b"[1, 1]", b"[-1, 1]") + b'"data": []}]}', None, "shape"),
        (*_with_header(_IMAGE + b'"parameters": {"binary_data_size": -4}}]}'), "not a size"),
        (
            *_with_header(_IMAGE + b'"parameters": {"binary_data_size": 3}}]}', b"abc"),
            "4-byte length",
        ),
        (
            *_with_header(_IMAGE + b'"parameters": {"binary_data_size": 0}}]}', b"abc"),
            "element",
        ),
        (
            _IMAGE + b'"data": ["a"]}], "parameters": {"binary_data_output": 1}}',
            None,
            "true or false",
        ),
        (b"{}", "2x", "byte count"),
    ],
)
def test_malformed_requests_name_their_fault(body, length, words):
    with pytest.raises(ProtocolError, match=words):
        parse_infer_request(body, length)


def test_response_decodes_with_tritonclient():
    """Binary, JSON and mixed responses, read by tritonclient's ``InferResult``."""
    from tritonclient.http import InferResult

    detections = [
        Detections(
            np.array([[1.5, 2.25, 30.0, 40.125]], np.float32),
            np.array([0.875], np.float32),
            np.array([2], np.int64),
        ),
        Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)),
    ]
    tensors = detections_to_tensors(detections, max_det=5)
    for binary in ([True] * 4, [False] * 4, [True, False, True, False]):
        outputs = list(zip(OUTPUT_NAMES, binary))
        body, headers, media_type = encode_infer_response("detector", "1", "r1", tensors, outputs)
        length = headers.get("Inference-Header-Content-Length")
        assert media_type == ("application/octet-stream" if any(binary) else "application/json")
        result = InferResult.from_response_body(body, header_length=length and int(length))
        assert result.get_response()["id"] == "r1"
        for name in OUTPUT_NAMES:
            np.testing.assert_array_equal(result.as_numpy(name), tensors[name])
            assert result.as_numpy(name).dtype == tensors[name].dtype


def test_inflate_limits_the_output():
    plain = b"x" * 5000
    assert inflate(gzip.compress(plain), "gzip", 5000) == plain
    with pytest.raises(BodyTooLarge):
        inflate(gzip.compress(plain), "gzip", 4999)
    assert inflate(plain, None, 10) == plain  # nothing to undo: the body limit applied already
    with pytest.raises(ProtocolError, match="truncated"):
        inflate(gzip.compress(plain)[:-12], "gzip", 10_000)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def count_values(value) -> int:
    if isinstance(value, list):
        return 1 + sum(count_values(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(1 + count_values(v) for v in value.values())
    return 1


@given(JSON_VALUES, st.booleans())
def test_json_pre_scan_passes_small_json_and_counts_every_value(value, ascii_only):
    """The scan never refuses JSON within its limits, and counts at least one token per value
    json.loads would build (strings with escaped quotes and backslashes included)."""
    from serve.routes.v2.protocol import TooManyElements, check_json_size

    text = json.dumps(value, ensure_ascii=ascii_only).encode()
    check_json_size(text, 10_000, max_depth=100)
    values = count_values(value)
    if values > 1:
        with pytest.raises(TooManyElements):
            check_json_size(text, values - 1, max_depth=100)


def test_bombs_are_refused_before_they_are_expanded():
    """Millions of tiny strings, deep nesting, a shape past the image limit, and a binary
    tensor of millions of empty elements are refused without building their objects."""
    from serve.routes.v2.protocol import TooManyElements

    head = b'{"inputs":[{"name":"IMAGE","shape":[1,1],"datatype":"BYTES","data":'
    with pytest.raises(TooManyElements):
        parse_infer_request(head + b"[" + b'"ab",' * 1_000_000 + b'"ab"]}]}', None)
    with pytest.raises(ProtocolError, match="nests"):
        parse_infer_request(b"[" * 100_000, None)
    with pytest.raises(ProtocolError, match="nests"):
        parse_infer_request(b'{"inputs":' + b'{"a":' * 5000, None)
    big = b'{"inputs":[{"name":"IMAGE","shape":[1000000,1],"datatype":"BYTES","data":[]}]}'
    with pytest.raises(TooManyElements, match="limit of 32"):
        parse_infer_request(big, None, max_images=32)
    body, length = request_body([b""] * 1000)
    with pytest.raises(TooManyElements):
        parse_infer_request(body, length, max_images=32)
    tensor = join_bytes_tensor([b"x"]) + join_bytes_tensor([b""] * 100_000)
    with pytest.raises(ProtocolError, match="after the 1 element"):
        split_bytes_tensor(tensor, 1)
    with pytest.raises(ProtocolError, match="UTF-8"):
        parse_infer_request('{"inputs": []}'.encode("utf-16"), None)
    with pytest.raises(ProtocolError, match="not a byte count"):
        parse_infer_request(b"{}", "\u00b2")
