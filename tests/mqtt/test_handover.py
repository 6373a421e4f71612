"""The MQTT connector's hand-over from paho's thread to the event loop (issue #23): staged messages go to the
queue in order, small ones merged into one delivery that is tagged exactly as the messages one by one and that
acknowledges every message it holds (in order) only when the pipeline acknowledges it; paho's thread waits while
the stage is full. The end-to-end guarantees (QoS 1, PUBACK after commit, broker kill, overload) are the tests
in tests/integration/test_mqtt*.py and tests/faults/test_{broker_kill,overload}.py against a real mosquitto."""

from __future__ import annotations

import asyncio
import threading

import pytest

from connectors.mqtt.config import MqttConnectorConfig
from connectors.mqtt.connector import MqttConnector
from core.samples import DeadLetter, RawBatch, RawReading, Redelivery, SourceKind
from ontology.tagmap import TagMap
from ontology.validate import Tagger

M = SourceKind.MQTT


def _msg(acked: list[int], i: int, ts: list[int], redelivery: Redelivery = Redelivery.SOURCE,
         dead: int = 0, topic: str = "pilot/l/calendering/gap_actual") -> RawBatch:
    readings = tuple(RawReading(M, topic, float(i), t, t, None) for t in ts)
    dls = tuple(DeadLetter(M, topic, "x", "bad", "malformed_payload", 0, "mqtt") for _ in range(dead))
    return RawBatch(readings, dls, lambda: acked.append(i), redelivery)


def _connector(max_batches: int = 1000) -> MqttConnector:
    return MqttConnector(MqttConnectorConfig(client_id="handover", queue={"max_batches": max_batches}))


async def _drain(c: MqttConnector) -> list[RawBatch]:
    out = []
    while c.queue.qsize():
        b = await c.queue.get()
        assert b is not None
        out.append(b)
    return out


async def test_small_messages_are_merged_in_order_and_acknowledged_together() -> None:
    c = _connector()
    acked: list[int] = []
    c._staged = [_msg(acked, i, [1000 + i]) for i in range(300)]
    await c._flush_staged()
    got = await _drain(c)
    assert [len(b.readings) for b in got] == [256, 44]  # MERGE_MESSAGES
    assert [r.value for b in got for r in b.readings] == [float(i) for i in range(300)]
    assert acked == []  # nothing is acknowledged before the pipeline acknowledges the delivery
    got[1].ack()
    assert acked == list(range(256, 300))
    got[0].ack()
    assert acked == list(range(256, 300)) + list(range(256))


async def test_merging_stops_at_a_shared_timestamp_a_large_message_and_another_redelivery() -> None:
    c = _connector()
    acked: list[int] = []
    c._staged = [_msg(acked, 0, [1, 2]), _msg(acked, 1, [3]),
                 _msg(acked, 2, [3]),  # same source timestamp as the message before: a new delivery
                 _msg(acked, 3, [4], Redelivery.NONE),  # QoS 0: not with QoS-1 messages
                 _msg(acked, 4, [5]), _msg(acked, 5, list(range(10, 510))),  # 500 readings: alone
                 _msg(acked, 6, [600], dead=2), _msg(acked, 7, [601])]
    await c._flush_staged()
    got = await _drain(c)
    assert [[r.value for r in b.readings] for b in got] == [
        [0.0, 0.0, 1.0], [2.0], [3.0], [4.0], [5.0] * 500, [6.0, 7.0]]
    assert [len(b.dead_letters) for b in got] == [0, 0, 0, 0, 0, 2]
    assert [b.redelivery for b in got] == [Redelivery.SOURCE, Redelivery.SOURCE, Redelivery.NONE, Redelivery.SOURCE,
                                           Redelivery.SOURCE, Redelivery.SOURCE]
    for b in got:
        b.ack()
    assert acked == list(range(8))


async def test_a_failing_acknowledgement_does_not_skip_the_others() -> None:
    c = _connector()
    acked: list[int] = []

    def boom() -> None:
        raise ConnectionError("gone")

    c._staged = [_msg(acked, 0, [1]), RawBatch((RawReading(M, "a/b", 1.0, 2, 2),), (), boom, Redelivery.SOURCE),
                 _msg(acked, 2, [3])]
    await c._flush_staged()
    (b,) = await _drain(c)
    with pytest.raises(ConnectionError):
        b.ack()
    assert acked == [0, 2]


def test_merged_deliveries_tag_as_the_messages_one_by_one() -> None:
    tm = TagMap.from_dict({"version": 1, "tags": [
        {"id": "calendering.gap_actual", "step": "calendering", "kind": "MP", "canonical_unit": "dimensionless",
         "sources": [{"mqtt": "p/gap"}]},
        {"id": "calendering.roll_id", "step": "calendering", "kind": "MP", "canonical_unit": "dimensionless",
         "value_type": "string", "traceability": "roll_id", "sources": [{"mqtt": "p/roll"}]}]})
    rows = [("p/gap", 1.0, 10), ("p/roll", "R1", 10), ("p/gap", 2.0, 10), ("p/gap", 3.0, 11), ("p/roll", "R2", 12),
            ("p/gap", 4.0, 12), ("p/gap", 5.0, 13)]
    msgs = [RawBatch((RawReading(M, a, v, t * 10**9, t * 10**9),), (), lambda: None, Redelivery.SOURCE)
            for a, v, t in rows]
    one_by_one = Tagger(tm, "l1")
    expected = [x for m in msgs for x in one_by_one.tag_batch(m.readings)]

    async def merged() -> list:
        c = _connector()
        c._staged = list(msgs)
        await c._flush_staged()
        t = Tagger(tm, "l1")
        return [x for b in await _drain(c) for x in t.tag_batch(b.readings)]

    got = asyncio.run(merged())
    assert got == expected
    assert any(getattr(x, "roll_id", None) == "R2" for x in got)


async def test_pahos_thread_waits_while_the_stage_is_full() -> None:
    c = _connector(max_batches=3)
    c._loop = asyncio.get_running_loop()
    c._staged_evt = asyncio.Event()
    acked: list[int] = []
    done = threading.Event()

    def paho() -> None:
        for i in range(5):
            c._stage(_msg(acked, i, [i]))
        done.set()

    th = threading.Thread(target=paho)
    th.start()
    await asyncio.sleep(0.3)
    assert not done.is_set() and len(c._staged) == 3  # the third filled the stage: paho's thread waits
    assert c._staged_evt.is_set()  # the loop was woken (once)
    await c._flush_staged()
    await asyncio.to_thread(th.join, 5)
    assert done.is_set()
    await c._flush_staged()
    got = await _drain(c)
    assert [r.value for b in got for r in b.readings] == [0.0, 1.0, 2.0, 3.0, 4.0]
