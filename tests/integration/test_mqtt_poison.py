"""Poison messages against a running daemon (real mosquitto, MQTT connector, pipeline, SQLite store):
each category of payload that used to end the connector or the consumer, interleaved with valid
readings. Exact counts: every valid reading stored exactly once, every poison message one dead
letter with the expected reason code, every message acknowledged, the connector still connected
and reading afterwards."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import connectors.mqtt.connector as mqtt_connector
from connectors.mqtt.connector import MqttConnector
from connectors.mqtt.payload import MAX_ADDRESS, MAX_PAYLOAD_TEXT, MAX_REASON, MAX_ROLL, MAX_UNIT, parse_payload
from core.samples import RawReading as _RawReading
from tests.conftest import Mosquitto
from tests.integration.test_mqtt import T0, Publisher, mqtt_config, single, start_daemon, stored_keys, wait_count
from twin.daemon import Daemon

pytestmark = pytest.mark.integration

GAP = "pilot/pilot-1/calendering/gap_actual"


def _reading(k: int, **extra: object) -> str:
    """A reading that would be valid but for ``extra`` (its own timestamp, clear of the valid ones)."""
    return json.dumps({"ts": T0 + 1000 + k, "value": 61.0, **extra})


# (topic, payload, expected reason code): each used to raise inside the paho callback or the consumer
POISON: list[tuple[str, str | bytes, str]] = [
    (GAP, '{"ts": %d, "value": %s}' % (T0 + 1000, "9" * 5000), "malformed_payload"),  # int max-str-digits
    (GAP, "[" * 100_000 + "]" * 100_000, "malformed_payload"),  # RecursionError in json
    (GAP, '{"a":' * 50_000 + "1" + "}" * 50_000, "malformed_payload"),
    (GAP, '{"ts": 1e308, "value": 61.0}', "bad_timestamp"),  # OverflowError: int(round(1e308 * 1e6))
    (GAP, '{"ts": %s, "value": 61.0}' % ("9" * 4000), "bad_timestamp"),  # beyond int64 ns
    (GAP, json.dumps({"ts": "9999-12-31T23:59:59Z", "value": 61.0}), "bad_timestamp"),
    (GAP, _reading(1).replace("}", ', "web_pos_m": %s}' % ("9" * 400)), "malformed_payload"),  # float(huge int)
    (GAP, _reading(2).replace("}", ', "web_pos_m": 1e400}'), "malformed_payload"),  # inf
    (GAP, _reading(3).replace("}", ', "roll": "\\ud800"}'), "bad_text"),  # lone surrogate
    (GAP, _reading(4).replace("}", ', "unit": "\\udfffm"}'), "bad_text"),
    (GAP, _reading(5, roll={"nested": [1, 2]}), "malformed_payload"),
    (GAP, _reading(6, roll="R" * 100_000), "bad_text"),
    (GAP, _reading(7, unit="m\u0000"), "bad_text"),
    (GAP, json.dumps({"ts": T0 + 1008, "value": "R-\ud800"}), "bad_text"),
    (GAP, json.dumps({"ts": T0 + 1009, "value": json.loads("[" * 500 + "]" * 500)}), "wrong_type"),
    ("pilot/pilot-1/" + "x" * 600, _reading(10), "bad_text"),  # over-long topic
    # units that ended the consumer or froze the event loop inside pint: refused by the unit guard
    (GAP, _reading(11, unit="1/0"), "unknown_unit"),
    (GAP, _reading(12, unit="(m"), "unknown_unit"),
    (GAP, _reading(13, unit="m**99999999"), "unknown_unit"),
    (GAP, _reading(14, unit="9**9**9"), "unknown_unit"),
    (GAP, _reading(15, unit="mm^1e9"), "unknown_unit"),
    (GAP, _reading(16, unit="((((((((((m))))))))))"), "unknown_unit"),
    (GAP, _reading(17, unit="km**12*km**12"), "unknown_unit"),
]
# a batch mixing poison items and valid ones: the valid items are stored, each poison item a dead letter
BATCH_POISON = [({"topic": "pilot/pilot-1/calendering/\ud800", "ts": T0 + 1100, "value": 61.0}, "bad_text"),
                ({"topic": GAP, "ts": 1e308, "value": 61.0}, "bad_timestamp"),
                ({"topic": GAP, "ts": T0 + 1101, "value": 61.0, "roll": "\udc00"}, "bad_text"),
                ({"topic": GAP, "ts": T0 + 1102, "value": 61.0, "unit": "1/0"}, "unknown_unit"),
                (7, "malformed_payload")]


async def _wait(pred: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.1)
    return False


async def _stop(d: Daemon, task: asyncio.Task[None], pub: Publisher) -> None:
    pub.close()
    d.request_stop()
    await asyncio.wait_for(task, 30)


async def test_poison_payloads_interleaved_with_valid_readings(tmp_path: Path, mosquitto: Mosquitto,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # the last line of defence: a parser fault (injected for one marked message) is an internal_error
    real_parse = mqtt_connector.parse_payload

    def parse_with_a_fault(topic: bytes, payload: bytes, *args: object, **kw: object):
        if b"inject-internal-error" in payload:
            raise KeyError("injected fault")
        return real_parse(topic, payload, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(mqtt_connector, "parse_payload", parse_with_a_fault)
    d, task = await start_daemon(mqtt_config(tmp_path, mosquitto.port, "twin-poison"))
    conn = d.connectors[0]
    assert isinstance(conn, MqttConnector)
    pub = Publisher(mosquitto.port, "publisher-poison")
    expected: dict[tuple[str, int], float] = {}
    codes: dict[str, int] = {}
    i = 0

    def valid(n: int) -> None:
        nonlocal i
        for _ in range(n):
            topic, payload, key = single(i)
            pub.publish(topic, payload, [key])
            expected[key] = payload["value"]  # type: ignore[assignment]
            i += 1

    def produce() -> None:
        for topic, payload, code in POISON:
            valid(3)
            pub.publish(topic, payload, [])
            codes[code] = codes.get(code, 0) + 1
            valid(2)
        items: list[object] = []
        for j, (item, code) in enumerate(BATCH_POISON):
            topic, payload, key = single(50_000 + j)
            items += [item, {"topic": topic, **payload}]
            expected[key] = payload["value"]  # type: ignore[assignment]
            codes[code] = codes.get(code, 0) + 1
            valid(1)
        pub.publish("pilot/pilot-1/batch", {"readings": items}, [])
        valid(3)
        pub.publish(GAP, _reading(20, note="inject-internal-error"), [])
        codes["internal_error"] = 1
        valid(3)

    try:
        await asyncio.to_thread(produce)
        await asyncio.to_thread(pub.wait_all_acked, 60)
        n_dead = sum(codes.values())
        assert await _wait(lambda: d.store.dead_letter_count() >= n_dead and d.store.count() >= len(expected), 60)
        await asyncio.sleep(0.5)  # anything extra would show now
        assert d.store.count() == len(expected)
        got = await asyncio.to_thread(stored_keys, d)
        assert got == pytest.approx(expected)
        rows = d.store.dead_letters(limit=1000)
        by_code: dict[str, int] = {}
        for r in rows:
            by_code[r["reason_code"]] = by_code.get(r["reason_code"], 0) + 1
            assert r["reason"] and len(r["payload"]) <= 4096 and len(r["reason"]) <= 512
        assert by_code == codes
        internal = [r for r in rows if r["reason_code"] == "internal_error"]
        assert "KeyError" in internal[0]["reason"] and "inject-internal-error" in internal[0]["payload"]
        # every message, poison or not, was acknowledged to the broker after its commit
        messages = len(pub.mid_to_keys)  # every publish, poison or valid
        assert await _wait(lambda: conn.counters.extra["acked"] == messages, 10), conn.describe()
        assert conn.counters.extra["messages"] == messages
        assert conn.counters.extra["internal_errors"] == 1 and conn.counters.extra["loop_errors"] == 0
        assert conn.counters.reconnects == 0 and conn.counters.connected
        assert conn.describe()["last_error"].startswith("mqtt_callback: KeyError")  # type: ignore[union-attr]
        # still reading: one more valid reading is stored
        topic, payload, key = single(100_000)
        await asyncio.to_thread(pub.publish, topic, payload, [key])
        assert await wait_count(d, len(expected) + 1, 20) == len(expected) + 1
        assert not task.done()
    finally:
        await _stop(d, task, pub)


async def test_topic_with_invalid_utf8_is_a_dead_letter(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """mosquitto refuses a PUBLISH whose topic is not UTF-8, other brokers may pass it on: paho's
    ``msg.topic`` then raises inside the callback. Such a message (a real paho MQTTMessage) handed
    to the running connector becomes a bad_text dead letter; reading goes on."""
    d, task = await start_daemon(mqtt_config(tmp_path, mosquitto.port, "twin-badtopic"))
    conn = d.connectors[0]
    assert isinstance(conn, MqttConnector)
    pub = Publisher(mosquitto.port, "publisher-badtopic")
    try:
        msg = mqtt.MQTTMessage(mid=0, topic=b"pilot/pilot-1/\xff\xfe/gap_actual")
        msg.payload = _reading(30).encode()
        msg.qos = 0
        await asyncio.to_thread(conn._on_message, conn._client, None, msg)
        assert await _wait(lambda: d.store.dead_letter_count() == 1, 20)
        row = d.store.dead_letters(limit=10)[0]
        assert row["reason_code"] == "bad_text" and "not valid UTF-8" in row["reason"]
        assert row["address"] == "pilot/pilot-1/\\xff\\xfe/gap_actual"
        topic, payload, key = single(5)
        await asyncio.to_thread(pub.publish, topic, payload, [key])
        assert await wait_count(d, 1, 20) == 1
        assert conn.counters.extra["internal_errors"] == 0
    finally:
        await _stop(d, task, pub)


async def test_a_raising_network_loop_reconnects_and_loses_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A fault outside the guarded callback (injected: paho's on_message raises once) ends paho's
    network loop. The connector counts it, drops that connection and reconnects with backoff; the
    broker redelivers what was not acknowledged; everything is stored exactly once."""
    d, task = await start_daemon(mqtt_config(tmp_path, mosquitto.port, "twin-loop"))
    conn = d.connectors[0]
    assert isinstance(conn, MqttConnector)
    pub = Publisher(mosquitto.port, "publisher-loop")
    raised: list[int] = []

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if b'"value": 77.0' in msg.payload and not raised:
            raised.append(msg.mid)
            raise RuntimeError("injected fault in paho's loop")
        conn._on_message(client, userdata, msg)

    conn._client.on_message = on_message
    expected: dict[tuple[str, int], float] = {}

    def produce() -> None:
        for k in range(600):
            topic, payload, key = single(k)
            if k == 300:  # a gap_actual reading (300 % 5 == 0) with a value the fault recognises
                payload = {**payload, "value": 77.0}
            pub.publish(topic, payload, [key])
            expected[key] = payload["value"]  # type: ignore[assignment]

    try:
        await asyncio.to_thread(produce)
        await asyncio.to_thread(pub.wait_all_acked, 60)
        assert await wait_count(d, len(expected), 60) == len(expected)
        await asyncio.sleep(0.5)
        assert d.store.count() == len(expected)
        got = await asyncio.to_thread(stored_keys, d)
        assert got == pytest.approx(expected)
        assert raised and conn.counters.extra["loop_errors"] == 1
        assert conn.counters.reconnects >= 1 and conn.counters.connected
        assert "injected fault" in (conn.describe()["last_error"] or "")  # type: ignore[operator]
        assert d.store.dead_letter_count() == 0
        topic, payload, key = single(10_000)
        await asyncio.to_thread(pub.publish, topic, payload, [key])
        assert await wait_count(d, len(expected) + 1, 20) == len(expected) + 1
    finally:
        await _stop(d, task, pub)


# ---- property-based: the payload parser never raises and lets nothing unstorable through ----------

_any_text = st.text(st.characters(blacklist_categories=()), max_size=40)  # surrogates and NUL included
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**400, 10**400), st.floats(), _any_text,
                     st.sampled_from([1e308, -1e308, 10**30, "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00",
                                      "2026-11-22T10:00:00Z", T0, T0 + 0.5, "1/0", "m**99999999", "um"]))
_json = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(_any_text, inner, max_size=4)), max_leaves=20)
_field_keys = st.sampled_from(["ts", "value", "unit", "roll", "web_pos_m", "quality", "topic"])
_reading_obj = st.dictionaries(_field_keys, _json, max_size=7)
_batch_obj = st.fixed_dictionaries({"readings": st.lists(st.one_of(_reading_obj, _json), max_size=6)})


def _storable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in s


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=60), _any_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
                 st.sampled_from([b"pilot/pilot-1/calendering/gap_actual", b"pilot/pilot-1/batch",
                                  b"pilot/\xff/batch", b"x" * 600])),
       st.one_of(_reading_obj.map(lambda o: json.dumps(o).encode()), _batch_obj.map(lambda o: json.dumps(o).encode()),
                 _json.map(lambda o: json.dumps(o).encode()), st.binary(max_size=80)))
def test_fuzz_parse_payload_never_raises_and_bounds_everything(topic: bytes, payload: bytes) -> None:
    readings, dead = parse_payload(topic, payload, 1, connector="fuzz")
    try:  # what the message holds: the items of a well-formed batch, else one reading or dead letter
        items = json.loads(payload)["readings"] if topic.decode("utf-8").endswith("/batch") and len(topic) <= 512 \
            else None
    except Exception:  # noqa: BLE001 - fuzzed bytes: any failure means "not a well-formed batch"
        items = None
    assert len(readings) + len(dead) == (len(items) if isinstance(items, list) else 1)
    for r in readings:
        assert type(r) is _RawReading
        assert _storable(r.address) and len(r.address) <= MAX_ADDRESS
        assert r.roll_id is None or (_storable(r.roll_id) and len(r.roll_id) <= MAX_ROLL)
        assert r.unit is None or (isinstance(r.unit, str) and _storable(r.unit) and len(r.unit) <= MAX_UNIT)
        assert r.source_ts_ns is None or -(2**63) <= r.source_ts_ns < 2**63
        assert r.web_pos_m is None or math.isfinite(r.web_pos_m)
        assert not isinstance(r.value, (list, dict))
        assert not isinstance(r.value, str) or _storable(r.value)
    for d in dead:
        assert d.reason_code in ("malformed_payload", "bad_timestamp", "bad_text", "wrong_type"), d.reason_code
        assert _storable(d.address) and _storable(d.payload) and _storable(d.reason)
        assert len(d.address) <= MAX_ADDRESS and len(d.payload) <= MAX_PAYLOAD_TEXT and len(d.reason) <= MAX_REASON
