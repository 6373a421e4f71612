"""The simulated line published over MQTT (paho-mqtt 2.x), one JSON reading per signal and step.

Topic ``<prefix>/<line>/<step>/<param>`` (e.g. ``pilot/pilot-1/calendering/gap_actual``), payload::

    {"ts": "2026-11-22T10:00:00.123456+00:00", "value": 89.1, "unit": "um", "quality": "good",
     "roll": "R-0001", "web_pos_m": 12.3}

``roll`` and ``web_pos_m`` name the material the value describes (a gauge downstream of the calender
reports the roll and position it measured, not the one in the nip). QoS 1 by default.

Attach it to a running :class:`~twin.simline.opcua_server.SimLineServer` (``server.on_tick``) to
publish the same line over both protocols, or let :meth:`MqttLinePublisher.run` step its own line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from core.samples import now_ns, ns_to_iso
from twin.simline.model import SIGNALS, LineSimulation, Outputs

log = logging.getLogger("twin.simline.mqtt")


def payloads(out: Outputs, ts_ns: int, prefix: str, line_id: str) -> list[tuple[str, bytes]]:
    """(topic, JSON payload) of every signal of one step."""
    ts = ns_to_iso(ts_ns)
    msgs = []
    for sig in SIGNALS:
        v = out.values[sig.id]
        roll, pos = out.trace[sig.id]
        body: dict[str, object] = {"ts": ts, "value": round(v, 6) if isinstance(v, float) else v}
        if sig.unit is not None:
            body["unit"] = sig.unit
        body["quality"] = "good"
        body["roll"] = roll
        body["web_pos_m"] = pos
        msgs.append((f"{prefix}/{line_id}/{sig.step}/{sig.param}", json.dumps(body, separators=(",", ":")).encode()))
    return msgs


class MqttLinePublisher:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 1883, prefix: str = "pilot",
                 line_id: str = "pilot-1", qos: int = 1, rate_hz: float = 1.0, client_id: str = "simline",
                 username: str | None = None, password: str | None = None) -> None:
        self.host, self.port = host, port
        self.prefix, self.line_id, self.qos = prefix.rstrip("/"), line_id, qos
        self.rate_hz = rate_hz
        self.published = 0
        self._last_ns = 0
        self._connected = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = lambda c, u, f, rc, p: self._connected.set() if not rc.is_failure else None
        self._client.on_disconnect = lambda c, u, f, rc, p: self._connected.clear()

    def start(self) -> None:
        """Connect (paho's network thread reconnects by itself)."""
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self._connected.wait(timeout)

    def stop(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    def publish(self, out: Outputs, ts_ns: int | None = None, *, force: bool = False) -> int:
        """Publish one step (decimated to ``rate_hz`` unless ``force``); returns messages sent."""
        ts = ts_ns if ts_ns is not None else now_ns()
        if not force and self.rate_hz > 0 and ts - self._last_ns < 1e9 / self.rate_hz * 0.999:
            return 0
        self._last_ns = ts
        n = 0
        for topic, body in payloads(out, ts, self.prefix, self.line_id):
            self._client.publish(topic, body, qos=self.qos)
            n += 1
        self.published += n
        return n

    async def run(self, sim: LineSimulation, *, time_scale: float = 1.0, duration_s: float | None = None) -> None:
        """Step ``sim`` at ``rate_hz`` and publish every step."""
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate_hz
        t_end = None if duration_s is None else loop.time() + duration_s
        next_t = loop.time()
        while t_end is None or loop.time() < t_end:
            out = sim.advance(period * time_scale)
            self.publish(out, force=True)
            next_t += period
            await asyncio.sleep(max(0.0, next_t - loop.time()))
