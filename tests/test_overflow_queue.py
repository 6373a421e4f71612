"""The connector queue's overflow policies: what is dropped, how it is counted, and the on_drop hook through which
the MQTT connector acknowledges a dropped delivery (held unacknowledged it would fill the broker's in-flight window
and stop all delivery; tests/faults/test_overload.py shows it end to end)."""

from __future__ import annotations

import asyncio

import pytest

from connectors.base import BoundedBatchQueue, ConnectorCounters, OverflowPolicy
from core.samples import RawBatch, RawReading, SourceKind


def batch(tag: str, n: int, acks: list[str]) -> RawBatch:
    readings = tuple(RawReading(SourceKind.MQTT, f"t/{tag}", float(i), None, i) for i in range(n))
    return RawBatch(readings, (), lambda: acks.append(tag))


@pytest.mark.parametrize("policy, kept, dropped", [(OverflowPolicy.DROP_OLDEST, ["b", "c"], ["a"]),
                                                   (OverflowPolicy.DROP_NEWEST, ["a", "b"], ["c"])])
async def test_drop_policies_count_and_hand_the_dropped_delivery_to_on_drop(policy, kept, dropped) -> None:
    counters = ConnectorCounters()
    q = BoundedBatchQueue(2, policy, counters)
    acks: list[str] = []
    seen: list[RawBatch] = []
    q.on_drop = lambda b: (seen.append(b), b.ack())
    for tag, n in (("a", 3), ("b", 5), ("c", 7)):
        await q.put(batch(tag, n, acks))
    out = [(await q.get()) for _ in range(2)]
    assert [b.readings[0].address[2:] for b in out if b is not None] == kept
    assert acks == dropped and [b.readings[0].address[2:] for b in seen] == dropped
    assert counters.dropped == {"a": 3, "c": 7}[dropped[0]]


async def test_block_drops_nothing_and_waits_for_room() -> None:
    counters = ConnectorCounters()
    q = BoundedBatchQueue(1, OverflowPolicy.BLOCK, counters)
    acks: list[str] = []
    q.on_drop = lambda b: acks.append("dropped?")
    await q.put(batch("a", 1, acks))
    put = asyncio.ensure_future(q.put(batch("b", 1, acks)))
    await asyncio.sleep(0.05)
    assert not put.done() and q.qsize() == 1
    assert (await q.get()) is not None
    await asyncio.wait_for(put, 1)
    assert q.qsize() == 1 and counters.dropped == 0 and acks == []
