# Search service with a ready index of the sample catalog. Build from the repository root:
#   docker build -f docker/search.Dockerfile -t fashion-search .
# Two stages: `builder` has torch, open_clip and rembg to build the index and export the CLIP
# text and image towers to ONNX; the runtime stage serves that export on onnxruntime and has no torch.
ARG BASE_IMAGE=python:3.12-slim
# Global, so both stages share one default: serving checks they match the export.
ARG CLIP_MODEL=ViT-B-32
ARG CLIP_PRETRAINED=laion2b_s34b_b79k

FROM ${BASE_IMAGE} AS builder

# CPU-only torch wheels; set to "" to take torch from the default index (e.g. no access to it).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# download | context (see docker/context/README.md)
ARG WEIGHTS_SOURCE=download
ARG CLIP_SOURCE=download
ARG CATALOG_SOURCE=download
ARG CLIP_MODEL
ARG CLIP_PRETRAINED
# Optional: sha256 the downloaded CLIP weights file must have (printed by the first build).
ARG CLIP_WEIGHTS_SHA256=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    U2NET_HOME=/opt/models/u2net \
    CLIP_CACHE_DIR=/opt/models/clip \
    CLIP_MODEL=${CLIP_MODEL} \
    CLIP_PRETRAINED=${CLIP_PRETRAINED} \
    HF_HUB_OFFLINE=1 \
    NUMBA_CACHE_DIR=/var/cache/numba \
    TORCH_THREADS=1

WORKDIR /app
# requirements-search-build.txt includes the other three with -r.
COPY requirements-shared.txt requirements-bg.txt requirements-search.txt requirements-search-build.txt ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --extra-index-url "$TORCH_INDEX_URL" -r requirements-search-build.txt; \
    else \
        pip install -r requirements-search-build.txt; \
    fi

# 1: the builder gets onnxruntime's CUDA build for the bg models (pair it with TORCH_INDEX_URL=""
# for torch's CUDA wheel), to index on a GPU with DEVICE=cuda (docker-compose.gpu.yml `indexer`).
# The runtime stage is the same either way: it serves text queries on the CPU.
ARG GPU=0
COPY requirements-gpu.txt ./
RUN if [ "$GPU" = 1 ]; then pip uninstall -y onnxruntime && pip install -r requirements-gpu.txt; fi

COPY docker/context/ /tmp/context/
COPY shared/ shared/
COPY bgremoval/ bgremoval/
COPY search/ search/
COPY sample/ sample/

# Weights (bg-removal models for the indexer, CLIP for the index and the export), then the catalog.
RUN set -eu; \
    if [ "$WEIGHTS_SOURCE" = context ]; then \
        MODEL_CHECKSUM_DISABLED=1 python -m bgremoval.weights copy --from /tmp/context/u2net; \
    else \
        python -m bgremoval.weights download; \
    fi; \
    if [ "$CLIP_SOURCE" = context ]; then \
        mkdir -p /opt/models/clip && cp -r /tmp/context/clip/. /opt/models/clip/; \
    else \
        HF_HUB_OFFLINE=0 CLIP_WEIGHTS_SHA256="$CLIP_WEIGHTS_SHA256" python -m search.weights download; \
    fi; \
    if [ "$CATALOG_SOURCE" = context ]; then \
        python sample/fetch_catalog.py --from /tmp/context/catalog --out /opt/catalog; \
    else \
        python sample/fetch_catalog.py --out /opt/catalog; \
    fi; \
    rm -rf /tmp/context

ENV CLIP_CONFIG_DIR=/opt/models/clip
# The export lands in /opt/index/text-encoder/, where the service looks for it.
RUN python -m search.index build --catalog /opt/catalog --out /opt/index \
    && python -m search.export --index /opt/index \
    && python -m search.index info --index /opt/index


FROM ${BASE_IMAGE}

ARG CLIP_MODEL
ARG CLIP_PRETRAINED

# CLIP_MODEL/CLIP_PRETRAINED as in the builder: the service refuses an export of another model.
# TORCH_THREADS is also the ONNX text encoder's thread count.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CLIP_MODEL=${CLIP_MODEL} \
    CLIP_PRETRAINED=${CLIP_PRETRAINED} \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    SEARCH_INDEX_DIR=/opt/index \
    SEARCH_CATALOG_DIR=/opt/catalog \
    TORCH_THREADS=1 \
    GUNICORN_WORKERS=2 \
    GUNICORN_THREADS=2

WORKDIR /app
COPY requirements-shared.txt requirements-search.txt ./
# Serving requirements only, and the build fails if anything pulled torch back in.
RUN pip install -r requirements-search.txt \
    && python -c "import importlib.util as u, sys; sys.exit('torch got into the runtime stage' if u.find_spec('torch') else 0)"

COPY shared/ shared/
COPY search/ search/
COPY docker/gunicorn.conf.py docker/
# The index (with its ONNX export of CLIP's text and image towers) and the catalog whose images
# results link to. No CLIP or U^2-Net weights: queries run on the export, and photo queries ask
# the bg-removal service for the garment (BG_SERVICE_URL, set in docker-compose.yml).
COPY --from=builder /opt/index /opt/index
COPY --from=builder /opt/catalog /opt/catalog

# Serving's modules import without torch (a missing serving dependency fails here, not at start).
RUN python -c "import search.api, search.searcher, search.text_encoder, search.image_encoder, search.photos, search.page, search.vectors.exact, shared.web" \
    && useradd --system --uid 10001 --no-create-home app
USER app
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/readyz', timeout=4)"
CMD ["gunicorn", "-c", "docker/gunicorn.conf.py", "search:create_app()"]
