"""The MQTT connector's hand-over from paho's thread to the event loop (issue #23): staged messages go to the
queue in order, one delivery each, acknowledged only when the pipeline acknowledges it; the loop is woken once per
group; paho's thread waits while the stage is full. The end-to-end guarantees (QoS 1, PUBACK after commit, broker kill, overload) are the tests
in tests/integration/test_mqtt*.py and tests/faults/test_{broker_kill,overload}.py against a real mosquitto."""

from __future__ import annotations

import asyncio
import threading

from connectors.mqtt.config import MqttConnectorConfig
from connectors.mqtt.connector import MqttConnector
from core.samples import DeadLetter, RawBatch, RawReading, Redelivery, SourceKind

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


async def test_staged_messages_reach_the_queue_in_order_each_acknowledged_by_the_pipeline() -> None:
    c = _connector()
    acked: list[int] = []
    c._staged = [_msg(acked, i, [1000 + i], dead=i % 2) for i in range(300)]
    await c._flush_staged()
    got = await _drain(c)
    assert [r.value for b in got for r in b.readings] == [float(i) for i in range(300)]
    assert [len(b.dead_letters) for b in got] == [i % 2 for i in range(300)]
    assert acked == []  # nothing is acknowledged before the pipeline acknowledges the delivery
    for b in reversed(got):
        b.ack()
    assert acked == list(range(299, -1, -1))


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
    got = await _drain(c)
    await asyncio.to_thread(th.join, 5)
    assert done.is_set()
    await c._flush_staged()
    got += await _drain(c)
    assert [r.value for b in got for r in b.readings] == [0.0, 1.0, 2.0, 3.0, 4.0]
