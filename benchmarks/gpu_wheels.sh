#!/usr/bin/env bash
# Downloads, as Python 3.12 x86-64 wheels into .whl/, the packages benchmarks/gpu_check.sh needs
# that the device machine's image lacks (it has torch, onnx, onnxruntime, opencv, numpy, pyyaml,
# pillow, matplotlib, tqdm, httpx, prometheus-client, pytest, uvloop, h11 ...; see the device
# tool's KINDS.md). Run in the repository root; .whl/ is ignored by git.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv typing-inspection \
    annotated-types uvicorn python-multipart pycocotools onnxslim hypothesis
ls .whl
