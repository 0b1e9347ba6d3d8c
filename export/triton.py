"""An exported model -> a Triton Inference Server model repository.

``write_repository`` writes four models into ``REPO`` (``N`` = ``--name``, by default
``detector``, the name our server's ``/v2/models/{name}`` answers to by default too, so one
client works against both unchanged):

```
REPO/N/config.pbtxt              ensemble: IMAGE (encoded bytes) -> num_dets, boxes, scores,
REPO/N/1/                          classes (the serve.routes.v2.io contract: what clients call)
REPO/N_preprocess/config.pbtxt   Python backend: bytes -> letterboxed images + letterbox info
REPO/N_preprocess/1/model.py
REPO/N_model/config.pbtxt        the network: onnxruntime_onnx (model.onnx) or
REPO/N_model/1/model.onnx          tensorrt_plan (model.plan, with its sidecar model.plan.json)
REPO/N_postprocess/config.pbtxt  Python backend: network outputs -> detections in the
REPO/N_postprocess/1/model.py      original image's pixels, padded to max_det
```

``detector serve --repository REPO`` serves the same folder: the ensemble's name ``N`` with the
versions of ``N_model`` (:mod:`serve.runtime.repository`), so both servers share one repository.

Both Python models run the same ``model.py`` (a copy of :mod:`export.triton_model`, which
imports our torch-free pre/post-processing: ``detector.core.preprocess``,
``serve.runtime.images``, ``serve.runtime.postprocess``, ``serve.routes.v2.io``); the ``role``
parameter in each config picks the half.

Names, types and dims of the network come from the model's metadata (``serve.runtime.metadata``)
and,
for ONNX, are checked against the graph itself. Batching follows the model: Triton batches a
model only when its batch dimension is dynamic (its backends reject ``max_batch_size > 0`` for
a graph whose first dimension is fixed), so a fixed-batch model gets ``max_batch_size: 0``, its
dims carry the batch, and each request must hold exactly that many images.

Config files are written as protobuf text by hand (no tritonclient needed to export); the tests
parse every one with Triton's own ``model_config.proto`` schema.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from detector.core.defaults import MAX_DET, PREDICT_CONF, PREDICT_IOU
from serve.routes.v2.io import IMAGE_INPUT, OUTPUT_SPECS
from serve.runtime.metadata import (
    INPUT_NAME,
    NMS_OUTPUTS,
    RAW_OUTPUT,
    MetadataError,
    ModelMetadata,
    read_onnx_metadata,
    read_sidecar,
    sidecar_path,
)

logger = logging.getLogger(__name__)

PLATFORMS = {
    ".onnx": ("onnxruntime_onnx", "model.onnx"),
    ".engine": ("tensorrt_plan", "model.plan"),
    ".plan": ("tensorrt_plan", "model.plan"),
}
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
DEFAULT_NAME = "detector"  # serve.settings.ServeSettings.name's default (checked in tests)
DEFAULT_MAX_BATCH = 8  # for a dynamic-batch ONNX (an engine's default is its profile's max)
DEFAULT_QUEUE_DELAY_US = 100
MAX_PIXELS = 40_000_000  # serve.settings.ServeSettings.max_pixels's default (checked in tests)
MAX_DET_LIMIT = 1000  # serve.settings.ServeSettings.max_det_limit's default (checked in tests)
LETTERBOX = "letterbox"  # FP64 [3]: ratio, original height, original width (pre -> post)
MODEL_PY = Path(__file__).with_name("triton_model.py")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_V2_TO_CONFIG = {"INT32": "TYPE_INT32", "FP32": "TYPE_FP32"}
_ORT_TO_CONFIG = {"tensor(float)": "TYPE_FP32", "tensor(int32)": "TYPE_INT32",
                  "tensor(int64)": "TYPE_INT64", "tensor(float16)": "TYPE_FP16"}  # fmt: skip


class TritonExportError(ValueError):
    """The repository cannot be written as asked; the message names the file or flag at fault."""


@dataclass(frozen=True)
class Tensor:
    """One ``input``/``output`` entry of a config: name, ``TYPE_*`` and dims (no batch dim when
    the model batches; ``-1`` = any size)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TritonOptions:
    """What ``detector export triton`` was asked for; ``None`` = the model's default."""

    name: str | None = None
    max_batch: int | None = None
    instances: int = 1
    preferred_batch: tuple[int, ...] = ()
    queue_delay_us: int | None = None
    kind: str = "gpu"
    conf: float = PREDICT_CONF
    iou: float = PREDICT_IOU
    max_det: int = MAX_DET


@dataclass(frozen=True)
class ModelSource:
    """A model file as Triton will see it: its metadata, platform and I/O (batch dim excluded)
    and the batch sizes it accepts (``fixed_batch``: only that; else ``1..batch_limit``)."""

    path: Path
    metadata: ModelMetadata
    platform: str
    filename: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    fixed_batch: int | None
    batch_limit: int | None = None


@dataclass(frozen=True)
class Repository:
    """What was written: the repository folder and the four model names."""

    root: Path
    ensemble: str
    preprocess: str
    model: str
    postprocess: str
    max_batch_size: int
    source: ModelSource
    notes: list[str] = field(default_factory=list)

    @property
    def model_names(self) -> tuple[str, str, str, str]:
        return self.ensemble, self.preprocess, self.model, self.postprocess


def expected_io(metadata: ModelMetadata) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The network's inputs and outputs (without the batch dim) as our exports lay them out:
    ``images [3, H, W]`` FP32 in; ``output [N, 5 + C]`` FP32 (``N`` anchors over the strides)
    or the NMS layout ``num_dets [1]`` INT32, ``boxes [K, 4]``, ``scores [K]`` FP32,
    ``classes [K]`` INT32 out."""
    height, width = metadata.input_size
    inputs = (Tensor(INPUT_NAME, "TYPE_FP32", (3, height, width)),)
    if metadata.layout == "raw":
        anchors = sum((height // s) * (width // s) for s in metadata.strides)
        return inputs, (Tensor(RAW_OUTPUT, "TYPE_FP32", (anchors, 5 + metadata.num_classes)),)
    k = metadata.nms.max_detections  # type: ignore[union-attr]  # layout nms => nms settings
    dims = {"num_dets": (1,), "boxes": (k, 4), "scores": (k,), "classes": (k,)}
    types = {"num_dets": "TYPE_INT32", "boxes": "TYPE_FP32", "scores": "TYPE_FP32",
             "classes": "TYPE_INT32"}  # fmt: skip
    return inputs, tuple(Tensor(n, types[n], dims[n]) for n in NMS_OUTPUTS)


def read_source(path: str | Path) -> ModelSource:
    """Metadata, platform and I/O of an ``.onnx`` or ``.engine`` file.

    Raises:
        TritonExportError: missing file, unknown suffix, unreadable metadata, or an ONNX graph
            whose inputs/outputs differ from what its metadata says.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PLATFORMS:
        raise TritonExportError(
            f"{path}: unknown model file type '{suffix}'; Triton repositories are written from "
            "an .onnx (onnxruntime_onnx) or an .engine/.plan with its .json sidecar "
            "(tensorrt_plan)"
        )
    if not path.is_file():
        raise TritonExportError(f"{path}: no such model file")
    platform, filename = PLATFORMS[suffix]
    try:
        metadata = read_onnx_metadata(path) if suffix == ".onnx" else read_sidecar(path)
    except MetadataError as exc:
        raise TritonExportError(str(exc)) from exc
    inputs, outputs = expected_io(metadata)
    batch_limit = None
    if suffix == ".onnx":
        _check_onnx_graph(path, metadata, inputs + outputs)
    else:
        profile = metadata.extra.get("profile") or {}
        if metadata.batch is None:
            if not profile:
                raise TritonExportError(
                    f"{path}.json: a dynamic-batch engine without its optimisation 'profile' in "
                    "'extra'; rebuild it with 'detector export engine'"
                )
            low, batch_limit = int(profile["min"][0]), int(profile["max"][0])
            if low != 1:
                raise TritonExportError(
                    f"{path}: its profile starts at batch {low}, but Triton sends any batch from "
                    "1 up; rebuild with 'detector export engine --min-batch 1'"
                )
    return ModelSource(path, metadata, platform, filename, inputs, outputs, metadata.batch,
                       batch_limit)  # fmt: skip


def _check_onnx_graph(path: Path, metadata: ModelMetadata, tensors: Sequence[Tensor]) -> None:
    """The ONNX graph's own inputs/outputs (read by ONNX Runtime) must be those of
    :func:`expected_io` with the batch dim of ``metadata.batch`` in front."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise TritonExportError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
    graph = {a.name: a for a in (*session.get_inputs(), *session.get_outputs())}
    for tensor in tensors:
        arg = graph.get(tensor.name)
        if arg is None:
            raise TritonExportError(
                f"{path}: its metadata promises a tensor '{tensor.name}' the graph does not have "
                f"(graph tensors: {', '.join(graph)})"
            )
        shape = [d if isinstance(d, int) else -1 for d in arg.shape]
        batch = -1 if metadata.batch is None else metadata.batch
        expected = [batch, *tensor.dims]
        data_type = _ORT_TO_CONFIG.get(arg.type, arg.type)
        if shape != expected or data_type != tensor.data_type:
            raise TritonExportError(
                f"{path}: tensor '{tensor.name}' is {data_type} {shape} in the graph but "
                f"{tensor.data_type} {expected} by its metadata (batch {metadata.batch})"
            )


def plan_batching(source: ModelSource, options: TritonOptions) -> tuple[int, list[str]]:
    """``max_batch_size`` for every model of the repository, and notes on what was decided.

    Raises:
        TritonExportError: a ``--max-batch`` the model cannot take, or batching flags for a
            model that cannot batch.
    """
    notes: list[str] = []
    dynamic_flags = bool(options.preferred_batch) or options.queue_delay_us is not None
    if source.fixed_batch is not None:
        fixed = source.fixed_batch
        if options.max_batch is not None and options.max_batch != fixed:
            raise TritonExportError(
                f"{source.path}: a fixed batch of {fixed} cannot serve --max-batch "
                f"{options.max_batch}: Triton batches only a model whose batch dimension is "
                "dynamic; re-export with 'detector export onnx --dynamic' (or build the engine "
                "with --min-batch 1 --max-batch N)"
            )
        if dynamic_flags:
            raise TritonExportError(
                f"{source.path}: --preferred-batch/--queue-delay-us need dynamic batching, which "
                f"a fixed-batch ({fixed}) model cannot do; re-export with --dynamic"
            )
        notes.append(
            f"fixed batch {fixed}: max_batch_size 0, no dynamic batching; every request carries "
            f"exactly {fixed} image(s) (re-export with --dynamic to batch)"
        )
        return 0, notes
    limit = source.batch_limit
    max_batch = options.max_batch or (limit if limit is not None else DEFAULT_MAX_BATCH)
    if max_batch < 1:
        raise TritonExportError(f"--max-batch must be at least 1, got {max_batch}")
    if limit is not None and max_batch > limit:
        raise TritonExportError(
            f"{source.path}: --max-batch {max_batch} is more than the engine's profile allows "
            f"({limit}); rebuild it with 'detector export engine --max-batch {max_batch}'"
        )
    bad = [b for b in options.preferred_batch if not 1 <= b <= max_batch]
    if bad:
        raise TritonExportError(
            f"--preferred-batch {' '.join(map(str, bad))}: each must be 1..{max_batch} "
            "(the --max-batch)"
        )
    if max_batch == 1:
        notes.append("max_batch_size 1: one image per execution, so no dynamic_batching block")
    return max_batch, notes


def write_repository(
    model: str | Path, out: str | Path, options: TritonOptions | None = None
) -> Repository:
    """Write the Triton model repository for ``model`` (``.onnx`` or ``.engine``) into ``out``.

    Models of other names already in ``out`` are left alone; the four written here replace
    earlier ones of the same names.
    """
    options = options or TritonOptions()
    source = read_source(model)
    _validate(options, source)
    max_batch, notes = plan_batching(source, options)
    name = options.name or DEFAULT_NAME
    if not _NAME.match(name):
        raise TritonExportError(
            f"--name {name!r}: a Triton model name must be letters, digits, '_', '.', '-' "
            "(starting with a letter or digit)"
        )
    repo = Repository(Path(out), name, f"{name}_preprocess", f"{name}_model",
                      f"{name}_postprocess", max_batch, source, notes)  # fmt: skip
    repo.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=repo.root, prefix=".triton-") as tmp:
        staging = Path(tmp)
        for model_name, config in _configs(repo, options).items():
            folder = staging / model_name
            (folder / "1").mkdir(parents=True)
            (folder / "config.pbtxt").write_text(config)
        network = staging / repo.model / "1" / source.filename
        shutil.copyfile(source.path, network)
        if source.platform == "tensorrt_plan":  # Triton ignores it; `detector serve` reads it
            shutil.copyfile(sidecar_path(source.path), sidecar_path(network))
        for model_name in (repo.preprocess, repo.postprocess):
            shutil.copyfile(MODEL_PY, staging / model_name / "1" / "model.py")
        for model_name in repo.model_names:
            target = repo.root / model_name
            if target.exists():
                logger.info("replacing %s", target)
                shutil.rmtree(target)
            (staging / model_name).rename(target)
    return repo


def _validate(options: TritonOptions, source: ModelSource) -> None:
    if options.kind not in KINDS:
        raise TritonExportError(f"--kind must be one of {', '.join(KINDS)}, got {options.kind!r}")
    if options.kind == "cpu" and source.platform == "tensorrt_plan":
        raise TritonExportError(f"{source.path}: a TensorRT plan runs on a GPU only (--kind gpu)")
    if options.instances < 1:
        raise TritonExportError(f"--instances must be at least 1, got {options.instances}")
    if options.queue_delay_us is not None and options.queue_delay_us < 0:
        raise TritonExportError(f"--queue-delay-us must be >= 0, got {options.queue_delay_us}")
    if not (0.0 <= options.conf <= 1.0 and 0.0 <= options.iou <= 1.0):
        raise TritonExportError(f"--conf and --iou must be in 0..1, got {options.conf}, "
                                f"{options.iou}")  # fmt: skip
    if not 1 <= options.max_det <= MAX_DET_LIMIT:
        raise TritonExportError(f"--max-det must be 1..{MAX_DET_LIMIT}, got {options.max_det}")


# ---- config.pbtxt text ---------------------------------------------------------------------


def _quote(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 kept; quotes, backslashes and control
    characters escaped)."""
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\{ord(char):03o}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _tensors(key: str, tensors: Sequence[Tensor], batch_dims: tuple[int, ...]) -> str:
    entries = []
    for t in tensors:
        dims = ", ".join(str(d) for d in (*batch_dims, *t.dims))
        entries.append(
            f"  {{\n    name: {_quote(t.name)}\n    data_type: {t.data_type}\n"
            f"    dims: [ {dims} ]\n  }}"
        )
    return f"{key} [\n" + ",\n".join(entries) + "\n]\n"


def _parameters(values: dict[str, str]) -> str:
    return "".join(
        f"parameters {{\n  key: {_quote(k)}\n  value: {{ string_value: {_quote(v)} }}\n}}\n"
        for k, v in values.items()
    )


def _header(name: str, engine: str, max_batch: int) -> str:
    return f"name: {_quote(name)}\n{engine}\nmax_batch_size: {max_batch}\n"


def _instances(count: int, kind: str) -> str:
    return f"instance_group [\n  {{\n    count: {count}\n    kind: {kind}\n  }}\n]\n"


def _contract_outputs() -> tuple[Tensor, ...]:
    """serve.routes.v2.io.OUTPUT_SPECS as config tensors; K (the request's max_det) is -1."""
    return tuple(
        Tensor(name, _V2_TO_CONFIG[v2_type], tuple(-1 if d == "K" else int(d) for d in shape))
        for name, (v2_type, _, shape) in OUTPUT_SPECS.items()
    )


def _configs(repo: Repository, options: TritonOptions) -> dict[str, str]:
    """model name -> its config.pbtxt text."""
    source = repo.source
    batched = repo.max_batch_size > 0
    batch_dims = () if batched else (source.fixed_batch or 1,)
    image = Tensor(IMAGE_INPUT, "TYPE_STRING", (1,))
    letterbox = Tensor(LETTERBOX, "TYPE_FP64", (3,))
    model_outputs = tuple(Tensor(f"model_{t.name}", t.data_type, t.dims) for t in source.outputs)
    contract = _contract_outputs()
    metadata = source.metadata.to_json()
    header = "\n".join(f"# {line}" for line in (
        f"written by 'detector export triton' from {source.path.name}",
        f"{source.metadata.model_name}, {source.metadata.precision}, "
        f"{source.metadata.layout} layout, input {source.metadata.input_size}",
    )) + "\n"  # fmt: skip
    python_instances = _instances(options.instances, "KIND_CPU")
    post_parameters = {
        "role": "postprocess",
        "metadata": metadata,
        "conf": str(options.conf),
        "iou": str(options.iou),
        "max_det": str(options.max_det),
        "max_det_limit": str(MAX_DET_LIMIT),
    }

    pre = (
        header
        + _header(repo.preprocess, 'backend: "python"', repo.max_batch_size)
        + _tensors("input", [image], batch_dims)
        + _tensors("output", [*source.inputs, letterbox], batch_dims)
        + python_instances
        + _parameters({"role": "preprocess", "metadata": metadata, "max_pixels": str(MAX_PIXELS)})
    )
    network = (
        header
        + _header(repo.model, f"platform: {_quote(source.platform)}", repo.max_batch_size)
        + _tensors("input", source.inputs, batch_dims)
        + _tensors("output", source.outputs, batch_dims)
        + _dynamic_batching(repo, options)
        + _instances(options.instances, KINDS[options.kind])
    )
    post = (
        header
        + _header(repo.postprocess, 'backend: "python"', repo.max_batch_size)
        + _tensors("input", [*model_outputs, letterbox], batch_dims)
        + _tensors("output", contract, batch_dims)
        + python_instances
        + _parameters(post_parameters)
    )
    steps = [
        _step(repo.preprocess, {IMAGE_INPUT: IMAGE_INPUT},
              {**{t.name: f"pre_{t.name}" for t in source.inputs}, LETTERBOX: f"pre_{LETTERBOX}"}),
        _step(repo.model, {t.name: f"pre_{t.name}" for t in source.inputs},
              {t.name: f"net_{t.name}" for t in source.outputs}),
        _step(repo.postprocess,
              {**{f"model_{t.name}": f"net_{t.name}" for t in source.outputs},
               LETTERBOX: f"pre_{LETTERBOX}"},
              {t.name: t.name for t in contract}),
    ]  # fmt: skip
    ensemble = (
        header
        + _header(repo.ensemble, 'platform: "ensemble"', repo.max_batch_size)
        + _tensors("input", [image], batch_dims)
        + _tensors("output", contract, batch_dims)
        + "ensemble_scheduling {\n  step [\n"
        + ",\n".join(steps)
        + "\n  ]\n}\n"
    )
    return {repo.ensemble: ensemble, repo.preprocess: pre, repo.model: network,
            repo.postprocess: post}  # fmt: skip


def _dynamic_batching(repo: Repository, options: TritonOptions) -> str:
    if repo.max_batch_size <= 1:
        return ""  # nothing to batch: fixed batch (0) or one image at a time
    delay = DEFAULT_QUEUE_DELAY_US if options.queue_delay_us is None else options.queue_delay_us
    lines = [f"  max_queue_delay_microseconds: {delay}"]
    if options.preferred_batch:
        sizes = ", ".join(map(str, options.preferred_batch))
        lines.insert(0, f"  preferred_batch_size: [ {sizes} ]")
    return "dynamic_batching {\n" + "\n".join(lines) + "\n}\n"


def _step(model: str, input_map: dict[str, str], output_map: dict[str, str]) -> str:
    """One ensemble step; map keys are the model's tensor names, values the ensemble's."""

    def entries(key: str, mapping: dict[str, str]) -> str:
        return "".join(
            f"      {key} {{\n        key: {_quote(k)}\n        value: {_quote(v)}\n      }}\n"
            for k, v in mapping.items()
        )

    return (
        f"    {{\n      model_name: {_quote(model)}\n      model_version: -1\n"
        + entries("input_map", input_map)
        + entries("output_map", output_map)
        + "    }"
    )


def describe(repo: Repository) -> str:
    """A few lines for the CLI: what was written and how to call it."""
    source = repo.source
    lines = [
        f"wrote Triton model repository {repo.root}: {repo.ensemble} (ensemble) = "
        f"{repo.preprocess} -> {repo.model} ({source.platform}) -> {repo.postprocess}",
        f"  clients call '{repo.ensemble}' with {IMAGE_INPUT} (BYTES, encoded images) and get "
        f"{', '.join(OUTPUT_SPECS)}; max_batch_size {repo.max_batch_size}",
        *(f"  note: {n}" for n in repo.notes),
        '  the Triton image needs: pip install "detector[serve]" (see export/TRITON.md)',
    ]
    return "\n".join(lines)
