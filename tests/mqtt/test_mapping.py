"""Payload field mapping (connectors/mqtt/mapping.py): pure parsing, no broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from connectors.mqtt.config import MqttConnectorConfig, PayloadMapping, TimestampPolicy
from connectors.mqtt.mapping import PayloadMapper, topic_regex
from connectors.mqtt.payload import parse_payload
from core.samples import Quality, RawReading

RECV = 1_796_000_000_000_000_000


def ns(dt: datetime) -> int:
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def mapper(*maps: dict, policy: TimestampPolicy = TimestampPolicy.REJECT) -> PayloadMapper:
    return PayloadMapper([PayloadMapping.model_validate(m) for m in maps], policy)


def parse(mp: PayloadMapper, topic: str, payload: bytes | str):
    raw = payload.encode() if isinstance(payload, str) else payload
    m = mp.match(topic.encode())
    assert m is not None, topic
    return mp.parse(m, topic.encode(), raw, RECV, connector="t")


def test_plain_number_is_stamped_with_the_receive_time() -> None:
    mp = mapper({"topic": "plant/+/speed", "format": "number", "unit": "m/min"})
    r, d = parse(mp, "plant/l1/speed", " 12.5\n")
    assert d == [] and len(r) == 1
    assert (r[0].address, r[0].value, r[0].source_ts_ns, r[0].unit) == ("plant/l1/speed", 12.5, RECV, "m/min")
    r, d = parse(mp, "plant/l1/speed", "twelve")
    assert r == [] and d[0].reason_code == "malformed_payload" and "plain number" in d[0].reason


def test_custom_fields_naive_timestamp_takes_the_configured_zone() -> None:
    mp = mapper({"topic": "plant/gauge/#", "value": "v", "timestamp": "t", "timezone": "Europe/Berlin"})
    r, d = parse(mp, "plant/gauge/thickness", '{"v": 1.2, "t": "2026-12-03 10:00:00"}')
    assert d == []
    want = datetime(2026, 12, 3, 10, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # 09:00 UTC in winter
    assert r[0].value == 1.2 and r[0].source_ts_ns == ns(want) == ns(datetime(2026, 12, 3, 9, tzinfo=UTC))
    # an offset in the text wins over the zone
    r, _ = parse(mp, "plant/gauge/thickness", '{"v": 1, "t": "2026-12-03T10:00:00+00:00"}')
    assert r[0].source_ts_ns == ns(datetime(2026, 12, 3, 10, tzinfo=UTC))
    # summer time: +02:00
    r, _ = parse(mp, "plant/gauge/thickness", '{"v": 1, "t": "2026-07-01 10:00:00"}')
    assert r[0].source_ts_ns == ns(datetime(2026, 7, 1, 8, tzinfo=UTC))


def test_strptime_and_epoch_formats() -> None:
    mp = mapper({"topic": "a", "value": "d.val", "timestamp": "d.time", "timestamp_format": "%d.%m.%Y %H:%M:%S.%f"},
                {"topic": "b", "value": "x", "timestamp": "ms", "timestamp_format": "epoch_ms"})
    r, d = parse(mp, "a", '{"d": {"val": 3, "time": "03.12.2026 10:00:00.250"}}')
    assert d == [] and r[0].source_ts_ns == ns(datetime(2026, 12, 3, 10, 0, 0, 250000, tzinfo=UTC))
    r, d = parse(mp, "b", '{"x": 4, "ms": 1796292000123}')
    assert d == [] and r[0].source_ts_ns == 1796292000123 * 1_000_000
    r, d = parse(mp, "a", '{"d": {"val": 3, "time": "2026-12-03"}}')
    assert r == [] and d[0].reason_code == "bad_timestamp" and "d.time" in d[0].reason
    r, d = parse(mp, "b", '{"x": 4, "ms": 1e300}')
    assert r == [] and d[0].reason_code == "bad_timestamp"


def test_several_readings_per_message_with_names_quality_and_units() -> None:
    mp = mapper({"topic": "line/+/calender", "readings": "data", "address": "name", "value": "v",
                 "timestamp": "$.ts", "quality": "q", "quality_map": {"192": "good", "0": "bad"},
                 "unit_path": "u", "unit": "mm"})
    payload = {"ts": "2026-12-03T10:00:00Z", "data": [
        {"name": "gap", "v": 0.061, "q": 192},
        {"name": "load", "v": 1.1, "u": "kN/mm", "q": 0},
        {"v": 5},  # no name
        {"name": "temp", "v": [1, 2]},  # not a scalar
    ]}
    r, d = parse(mp, "line/l1/calender", json.dumps(payload))
    t = ns(datetime(2026, 12, 3, 10, tzinfo=UTC))
    assert [(x.address, x.value, x.unit, x.quality, x.source_ts_ns) for x in r] == [
        ("line/l1/calender/gap", 0.061, "mm", Quality.GOOD, t),
        ("line/l1/calender/load", 1.1, "kN/mm", Quality.BAD, t)]
    assert [x.reason_code for x in d] == ["malformed_payload", "wrong_type"]
    assert "item 3" in d[1].reason and '"temp"' in d[1].payload


def test_missing_timestamp_follows_the_policy() -> None:
    mp = mapper({"topic": "a", "value": "v", "timestamp": "t"},
                {"topic": "b", "value": "v", "timestamp": "t", "missing_timestamp": "receive_time"})
    r, d = parse(mp, "a", '{"v": 1}')
    assert r[0].source_ts_ns is None  # the pipeline's missing_timestamp dead letter, like the built-in format
    r, d = parse(mp, "b", '{"v": 1}')
    assert r[0].source_ts_ns == RECV


@pytest.mark.parametrize("payload,code", [
    (b"\xff\xfe", "malformed_payload"), (b"{", "malformed_payload"), (b"[" * 100000, "malformed_payload"),
    (b'{"v": {"a": 1}}', "wrong_type"), (b'{"w": 1}', "malformed_payload"), (b'{"v": "\\ud800"}', "bad_text"),
    (b'{"v": 1, "t": true}', "bad_timestamp"), (b'{"v": 1, "t": "2026-13-45 99:00:00"}', "bad_timestamp"),
    (b'1' * 5000, "malformed_payload"), (b'{"v": 1, "q": "meh"}', "malformed_payload"),
])
def test_bad_input_is_a_dead_letter_never_an_exception(payload: bytes, code: str) -> None:
    mp = mapper({"topic": "x/#", "value": "v", "timestamp": "t", "quality": "q"})
    r, d = mp.parse(mp.match(b"x/y"), b"x/y", payload, RECV)  # type: ignore[arg-type]
    assert r == [] and [x.reason_code for x in d] == [code]


def test_unmapped_topics_keep_the_builtin_format() -> None:
    mp = mapper({"topic": "plant/#", "value": "v"})
    assert mp.match(b"pilot/pilot-1/calendering/gap_actual") is None
    assert mp.match(b"plant") is not None and mp.match(b"plant/a/b") is not None
    r, d = parse_payload(b"pilot/pilot-1/calendering/gap_actual", b'{"ts": 1795000000, "value": 61.3}', RECV)
    assert type(r[0]) is RawReading and r[0].value == 61.3 and d == []
    assert topic_regex("a/+/c").match("a/b/c") and not topic_regex("a/+/c").match("a/b/x/c")


def test_config_refuses_bad_mappings_with_the_field_path() -> None:
    base = {"kind": "mqtt"}
    for bad, text in [({"topic": "a", "timezone": "Mars/Olympus"}, "unknown time zone"),
                      ({"topic": "a", "timestamp_format": "yyyy-mm-dd"}, "strptime"),
                      ({"topic": "a", "format": "number", "readings": "d"}, "format = 'number'"),
                      ({"topic": "a", "value": "a..b"}, "dotted path"),
                      ({"topic": "a", "address": "n"}, "needs readings")]:
        with pytest.raises(ValidationError, match=text):
            MqttConnectorConfig.model_validate({**base, "payloads": [bad]})
