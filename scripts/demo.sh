#!/usr/bin/env bash
# Set up (scripts/setup.sh, without the training extras) and run the demo: the daemon on embedded
# defaults with a simulated line, API and dashboard on http://127.0.0.1:8000 . Arguments go to
# `twin demo` (e.g. --port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
TWIN_EXTRAS="${TWIN_EXTRAS:-dev}" bash scripts/setup.sh
exec .venv/bin/twin demo "$@"
