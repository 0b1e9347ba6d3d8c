"""What a model must pass before it takes traffic: a warm-up batch of the input size its metadata
gives, whose outputs have the shapes its metadata promises.

A file can carry metadata that its network does not match: a graph built for another input size
(the warm-up run fails), or for another class count (the run succeeds, and every answer would be
misread). Both are refused here, with the metadata's and the network's numbers, before a server
lets the model answer a request: at start-up, and for each new version of a model it loads while
serving the old one.
"""

from __future__ import annotations

import numpy as np

from serve.runtime.metadata import NMS_OUTPUTS, RAW_OUTPUT, ModelMetadata
from serve.runtime.predictor import Predictor


class ModelCheckError(ValueError):
    """A model's network does not do what its metadata says; the message says how."""


def warm_up(predictor: Predictor, max_batch: int, sizes: tuple[int, ...] | None = None) -> None:
    """Run the network on grey ``[B, 3, H, W]`` batches (B = 1 and ``max_batch``, or ``sizes``)
    at the metadata's input size and post-process them, so the first requests do not pay for
    lazy allocations and kernel selection; each batch's outputs are checked
    (:func:`check_outputs`).

    Raises:
        ModelCheckError: a run failed, or its outputs do not match the metadata.
    """
    height, width = predictor.metadata.input_size
    for size in sorted(set(sizes or (1, max_batch))):
        batch = np.full((size, 3, height, width), 114, np.float32)
        try:
            outputs = predictor.run(batch)
        except Exception as exc:  # noqa: BLE001 - any backend error: the model cannot serve
            text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise ModelCheckError(
                f"the warm-up batch [{size}, 3, {height}, {width}] (the input size its metadata "
                f"gives) failed: {text[:400] or type(exc).__name__}"
            ) from exc
        check_outputs(predictor.metadata, outputs, size)
        predictor.postprocess(outputs)


def check_outputs(metadata: ModelMetadata, outputs: dict[str, np.ndarray], batch: int) -> None:
    """The network's outputs for a batch of ``batch`` images have the layout of ``metadata``:
    raw: ``output [B, N, 5 + C]`` (C = its class count); nms: ``num_dets [B, 1]``,
    ``boxes [B, K, 4]``, ``scores [B, K]``, ``classes [B, K]``.

    Raises:
        ModelCheckError: naming the tensor, its shape and the shape expected.
    """
    shapes = {name: tuple(np.shape(value)) for name, value in outputs.items()}
    classes = metadata.num_classes
    if metadata.layout == "raw":
        shape = shapes.get(RAW_OUTPUT)
        if shape is None or len(shape) != 3 or shape[0] != batch or shape[2] != 5 + classes:
            raise ModelCheckError(
                f"its output '{RAW_OUTPUT}' is {list(shape) if shape else 'missing'} for a batch "
                f"of {batch}, but its metadata ({classes} classes) needs [{batch}, N, "
                f"{5 + classes}] (the network was built for another class count?)"
            )
        return
    missing = [name for name in NMS_OUTPUTS if name not in shapes]
    if missing:
        raise ModelCheckError(
            f"its metadata says NMS layout, but the outputs {missing} are missing "
            f"(it has {sorted(shapes)})"
        )
    k = shapes["boxes"][1] if len(shapes["boxes"]) == 3 else -1
    expected = {"num_dets": (batch, 1), "boxes": (batch, k, 4), "scores": (batch, k),
                "classes": (batch, k)}  # fmt: skip
    for name, want in expected.items():
        if shapes[name] != want:
            raise ModelCheckError(
                f"its output '{name}' is {list(shapes[name])} for a batch of {batch}; the NMS "
                f"layout needs {list(want)}"
            )
