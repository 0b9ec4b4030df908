# distill container images: one Dockerfile, three targets (docs/deploy.md).
#
#   cpu      CPU torch + distill + the shipped demo teacher: `docker run distill:cpu demo`, CI
#   gpu      torch's CUDA build (its wheels carry the CUDA runtime: the host needs only the NVIDIA
#            driver) + distill + DeepSpeed: train and eval on GPUs, generate with the hf backend
#   teacher  gpu + vLLM at the release the contract tests pin: generate / augment with a vLLM teacher
#
#   docker build --target cpu -t distill:cpu .
#   docker build --target gpu -t distill:gpu .
#   docker build --target teacher -t distill:teacher .
#
# `docker run IMAGE <command> ...` runs `distill <command> ...` (`train` alone with a SageMaker
# /opt/ml tree runs the SageMaker training-job contract). tini is PID 1: it passes SIGTERM
# (docker stop, SageMaker stop / spot, Kubernetes eviction) to distill, which stops at its next
# safe point and exits 75, and it reaps orphaned processes.
#
# Runs as UID 10001 in group 0, with HOME, the Hugging Face cache and /work group-writable, so it
# also runs under an arbitrary UID in group 0 (OpenShift-style clusters). --build-arg DISTILL_UID=0
# gives a root image for platforms that need one.
#
# docker/build-extra/ is empty in a normal build. A build behind a TLS-intercepting proxy or with a
# local wheel store puts pip.conf (and what it names: a CA bundle, a wheel folder) there; it is read
# by the build stages only and never reaches the images.

ARG BASE_IMAGE=debian:bookworm-slim

# ---- the OS layer every target shares: Python, tini, the user --------------------------------------
FROM ${BASE_IMAGE} AS os
ARG DISTILL_UID=10001
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Versions come from the base image's release (bookworm): pinning Debian revisions here would break
# the build at every security update of the mirror.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates tini passwd \
 && rm -rf /var/lib/apt/lists/* \
 && if [ "$DISTILL_UID" != 0 ]; then useradd --uid "$DISTILL_UID" --gid 0 --home-dir /home/distill --no-create-home \
        --shell /bin/bash distill; fi \
 && mkdir -p /home/distill/.cache/huggingface /work \
 && chown -R "$DISTILL_UID:0" /home/distill /work \
 && chmod -R g=u /home/distill /work

# ---- build stages: a virtual environment in /opt/distill/venv ---------------------------------------
FROM os AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY docker/build-extra/ /opt/build-extra/
ENV PIP_CONFIG_FILE=/opt/build-extra/pip.conf \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/distill/venv/bin:$PATH
RUN python3 -m venv /opt/distill/venv
# the dependencies first (their layer stays cached while the source changes), from pyproject.toml:
# the core ones and the s3 extra (pipeline stores and request logs on S3)
COPY pyproject.toml /src/pyproject.toml
RUN python -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["s3"]))' \
    | grep -v '^torch' > /opt/requirements.txt

FROM build AS build-cpu
ARG TORCH_VERSION=2.13.0
# the CPU wheels: PyTorch's CPU index, or (TORCH_FIND_LINKS) a folder or page of wheels holding one
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_FIND_LINKS=
RUN if [ -n "$TORCH_INDEX" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_INDEX"; fi \
 && if [ -n "$TORCH_FIND_LINKS" ]; then export PIP_FIND_LINKS="$TORCH_FIND_LINKS"; fi \
 && pip install "torch==${TORCH_VERSION}" \
 && pip install -r /opt/requirements.txt
COPY . /src
ARG BASE_IMAGE
ARG GIT_COMMIT=unknown
RUN pip install --no-deps /src \
 && python -m distill.build_info --write /etc/distill/build.json --target cpu --commit "$GIT_COMMIT" --base-image "$BASE_IMAGE"

# ---- what every target runs as ------------------------------------------------------------------------
FROM os AS runtime
ARG DISTILL_UID=10001
# TOKENIZERS_PARALLELISM is a switch of the tokenizers library, not a secret
# hadolint ignore=DL3064
ENV PATH=/opt/distill/venv/bin:$PATH \
    HOME=/home/distill \
    USER=distill \
    LOGNAME=distill \
    HF_HOME=/home/distill/.cache/huggingface \
    PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false
WORKDIR /work
USER ${DISTILL_UID}:0
ENTRYPOINT ["/usr/bin/tini", "--", "distill"]
CMD ["--help"]

# ---- cpu: the demo and CI ---------------------------------------------------------------------------
FROM runtime AS cpu
COPY --from=build-cpu /opt/distill /opt/distill
COPY --from=build-cpu /etc/distill /etc/distill

# ---- gpu: torch's CUDA build (from PyPI: the CUDA runtime comes in its nvidia-* wheels) --------------
FROM build AS build-gpu
ARG TORCH_VERSION=2.13.0
RUN pip install "torch==${TORCH_VERSION}" \
 && pip install -r /opt/requirements.txt
COPY . /src
ARG BASE_IMAGE
ARG GIT_COMMIT=unknown
RUN pip install --no-deps /src \
 && python -m distill.build_info --write /etc/distill/build.json --target gpu --commit "$GIT_COMMIT" --base-image "$BASE_IMAGE"

FROM runtime AS gpu
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=build-gpu /opt/distill /opt/distill
COPY --from=build-gpu /etc/distill /etc/distill

# ---- teacher: gpu + vLLM (vLLM 0.32 pins torch 2.13.0, the gpu target's: pip adds vLLM, keeps torch) ----
FROM build-gpu AS build-teacher
ARG VLLM_VERSION=0.32.0
ARG GIT_COMMIT=unknown
ARG BASE_IMAGE
RUN pip install "vllm==${VLLM_VERSION}" \
 && python -m distill.build_info --write /etc/distill/build.json --target teacher --commit "$GIT_COMMIT" --base-image "$BASE_IMAGE"

# one venv layer of its own (not the gpu image plus a second copy of its venv)
FROM runtime AS teacher
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=build-teacher /opt/distill /opt/distill
COPY --from=build-teacher /etc/distill /etc/distill
