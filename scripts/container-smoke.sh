#!/usr/bin/env bash
# Container smoke test: build both images with podman from a local base image, test weights and
# the sample catalog (through the build args), start them with podman-compose, check the real
# HTTP contract on the 127.0.0.1 published ports, then tear everything down.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
TOOLS=$REPO/../shared/tools/containers
CATALOG=$REPO/../shared/data/catalog
if [ ! -d "$TOOLS" ] || [ ! -d "$CATALOG" ]; then
  echo "container smoke test skipped: ../shared/tools/containers or ../shared/data/catalog is absent"
  exit 0
fi
started=$(date +%s)
stamp() { echo "[smoke +$(( $(date +%s) - started ))s] $*"; }

bash "$TOOLS/install-podman.sh"
# shellcheck disable=SC1091
. "$TOOLS/podman-env.sh"
podman image exists "$BASE_IMAGE" || bash "$TOOLS/build-local-base.sh"
stamp "base image $BASE_IMAGE ready"

export BG_PORT=${BG_PORT:-5001} SEARCH_PORT=${SEARCH_PORT:-5002}
export WEIGHTS_SOURCE=context CLIP_SOURCE=context CATALOG_SOURCE=context
export CLIP_MODEL=tiny-clip CLIP_PRETRAINED= TORCH_INDEX_URL=
PROJECT=fashion-smoke
CTX=$REPO/docker/context

cleanup() {
  podman-compose -p "$PROJECT" down >/dev/null 2>&1 || true
  find "$CTX" -mindepth 1 ! -name README.md -exec rm -rf {} + 2>/dev/null || true
  bash "$TOOLS/cleanup-host.sh"
}
trap cleanup EXIT

# Test inputs for the air-gapped build path: oracle ONNX models, the tiny CLIP config, the catalog.
find "$CTX" -mindepth 1 ! -name README.md -exec rm -rf {} +
.venv/bin/python -m tests.oracle_models --out "$CTX/u2net" >/dev/null
mkdir -p "$CTX/clip" && cp tests/clip_configs/tiny-clip.json "$CTX/clip/"
.venv/bin/python sample/fetch_catalog.py --from "$CATALOG" --out "$CTX/catalog" 2>/dev/null

build_started=$(date +%s)
# podman-compose 1.0.3 exits 0 when a build fails (and `up` would then start the previous image);
# it prints every podman command's "exit code: N", so look for a non-zero one.
build_log=$(mktemp)
podman-compose -p "$PROJECT" build 2>&1 | tee "$build_log"
if grep -q '^exit code: [1-9]' "$build_log"; then
  rm -f "$build_log"
  echo "container smoke test failed: an image did not build (see above)"
  exit 1
fi
rm -f "$build_log"
stamp "images built in $(( $(date +%s) - build_started ))s"
for image in fashion-search:latest fashion-bgremoval:latest; do
  podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$image"
done
# The search image serves queries on the ONNX export: torch must not be in it.
torch_check=$(podman run --rm --network none fashion-search:latest python -c \
  "import importlib.util as u; print('torch', 'present' if u.find_spec('torch') else 'absent')") || true
echo "search image: $torch_check"
[ "$torch_check" = "torch absent" ] || { echo "container smoke test failed: search image torch check: $torch_check"; exit 1; }
# A bad setting stops each image at start: the container log has the one line, the exit status is
# non-zero, and no worker was started (no crash loop without a message).
for case in "fashion-bgremoval:latest BG_JPEG_QUALITY=high" "fashion-search:latest SEARCH_BACKEND=pinecone"; do
  set -- $case
  status=0
  out=$(timeout 60 podman run --rm --network none -e "$2" "$1" 2>&1) || status=$?
  echo "$1 with $2: exit $status: $(echo "$out" | grep 'bad setting' | head -1)"
  if [ "$status" = 0 ] || [ "$status" = 124 ] || ! echo "$out" | grep -q "bad setting: ${2%%=*}='${2#*=}' is not allowed" \
     || echo "$out" | grep -q "Booting worker"; then
    echo "container smoke test failed: $1 did not refuse $2 at start:"; echo "$out" | tail -20; exit 1
  fi
done

up_started=$(date +%s)
podman-compose -p "$PROJECT" up -d
.venv/bin/python scripts/smoke_checks.py --bg "http://127.0.0.1:$BG_PORT" \
  --search "http://127.0.0.1:$SEARCH_PORT" --photo "$CATALOG" --up-started "$up_started"
stamp "container smoke test passed"
