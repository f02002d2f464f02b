# fizzbot's image: Python 3.11, torch, fizzbot and its Ray, run as a non-root user.
#
#   docker build -t fizzbot:gpu .                          # GPU (CUDA base; the default)   make docker-build
#   docker build -t fizzbot:cpu --build-arg VARIANT=cpu .  # CPU (python:3.11-slim base)     make docker-build-cpu
#   docker run --rm --gpus all --shm-size=8g --user "$(id -u):$(id -g)" -v "$PWD":/workspace fizzbot:gpu \
#     fizzbot train --config configs/train_gpu_qlora.yaml    # what `make docker-train-gpu` runs
#
# The source (fizzbot/, jobs/, configs/) is also kept in /workspace, the working directory, so that
# the image runs the pipeline without a mount (k8s/rayjob.yaml); the Makefile's docker-* targets
# mount the repo over it instead.

# gpu or cpu: picks one of the two base stages below.
ARG VARIANT=gpu

# GPU: the CUDA runtime on Ubuntu 22.04, Python 3.11 from the deadsnakes PPA. PyPI's Linux wheel of
# torch is the CUDA build and brings its own CUDA libraries; the host brings the driver. (wget, in
# both variants: KubeRay's health probes call it.)
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 AS base-gpu
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv wget \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
ENV TORCH_INDEX_URL=https://pypi.org/simple

# CPU: Python 3.11 as python.org builds it; torch from PyTorch's CPU-only index (no CUDA download).
FROM python:3.11-slim AS base-cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/* \
 && python -m venv /opt/venv
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM base-${VARIANT}
# The Makefile passes its TORCH_PIN.
ARG TORCH_PIN=torch==2.13.0
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --upgrade pip \
 && pip install --index-url "$TORCH_INDEX_URL" "$TORCH_PIN"

WORKDIR /workspace
# Dependencies first, from pyproject.toml alone (an empty package stands in for the source), so that
# editing the code does not download them again; then fizzbot itself.
COPY pyproject.toml README.md ./
RUN mkdir fizzbot && touch fizzbot/__init__.py \
 && pip install . \
 && rm -rf fizzbot build
COPY fizzbot ./fizzbot
COPY jobs ./jobs
COPY configs ./configs
RUN pip install --no-deps --force-reinstall . && rm -rf build fizzbot.egg-info

# A non-root user; numeric in USER so that Kubernetes' runAsNonRoot can check it. Its home is
# writable by any uid (caches: Hugging Face, matplotlib), for `docker run --user "$(id -u)"`, which the
# Makefile uses so that files written into the mounted repo belong to you.
RUN useradd --create-home --uid 1000 --shell /bin/bash fizzbot \
 && chmod 1777 /home/fizzbot \
 && chown -R 1000:1000 /workspace
ENV HOME=/home/fizzbot USER=fizzbot
USER 1000:1000

CMD ["fizzbot", "--help"]
