#!/usr/bin/env bash
# Without Docker: set up .venv, fetch weights and the sample catalog, build the index and its
# ONNX text-encoder export, and run both services under gunicorn on 127.0.0.1:5001 (bg removal)
# and 127.0.0.1:5002 (search).
# Needs internet for the weights and the catalog the first time (like the Docker build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA_DIR:-$PWD/.local}
export U2NET_HOME=${U2NET_HOME:-$DATA/models/u2net} CLIP_CACHE_DIR=${CLIP_CACHE_DIR:-$DATA/models/clip}
export SEARCH_INDEX_DIR=${SEARCH_INDEX_DIR:-$DATA/index} SEARCH_CATALOG_DIR=${SEARCH_CATALOG_DIR:-$DATA/catalog}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# The build requirements: building the index and its text-encoder export needs torch (and rembg).
.venv/bin/pip install --quiet -r requirements-search-build.txt
.venv/bin/python -m bgremoval.weights check >/dev/null 2>&1 || .venv/bin/python -m bgremoval.weights download
.venv/bin/python -m search.weights download
[ -d "$SEARCH_CATALOG_DIR" ] || .venv/bin/python sample/fetch_catalog.py --out "$SEARCH_CATALOG_DIR"
[ -f "$SEARCH_INDEX_DIR/meta.json" ] || .venv/bin/python -m search.index build --catalog "$SEARCH_CATALOG_DIR" --out "$SEARCH_INDEX_DIR"
# The ONNX text encoder the service serves queries with (it falls back to torch without it).
[ -f "$SEARCH_INDEX_DIR/text-encoder/export.json" ] || .venv/bin/python -m search.export --index "$SEARCH_INDEX_DIR"

export HF_HUB_OFFLINE=1
.venv/bin/gunicorn -c docker/gunicorn.conf.py --bind 127.0.0.1:${BG_PORT:-5001} "bgremoval:create_app()" &
bg=$!
.venv/bin/gunicorn -c docker/gunicorn.conf.py --bind 127.0.0.1:${SEARCH_PORT:-5002} "search:create_app()" &
search=$!
trap 'kill $bg $search 2>/dev/null' EXIT INT TERM
echo "bg removal on http://127.0.0.1:${BG_PORT:-5001}, search on http://127.0.0.1:${SEARCH_PORT:-5002} (Ctrl-C stops both)"
wait
