# syntax=docker/dockerfile:1
# The orchestrator (FastAPI service, `python -m orchestrator`): text and audio front-ends on the CPU,
# every model call over gRPC to Triton. Only its own dependencies (orchestrator-requirements.txt): no
# ONNX Runtime, no Triton, no model weights. torch stays, CPU-only: the orchestrator computes emotion
# vectors and audio features (kaldi fbank, mel) with it.
#
#   docker build -f deploy/docker/orchestrator.Dockerfile -t indextts2-orchestrator:0.1.0 .
#
# At run time it needs CHECKPOINT_DIR (default /checkpoint) holding the four small files of the
# checkpoint the model repository was exported from (config.yaml, bpe.model, feat1.pt, feat2.pt) and a
# writable VOICES_DIR (default /voices); TRITON_GRPC_URL says where Triton is.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    INDEXTTS2_TN_FST_DIR=/opt/indextts2/text_normalizer

WORKDIR /opt/indextts2/src
COPY deploy/docker/orchestrator-requirements.txt /opt/indextts2/requirements.txt
# torch from the PyTorch CPU index first: torch==2.13.0 in the requirements is then satisfied by
# 2.13.0+cpu, and pip never pulls the CUDA build (several GB) from PyPI.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install -r /opt/indextts2/requirements.txt

COPY pyproject.toml ./
COPY indextts2 ./indextts2
COPY orchestrator ./orchestrator
# The package without its dependencies (those are the model side's too), then the text normaliser's
# Chinese FSTs, built once here (~2 s) instead of at every start.
RUN pip install --no-deps . \
    && python -m indextts2.frontend.normalizer \
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin indextts2 \
    && mkdir -p /checkpoint /voices \
    && chown indextts2 /voices

USER 10001
WORKDIR /opt/indextts2
ENV HOST=0.0.0.0 \
    PORT=8000 \
    CHECKPOINT_DIR=/checkpoint \
    VOICES_DIR=/voices \
    TRITON_GRPC_URL=triton:8001 \
    HOME=/tmp
EXPOSE 8000
# On SIGTERM uvicorn stops accepting connections, lets the requests in flight finish (streams included,
# no time limit of its own), then closes the Triton client: give it the request budget (120 s) plus
# margin before a SIGKILL (compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
CMD ["python", "-m", "orchestrator"]
