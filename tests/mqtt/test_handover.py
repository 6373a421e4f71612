"""The MQTT connector's hand-over from paho's thread to the event loop (issue #23): staged messages go to the
queue in order, one delivery each, acknowledged only when the pipeline acknowledges it; the loop is woken once per
group; paho's thread waits while the stage is full. The end-to-end guarantees (QoS 1, PUBACK after commit, broker kill, overload) are the tests
in tests/integration/test_mqtt*.py and tests/faults/test_{broker_kill,overload}.py against a real mosquitto."""

from __future__ import annotations

import asyncio
import threading
import time

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


async def test_while_messages_flow_the_loop_is_not_woken_per_message_and_falls_asleep_after() -> None:
    """The linger (HANDOVER_LINGER_S): a burst of single messages from paho's thread wakes the loop a few times, not once
    per message; every message reaches the queue in order; once the stage stays empty the hand-over sleeps and the
    next message wakes it again."""
    c = _connector(max_batches=5000)  # the queue takes the whole burst (drained after it)
    c._loop = asyncio.get_running_loop()
    c._staged_evt = asyncio.Event()
    task = asyncio.create_task(c._handover())
    acked: list[int] = []
    n = 1000

    def paho() -> None:  # single messages a few hundred microseconds apart, as a busy line sends them
        for i in range(n):
            c._stage(_msg(acked, i, [i]))
            time.sleep(0.0002)

    try:
        await asyncio.to_thread(paho)
        for _ in range(200):
            if c.queue.qsize() >= n:
                break
            await asyncio.sleep(0.01)
        got = await _drain(c)
        assert [r.value for b in got for r in b.readings] == [float(i) for i in range(n)]
        wakes = c.counters.extra["handover_wakes"]
        assert 1 <= wakes < n / 3, wakes  # without the linger: one per message (measured 1000 of 1000)
        await asyncio.sleep(0.05)
        assert not c._stage_woken  # idle: the next message must wake the loop
        await asyncio.to_thread(c._stage, _msg(acked, n, [n]))
        for _ in range(100):
            if c.queue.qsize():
                break
            await asyncio.sleep(0.01)
        assert [r.value for b in await _drain(c) for r in b.readings] == [float(n)]
        assert c.counters.extra["handover_wakes"] == wakes + 1
    finally:
        task.cancel()
