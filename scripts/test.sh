#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the default test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
.venv/bin/python -m pytest -ra "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$rc"
