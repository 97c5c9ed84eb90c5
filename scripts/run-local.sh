#!/usr/bin/env bash
# Without Docker: set up .venv, fetch weights and the sample catalog, build the index and its
# ONNX text-encoder export, and run both services under gunicorn on 127.0.0.1:5001 (bg removal)
# and 127.0.0.1:5002 (search). `--offline`: the same with test models built here; see usage().
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bash scripts/run-local.sh [--offline]

Sets up .venv, gets models and the sample catalog, builds the search index and its ONNX
text-encoder export, then serves bg removal on 127.0.0.1:$BG_PORT (5001) and search on
127.0.0.1:$SEARCH_PORT (5002) under gunicorn, and prints "both services answer" once both
/readyz answer. Ctrl-C (or SIGTERM) stops both.

  (default)   the real models: downloads the U^2-Net and CLIP weights and the sample catalog
              (needs internet the first time), into $DATA_DIR (.local/)
  --offline   no downloads but pip's: tiny test models built here (the oracle ONNX models of
              tests/oracle_models.py and the random-weight tiny-clip of tests/clip_configs/), and
              the sample catalog copied from ../shared/data/catalog (or $SAMPLE_CATALOG_DIR),
              all into $DATA_DIR/offline/ (.local/offline/), apart from the real weights. Search
              results are meaningless (random CLIP weights): it shows the services run.
  -h, --help  this text

Environment: BG_PORT, SEARCH_PORT, DATA_DIR, PYTHON (makes .venv, default python3),
READY_TIMEOUT_S (seconds to wait for both /readyz, default 300); the default path also reads
U2NET_HOME, CLIP_CACHE_DIR, SEARCH_INDEX_DIR, SEARCH_CATALOG_DIR.
EOF
}

offline=0
for arg in "$@"; do
  case $arg in
    --offline) offline=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run-local.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA_DIR:-$PWD/.local}
BG_PORT=${BG_PORT:-5001} SEARCH_PORT=${SEARCH_PORT:-5002}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-300}
fail() { echo "run-local.sh: $*" >&2; exit 1; }

if [ "$offline" = 1 ]; then
  SAMPLE_CATALOG_DIR=${SAMPLE_CATALOG_DIR:-$PWD/../shared/data/catalog}
  [ -d "$SAMPLE_CATALOG_DIR" ] || fail "--offline needs the shared sample catalog (the images sample/manifest.tsv" \
    "lists, one folder per product) at $SAMPLE_CATALOG_DIR: put ../shared/data/catalog beside the repository," \
    "or set SAMPLE_CATALOG_DIR to a copy"
  # Fixed paths under their own folder, whatever the environment says: test models must never
  # land beside real weights (an inherited U2NET_HOME), nor real weights be served with them.
  DATA=$DATA/offline
  export U2NET_HOME=$DATA/models/u2net CLIP_CACHE_DIR=$DATA/models/clip CLIP_CONFIG_DIR=$DATA/models/clip
  export SEARCH_INDEX_DIR=$DATA/index SEARCH_CATALOG_DIR=$DATA/catalog
  # tiny-clip with random weights (seed 0), as the container smoke test builds it.
  export CLIP_MODEL=tiny-clip CLIP_PRETRAINED= HF_HUB_OFFLINE=1
  # The oracle models exist under rembg's default names only.
  unset BG_PERSON_MODEL BG_CLOTH_MODEL BG_PRODUCT_MODEL CLIP_WEIGHTS_SHA256
else
  export U2NET_HOME=${U2NET_HOME:-$DATA/models/u2net} CLIP_CACHE_DIR=${CLIP_CACHE_DIR:-$DATA/models/clip}
  export SEARCH_INDEX_DIR=${SEARCH_INDEX_DIR:-$DATA/index} SEARCH_CATALOG_DIR=${SEARCH_CATALOG_DIR:-$DATA/catalog}
fi

# Stop both services however this script ends: Ctrl-C, SIGTERM, or a failing step (set -e).
# TERM to a gunicorn master stops its workers too (within GUNICORN_GRACEFUL_TIMEOUT); waiting
# for the masters means nothing of ours is left serving once this script has exited.
pids=()
stop_services() {
  trap - INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop_services EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# The build requirements: building the index and its text-encoder export needs torch (and rembg).
.venv/bin/pip install --quiet -r requirements-search-build.txt

if [ "$offline" = 1 ]; then
  if ! .venv/bin/python -m bgremoval.weights check >/dev/null 2>&1; then
    .venv/bin/python -m tests.oracle_models --out "$U2NET_HOME" >/dev/null
    .venv/bin/python -m bgremoval.weights check
  fi
  mkdir -p "$CLIP_CONFIG_DIR" && cp tests/clip_configs/tiny-clip.json "$CLIP_CONFIG_DIR/"
  if [ ! -d "$SEARCH_CATALOG_DIR" ]; then
    # Copied (and checked against the manifest) beside it first: a half-copied catalog is never taken as done.
    rm -rf "$SEARCH_CATALOG_DIR.partial"
    .venv/bin/python sample/fetch_catalog.py --from "$SAMPLE_CATALOG_DIR" --out "$SEARCH_CATALOG_DIR.partial" 2>/dev/null \
      || fail "the sample catalog at $SAMPLE_CATALOG_DIR does not match sample/manifest.tsv (run" \
              "'python sample/fetch_catalog.py --from $SAMPLE_CATALOG_DIR --out /tmp/check' to see which images)"
    mv "$SEARCH_CATALOG_DIR.partial" "$SEARCH_CATALOG_DIR"
  fi
else
  .venv/bin/python -m bgremoval.weights check >/dev/null 2>&1 || .venv/bin/python -m bgremoval.weights download
  .venv/bin/python -m search.weights download
  [ -d "$SEARCH_CATALOG_DIR" ] || .venv/bin/python sample/fetch_catalog.py --out "$SEARCH_CATALOG_DIR"
fi
[ -f "$SEARCH_INDEX_DIR/meta.json" ] || .venv/bin/python -m search.index build --catalog "$SEARCH_CATALOG_DIR" --out "$SEARCH_INDEX_DIR"
# The ONNX text encoder the service serves queries with (it falls back to torch without it).
[ -f "$SEARCH_INDEX_DIR/text-encoder/export.json" ] || .venv/bin/python -m search.export --index "$SEARCH_INDEX_DIR"

export HF_HUB_OFFLINE=1
# A port already taken would have /readyz answered by whatever holds it, as if ours were up.
.venv/bin/python - "$BG_PORT" "$SEARCH_PORT" <<'EOF' || fail "set BG_PORT and SEARCH_PORT to free ports"
import socket, sys
for port in sys.argv[1:]:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds: TIME_WAIT is no obstacle
        try:
            probe.bind(("127.0.0.1", int(port)))
        except OSError as exc:
            sys.exit(f"run-local.sh: 127.0.0.1:{port} is not free ({exc.strerror})")
EOF
.venv/bin/gunicorn -c docker/gunicorn.conf.py --bind "127.0.0.1:$BG_PORT" "bgremoval:create_app()" &
bg=$!
pids+=("$bg")
.venv/bin/gunicorn -c docker/gunicorn.conf.py --bind "127.0.0.1:$SEARCH_PORT" "search:create_app()" &
search=$!
pids+=("$search")

# Both answer once each /readyz says 200 (the workers have loaded their models and the index).
both_ready() {
  .venv/bin/python - "$BG_PORT" "$SEARCH_PORT" <<'EOF'
import sys, urllib.request
for port in sys.argv[1:]:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).close()
    except OSError:
        sys.exit(1)
EOF
}
deadline=$(( $(date +%s) + READY_TIMEOUT_S ))
until both_ready; do
  kill -0 "$bg" 2>/dev/null || fail "bg removal (gunicorn pid $bg) exited before both services answered: its log is above"
  kill -0 "$search" 2>/dev/null || fail "search (gunicorn pid $search) exited before both services answered: its log is above"
  [ "$(date +%s)" -lt "$deadline" ] || fail "the services did not both answer /readyz within ${READY_TIMEOUT_S}s" \
    "(http://127.0.0.1:$BG_PORT/readyz and http://127.0.0.1:$SEARCH_PORT/readyz say why)"
  sleep 1
done
echo "both services answer: bg removal on http://127.0.0.1:$BG_PORT, search on http://127.0.0.1:$SEARCH_PORT (Ctrl-C stops both)"
# Until Ctrl-C or SIGTERM, or until one service stops on its own: then the other is stopped too.
wait -n || true
kill -0 "$bg" 2>/dev/null || fail "bg removal (gunicorn pid $bg) stopped on its own: its log is above"
fail "search (gunicorn pid $search) stopped on its own: its log is above"
