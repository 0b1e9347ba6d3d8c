"""Server settings: one typed object, read from ``DETECTOR_*`` environment variables.

``detector serve`` passes its command-line flags as keyword arguments, and keyword arguments win
over the environment, so a flag always overrides a variable. Lists (``DETECTOR_API_KEYS``,
``DETECTOR_PROVIDERS``, ``DETECTOR_CORS_ORIGINS``) are comma-separated.

Defaults fit one process on the machine: ONNX Runtime uses as many intra-op threads as the cores
this process may run on (its CPU affinity), and the server runs one worker process, so that
several workers do not fight over the same cores (scale out with more containers instead).
"""

from __future__ import annotations

import ipaddress
import math
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BackendName = Literal["onnxruntime", "tensorrt", "torch"]
ENV_PREFIX = "DETECTOR_"


CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_cgroup(root: Path) -> Path | None:
    """This process's cgroup v2 folder under ``root`` (from ``/proc/self/cgroup``), if any."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return root / line[3:].strip().lstrip("/")
    except OSError:
        pass
    return None


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup's CPU quota allows (quota / period; 2.0 for a 2-CPU container limit), or
    ``None`` without a quota. Reads cgroup v2's ``cpu.max`` (the process's own cgroup and the
    root seen by a container), else cgroup v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``;
    the smallest quota found wins."""
    quotas: list[float] = []
    folders = [root, *(f for f in (_own_cgroup(root),) if f is not None and f != root)]
    for folder in folders:
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            if quota != "max" and int(period) > 0:
                quotas.append(int(quota) / int(period))
        except (OSError, ValueError):
            continue
    if not quotas:
        for folder in (root / "cpu", root / "cpu,cpuacct", root):
            try:
                quota_us = int((folder / "cpu.cfs_quota_us").read_text())
                period_us = int((folder / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
            if quota_us > 0 and period_us > 0:  # -1: no quota
                quotas.append(quota_us / period_us)
            break
    return min(quotas) if quotas else None


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Cores this process may use: its CPU affinity (which honours taskset and cpusets) or its
    cgroup CPU quota (a container's CPU limit, rounded down, at least 1), whichever is smaller;
    a pod limited to 2 CPUs on a 64-core node gets 2."""
    try:
        cpus = max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # not on Linux
        cpus = max(os.cpu_count() or 1, 1)
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(math.floor(quota), 1))
    return cpus


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

    model: Path | None = Field(
        None, description="model file: .onnx, .engine or .pt checkpoint (the one-model "
        "shorthand; or repository)"
    )  # fmt: skip
    repository: Path | None = Field(
        None, description="model repository folder: one folder per model, numbered version "
        "folders (the layout of 'detector export triton' and NVIDIA Triton); see README.md, "
        "'Several models: a model repository'"
    )  # fmt: skip
    model_control_mode: Literal["none", "poll", "explicit"] = Field(
        "none", description="as Triton names them: none (every model loaded at start, the "
        "folder read once), poll (the folder re-read every repository_poll_secs: new and "
        "changed versions loaded, removed ones unloaded), explicit (load and unload calls, "
        "POST /v2/repository/models/NAME/load|unload, with an admin key)"
    )  # fmt: skip
    repository_poll_secs: float = Field(
        5.0, gt=0, le=3600, description="seconds between two reads of the repository in "
        "poll mode; a version file is loaded once it is unchanged across two reads"
    )  # fmt: skip
    load_model: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="in explicit mode, the models loaded at start "
        "('*': all; default none, as in Triton)"
    )  # fmt: skip
    default_model: str | None = Field(
        None, description="the repository model that /v1/detect runs (default: the only model "
        "of a one-model repository)"
    )  # fmt: skip
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
        32, ge=1, description="requests waiting for inference before new ones get 503 (each "
        "may hold a body of up to max_body_bytes: see README.md, 'Memory')"
    )  # fmt: skip
    timeout_s: float = Field(
        10.0, gt=0, description="per-request deadline, from the body received to the answer (504)"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request's whole body must arrive within this many seconds of "
        "its headers (else 408 and the connection is closed): slow uploads cannot hold the server"
    )  # fmt: skip
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection must send a complete request head within this many "
        "seconds of opening (or of its previous answer), else it is closed"
    )  # fmt: skip
    max_connections: int = Field(
        1000, ge=1, description="open connections (and requests in progress) at most; past it "
        "new requests get 503 from uvicorn"
    )  # fmt: skip
    unhealthy_after: int = Field(
        3, ge=1, description="failed batches in a row after which the server reports not ready "
        "(503 on /readyz) until a probe run of the model succeeds"
    )  # fmt: skip
    probe_interval_s: float = Field(
        1.0, gt=0, description="while unhealthy, seconds between the server's own probe runs"
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="largest request body, also once decompressed "
        "(else 413)"
    )  # fmt: skip
    max_bodies_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="request bodies held at once, all requests "
        "together (uploads in progress and bodies not yet answered); past it a request gets 503 "
        "+ Retry-After, so many clients uploading at once cannot exhaust memory"
    )  # fmt: skip
    max_pixels: int = Field(
        40_000_000, ge=1, description="largest image (width x height, read from its header "
        "before decoding; else 413)"
    )  # fmt: skip
    decode_workers: int = Field(
        default_factory=lambda: min(usable_cpus(), 2), ge=1, description="images decoded at "
        "once across all requests (default: 2, or 1 on one core); bounds the memory of decoding "
        "(each up to about max_pixels x 10 bytes: see README.md, 'Memory')"
    )  # fmt: skip
    max_images: int = Field(32, ge=1, description="most images in one batch request")
    max_det_limit: int = Field(1000, ge=1, description="largest max_det a request may ask for")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="accepted API keys (Authorization: Bearer KEY or X-API-Key); none = open",
    )
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="keys of the repository's load and unload calls, separate from api_keys "
        "(given the same way: Authorization: Bearer KEY or X-API-Key); none = those calls off",
    )
    metrics_key_required: bool = Field(
        False, description="/metrics asks for an API key too (needs api_keys)"
    )
    docs: Literal["off", "open", "keyed"] = Field(
        "off", description="the API's docs pages (/docs, /redoc, /openapi.json): off (default), "
        "open, or keyed (an API key required; needs api_keys). /docs and /redoc load their "
        "scripts from a CDN (jsDelivr) in the browser"
    )  # fmt: skip
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS (none by default)"
    )
    name: str = Field(
        "detector", pattern=r"^[A-Za-z0-9_.-]{1,128}$", description="the model's name in the "
        "KServe v2 API (/v2/models/NAME); the default of 'detector export triton --name' too"
    )  # fmt: skip
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 for all)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    allow_insecure: bool = Field(
        False, description="listen on an address other than loopback without API keys (refused "
        "otherwise): only on a trusted, isolated network"
    )  # fmt: skip
    ssl_certfile: Path | None = Field(None, description="TLS certificate (PEM); serves HTTPS")
    ssl_keyfile: Path | None = Field(None, description="TLS private key (PEM) of ssl_certfile")
    ssl_ca_certs: Path | None = Field(
        None, description="CA certificates (PEM): clients must present a certificate they signed "
        "(mutual TLS)"
    )  # fmt: skip
    warmup: bool = Field(True, description="run the model once per batch size before ready")
    allow_engine_host_code: bool = Field(
        False, description="let a version-compatible TensorRT engine load: it embeds host code "
        "that TensorRT runs in the server, so only for engines from a trusted source"
    )  # fmt: skip

    @field_validator("providers", "cors_origins", "api_keys", "admin_keys", "load_model",
                     mode="before")  # fmt: skip
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split(value)

    @model_validator(mode="after")
    def _check(self) -> ServeSettings:
        if self.max_bodies_bytes < self.max_body_bytes:
            raise ValueError(
                f"--max-bodies-bytes ({ENV_PREFIX}MAX_BODIES_BYTES) {self.max_bodies_bytes} is "
                f"smaller than --max-body-bytes {self.max_body_bytes}: one body would never fit"
            )
        if any(not key.get_secret_value() for key in self.api_keys):
            raise ValueError("api_keys: an API key may not be empty")
        if any(not key.get_secret_value() for key in self.admin_keys):
            raise ValueError("admin_keys: an admin key may not be empty")
        inference = {key.get_secret_value() for key in self.api_keys}
        if any(key.get_secret_value() in inference for key in self.admin_keys):
            raise ValueError(
                "--admin-key (DETECTOR_ADMIN_KEYS): an admin key must differ from every API key "
                "(--api-key, DETECTOR_API_KEYS), so a client's key cannot load or unload models"
            )
        self._check_source()
        if not self.api_keys and (self.metrics_key_required or self.docs == "keyed"):
            raise ValueError(
                "--metrics-key-required / --docs keyed (DETECTOR_METRICS_KEY_REQUIRED / "
                "DETECTOR_DOCS): these need API keys (--api-key or DETECTOR_API_KEYS)"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError(
                "--ssl-certfile and --ssl-keyfile (DETECTOR_SSL_CERTFILE, DETECTOR_SSL_KEYFILE): "
                "give both (HTTPS) or neither"
            )
        if self.ssl_ca_certs is not None and self.ssl_certfile is None:
            raise ValueError(
                "--ssl-ca-certs (DETECTOR_SSL_CA_CERTS): needs --ssl-certfile and --ssl-keyfile"
            )
        for name in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                flag, variable = name.replace("_", "-"), f"{ENV_PREFIX}{name.upper()}"
                raise ValueError(f"--{flag} ({variable}): {path}: no such file")
        return self

    def _check_source(self) -> None:
        """One model file or one repository, and the repository settings only with one."""
        if (self.model is None) == (self.repository is None):
            raise ValueError(
                "give a model file (--model FILE, DETECTOR_MODEL) or a model repository "
                "(--repository DIR, DETECTOR_REPOSITORY), not both"
                if self.model is not None
                else "no model: give --model FILE (DETECTOR_MODEL) or --repository DIR "
                "(DETECTOR_REPOSITORY)"
            )
        given = self.model_fields_set
        if self.model is not None:
            only = sorted(given & {"model_control_mode", "repository_poll_secs", "load_model",
                                   "default_model"})  # fmt: skip
            if only:
                flags = ", ".join(f"--{name.replace('_', '-')}" for name in only)
                raise ValueError(f"{flags}: for a model repository (--repository DIR), not "
                                 "--model FILE")  # fmt: skip
            return
        if "name" in given:
            raise ValueError(
                "--name (DETECTOR_NAME) names the one model of --model FILE; the models of a "
                "repository are named by their folders"
            )
        if self.load_model and self.model_control_mode != "explicit":
            raise ValueError(
                f"--load-model (DETECTOR_LOAD_MODEL): for --model-control-mode explicit; in "
                f"{self.model_control_mode} mode every model of the repository is loaded"
            )

    @property
    def loopback_only(self) -> bool:
        """``host`` is a loopback address (``127.0.0.0/8``, ``::1``, ``localhost``)."""
        if self.host.lower() in ("localhost", "localhost."):
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:  # a host name: may resolve to anything
            return False


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


def check_exposure(settings: ServeSettings) -> None:
    """Refuse to listen on a network address (anything but loopback) without API keys, unless
    ``allow_insecure`` says so.

    Raises:
        SettingsError: naming the host, the key settings and the opt-out.
    """
    if settings.loopback_only or settings.api_keys or settings.allow_insecure:
        return
    raise SettingsError(
        f"host {settings.host} would serve the network without authentication: give API keys "
        f"(--api-key or {ENV_PREFIX}API_KEYS), listen on 127.0.0.1, or, on a trusted isolated "
        f"network only, pass --allow-insecure ({ENV_PREFIX}ALLOW_INSECURE=true)"
    )


def load_settings(**given: object) -> ServeSettings:
    """``ServeSettings`` from keyword arguments (they win) and ``DETECTOR_*`` variables, with a
    short error naming each field and its variable instead of pydantic's report."""
    try:
        return ServeSettings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error.get("loc", ()))
            if not field:  # a check across fields: its message names them
                problems.append(str(error.get("msg", "invalid")).removeprefix("Value error, "))
                continue
            problems.append(
                f"{field} (--{field.replace('_', '-')} or {ENV_PREFIX}{field.upper()}): "
                f"{error.get('msg', 'invalid')}"
            )
        raise SettingsError("invalid server settings: " + "; ".join(problems)) from None
