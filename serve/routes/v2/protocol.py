"""The KServe v2 (Open Inference Protocol) HTTP wire format for our one model: an inference
request body -> encoded images and options, output tensors -> a response body. Pure functions,
no web framework, so the format is tested on its own.

The request is a JSON object, optionally followed by binary tensor data (Triton's *binary tensor
data extension*, which ``tritonclient.http`` uses by default):

- ``Inference-Header-Content-Length: N`` says the first ``N`` bytes of the body are the JSON; the
  rest is each binary input's bytes, in the order of ``inputs``, ``parameters.binary_data_size``
  bytes each. A ``BYTES`` tensor in binary is its elements one after another, each a 4-byte
  little-endian unsigned length followed by that many bytes.
- Without the header the whole body is JSON; ``BYTES`` elements are then JSON strings, taken as
  their UTF-8 bytes (the spec's rule), or base64 text when the input carries
  ``parameters.content_type = "base64"`` (MLServer's convention; image files are not UTF-8).
- ``Inference-Header-Content-Length: 0`` is a *raw binary request*: the whole body is the one
  input's one element (an image file, batch 1), and every output comes back binary.

The model's input is ``IMAGE`` (``BYTES`` ``[B, 1]`` or ``[B]``), its outputs those of
:mod:`serve.routes.v2.io`. Request ``parameters`` ``conf``, ``iou``, ``max_det`` and
``classes`` (names or ids, comma-separated) choose the thresholds; ``binary_data_output`` and
an output's own ``binary_data`` choose binary outputs (JSON by default). An error is
:class:`ProtocolError` (HTTP 400) with a message naming the field at fault.

Memory is bounded before anything is expanded: a compressed body is inflated incrementally and
refused once it passes the body limit (:func:`inflate`); the JSON is pre-scanned
(:func:`check_json_size`) so that a body of millions of tiny values or deeply nested arrays is
refused before ``json.loads`` builds a Python object for each; the declared shape is checked
against the image limit (:class:`TooManyElements`) before base64 or binary data is decoded, and
a binary ``BYTES`` tensor is split into at most the declared number of elements.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve.routes.v2.io import IMAGE_INPUT, OUTPUT_NAMES, OUTPUT_SPECS
from serve.runtime.errors import ServeError

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"
REQUEST_OPTIONS = ("conf", "iou", "max_det", "classes")
_LENGTH = struct.Struct("<I")

MAX_JSON_DEPTH = 16
"""Deepest nesting of JSON arrays and objects accepted (a request nests 5 deep at most)."""
JSON_TOKENS_FIXED = 512
"""JSON tokens (strings, numbers, brackets, commas, colons) a request may have besides those of
its image elements: ids, parameters, outputs."""
JSON_TOKENS_PER_IMAGE = 6
"""JSON tokens one image element may take (``["..."],`` nested as ``[B, 1]``)."""
DEFAULT_MAX_IMAGES = 32
"""Images per request when the caller gives no limit (the server passes ``max_images``)."""

# one JSON token after optional whitespace: a string's opening quote, a structural character,
# or a run of number / literal characters; anything else is not JSON
_JSON_TOKEN = re.compile(rb'[ \t\n\r]*(?:(")|([\[{])|([\]}])|[,:]|[-+.0-9A-Za-z]+)')
_UTF8_BOM = b"\xef\xbb\xbf"


class ProtocolError(ServeError, ValueError):
    """A request that breaks the v2 protocol or our model's contract (a :class:`ServeError`:
    HTTP ``status``)."""

    status = 400
    code = "invalid_request"


class BodyTooLarge(ProtocolError):
    """The body, once decompressed, is larger than the limit."""

    status = 413
    code = "body_too_large"


class TooManyElements(ProtocolError):
    """More images, or more JSON values, in one request than the server takes."""

    status = 413
    code = "too_many_images"


class UnsupportedEncoding(ProtocolError):
    """A ``Content-Encoding`` other than gzip, deflate or none."""

    status = 415
    code = "unsupported_media_type"


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a ``Content-Encoding`` of ``gzip`` or ``deflate`` (``tritonclient``'s
    ``request_compression_algorithm``), never producing more than ``limit`` bytes."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.strip().lower())
    if wbits is None:
        raise UnsupportedEncoding(
            f"Content-Encoding: {encoding!r} is not supported (gzip, deflate or none)"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"the {encoding} body does not decompress: {exc}") from exc
    if len(plain) > limit:
        raise BodyTooLarge(
            f"the decompressed request body is larger than the limit of {limit} bytes"
        )
    if not inflater.eof:
        raise ProtocolError(f"the {encoding} body is truncated")
    return plain


@dataclass
class InferRequest:
    """What an inference request asks for."""

    images: list[bytes]  # one encoded image file per batch item
    options: dict[str, Any] = field(default_factory=dict)  # conf/iou/max_det/classes as given
    outputs: list[tuple[str, bool]] = field(default_factory=list)  # (name, binary) in order
    request_id: str | None = None


def parse_infer_request(
    body: bytes, header_length: str | None, max_images: int = DEFAULT_MAX_IMAGES
) -> InferRequest:
    """An inference request's body and its ``Inference-Header-Content-Length`` header (``None``
    when absent) -> :class:`InferRequest` of at most ``max_images`` images.

    Raises:
        ProtocolError: malformed JSON, wrong input name/datatype/shape, binary sizes that do not
            add up, unknown parameters or outputs.
        TooManyElements: a shape of more than ``max_images`` images, or JSON of more values
            than such a request needs (413, before any of it is decoded).
    """
    if header_length is not None:
        if not (header_length.strip().isascii() and header_length.strip().isdigit()):
            raise ProtocolError(f"{HEADER_LENGTH}: {header_length!r} is not a byte count")
        length = int(header_length)
        if length == 0:  # raw binary request: the body is the one image
            return InferRequest([body], outputs=[(name, True) for name in OUTPUT_NAMES])
        if length > len(body):
            raise ProtocolError(
                f"{HEADER_LENGTH}: {length} is more than the body's {len(body)} bytes"
            )
        head, binary = body[:length], memoryview(body)[length:]
    else:
        head, binary = body, memoryview(b"")
    request = _json_object(head, header_length is None, max_images)
    unknown = set(request) - {"id", "parameters", "inputs", "outputs"}
    if unknown:
        raise ProtocolError(
            f"unknown request field(s) {sorted(unknown)}; a v2 inference request "
            "has id, parameters, inputs, outputs"
        )
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"id: must be a string, not {type(request_id).__name__}")
    options, binary_default = _request_parameters(request.get("parameters"))
    images, used = _image_input(request.get("inputs"), binary, max_images)
    if used != len(binary):
        raise ProtocolError(
            f"{len(binary) - used} bytes of binary data after the inputs "
            f"declared in the JSON ({used} bytes declared by binary_data_size)"
        )
    outputs = _requested_outputs(request.get("outputs"), binary_default)
    return InferRequest(images, options, outputs, request_id)


def check_json_size(text: bytes, max_tokens: int, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON that would cost more to parse than a request may: more than ``max_tokens``
    tokens (each becomes at most one Python object) or nesting deeper than ``max_depth``. A
    scan of the bytes that builds nothing: the tokens are counted up to the limit, a string of
    any length is skipped at C speed (an escaped quote inside it counts as one more token), and
    the first byte that cannot start a JSON token ends the scan (``json.loads`` then reports
    that error, after building at most the tokens before it). Only UTF-8 is accepted
    (``json.loads`` would also take UTF-16 and UTF-32, which this scan does not read).

    Raises:
        ProtocolError: not UTF-8 (400), nested too deep (400).
        TooManyElements: too many tokens (413).
    """
    if json.detect_encoding(text) not in ("utf-8", "utf-8-sig"):
        raise ProtocolError("the request JSON must be UTF-8")
    position = len(_UTF8_BOM) if text.startswith(_UTF8_BOM) else 0
    tokens = depth = 0
    match = _JSON_TOKEN.match
    while position < len(text):
        found = match(text, position)
        if found is None or found.end() == position:
            return  # not JSON (or only trailing whitespace): json.loads says what is wrong
        position = found.end()
        tokens += 1
        kind = found.lastindex
        while kind == 1 and tokens <= max_tokens:  # inside a string: find its closing quote
            quote = text.find(b'"', position)
            if quote < 0:
                return  # never closed: json.loads says so
            position = quote + 1
            if _backslashes_before(text, quote, found.end()) % 2 == 0:
                break
            tokens += 1  # an escaped quote: the string goes on
        if tokens > max_tokens:
            raise TooManyElements(
                f"the request JSON has more than {max_tokens} values, brackets and separators; "
                "a request of the images this server takes needs fewer (send images as "
                f"base64 strings or binary data, at most {_image_hint(max_tokens)} per request)"
            )
        if kind == 2:
            depth += 1
            if depth > max_depth:
                raise ProtocolError(
                    f"the request JSON nests arrays and objects more than {max_depth} deep"
                )
        elif kind == 3:
            depth -= 1


def _backslashes_before(text: bytes, end: int, start: int) -> int:
    """How many backslashes come right before ``text[end]`` (not before ``start``), counted in
    chunks at C speed (a run of millions costs thousands of steps, not millions)."""
    count = 0
    while end > start and text[end - 1] == 0x5C:
        low = max(start, end - 4096)
        chunk = text[low:end]
        kept = len(chunk.rstrip(b"\\"))
        count += len(chunk) - kept
        if kept:
            break
        end = low
    return count


def _image_hint(max_tokens: int) -> int:
    return max((max_tokens - JSON_TOKENS_FIXED) // JSON_TOKENS_PER_IMAGE, 1)


def _json_object(head: bytes, whole_body: bool, max_images: int) -> dict[str, Any]:
    if not head:
        raise ProtocolError("the request body is empty; send a v2 inference request (JSON)")
    hint = (
        f" (binary tensor data after the JSON needs the {HEADER_LENGTH} header)"
        if whole_body
        else f" (check the {HEADER_LENGTH} header)"
    )
    check_json_size(head, JSON_TOKENS_FIXED + JSON_TOKENS_PER_IMAGE * max_images)
    try:
        request = json.loads(head)
    except RecursionError as exc:  # cannot happen after check_json_size; kept as a backstop
        raise ProtocolError("the request JSON nests too deep") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"the request is not valid JSON: {exc}{hint}") from exc
    if not isinstance(request, dict):
        raise ProtocolError(f"the request must be a JSON object, not {type(request).__name__}")
    return request


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: must be an object of name: value")
    return value


def _request_parameters(value: Any) -> tuple[dict[str, Any], bool]:
    params = _parameters(value, "parameters")
    unknown = set(params) - {*REQUEST_OPTIONS, "binary_data_output"}
    if unknown:
        raise ProtocolError(
            f"parameters: unknown {sorted(unknown)}; accepted: "
            f"{', '.join((*REQUEST_OPTIONS, 'binary_data_output'))}"
        )
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ProtocolError("parameters.binary_data_output: must be true or false")
    return {k: params[k] for k in REQUEST_OPTIONS if k in params}, binary_default


def _image_input(value: Any, binary: memoryview, max_images: int) -> tuple[list[bytes], int]:
    """The ``IMAGE`` input's elements and how many binary bytes it used."""
    if not isinstance(value, list) or not value:
        raise ProtocolError(f"inputs: must list one input, {IMAGE_INPUT!r} (BYTES [B, 1])")
    if len(value) > 1 or not isinstance(value[0], dict):
        raise ProtocolError(
            f"inputs: the model takes exactly one input, {IMAGE_INPUT!r} "
            f"(BYTES [B, 1]); got {len(value)}"
        )
    tensor = value[0]
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if name != IMAGE_INPUT:
        raise ProtocolError(
            f"inputs[0].name: unknown input {name!r}; the model's input is "
            f"{IMAGE_INPUT!r} (BYTES [B, 1], encoded image files)"
        )
    if datatype != "BYTES":
        raise ProtocolError(
            f"inputs[0].datatype: {IMAGE_INPUT} is BYTES (encoded image files), not {datatype!r}"
        )
    if (
        not isinstance(shape, list)
        or len(shape) not in (1, 2)
        or any(type(d) is not int or d < 0 for d in shape)
        or shape[1:] not in ([], [1])
    ):
        raise ProtocolError(
            f"inputs[0].shape: {shape!r}; {IMAGE_INPUT} is [B, 1] (or [B]), "
            "one encoded image per row"
        )
    count = shape[0]
    if count == 0:
        raise ProtocolError(f"inputs[0].shape: {shape}; send at least one image")
    if count > max_images:
        raise TooManyElements(
            f"inputs[0].shape: {shape}; {count} images is more than the limit of "
            f"{max_images} per request"
        )
    params = _parameters(tensor.get("parameters"), "inputs[0].parameters")
    unknown = set(params) - {BINARY_SIZE, "content_type"}
    if unknown:
        raise ProtocolError(f"inputs[0].parameters: unknown {sorted(unknown)}")
    if BINARY_SIZE in params:
        size = params[BINARY_SIZE]
        if type(size) is not int or size < 0:
            raise ProtocolError(f"inputs[0].parameters.{BINARY_SIZE}: {size!r} is not a size")
        if "data" in tensor:
            raise ProtocolError(f"inputs[0]: give either data or {BINARY_SIZE}, not both")
        if size > len(binary):
            raise ProtocolError(
                f"inputs[0].parameters.{BINARY_SIZE}: {size} bytes declared, "
                f"only {len(binary)} bytes of binary data follow the JSON"
            )
        elements = split_bytes_tensor(binary[:size], count)
        used = size
    else:
        elements = _json_elements(tensor.get("data"), params.get("content_type"), shape)
        used = 0
    if len(elements) != count:
        raise ProtocolError(
            f"inputs[0]: shape {shape} holds {count} element(s), the data has {len(elements)}"
        )
    return elements, used


def split_bytes_tensor(data: memoryview | bytes, count: int | None = None) -> list[bytes]:
    """A binary ``BYTES`` tensor -> its elements (each a 4-byte little-endian length + bytes);
    with ``count``, the tensor must hold exactly that many (it is not split further: millions
    of 0-byte elements in a few megabytes never become millions of objects).

    Raises:
        ProtocolError: a length that runs past the end, or more or fewer than ``count``.
    """
    view = memoryview(data)
    elements: list[bytes] = []
    offset = 0
    while offset < len(view):
        if count is not None and len(elements) == count:
            raise ProtocolError(
                f"inputs[0]: {len(view) - offset} bytes of binary BYTES data after the "
                f"{count} element(s) of the shape (binary_data_size is too large?)"
            )
        if offset + 4 > len(view):
            raise ProtocolError(
                f"inputs[0]: binary BYTES data ends inside an element's 4-byte "
                f"length (at byte {offset} of {len(view)})"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise ProtocolError(
                f"inputs[0]: element {len(elements)} declares {length} bytes, "
                f"only {len(view) - offset} remain in binary_data_size"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


def join_bytes_tensor(elements: list[bytes]) -> bytes:
    """The inverse of :func:`split_bytes_tensor`."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def _json_elements(data: Any, content_type: Any, shape: list[int]) -> list[bytes]:
    """The JSON ``data`` of a BYTES tensor of ``shape`` -> its elements' bytes (the count is
    checked before any element is decoded)."""
    if data is None:
        raise ProtocolError(
            f"inputs[0]: no data; give data (JSON strings) or {BINARY_SIZE} "
            "with the binary tensor data extension"
        )
    if content_type not in (None, "str", "base64"):
        raise ProtocolError(
            f"inputs[0].parameters.content_type: {content_type!r}; "
            "use 'base64' (or leave it out for UTF-8 strings)"
        )
    flat: list[Any] = []
    stack = [data]
    while stack:  # flatten nested lists in row-major order
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    if len(flat) != shape[0]:
        raise ProtocolError(
            f"inputs[0]: shape {shape} holds {shape[0]} element(s), the data has {len(flat)}"
        )
    elements = []
    for i, item in enumerate(flat):
        if not isinstance(item, str):
            raise ProtocolError(
                f"inputs[0].data[{i}]: BYTES elements are JSON strings, not {type(item).__name__}"
            )
        if content_type == "base64":
            try:
                elements.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise ProtocolError(f"inputs[0].data[{i}]: not base64 ({exc})") from exc
        else:
            elements.append(item.encode("utf-8", "surrogatepass"))
    return elements


def _requested_outputs(value: Any, binary_default: bool) -> list[tuple[str, bool]]:
    if value is None:
        return [(name, binary_default) for name in OUTPUT_NAMES]
    if not isinstance(value, list):
        raise ProtocolError("outputs: must be a list of {name, parameters}")
    chosen: list[tuple[str, bool]] = []
    for i, item in enumerate(value):
        name = item.get("name") if isinstance(item, dict) else None
        if name not in OUTPUT_NAMES:
            raise ProtocolError(
                f"outputs[{i}].name: unknown output {name!r}; the model's "
                f"outputs are {', '.join(OUTPUT_NAMES)}"
            )
        if any(name == seen for seen, _ in chosen):
            raise ProtocolError(f"outputs[{i}].name: {name!r} is requested twice")
        params = _parameters(item.get("parameters"), f"outputs[{i}].parameters")
        unknown = set(params) - {"binary_data"}
        if unknown:
            raise ProtocolError(
                f"outputs[{i}].parameters: unsupported {sorted(unknown)} (only binary_data)"
            )
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise ProtocolError(f"outputs[{i}].parameters.binary_data: must be true or false")
        chosen.append((name, binary))
    return chosen


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    tensors: dict[str, np.ndarray],
    outputs: list[tuple[str, bool]],
) -> tuple[bytes, dict[str, str], str]:
    """Output tensors (:func:`serve.routes.v2.io.detections_to_tensors`) -> (body, extra headers,
    media type). Binary outputs follow the JSON in the order listed, little-endian; with any of
    them the ``Inference-Header-Content-Length`` header gives the JSON's length."""
    entries, chunks = [], []
    for name, binary in outputs:
        datatype, dtype, _ = OUTPUT_SPECS[name]
        array = np.ascontiguousarray(tensors[name], dtype=np.dtype(dtype).newbyteorder("<"))
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            entry["parameters"] = {BINARY_SIZE: array.nbytes}
            chunks.append(array.tobytes())
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = entries
    head = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return head, {}, "application/json"
    return b"".join([head, *chunks]), {HEADER_LENGTH: str(len(head))}, "application/octet-stream"
