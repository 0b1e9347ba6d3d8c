"""``detector predict``: run any model file (checkpoint, ONNX, TensorRT engine) on images and
videos and write annotated copies, predictions.json and optionally YOLO txt labels.

Every model file runs through :class:`serve.runtime.predictor.Predictor`, the serving runtime
(a checkpoint through its PyTorch backend), so ``predict``, ``bench`` and ``serve`` give one
answer for one model. Images go through the model in batches (``--batch``; an exported model's
batch dimension is used whole, so a folder does not run one image at a time); a video is read
frame by frame with OpenCV, its frames batched the same way, and written back annotated at its
own size and frame rate. Batching never changes a result: each image is letterboxed on its own
and the network's rows do not interact.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from detector.cli.options import add_prediction_options
from detector.core.defaults import PredictParams
from detector.core.media import IMAGE_SUFFIXES, VIDEO_FOURCC, VIDEO_SUFFIXES

CHECKPOINT_BACKEND = "torch"  # the runtime's backend for .pt/.pth checkpoints
DYNAMIC_BATCH = 8  # default --batch for a dynamic-batch exported model
DEFAULT_FPS = 30.0  # for a video that does not say its frame rate
PROGRESS_EVERY_S = 2.0

# (boxes [K, 4] xyxy original pixels, scores [K], class ids [K])
Result = tuple[np.ndarray, np.ndarray, np.ndarray]
DetectFn = Callable[[list[np.ndarray]], list[Result]]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="detect objects in images and videos",
        description="Run a model file (checkpoint .pt/.pth, ONNX .onnx, TensorRT .engine) on "
        "image or video files, folders or globs. Writes annotated images and videos (.mp4) and "
        "predictions.json (boxes in original image pixels, xyxy; a frame index for video "
        "frames) to --out.",
    )
    parser.add_argument("--model", required=True, help="checkpoint (.pt/.pth), .onnx or .engine")
    parser.add_argument("source", nargs="+", help="image or video files, folders or globs")
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
    parser.set_defaults(func=run)


def collect_sources(sources: list[str]) -> list[Path]:
    """Image and video files named directly, found (sorted) in the folders given, or matched by
    globs, in the order given."""
    found: list[Path] = []
    wanted = {*IMAGE_SUFFIXES, *VIDEO_SUFFIXES}
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in wanted)
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(source):
            matches = sorted(Path(p) for p in glob.glob(source, recursive=True))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise FileNotFoundError(f"{source}: no files match")
            found += matches
        else:
            raise FileNotFoundError(f"{path}: no such image, video or folder")
    if not found:
        raise FileNotFoundError(f"no images or videos found in {', '.join(sources)}")
    return found


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

    def add_frame(self, path: Path, index: int, frame: np.ndarray, result: Result) -> np.ndarray:
        """Frame ``index`` of video ``path``: its record, and the annotated frame to write."""
        self.records.append(
            {"video": str(path), "frame": index,
             "detections": detection_records(*result, self.class_names)}
        )  # fmt: skip
        return self._annotate(frame, result, f"{path.stem}_{index:06d}")

    def video_path(self, path: Path) -> Path:
        return self.out_dir / f"{path.stem}.mp4"

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


def model_detector(args: argparse.Namespace):
    """(class names, detect, close, batch) for any model file through
    :class:`serve.runtime.predictor.Predictor`; ``detect`` runs a list of images as one batch
    (split into the model's fixed batch). A checkpoint runs on the PyTorch backend at
    ``--device`` (``--imgsz`` and ``--arch`` as the checkpoint's overrides), one image at a
    time unless ``--batch`` says otherwise."""
    from serve.runtime.predictor import Predictor, backend_for

    backend = args.backend or backend_for(args.model)
    options = {}
    if backend == CHECKPOINT_BACKEND:
        options = {"device": args.device, "imgsz": args.imgsz, "model_name": args.arch}
    elif args.imgsz or args.arch:
        raise ValueError(f"{args.model}: --imgsz and --arch apply to checkpoints only")
    predictor = Predictor.from_path(args.model, backend=backend, **options)
    try:
        class_names = list(predictor.metadata.class_names)
        params = PredictParams(
            args.conf, args.iou, args.max_det, _classes(args.classes, class_names)
        )
    except ValueError:
        predictor.close()
        raise
    single = 1 if backend == CHECKPOINT_BACKEND else None
    batch = getattr(args, "batch", None) or predictor.metadata.batch or single or DYNAMIC_BATCH

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


def predict_images(
    paths: list[Path], detect: DetectFn, writer: PredictionWriter, batch: int
) -> int:
    """Read, detect (``batch`` at a time) and write ``paths``; returns how many were unreadable."""
    import cv2

    failed = 0

    def readable() -> Iterator[tuple[Path, np.ndarray]]:
        nonlocal failed
        for path in paths:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                print(f"skipped {path}: not a readable image")
                failed += 1
                continue
            yield path, image

    for chunk in chunks(readable(), batch):
        for (path, image), result in zip(chunk, detect([image for _, image in chunk])):
            writer.add(path, image, *result)
    return failed


def open_video(path: Path):
    """``path`` opened by ``cv2.VideoCapture``, or ``None`` when OpenCV cannot open it."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        return None
    return capture


def looks_like_video(path: Path) -> bool:
    """A video by its suffix; a file with neither an image nor a video suffix is a video when
    OpenCV has no image reader for it but opens it as a video."""
    import cv2

    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES or suffix in IMAGE_SUFFIXES:
        return suffix in VIDEO_SUFFIXES
    if cv2.haveImageReader(str(path)):
        return False
    capture = open_video(path)
    if capture is None:
        return False
    capture.release()
    return True


def predict_video(path: Path, detect: DetectFn, writer: PredictionWriter, batch: int) -> bool:
    """Detect objects in every frame of video ``path`` and write it back annotated (same size
    and frame rate, MPEG-4) as ``--out/<stem>.mp4``. Progress goes to stderr. Returns False
    when the file is not a readable video."""
    import cv2

    capture = open_video(path)
    if capture is None:
        print(f"skipped {path}: not a readable video")
        return False
    try:
        ok, first = capture.read()
        if not ok or first is None:
            print(f"skipped {path}: not a readable video (no frames)")
            return False
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if np.isfinite(fps) and fps > 0 else DEFAULT_FPS
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        height, width = first.shape[:2]
        out_path = writer.video_path(path)
        video = cv2.VideoWriter(
            str(out_path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), fps, (width, height)
        )
        if not video.isOpened():
            raise RuntimeError(f"{out_path}: OpenCV cannot write {VIDEO_FOURCC} video here")

        def frames() -> Iterator[np.ndarray]:
            frame: np.ndarray | None = first
            while frame is not None:
                yield frame
                ok, frame = capture.read()
                if not ok:
                    frame = None

        index = objects = 0
        last_report = time.monotonic()
        of_total = f"/{total}" if total > 0 else ""
        try:
            for chunk in chunks(frames(), batch):
                for frame, result in zip(chunk, detect(chunk)):
                    if frame.shape[:2] != (height, width):  # a stream that changes size
                        frame = cv2.resize(frame, (width, height))
                    video.write(writer.add_frame(path, index, frame, result))
                    objects += len(result[2])
                    index += 1
                if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                    last_report = time.monotonic()
                    print(f"{path}: frame {index}{of_total}", file=sys.stderr, flush=True)
        finally:
            video.release()
        if total > 0 and index < total:
            print(f"warning: {path}: read {index} of the {total} frames it declares (truncated?)",
                  file=sys.stderr)  # fmt: skip
        print(f"{path}: {index} frames, {objects} objects -> {out_path}")
        return True
    finally:
        capture.release()


def run(args: argparse.Namespace) -> int:
    model_path = Path(args.model)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no such model file")
    batch = getattr(args, "batch", None)
    if batch is not None and batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    sources = collect_sources(args.source)
    class_names, detect, close, batch = model_detector(args)
    writer = PredictionWriter(Path(args.out), class_names, args.save_txt)
    failed = 0
    pending: list[Path] = []  # images waiting to be run together
    try:
        for path in sources:
            if not looks_like_video(path):
                pending.append(path)
                continue
            failed += predict_images(pending, detect, writer, batch)
            pending = []
            failed += not predict_video(path, detect, writer, batch)
        failed += predict_images(pending, detect, writer, batch)
    finally:
        writer.close()
        close()
    return 1 if failed else 0
