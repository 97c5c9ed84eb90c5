# Background-removal service. Build from the repository root:
#   docker build -f docker/bgremoval.Dockerfile -t fashion-bgremoval .
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# download: rembg fetches and md5-checks the weights; context: take docker/context/u2net/*.onnx
ARG WEIGHTS_SOURCE=download

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    U2NET_HOME=/opt/models/u2net \
    NUMBA_CACHE_DIR=/var/cache/numba \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    ORT_THREADS=1 \
    GUNICORN_WORKERS=2 \
    GUNICORN_THREADS=2

WORKDIR /app
# requirements-bg.txt includes requirements-shared.txt with -r.
COPY requirements-shared.txt requirements-bg.txt ./
RUN pip install -r requirements-bg.txt
# 1: onnxruntime's CUDA build (requirements-gpu.txt); run with DEVICE=cuda and a GPU
# (docker-compose.gpu.yml). 0: the CPU image.
ARG GPU=0
COPY requirements-gpu.txt ./
RUN if [ "$GPU" = 1 ]; then pip uninstall -y onnxruntime && pip install -r requirements-gpu.txt; fi

COPY docker/context/ /tmp/context/
COPY shared/ shared/
COPY bgremoval/ bgremoval/
COPY docker/gunicorn.conf.py docker/

# Weights into a fixed path at build time: a container never downloads on its first request.
RUN set -eu; \
    if [ "$WEIGHTS_SOURCE" = context ]; then \
        MODEL_CHECKSUM_DISABLED=1 python -m bgremoval.weights copy --from /tmp/context/u2net; \
    else \
        python -m bgremoval.weights download; \
    fi; \
    rm -rf /tmp/context

# rembg imports pymatting, whose numba functions are compiled and cached at build time; the
# cache must stay writable for the non-root user or numba refuses to load it.
RUN python -c "import rembg" \
    && useradd --system --uid 10001 --no-create-home app \
    && mkdir -p "$NUMBA_CACHE_DIR" && chown -R app "$NUMBA_CACHE_DIR"
USER app
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/readyz', timeout=4)"
CMD ["gunicorn", "-c", "docker/gunicorn.conf.py", "bgremoval:create_app()"]
