#!/usr/bin/env bash
# Installs featurestore and its pinned dependencies into ./.venv (idempotent).
# Needs Python 3.11+ and, for Redis-backed commands and tests, redis-server on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
stamp=.venv/.featurestore-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ .ci/constraints.txt -nt "$stamp" ]; then
    echo "setup: installing dependencies (first run: about a minute)"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -c .ci/constraints.txt -e '.[dev]'
    touch "$stamp"
fi
if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing redis-server with apt-get"
        apt-get install -y -q redis-server >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }
    else
        echo "setup: redis-server is not installed; install it (Debian/Ubuntu: sudo apt-get install redis-server," \
             "macOS: brew install redis) or set online_store.url in featurestore.yaml" >&2
    fi
fi
