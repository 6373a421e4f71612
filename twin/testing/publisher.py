"""The one MQTT publisher of the tests and benchmarks: paho, QoS 1, PUBACKs counted.

:class:`AckingPublisher` publishes with QoS 1 and counts the broker's PUBACKs (``published``,
``acked``: counts, not message ids, because ids wrap at 65535). With ``keys`` it also keeps a
ledger: which keys each message carried (``mid_keys``, ``sent_keys``), which messages were
acknowledged (``acked_mids``) and when (``ack_time``), so a test can compare what the broker took
with what the twin stored. ``publish`` never raises for a payload the broker may refuse (that is the
broker's business). A message published while the broker is down waits in paho's queue (unlimited)
and goes out on reconnect.

Never take the publisher's lock around ``client.publish``: paho calls the PUBACK callback while it
holds its own mutex.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["AckingPublisher"]


class AckingPublisher:
    def __init__(self, port: int, client_id: str = "publisher", *, host: str = "127.0.0.1",
                 clean_session: bool = False, reconnect_delay: tuple[float, float] = (0.1, 1.0),
                 max_inflight: int = 1000) -> None:
        self.published = 0  # messages handed to paho
        self.acked = 0  # PUBACKs received
        self.acked_mids: set[int] = set()
        self.ack_time: dict[int, float] = {}  # mid -> time.monotonic() of the broker's first PUBACK
        self.mid_keys: dict[int, list[Hashable]] = {}
        self.sent_keys: dict[Hashable, float] = {}
        self._lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                        clean_session=clean_session)
        c.max_inflight_messages_set(max_inflight)
        c.max_queued_messages_set(0)  # unlimited: nothing is dropped on the publisher's side
        c.reconnect_delay_set(*reconnect_delay)  # type: ignore[arg-type]  # the stub says int; paho takes float seconds
        c.on_publish = self._on_publish
        c.connect(host, port)
        c.loop_start()
        self.client = c

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._lock:
            self.acked += 1
            self.acked_mids.add(mid)
            self.ack_time.setdefault(mid, time.monotonic())

    @property
    def messages(self) -> int:
        return self.published

    def publish(self, topic: str, body: str | bytes, keys: dict[Any, float] | Iterable[Any] = ()) -> None:
        """Publish ``body`` with QoS 1; ``keys`` (a dict key -> value, or keys) go into the ledger."""
        info = self.client.publish(topic, body, qos=1)
        self.published += 1
        if keys:
            self.mid_keys[info.mid] = list(keys)
            if isinstance(keys, dict):
                self.sent_keys.update(keys)

    def acked_count(self) -> int:
        with self._lock:
            return self.acked

    def acked_keys(self) -> set[Any]:
        """The keys of the messages the broker acknowledged."""
        with self._lock:
            acked = set(self.acked_mids)
        return {k for mid in acked for k in self.mid_keys.get(mid, ())}

    def ack_times(self, keys: set[Any]) -> list[float]:
        """When the broker acknowledged the messages that carried ``keys``."""
        with self._lock:
            times = dict(self.ack_time)
        return [times[mid] for mid, ks in self.mid_keys.items() if mid in times and keys.intersection(ks)]

    def wait_window(self, max_unacked: int, poll_s: float = 0.001) -> None:
        """Flow control for a load generator: wait while more than ``max_unacked`` messages are unacknowledged."""
        while self.published - self.acked > max_unacked:
            time.sleep(poll_s)

    def wait_all_acked(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.acked_count() >= self.published:
                return
            time.sleep(0.05)
        raise TimeoutError(f"the broker acknowledged {self.acked_count()} of {self.published} messages")

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
