# syntax=docker/dockerfile:1
# CPU image: the torch-free server (detector[serve]: FastAPI + ONNX Runtime, no PyTorch) for a
# laptop or a CPU host. The model is mounted at run time, never built in:
#
#   docker build -t detector:cpu .
#   export DETECTOR_API_KEYS="$(openssl rand -hex 32)"   # clients send Authorization: Bearer KEY
#   docker run -p 8000:8000 -e DETECTOR_API_KEYS -v "$PWD/runs/export:/models:ro" detector:cpu \
#       --model /models/model.onnx
#
# The server listens on 0.0.0.0 in the container (else the published port would reach nothing),
# so it refuses to start without API keys (DETECTOR_API_KEYS): the image fails closed. For a
# keyless trial on this machine only: -p 127.0.0.1:8000:8000 -e DETECTOR_ALLOW_INSECURE=true.
#
# GPU hosts and Jetson boards: Dockerfile.gpu. Build and run notes: deploy/README.md.
# Not built on the project's machines (no Docker there); tests/deploy lints it with hadolint.

# Pinned by digest (the multi-platform index of python:3.11.13-slim-bookworm), so a rebuild gets
# the same base; to move on, pick a newer tag and take its digest from
# `docker buildx imagetools inspect python:TAG` (the first "Digest:" line).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

# --- build: install into a virtual environment that the final stage copies whole ------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY detector ./detector
COPY export ./export
COPY serve ./serve
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "/src[serve]" \
    && /opt/venv/bin/pip check

# --- serve: the venv, a non-root user, nothing else ------------------------------------------
FROM ${PYTHON_IMAGE} AS serve
COPY --from=build /opt/venv /opt/venv
RUN groupadd --gid 10001 detector \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin detector
USER 10001:10001
WORKDIR /home/detector
# every `detector serve` flag is also DETECTOR_<NAME>; flags given to `docker run` win. No API
# keys and no DETECTOR_ALLOW_INSECURE here: keys come at run time, and without them the server
# refuses to listen on 0.0.0.0
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DETECTOR_HOST=0.0.0.0 \
    DETECTOR_PORT=8000 \
    DETECTOR_MODEL=/models/model.onnx
EXPOSE 8000
# liveness only (/healthz); orchestrators should also probe /readyz (model loaded, warmed up)
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DETECTOR_PORT', '8000') + '/healthz', timeout=4)"]
ENTRYPOINT ["detector", "serve"]
