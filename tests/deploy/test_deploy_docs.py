"""deploy/README.md's commands stay true: every ``detector ...`` line parses with the real
command line, every ``docker build`` names a stage and platform the Dockerfiles have."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "deploy" / "README.md"


def command_lines() -> list[str]:
    """Lines of the page's shell code blocks (fences without a language), continuations joined,
    comments dropped."""
    lines, fence = [], None
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
        elif fence == "":
            lines.append(line)
    joined = "\n".join(lines).replace("\\\n", " ")
    return [re.sub(r"(^|\s+)#.*$", "", line).strip() for line in joined.splitlines()]


def detector_commands() -> list[list[str]]:
    commands = []
    for line in command_lines():
        words = shlex.split(line) if line else []
        if "detector" in words and "--entrypoint" in words:  # docker run ... --entrypoint detector
            words = words[words.index("--entrypoint") + 2 :]
            commands.append(words[1:])  # after the image name
        elif words[:1] == ["detector"]:
            commands.append(words[1:])
    return commands


def test_the_page_has_the_commands_it_should():
    found = {" ".join(c[:2]) for c in detector_commands()}
    assert {"export onnx", "export int8", "export engine", "train --model"} <= found
    assert any(c[0] == "serve" for c in detector_commands())


@pytest.mark.parametrize("argv", detector_commands(), ids=lambda a: " ".join(a[:2]))
def test_detector_commands_parse(argv):
    from detector.cli import build_parser

    try:
        args = build_parser(argv[0]).parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"'detector {' '.join(argv)}' does not parse") from exc
    assert args.command == argv[0]


def test_docker_builds_name_real_stages_and_platforms():
    dockerfiles = {name: (ROOT / name).read_text() for name in ("Dockerfile", "Dockerfile.gpu")}
    builds = [shlex.split(line) for line in command_lines() if line.startswith("docker build")]
    assert len(builds) >= 5
    for words in builds:
        name = words[words.index("-f") + 1] if "-f" in words else "Dockerfile"
        text = dockerfiles[name]
        if "--target" in words:
            assert f" AS {words[words.index('--target') + 1]}\n" in text
        for i, word in enumerate(words):
            if word == "--build-arg" and words[i + 1].startswith("PLATFORM="):
                assert f" AS platform-{words[i + 1].split('=', 1)[1]}\n" in text
