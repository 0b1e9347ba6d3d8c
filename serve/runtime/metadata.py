"""The metadata every exported artefact carries, so ``serve --model PATH`` needs nothing else.

One :class:`ModelMetadata` describes a model file: what it detects (class names), how its input is
made (``PreprocessSpec``), what its outputs are (``layout``: ``raw`` = one ``output`` tensor
``[B, N, 5 + C]`` decoded in the graph; ``nms`` = ``num_dets [B, 1]``, ``boxes [B, K, 4]`` xyxy in
input pixels, ``scores [B, K]``, ``classes [B, K]``), its precision and its NMS settings.

Storage:
- ONNX: one ``metadata_props`` entry, key :data:`ONNX_KEY`, whose value is the JSON object.
- TensorRT engines: a JSON sidecar ``M.engine.json`` beside the raw plan (Triton and trtexec load
  the plan as it is). The sidecar records the plan's SHA-256 (``extra["engine_sha256"]``), so an
  engine swapped or rebuilt without its sidecar (or torn by a copy) is refused by
  :func:`check_engine_digest` instead of being run with another engine's metadata. It is written
  atomically, after the engine.

It lives in ``serve`` because the runtime reads it and imports point ``export`` -> ``serve``;
export writes it. This module imports neither torch nor TensorRT: reading metadata works in a
torch-free serving install (with ``onnx`` or, failing that, ``onnxruntime``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from detector.core.atomic import write_atomic
from detector.core.preprocess import PreprocessSpec

ONNX_KEY = "detector"
FORMAT_VERSION = 1
LAYOUTS = ("raw", "nms")
PRECISIONS = ("fp32", "fp16", "int8")
NMS_OUTPUTS = ("num_dets", "boxes", "scores", "classes")
RAW_OUTPUT = "output"
INPUT_NAME = "images"
ENGINE_DIGEST_KEY = "engine_sha256"  # in a sidecar's ``extra``: the plan file's SHA-256, hex
HASH_CHUNK_BYTES = 1 << 20


class MetadataError(ValueError):
    """An artefact's metadata is missing or malformed; the message names the file."""


class EngineDigestError(MetadataError):
    """An engine file is not the one its sidecar describes; the message names both files."""


@dataclass(frozen=True)
class NmsSettings:
    """In-graph NMS: score threshold, IoU threshold and ``max_detections`` (K, the padding)."""

    score_threshold: float
    iou_threshold: float
    max_detections: int


@dataclass(frozen=True)
class ModelMetadata:
    """What a model file is and how to feed and read it.

    ``input_size`` is ``(height, width)``; ``batch`` is the fixed batch size, or ``None`` for a
    dynamic batch. ``extra`` holds what a later step adds (the INT8 calibration report, the
    TensorRT version and GPU of an engine).
    """

    model_name: str
    class_names: tuple[str, ...]
    input_size: tuple[int, int]
    strides: tuple[int, ...] = (8, 16, 32)
    precision: str = "fp32"
    layout: str = "raw"
    batch: int | None = 1
    nms: NmsSettings | None = None
    preprocess: PreprocessSpec | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise MetadataError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.precision not in PRECISIONS:
            raise MetadataError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if (self.layout == "nms") != (self.nms is not None):
            raise MetadataError("nms settings are given exactly when layout is 'nms'")
        if self.preprocess is None:
            height, width = self.input_size
            object.__setattr__(self, "preprocess", PreprocessSpec(height, width))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def with_updates(self, **changes: Any) -> ModelMetadata:
        """A copy with some fields changed (``extra`` is merged, not replaced)."""
        if "extra" in changes:
            changes["extra"] = {**self.extra, **changes["extra"]}
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict() if self.preprocess else None
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "metadata") -> ModelMetadata:
        try:
            nms = data.get("nms")
            preprocess = data.get("preprocess")
            return cls(
                model_name=str(data["model_name"]),
                class_names=tuple(str(n) for n in data["class_names"]),
                input_size=(int(data["input_size"][0]), int(data["input_size"][1])),
                strides=tuple(int(s) for s in data.get("strides", (8, 16, 32))),
                precision=str(data.get("precision", "fp32")),
                layout=str(data.get("layout", "raw")),
                batch=None if data.get("batch") is None else int(data["batch"]),
                nms=NmsSettings(**nms) if nms else None,
                preprocess=PreprocessSpec.from_dict(preprocess) if preprocess else None,
                extra=dict(data.get("extra") or {}),
                format_version=int(data.get("format_version", FORMAT_VERSION)),
            )
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise MetadataError(f"{source}: malformed detector metadata ({exc!r})") from exc

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> ModelMetadata:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{source}: metadata is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise MetadataError(f"{source}: metadata is not a JSON object")
        return cls.from_dict(data, source)


def read_onnx_metadata(path: str | Path) -> ModelMetadata:
    """The :class:`ModelMetadata` stored in an ONNX file (no torch needed).

    Raises:
        MetadataError: the file is missing, not ONNX, or carries no detector metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"{path}: no such ONNX file")
    props = _onnx_metadata_props(path)
    if ONNX_KEY not in props:
        raise MetadataError(
            f"{path}: no detector metadata (key '{ONNX_KEY}'); was it written by "
            "'detector export onnx'?"
        )
    return ModelMetadata.from_json(props[ONNX_KEY], str(path))


def _onnx_metadata_props(path: Path) -> dict[str, str]:
    try:
        import onnx
    except ModuleNotFoundError:
        onnx = None
    if onnx is not None:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf raises several types on bad bytes
            raise MetadataError(
                f"{path}: not a readable ONNX file (truncated or corrupt?): {exc}"
            ) from exc
        return {p.key: p.value for p in model.metadata_props}
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise MetadataError(
            f"{path}: not a readable ONNX file (truncated or corrupt?): {exc}"
        ) from exc
    return dict(session.get_modelmeta().custom_metadata_map)


def write_onnx_metadata(model: Any, metadata: ModelMetadata) -> None:
    """Store ``metadata`` in an ``onnx.ModelProto`` (in place), replacing an earlier entry."""
    for index in reversed(range(len(model.metadata_props))):
        if model.metadata_props[index].key == ONNX_KEY:
            del model.metadata_props[index]
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_KEY, metadata.to_json()


def sidecar_path(engine_path: str | Path) -> Path:
    """``M.engine`` -> ``M.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, hex, read in chunks of :data:`HASH_CHUNK_BYTES`."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_hashed(path: str | Path) -> tuple[bytearray, str]:
    """A file's bytes and their SHA-256 (hex), from one pass over it in chunks: what is checked
    is exactly what the caller goes on to use, even if the file is replaced meanwhile."""
    digest, data = hashlib.sha256(), bytearray()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            data += chunk
    return data, digest.hexdigest()


def write_sidecar(engine_path: str | Path, metadata: ModelMetadata) -> Path:
    """Write ``M.engine.json`` beside an engine (which must be written first), atomically and
    with the engine's SHA-256 in ``extra["engine_sha256"]``; returns its path.

    Raises:
        MetadataError: there is no engine file at ``engine_path``.
    """
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise MetadataError(
            f"{engine_path}: no engine file to describe; write it before its sidecar"
        )
    metadata = metadata.with_updates(extra={ENGINE_DIGEST_KEY: file_sha256(engine_path)})
    path = sidecar_path(engine_path)
    text = json.dumps(metadata.to_dict(), indent=2, sort_keys=True) + "\n"
    write_atomic(path, text.encode())
    return path


def read_sidecar(engine_path: str | Path) -> ModelMetadata:
    """The metadata of an engine, from its JSON sidecar (the engine's digest is not checked
    here: :func:`check_engine_digest` does that, for what is about to run)."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise MetadataError(
            f"{engine_path}: no metadata sidecar {path.name} beside it; engines built by "
            "'detector export engine' have one"
        )
    return ModelMetadata.from_json(path.read_text(), str(path))


def check_engine_digest(engine_path: str | Path, metadata: ModelMetadata, digest: str) -> None:
    """Refuse an engine whose SHA-256 (``digest``, hex) is not the one its sidecar records.

    Raises:
        EngineDigestError: naming the engine and the sidecar: the sidecar records no digest
            (written before digests were recorded, or not by us), or another one (the engine
            was replaced, rebuilt or torn without its sidecar).
    """
    sidecar = sidecar_path(engine_path)
    recorded = metadata.extra.get(ENGINE_DIGEST_KEY)
    rebuild = "rebuild both with 'detector export engine'"
    if not recorded:
        raise EngineDigestError(
            f"{engine_path}: its sidecar {sidecar} records no engine SHA-256, so nothing ties "
            f"it to this engine; {rebuild}"
        )
    if str(recorded).lower() != digest.lower():
        raise EngineDigestError(
            f"{engine_path} is not the engine its sidecar {sidecar} describes: the engine's "
            f"SHA-256 is {digest}, the sidecar records {recorded} (the engine was replaced, "
            f"rebuilt or truncated without its sidecar); {rebuild}, or copy them together"
        )
