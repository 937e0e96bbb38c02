# CPU-only image for the API and the ingest worker. No catalogue data or model weights inside:
# mount them (see docker-compose.yml).
FROM python:3.11.13-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU wheels of the pinned torch first, so requirements.txt finds them satisfied (no CUDA download).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY . .
RUN pip install --no-deps . \
    && useradd --uid 10001 --create-home lookalike \
    && mkdir -p /data && chown lookalike /data

USER lookalike
ENV BIND=0.0.0.0:8000 QDRANT_PATH=/data/qdrant UPLOAD_DIR=/data/uploads INGEST_ERROR_REPORT=/data/ingest-errors.jsonl
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["gunicorn", "-c", "service/gunicorn.conf.py", "service:create_app()"]
