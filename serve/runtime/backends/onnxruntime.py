"""ONNX Runtime backend: runs an exported ONNX file (raw or NMS layout) without torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serve.runtime.metadata import INPUT_NAME, ONNX_KEY, MetadataError, ModelMetadata

# fastest first; the CPU provider is always there
PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)

# idle intra-op threads sleep instead of spin-waiting (ONNX Runtime's default "1"): spinning
# threads take the cores that other requests' decoding and the second lane need (measured in
# benchmarks/serve_throughput.md, "ONNX Runtime intra-op spinning")
INTRA_OP_SPINNING = "0"


class OnnxModelError(ValueError):
    """An ONNX file is missing, corrupt, truncated or not one of ours; the message names it."""


def default_providers() -> list[str]:
    """The installed providers among :data:`PREFERRED_PROVIDERS`, in that order."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """A :class:`serve.runtime.backends.base.Backend` over an ``onnxruntime.InferenceSession``.

    Args:
        path: the ``.onnx`` file written by ``detector export onnx`` (or ``export int8``).
        providers: execution providers in order of preference; default
            :func:`default_providers` (TensorRT EP, CUDA EP, CPU, those installed).
        threads: intra-op threads (default: ONNX Runtime's choice).
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxModelError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.add_session_config_entry("session.intra_op.allow_spinning", INTRA_OP_SPINNING)
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=providers or default_providers()
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OnnxModelError(
                f"{self.path}: ONNX Runtime cannot load it (truncated or corrupt ONNX file?): "
                f"{first}"
            ) from exc
        props = self.session.get_modelmeta().custom_metadata_map
        if ONNX_KEY not in props:
            raise OnnxModelError(
                f"{self.path}: no detector metadata (key '{ONNX_KEY}'); was it written by "
                "'detector export onnx'?"
            )
        try:
            self.metadata: ModelMetadata = ModelMetadata.from_json(props[ONNX_KEY], str(self.path))
        except MetadataError as exc:
            raise OnnxModelError(str(exc)) from exc
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != [INPUT_NAME]:
            raise OnnxModelError(f"{self.path}: expected one input '{INPUT_NAME}', has {inputs}")
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        """The providers the session actually uses."""
        return list(self.session.get_providers())

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images [B, 3, H, W]`` float32 -> ``{output name: array}``."""
        outputs = self.session.run(
            self.output_names, {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)}
        )
        return dict(zip(self.output_names, outputs))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
