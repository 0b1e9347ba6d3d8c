"""``deploy/pin-base-images.sh`` rewrites each unpinned base-image ARG of a Dockerfile to
``image:tag@sha256:<digest>``. The registry cannot be reached here, so ``docker`` is a stand-in
on PATH that answers ``buildx imagetools inspect`` the way the real one does (the manifest
descriptor as JSON) and logs what it was asked; the script and the Dockerfile are the real ones.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "pin-base-images.sh"

FAKE_DOCKER = r"""#!/usr/bin/env bash
# buildx version -> ok; buildx imagetools inspect --format FMT REF -> a descriptor for REF
echo "$*" >> "$DOCKER_LOG"
if [ "$1 $2" = "buildx version" ]; then echo "github.com/docker/buildx v0.0.0"; exit 0; fi
ref="${@: -1}"
if [ "$ref" = "$FAIL_REF" ]; then echo "ERROR: $ref: not found" >&2; exit 1; fi
digest=$(printf '%s' "$ref" | sha256sum | cut -d' ' -f1)
printf '{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:%s","size":1}\n' \
    "$digest"
"""


def run_script(tmp_path: Path, dockerfile: Path, **env: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    environ = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
               "DOCKER_LOG": str(tmp_path / "docker.log"), "FAIL_REF": "", **env}  # fmt: skip
    return subprocess.run(["bash", str(SCRIPT), str(dockerfile)], env=environ,
                           capture_output=True, text=True, timeout=60)  # fmt: skip


def image_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", text, re.M))


def test_pins_every_gpu_base_image_and_keeps_the_rest(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile.gpu"
    shutil.copy(ROOT / "Dockerfile.gpu", dockerfile)
    before = image_args(dockerfile.read_text())
    images = {k: v for k, v in before.items() if "/" in v and "@" not in v}
    assert {"X86_IMAGE", "JETSON6_IMAGE", "JETSON7_IMAGE"} <= images.keys()

    done = run_script(tmp_path, dockerfile)
    assert done.returncode == 0, done.stderr
    after = image_args(dockerfile.read_text())
    for name, reference in images.items():
        assert re.fullmatch(re.escape(reference) + r"@sha256:[0-9a-f]{64}", after[name])
    untouched = {k: v for k, v in before.items() if k not in images}
    assert {k: after[k] for k in untouched} == untouched  # PLATFORM, TORCH2TRT_REF, ...
    # only the ARG lines changed
    old_lines = (ROOT / "Dockerfile.gpu").read_text().splitlines()
    new_lines = dockerfile.read_text().splitlines()
    changed = [new for old, new in zip(old_lines, new_lines, strict=True) if old != new]
    assert len(changed) == len(images)

    again = run_script(tmp_path, dockerfile)  # a second run finds nothing left to pin
    assert again.returncode == 0
    assert image_args(dockerfile.read_text()) == after


def test_a_failed_lookup_names_the_image_and_exits_non_zero(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile.gpu"
    shutil.copy(ROOT / "Dockerfile.gpu", dockerfile)
    failing = image_args(dockerfile.read_text())["JETSON6_IMAGE"]
    done = run_script(tmp_path, dockerfile, FAIL_REF=failing)
    assert done.returncode == 1
    assert failing in done.stderr
    assert "@" not in image_args(dockerfile.read_text())["JETSON6_IMAGE"]


def test_the_cpu_dockerfile_is_already_pinned(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    shutil.copy(ROOT / "Dockerfile", dockerfile)
    done = run_script(tmp_path, dockerfile)
    assert done.returncode == 0, done.stderr
    assert dockerfile.read_text() == (ROOT / "Dockerfile").read_text()
    assert "0 reference(s) pinned" in done.stderr


@pytest.mark.parametrize("missing", ["file", "docker"])
def test_missing_file_or_docker_is_explained(tmp_path: Path, missing: str) -> None:
    if missing == "file":
        done = run_script(tmp_path, tmp_path / "nope")
        assert done.returncode == 2 and "no such file" in done.stderr
    else:
        empty = tmp_path / "empty"
        empty.mkdir()
        shutil.copy(ROOT / "Dockerfile.gpu", tmp_path / "Dockerfile.gpu")
        # nothing on PATH: the script stops at its docker check, before reading anything else
        done = subprocess.run(["/bin/bash", str(SCRIPT), str(tmp_path / "Dockerfile.gpu")],
                              env={"PATH": str(empty)}, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode != 0 and "buildx" in done.stderr
