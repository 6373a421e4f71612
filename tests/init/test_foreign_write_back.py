"""An approved proposal reaches the foreign server's gap setpoint in the unit that node speaks (mm)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.init.conftest import ForeignServer
from tests.init.test_quickstart_foreign_opcua import ROOT, TWIN, get, twin, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOKEN = "write-back-test"


def send(port: int, method: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


async def read_node(url: str, node: str) -> float:
    from asyncua import Client

    async with Client(url) as c:
        return float(await c.get_node(node).read_value())


def test_approved_gap_is_written_in_mm(foreign_server: ForeignServer, tmp_path: Path) -> None:
    api_port = free_port()
    res = twin(["init", "--opcua", foreign_server.url, "--out", "twin.toml", "--yes", "--port", str(api_port)], tmp_path)
    assert res.returncode == 0, res.stderr
    tokens = json.dumps([{"name": "engineer", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                          "scopes": ["read", "write"]}])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TWIN_API__TOKENS": tokens}  # no file edited by hand
    proc = subprocess.Popen(TWIN + ["run", "--config", "twin.toml"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "twin.log").open("w"), env=env)
    try:
        wait_for("a prediction", lambda: get(api_port, "/api/v1/predictions/latest")["predictions"], 60, proc)
        # a porosity target well below the line's 30.9 %: the service proposes a smaller gap
        send(api_port, "PUT", "/api/v1/feedback/targets",
             {"targets": {"porosity": {"target": 27.0, "tolerance": 0.5, "weight": 1.0, "unit": "percent"}}})
        prop = wait_for("a proposal", lambda: get(api_port, "/api/v1/proposals/current"), 60, proc)
        setting = prop["settings"][0]
        assert setting["tag"] == "calendering.gap_setpoint" and setting["unit"] == "um"
        assert setting["proposed"] < setting["current"] == pytest.approx(85.0, abs=0.01)
        done = send(api_port, "POST", f"/api/v1/proposals/{prop['id']}/approve", {"comment": "test"})
        assert done["state"] == "applied", done
        w = done["writes"][0]
        assert w["node"] == "ns=1;i=51002" and w["node_unit"] == "mm"
        assert w["written"] == pytest.approx(setting["proposed"] / 1000.0)
        value = asyncio.run(read_node(foreign_server.url, "ns=1;i=51002"))
        assert value == pytest.approx(setting["proposed"] / 1000.0) and 0.04 <= value <= 0.2
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
