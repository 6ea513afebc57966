# syntax=docker/dockerfile:1
# Triton Inference Server with IndexTTS-2's Python models (gpt_decoder, s2mel) able to run: NVIDIA's
# image (its native ONNX Runtime backend serves the eight ONNX models) plus this package and its
# dependencies in the image's Python, which the python backend's stub runs.
#
#   docker build -f deploy/docker/triton.Dockerfile -t indextts2-triton:0.1.0 .
#       the model repository is mounted at /models at run time (compose, Kubernetes volume), or Triton
#       reads it from object storage (--model-repository=s3://...; see deploy/k8s/overlays/s3)
#   docker build -f deploy/docker/triton.Dockerfile --target baked \
#       --build-context repository=/srv/indextts2_repository -t indextts2-triton:0.1.0-baked .
#       the exported repository (python -m export ... --output /srv/indextts2_repository) baked in
#
# 26.07 is Triton 2.71.0 on CUDA 13.3 (driver R580 or later): torch 2.13.0 from PyPI, which the Python
# models run, is a CUDA 13 build too, so one driver serves both. The image's Python is 3.12 (Ubuntu
# 24.04); every pin of pyproject.toml has a wheel for it. The tests run tritonserver 2.51 from the
# nvidia-pytriton wheel (local_triton/), not this image: see README, "Deployment".
FROM nvcr.io/nvidia/tritonserver:26.07-py3 AS runtime

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /opt/indextts2/src
COPY pyproject.toml ./
COPY indextts2 ./indextts2
COPY export ./export
COPY orchestrator ./orchestrator
COPY local_triton ./local_triton
# numpy 2 silently corrupts tensors in the python backend's stub: numpy<2 (pyproject pins 1.26.4).
RUN python3 -m pip install . "numpy<2" \
    && python3 -c "import numpy, indextts2.engine; assert int(numpy.__version__.split('.')[0]) < 2, numpy.__version__"

# Model repository mount point and the TensorRT engine cache the ONNX configs name; the NVIDIA image's
# unprivileged user (uid 1000) runs the server.
RUN mkdir -p /models /tmp/indextts2_trt_cache \
    && chown triton-server:triton-server /models /tmp/indextts2_trt_cache
WORKDIR /opt/tritonserver
USER 1000
EXPOSE 8000 8001 8002

# Explicit model control with every model loaded at start: models can then be unloaded and loaded
# through the repository API (/readyz names what is missing, requests for it get 503). The exit
# timeout outlasts the orchestrator's request budget (REQUEST_TIMEOUT_S, 120 s), so that on SIGTERM
# the streams in flight finish. Kubernetes and compose pass their own arguments (deploy/).
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=explicit", "--load-model=*", \
     "--disable-auto-complete-config", "--exit-timeout-secs=130"]

# The repository baked in (build with --target baked and --build-context repository=<dir>).
FROM runtime AS baked
# `repository` is a named build context (--build-context), not a stage: hadolint cannot know it.
# hadolint ignore=DL3022
COPY --from=repository --chown=triton-server:triton-server . /models

# Default target: the repository comes from a volume or from object storage.
FROM runtime AS mounted
