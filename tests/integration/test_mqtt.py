"""MQTT connector against a real mosquitto on a free loopback port (no mocks)."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import Mosquitto, write_config
from twin.config import load_config
from twin.daemon import Daemon

pytestmark = pytest.mark.integration

T0 = 1_790_000_000  # epoch seconds, a fixed day so every reading has a known source timestamp
TAGS = ["gap_actual", "line_load", "roll_speed", "roll_temperature", "thickness_after"]
VALUES = {"gap_actual": 65.0, "line_load": 1000.0, "roll_speed": 5.0, "roll_temperature": 60.0,
          "thickness_after": 70.0}


class Publisher:
    """A paho publisher that records which messages the broker acknowledged (PUBACK)."""

    def __init__(self, port: int, client_id: str = "line-publisher") -> None:
        self.acked: set[int] = set()
        self.mid_to_keys: dict[int, list[tuple[str, int]]] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                  clean_session=False)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self.lock:
            self.acked.add(mid)

    def publish(self, topic: str, payload: object, keys: list[tuple[str, int]]) -> None:
        # never hold self.lock here: paho calls _on_publish while holding its own mutex
        body = json.dumps(payload) if not isinstance(payload, (str, bytes)) else payload
        info = self.client.publish(topic, body, qos=1)
        self.mid_to_keys[info.mid] = keys

    def acked_keys(self) -> set[tuple[str, int]]:
        with self.lock:
            acked = set(self.acked)
        return {k for mid in acked for k in self.mid_to_keys.get(mid, [])}

    def wait_all_acked(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                n = len(self.acked)
            if n >= len(self.mid_to_keys):
                return
            time.sleep(0.05)
        raise TimeoutError(f"broker acknowledged {len(self.acked)} of {len(self.mid_to_keys)} messages")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_config(tmp_path: Path, port: int, client_id: str = "twin-test") -> Path:
    return write_config(tmp_path, connectors=(
        "[[connectors]]\n"
        'kind = "mqtt"\nname = "mqtt"\n'
        f"port = {port}\n"
        f'client_id = "{client_id}"\n'
        'topics = ["pilot/#"]\n'
        "backoff = { initial_s = 0.2, max_s = 2.0 }\n"
    ))


async def start_daemon(cfg_path: Path) -> tuple[Daemon, asyncio.Task[None]]:
    cfg = load_config(cfg_path)
    cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"enabled": False})})
    d = Daemon(cfg)
    task = asyncio.create_task(d.run(install_signals=False))
    conn = d.connectors[0]
    await conn.wait_connected(10)  # type: ignore[attr-defined]
    return d, task


async def wait_count(d: Daemon, n: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    c = 0
    while time.monotonic() < deadline:
        c = await asyncio.to_thread(d.store.count)
        if c >= n:
            return c
        await asyncio.sleep(0.1)
    return c


def stored_keys(d: Daemon) -> dict[tuple[str, int], float]:
    out = {}
    for tag in TAGS:
        for s in d.store.raw(f"calendering.{tag}", 0, 2**62, limit=10**7):
            out[(s.tag_id, s.source_ts_ns)] = s.value
    return out


def single(i: int) -> tuple[str, dict[str, object], tuple[str, int]]:
    tag = TAGS[i % len(TAGS)]
    ts = T0 + i * 0.001
    value = VALUES[tag] + (i % 97) * 0.01
    return (f"pilot/pilot-1/calendering/{tag}", {"ts": ts, "value": value},
            (f"calendering.{tag}", int(round(ts * 1e6)) * 1000))


async def test_10k_single_and_batch_stored_exactly_once(tmp_path: Path, mosquitto: Mosquitto) -> None:
    d, task = await start_daemon(mqtt_config(tmp_path, mosquitto.port))
    pub = Publisher(mosquitto.port)
    expected: dict[tuple[str, int], float] = {}

    def produce() -> None:
        for i in range(5000):  # 5,000 single-reading messages
            topic, payload, key = single(i)
            pub.publish(topic, payload, [key])
            expected[key] = payload["value"]  # type: ignore[assignment]
        for b in range(50):  # 50 batch messages of 100 readings
            items, keys = [], []
            for j in range(100):
                topic, payload, key = single(5000 + b * 100 + j)
                items.append({"topic": topic, **payload})
                keys.append(key)
                expected[key] = payload["value"]  # type: ignore[assignment]
            pub.publish("pilot/pilot-1/batch", {"readings": items}, keys)

    try:
        await asyncio.to_thread(produce)
        await asyncio.to_thread(pub.wait_all_acked, 60)
        n = await wait_count(d, 10_000, 60)
        assert n == 10_000
        got = await asyncio.to_thread(stored_keys, d)
        assert set(got) == set(expected)
        assert all(math.isclose(got[k], v) for k, v in expected.items())
        assert d.pipeline.stats.rejected == 0
        # a second delivery of the same readings (a republish) stores nothing new
        topic, payload, key = single(42)
        await asyncio.to_thread(pub.publish, topic, payload, [key])
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(d.store.count) == 10_000
    finally:
        pub.close()
        d.request_stop()
        await asyncio.wait_for(task, 30)


async def test_broker_restart_mid_stream_loses_nothing_acknowledged(tmp_path: Path, mosquitto: Mosquitto) -> None:
    d, task = await start_daemon(mqtt_config(tmp_path, mosquitto.port, "twin-restart"))
    pub = Publisher(mosquitto.port, "publisher-restart")
    total = 6000
    try:
        def produce() -> None:
            for i in range(total):
                topic, payload, key = single(i)
                if i % 3 == 0:
                    pub.publish(topic.rsplit("/", 2)[0] + "/batch", {"readings": [{"topic": topic, **payload}]}, [key])
                else:
                    pub.publish(topic, payload, [key])
                if i % 100 == 0:
                    time.sleep(0.02)

        producer = asyncio.create_task(asyncio.to_thread(produce))
        while len(pub.acked) < 1500:
            await asyncio.sleep(0.02)
        mosquitto.stop()  # SIGTERM: the broker saves its sessions (persistence) and exits
        await asyncio.sleep(1.0)
        mosquitto.start()
        await producer
        await asyncio.to_thread(pub.wait_all_acked, 90)
        acked = pub.acked_keys()
        assert len(acked) == total  # the publisher's own retries got everything through
        n = await wait_count(d, total, 60)
        got = await asyncio.to_thread(stored_keys, d)
        missing = acked - set(got)
        assert not missing, f"{len(missing)} acknowledged readings were lost, e.g. {sorted(missing)[:3]}"
        assert n == total
        assert d.connectors[0].counters.reconnects >= 1  # it really reconnected by itself
    finally:
        pub.close()
        d.request_stop()
        await asyncio.wait_for(task, 30)


async def test_malformed_input_becomes_dead_letters_with_reasons(tmp_path: Path, mosquitto: Mosquitto) -> None:
    d, task = await start_daemon(mqtt_config(tmp_path, mosquitto.port, "twin-malformed"))
    pub = Publisher(mosquitto.port, "publisher-malformed")
    good_topic = "pilot/pilot-1/calendering/gap_actual"
    sent = {
        "malformed_payload": [(good_topic, "{not json"), (good_topic, "[1, 2]"),
                              (good_topic, json.dumps({"ts": T0})),  # no value
                              ("pilot/pilot-1/batch", json.dumps({"readings": 5}))],
        "wrong_type": [(good_topic, json.dumps({"ts": T0, "value": "sixty"})),
                       (good_topic, json.dumps({"ts": T0, "value": True}))],
        "non_finite": [(good_topic, '{"ts": %d, "value": NaN}' % T0),
                       (good_topic, '{"ts": %d, "value": Infinity}' % T0)],
        "unknown_address": [("pilot/pilot-1/calendering/no_such_tag", json.dumps({"ts": T0, "value": 1.0}))],
        "unit_dimension": [(good_topic, json.dumps({"ts": T0, "value": 1.0, "unit": "kg"}))],
        "unknown_unit": [(good_topic, json.dumps({"ts": T0, "value": 1.0, "unit": "furlongs-ish"}))],
        "out_of_range": [(good_topic, json.dumps({"ts": T0, "value": 9999.0})),
                         (good_topic, json.dumps({"ts": T0, "value": 0.001, "unit": "um"}))],
        "missing_timestamp": [(good_topic, json.dumps({"value": 60.0}))],
        "bad_timestamp": [(good_topic, json.dumps({"ts": "yesterday", "value": 60.0})),
                          (good_topic, json.dumps({"ts": "2026-11-22T10:00:00", "value": 60.0}))],
    }
    try:
        def produce() -> None:
            for _code, items in sent.items():
                for topic, payload in items:
                    pub.publish(topic, payload, [])
            # the daemon keeps running: a good reading after all that is stored
            pub.publish(good_topic, {"ts": T0 + 5, "value": 66.0, "unit": "um"}, [])
            pub.publish(good_topic, {"ts": T0 + 6, "value": 0.067, "unit": "mm"}, [])  # converted to 67 um

        await asyncio.to_thread(produce)
        await asyncio.to_thread(pub.wait_all_acked, 30)
        expected_total = sum(len(v) for v in sent.values())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if d.store.dead_letter_count() >= expected_total and d.store.count() >= 2:
                break
            await asyncio.sleep(0.1)
        rows = d.store.dead_letters(limit=1000)
        assert len(rows) == expected_total
        by_code: dict[str, int] = {}
        for r in rows:
            by_code[r["reason_code"]] = by_code.get(r["reason_code"], 0) + 1
            assert r["reason"] and r["payload"] is not None
        assert by_code == {k: len(v) for k, v in sent.items()}
        reasons = " | ".join(r["reason"] for r in rows)
        assert "invalid JSON" in reasons and "no tag map entry" in reasons
        assert "outside allowed range [10, 400] um" in reasons
        assert "cannot convert" in reasons and "no UTC offset" in reasons
        values = sorted(s.value for s in d.store.raw("calendering.gap_actual", 0, 2**62))
        assert values == pytest.approx([66.0, 67.0])
        assert not task.done()
    finally:
        pub.close()
        d.request_stop()
        await asyncio.wait_for(task, 30)
