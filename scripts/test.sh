#!/usr/bin/env bash
# Set up (scripts/setup.sh), run the static checks (ruff, mypy) and the default test suite. Extra arguments
# go to pytest, e.g. `bash scripts/test.sh -m slow` for the slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The set-up tests' foreign OPC-UA server (tests/init/foreign_server.js): node-opcua from npm, pinned, into
# the git-ignored tests/init/node, like playwright-core for the browser test (2.180 is the last release
# that runs on Node.js 18/20; later ones need 22.13)
NODE_OPCUA="${TWIN_NODE_OPCUA:-2.180.0}"
if command -v npm >/dev/null 2>&1 && \
    ! grep -q "\"version\": \"$NODE_OPCUA\"" tests/init/node/node_modules/node-opcua/package.json 2>/dev/null; then
  echo "test: installing node-opcua@$NODE_OPCUA into tests/init/node"
  mkdir -p tests/init/node
  npm install --prefix tests/init/node --no-audit --no-fund --silent --save-exact "node-opcua@$NODE_OPCUA" >/dev/null
fi
# Static checks first (configured in pyproject.toml: [tool.ruff], [tool.mypy]); a violation fails the run
# before any test starts. TWIN_SKIP_STATIC=1 skips them (e.g. a quick local re-run of one test).
if [ "${TWIN_SKIP_STATIC:-0}" != 1 ]; then
  echo "test: ruff check"
  .venv/bin/ruff check .
  echo "test: mypy"
  .venv/bin/mypy
fi
set +e
.venv/bin/python -m pytest -ra --durations=30 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$rc"
