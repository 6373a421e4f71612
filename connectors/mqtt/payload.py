"""MQTT payload schema and parsing (pure functions; no paho import).

Single reading, published on the tag's own topic::

    {"ts": "2026-11-22T10:00:00.120Z", "value": 61.3, "unit": "um",
     "quality": "good", "roll": "R-0042", "web_pos_m": 812.5}

Only ``value`` is required (``ts`` too under the default ``missing_timestamp = "reject"``).
``ts`` is ISO 8601 with an offset or epoch seconds. ``unit`` overrides the tag map's source unit.

Batch, published on ``<anything>/batch``::

    {"readings": [{"topic": "pilot/line-1/calendering/gap_actual", "ts": ..., "value": ...}, ...]}

Each item is a single reading plus ``topic``, the address the tag map matches.
"""

from __future__ import annotations

import json
from typing import Any

from twin.samples import DeadLetter, Quality, RawReading, SourceKind, parse_time_ns

_SOURCE = SourceKind.MQTT


def _dead(topic: str, payload: str, code: str, reason: str, recv: int, connector: str) -> DeadLetter:
    return DeadLetter(_SOURCE, topic, payload, reason, code, recv, connector)


def _reading(obj: Any, address: str, recv: int, connector: str, fill_receive_time: bool,
             raw_text: str) -> RawReading | DeadLetter:
    if not isinstance(obj, dict):
        return _dead(address, raw_text, "malformed_payload",
                     f"a reading is a JSON object, got {type(obj).__name__}", recv, connector)
    if "value" not in obj:
        return _dead(address, raw_text, "malformed_payload", "reading has no 'value' key", recv, connector)
    ts_raw = obj.get("ts")
    if ts_raw is None:
        ts = recv if fill_receive_time else None
    else:
        try:
            ts = parse_time_ns(ts_raw)
        except ValueError as err:
            return _dead(address, raw_text, "bad_timestamp", f"bad 'ts': {err}", recv, connector)
    quality = Quality.GOOD
    if "quality" in obj:
        try:
            quality = Quality.parse(obj["quality"])
        except ValueError as err:
            return _dead(address, raw_text, "malformed_payload", str(err), recv, connector)
    unit = obj.get("unit")
    if unit is not None and not isinstance(unit, str):
        return _dead(address, raw_text, "malformed_payload", f"'unit' must be a string, got {unit!r}", recv, connector)
    roll = obj.get("roll")
    web = obj.get("web_pos_m")
    if web is not None and (isinstance(web, bool) or not isinstance(web, (int, float))):
        return _dead(address, raw_text, "malformed_payload", f"'web_pos_m' must be a number, got {web!r}", recv, connector)
    return RawReading(_SOURCE, address, obj["value"], ts, recv, unit, quality, None,
                      str(roll) if roll is not None else None, float(web) if web is not None else None, connector)


def parse_payload(topic: str, payload: bytes, recv_ns: int, *, connector: str = "mqtt",
                  batch_suffix: str = "batch", fill_receive_time: bool = False,
                  max_bytes: int = 4 * 1024 * 1024) -> tuple[list[RawReading], list[DeadLetter]]:
    """Turn one MQTT message into readings and dead letters. Never raises."""
    if len(payload) > max_bytes:
        return [], [_dead(topic, payload[:1024].decode("utf-8", "replace"), "malformed_payload",
                          f"payload of {len(payload)} bytes exceeds max_payload_bytes={max_bytes}", recv_ns, connector)]
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        return [], [_dead(topic, payload.hex(), "malformed_payload", f"payload is not UTF-8: {err}", recv_ns, connector)]
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        return [], [_dead(topic, text, "malformed_payload", f"invalid JSON: {err}", recv_ns, connector)]
    is_batch = topic.rsplit("/", 1)[-1] == batch_suffix
    if not is_batch:
        r = _reading(obj, topic, recv_ns, connector, fill_receive_time, text)
        return ([r], []) if isinstance(r, RawReading) else ([], [r])
    if not isinstance(obj, dict) or not isinstance(obj.get("readings"), list):
        return [], [_dead(topic, text, "malformed_payload",
                          "batch payload must be an object with a 'readings' list", recv_ns, connector)]
    readings: list[RawReading] = []
    dead: list[DeadLetter] = []
    for i, item in enumerate(obj["readings"]):
        item_text = json.dumps(item, allow_nan=True) if not isinstance(item, str) else item
        addr = item.get("topic") if isinstance(item, dict) else None
        if not isinstance(addr, str) or not addr:
            dead.append(_dead(topic, item_text, "malformed_payload",
                              f"batch item {i} has no 'topic' string", recv_ns, connector))
            continue
        r = _reading(item, addr, recv_ns, connector, fill_receive_time, item_text)
        (readings if isinstance(r, RawReading) else dead).append(r)  # type: ignore[arg-type]
    return readings, dead
