"""Verification: an exported ONNX file, run through the serving runtime, against PyTorch.

The same real-looking images (the BCCD sample in ``data/bccd`` when the repository has it,
else generated ones from ``detector.data.synth``) go through ``detector.core.preprocess`` once; the
batch runs through ONNX Runtime via :class:`serve.runtime.predictor.Predictor` (exactly what
serves) and
through the PyTorch model. Checked, per batch size (the fixed batch, or 1 and 3 for a dynamic
batch):

- raw layout: every output value, ``|onnx - torch| <= atol + rtol * |torch|``, with ``atol``
  scaled to the output: boxes (input pixels) to the largest box value, probabilities to 1;
- both layouts: the detections after NMS (``detector.ops.postprocess`` on the PyTorch output
  vs. the runtime's), matched one to one by class, score and box (IoU, or for tiny boxes the
  corners within the raw tolerance of the input size). A detection without a partner is
  tolerated only when it is borderline: its score within the score tolerance of the threshold,
  or its overlap with a better box of its class within the IoU margin of the NMS threshold
  (rounding may then legitimately flip it).

Tolerances (:data:`TOLERANCES`): fp32 1e-4 relative (the published-parity level; float32
kernels differ between CPUs and between ONNX Runtime and PyTorch by about 1e-7 relative, measured
up to 1e-5 px on 150 px boxes for nano/tiny); fp16 1e-2 relative (FP16 keeps 11 significant
bits, about 5e-4 relative per rounding, and the error adds up over some 60 layers; TensorRT's
FP16 kernels accumulate in FP16 too). On ONNX Runtime's CPU provider an FP16 file runs with FP16
weights and FP16-rounded activations between nodes, but its x86 Conv kernels compute in float32
(it inserts casts around nodes that have no float16 kernel), so there it measures about 1e-5
relative; the 1e-2 is for GPUs.

On success the file's metadata records ``extra["verified"]``; on failure any such claim is
removed, so a file that failed its check never says it passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from detector.core.boxes import box_iou_numpy
from detector.core.defaults import MAX_DET, PREDICT_CONF, PREDICT_IOU
from detector.ops import postprocess
from export.onnx import save_atomic
from serve.runtime.metadata import ONNX_KEY, ModelMetadata, read_onnx_metadata, write_onnx_metadata
from serve.runtime.postprocess import RawDetections
from serve.runtime.predictor import Predictor

REPO_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "bccd" / "images"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class Tolerance:
    """``rtol`` and ``atol`` (as a fraction of the output scale) for raw outputs; ``iou``: the
    least IoU of matched detections; ``score``: their largest score difference; ``iou_margin``:
    how close to the NMS threshold an overlap must be for a lone detection to count as
    borderline."""

    rtol: float
    atol: float
    iou: float
    score: float
    iou_margin: float


TOLERANCES = {
    "fp32": Tolerance(rtol=1e-4, atol=1e-4, iou=0.99, score=1e-3, iou_margin=0.01),
    "fp16": Tolerance(rtol=1e-2, atol=1e-2, iou=0.95, score=2e-2, iou_margin=0.05),
}


@dataclass
class VerifyReport:
    """What the check found; ``ok`` when everything is within ``tolerance``."""

    path: str
    precision: str
    layout: str
    batches: list[int]
    images: str
    tolerance: Tolerance
    max_box_diff: float = 0.0  # input pixels
    box_scale: float = 0.0
    max_score_diff: float = 0.0  # probabilities (raw) / detection scores (nms)
    worst_ratio: float = 0.0  # max |d| / (atol + rtol * |ref|); <= 1 passes
    detections_torch: int = 0
    detections_onnx: int = 0
    matched: int = 0
    borderline: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        tol = self.tolerance
        lines = [
            f"verify {self.path} ({self.precision}, {self.layout} layout, batch "
            f"{'/'.join(map(str, self.batches))}, images: {self.images})",
            (
                f"  largest difference vs PyTorch: boxes {self.max_box_diff:.3g} px "
                f"(scale {self.box_scale:.4g}), scores {self.max_score_diff:.3g}; "
                + (
                    f"tolerance rtol {tol.rtol:g}, atol {tol.atol:g} of scale "
                    f"(worst {self.worst_ratio:.3g} of allowed)"
                    if self.layout == "raw"
                    else "(of the matched detections)"
                )
            ),
            f"  detections after NMS: PyTorch {self.detections_torch}, ONNX Runtime "
            f"{self.detections_onnx}, matched {self.matched} (same class, IoU >= {tol.iou:g} or "
            f"corners within tolerance, score within {tol.score:g}), borderline {self.borderline}",
        ]
        if self.ok:
            lines.append("  OK: matches PyTorch")
        else:
            lines += [f"  FAILED: {p}" for p in self.problems]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def sample_images(count: int, folder: Path | None = None) -> tuple[list[np.ndarray], str]:
    """``count`` BGR uint8 images: the first of ``folder`` (default: the repository's BCCD
    sample) when it has enough, else generated ones. Returns them and where they came from."""
    import cv2

    folder = folder or REPO_SAMPLE
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in files[:count]]
        if len(images) == count and all(i is not None for i in images):
            return images, str(folder)
    from detector.data.synth import SynthSpec, synth_image

    spec = SynthSpec(image_size=(160, 480), object_size=(24, 160), objects=(0, 6))
    images = [synth_image(np.random.default_rng([7, i]), spec)[0] for i in range(count)]
    return images, "generated (detector.data.synth)"


def _match(
    ref: RawDetections,
    got: RawDetections,
    tol: Tolerance,
    conf: float,
    iou: float,
    max_det: int,
    box_scale: float,
) -> tuple[list[tuple[int, int]], int, list[str]]:
    """Greedy one-to-one matching (best score first) by class, score and box; returns
    (matched pairs ``(ref index, got index)``, borderline count, problems)."""
    pairs: list[tuple[int, int]] = []
    borderline, problems = 0, []
    iou_matrix = (
        box_iou_numpy(ref.boxes, got.boxes) if len(ref.scores) and len(got.scores) else None
    )
    taken = np.zeros(len(got.scores), bool)
    lonely_ref, lonely_got = [], []
    for i in range(len(ref.scores)):
        if iou_matrix is not None:
            candidates = (got.classes == ref.classes[i]) & ~taken
            # the same box: IoU >= tol.iou, or (tiny boxes, whose IoU a fraction of a pixel
            # moves a lot) every corner within the raw-output tolerance of the box scale
            corner = np.abs(got.boxes - ref.boxes[i]).max(axis=1)
            allowed = tol.atol * box_scale + tol.rtol * np.abs(ref.boxes[i]).max()
            same = (iou_matrix[i] >= tol.iou) | (corner <= allowed)
            close = np.abs(got.scores - ref.scores[i]) <= tol.score
            overlaps = np.where(candidates & same & close, iou_matrix[i], -np.inf)
            j = int(overlaps.argmax())
            if np.isfinite(overlaps[j]):
                taken[j] = True
                pairs.append((i, j))
                continue
        lonely_ref.append(i)
    lonely_got = [j for j in range(len(got.scores)) if not taken[j]]
    for side, dets, lonely in (("PyTorch", ref, lonely_ref), ("ONNX", got, lonely_got)):
        for i in lonely:
            if _borderline(dets, i, tol, conf, iou, max_det):
                borderline += 1
            else:
                problems.append(
                    f"{side} detection class {dets.classes[i]} score {dets.scores[i]:.4f} box "
                    f"{np.round(dets.boxes[i], 1).tolist()} has no counterpart"
                )
    return pairs, borderline, problems


def _borderline(
    dets: RawDetections, i: int, tol: Tolerance, conf: float, iou: float, max_det: int
) -> bool:
    """Whether rounding may flip detection ``i``: its score near the threshold, or near the
    last kept score when ``max_det`` cut the list (ties in flat regions such as padding), or its
    overlap with a better box of its class near the NMS threshold."""
    score = float(dets.scores[i])
    if abs(score - conf) <= tol.score:
        return True
    if len(dets.scores) >= max_det and abs(score - float(dets.scores.min())) <= tol.score:
        return True
    better = np.flatnonzero((dets.classes == dets.classes[i]) & (dets.scores > dets.scores[i]))
    if better.size == 0:
        return False
    overlap = box_iou_numpy(dets.boxes[i : i + 1], dets.boxes[better]).max()
    return abs(float(overlap) - iou) <= tol.iou_margin


def _as_raw(dets: torch.Tensor) -> RawDetections:
    array = dets.detach().cpu().numpy()
    return RawDetections(
        array[:, :4].astype(np.float32),
        array[:, 4].astype(np.float32),
        array[:, 5].astype(np.int64),
    )


def compare(
    predictor: Predictor,
    model: nn.Module,
    images: Sequence[np.ndarray],
    batches: Sequence[int],
    tolerance: Tolerance,
    report: VerifyReport,
) -> None:
    """Fill ``report`` with the comparison of ``predictor`` and ``model`` on ``images``."""
    meta = predictor.metadata
    if meta.layout == "nms":
        conf, iou, max_det = (
            meta.nms.score_threshold,
            meta.nms.iou_threshold,
            meta.nms.max_detections,
        )
    else:
        # a raw file is compared at the thresholds predict and serve use by default
        conf, iou, max_det = PREDICT_CONF, PREDICT_IOU, MAX_DET
    model = model.float().eval()
    for size in batches:
        batch, _ = predictor.prepare(list(images[:size]))
        outputs = predictor.run(batch)
        with torch.no_grad():
            expected = model(torch.from_numpy(batch))
        if meta.layout == "raw":
            got = outputs["output"]
            ref = expected.numpy()
            if got.shape != ref.shape:
                report.problems.append(f"output shape {got.shape}, PyTorch {ref.shape}")
                continue
            scale = float(np.abs(ref[..., :4]).max())
            report.box_scale = max(report.box_scale, scale)
            diff = np.abs(got.astype(np.float64) - ref)
            report.max_box_diff = max(report.max_box_diff, float(diff[..., :4].max()))
            report.max_score_diff = max(report.max_score_diff, float(diff[..., 4:].max()))
            allowed = np.concatenate(
                (
                    tolerance.atol * scale + tolerance.rtol * np.abs(ref[..., :4]),
                    tolerance.atol + tolerance.rtol * np.abs(ref[..., 4:]),
                ),
                axis=-1,
            )
            report.worst_ratio = max(report.worst_ratio, float((diff / allowed).max()))
        found = predictor.postprocess(outputs, conf, iou, max_det)
        reference = postprocess(expected, conf_thres=conf, iou_thres=iou, max_det=max_det)
        for index, (ref_dets, got_dets) in enumerate(zip(reference, found)):
            ref_dets = _as_raw(ref_dets)
            report.detections_torch += len(ref_dets.scores)
            report.detections_onnx += len(got_dets.scores)
            pairs, borderline, problems = _match(
                ref_dets, got_dets, tolerance, conf, iou, max_det, float(max(meta.input_size))
            )
            report.matched += len(pairs)
            report.borderline += borderline
            report.problems += [f"batch {size}, image {index}: {p}" for p in problems]
            if meta.layout == "nms" and pairs:  # no raw output: compare the matched detections
                i, j = np.asarray(pairs).T
                box_diff = np.abs(ref_dets.boxes[i] - got_dets.boxes[j])
                score_diff = np.abs(ref_dets.scores[i] - got_dets.scores[j])
                report.max_box_diff = max(report.max_box_diff, float(box_diff.max()))
                report.max_score_diff = max(report.max_score_diff, float(score_diff.max()))
                report.box_scale = max(report.box_scale, float(np.abs(ref_dets.boxes).max()))
    if report.worst_ratio > 1:
        report.problems.insert(
            0,
            f"outputs differ beyond tolerance: boxes {report.max_box_diff:.3g} px, scores "
            f"{report.max_score_diff:.3g} (worst {report.worst_ratio:.3g}x the allowed)",
        )


def verify_onnx(
    path: str | Path,
    model: nn.Module,
    images: Sequence[np.ndarray] | None = None,
    tolerance: Tolerance | None = None,
    providers: list[str] | None = None,
    record: bool = True,
) -> VerifyReport:
    """Compare ONNX file ``path`` (through :class:`serve.runtime.predictor.Predictor`) with
    ``model``
    (the PyTorch model it came from, evaluation mode). With ``record`` the verdict is written
    into the file's metadata (a pass as ``extra["verified"]``; a failure removes that claim).
    """
    path = Path(path)
    predictor = Predictor.from_path(path, backend="onnxruntime", providers=providers)
    meta = predictor.metadata
    if tolerance is None:
        if meta.precision not in TOLERANCES:
            raise ValueError(f"{path}: no default tolerance for {meta.precision} models")
        tolerance = TOLERANCES[meta.precision]
    batches = [1, 3] if meta.batch is None else [meta.batch]
    source = "given"
    if images is None:
        images, source = sample_images(max(batches))
    report = VerifyReport(str(path), meta.precision, meta.layout, batches, source, tolerance)
    try:
        compare(predictor, model, images, batches, tolerance, report)
    finally:
        predictor.close()
    if record:
        record_verdict(path, meta, report)
    return report


def record_verdict(path: Path, meta: ModelMetadata, report: VerifyReport) -> None:
    """Rewrite ``path``'s metadata (atomically): ``extra["verified"]`` on a pass, none on a
    failure."""
    extra = {k: v for k, v in meta.extra.items() if k != "verified"}
    if report.ok:
        extra["verified"] = {
            "max_box_diff": report.max_box_diff,
            "max_score_diff": report.max_score_diff,
            "detections": report.matched + report.borderline,
            "tolerance": asdict(report.tolerance),
            "images": report.images,
        }
    elif "verified" not in meta.extra:
        return
    proto = onnx.load(str(path))
    if not any(p.key == ONNX_KEY for p in proto.metadata_props):
        return
    write_onnx_metadata(proto, ModelMetadata.from_dict({**meta.to_dict(), "extra": extra}))
    save_atomic(proto, path)


def is_verified(path: str | Path) -> bool:
    """Whether ``path``'s metadata records a passed check."""
    return "verified" in read_onnx_metadata(path).extra
