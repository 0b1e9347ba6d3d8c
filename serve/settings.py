"""Server settings: one typed object, read from ``DETECTOR_*`` environment variables.

``detector serve`` passes its command-line flags as keyword arguments, and keyword arguments win
over the environment, so a flag always overrides a variable. Lists (``DETECTOR_API_KEYS``,
``DETECTOR_PROVIDERS``, ``DETECTOR_CORS_ORIGINS``) are comma-separated.

Defaults fit one process on the machine: ONNX Runtime uses as many intra-op threads as the cores
this process may run on (its CPU affinity), and the server runs one worker process, so that
several workers do not fight over the same cores (scale out with more containers instead).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BackendName = Literal["onnxruntime", "tensorrt", "torch"]
ENV_PREFIX = "DETECTOR_"


def usable_cpus() -> int:
    """Cores this process may run on (its CPU affinity, which honours taskset and cpusets)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # not on Linux
        return max(os.cpu_count() or 1, 1)


def _split(value: object) -> object:
    """``"a, b"`` -> ``["a", "b"]``; lists pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class SettingsError(ValueError):
    """Invalid server settings; the message names each field (flag / variable) at fault."""


class ServeSettings(BaseSettings):
    """Everything ``detector serve`` can be told; each field is also ``DETECTOR_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    model: Path = Field(description="model file: .onnx, .engine or .pt checkpoint")
    backend: BackendName | None = Field(
        None, description="inference backend (default: chosen from the model file's suffix)"
    )
    device: int = Field(0, ge=0, description="GPU index for the TensorRT and torch backends")
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="ONNX Runtime execution providers in order of preference "
        "(default: TensorRT EP, CUDA EP, CPU, those installed)",
    )
    threads: int = Field(
        default_factory=usable_cpus, ge=1, description="ONNX Runtime (and PyTorch) intra-op threads"
    )
    lanes: int | None = Field(
        None, ge=1, le=64, description="batches that may run at once, each on its own "
        "inference thread with all of --threads (more than 1 for ONNX Runtime only: the "
        "TensorRT and torch backends run one batch at a time and refuse more); default 2 for "
        "ONNX Runtime on the CPU, where a second batch uses the cores one run leaves idle "
        "(see BENCHMARKS.md, 'Serving throughput against the raw backend'), 1 otherwise"
    )  # fmt: skip
    max_batch: int = Field(
        8, ge=1, le=1024, description="largest batch for a dynamic-batch model (a fixed-batch "
        "model uses its own batch)"
    )  # fmt: skip
    max_delay_ms: float = Field(
        0.0, ge=0, le=10_000, description="how long a request may wait for others to join its "
        "batch; 0 = start a batch as soon as the worker is free with whatever waits (requests "
        "that arrive during a run form the next batch), which adds no latency at low load"
    )  # fmt: skip
    queue_size: int = Field(
        64, ge=1, description="requests waiting for inference before new ones get 503"
    )
    timeout_s: float = Field(
        10.0, gt=0, description="per-request deadline, from the body received to the answer (504)"
    )
    max_body_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="largest request body (else 413)"
    )
    max_pixels: int = Field(
        40_000_000, ge=1, description="largest image (width x height, read from its header "
        "before decoding; else 413)"
    )  # fmt: skip
    decode_workers: int = Field(
        default_factory=usable_cpus, ge=1, description="images decoded at once across all "
        "requests; bounds the memory of decoded images (each up to max_pixels x 3 bytes)"
    )  # fmt: skip
    max_images: int = Field(32, ge=1, description="most images in one batch request")
    max_det_limit: int = Field(1000, ge=1, description="largest max_det a request may ask for")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="accepted API keys (Authorization: Bearer KEY or X-API-Key); none = open",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS (none by default)"
    )
    name: str = Field(
        "detector", pattern=r"^[A-Za-z0-9_.-]{1,128}$", description="the model's name in the "
        "KServe v2 API (/v2/models/NAME); the default of 'detector export triton --name' too"
    )  # fmt: skip
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 for all)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    warmup: bool = Field(True, description="run the model once per batch size before ready")

    @field_validator("providers", "cors_origins", "api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split(value)

    @model_validator(mode="after")
    def _check(self) -> ServeSettings:
        if any(not key.get_secret_value() for key in self.api_keys):
            raise ValueError("api_keys: an API key may not be empty")
        return self


# backends whose runs may be called from several threads at once (an ONNX Runtime session's
# run is thread-safe); a TensorRT execution context and the torch backend (CUDA graphs, shared
# buffers) are not, so they get one lane
CONCURRENT_BACKENDS = ("onnxruntime",)


def default_lanes(backend: str, providers: list[str] | None = None) -> int:
    """Lanes when none are set: 2 for ONNX Runtime running on the CPU only (see BENCHMARKS.md,
    'Serving throughput against the raw backend'), else 1 (GPUs and other backends unmeasured or
    not concurrent)."""
    return 2 if backend == "onnxruntime" and providers == ["CPUExecutionProvider"] else 1


def check_lanes(backend: str, lanes: int | None) -> None:
    """Refuse ``lanes > 1`` for a backend that must not run two batches at once.

    Raises:
        SettingsError: naming the flag, the variable and the backend.
    """
    if lanes is not None and lanes > 1 and backend not in CONCURRENT_BACKENDS:
        raise SettingsError(
            f"lanes (--lanes or {ENV_PREFIX}LANES): the {backend} backend runs one batch at a "
            f"time; got {lanes}, use 1 (more than one lane is for "
            f"{', '.join(CONCURRENT_BACKENDS)} only)"
        )


def load_settings(**given: object) -> ServeSettings:
    """``ServeSettings`` from keyword arguments (they win) and ``DETECTOR_*`` variables, with a
    short error naming each field and its variable instead of pydantic's report."""
    try:
        return ServeSettings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error.get("loc", ())) or "settings"
            problems.append(
                f"{field} (--{field.replace('_', '-')} or {ENV_PREFIX}{field.upper()}): "
                f"{error.get('msg', 'invalid')}"
            )
        raise SettingsError("invalid server settings: " + "; ".join(problems)) from None
