"""The README's examples run as written on a fresh copy of the project.

Every shell example is read from the README's code blocks (and the ``detector ...`` commands
with arguments quoted inline in its text), and every Python block too, so the test breaks when
the README drifts. Each line is either run, in README order, or listed in ``EXCLUDED`` with the
reason it cannot run here (GPU, TensorRT, Docker, a Jetson, the internet, several machines);
``test_every_readme_example_is_run_or_excluded`` fails on a new example that is neither.

The examples run with ``python -m detector`` from a copy of the project in a temporary folder
(only what a clone has: the packages, configs, benchmarks, the shipped BCCD data), with nothing
beside it (no ``../shared``). To keep the test short, a few arguments are appended (later ones
win): one epoch at 128 px, fewer generated and calibration images, fewer timed runs; and the
copy's BCCD is cut to 16 training and 8 validation images (plus ``BloodImage_0000*.jpg``, which
the examples name). The user's own files that examples assume are written first: ``my_data.yaml``
(the copy's BCCD) and a stand-in ``yolox_s.pth`` in the official checkpoint format (a ``model``
state dict with the official key names, 80 classes), which the excluded ``wget`` line downloads.
``detector serve`` starts in the background on a free port, and the ``curl`` lines and Python
client blocks that follow talk to that port.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# shell lines that are examples (a README code block's other lines fail the inventory test)
PREFIXES = ("detector ", "curl ", "make ", "docker ", "torchrun ", "wget ", "python", "pip",
            ".venv/bin/")  # fmt: skip
# appended to README lines starting with the key (first match) to keep them quick
QUICK_ARGS: dict[str, list[str]] = {
    "detector data synth": ["--images", "12"],
    "detector data bench": ["--batches", "2", "--batch", "4"],
    "detector train --resume runs/exp epochs=60": ["epochs=2"],
    "detector train --resume": [],
    "detector train": ["epochs=1", "imgsz=128"],
    "detector export int8": ["--images", "8"],
    "detector bench": ["--repeats", "2", "--warmup", "1"],
}
# fmt: off
EXCLUDED: dict[str, str] = {
    "make demo":
        "about 12 minutes of training; its steps run at toy size in tests/cli/test_cli_demo.py",
    "make test": "runs the whole test suite, this test included (CI runs it)",
    "make reference":
        "installs the official YOLOX into .venv, changing the environment the tests run in",
    "python3 -m venv .venv":
        "sets up the environment the tests already run in; it serves only the next line",
    ".venv/bin/pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu":
        "internet: download.pytorch.org",
    "wget https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_s.pth":
        "internet: GitHub; the test writes a stand-in of the official format instead",
    "torchrun --nproc_per_node 4 -m detector train --model yolox_s --data my_data.yaml batch=64":
        "four GPUs (or four CPU processes); two CPU processes with gloo are run by "
        "tests/training/test_engine_train.py::test_two_processes_train_with_gloo",
    "detector export engine --onnx runs/export/model.onnx --out runs/export/model.engine "
    "--precision fp16":
        "TensorRT and a CUDA GPU",
    "detector predict --model yolox_s.pth --arch yolox_s ...":
        "elided ('...'); the stand-in official yolox_s.pth is loaded by the --weights "
        "training line and the Python API block",
    "docker build -t detector:cpu .":
        "Docker; the Dockerfiles are checked by tests/deploy/test_dockerfiles.py",
    'docker run -p 8000:8000 -v "$PWD/runs/export:/models:ro" detector:cpu --model '
    "/models/model.onnx":
        "Docker (the image of the line above)",
    "docker build -f Dockerfile.gpu --target serve -t detector:gpu .":
        "Docker and NVIDIA's TensorRT container",
    'docker run --gpus all -p 8000:8000 -v "$PWD/runs/export:/models" detector:gpu --model '
    "/models/model.engine":
        "Docker and a CUDA GPU",
    'pip install "./detector[serve]" cuda-python':
        "a Jetson (cuda-python needs CUDA); the slim [serve] install is run by "
        "tests/deploy/test_slim_install.py",
    "detector export engine --onnx model.onnx --out model.engine --precision fp16":
        "a Jetson (TensorRT and its GPU)",
    "detector serve --model model.engine --host 0.0.0.0":
        "a Jetson (a TensorRT engine and its GPU)",
    ".venv/bin/python benchmarks/export_latency.py --repeats 30":
        "needs the official YOLOX (make reference) and minutes of timing",
    ".venv/bin/python benchmarks/recipe_check.py --epochs 16 --imgsz 256 --images 240 --name "
    "mine lr_per_64=0.03":
        "trains 2 models x 3 datasets x 3 recipes (an hour on 2 cores); a one-epoch check runs in "
        "tests/benchmarks/test_recipe_check.py",
}
# fmt: on
# the README's Python blocks, recognised by a line each holds
PYTHON_BLOCKS = {
    "import httpx": "v1 client",
    "import tritonclient.http": "v2 client",
    "from detector.models import": "Python API",
}


def _blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block, indented ones included."""
    found = re.finditer(r"^( *)```(\w*)\n(.*?)^\1```$", text, re.M | re.S)
    return [(m.group(2), textwrap.dedent(m.group(3))) for m in found]


def _uncomment(line: str) -> str:
    return re.sub(r"\s+#\s.*$", "", line).strip()


def shell_examples(text: str) -> list[str]:
    """Every command line of the README's shell blocks and its inline ``detector`` commands
    with arguments, in README order, comments removed."""
    lines: list[tuple[int, int, str]] = []  # (position in the README, line in block, command)
    for match in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```$", text, re.M | re.S):
        if match.group(2):
            continue  # python, yaml
        for number, line in enumerate(match.group(3).splitlines()):
            line = _uncomment(line)
            if line:
                assert line.startswith(PREFIXES), f"README: not a known command: {line!r}"
                lines.append((match.start(), number, line))
    for match in re.finditer(r"`(detector [^`]*)`", text):
        if " --" in match.group(1) and not _inside_block(text, match.start()):
            lines.append((match.start(), 0, match.group(1)))
    return [line for _, _, line in sorted(lines)]


def _inside_block(text: str, pos: int) -> bool:
    return len(re.findall(r"^ *```", text[:pos], re.M)) % 2 == 1


def python_examples(text: str) -> dict[str, str]:
    """The README's ``python`` blocks by their ``PYTHON_BLOCKS`` name."""
    found: dict[str, str] = {}
    for language, body in _blocks(text):
        if language != "python":
            continue
        names = [name for marker, name in PYTHON_BLOCKS.items() if marker in body]
        assert len(names) == 1, f"README: a Python block this test does not know:\n{body}"
        found[names[0]] = body
    return found


def quick_args(line: str) -> list[str]:
    return next((extra for start, extra in QUICK_ARGS.items() if line.startswith(start)), [])


def test_every_readme_example_is_run_or_excluded() -> None:
    """A new README example fails here until it is run or excluded with a reason."""
    text = (REPO / "README.md").read_text()
    lines = shell_examples(text)
    assert len(lines) >= 25, lines
    for line in lines:
        if line in EXCLUDED:
            assert len(EXCLUDED[line]) > 10, f"no reason given for {line!r}"
        else:
            assert line.startswith(("detector ", "curl ", ".venv/bin/python ")), (
                f"README example neither run nor excluded: {line!r}"
            )
    assert not set(EXCLUDED) - set(lines), "EXCLUDED names lines no longer in the README"
    for start in QUICK_ARGS:
        assert any(line.startswith(start) for line in lines), f"QUICK_ARGS: no line {start!r}"
    assert set(python_examples(text)) == set(PYTHON_BLOCKS.values())


def _cut_bccd(root: Path, train: int, val: int) -> None:
    """Keep the first ``train``/``val`` images of the copy's VOC splits and COCO JSONs, and only
    their image files (plus ``BloodImage_0000*.jpg``, which the examples name)."""
    sets = root / "ImageSets/Main"
    keep_files: set[str] = set()
    for name, count in (("trainval", train), ("test", val)):
        ids = (sets / f"{name}.txt").read_text().split()[:count]
        (sets / f"{name}.txt").write_text("\n".join(ids) + "\n")
        keep_files |= {f"{i}.jpg" for i in ids}
    for name, count in (("train", train), ("val", val)):
        path = root / f"coco/instances_{name}.json"
        data = json.loads(path.read_text())
        data["images"] = data["images"][:count]
        keep_files |= {Path(image["file_name"]).name for image in data["images"]}
        keep = {image["id"] for image in data["images"]}
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
        path.write_text(json.dumps(data))
    for image in (root / "images").iterdir():
        if image.name not in keep_files and not image.name.startswith("BloodImage_0000"):
            image.unlink()


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a clone holds that the examples use, in a folder with nothing beside it."""
    copy = tmp_path_factory.mktemp("fresh") / "detector"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("detector", "export", "serve", "configs", "data/bccd", "benchmarks"):
        shutil.copytree(REPO / name, copy / name, ignore=ignore)
    for name in ("README.md", "pyproject.toml"):
        shutil.copy2(REPO / name, copy / name)
    _cut_bccd(copy / "data/bccd", train=16, val=8)
    assert not (copy.parent / "shared").exists()
    return copy


def _env(cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BCCD_ROOT", "PYTHONPATH")}
    env["PYTHONPATH"] = str(cwd)  # the copy's packages, not the editable install's
    return env


def _argv(line: str) -> list[str]:
    """A README line as the argv this test runs: ``detector`` is ``python -m detector`` of the
    copy, ``.venv/bin/python`` the test's own interpreter."""
    argv = shlex.split(line)
    if argv[0] == "detector":
        return [sys.executable, "-m", "detector", *argv[1:]]
    if argv[0] == ".venv/bin/python":
        return [sys.executable, *argv[1:]]
    return argv


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=_env(cwd), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server:
    """A README ``detector serve`` line running in the background on a free port."""

    def __init__(self, line: str, cwd: Path, log: Path) -> None:
        self.port = _free_port()
        argv = _argv(re.sub(r"--port \d+", f"--port {self.port}", line))
        if "--port" not in argv:
            argv += ["--port", str(self.port)]
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(argv, cwd=cwd, env=_env(cwd), stdout=out,
                                            stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"{line} exited:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5):
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"{line}: not ready in 180 s\n{log.read_text()[-3000:]}")

    def rewrite(self, text: str) -> str:
        """A README line or block with its URL pointed at this server's port."""
        return text.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _run_clients(server: _Server, blocks: dict[str, str], cwd: Path) -> list[str]:
    """Run the README's v1 (httpx) and v2 (tritonclient) client blocks against ``server``;
    check that what they print is the server's own /v1 answer at the same ``conf``; return the
    v1 client's lines."""
    outputs = {}
    for name in ("v1 client", "v2 client"):
        done = _run([sys.executable, "-c", server.rewrite(blocks[name])], cwd, timeout=120)
        assert done.returncode == 0, f"README {name} block:\n{done.stderr[-3000:]}"
        outputs[name] = done.stdout
    image = cwd / "data/bccd/images/BloodImage_00007.jpg"
    curl = ["curl", "-sSf", "-F", f"image=@{image}",
            f"http://127.0.0.1:{server.port}/v1/detect?conf=0.3"]  # fmt: skip
    answer = json.loads(subprocess.run(curl, capture_output=True, check=True).stdout)
    expected = [f"{d['class_name']} {round(d['score'], 2)} {d['box']}"
                for d in answer["detections"]]  # fmt: skip
    assert outputs["v1 client"].splitlines() == expected
    # the v2 block prints boxes, scores and classes of the same detections; classes come last
    classes = re.search(r"\[([^\[\]]*)\]\s*$", outputs["v2 client"])
    assert classes, outputs["v2 client"]
    got = sorted(int(float(c)) for c in classes.group(1).split())
    assert got == sorted(d["class_id"] for d in answer["detections"]), outputs["v2 client"]
    return expected


@pytest.mark.slow
def test_readme_examples_run_as_written(fresh_copy: Path) -> None:
    text = (fresh_copy / "README.md").read_text()
    lines = shell_examples(text)
    blocks = python_examples(text)
    probe = _run([sys.executable, "-c", "import detector, export, serve as s; "
                  "print(detector.__file__, export.__file__, s.__file__)"], fresh_copy)  # fmt: skip
    expected = [str(fresh_copy / f"{p}/__init__.py") for p in ("detector", "export", "serve")]
    assert probe.stdout.split() == expected, probe.stderr

    # the user's own files the examples assume: a dataset config and the official yolox_s.pth
    (fresh_copy / "my_data.yaml").write_text(
        "format: voc\nroot: data/bccd\ntrain: trainval\nval: test\nimages: images\n"
        "names: [RBC, WBC, Platelets]\n"
    )
    import torch

    from detector.models import build_model

    torch.save({"model": build_model("yolox_s", num_classes=80).state_dict()},
               fresh_copy / "yolox_s.pth")  # fmt: skip
    before = {p for p in fresh_copy.rglob("*") if "__pycache__" not in p.parts}

    outputs: dict[str, str] = {}  # stdout of each line run
    logs: dict[str, str] = {}  # its stderr (the log)
    server: _Server | None = None
    runs = fresh_copy / "runs"
    try:
        for line in lines:
            if line in EXCLUDED:
                continue
            if line.startswith("detector serve "):
                if server is not None:  # one server at a time: the next example replaces it
                    server.stop()
                server = _Server(line, fresh_copy, fresh_copy.parent / "serve.log")
                v1_lines = _run_clients(server, blocks, fresh_copy)
                outputs["clients"] = "\n".join(v1_lines)
                continue
            if line.startswith("curl "):
                assert server is not None, f"{line}: no server started before it"
                line = server.rewrite(line)
            started = time.monotonic()
            done = _run(_argv(line) + quick_args(line), fresh_copy)
            print(f"{time.monotonic() - started:6.1f} s  {line}")  # shown with -s or on failure
            assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            outputs[line], logs[line] = done.stdout, done.stderr
        api = _run([sys.executable, "-c", blocks["Python API"]], fresh_copy, timeout=300)
        assert api.returncode == 0, f"README Python API block:\n{api.stderr[-3000:]}"
    finally:
        if server is not None:
            server.stop()
    assert server is not None, "README: no 'detector serve' example"

    def output(start: str) -> str:
        return next(out for line, out in outputs.items() if line.startswith(start))

    assert re.fullmatch(r"detector \S+\n", output("detector --version"))
    assert "GFLOPs" in output("detector info")
    assert (runs / "data/synth/data.yaml").is_file()
    assert (runs / "samples.png").stat().st_size > 10_000
    assert output("detector data bench").rstrip().endswith("images/s")
    for name in ("weights/best.pt", "metrics.png", "val_predictions.png"):
        assert (runs / "exp" / name).is_file(), name
    # --resume on the finished run says so; with epochs= it trains on (to 2 epochs here)
    assert "already complete" in logs["detector train --resume runs/exp"]
    assert len((runs / "exp/metrics.csv").read_text().splitlines()) == 1 + 2
    # the two yolox_s runs on my_data.yaml, the second from the official-format weights (80
    # classes: all but the class predictions are loaded)
    assert (runs / "exp2/weights/best.pt").is_file() and (runs / "exp3/weights/best.pt").is_file()
    assert "80 classes" in next(log for line, log in logs.items() if "yolox_s.pth" in line)
    metrics = json.loads((runs / "m.json").read_text())
    assert 0.0 <= metrics["mAP"] <= metrics["mAP50"] <= 1.0
    assert json.loads((runs / "predict/predictions.json").read_text())
    assert (runs / "export/model.onnx").is_file() and (runs / "export/model.int8.onnx").is_file()
    assert "mAP" in output("detector export int8")
    images = sorted(p.name for p in (fresh_copy / "data/bccd/images").iterdir())
    predicted = json.loads((runs / "predict_onnx/predictions.json").read_text())
    assert len(predicted) == len(images)
    assert len(list((runs / "predict_onnx/labels").glob("*.txt"))) == len(images)
    bench = json.loads((runs / "bench.json").read_text())
    assert len(bench["rows"] if isinstance(bench, dict) else bench) == 4  # 2 models x 2 batches
    assert (runs / "triton/detector/config.pbtxt").is_file()
    assert (runs / "annotated.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert json.loads(output("curl -F image=@data/bccd/images/BloodImage_00007.jpg '"))
    assert "usage:" in output(".venv/bin/python benchmarks/serve_throughput.py")
    # everything the examples wrote is under runs/ (covered by .gitignore)
    after = {p for p in fresh_copy.rglob("*") if "__pycache__" not in p.parts}
    assert all(runs in p.parents or p == runs for p in after - before), sorted(after - before)


@pytest.mark.slow
def test_readme_clients_print_detections(fresh_copy: Path, lively: Path, tmp_path: Path) -> None:
    """The quick run's 1-epoch model finds nothing at conf 0.3 (its scores stay under 1e-3), so
    the README's client blocks also run against its serve line on a model whose scores spread
    over 0-1: they must print detections, the same as the server's JSON."""
    text = (fresh_copy / "README.md").read_text()
    serve = next(line for line in shell_examples(text) if line.startswith("detector serve "))
    onnx = tmp_path / "model.onnx"
    done = _run(_argv(f"detector export onnx --weights {lively} --out {onnx}"), fresh_copy)
    assert done.returncode == 0, done.stderr[-3000:]
    server = _Server(serve.replace("runs/export/model.onnx", str(onnx)), fresh_copy,
                     tmp_path / "serve.log")  # fmt: skip
    try:
        printed = _run_clients(server, python_examples(text), fresh_copy)
    finally:
        server.stop()
    assert printed, "the README's v1 client printed no detections"
