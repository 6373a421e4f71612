"""Ingest validation: RawReading -> Sample | RollEvent | DeadLetter.

Per reading: resolve the address in the compiled tag map, check the type, reject NaN/inf, convert
to the canonical unit (pint, compiled to an affine map), check the range (canonical unit), map the
quality, and attach traceability (the roll now on the line and the web position). Every failure is
a DeadLetter with a precise reason and a short ``reason_code`` for counting.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ontology.tagmap import Tag, TagMap, Traceability, ValueType
from ontology.units import UnitError, affine
from twin.samples import DeadLetter, Quality, RawReading, RollEvent, Sample, SourceKind

REASON_CODES = (
    "unknown_address", "wrong_type", "non_finite", "unknown_unit", "unit_dimension",
    "out_of_range", "missing_timestamp", "bad_timestamp", "malformed_payload", "bad_quality",
)


def payload_text(reading: RawReading) -> str:
    """The raw reading as JSON text for a dead letter (never raises)."""
    body: dict[str, Any] = {"address": reading.address, "value": reading.value}
    if reading.unit is not None:
        body["unit"] = reading.unit
    if reading.source_ts_ns is not None:
        body["source_ts_ns"] = reading.source_ts_ns
    try:
        return json.dumps(body, default=repr, allow_nan=True)
    except (TypeError, ValueError):
        return repr(body)


@dataclass
class TraceState:
    """Roll and web position per (line, step) and per line, as the readings reveal them.

    A sample gets the roll now in its own step (from that step's roll-id tag); a step without a
    roll-id tag falls back to the line's newest roll. The web position comes from a web-position
    tag of the step, or is integrated from a web-speed tag (m/min) since the roll started."""

    roll: dict[str, str] = field(default_factory=dict)  # line -> newest roll of any step
    web_pos_m: dict[str, float] = field(default_factory=dict)  # line -> newest web position
    step_roll: dict[tuple[str, str], str] = field(default_factory=dict)
    step_web: dict[tuple[str, str], float] = field(default_factory=dict)
    speed_at: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)  # (ts, m/min)
    last_roll_value: dict[tuple[str, str], str] = field(default_factory=dict)


class Tagger:
    def __init__(self, tagmap: TagMap, default_line_id: str) -> None:
        self.tagmap = tagmap
        self.default_line_id = default_line_id
        self.trace = TraceState()
        self._exact = tagmap._exact  # the hot path skips a method call for exact addresses

    def _dead(self, r: RawReading, code: str, reason: str, line: str | None = None) -> DeadLetter:
        return DeadLetter(r.source, r.address, payload_text(r), reason, code, r.received_ts_ns,
                          r.connector, line or r.line_id)

    def tag(self, r: RawReading) -> Sample | RollEvent | DeadLetter | None:
        """None: a repeated roll id (the roll did not change)."""
        # SourceKind is a str enum: it hashes and compares like "mqtt", so it is the dict key itself
        b = self._exact.get((r.source, r.address)) or self.tagmap.resolve(r.source, r.address)
        if b is None:
            return self._dead(r, "unknown_address",
                              f"unknown {r.source.value} address {r.address!r}: no tag map entry matches")
        tag: Tag = b.tag
        line = r.line_id or b.line_id or self.default_line_id
        if r.source_ts_ns is None:
            return self._dead(r, "missing_timestamp", f"{tag.id}: reading has no source timestamp", line)
        v = r.value
        if tag.value_type is ValueType.STRING:
            if not isinstance(v, str) or not v.strip():
                return self._dead(r, "wrong_type",
                                  f"{tag.id}: expected a non-empty string, got {type(v).__name__} {v!r}", line)
            roll = v.strip()
            key = (line, tag.id)
            if self.trace.last_roll_value.get(key) == roll:
                return None  # unchanged roll id: nothing to store
            self.trace.last_roll_value[key] = roll
            if tag.traceability is Traceability.ROLL_ID:
                self.trace.roll[line] = roll
                self.trace.step_roll[(line, tag.step)] = roll
                self.trace.step_web[(line, tag.step)] = 0.0  # a new roll starts at 0 m
                self.trace.web_pos_m[line] = 0.0
                spd = self.trace.speed_at.get((line, tag.step))
                if spd is not None:  # integrate the new roll from its start
                    self.trace.speed_at[(line, tag.step)] = (r.source_ts_ns, spd[1])
            return RollEvent(line, tag.step, roll, r.source_ts_ns, tag.id)
        if v is None and r.quality is Quality.BAD:
            return self._dead(r, "bad_quality", f"{tag.id}: the source reports bad quality and no value", line)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return self._dead(r, "wrong_type", f"{tag.id}: expected a number, got {type(v).__name__} {v!r}", line)
        x = float(v)
        if not math.isfinite(x):
            return self._dead(r, "non_finite", f"{tag.id}: value {x!r} is not finite", line)
        unit = r.unit
        if unit is None:
            unit = b.source_unit
        if unit != tag.unit:
            try:
                a, c = affine(unit, tag.unit)
            except UnitError as err:
                return self._dead(r, err.code, f"{tag.id}: {err}", line)
            x = a * x + c
        if not (tag.lo <= x <= tag.hi):
            return self._dead(r, "out_of_range",
                              f"{tag.id}: value {x:g} {tag.unit} outside allowed range [{tag.lo:g}, {tag.hi:g}] {tag.unit}",
                              line)
        trace = self.trace
        if tag.traceability is not Traceability.NONE:
            key = (line, tag.step)
            if tag.traceability is Traceability.WEB_POSITION:
                trace.web_pos_m[line] = trace.step_web[key] = x
            elif tag.traceability is Traceability.WEB_SPEED:
                prev = trace.speed_at.get(key)
                if prev is not None and r.source_ts_ns > prev[0]:
                    pos = trace.step_web.get(key, 0.0) + prev[1] / 60.0 * (r.source_ts_ns - prev[0]) / 1e9
                    trace.web_pos_m[line] = trace.step_web[key] = pos
                trace.speed_at[key] = (r.source_ts_ns, x)
        roll = r.roll_id
        if roll is None:
            roll = trace.step_roll.get((line, tag.step)) or trace.roll.get(line)
        web = r.web_pos_m
        if web is None:
            web = trace.step_web.get((line, tag.step))
            if web is None:
                web = trace.web_pos_m.get(line)
        return Sample(line, tag.id, x, tag.unit, r.source_ts_ns, r.received_ts_ns, r.quality, roll, web)

    def _trace_first(self, r: RawReading) -> int:
        b = self.tagmap.resolve(r.source.value, r.address)
        return 0 if b is not None and b.tag.traceability is not Traceability.NONE else 1

    def tag_batch(self, readings: "tuple[RawReading, ...] | list[RawReading]") -> "list[Sample | RollEvent | DeadLetter | None]":
        """Tag a delivery. Readings that share a source timestamp (one row of a recording, one
        OPC-UA publish) are a row: its roll id and web position apply to all of it, wherever the
        columns stand."""
        out: list[Sample | RollEvent | DeadLetter | None] = []
        tag = self.tag
        i, n = 0, len(readings)
        while i < n:
            ts = readings[i].source_ts_ns
            j = i + 1
            while j < n and readings[j].source_ts_ns == ts:
                j += 1
            if j - i == 1:
                out.append(tag(readings[i]))
            else:
                out.extend(tag(r) for r in sorted(readings[i:j], key=self._trace_first))
            i = j
        return out
