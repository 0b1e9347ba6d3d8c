"""The ``detector`` command line: one entry point, one module per sub-command.

Each module in ``COMMANDS`` defines ``register(subparsers)``, which adds its sub-parser and sets
``func`` (called with the parsed namespace, returning an exit code). Modules are imported only
when their command is asked for, so ``detector info`` does not pay for the training stack.

The serving install (``pip install "detector[serve]"``) has no PyTorch: a command that needs a
package of another extra stops with one line naming the extra to install (exit status 2), and
the commands that need none of them (``serve``, ``predict`` and ``bench`` on ONNX/TensorRT
models, ``export engine``) run as usual.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from collections.abc import Sequence

from detector.core.config import suggest

# command name -> module under detector.cli that registers it
COMMANDS: dict[str, str] = {
    "info": "info",
    "data": "data",
    "train": "train",
    "eval": "evaluate",
    "predict": "predict",
    "track": "track",
    "export": "export",
    "serve": "serve",
    "bench": "bench",
    "demo": "demo",
}

# top-level module of an optional package -> (what to call it, the extra that installs it)
OPTIONAL_MODULES: dict[str, tuple[str, str]] = {
    "torch": ("PyTorch", "train"),
    "torchvision": ("PyTorch (torchvision)", "train"),
    "pycocotools": ("pycocotools", "train"),
    "matplotlib": ("matplotlib", "train"),
    "tqdm": ("tqdm", "train"),
    "onnxslim": ("onnxslim", "train"),
    "onnx": ("onnx", "train"),
    "onnxruntime": ("ONNX Runtime", "serve"),
    "fastapi": ("FastAPI", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "multipart": ("python-multipart", "serve"),
    "python_multipart": ("python-multipart", "serve"),
    "pydantic_settings": ("pydantic-settings", "serve"),
    "prometheus_client": ("prometheus-client", "serve"),
    "tensorrt": ("TensorRT", "gpu"),
    "cuda": ("cuda-python", "gpu"),
}
# commands whose optional packages come from another extra than the module's usual one
COMMAND_EXTRAS: dict[str, str] = {"export engine": "gpu"}


class MissingExtra(Exception):
    """A command needs a package that belongs to an extra which is not installed."""

    def __init__(self, command: str, module: str) -> None:
        what, extra = OPTIONAL_MODULES[module]
        extra = COMMAND_EXTRAS.get(command, extra)
        if extra == "train" and importlib.util.find_spec("torch") is None:
            what = "PyTorch"  # the one to name when the whole training stack is missing
        super().__init__(f"'detector {command}' needs {what}: pip install \"detector[{extra}]\"")


def missing_module(exc: ModuleNotFoundError) -> str | None:
    """The optional package whose absence raised ``exc``, or None for any other module."""
    top = (exc.name or "").split(".")[0]
    return top if top in OPTIONAL_MODULES else None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``only``) one with just that command's sub-parser registered."""
    parser = argparse.ArgumentParser(
        prog="detector", description="Train, evaluate and run YOLOX-style detectors."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"detector {package_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            subparsers.add_parser(name, help=f"see 'detector {name} --help'")
            continue
        try:
            mod = importlib.import_module(f"detector.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"detector.cli.{module}":
                continue  # command not built yet
            if missing_module(exc) is None:
                raise
            _register_unavailable(subparsers, name, MissingExtra(name, missing_module(exc)))
            continue
        mod.register(subparsers)
    return parser


def _register_unavailable(
    subparsers: argparse._SubParsersAction, name: str, reason: MissingExtra
) -> None:
    """A stand-in sub-parser that takes any arguments and reports what to install."""
    parser = subparsers.add_parser(name, help=f"(unavailable: {reason})", add_help=False)
    parser.add_argument("rest", nargs=argparse.REMAINDER)

    def unavailable(args: argparse.Namespace) -> int:
        raise reason

    parser.set_defaults(func=unavailable)


def command_label(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str:
    """The command as typed, sub-command included: ``train``, ``export onnx``, ``data show``."""
    words = [a for a in argv if not a.startswith("-")]
    label: list[str] = []
    while words:
        choices = next(
            (a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {}
        )
        if words[0] not in choices:
            break
        label.append(words[0])
        parser = choices[words.pop(0)]
    return " ".join(label)


def package_version() -> str:
    """The installed distribution's version (``pyproject.toml``), from its metadata."""
    try:
        return importlib.metadata.version("detector")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in COMMANDS:
        parser = build_parser(only="")  # no command module imported just to say this
        parser.error(f"unknown command '{command}'{suggest(command, COMMANDS)}; the commands are "
                     + ", ".join(COMMANDS))  # fmt: skip
    parser = build_parser(command)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        try:
            return int(args.func(args) or 0)
        except ModuleNotFoundError as exc:
            module = missing_module(exc)
            if module is None or args.verbose:
                raise
            raise MissingExtra(command_label(parser, argv), module) from exc
    except MissingExtra as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
