"""A dedicated MQTT subscription for lab results (twin.lab): raw messages to an async handler, QoS 1.

The lab's messages are not line readings (a roll, a position range, a quantity, a value and its unit per row),
so they do not go through the tag map and the pipeline; this module hands them, as plain ``(topic, payload)``
pairs, to the lab service, which parses, checks and stores them or makes dead letters of them. paho objects
never leave this module.

Delivery: QoS 1 on a persistent session (fixed client id, no clean session) with manual acknowledgement; a
message is acknowledged after the handler returned (its rows stored or dead-lettered). A handler that raises
leaves the message unacknowledged: the broker delivers it again after the next reconnect, and the lab store
counts the stored rows of a redelivery as duplicates. paho reconnects by itself (back-off 1..30 s). Between
paho's thread and the event loop a bounded queue; a message that finds it full is counted (``dropped``) and
not acknowledged (the broker keeps it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger("twin.connectors.mqtt.lab")

Handler = Callable[[str, bytes], Awaitable[Any]]


class LabSubscriber:
    def __init__(self, *, host: str, port: int, topic: str, client_id: str, username: str | None = None,
                 password: str | None = None, queue_size: int = 1000) -> None:
        self.host, self.port, self.topic = host, port, topic
        self.counters = {"messages": 0, "acked": 0, "dropped": 0, "handler_errors": 0, "connects": 0}
        self.connected = False
        self.last_error: str | None = None
        self._queue: asyncio.Queue[tuple[str, bytes, int, int]] = asyncio.Queue(maxsize=queue_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                        protocol=mqtt.MQTTv311, manual_ack=True)
        if username is not None:
            c.username_pw_set(username, password)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self._client = c

    # paho's thread ------------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}"
            return
        self.connected = True
        self.counters["connects"] += 1
        client.subscribe(self.topic, qos=1)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        self.connected = False

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.counters["messages"] += 1
        loop = self._loop
        if loop is None:
            return
        item = (str(msg.topic), bytes(msg.payload), int(msg.mid), int(msg.qos))
        loop.call_soon_threadsafe(self._offer, item)

    def _offer(self, item: tuple[str, bytes, int, int]) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.counters["dropped"] += 1  # not acknowledged: the broker keeps it for the next session

    # the event loop -----------------------------------------------------------------------------
    async def run(self, handler: Handler) -> None:
        """Connect, subscribe and hand every message to ``handler`` until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        try:
            while True:
                topic, payload, mid, qos = await self._queue.get()
                try:
                    await handler(topic, payload)
                except Exception as err:  # noqa: BLE001 - one message must not end the subscription
                    self.counters["handler_errors"] += 1
                    self.last_error = f"{type(err).__name__}: {err}"[:500]
                    log.error("lab message on %s not handled (left to the broker): %s", topic[:200], self.last_error)
                    continue
                if qos > 0:
                    self._client.ack(mid, qos)
                self.counters["acked"] += 1
        finally:
            self._client.disconnect()
            self._client.loop_stop()
            self.connected = False

    def describe(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "topic": self.topic, "connected": self.connected,
                "last_error": self.last_error, **self.counters}
