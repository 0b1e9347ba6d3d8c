"""The JSON shapes of the HTTP API (``/v1``), as pydantic models so the OpenAPI schema is
complete and carries examples."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Detection(BaseModel):
    """One detected object."""

    box: list[float] = Field(
        min_length=4,
        max_length=4,
        description="[x1, y1, x2, y2] in pixels of the uploaded image (after EXIF rotation)",
        examples=[[48.2, 12.0, 310.75, 402.5]],
    )
    score: float = Field(description="objectness x class probability, 0-1", examples=[0.91])
    class_id: int = Field(description="index into the model's class names", examples=[0])
    class_name: str = Field(examples=["person"])


class ImageSize(BaseModel):
    width: int = Field(examples=[640])
    height: int = Field(examples=[480])


class Timings(BaseModel):
    """Where the time of one image went, in milliseconds."""

    decode_ms: float = Field(description="reading the upload and decoding + letterboxing it")
    queue_ms: float = Field(description="waiting for its batch to start")
    inference_ms: float = Field(description="the network run of its whole batch")
    postprocess_ms: float = Field(description="score filter, NMS, mapping boxes back")
    total_ms: float = Field(description="from the start of the handler to the answer")
    batch_size: int = Field(description="images in the network run this image was part of")


class ImageResult(BaseModel):
    """The detections of one image."""

    image: ImageSize
    detections: list[Detection]
    timings: Timings


_DETECTION_EXAMPLE: dict[str, Any] = {
    "image": {"width": 640, "height": 480},
    "detections": [
        {"box": [48.2, 12.0, 310.75, 402.5], "score": 0.91, "class_id": 0, "class_name": "person"}
    ],
    "timings": {
        "decode_ms": 2.1,
        "queue_ms": 0.8,
        "inference_ms": 9.3,
        "postprocess_ms": 0.4,
        "total_ms": 12.9,
        "batch_size": 2,
    },
    "model": "yolox_nano",
    "model_name": "detector",
    "model_version": "1",
}


class DetectResponse(ImageResult):
    """``POST /v1/detect``."""

    model_config = ConfigDict(json_schema_extra={"examples": [_DETECTION_EXAMPLE]})

    model: str = Field(description="the model's architecture name", examples=["yolox_nano"])
    model_name: str = Field(description="the name the server serves the model under "
                            "(/v1/models/{model_name}/detect)", examples=["detector"])  # fmt: skip
    model_version: str = Field(description="the version of it that answered", examples=["1"])


class BatchDetectResponse(BaseModel):
    """``POST /v1/detect/batch``: one result per uploaded image, in upload order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [{k: v for k, v in _DETECTION_EXAMPLE.items() if k != "model"}],
                    "model": "yolox_nano",
                    "model_name": "detector",
                    "model_version": "1",
                    "total_ms": 14.2,
                }
            ]
        }
    )

    results: list[ImageResult]
    model: str
    model_name: str
    model_version: str
    total_ms: float


class ModelInfo(BaseModel):
    """One model version the server runs."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "yolox_nano",
                    "file": "yolox_nano.onnx",
                    "backend": "onnxruntime",
                    "precision": "fp32",
                    "layout": "raw",
                    "input_size": [416, 416],
                    "class_names": ["person", "car"],
                    "fixed_batch": None,
                    "max_batch": 8,
                    "providers": ["CPUExecutionProvider"],
                    "int8_report": None,
                    "model_name": "detector",
                    "model_version": "1",
                    "default_version": True,
                }
            ]
        }
    )

    name: str = Field(description="architecture (model_name in the file's metadata)")
    file: str = Field(description="the model file's name (no directory)")
    backend: str
    precision: str = Field(description="fp32, fp16 or int8")
    layout: str = Field(description="raw ([B, N, 5 + C] output) or nms (NMS in the graph)")
    input_size: list[int] = Field(description="[height, width] of the network input")
    class_names: list[str]
    fixed_batch: int | None = Field(description="the file's fixed batch, or null when dynamic")
    max_batch: int = Field(description="most images the server runs together")
    providers: list[str] | None = Field(None, description="ONNX Runtime providers in use")
    int8_report: dict[str, Any] | None = Field(
        None, description="the INT8 calibration / accuracy report stored by 'export int8'"
    )
    model_name: str = Field(
        description="the name the server serves it under: /v1/models/{model_name}/detect, "
        "/v2/models/{model_name}"
    )
    model_version: str = Field(
        description="this version: /v1/models/{model_name}/versions/{model_version}/detect"
    )
    default_version: bool = Field(
        description="the version a request naming no version runs (the model's highest)"
    )


class ModelsResponse(BaseModel):
    """``GET /v1/models`` (every model version served; the default model first, each model's
    versions newest first) and ``GET /v1/models/{name}`` (that model's versions)."""

    models: list[ModelInfo]
    default_model: str | None = Field(
        None, description="the model /v1/detect runs (none when a repository of several models "
        "names none: --default-model)"
    )  # fmt: skip


class Status(BaseModel):
    """``GET /healthz`` and ``GET /readyz``."""

    status: str = Field(examples=["ok"])


class ErrorResponse(BaseModel):
    """Every error: a stable code, a message saying what was wrong, the request id."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "image_too_large",
                    "message": "image: 50000x50000 = 2500000000 pixels is more than the limit "
                    "of 40000000 pixels",
                    "request_id": "5f0c2a7e9b1d4c3e8a6f",
                }
            ]
        }
    )

    error: str = Field(description="machine-readable code", examples=["bad_image"])
    message: str = Field(description="what was wrong, for a person")
    request_id: str | None = Field(None, description="also in the X-Request-ID header")
