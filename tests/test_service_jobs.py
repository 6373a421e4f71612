"""The services' periodic rounds run on the daemon's scheduler and show with its jobs in /healthz (issue #20)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.conftest import write_config
from twin.api import create_app
from twin.config import load_config
from twin.daemon import Daemon


async def test_the_prediction_round_is_a_scheduler_job_with_its_health_shown(tmp_path: Path) -> None:
    d = Daemon(load_config(write_config(tmp_path, extra="[predictor]\nenabled = true\ninterval_s = 0.1\n")))
    p = d.extensions["predictor"]
    calls: list[int] = []

    async def flaky() -> list:
        calls.append(1)
        if len(calls) % 2:
            raise RuntimeError("injected odd-round failure")
        return []

    p.predict_all = flaky  # type: ignore[method-assign]
    await p.start()
    try:
        assert d.scheduler.get_job("predictor") is not None
        for _ in range(100):
            if d.job_health.get("predictor", {}).get("runs", 0) >= 4:
                break
            await asyncio.sleep(0.05)
        j = d.job_health["predictor"]
        assert j["runs"] >= 4 and j["errors"] == p.rounds.failures >= 2
        assert j["last_error"] == "RuntimeError: injected odd-round failure" and j["failing"] is False
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(d)), base_url="http://twin") as c:
            jobs = (await c.get("/healthz")).json()["jobs"]
        assert jobs["predictor"]["runs"] >= 4 and jobs["predictor"]["errors"] >= 2
    finally:
        await p.stop()
        d.store.close()
    assert d.scheduler.get_job("predictor") is None  # stop removes the job
    runs = d.job_health["predictor"]["runs"]
    await asyncio.sleep(0.3)
    assert d.job_health["predictor"]["runs"] == runs
