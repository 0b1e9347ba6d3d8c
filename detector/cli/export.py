"""``detector export``: ONNX, INT8 ONNX, TensorRT engines and their checks.

Each group of sub-commands lives in its own module (``export_onnx``: ``onnx`` and ``check``;
``export_int8``: ``int8``; ``export_engine``: ``engine`` and ``torch2trt``), which defines
``register(subparsers)`` like the top-level command modules do.
"""

from __future__ import annotations

import argparse
import importlib

GROUPS = ("export_onnx", "export_int8", "export_engine", "export_triton")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX / INT8 ONNX / TensorRT",
        description="Write deployable model files, each verified against PyTorch and carrying "
        "its own metadata (class names, input size, pre-processing, precision).",
    )
    targets = parser.add_subparsers(dest="target", metavar="TARGET")
    targets.required = True
    for group in GROUPS:
        try:
            module = importlib.import_module(f"detector.cli.{group}")
        except ModuleNotFoundError as exc:
            if exc.name != f"detector.cli.{group}":
                raise
            continue  # not built yet
        module.register(targets)
