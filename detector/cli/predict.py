"""``detector predict``: run any model file (checkpoint, ONNX, TensorRT engine) on images and
write annotated copies, predictions.json and optionally YOLO txt labels."""

from __future__ import annotations

import argparse
import glob
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
CHECKPOINT_SUFFIXES = {".pt", ".pth"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="detect objects in images",
        description="Run a model file (checkpoint .pt/.pth, ONNX .onnx, TensorRT .engine) on "
        "image files, folders or globs. Writes annotated images and predictions.json (boxes in "
        "original image pixels, xyxy) to --out.",
    )
    parser.add_argument("--model", required=True, help="checkpoint (.pt/.pth), .onnx or .engine")
    parser.add_argument("source", nargs="+", help="image files, folders of images or globs")
    parser.add_argument("--out", default="runs/predict", help="output folder")
    parser.add_argument(
        "--backend", help="backend for an exported model (default: by suffix, e.g. onnxruntime)"
    )
    parser.add_argument("--arch", help="model name, needed only for official YOLOX .pth files")
    parser.add_argument("--imgsz", type=int, help="input size of a checkpoint (default: its own)")
    parser.add_argument("--conf", type=float, default=0.25, help="confidence threshold")
    parser.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="most detections per image")
    parser.add_argument(
        "--classes",
        action="append",
        help="keep only these classes: names or ids, comma-separated or repeated",
    )
    parser.add_argument("--device", default="auto", help="device of a checkpoint (auto, cpu, cuda)")
    parser.add_argument(
        "--save-txt", action="store_true", help="also write YOLO labels (class cx cy w h, 0-1)"
    )
    parser.set_defaults(func=run)


def collect_images(sources: list[str]) -> list[Path]:
    """Image files named directly, found (sorted) in the folders given, or matched by globs."""
    images: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            images += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            images.append(path)
        elif glob.has_magic(source):
            matches = sorted(Path(p) for p in glob.glob(source, recursive=True))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise FileNotFoundError(f"{source}: no files match")
            images += matches
        else:
            raise FileNotFoundError(f"{path}: no such image or folder")
    if not images:
        raise FileNotFoundError(f"no images found in {', '.join(sources)}")
    return images


class PredictionWriter:
    """Writes each image's results (annotated copy, optional YOLO txt) and, on close,
    predictions.json; one writer for every model type."""

    def __init__(self, out_dir: Path, class_names: Sequence[str], save_txt: bool) -> None:
        self.out_dir = out_dir
        self.class_names = list(class_names)
        self.save_txt = save_txt
        self.records: list[dict] = []
        out_dir.mkdir(parents=True, exist_ok=True)
        if save_txt:
            (out_dir / "labels").mkdir(exist_ok=True)

    def add(
        self, path: Path, image: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
        classes: np.ndarray,
    ) -> None:  # fmt: skip
        """One image: ``boxes [K, 4]`` xyxy original pixels, ``scores [K]``, ``classes [K]``."""
        import cv2

        from detector.visualize import draw_boxes

        labels = classes.astype(int)
        drawn = draw_boxes(image, boxes, labels, self.class_names, scores)
        cv2.imwrite(str(self.out_dir / path.name), drawn)
        if self.save_txt:
            height, width = image.shape[:2]
            lines = []
            for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):
                cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
                w, h = (x2 - x1) / width, (y2 - y1) / height
                lines.append(f"{label} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
            (self.out_dir / "labels" / f"{path.stem}.txt").write_text("".join(lines))
        self.records.append(
            {
                "image": str(path),
                "detections": [
                    {
                        "box": [round(float(v), 4) for v in box],
                        "score": round(float(score), 6),
                        "class_id": int(label),
                        "class_name": self.class_names[int(label)],
                    }
                    for box, score, label in zip(boxes, scores, labels)
                ],
            }
        )
        print(f"{path}: {len(labels)} objects")

    def close(self) -> None:
        (self.out_dir / "predictions.json").write_text(json.dumps(self.records, indent=2))
        print(f"results written to {self.out_dir}")


def _classes(values: list[str] | None, class_names: Sequence[str]) -> list[int] | None:
    """``--classes`` values -> class ids (:func:`serve.runtime.resolve_classes`)."""
    from serve.runtime import UnknownClassError, resolve_classes

    try:
        return resolve_classes(values, class_names)
    except UnknownClassError as exc:
        raise ValueError(f"--classes: {exc}") from exc


def checkpoint_detector(args: argparse.Namespace):
    """(class names, detect(image) -> (boxes, scores, classes), close) for a PyTorch checkpoint."""
    import torch

    from detector.engine.distributed import resolve_device
    from detector.models import checkpoint_input_size, model_from_checkpoint
    from detector.ops import postprocess
    from detector.preprocess import boxes_to_original, preprocess

    device = resolve_device(args.device)
    model, meta = model_from_checkpoint(args.model, name=args.arch)
    model = model.to(device).eval()
    class_names = meta.get("class_names") or [str(i) for i in range(model.num_classes)]
    imgsz = args.imgsz or checkpoint_input_size(model, meta)
    keep_classes = _classes(args.classes, class_names)

    def detect(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tensor, ratio = preprocess(image, imgsz)
        with torch.no_grad():
            output = model(torch.from_numpy(tensor)[None].to(device))
        # class-aware NMS: filtering classes after it equals filtering before
        dets = postprocess(output, conf_thres=args.conf, iou_thres=args.iou)[0].cpu().numpy()
        if keep_classes is not None:
            dets = dets[np.isin(dets[:, 5].astype(int), keep_classes)]
        dets = dets[: args.max_det]
        boxes = boxes_to_original(dets[:, :4], ratio, image.shape[:2])
        return boxes, dets[:, 4], dets[:, 5].astype(int)

    return class_names, detect, None


def exported_detector(args: argparse.Namespace):
    """(class names, detect, close) for an exported model through :mod:`serve.runtime`."""
    from serve.runtime import Predictor

    if args.imgsz or args.arch:
        raise ValueError(f"{args.model}: --imgsz and --arch apply to checkpoints only")
    predictor = Predictor.from_path(args.model, backend=args.backend)
    class_names = list(predictor.metadata.class_names)
    keep_classes = _classes(args.classes, class_names)

    def detect(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        [dets] = predictor.predict([image], args.conf, args.iou, args.max_det, keep_classes)
        return dets.boxes, dets.scores, dets.classes

    return class_names, detect, predictor.close


def run(args: argparse.Namespace) -> int:
    import cv2

    model_path = Path(args.model)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no such model file")
    images = collect_images(args.source)
    if model_path.suffix.lower() in CHECKPOINT_SUFFIXES and args.backend in (None, "torch"):
        class_names, detect, close = checkpoint_detector(args)
    else:
        class_names, detect, close = exported_detector(args)
    writer = PredictionWriter(Path(args.out), class_names, args.save_txt)
    failed = 0
    try:
        for path in images:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                print(f"skipped {path}: not a readable image")
                failed += 1
                continue
            writer.add(path, image, *detect(image))
    finally:
        writer.close()
        if close is not None:
            close()
    return 1 if failed else 0
