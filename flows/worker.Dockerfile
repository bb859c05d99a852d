# The image synclip's GPU training jobs run in (the gpu-k8s work pool, flows/gpu-kubernetes.json):
# the project's locked environment (torch's CUDA build from PyPI), ffmpeg and git. The deployment's
# pull steps clone the repository at run time, install that checkout into this environment and fetch
# the offline pretrained weights; the flow's `remote` pulls the data and models from the DVC remote.
#   docker build -f flows/worker.Dockerfile -t registry.example.com/synclip-worker:$(git rev-parse --short HEAD) .
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg git libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# the lock first: its layer (about 8 GB) is rebuilt only when a dependency changes
COPY requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.lock
ENV PATH=/opt/venv/bin:$PATH \
    DVC_NO_ANALYTICS=1 \
    BENTOML_DO_NOT_TRACK=true \
    DO_NOT_TRACK=1
WORKDIR /opt/synclip
