#!/usr/bin/env bash
# Sets up .venv, then runs the whole pipeline on generated data in ./quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/featurestore quickstart "$@"
