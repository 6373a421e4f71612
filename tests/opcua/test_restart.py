"""A server killed and restarted: the running connector re-creates its subscriptions by itself and
flags the gap; nothing is interpolated across it."""

from __future__ import annotations

import asyncio
import time

import pytest

from connectors.opcua.connector import OpcUaConnector
from core.samples import now_ns
from tests.conftest import free_port
from tests.opcua.conftest import sample_config

pytestmark = pytest.mark.integration


async def test_server_kill_and_restart_restores_subscriptions_and_flags_the_gap(server_process) -> None:
    port = free_port()
    srv = server_process(port, "--extra-tags", "20", "--rate-hz", "10")
    srv.start()
    cfg = sample_config(srv.url, browse_roots=["ns=2;s=PilotLine"])
    conn = OpcUaConnector(cfg, default_line_id="pilot-1")
    readings = []
    gap_readings = []

    async def consume() -> None:
        async for batch in conn.batches():
            for r in batch.readings:
                (gap_readings if r.address == conn.gap_address else readings).append(r)
            batch.ack()

    async with conn:
        task = asyncio.create_task(consume())
        await conn.wait_connected(20)
        await asyncio.sleep(2.0)
        n_before = len(readings)
        assert n_before > 100
        kill_ns = now_ns()
        srv.kill()
        await asyncio.sleep(1.5)
        assert not conn.counters.connected
        n_dead = len(readings)
        restart_ns = now_ns()
        t_restart = time.monotonic()
        srv.start()  # same port; the connector was not touched
        listening = time.monotonic()
        while len(readings) == n_dead and time.monotonic() - listening < 10.0:
            await asyncio.sleep(0.05)
        t_first = time.monotonic()
        assert len(readings) > n_dead, "no data within 10 s of the server listening again"
        assert t_first - listening < 10.0
        print(f"server restart took {listening - t_restart:.2f} s; data again {t_first - listening:.2f} s later")
        await asyncio.sleep(1.5)
        await conn.stop()
        await task
    # one gap, flagged as a reading and kept on the connector
    assert conn.counters.extra["gaps"] == 1 and conn.counters.reconnects >= 1
    assert len(conn.gaps) == 1 and len(gap_readings) == 1
    gap = conn.gaps[0]
    g = gap_readings[0]
    assert g.source_ts_ns == gap.start_ns and g.unit == "s" and g.line_id == "pilot-1"
    assert g.value == pytest.approx(gap.duration_s, abs=1e-3)
    assert gap.start_ns <= kill_ns + 200_000_000  # the last data came just before the kill
    assert gap.end_ns >= restart_ns
    assert 1.5 <= gap.duration_s <= 1.5 + (t_first - t_restart) + 2.0
    # never interpolated: nothing is stamped between the last data before the kill and the restart
    inside = [r for r in readings if gap.start_ns < (r.source_ts_ns or 0) < restart_ns]
    assert inside == []
    # the subscriptions are back for every node
    after = {r.address for r in readings if (r.source_ts_ns or 0) >= restart_ns}
    assert after == {r.address for r in readings[:n_before]}
