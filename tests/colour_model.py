"""A real ONNX model whose detections the tests know exactly, and videos of moving shapes for it.

``colour_finder_onnx`` writes a small hand-built graph that finds, per colour channel, the box
around the pixels where that channel dominates (a pure blue, green or red shape on black) and
outputs it in the raw ``[B, N, 5 + C]`` layout with objectness 1, run by the serving runtime like
any exported model. Random-weight networks give detections that jump from frame to frame, so
they cannot show that a track follows a moving object; this graph detects the moving shapes of
``write_video`` exactly, so a tracker's ids can be checked.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CLASSES = ("blue", "green", "red")  # channel c of BGR dominates -> class c
SIZE = 128
WIDTH, HEIGHT = 160, 120


def colour_finder_onnx(path: Path) -> Path:
    """A raw-layout ONNX model (input ``images [B, 3, 128, 128]``, dynamic batch) whose output
    ``[B, 3, 8]`` holds, for each class c, the box around the pixels where channel c exceeds the
    mean of the other two by 100, objectness 1 when there are any (else 0), and one-hot class
    scores."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from serve.runtime.metadata import ModelMetadata, write_onnx_metadata

    big = 1e6
    consts = {
        "xs": np.arange(SIZE, dtype=np.float32).reshape(1, 1, 1, SIZE),
        "ys": np.arange(SIZE, dtype=np.float32).reshape(1, 1, SIZE, 1),
        "half": np.float32(0.5),
        "one": np.float32(1.0),
        "big": np.float32(big),
        "threshold": np.float32(100.0),
        "eye": np.eye(3, dtype=np.float32)[None],
        "zero": np.float32(0.0),
    }
    nodes = []
    for c in range(3):
        a, b = (k for k in range(3) if k != c)
        for k in range(3):
            nodes.append(helper.make_node("Slice", ["images", f"s{k}", f"e{k}", "ax1"],
                                          [f"ch{k}_{c}"]))  # fmt: skip
        nodes += [
            helper.make_node("Add", [f"ch{a}_{c}", f"ch{b}_{c}"], [f"other{c}"]),
            helper.make_node("Mul", [f"other{c}", "half"], [f"mean{c}"]),
            helper.make_node("Sub", [f"ch{c}_{c}", f"mean{c}"], [f"dom{c}"]),
            helper.make_node("Greater", [f"dom{c}", "threshold"], [f"gt{c}"]),
            helper.make_node("Cast", [f"gt{c}"], [f"mask{c}"], to=TensorProto.FLOAT),
        ]
    for k in range(3):
        consts[f"s{k}"] = np.array([k], np.int64)
        consts[f"e{k}"] = np.array([k + 1], np.int64)
    consts["ax1"] = np.array([1], np.int64)
    nodes += [
        helper.make_node("Concat", ["mask0", "mask1", "mask2"], ["m"], axis=1),  # [B, 3, H, W]
        helper.make_node("Sub", ["one", "m"], ["notm"]),
        helper.make_node("Mul", ["notm", "big"], ["away"]),
    ]
    for axis, grid in (("x", "xs"), ("y", "ys")):
        nodes += [
            helper.make_node("Mul", ["m", grid], [f"{axis}m"]),
            helper.make_node("ReduceMax", [f"{axis}m"], [f"{axis}max"], axes=[2, 3], keepdims=0),
            helper.make_node("Add", [f"{axis}max", "one"], [f"{axis}2"]),
            helper.make_node("Add", [f"{axis}m", "away"], [f"{axis}far"]),
            helper.make_node("ReduceMin", [f"{axis}far"], [f"{axis}1"], axes=[2, 3], keepdims=0),
            helper.make_node("Add", [f"{axis}1", f"{axis}2"], [f"{axis}sum"]),
            helper.make_node("Mul", [f"{axis}sum", "half"], [f"c{axis}"]),
            helper.make_node("Sub", [f"{axis}2", f"{axis}1"], [f"{axis}len"]),
        ]
    nodes.append(helper.make_node("ReduceMax", ["m"], ["obj"], axes=[2, 3], keepdims=0))
    columns = ["cx", "cy", "xlen", "ylen", "obj"]
    for name in columns:
        nodes.append(helper.make_node("Unsqueeze", [name, "last"], [f"{name}_u"]))
    consts["last"] = np.array([2], np.int64)
    nodes += [
        helper.make_node("Mul", ["obj_u", "zero"], ["zeros"]),  # [B, 3, 1]
        helper.make_node("Add", ["zeros", "eye"], ["onehot"]),  # [B, 3, 3]
        helper.make_node("Concat", [f"{n}_u" for n in columns] + ["onehot"], ["output"], axis=2),
    ]
    graph = helper.make_graph(
        nodes,
        "colour_finder",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 8])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    metadata = ModelMetadata("colour_finder", CLASSES, (SIZE, SIZE), batch=None)
    write_onnx_metadata(model, metadata)
    onnx.save(model, str(path))
    return path


def red_box(t: int) -> tuple[int, int, int, int]:
    """The red square's box in frame ``t``: 20 px, moving right 2 px a frame."""
    return 10 + 2 * t, 30, 30 + 2 * t, 50


def green_box(t: int) -> tuple[int, int, int, int]:
    """The green square's box in frame ``t``: 16 px, moving down 1 px a frame."""
    return 120, 10 + t, 136, 26 + t


def write_video(path: Path, frames: int, fps: float = 25.0) -> Path:
    """A black ``WIDTH x HEIGHT`` mp4v video of a red and a green square on straight paths."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for t in range(frames):
        image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        x1, y1, x2, y2 = red_box(t % 50)
        image[y1:y2, x1:x2] = (0, 0, 255)
        x1, y1, x2, y2 = green_box(t % 50)
        image[y1:y2, x1:x2] = (0, 255, 0)
        writer.write(image)
    writer.release()
    return path
