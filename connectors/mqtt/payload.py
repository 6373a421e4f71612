"""MQTT payload schema and parsing (pure functions; no paho import).

Single reading, published on the tag's own topic::

    {"ts": "2026-11-22T10:00:00.120Z", "value": 61.3, "unit": "um",
     "quality": "good", "roll": "R-0042", "web_pos_m": 812.5}

Only ``value`` is required (``ts`` too under the default ``missing_timestamp = "reject"``).
``ts`` is ISO 8601 with an offset or epoch seconds. ``unit`` overrides the tag map's source unit.

Batch, published on ``<anything>/batch``::

    {"readings": [{"topic": "pilot/line-1/calendering/gap_actual", "ts": ..., "value": ...}, ...]}

Each item is a single reading plus ``topic``, the address the tag map matches.

Hostile input: :func:`parse_payload` never raises. Everything a later stage or the store could
choke on is refused here, each as a dead letter with its reason code:

- ``malformed_payload``: not UTF-8, not JSON, a number with more digits than Python's int parser
  takes (``ValueError`` inside ``json.loads``), nesting deeper than the JSON parser's recursion
  limit, a value that is a list or object, a roll id that is not a string or an integer, a
  web position that is not a finite number of float range;
- ``bad_timestamp``: a ``ts`` that is not a time, that overflows (``1e308`` epoch seconds), or that
  lies outside what the store holds (int64 nanoseconds: 1677-09-21 .. 2262-04-11);
- ``bad_text``: a topic, roll id, unit or string value that is not valid Unicode (lone surrogates
  from ``\\ud800`` escapes, invalid UTF-8 in the topic), contains NUL, or is longer than its limit
  (:data:`MAX_ADDRESS`, :data:`MAX_ROLL`, :data:`MAX_UNIT`, :data:`MAX_TEXT`).

Every text a dead letter carries is made storable (:func:`connectors.base.storable_text`): at most
:data:`MAX_PAYLOAD_TEXT` characters of payload, :data:`MAX_REASON` of reason.
"""

from __future__ import annotations

import json
import math
from typing import Any

from connectors.base import storable_text
from core.samples import DeadLetter, Quality, RawReading, SourceKind, parse_time_ns

_SOURCE = SourceKind.MQTT

MAX_ADDRESS = 512  # characters of a topic (or a batch item's topic)
MAX_ROLL = 128  # characters of a roll id
MAX_UNIT = 64  # characters of a unit (ontology.units refuses longer ones too)
MAX_TEXT = 1024  # characters of a string value
MAX_PAYLOAD_TEXT = 4096  # characters of payload a dead letter keeps
MAX_REASON = 512  # characters of a dead letter's reason
TS_MIN_NS, TS_MAX_NS = -(2**63), 2**63 - 1  # what the store holds (int64 ns)


def _dead(topic: str, payload: str, code: str, reason: str, recv: int, connector: str) -> DeadLetter:
    return DeadLetter(_SOURCE, storable_text(topic, MAX_ADDRESS), storable_text(payload, MAX_PAYLOAD_TEXT),
                      storable_text(reason, MAX_REASON), code, recv, connector)


def text_problem(s: str, limit: int) -> str | None:
    """Why ``s`` cannot be stored as text (None: it can): too long, NUL, or not valid Unicode."""
    if len(s) > limit:
        return f"{len(s)} characters, more than {limit}"
    if "\x00" in s:
        return "contains NUL"
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return "not valid Unicode (lone surrogate)"
    return None


def _short(v: Any) -> str:
    """A bounded repr for a reason (never raises)."""
    return storable_text(v, 80)


def _timestamp(ts_raw: Any) -> int:
    """ns since the epoch within the store's range; ValueError otherwise."""
    try:
        ts = parse_time_ns(ts_raw)
    except (OverflowError, ArithmeticError) as err:
        raise ValueError(f"{_short(ts_raw)} overflows ({err})") from err
    except ValueError as err:
        raise ValueError(storable_text(str(err), 200)) from err
    if not TS_MIN_NS <= ts <= TS_MAX_NS:
        raise ValueError(f"{_short(ts_raw)} is outside what the store holds (1677-09-21 .. 2262-04-11 UTC)")
    return ts


def _reading(obj: Any, address: str, recv: int, connector: str, fill_receive_time: bool,
             raw_text: str) -> RawReading | DeadLetter:
    if not isinstance(obj, dict):
        return _dead(address, raw_text, "malformed_payload",
                     f"a reading is a JSON object, got {type(obj).__name__}", recv, connector)
    if "value" not in obj:
        return _dead(address, raw_text, "malformed_payload", "reading has no 'value' key", recv, connector)
    value = obj["value"]
    if isinstance(value, (list, dict)):
        return _dead(address, raw_text, "wrong_type",
                     f"'value' must be a number or a string, got a JSON {'array' if isinstance(value, list) else 'object'}",
                     recv, connector)
    if isinstance(value, str):
        why = text_problem(value, MAX_TEXT)
        if why is not None:
            return _dead(address, raw_text, "bad_text", f"string value: {why}", recv, connector)
    ts_raw = obj.get("ts")
    if ts_raw is None:
        ts = recv if fill_receive_time else None
    else:
        try:
            ts = _timestamp(ts_raw)
        except ValueError as err:
            return _dead(address, raw_text, "bad_timestamp", f"bad 'ts': {err}", recv, connector)
    quality = Quality.GOOD
    if "quality" in obj:
        try:
            quality = Quality.parse(obj["quality"])
        except (ValueError, TypeError, OverflowError):
            return _dead(address, raw_text, "malformed_payload",
                         f"unknown quality {_short(obj['quality'])}: expected good, uncertain or bad", recv, connector)
    unit = obj.get("unit")
    if unit is not None:
        if not isinstance(unit, str):
            return _dead(address, raw_text, "malformed_payload", f"'unit' must be a string, got {_short(unit)}",
                         recv, connector)
        why = text_problem(unit, MAX_UNIT)
        if why is not None:
            return _dead(address, raw_text, "bad_text", f"'unit': {why}", recv, connector)
    roll = obj.get("roll")
    if roll is not None:
        if isinstance(roll, int) and not isinstance(roll, bool):
            roll = str(roll)  # a roll number (json.loads keeps ints within 4300 digits)
        elif not isinstance(roll, str):
            return _dead(address, raw_text, "malformed_payload",
                         f"'roll' must be a string or an integer, got {type(roll).__name__}", recv, connector)
        why = text_problem(roll, MAX_ROLL)
        if why is not None:
            return _dead(address, raw_text, "bad_text", f"'roll': {why}", recv, connector)
    web = obj.get("web_pos_m")
    if web is not None:
        if isinstance(web, bool) or not isinstance(web, (int, float)):
            return _dead(address, raw_text, "malformed_payload", f"'web_pos_m' must be a number, got {_short(web)}",
                         recv, connector)
        try:
            web = float(web)
        except OverflowError:
            return _dead(address, raw_text, "malformed_payload", "'web_pos_m' does not fit a float", recv, connector)
        if not math.isfinite(web):
            return _dead(address, raw_text, "malformed_payload", f"'web_pos_m' is not finite ({web!r})", recv,
                         connector)
    return RawReading(_SOURCE, address, value, ts, recv, unit, quality, None, roll, web, connector)


def _item_text(item: Any) -> str:
    """A batch item as JSON text for its dead letter (never raises: deep nesting, huge ints)."""
    if isinstance(item, str):
        return item
    try:
        return json.dumps(item, allow_nan=True)
    except (RecursionError, ValueError, TypeError, OverflowError):
        return f"<batch item: {type(item).__name__} that cannot be written back as JSON>"


def parse_payload(topic: str | bytes | bytearray, payload: bytes | bytearray, recv_ns: int, *, connector: str = "mqtt",
                  batch_suffix: str = "batch", fill_receive_time: bool = False,
                  max_bytes: int = 4 * 1024 * 1024) -> tuple[list[RawReading], list[DeadLetter]]:
    """Turn one MQTT message into readings and dead letters. Never raises for any payload or topic
    (``topic`` may be the raw bytes of the PUBLISH packet)."""
    if isinstance(topic, (bytes, bytearray)):
        raw = bytes(topic)
        try:
            topic = raw.decode("utf-8")
        except UnicodeDecodeError:
            shown = raw[:MAX_ADDRESS].decode("utf-8", "backslashreplace")
            return [], [_dead(shown, payload[:MAX_PAYLOAD_TEXT // 2].hex(), "bad_text",
                              "topic is not valid UTF-8", recv_ns, connector)]
    why = text_problem(topic, MAX_ADDRESS)
    if why is not None:
        return [], [_dead(topic, payload[:MAX_PAYLOAD_TEXT].decode("utf-8", "replace"), "bad_text",
                          f"topic: {why}", recv_ns, connector)]
    if len(payload) > max_bytes:
        return [], [_dead(topic, payload[:1024].decode("utf-8", "replace"), "malformed_payload",
                          f"payload of {len(payload)} bytes exceeds max_payload_bytes={max_bytes}", recv_ns, connector)]
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        return [], [_dead(topic, payload[:MAX_PAYLOAD_TEXT // 2].hex(), "malformed_payload",
                          f"payload is not UTF-8: {err}", recv_ns, connector)]
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        return [], [_dead(topic, text, "malformed_payload", f"invalid JSON: {err}", recv_ns, connector)]
    except RecursionError:
        return [], [_dead(topic, text, "malformed_payload", "invalid JSON: nested too deeply", recv_ns, connector)]
    except ValueError as err:  # an integer of more digits than int() accepts (sys.get_int_max_str_digits)
        return [], [_dead(topic, text, "malformed_payload", f"invalid JSON: {err}", recv_ns, connector)]
    is_batch = topic.rsplit("/", 1)[-1] == batch_suffix
    if not is_batch:
        r = _reading(obj, topic, recv_ns, connector, fill_receive_time, text)
        return ([r], []) if type(r) is RawReading else ([], [r])  # type: ignore[list-item]
    if not isinstance(obj, dict) or not isinstance(obj.get("readings"), list):
        return [], [_dead(topic, text, "malformed_payload",
                          "batch payload must be an object with a 'readings' list", recv_ns, connector)]
    readings: list[RawReading] = []
    dead: list[DeadLetter] = []
    for i, item in enumerate(obj["readings"]):
        addr = item.get("topic") if isinstance(item, dict) else None
        if not isinstance(addr, str) or not addr:
            dead.append(_dead(topic, _item_text(item), "malformed_payload",
                              f"batch item {i} has no 'topic' string", recv_ns, connector))
            continue
        why = text_problem(addr, MAX_ADDRESS)
        if why is not None:
            dead.append(_dead(topic, _item_text(item), "bad_text", f"batch item {i}: 'topic': {why}", recv_ns,
                              connector))
            continue
        r = _reading(item, addr, recv_ns, connector, fill_receive_time, "")
        if type(r) is RawReading:
            readings.append(r)
        else:  # the item's text only for a dead letter (json.dumps per good reading would cost)
            dead.append(DeadLetter(r.source, r.address, storable_text(_item_text(item), MAX_PAYLOAD_TEXT),
                                   r.reason, r.reason_code, r.received_ts_ns, r.connector))  # type: ignore[union-attr]
    return readings, dead
