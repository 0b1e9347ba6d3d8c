"""``detector predict``: run a checkpoint on images and write annotated copies plus JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="detect objects in images",
        description="Run a checkpoint on image files or folders. Writes annotated images and "
        "predictions.json (boxes in original image pixels, xyxy) to --out.",
    )
    parser.add_argument("--model", required=True, help="checkpoint (.pt, or official .pth)")
    parser.add_argument("source", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", default="runs/predict", help="output folder")
    parser.add_argument("--arch", help="model name, needed only for official YOLOX .pth files")
    parser.add_argument("--imgsz", type=int, help="input size (default: the checkpoint's)")
    parser.add_argument("--conf", type=float, default=0.25, help="confidence threshold")
    parser.add_argument("--nms", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(func=run)


def collect_images(sources: list[str]) -> list[Path]:
    """Image files named directly or found (sorted) in the folders given."""
    images: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            images += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            images.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image or folder")
    if not images:
        raise FileNotFoundError(f"no images found in {', '.join(sources)}")
    return images


def run(args: argparse.Namespace) -> int:
    import json

    import cv2
    import torch

    from detector.engine.distributed import resolve_device
    from detector.models import checkpoint_input_size, model_from_checkpoint
    from detector.ops import postprocess
    from detector.preprocess import boxes_to_original, preprocess
    from detector.visualize import draw_boxes

    device = resolve_device(args.device)
    model, meta = model_from_checkpoint(args.model, name=args.arch)
    model = model.to(device).eval()
    class_names = meta.get("class_names") or [str(i) for i in range(model.num_classes)]
    imgsz = args.imgsz or checkpoint_input_size(model, meta)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for path in collect_images(args.source):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            print(f"skipped {path}: not a readable image")
            continue
        tensor, ratio = preprocess(image, imgsz)
        with torch.no_grad():
            output = model(torch.from_numpy(tensor)[None].to(device))
        dets = postprocess(output, conf_thres=args.conf, iou_thres=args.nms)[0].cpu().numpy()
        boxes = boxes_to_original(dets[:, :4], ratio, image.shape[:2])
        labels = dets[:, 5].astype(int)
        cv2.imwrite(
            str(out_dir / path.name), draw_boxes(image, boxes, labels, class_names, dets[:, 4])
        )
        records.append(
            {
                "image": str(path),
                "detections": [
                    {
                        "box": [round(float(v), 2) for v in box],
                        "score": round(float(score), 4),
                        "class_id": int(label),
                        "class_name": class_names[int(label)],
                    }
                    for box, score, label in zip(boxes, dets[:, 4], labels)
                ],
            }
        )
        print(f"{path}: {len(dets)} objects")
    (out_dir / "predictions.json").write_text(json.dumps(records, indent=2))
    print(f"results written to {out_dir}")
    return 0
