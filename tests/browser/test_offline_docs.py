"""The dashboard, Swagger UI and ReDoc in a real headless Chromium, as on a plant network without internet:
no request of `/`, `/docs` or `/redoc` leaves the twin's host, and the API docs still render.

`twin demo` runs as a subprocess (free loopback port, temporary state); tests/browser/drive_offline.js loads
each page, records every request (a request to another host is recorded and aborted) and reports what
rendered. Asserted: every request went to 127.0.0.1:<port>; none was blocked; Swagger UI shows the API's
title and its operations; ReDoc shows the title and its operation sections; the dashboard loaded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser.test_dashboard_browser import CHROMIUM, HERE, _need_tools
from tests.conftest import free_port

pytestmark = pytest.mark.integration

DRIVER = HERE / "drive_offline.js"


def test_pages_and_api_docs_make_no_request_off_the_host(tmp_path: Path) -> None:
    node = _need_tools()
    port = free_port()
    host = f"127.0.0.1:{port}"
    log_path = tmp_path / "demo.log"
    log = open(log_path, "w")  # noqa: SIM115 - the demo process writes it until the test ends; closed there
    demo = subprocess.Popen([sys.executable, "-m", "twin.cli", "demo", "--port", str(port), "--state-dir",
                             str(tmp_path / "state"), "--time-scale", "30"],
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert demo.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"http://{host}/healthz", timeout=1).status_code in (200, 503):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the demo did not answer within 60 s"
            time.sleep(0.2)
        args = {"base": f"http://{host}", "pages": ["/", "/docs", "/redoc"], "chromium": CHROMIUM}
        run = subprocess.run([node, str(DRIVER), json.dumps(args)], capture_output=True, text=True, timeout=240)
        try:
            res = json.loads(run.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            pytest.fail(f"driver output unreadable (rc {run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
        print(json.dumps(res, indent=1)[:6000])
        assert "fatal" not in res, res["fatal"]
        for route, p in res["pages"].items():
            assert "error" not in p, (route, p.get("error"), p["blocked"])
            assert p["status"] == 200, (route, p["status"])
            assert p["requests"], route
            off_host = [r["url"] for r in p["requests"]
                        if urlsplit(r["url"]).scheme not in ("data", "blob") and urlsplit(r["url"]).netloc != host]
            assert off_host == [] and p["blocked"] == [], (route, off_host, p["blocked"])
            assert not p["page_errors"], (route, p["page_errors"])
            # what the page asked for elsewhere was stopped inside the browser by the docs pages' CSP
            assert all(f["error"] == "csp" for f in p["failed"] if urlsplit(f["url"]).netloc != host), p["failed"]
        docs, redoc = res["pages"]["/docs"], res["pages"]["/redoc"]
        # rendered, from the local bundles: the title from /openapi.json and its operations
        assert docs["title"].startswith("Pilot-line twin") and docs["operations"] >= 10, docs
        assert redoc["title"].startswith("Pilot-line twin") and redoc["operations"] >= 10, redoc
        assert any(r["url"].endswith("/static/apidocs/swagger-ui-bundle.js") for r in docs["requests"])
        assert any(r["url"].endswith("/static/apidocs/redoc.standalone.js") for r in redoc["requests"])
        assert any(r["url"].endswith("/openapi.json") for r in docs["requests"] + redoc["requests"])
        dash = res["pages"]["/"]
        assert dash["body_text"] > 100 and any("/api/v1/" in r["url"] for r in dash["requests"]), dash
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(timeout=30)
        finally:
            log.close()
