"""The ``detector`` command line: one entry point, one module per sub-command.

Each module in ``COMMANDS`` defines ``register(subparsers)``, which adds its sub-parser and sets
``func`` (called with the parsed namespace, returning an exit code). Modules are imported only
when their command is asked for, so ``detector info`` does not pay for the training stack.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import sys
from collections.abc import Sequence

from detector.config import suggest

# command name -> module under detector.cli that registers it
COMMANDS: dict[str, str] = {
    "info": "info",
    "data": "data",
    "train": "train",
    "eval": "evaluate",
    "predict": "predict",
    "export": "export",
    "serve": "serve",
    "bench": "bench",
    "demo": "demo",
}


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
            if exc.name != f"detector.cli.{module}":
                raise
            continue  # command not built yet
        mod.register(subparsers)
    return parser


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
        return int(args.func(args) or 0)
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
