"""What the ``detector track`` benchmarks share: the generated video, the models, a network-free
twin of a model, line time stamps and the machine's description.

- :func:`write_shapes_video`: the test video, 640 x 480 at 30 fps (``mp4v``): eight shapes (four
  filled circles, four filled rectangles, 30-90 px, random colours) moving at constant speeds
  and wrapping round the edges, over a colour gradient.
- :func:`build_nano_onnx`: yolox_nano, 80 classes, at 416, randomly initialised (seed 0; the
  head's biases keep YOLOX's 0.01 prior, so every score is about 1e-4 and no box passes the
  0.25 threshold: zero detections per frame), exported by ``export.onnx.export_onnx`` with a
  dynamic batch, as ``detector export onnx`` writes it.
- :func:`null_onnx`: a copy of an ONNX file (same input, outputs, metadata) whose graph only
  makes an all-zero output of the right shape: the pipeline around a network, without it.
- :class:`LineStamps`: the wall-clock time at which each line of a pipe or FIFO arrives (when a
  tool finished a frame).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
from machine_info import cpu_name  # beside this script (benchmarks/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT, FPS = 640, 480, 30.0
SHAPES = 8


def write_shapes_video(path: Path, frames: int, seed: int = 0) -> Path:
    """The moving-shapes video (see the module docstring): ``frames`` frames of
    ``[480, 640, 3]`` at 30 fps, written with OpenCV's ``mp4v``."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    background = np.stack(
        [xx * 127 // WIDTH, yy * 127 // HEIGHT, np.full_like(xx, 48)], axis=-1
    ).astype(np.uint8)  # [H, W, 3] BGR gradient
    shapes = [
        {
            "xy": rng.uniform(0, (WIDTH, HEIGHT)),
            "v": rng.uniform(-4, 4, size=2),
            "colour": tuple(int(c) for c in rng.integers(60, 256, size=3)),
            "size": int(rng.integers(30, 91)),
            "box": i % 2 == 1,
        }
        for i in range(SHAPES)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write mp4v video here")
    for t in range(frames):
        image = background.copy()
        for shape in shapes:
            size = shape["size"]
            x, y = (shape["xy"] + shape["v"] * t) % (WIDTH + size, HEIGHT + size) - size // 2
            x, y = int(x), int(y)
            if shape["box"]:
                cv2.rectangle(image, (x, y), (x + size, y + size * 2 // 3), shape["colour"], -1)
            else:
                cv2.circle(image, (x, y), size // 2, shape["colour"], -1)
        writer.write(image)
    writer.release()
    return path


def build_nano_onnx(folder: Path, imgsz: int = 416, seed: int = 0) -> Path:
    """yolox_nano (80 classes, random weights, ``seed``) -> ``folder/nano_{imgsz}.pt`` and
    ``folder/nano_{imgsz}.onnx`` (dynamic batch); returns the ONNX file."""
    import torch

    from detector.models import build_model
    from detector.training.checkpoint import save_atomic
    from export.onnx import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_model("yolox_nano", num_classes=80)
    meta = {"model_name": "yolox_nano", "num_classes": 80,
            "class_names": [f"c{i}" for i in range(80)], "input_size": [imgsz, imgsz]}  # fmt: skip
    weights = save_atomic({"model": model.state_dict(), "meta": meta}, folder / f"nano_{imgsz}.pt")
    return export_onnx(weights, folder / f"nano_{imgsz}.onnx", dynamic=True)


def null_onnx(source: Path, out: Path) -> Path:
    """``source``'s input, output names, shapes and metadata, with a graph that only makes
    zeros of the output's shape (``ConstantOfShape``; a dynamic first dimension is taken from
    the input's). A tool running it does everything it does around its network, in no
    network time. Handles one output whose dimensions after the first are fixed."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError(f"{source}: expected one input and one output, has "
                         f"{len(inputs)} and {len(graph.output)}")  # fmt: skip
    output = graph.output[0]
    dims = output.type.tensor_type.shape.dim
    rest = [d.dim_value for d in dims[1:]]
    if not all(rest):
        raise ValueError(f"{source}: output {output.name} has dynamic dimensions after the first")
    nodes = []
    if dims[0].dim_value:
        shape = helper.make_tensor(
            "shape", TensorProto.INT64, [len(dims)], [dims[0].dim_value, *rest]
        )
        nodes.append(helper.make_node("Constant", [], ["out_shape"], value=shape))
    else:  # dynamic batch: the input's first dimension
        nodes += [
            helper.make_node("Shape", [inputs[0].name], ["in_shape"], start=0, end=1),
            helper.make_node(
                "Constant",
                [],
                ["rest"],
                value=helper.make_tensor("rest", TensorProto.INT64, [len(rest)], rest),
            ),  # fmt: skip
            helper.make_node("Concat", ["in_shape", "rest"], ["out_shape"], axis=0),
        ]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    nodes.append(helper.make_node("ConstantOfShape", ["out_shape"], [output.name], value=zero))
    null = helper.make_model(
        helper.make_graph(nodes, f"null_{graph.name}", list(inputs), [output]),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=model.ir_version,
    )
    for prop in model.metadata_props:
        null.metadata_props.add(key=prop.key, value=prop.value)
    onnx.checker.check_model(null)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(null, str(out))
    return out


class LineStamps:
    """Reads a text stream (a pipe or a FIFO, opened in a thread of its own, so that opening
    a FIFO waits for its writer there) and keeps ``(time.time(), line)`` for each line."""

    def __init__(self, path_or_stream: Path | object) -> None:
        self.lines: list[tuple[float, str]] = []
        self._source = path_or_stream
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        stream = open(self._source) if isinstance(self._source, Path) else self._source  # noqa: SIM115
        with stream:
            for line in stream:
                self.lines.append((time.time(), line))

    def join(self, timeout: float) -> None:
        """Wait for the end of the stream; a FIFO nobody opened is opened and closed here
        for writing, so that the reading thread sees its end."""
        self._thread.join(timeout)
        if self._thread.is_alive() and isinstance(self._source, Path):
            try:
                os.close(os.open(self._source, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
            self._thread.join(timeout)


def make_fifo(path: Path) -> Path:
    """A FIFO at ``path`` (whatever was there removed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


def machine() -> dict:
    """Date, CPU model (``lscpu``), cores this process may use, load average, commit, Python."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT, check=False).stdout.strip()  # fmt: skip
    return {
        "date": dt.date.today().isoformat(),
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "commit": commit or "unknown",
        "python": platform.python_version(),
    }


def busy_processes(own: int | None = None, threshold: float = 10.0) -> list[str]:
    """Other processes using more than ``threshold`` % of a core now (``ps``), as
    ``"CPU% command"`` (command line cut at 100 characters): what else is running."""
    own = os.getpid() if own is None else own
    try:
        ps = subprocess.run(["ps", "-eo", "pid=,pcpu=,args=", "--sort=-pcpu"],
                            capture_output=True, text=True, check=False).stdout  # fmt: skip
    except OSError:
        return []
    busy = []
    for line in ps.splitlines():
        pid, cpu, command = line.split(None, 2)
        if float(cpu) < threshold:
            break
        if int(pid) != own and not command.startswith("ps "):
            busy.append(f"{float(cpu):.0f}% {command[:100]}")
    return busy


def versions(*names: str) -> dict[str, str]:
    """``name: __version__`` of each importable package."""
    import importlib

    out = {}
    for name in names:
        try:
            out[name] = importlib.import_module(name).__version__
        except (ImportError, AttributeError):
            pass
    return out


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def update_section(md: Path, key: str, text: str) -> None:
    """Put ``text`` between ``<!-- key -->`` and ``<!-- /key -->`` in ``md`` (appended with
    the markers when they are not there yet); the rest of the file is kept."""
    start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    old = md.read_text() if md.is_file() else ""
    if start in old and end in old:
        before, rest = old.split(start, 1)
        new = before + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + ("\n\n" if old else "") + block + "\n"
    md.write_text(new)


OUTPUT_FLAGS = ("--json", "--md", "--work")  # where results go, not what is measured


def command_line(script: str, argv: list[str]) -> str:
    """``python benchmarks/SCRIPT ARGS`` to print in the results: ``argv`` without the flags
    that only say where the results go (:data:`OUTPUT_FLAGS`), shell-quoted."""
    import shlex

    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in OUTPUT_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in OUTPUT_FLAGS)):
            kept.append(arg)
    return " ".join(["python", f"benchmarks/{script}", *map(shlex.quote, kept)])


def write_results(result: dict, json_path: Path, md: str | None, key: str, text: str,
                  work: Path) -> None:  # fmt: skip
    """Write ``result`` to ``json_path``, print ``text`` (its markdown), put it in the section
    ``key`` of ``md`` when one is given (:func:`update_section`), and say where all went."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    if md:
        update_section(Path(md), key, text)
    print(f"wrote {json_path}" + (f" and {md}" if md else "") + f"; files in {work}")
