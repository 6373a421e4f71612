"""The dashboard's lab panel in a headless Chromium against a running daemon (real uvicorn): after late lab results
of a replayed roll, the panel shows the drift badge, the alert and the comparison, and an approval clicked in the
panel refits a candidate (the automatic retrain request applied, by the token's user)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.lab.conftest import WRITER, client, lab_daemon, replay
from tests.lab.test_shadow_promotion import R1_ROWS, lab_rows

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"


async def test_lab_panel_shows_drift_and_approves(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not Path(CHROMIUM).exists() \
            or not (HERE.parent / "browser" / "node" / "node_modules" / "playwright-core").is_dir():
        pytest.fail("node, Debian's chromium and playwright-core are needed: run scripts/setup.sh")
    d = lab_daemon(tmp_path)
    run = asyncio.create_task(d.run(install_signals=False))
    try:
        for _ in range(500):
            if d.api_port is not None:
                break
            await asyncio.sleep(0.02)
        assert d.api_port is not None and d.lab is not None
        await replay(d, keep=lambda i: i < R1_ROWS)
        async with client(d) as c:
            rep = (await c.post("/api/v1/lab/results", json={"rows": lab_rows("R-0001")})).json()
            assert rep["stored"] == 20
        args = {"url": f"http://127.0.0.1:{d.api_port}/", "token": WRITER, "chromium": CHROMIUM}
        out = await asyncio.to_thread(subprocess.run, [node, str(HERE / "drive_lab_panel.js"), json.dumps(args)],
                                      capture_output=True, text=True, timeout=120)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert "fatal" not in res, res.get("fatal")
        assert not res["page_errors"], res["page_errors"]
        assert res["badge"] == "drift" and not res["badge_hidden"]
        assert any(a.startswith("porosity:") and "outside ±2σ" in a for a in res["alerts"]), res["alerts"]
        rows = {(r[0], r[2]): r for r in res["comparison"]}
        assert rows[(d.predictor.model.version, "porosity")][3] == "10"  # n
        assert any("proposed" in r and "retrain" in r for r in res["requests_before"]), res["requests_before"]
        assert any("applied" in r and "engineer" in r for r in res["requests_after"]), res["requests_after"]
        assert len(d.lab.candidates) == 1
    finally:
        d.request_stop()
        await asyncio.wait_for(run, 30)
