#!/usr/bin/env bash
# Set up everything the twin and its tests need on a fresh Debian machine (idempotent).
#   - Debian packages: mosquitto (real broker for the tests), influxdb (influxd 1.x) and
#     victoria-metrics (real time-series servers for the InfluxDB backend's tests), default JRE (HermiT reasoner)
#   - a virtual environment in .venv with the project and its extras
#   - the browser test's tools: nodejs, npm, chromium (Debian) and playwright-core (npm, pinned, into
#     the git-ignored tests/browser/node; it drives /usr/bin/chromium, no browser download)
# Run as root for the Debian packages; otherwise it prints what to install and goes on.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${TWIN_EXTRAS:-dev,train,physics}"
DEBS="${TWIN_DEBS:-mosquitto influxdb victoria-metrics}"

need=()
for pkg in $DEBS; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
command -v java >/dev/null 2>&1 || need+=("default-jre-headless")
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}"
    (apt-get update -qq || true) >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    # the tests start their own servers on free loopback ports; keep the packaged services off
    for svc in mosquitto influxdb victoria-metrics; do
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    done
  else
    echo "setup: please install these Debian packages (as root): ${need[*]}" >&2
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
STAMP=.venv/.twin-installed-$(sha1sum pyproject.toml | cut -c1-12)-${EXTRAS//,/_}
if [ ! -f "$STAMP" ]; then
  echo "setup: installing the project with extras [$EXTRAS] (torch is pinned to 2.13.0, CPU build)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned, so no other package pulls a CUDA build
  if [[ ",$EXTRAS," == *",train,"* || ",$EXTRAS," == *",physics,"* ]]; then
    .venv/bin/python -m pip install -q "torch==2.13.0"
  fi
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
  # pinned packages whose declared requirements clash with ours ([tool.pilotline] no-deps in pyproject.toml)
  .venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["pilotline"]["no-deps"]))' \
    | xargs -r .venv/bin/python -m pip install -q --no-deps
  rm -f .venv/.twin-installed-*
  touch "$STAMP"
fi

# Browser test (tests/browser): playwright-core from npm drives Debian's chromium (no browser download)
PLAYWRIGHT_CORE="${TWIN_PLAYWRIGHT_CORE:-1.65.1}"
# Only what is missing: a machine may already carry Node.js with its own npm (NodeSource's nodejs
# bundles npm and conflicts with Debian's npm package).
web=()
command -v node >/dev/null 2>&1 || web+=(nodejs)
command -v npm >/dev/null 2>&1 || web+=(npm)
[ -x /usr/bin/chromium ] || web+=(chromium)
if ((${#web[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${web[*]}"
    (apt-get update -qq || true) >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${web[@]}" >/dev/null
  else
    echo "setup: please install these Debian packages (as root): ${web[*]}" >&2
  fi
fi
PW=tests/browser/node/node_modules/playwright-core/package.json
if command -v npm >/dev/null 2>&1 && ! grep -q "\"version\": \"$PLAYWRIGHT_CORE\"" "$PW" 2>/dev/null; then
  echo "setup: installing playwright-core@$PLAYWRIGHT_CORE into tests/browser/node"
  mkdir -p tests/browser/node
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix tests/browser/node --no-audit --no-fund --silent \
    --save-exact "playwright-core@$PLAYWRIGHT_CORE" >/dev/null
fi
