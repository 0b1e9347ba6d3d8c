"""``detector predict``: run any model file (checkpoint, ONNX, TensorRT engine) on images,
videos and live streams and write annotated copies, predictions.json and optionally YOLO txt
labels.

Every model file runs through :class:`serve.runtime.predictor.Predictor`, the serving runtime
(a checkpoint through its PyTorch backend), so ``predict``, ``bench`` and ``serve`` give one
answer for one model. Inputs are found and read by :mod:`serve.runtime.sources`, as ``detector
track`` reads them (image files, folders, globs, ``.txt`` lists, video files, ``rtsp://``,
``http(s)://`` and other live URLs, cameras). Images go through the model in batches
(``--batch``; an exported model's batch dimension is used whole, so a folder does not run one
image at a time); a video's frames are batched the same way and written back annotated at its
own size and frame rate; a live stream runs one newest frame at a time until it ends (or Ctrl-C,
which still writes every output). Batching never changes a result: each image is letterboxed on
its own and the network's rows do not interact.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detector.cli.options import add_prediction_options
from detector.core.defaults import PredictParams
from detector.core.media import VIDEO_FOURCC

if TYPE_CHECKING:
    from serve.runtime.predictor import Predictor

CHECKPOINT_BACKEND = "torch"  # the runtime's backend for .pt/.pth checkpoints
DYNAMIC_BATCH = 8  # default --batch for a dynamic-batch exported model
PROGRESS_EVERY_S = 2.0

# (boxes [K, 4] xyxy original pixels, scores [K], class ids [K])
Result = tuple[np.ndarray, np.ndarray, np.ndarray]
DetectFn = Callable[[list[np.ndarray]], list[Result]]


def register(subparsers: argparse._SubParsersAction) -> None:
    from serve.runtime.sources import OPEN_TIMEOUT_S

    parser = subparsers.add_parser(
        "predict",
        help="detect objects in images, videos and streams",
        description="Run a model file (checkpoint .pt/.pth, ONNX .onnx, TensorRT .engine) on "
        "image or video files, folders, globs, a .txt file with one source per line, or live "
        "streams (rtsp:// rtmp:// http(s):// URLs, a camera index or /dev/videoN). Writes "
        "annotated images and videos (.mp4) and predictions.json (boxes in original image "
        "pixels, xyxy; a frame index for video frames) to --out.",
    )
    parser.add_argument("--model", required=True, help="checkpoint (.pt/.pth), .onnx or .engine")
    parser.add_argument("source", nargs="+", help="images, videos, folders, globs or streams")
    parser.add_argument("--out", default="runs/predict", help="output folder")
    parser.add_argument(
        "--backend", help="backend for an exported model (default: by suffix, e.g. onnxruntime)"
    )
    parser.add_argument("--arch", help="model name, needed only for official YOLOX .pth files")
    parser.add_argument("--imgsz", type=int, help="input size of a checkpoint (default: its own)")
    add_prediction_options(parser)
    parser.add_argument(
        "--classes",
        action="append",
        help="keep only these classes: names or ids, comma-separated or repeated",
    )
    parser.add_argument(
        "--batch", type=int, help=f"images per network run for an exported model (default: "
        f"its fixed batch, or {DYNAMIC_BATCH} for a dynamic-batch model; checkpoints run 1)",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="device of a checkpoint (auto, cpu, cuda)")
    parser.add_argument(
        "--save-txt", action="store_true", help="also write YOLO labels (class cx cy w h, 0-1)"
    )
    parser.add_argument(
        "--open-timeout", type=float, default=OPEN_TIMEOUT_S,
        help=f"seconds a live source may take to open before it is skipped "
        f"(default {OPEN_TIMEOUT_S:g})",
    )  # fmt: skip
    parser.set_defaults(func=run)


def find_sources(sources: list[str]) -> list:
    """What ``sources`` name (:func:`serve.runtime.sources.expand_sources`), in order; a source
    with nothing there is a :class:`FileNotFoundError` naming it, before anything runs."""
    from serve.runtime.sources import expand_sources

    specs = expand_sources(sources)
    for spec in specs:
        if spec.kind == "missing" and glob.has_magic(spec.spec):
            raise FileNotFoundError(f"{spec.spec}: no files match")
        if spec.kind == "missing" and Path(spec.spec).is_dir():
            raise FileNotFoundError(f"no images or videos found in {spec.spec}")
        if spec.kind == "missing":
            raise FileNotFoundError(f"{spec.spec}: no such image, video, folder or stream")
    if not specs:
        raise FileNotFoundError(f"no images or videos found in {', '.join(sources)}")
    return specs


def collect_sources(sources: list[str]) -> list[Path]:
    """The image and video files that ``sources`` name (files, folders, globs, ``.txt`` lists;
    :func:`find_sources`), in order; a live stream is a :class:`ValueError`."""
    paths: list[Path] = []
    for spec in find_sources(sources):
        if spec.kind == "live":
            raise ValueError(f"{spec.spec}: a live stream, not a file")
        paths += spec.paths if spec.kind == "images" else [Path(spec.spec)]
    return paths


def detection_records(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> list[dict]:
    return [
        {
            "box": [round(float(v), 4) for v in box],
            "score": round(float(score), 6),
            "class_id": int(label),
            "class_name": class_names[int(label)],
        }
        for box, score, label in zip(boxes, scores, labels)
    ]


class PredictionWriter:
    """Writes each image's or frame's results (annotated copy, optional YOLO txt) and, on
    close, predictions.json; one writer for every model type."""

    def __init__(self, out_dir: Path, class_names: Sequence[str], save_txt: bool) -> None:
        self.out_dir = out_dir
        self.class_names = list(class_names)
        self.save_txt = save_txt
        self.records: list[dict] = []
        out_dir.mkdir(parents=True, exist_ok=True)
        if save_txt:
            (out_dir / "labels").mkdir(exist_ok=True)

    def _annotate(self, image: np.ndarray, result: Result, txt_name: str) -> np.ndarray:
        """``image`` with ``result``'s boxes drawn; writes its YOLO labels with --save-txt."""
        from detector.core.visualize import draw_boxes

        boxes, scores, classes = result
        labels = classes.astype(int)
        if self.save_txt:
            height, width = image.shape[:2]
            lines = []
            for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):
                cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
                w, h = (x2 - x1) / width, (y2 - y1) / height
                lines.append(f"{label} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
            (self.out_dir / "labels" / f"{txt_name}.txt").write_text("".join(lines))
        return draw_boxes(image, boxes, labels, self.class_names, scores)

    def add(
        self, path: Path, image: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
        classes: np.ndarray,
    ) -> None:  # fmt: skip
        """One image: ``boxes [K, 4]`` xyxy original pixels, ``scores [K]``, ``classes [K]``."""
        import cv2

        drawn = self._annotate(image, (boxes, scores, classes), path.stem)
        cv2.imwrite(str(self.out_dir / path.name), drawn)
        self.records.append(
            {"image": str(path),
             "detections": detection_records(boxes, scores, classes, self.class_names)}
        )  # fmt: skip
        print(f"{path}: {len(classes)} objects")

    def add_frame(
        self, video: str, name: str, index: int, frame: np.ndarray, result: Result
    ) -> np.ndarray:
        """Frame ``index`` of video or stream ``video`` (short name ``name``): its record, and
        the annotated frame to write."""
        self.records.append(
            {"video": video, "frame": index,
             "detections": detection_records(*result, self.class_names)}
        )  # fmt: skip
        return self._annotate(frame, result, f"{name}_{index:06d}")

    def video_path(self, name: str) -> Path:
        return self.out_dir / f"{name}.mp4"

    def close(self) -> None:
        (self.out_dir / "predictions.json").write_text(json.dumps(self.records, indent=2))
        print(f"results written to {self.out_dir}")


def _classes(values: list[str] | None, class_names: Sequence[str]) -> list[int] | None:
    """``--classes`` values -> class ids (:func:`serve.runtime.predictor.resolve_classes`)."""
    from serve.runtime.predictor import UnknownClassError, resolve_classes

    try:
        return resolve_classes(values, class_names)
    except UnknownClassError as exc:
        raise ValueError(f"--classes: {exc}") from exc


def open_predictor(args: argparse.Namespace) -> tuple[Predictor, int]:
    """The :class:`~serve.runtime.predictor.Predictor` of ``--model`` and the most images to
    give it at once. ``--backend`` picks the backend (default: by the file's suffix); a
    checkpoint runs on the PyTorch backend at ``--device`` (``--imgsz`` and, where the command
    has it, ``--arch`` as the checkpoint's overrides), one image at a time unless ``--batch``
    says otherwise; other models run ``--batch``, their fixed batch or ``DYNAMIC_BATCH``."""
    from serve.runtime.predictor import Predictor, backend_for

    arch = getattr(args, "arch", None)
    backend = args.backend or backend_for(args.model)
    options = {}
    if backend == CHECKPOINT_BACKEND:
        options = {"device": args.device, "imgsz": args.imgsz, "model_name": arch}
    elif args.imgsz or arch:
        flags = "--imgsz and --arch apply" if hasattr(args, "arch") else "--imgsz applies"
        raise ValueError(f"{args.model}: {flags} to checkpoints only")
    predictor = Predictor.from_path(args.model, backend=backend, **options)
    single = 1 if backend == CHECKPOINT_BACKEND else None
    batch = getattr(args, "batch", None) or predictor.metadata.batch or single or DYNAMIC_BATCH
    return predictor, batch


def model_detector(args: argparse.Namespace):
    """(class names, detect, close, batch) for any model file (:func:`open_predictor`);
    ``detect`` runs a list of images as one batch (split into the model's fixed batch)."""
    predictor, batch = open_predictor(args)
    try:
        class_names = list(predictor.metadata.class_names)
        params = PredictParams(
            args.conf, args.iou, args.max_det, _classes(args.classes, class_names)
        )
    except ValueError:
        predictor.close()
        raise

    def detect(images: list[np.ndarray]) -> list[Result]:
        found = predictor.predict(images, params.conf, params.iou, params.max_det, params.classes)
        return [(d.boxes, d.scores, d.classes) for d in found]

    return class_names, detect, predictor.close, batch


def chunks(items: Iterator, size: int) -> Iterator[list]:
    """Consecutive lists of up to ``size`` items."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_images(sources: list, detect: DetectFn, writer: PredictionWriter, batch: int) -> int:
    """Read, detect (``batch`` at a time, across ``sources``) and write the images of
    ``sources`` (:class:`~serve.runtime.sources.ImageFilesSource` s); returns how many were
    unreadable."""
    failed = 0

    def readable() -> Iterator[tuple[Path, np.ndarray]]:
        nonlocal failed
        for source in sources:
            with source:
                source.open()
                reported = 0
                while True:
                    frame = source.read()
                    for path in source.skipped[reported:]:  # unreadable ones before it
                        print(f"skipped {path}: not a readable image")
                    failed += len(source.skipped) - reported
                    reported = len(source.skipped)
                    if frame is None:
                        break
                    yield frame.path, frame.image

    for chunk in chunks(readable(), batch):
        for (path, image), result in zip(chunk, detect([image for _, image in chunk])):
            writer.add(path, image, *result)
    return failed


def predict_video(source: Any, detect: DetectFn, writer: PredictionWriter, batch: int) -> bool:
    """Detect objects in every frame of a video file, or each newest frame of a live stream,
    (``source``: a :class:`~serve.runtime.sources.FrameSource`) and write it back annotated
    (same size and frame rate, MPEG-4) as ``--out/<name>.mp4``. Progress goes to stderr.
    Returns False when it cannot be opened or has no frames."""
    import cv2

    from serve.runtime.sources import SourceError

    try:
        source.open()
    except SourceError as exc:
        print(f"skipped {exc}")
        source.close()
        return False
    with source:
        frames = iter(source)
        first = next(frames, None)
        if first is None:
            print(f"skipped {source.spec}: not a readable video (no frames)")
            return False
        total = getattr(source, "total", 0)
        height, width = first.image.shape[:2]
        out_path = writer.video_path(source.name)
        video = cv2.VideoWriter(
            str(out_path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), source.fps, (width, height)
        )
        if not video.isOpened():
            raise RuntimeError(f"{out_path}: OpenCV cannot write {VIDEO_FOURCC} video here")

        def all_frames() -> Iterator:
            yield first
            yield from frames

        count = objects = 0
        last_report = time.monotonic()
        of_total = f"/{total}" if total > 0 else ""
        try:
            for chunk in chunks(all_frames(), 1 if source.live else batch):
                for frame, result in zip(chunk, detect([f.image for f in chunk])):
                    image = frame.image
                    if image.shape[:2] != (height, width):  # a stream that changes size
                        image = cv2.resize(image, (width, height))
                    video.write(writer.add_frame(source.spec, source.name, frame.index, image,
                                                 result))  # fmt: skip
                    objects += len(result[2])
                    count += 1
                if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                    last_report = time.monotonic()
                    print(f"{source.spec}: frame {count}{of_total}", file=sys.stderr, flush=True)
        finally:
            video.release()
    stats = source.stats
    if stats.decode_errors:
        print(f"warning: {source.spec}: {stats.decode_errors} frames failed to decode, skipped",
              file=sys.stderr)  # fmt: skip
    if total > 0 and count + stats.decode_errors < total:
        print(f"warning: {source.spec}: read {count} of the {total} frames it declares "
              "(truncated?)", file=sys.stderr)  # fmt: skip
    extra = "".join(f", {n} {what}" for n, what in ((stats.dropped, "dropped"),
                    (stats.reconnects, "reconnects")) if n)  # fmt: skip
    print(f"{source.spec}: {count} frames, {objects} objects{extra} -> {out_path}")
    return True


def run(args: argparse.Namespace) -> int:
    from serve.runtime.sources import make_source

    model_path = Path(args.model)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no such model file")
    batch = getattr(args, "batch", None)
    if batch is not None and batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    specs = find_sources(args.source)
    class_names, detect, close, batch = model_detector(args)
    writer = PredictionWriter(Path(args.out), class_names, args.save_txt)
    failed = 0
    pending: list = []  # image sources waiting to be run together
    try:
        for spec in specs:
            source = make_source(spec, open_timeout=args.open_timeout)
            if spec.kind == "images":
                pending.append(source)
                continue
            failed += predict_images(pending, detect, writer, batch)
            pending = []
            failed += not predict_video(source, detect, writer, batch)
        failed += predict_images(pending, detect, writer, batch)
    finally:
        writer.close()
        close()
    return 1 if failed else 0
