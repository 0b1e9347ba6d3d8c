"""``detector info NAME [--imgsz N]``: a model's size, parameters and GFLOPs."""

from __future__ import annotations

import argparse

from detector.core.defaults import check_input_size


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="parameters and GFLOPs of a model",
        description="Print a model's configuration, parameter count and GFLOPs (2 x MACs, as "
        "YOLOX's table counts them) at the given input size.",
    )
    parser.add_argument("name", help="model name (yolox_nano ... yolox_x, yolox_darknet53) or YAML")
    parser.add_argument("--imgsz", type=int, help="square input side (default: the model's)")
    parser.add_argument("--classes", type=int, default=80, help="number of classes (default 80)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detector.models import (
        build_from_config,
        count_gflops,
        count_parameters,
        get_model_config,
    )

    config = get_model_config(args.name)
    imgsz = config.input_size if args.imgsz is None else args.imgsz
    imgsz, _ = check_input_size(imgsz, source="--imgsz")
    model = build_from_config(config, args.classes)
    layout = (
        "Darknet-53 + FPN"
        if config.backbone == "darknet53"
        else f"CSPDarknet + PAFPN (depth {config.depth}, width {config.width}"
        + (", depthwise)" if config.depthwise else ")")
    )
    print(f"{config.name}: {layout}, act {config.act}, {args.classes} classes")
    print(f"parameters: {count_parameters(model) / 1e6:.2f}M")
    print(f"GFLOPs at {imgsz}x{imgsz}: {count_gflops(model, imgsz):.2f}")
    return 0
