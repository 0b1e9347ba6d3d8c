# syntax=docker/dockerfile:1
# CPU image: the torch-free server (detector[serve]: FastAPI + ONNX Runtime, no PyTorch) for a
# laptop or a CPU host. The model is mounted at run time, never built in:
#
#   docker build -t detector:cpu .
#   docker run -p 8000:8000 -v "$PWD/runs/export:/models:ro" detector:cpu --model /models/model.onnx
#
# GPU hosts and Jetson boards: Dockerfile.gpu. Build and run notes: deploy/README.md.
# Not built on the project's machines (no Docker there); tests/deploy lints it with hadolint.

ARG PYTHON_IMAGE=python:3.11-slim

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
# every `detector serve` flag is also DETECTOR_<NAME>; flags given to `docker run` win
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
