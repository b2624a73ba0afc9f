# trustfid: one Dockerfile, two targets.
#   worker (default): the engine (torch from PyPI, CUDA-enabled on linux/amd64) + the API; runs either.
#   api:              the HTTP front end only, no torch (the API image stays small).
#
#   docker build -t trustfid .                    # worker image (also runs the API)
#   docker build --target api -t trustfid-api .   # API only
#
# Entrypoints:  API     uvicorn --factory app.api:create_app --host 0.0.0.0 --port 8000
#               worker  trustfid worker --pool solo
# Both need TRUSTFID_REDIS_URL and a TRUSTFID_DATA_DIR shared between them (docker-compose.yml).

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRUSTFID_DATA_DIR=/data TRUSTFID_CACHE_DIR=/data/cache
RUN useradd --system --uid 10001 --home-dir /srv/trustfid trustfid \
 && mkdir -p /data /srv/trustfid && chown trustfid /data
WORKDIR /srv/trustfid
COPY pyproject.toml README.md ./
COPY trustfid ./trustfid
COPY app ./app
COPY worker ./worker

FROM base AS api
RUN pip install ".[s3]"
USER trustfid
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["uvicorn", "--factory", "app.api:create_app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]

FROM base AS worker
RUN pip install ".[engine,s3]"
USER trustfid
EXPOSE 8000
CMD ["trustfid", "worker", "--pool", "solo"]
