#!/usr/bin/env bash
# Installs what the tests need into .venv (once) and runs the unit suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements-*.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -r requirements-dev.txt
  echo "$want" > "$stamp"
fi
# The browser tests (tests/test_browser.py) drive headless Chromium: Debian's chromium and
# chromium-driver, installed when missing. Without them those tests skip, or fail when CI is set.
have_browser() {
  { command -v chromium || command -v chromium-browser; } >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1
}
if ! have_browser; then
  sudo=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; }; then
    echo "installing chromium and chromium-driver for the browser tests" >&2
    { $sudo env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq \
        && $sudo env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends \
             chromium chromium-driver; } >/dev/null \
      || echo "could not install chromium: the browser tests will skip (fail under CI)" >&2
  else
    echo "chromium is missing and apt-get (as root or with sudo) is not available: the browser tests will skip" \
         "(fail under CI)" >&2
  fi
fi
exec .venv/bin/python -m pytest -q "$@"
