"""Declarative payload field mapping per topic pattern (``[[connectors.payloads]]``; no paho import).

A mapping tells where a message's value, timestamp, quality and unit are, for payloads that are not
the built-in format (connectors.mqtt.payload): a plain number (``61.3``), custom field names
(``{"v": 1.2, "t": "2026-12-03 10:00:00"}``), timestamps in another format or without offset (they
take the mapping's time zone), several readings in one message (a list path, optionally with a name
per item that extends the topic into the reading's address).

Like :func:`connectors.mqtt.payload.parse_payload`, :meth:`PayloadMapper.parse` never raises: bad
input becomes a dead letter with a reason code (``malformed_payload``, ``bad_timestamp``,
``bad_text``, ``wrong_type``). Topics no mapping matches return ``None`` and keep the built-in
format, unchanged.

Cost: the matching mapping of a topic is cached (bounded); a topic without mapping costs one dict
lookup per message.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from connectors.base import storable_text
from connectors.mqtt.config import PayloadFormat, PayloadMapping, TimestampPolicy
from connectors.mqtt.payload import (
    MAX_ADDRESS,
    MAX_PAYLOAD_TEXT,
    MAX_REASON,
    MAX_TEXT,
    MAX_UNIT,
    TS_MAX_NS,
    TS_MIN_NS,
    _dead,
    _short,
    text_problem,
)
from core.samples import DeadLetter, Quality, RawReading, SourceKind

_SOURCE = SourceKind.MQTT
_MISSING = object()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CACHE_MAX = 10_000
_EPOCH_SCALE = {"epoch_s": 1_000_000_000, "epoch_ms": 1_000_000, "epoch_us": 1_000, "epoch_ns": 1}


def topic_regex(pattern: str) -> re.Pattern[str]:
    """An MQTT subscription pattern (``+``, ``#``) as a regex over topic names."""
    parts = []
    for level in pattern.split("/"):
        if level == "#":
            parts.append(".*")
            break
        parts.append("[^/]+" if level == "+" else re.escape(level))
    rx = "/".join(parts)
    if pattern.endswith("/#"):  # 'a/#' also matches 'a' itself
        rx = rx[: -len("/.*")] + "(?:/.*)?"
    return re.compile("^" + rx + "$")


def _compile_path(path: str | None) -> tuple[bool, tuple[str | int, ...]] | None:
    """(from the root?, keys) of a dotted path; list indices become ints."""
    if path is None:
        return None
    if path in (".", "$"):
        return path == "$", ()
    root = path.startswith("$.")
    body = path[2:] if root else path
    return root, tuple(int(k) if k.isdigit() else k for k in body.split("."))


def _get(item: Any, root: Any, path: tuple[bool, tuple[str | int, ...]]) -> Any:
    obj = root if path[0] else item
    for k in path[1]:
        if isinstance(obj, dict):
            obj = obj.get(k if isinstance(k, str) else str(k), _MISSING)
            if obj is _MISSING:
                return obj
        elif isinstance(obj, list) and isinstance(k, int) and k < len(obj):
            obj = obj[k]
        else:
            return _MISSING
    return obj


def _dt_ns(dt: datetime) -> int:
    delta = dt - _EPOCH  # exact integer arithmetic
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


class CompiledMapping:
    def __init__(self, m: PayloadMapping, default_policy: TimestampPolicy) -> None:
        self.spec = m
        self.rx = topic_regex(m.topic)
        self.number = m.format is PayloadFormat.NUMBER
        self.value = _compile_path(m.value)
        self.ts = _compile_path(m.timestamp)
        self.ts_format = m.timestamp_format
        self.zone = ZoneInfo(m.timezone)
        self.quality = _compile_path(m.quality)
        self.quality_map = {k: Quality.parse(v.value) for k, v in m.quality_map.items()}
        self.unit = m.unit
        self.unit_path = _compile_path(m.unit_path)
        self.readings = _compile_path(m.readings)
        self.address = _compile_path(m.address)
        self.fill_receive_time = (m.missing_timestamp or default_policy) is TimestampPolicy.RECEIVE_TIME

    # -- fields ----------------------------------------------------------------------------------
    def timestamp_ns(self, raw: Any) -> int:
        """ns since the epoch; ValueError for anything that is not a time of the configured format."""
        fmt = self.ts_format
        if isinstance(raw, bool):
            raise ValueError(f"{raw!r} is not a time")
        try:
            if fmt in _EPOCH_SCALE or (fmt == "auto" and isinstance(raw, (int, float))):
                scale = _EPOCH_SCALE.get(fmt, 1_000_000_000)
                if isinstance(raw, str):
                    raw = float(raw) if any(c in raw for c in ".eE") else int(raw)
                if isinstance(raw, int):
                    if abs(raw) > 2**63 * 4:
                        raise ValueError(f"{_short(raw)} overflows")
                    ns = raw * scale
                elif isinstance(raw, float):
                    if not math.isfinite(raw) or abs(raw) > 1e19:
                        raise ValueError(f"{raw!r} is not a finite time")
                    ns = int(round(raw * scale))
                else:
                    raise ValueError(f"{_short(raw)} is not a number of {fmt.removeprefix('epoch_')}")
            else:
                if not isinstance(raw, str):
                    raise ValueError(f"{_short(raw)} is not a time text")
                if len(raw) > 64:
                    raise ValueError("longer than 64 characters")
                if "%" in fmt:
                    dt = datetime.strptime(raw, fmt)
                else:
                    text = raw.strip()
                    if text[-1:] in ("Z", "z"):
                        text = text[:-1] + "+00:00"
                    dt = datetime.fromisoformat(text)
                if dt.tzinfo is None:
                    dt = dt.replace(tzinfo=self.zone)  # a naive time is in the configured zone
                ns = _dt_ns(dt)
        except (ValueError, TypeError, OverflowError, ArithmeticError) as err:
            raise ValueError(storable_text(str(err), 200) or f"{_short(raw)} is not a time") from err
        if not TS_MIN_NS <= ns <= TS_MAX_NS:
            raise ValueError(f"{_short(raw)} is outside what the store holds (1677-09-21 .. 2262-04-11 UTC)")
        return ns

    def reading(self, item: Any, root: Any, address: str, recv: int, connector: str,
                raw_text: str) -> RawReading | DeadLetter:
        value = item if self.number else _get(item, root, self.value)  # type: ignore[arg-type]
        if value is _MISSING:
            return _dead(address, raw_text, "malformed_payload", f"no value at {self.spec.value!r}", recv, connector)
        if isinstance(value, (list, dict)) or value is None:
            return _dead(address, raw_text, "wrong_type", f"the value at {self.spec.value!r} must be a number or a "
                         f"string, got {'null' if value is None else type(value).__name__}", recv, connector)
        if isinstance(value, str):
            why = text_problem(value, MAX_TEXT)
            if why is not None:
                return _dead(address, raw_text, "bad_text", f"string value: {why}", recv, connector)
        ts: int | None
        raw_ts = _MISSING if self.ts is None or self.number else _get(item, root, self.ts)
        if raw_ts is _MISSING or raw_ts is None:
            ts = recv if (self.fill_receive_time or self.number) else None
        else:
            try:
                ts = self.timestamp_ns(raw_ts)
            except ValueError as err:
                return _dead(address, raw_text, "bad_timestamp", f"bad timestamp at {self.spec.timestamp!r}: {err}",
                             recv, connector)
        quality = Quality.GOOD
        if self.quality is not None:
            q = _get(item, root, self.quality)
            if q is not _MISSING and q is not None:
                mapped = self.quality_map.get(q if isinstance(q, str) else _short(q)) if self.quality_map else None
                if mapped is not None:
                    quality = mapped
                else:
                    try:
                        quality = Quality.parse(q)
                    except (ValueError, TypeError, OverflowError):
                        return _dead(address, raw_text, "malformed_payload",
                                     f"unknown quality {_short(q)}: expected good, uncertain, bad or a quality_map "
                                     "entry", recv, connector)
        unit = self.unit
        if self.unit_path is not None:
            u = _get(item, root, self.unit_path)
            if u is not _MISSING and u is not None:
                if not isinstance(u, str):
                    return _dead(address, raw_text, "malformed_payload", f"the unit must be a string, got {_short(u)}",
                                 recv, connector)
                why = text_problem(u, MAX_UNIT)
                if why is not None:
                    return _dead(address, raw_text, "bad_text", f"unit: {why}", recv, connector)
                unit = u
        return RawReading(_SOURCE, address, value, ts, recv, unit, quality, None, None, None, connector)


def _item_text(item: Any) -> str:
    try:
        return json.dumps(item, allow_nan=True)
    except (RecursionError, ValueError, TypeError, OverflowError):
        return f"<item: {type(item).__name__}>"


class PayloadMapper:
    """The connector's ``payloads`` mappings, compiled; :meth:`parse` never raises."""

    def __init__(self, mappings: list[PayloadMapping], default_policy: TimestampPolicy) -> None:
        self.mappings = [CompiledMapping(m, default_policy) for m in mappings]
        self._cache: dict[bytes, CompiledMapping | None] = {}

    def match(self, topic: bytes) -> CompiledMapping | None:
        hit = self._cache.get(topic, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[return-value]
        found = None
        try:
            text = topic.decode("utf-8")
        except UnicodeDecodeError:
            text = None  # the built-in parser makes the dead letter
        if text is not None:
            for m in self.mappings:
                if m.rx.match(text):
                    found = m
                    break
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[bytes(topic)] = found
        return found

    def parse(self, m: CompiledMapping, topic_b: bytes, payload: bytes | bytearray, recv: int, *, connector: str = "mqtt",
              max_bytes: int = 4 * 1024 * 1024) -> tuple[list[RawReading], list[DeadLetter]]:
        """Readings and dead letters of one message on a topic that ``m`` matched (never raises)."""
        topic = topic_b.decode("utf-8")  # match() decoded it already
        why = text_problem(topic, MAX_ADDRESS)
        if why is not None:
            return [], [_dead(topic, payload[:MAX_PAYLOAD_TEXT].decode("utf-8", "replace"), "bad_text",
                              f"topic: {why}", recv, connector)]
        if len(payload) > max_bytes:
            return [], [_dead(topic, payload[:1024].decode("utf-8", "replace"), "malformed_payload",
                              f"payload of {len(payload)} bytes exceeds max_payload_bytes={max_bytes}", recv,
                              connector)]
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as err:
            return [], [_dead(topic, payload[:MAX_PAYLOAD_TEXT // 2].hex(), "malformed_payload",
                              f"payload is not UTF-8: {err}", recv, connector)]
        if m.number:
            try:
                value: Any = float(text.strip()) if len(text) <= 64 else None
            except ValueError:
                value = None
            if value is None:
                return [], [_dead(topic, text, "malformed_payload", "payload is not a plain number (format = "
                                  f"'number', mapping {m.spec.topic!r})", recv, connector)]
            r = m.reading(value, value, topic, recv, connector, text)
            return ([r], []) if type(r) is RawReading else ([], [r])  # type: ignore[list-item]
        try:
            obj = json.loads(text)
        except RecursionError:
            return [], [_dead(topic, text, "malformed_payload", "invalid JSON: nested too deeply", recv, connector)]
        except ValueError as err:  # JSONDecodeError, or an integer beyond int()'s digit limit
            return [], [_dead(topic, text, "malformed_payload", f"invalid JSON: {err}", recv, connector)]
        if m.readings is None:
            r = m.reading(obj, obj, topic, recv, connector, text)
            return ([r], []) if type(r) is RawReading else ([], [r])  # type: ignore[list-item]
        items = _get(obj, obj, m.readings)
        if not isinstance(items, list):
            return [], [_dead(topic, text, "malformed_payload", f"no list at {m.spec.readings!r}", recv, connector)]
        readings: list[RawReading] = []
        dead: list[DeadLetter] = []
        for i, item in enumerate(items):
            address = topic
            if m.address is not None:
                name = _get(item, obj, m.address)
                if isinstance(name, int) and not isinstance(name, bool):
                    name = str(name)
                if not isinstance(name, str) or not name:
                    dead.append(_dead(topic, _item_text(item), "malformed_payload",
                                      f"item {i} has no name at {m.spec.address!r}", recv, connector))
                    continue
                address = f"{topic}/{name}"
                why = text_problem(address, MAX_ADDRESS)
                if why is not None:
                    dead.append(_dead(topic, _item_text(item), "bad_text", f"item {i}: address: {why}", recv,
                                      connector))
                    continue
            r = m.reading(item, obj, address, recv, connector, "")
            if type(r) is RawReading:
                readings.append(r)
            else:  # the item's text only for a dead letter
                dead.append(DeadLetter(r.source, r.address, storable_text(_item_text(item), MAX_PAYLOAD_TEXT),
                                       storable_text(f"item {i}: {r.reason}", MAX_REASON), r.reason_code, r.received_ts_ns, r.connector))  # type: ignore[union-attr]
        return readings, dead
