"""Supervision and honest health: a failing task is logged, counted and restarted; /healthz says
degraded (503) while a source is disconnected or a task is failing, and ok again after recovery.
Against a real mosquitto; the API is the real FastAPI app over the running daemon."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path

import httpx
import pytest

from core.supervise import Supervisor, TaskState, full_jitter
from tests.conftest import Mosquitto, write_config
from tests.integration.test_mqtt import Publisher, single, start_daemon, wait_count
from twin.api import create_app

pytestmark = pytest.mark.integration


def test_full_jitter_is_uniform_up_to_the_cap() -> None:
    rng = random.Random(1)
    draws = [full_jitter(3, 0.5, 30.0, rng) for _ in range(4000)]
    assert min(draws) >= 0.0 and max(draws) <= 4.0
    assert min(draws) < 0.1 and max(draws) > 3.9  # the whole [0, cap] range, not [cap/2, cap]
    assert max(full_jitter(40, 0.5, 30.0, rng) for _ in range(200)) <= 30.0


async def test_supervisor_restarts_a_failing_task_and_reports_it(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    failures: list[str] = []

    async def work() -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise RuntimeError(f"boom {len(runs)}")
        await asyncio.sleep(0.3)

    sup = Supervisor(on_failure=lambda h, e: failures.append(f"{h.name}:{e}"), initial_s=0.01, max_s=0.05,
                     recent_s=0.2)
    with caplog.at_level(logging.ERROR, logger="core.supervise"):
        task = sup.spawn("consume:x", work, stage="consumer")
        await asyncio.sleep(0.15)
        h = sup.tasks["consume:x"]
        assert h.state is TaskState.RUNNING and h.restarts == 2 and h.failures == 2
        assert failures == ["consume:x:boom 1", "consume:x:boom 2"]
        assert sup.degraded() and "boom 2" in sup.degraded()[0]
        await task
    assert h.state is TaskState.FINISHED and len(runs) == 3
    # the first failure's traceback is logged when it happens; the repeat within a minute gets one line
    tracebacks = [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert len(tracebacks) == 1 and "boom 1" in tracebacks[0].getMessage()
    await asyncio.sleep(0.25)
    assert sup.degraded() == []  # no failure within recent_s: healthy again


async def _health(client: httpx.AsyncClient) -> tuple[int, dict]:
    r = await client.get("/healthz")
    return r.status_code, r.json()


async def _wait_health(client: httpx.AsyncClient, code: int, timeout: float) -> tuple[float, dict]:
    t0 = time.monotonic()
    body: dict = {}
    while time.monotonic() - t0 < timeout:
        status, body = await _health(client)
        if status == code:
            return time.monotonic() - t0, body
        await asyncio.sleep(0.1)
    raise AssertionError(f"/healthz did not answer {code} within {timeout} s: {body}")


async def test_healthz_degraded_while_the_broker_is_down(tmp_path: Path, mosquitto: Mosquitto) -> None:
    from tests.integration.test_mqtt import mqtt_config

    d, task = await start_daemon(mqtt_config(tmp_path, mosquitto.port))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(d)), base_url="http://twin")
    try:
        status, body = await _health(client)
        assert status == 200 and body["status"] == "ok" and body["problems"] == []
        assert body["connectors"][0]["state"] == "connected"
        mosquitto.stop()
        _, body = await _wait_health(client, 503, 10)
        assert body["status"] == "degraded"
        assert any("source mqtt (mqtt) disconnected" in p for p in body["problems"]), body["problems"]
        metrics = (await client.get("/metrics")).text
        assert "twin_health_degraded 1.0" in metrics
        mosquitto.start()
        _, body = await _wait_health(client, 200, 20)
        assert body["problems"] == []
        pub = Publisher(mosquitto.port)
        topic, payload, _ = single(1)
        pub.publish(topic, payload, [])
        assert await wait_count(d, 1, 20) == 1  # reading again after the broker came back
        pub.close()
    finally:
        await client.aclose()
        d.request_stop()
        await task


async def test_a_failing_consumer_is_restarted_counted_and_reported(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A bug in the consumer (injected: the first consume run raises) is logged, counted in
    twin_internal_errors_total{stage="consumer"}, reported by /healthz, and the consumer restarts and stores
    every reading."""
    from tests.integration.test_mqtt import mqtt_config

    cfg = mqtt_config(tmp_path, mosquitto.port)
    from twin.config import load_config
    from twin.daemon import Daemon

    d = Daemon(load_config(cfg).model_copy(update={"api": load_config(cfg).api.model_copy(update={"enabled": False})}))
    real = d.pipeline.consume
    calls = []

    async def consume_once_broken(name, batches):
        calls.append(name)
        if len(calls) == 1:
            async for _ in batches:  # takes one delivery, then fails like a bug would
                raise RuntimeError("injected consumer bug")
        await real(name, batches)

    d.pipeline.consume = consume_once_broken  # type: ignore[method-assign]
    d.supervisor.initial_s = 0.5
    d.supervisor.max_s = 0.5
    task = asyncio.create_task(d.run(install_signals=False))
    await d.connectors[0].wait_connected(10)  # type: ignore[attr-defined]
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(d)), base_url="http://twin")
    pub = Publisher(mosquitto.port)
    try:
        for i in range(50):
            topic, payload, _ = single(i)
            pub.publish(topic, payload, [])
        pub.wait_all_acked(20)
        _, body = await _wait_health(client, 503, 10)
        tasks = {t["name"]: t for t in body["tasks"]}
        assert tasks["consume:mqtt"]["failures"] == 1
        assert any("injected consumer bug" in p for p in body["problems"])
        # the failed delivery was never acknowledged to the broker: it is redelivered after a reconnect at the
        # latest; every other one is stored by the restarted consumer
        assert await wait_count(d, 49, 20) >= 49
        metrics = (await client.get("/metrics")).text
        assert 'twin_internal_errors_total{stage="consumer"} 1.0' in metrics
        assert 'twin_task_restarts_total{task="consume:mqtt"} 1.0' in metrics
    finally:
        pub.close()
        await client.aclose()
        d.request_stop()
        await task


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1e30", "-1e30",
                                   "99999999999999999999999", "2026-13-01T00:00:00Z", "x" * 5000])
async def test_series_far_out_or_malformed_times_are_422_not_500(tmp_path: Path, value: str) -> None:
    from twin.config import load_config
    from twin.daemon import Daemon

    d = Daemon(load_config(write_config(tmp_path)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(d)), base_url="http://twin") as c:
        for params in ({"start": value}, {"end": value}, {"start": value, "end": "2026-12-01T00:00:00Z"}):
            r = await c.get("/api/v1/series/calendering.gap_actual", params=params)
            assert r.status_code == 422, (params, r.status_code, r.text)
            assert r.json()["detail"][0]["msg"]
    d.store.close()


async def test_a_body_with_nan_or_a_lone_surrogate_is_422_with_plain_text(tmp_path: Path) -> None:
    """Request validation errors carry the offending input; it must never turn a 422 into a 500."""
    from fastapi import Body

    from twin.config import load_config
    from twin.daemon import Daemon

    d = Daemon(load_config(write_config(tmp_path)))
    app = create_app(d)

    @app.put("/test/number")
    async def number(x: float = Body(..., embed=True, gt=0)) -> dict:
        return {"x": x}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://twin") as c:
        for body in ('{"x": NaN}', '{"x": -Infinity}', '{"x": "\\ud800"}', '{"x": "' + "9" * 100_000 + 'x"}',
                     '{"x": -1}'):
            r = await c.put("/test/number", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422, (body[:40], r.status_code, r.text[:300])
            assert r.json()["message"] and len(r.text) < 5000
    d.store.close()


async def test_a_failing_prediction_round_is_counted_shown_and_the_loop_goes_on(tmp_path: Path) -> None:
    """The predictor's periodic round raises (injected: predict_all replaced by one that raises); the
    failure is counted in twin_internal_errors_total{stage="predictor"}, /healthz names it, and the
    next round runs."""
    from twin.config import load_config
    from twin.daemon import Daemon

    cfg = load_config(write_config(tmp_path, extra="[predictor]\nenabled = true\ninterval_s = 0.1\n"))
    d = Daemon(cfg)
    p = d.extensions["predictor"]
    calls = []

    async def broken() -> list:
        calls.append(1)
        raise RuntimeError("injected prediction bug")

    p.predict_all = broken  # type: ignore[method-assign]
    await p.start()
    try:
        for _ in range(100):
            if len(calls) >= 3:
                break
            await asyncio.sleep(0.05)
        assert len(calls) >= 3  # the loop went on after the first failure
        assert p.rounds.failures == len(calls) or p.rounds.failures == len(calls) - 1
        assert any("predictor failed" in x and "injected prediction bug" in x for x in d.problems())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(d)), base_url="http://twin") as c:
            metrics = (await c.get("/metrics")).text
            assert 'twin_internal_errors_total{stage="predictor"}' in metrics
            assert (await c.get("/healthz")).status_code == 503
    finally:
        await p.stop()
        d.store.close()
