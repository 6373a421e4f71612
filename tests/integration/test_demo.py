"""`twin demo`: embedded defaults beside the simulated line (OPC-UA on loopback), no external server;
/healthz within 10 s; a calender series has data."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_demo_serves_health_and_calender_series(tmp_path: Path) -> None:
    port = free_port()
    t0 = time.monotonic()
    log = open(tmp_path / "demo.log", "w")  # noqa: SIM115 - a file, not a pipe nobody reads while it runs
    p = subprocess.Popen([sys.executable, "-m", "twin.cli", "demo", "--port", str(port), "--state-dir",
                          str(tmp_path / "state")], stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        healthy_after = None
        while time.monotonic() - t0 < 10:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                if r.status_code == 200:
                    healthy_after = time.monotonic() - t0
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert healthy_after is not None, "no /healthz within 10 s"
        points = 0
        while time.monotonic() - t0 < 30 and points == 0:
            r = httpx.get(f"http://127.0.0.1:{port}/api/v1/series/calendering.gap_actual", params={"points": 100})
            assert r.status_code == 200
            points = sum(b["count"] for b in r.json()["buckets"])
            time.sleep(0.2)
        assert points > 0
        latest = {x["tag"]: x for x in httpx.get(f"http://127.0.0.1:{port}/api/v1/latest").json()}
        assert "calendering.line_load" in latest and latest["calendering.line_load"]["unit"] == "N/mm"
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        log.close()
    assert p.returncode == 0, (tmp_path / "demo.log").read_text()[-3000:]
