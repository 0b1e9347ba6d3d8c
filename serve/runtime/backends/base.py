"""The one interface every inference backend implements (ONNX Runtime, TensorRT, PyTorch).

A backend runs a network on a ready-made batch and returns its named outputs as NumPy arrays;
pre-processing (``detector.core.preprocess``) and post-processing (``serve.runtime.postprocess``)
are the same
for every backend, so backends cannot drift apart in what they compute around the network.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from serve.runtime.metadata import ModelMetadata


@runtime_checkable
class Backend(Protocol):
    """A loaded model.

    Attributes:
        name: ``"onnxruntime"``, ``"tensorrt"`` or ``"torch"``.
        metadata: what the model file says about itself.
    """

    name: str
    metadata: ModelMetadata

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images`` ``[B, 3, H, W]`` float32 (BGR, 0-255, letterboxed) -> named outputs:
        ``{"output": [B, N, 5 + C]}`` for the raw layout, ``num_dets [B, 1]``,
        ``boxes [B, K, 4]``, ``scores [B, K]``, ``classes [B, K]`` for the NMS layout."""
        ...

    def close(self) -> None:
        """Release the session, engine or device memory."""
        ...
