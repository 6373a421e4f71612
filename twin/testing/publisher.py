"""The one MQTT publisher of the tests and benchmarks: paho, QoS 1, PUBACKs counted.

:class:`AckingPublisher` publishes with QoS 1 and counts the broker's PUBACKs (``published``,
``acked``: counts, not message ids, because ids wrap at 65535). With ``keys`` it also keeps a
ledger: which keys each message carried (``mid_keys``, ``sent_keys``), which messages were
acknowledged (``acked_mids``) and when (``ack_time``), so a test can compare what the broker took
with what the twin stored. ``publish`` never raises for a payload the broker may refuse (that is the
broker's business). A message published while the broker is down waits in paho's queue and goes out
on reconnect.

Flow control: paho keeps every unacknowledged QoS-1 message under its message id, and there are only
65,535 ids. Once they are all taken, paho's ``publish`` returns ``MQTT_ERR_QUEUE_SIZE`` and DROPS the
message (it never reaches the broker), so a producer that outruns paho's network thread (a CPU-bound
generator holding the GIL on a loaded machine) loses messages silently. ``publish`` therefore waits
while ``max_outstanding`` messages are unacknowledged (default 50,000: a broker down for 5 s under
5,000 messages/s never reaches it), retries a message paho refused for want of an id, and raises on any
other refusal, so ``published`` only counts messages paho holds; it raises ``TimeoutError`` after
``outstanding_timeout_s`` without a single acknowledgement (a broker that stays away). The ledger
(``keys``) is keyed by message id, so it holds at most 65,535 keyed messages; a keyed publish that
would reuse an id of the ledger raises instead of overwriting it.

Never take the publisher's lock around ``client.publish``: paho calls the PUBACK callback while it
holds its own mutex.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

__all__ = ["MAX_MESSAGE_IDS", "AckingPublisher"]

MAX_MESSAGE_IDS = 65_535  # MQTT packet identifiers 1..65535: at most this many QoS-1 messages unacknowledged
_HELD = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)  # paho holds the message (NO_CONN: sent on reconnect)


class AckingPublisher:
    def __init__(self, port: int, client_id: str = "publisher", *, host: str = "127.0.0.1",
                 clean_session: bool = False, reconnect_delay: tuple[float, float] = (0.1, 1.0),
                 max_inflight: int = 1000, max_outstanding: int = 50_000,
                 outstanding_timeout_s: float = 300.0) -> None:
        if not 0 < max_outstanding < MAX_MESSAGE_IDS:
            raise ValueError(f"max_outstanding must be in 1..{MAX_MESSAGE_IDS - 1} (paho's message ids)")
        self.max_outstanding = max_outstanding
        self.outstanding_timeout_s = outstanding_timeout_s
        self.published = 0  # messages handed to paho and held by it (sent, or sent on reconnect)
        self.acked = 0  # PUBACKs received
        self.flow_waits = 0  # times publish() waited for acknowledgements (flow control or a refused id)
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
        """Publish ``body`` with QoS 1; ``keys`` (a dict key -> value, or keys) go into the ledger.

        Waits while ``max_outstanding`` messages are unacknowledged; never counts a message paho dropped."""
        if self.published - self.acked_count() >= self.max_outstanding:
            self._wait_for_acks(self.published - self.max_outstanding + 1)
        while True:
            info = self.client.publish(topic, body, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                break
            # every message id is held by an unacknowledged message (acknowledged out of order, or
            # max_queued_messages): paho dropped this one; publish it again once an ack frees an id
            self._wait_for_acks(self.acked_count() + 1)
        if info.rc not in _HELD:
            raise RuntimeError(f"paho refused to publish on {topic[:80]!r}: {mqtt.error_string(info.rc)}")
        self.published += 1
        if keys:
            if info.mid in self.mid_keys:
                raise RuntimeError(f"the ledger already holds message id {info.mid}: it keeps at most "
                                   f"{MAX_MESSAGE_IDS} keyed messages")
            self.mid_keys[info.mid] = list(keys)
            if isinstance(keys, dict):
                self.sent_keys.update(keys)

    def acked_count(self) -> int:
        with self._lock:
            return self.acked

    def _wait_for_acks(self, target: int, poll_s: float = 0.001) -> None:
        """Sleep (releasing the GIL to paho's network thread) until ``target`` messages are acknowledged;
        TimeoutError after ``outstanding_timeout_s`` without any acknowledgement."""
        self.flow_waits += 1
        last, last_change = self.acked_count(), time.monotonic()
        while (acked := self.acked_count()) < target:
            now = time.monotonic()
            if acked != last:
                last, last_change = acked, now
            elif now - last_change > self.outstanding_timeout_s:
                raise TimeoutError(f"no acknowledgement for {self.outstanding_timeout_s:g} s with "
                                   f"{self.published - acked} messages unacknowledged (acked {acked} of "
                                   f"{self.published})")
            time.sleep(poll_s)

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
