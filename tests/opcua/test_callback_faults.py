"""A fault in the publish conversion path (injected into ``_reading`` for some values of one node)
against a real asyncua server: the failing values become internal_error dead letters, every other
value still arrives exactly once, the subscription and the session live on (no reconnect, no gap).

``_reading`` converts asyncua's DataValues: the connector's fast decoder is switched off here
(``subscription.fast_decode = false``); its own per-change route is faulted in tests/opcua/test_fastdecode.py."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest

from connectors.opcua.connector import OpcUaConnector
from core.samples import DeadLetter, RawReading
from tests.conftest import free_port
from tests.opcua.conftest import sample_config
from twin.simline.opcua_server import SimLineServer

pytestmark = pytest.mark.integration


class _FaultyConnector(OpcUaConnector):
    """Raises inside the conversion of every third value of one node (a stand-in for a value that
    trips an unexpected exception in asyncua or our conversion)."""

    victim = ""
    injected: list[int]

    def _reading(self, it: Any, dv: Any, recv: int) -> RawReading | DeadLetter:
        if it.address == self.victim and dv is not None and dv.Value.Value % 3 == 0:
            self.injected.append(dv.Value.Value)
            raise OverflowError(f"injected fault at value {dv.Value.Value}")
        return super()._reading(it, dv, recv)


async def test_a_value_that_fails_to_convert_is_a_dead_letter_and_the_rest_flows() -> None:
    srv = SimLineServer(port=free_port(), extra_tags=5, rate_hz=10.0)
    await srv.start()
    readings: list[RawReading] = []
    dead: list[DeadLetter] = []
    try:
        cfg = sample_config(srv.url, browse_roots=["ns=2;s=Synthetic"])
        cfg = cfg.model_copy(update={"subscription": cfg.subscription.model_copy(update={"fast_decode": False})})
        conn = _FaultyConnector(cfg, default_line_id="pilot-1")
        conn.injected = []
        async with conn:
            await conn.wait_connected(15)
            assert len(conn.nodes) == 5
            conn.victim = conn.nodes[0]

            async def consume() -> None:
                async for b in conn.batches():
                    readings.extend(b.readings)
                    dead.extend(b.dead_letters)
                    b.ack()

            task = asyncio.create_task(consume())
            await asyncio.sleep(3.0)
            srv.pause()
            await asyncio.sleep(1.0)
            final = srv.extra_seq
            await conn.stop()
            await asyncio.wait_for(task, 10)
    finally:
        await srv.stop()
    by_tag: dict[str, list[int]] = defaultdict(list)
    for r in readings:
        by_tag[r.address].append(r.value)
    assert final >= 20 and len(conn.injected) >= 6
    assert [d.reason_code for d in dead] == ["internal_error"] * len(conn.injected)
    assert all(d.address == conn.victim and "OverflowError: injected fault" in d.reason for d in dead)
    for addr in conn.nodes:
        vals = by_tag[addr]
        if addr == conn.victim:  # every value once: as a reading, or (every third) as a dead letter
            every = sorted(vals + conn.injected)
            assert every == list(range(every[0], final + 1)) and every[0] <= 3
            assert all(v % 3 for v in vals)
        else:
            assert vals == list(range(vals[0], final + 1)), addr
    c = conn.counters
    assert c.extra["internal_errors"] == len(conn.injected) and c.rejected == len(dead)
    assert c.reconnects == 0 and c.extra["gaps"] == 0 and c.extra["task_restarts"] == 0
    assert c.last_error is not None and c.last_error.startswith("opcua_callback: OverflowError")
