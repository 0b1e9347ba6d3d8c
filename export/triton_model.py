"""The Python-backend ``model.py`` of a repository written by ``detector export triton``.

``export/triton.py`` copies this file, unchanged, into ``N_preprocess/1/model.py`` and
``N_postprocess/1/model.py``; the ``role`` parameter of each ``config.pbtxt`` picks the half:

- ``preprocess``: ``IMAGE`` (BYTES ``[B, 1]``, encoded image files) -> ``images``
  (FP32 ``[B, 3, H, W]``, the network input) and ``letterbox`` (FP64 ``[B, 3]``: ratio,
  original height, original width);
- ``postprocess``: the network's outputs (``model_output`` ``[B, N, 5 + C]``, or the NMS layout's
  ``model_num_dets``, ``model_boxes``, ``model_scores``, ``model_classes``) and ``letterbox`` ->
  ``num_dets`` INT32 ``[B, 1]``, ``boxes`` FP32 ``[B, K, 4]`` (original image pixels),
  ``scores`` FP32 ``[B, K]``, ``classes`` INT32 ``[B, K]`` (``serve.routes.v2.io``; K = max_det).

It computes nothing itself: decoding is ``serve.runtime.images.decode_image`` (type from the
bytes, size checked before decoding), pre- and post-processing are
``serve.runtime.predictor.Predictor.prepare`` and ``Predictor.postprocess``
(``detector.core.preprocess``, ``serve.runtime.postprocess``), boxes go back with
``detector.core.preprocess.boxes_to_original`` and are padded by
``serve.routes.v2.io.detections_to_tensors``: the code our server runs, imported, so the two
cannot drift apart. The Triton container needs
``pip install "detector[serve]"`` (NumPy, OpenCV, Pillow; no PyTorch).

Thresholds ``conf``, ``iou``, ``max_det`` come from the config's ``parameters`` (one that is
missing: :mod:`detector.core.defaults`) and can be overridden per request by request parameters
of the same names (numbers, or numeric strings for clients that can only send strings), as can
``classes`` (names or ids, comma-separated), the same parameters our server's ``/v2`` takes.
Triton forwards an ensemble request's parameters to its steps since 23.10
(triton-inference-server/core#261).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from detector.core.defaults import MAX_DET, PREDICT_CONF, PREDICT_IOU
from detector.core.preprocess import boxes_to_original
from serve.routes.v2.io import IMAGE_INPUT, detections_to_tensors
from serve.runtime.images import ImageError, decode_image
from serve.runtime.metadata import INPUT_NAME, NMS_OUTPUTS, RAW_OUTPUT, ModelMetadata
from serve.runtime.predictor import Detections, Predictor, UnknownClassError, resolve_classes

LETTERBOX = "letterbox"
ROLES = ("preprocess", "postprocess")


class RequestError(ValueError):
    """A request parameter out of range or not a number (answered as INVALID_ARG)."""


class EnsembleStep:
    """A ``serve.runtime.backends.base.Backend`` stand-in that carries the model's metadata only:
    in the
    ensemble the network runs as its own step (``N_model``), between these two halves."""

    name = "triton-ensemble"

    def __init__(self, metadata: ModelMetadata) -> None:
        self.metadata = metadata

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        raise RuntimeError("the network runs as the ensemble's model step, not in model.py")

    def close(self) -> None:
        pass


class TritonPythonModel:
    """Triton's entry point (``initialize`` / ``execute`` / ``finalize``)."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.name = str(config.get("name", args.get("model_name", "model")))
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.role = params.get("role")
        if self.role not in ROLES:
            raise ValueError(f"{self.name}/config.pbtxt: parameter 'role' must be one of {ROLES}")
        source = f"{self.name}/config.pbtxt parameter 'metadata'"
        metadata = ModelMetadata.from_json(params["metadata"], source)
        self.predictor = Predictor(EnsembleStep(metadata))
        self.max_pixels = int(params.get("max_pixels", "0"))
        # the config states them (export.triton writes all three); a hand-edited config that
        # drops one gets the default of predict and serve, not a silent zero
        self.defaults = {"conf": float(params.get("conf", PREDICT_CONF)),
                         "iou": float(params.get("iou", PREDICT_IOU)),
                         "max_det": int(params.get("max_det", MAX_DET))}  # fmt: skip
        self.max_det_limit = int(params.get("max_det_limit", "0"))

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request; a bad image or parameter fails that request alone."""
        step = self.preprocess if self.role == "preprocess" else self.postprocess
        responses = []
        for request in requests:
            try:
                outputs = step(request)
            except (ImageError, RequestError) as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            tensors = [pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in outputs.items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.predictor.close()

    def preprocess(self, request: Any) -> dict[str, np.ndarray]:
        """``IMAGE [B, 1]`` bytes -> ``images [B, 3, H, W]`` FP32, ``letterbox [B, 3]`` FP64."""
        data = pb_utils.get_input_tensor_by_name(request, IMAGE_INPUT).as_numpy().reshape(-1)
        images = [
            decode_image(bytes(item), self.max_pixels, f"{IMAGE_INPUT}[{i}]")
            for i, item in enumerate(data)
        ]
        batch, ratios = self.predictor.prepare(images)
        letterbox = [(ratio, *image.shape[:2]) for ratio, image in zip(ratios, images)]
        return {INPUT_NAME: batch, LETTERBOX: np.asarray(letterbox, np.float64).reshape(-1, 3)}

    def postprocess(self, request: Any) -> dict[str, np.ndarray]:
        """The network's outputs + ``letterbox`` -> the padded v2 detection tensors."""
        conf, iou, max_det, classes = self.thresholds(request)
        names = NMS_OUTPUTS if self.predictor.metadata.layout == "nms" else (RAW_OUTPUT,)
        outputs = {
            n: pb_utils.get_input_tensor_by_name(request, f"model_{n}").as_numpy() for n in names
        }
        letterbox = pb_utils.get_input_tensor_by_name(request, LETTERBOX).as_numpy()
        raw = self.predictor.postprocess(outputs, conf, iou, max_det, classes)
        detections = [
            Detections(boxes_to_original(r.boxes, float(ratio), (int(h), int(w))),
                       r.scores, r.classes)
            for r, (ratio, h, w) in zip(raw, letterbox)
        ]  # fmt: skip
        return detections_to_tensors(detections, max_det)

    def thresholds(self, request: Any) -> tuple[float, float, int, list[int] | None]:
        """``conf``, ``iou``, ``max_det`` (the request's parameters over the config's) and the
        ``classes`` filter (names or ids, comma-separated, as ``/v1/detect?classes=``)."""
        text = request.parameters() if hasattr(request, "parameters") else "{}"
        given = json.loads(text or "{}")
        values = dict(self.defaults)
        for key in values:
            if key not in given:
                continue
            raw = given[key]
            try:
                if isinstance(raw, bool):
                    raise ValueError("a boolean")
                number = float(raw)
                if key == "max_det" and not number.is_integer():
                    raise ValueError("not a whole number")
            except (TypeError, ValueError) as exc:
                raise RequestError(
                    f"request parameter {key}={raw!r} is not a {'whole ' * (key == 'max_det')}"
                    "number"
                ) from exc
            values[key] = int(number) if key == "max_det" else number
        conf, iou, max_det = float(values["conf"]), float(values["iou"]), int(values["max_det"])
        if not (0.0 <= conf <= 1.0 and 0.0 <= iou <= 1.0):
            raise RequestError(f"conf and iou must be in 0..1, got conf={conf}, iou={iou}")
        if not 1 <= max_det <= self.max_det_limit:
            raise RequestError(f"max_det must be 1..{self.max_det_limit}, got {max_det}")
        wanted = given.get("classes")
        if wanted is not None and not isinstance(wanted, str):
            raise RequestError(
                "request parameter classes: a string of names or ids, comma-separated"
            )
        try:
            classes = resolve_classes(
                [wanted] if wanted else None, self.predictor.metadata.class_names
            )
        except UnknownClassError as exc:
            raise RequestError(f"request parameter classes: {exc}") from exc
        return conf, iou, max_det, classes
