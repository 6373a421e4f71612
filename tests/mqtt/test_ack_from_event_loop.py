"""The MQTT connector's acknowledgements never touch the socket from the event loop.

paho's ``ack()``/``publish()`` write to the socket themselves when the client has no ``loop_start()``
thread and no socket callback, and the network thread is between callbacks. The connector runs
``loop_forever`` in a worker thread and acknowledges from the event loop, so such a write could meet a
dead connection (the broker SIGKILLed, tests/faults/test_broker_kill.py) and run paho's disconnect
handling in the event loop: it waits for paho's callback lock, held by the network thread in
``_on_message`` while that thread waits for the event loop (``put_threadsafe``). Ingestion and the API
froze for good. Only the network thread may write; the event loop queues and wakes it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import paho.mqtt.publish as mqtt_publish
import pytest

from connectors.mqtt.config import MqttConnectorConfig
from connectors.mqtt.connector import MqttConnector
from tests.conftest import Mosquitto

pytestmark = pytest.mark.integration

N = 30


async def _receive(c: MqttConnector, n: int, timeout: float = 10.0) -> list[Any]:
    got: list[Any] = []

    async def take() -> None:
        async for b in c.batches():
            got.append(b)
            if len(got) == n:
                return

    await asyncio.wait_for(take(), timeout)
    return got


async def test_acks_from_the_event_loop_are_written_by_the_network_thread(mosquitto: Mosquitto) -> None:
    cfg = MqttConnectorConfig(port=mosquitto.port, client_id="ack-thread", topics=["ack/#"])
    loop_thread = threading.get_ident()
    writers: list[int] = []
    c = MqttConnector(cfg, default_line_id="L")
    write = c._client.loop_write

    def spy() -> Any:
        writers.append(threading.get_ident())
        return write()

    c._client.loop_write = spy  # type: ignore[method-assign]
    async with c:
        await c.wait_connected(10)
        msgs = [{"topic": f"ack/t{i}", "payload": json.dumps({"ts": 1.0 + i, "value": i}), "qos": 1}
                for i in range(N)]
        await asyncio.to_thread(mqtt_publish.multiple, msgs, hostname="127.0.0.1", port=mosquitto.port)
        batches = await _receive(c, N)
        await asyncio.sleep(0.2)  # the network thread is idle in select() now: paho would write itself
        for b in batches:
            b.ack()
        for _ in range(200):  # the network thread, woken through paho's socket pair, sends the PUBACKs
            if not c._client._out_packet:
                break
            await asyncio.sleep(0.01)
        assert not c._client._out_packet, "the PUBACKs were not written within 2 s"
        assert c.counters.extra["acked"] == N
        assert loop_thread not in writers, "paho wrote to the socket from the event loop (ack())"
        assert writers, "the spy saw no write at all"

    # every PUBACK reached the broker: the same persistent session gets nothing redelivered
    again = MqttConnector(cfg, default_line_id="L")
    async with again:
        await again.wait_connected(10)
        with pytest.raises(TimeoutError):
            await _receive(again, 1, timeout=1.5)
