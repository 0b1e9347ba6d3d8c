"""The JSON shapes of the KServe v2 routes (``/v2``), as pydantic models for the OpenAPI schema.
The inference request and response bodies are not modelled here: they may carry binary tensor
data after the JSON (see :mod:`serve.routes.v2.protocol`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class V2ServerMetadata(BaseModel):
    """``GET /v2``."""

    name: str = Field(examples=["detector"])
    version: str = Field(description="the server's version", examples=["0.1.0"])
    extensions: list[str] = Field(examples=[["binary_tensor_data"]])


class V2Tensor(BaseModel):
    """One input or output of the model; -1 is a dimension of any size."""

    name: str
    datatype: str = Field(description="BYTES, INT32, FP32, ...")
    shape: list[int]


class V2ModelMetadata(BaseModel):
    """``GET /v2/models/{name}``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "detector",
                    "versions": ["1"],
                    "platform": "detector_onnxruntime",
                    "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1, 1]}],
                    "outputs": [
                        {"name": "num_dets", "datatype": "INT32", "shape": [-1, 1]},
                        {"name": "boxes", "datatype": "FP32", "shape": [-1, -1, 4]},
                        {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
                        {"name": "classes", "datatype": "INT32", "shape": [-1, -1]},
                    ],
                    "parameters": {
                        "class_names": '["person", "car"]',
                        "architecture": "yolox_nano",
                        "backend": "onnxruntime",
                        "precision": "fp32",
                        "max_batch": 8,
                        "max_det_default": 300,
                        "max_det_limit": 1000,
                    },
                }
            ]
        }
    )

    name: str
    versions: list[str]
    platform: str = Field(description="detector_<backend>: the whole pipeline, image bytes in")
    inputs: list[V2Tensor]
    outputs: list[V2Tensor] = Field(
        description="the second dimension of boxes/scores/classes is the request's max_det"
    )
    parameters: dict[str, str | int | float | bool] = Field(
        description="class_names (a JSON array in a string: v2 parameter values are scalars), "
        "the architecture, backend, precision and limits"
    )


class V2Error(BaseModel):
    """Every ``/v2`` error: the protocol's ``error`` message, plus our stable code and the
    request id."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "IMAGE[0]: corrupt or truncated JPEG image (image file is truncated)",
                    "code": "bad_image",
                    "request_id": "5f0c2a7e9b1d4c3e8a6f",
                }
            ]
        }
    )

    error: str = Field(description="what was wrong")
    code: str = Field(description="a stable code: bad_image, invalid_request, not_found, ...")
    request_id: str | None = None
