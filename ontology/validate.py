"""Ingest validation: RawReading -> Sample | RollEvent | DeadLetter.

Per reading: resolve the address in the compiled tag map, check the type, reject NaN/inf, convert
to the canonical unit (pint, compiled to an affine map), check the range (canonical unit), map the
quality, and attach traceability (the roll now on the line and the web position). Every failure is
a DeadLetter with a precise reason and a short ``reason_code`` for counting.

:meth:`Tagger.tag` does this for one reading. :meth:`Tagger.tag_batch`, which the pipeline calls per
delivery, gives the same results from one loop over tuples compiled when the tagger is made (per
address: tag id, canonical unit, range, step, line, the affine maps from pint per unit the readings
state); a reading that fails a check, and a roll id that changes, goes through :meth:`Tagger.tag`,
so its dead letter or roll event is the one :meth:`Tagger.tag` makes (docs/performance.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from ontology.tagmap import Binding, Tag, TagMap, Traceability, ValueType
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


# what tag_batch keeps per address: (kind, tag id, canonical unit, lo, hi, step, line id from the address,
# {unit the reading states -> (a, c), or None for no conversion}, traceability tag?, traceability)
_Entry = tuple[int, str, str, float, float, str, "str | None", "dict[str | None, tuple[float, float] | None]",
               bool, Traceability]
_NUMBER, _TRACE_NUMBER, _STRING = 0, 1, 2  # kinds: the loop tags numbers itself, the others in _tag_other


class Tagger:
    CACHE_LIMIT = 100_000  # concrete addresses (MQTT topics) tag_batch keeps beyond the exact ones

    def __init__(self, tagmap: TagMap, default_line_id: str) -> None:
        self.tagmap = tagmap
        self.default_line_id = default_line_id
        self.trace = TraceState()
        self._exact = tagmap._exact  # the hot path skips a method call for exact addresses
        self.cache_misses = 0  # addresses resolved through the tag map by tag_batch (then kept)
        self.cache_resets = 0  # times the kept topics reached CACHE_LIMIT and were dropped
        self._build_fast()

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
        try:
            x = float(v)
        except OverflowError:  # an int beyond the float range (> ~1.8e308)
            return self._dead(r, "non_finite", f"{tag.id}: integer value with {len(str(abs(v)))} digits does not "
                                               "fit a float (overflow)", line)
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
            self._advance_trace(tag.traceability, line, tag.step, x, r.source_ts_ns)
        roll = r.roll_id
        if roll is None:
            roll = trace.step_roll.get((line, tag.step)) or trace.roll.get(line)
        web = r.web_pos_m
        if web is None:
            web = trace.step_web.get((line, tag.step))
            if web is None:
                web = trace.web_pos_m.get(line)
        return Sample(line, tag.id, x, tag.unit, r.source_ts_ns, r.received_ts_ns, r.quality, roll, web)

    def _advance_trace(self, traceability: Traceability, line: str, step: str, x: float, ts: int) -> None:
        """A valid number of a web-position or web-speed tag moves the web position."""
        trace = self.trace
        key = (line, step)
        if traceability is Traceability.WEB_POSITION:
            trace.web_pos_m[line] = trace.step_web[key] = x
        elif traceability is Traceability.WEB_SPEED:
            prev = trace.speed_at.get(key)
            if prev is not None and ts > prev[0]:
                pos = trace.step_web.get(key, 0.0) + prev[1] / 60.0 * (ts - prev[0]) / 1e9
                trace.web_pos_m[line] = trace.step_web[key] = pos
            trace.speed_at[key] = (ts, x)

    def _trace_first(self, r: RawReading) -> int:
        b = self.tagmap.resolve(r.source.value, r.address)
        return 0 if b is not None and b.tag.traceability is not Traceability.NONE else 1

    def tag_batch_per_reading(self, readings: "tuple[RawReading, ...] | list[RawReading]") -> "list[Sample | RollEvent | DeadLetter | None]":
        """The reference batch path: :meth:`tag` per reading, rows sorted trace-first. Same results
        as :meth:`tag_batch` (kept for the equivalence tests and the benchmark's old/new ratio)."""
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

    # -- the compiled batch path ------------------------------------------------------------------
    def _compile_entry(self, b: Binding | None) -> _Entry | None:
        """A binding -> the tuple the batch loop unpacks (None: an address without a tag)."""
        if b is None:
            return None
        tag = b.tag
        trace = tag.traceability is not Traceability.NONE
        kind = _STRING if tag.value_type is ValueType.STRING else _TRACE_NUMBER if trace else _NUMBER
        su = b.source_unit
        # unit the reading states (None: the source's unit) -> (a, c), or None for no conversion
        units: dict[str | None, tuple[float, float] | None] = {tag.unit: None}
        units[su] = None if su == tag.unit else affine(su, tag.unit)
        units[None] = units[su]
        return (kind, tag.id, tag.unit, tag.lo, tag.hi, tag.step, b.line_id, units, trace, tag.traceability)

    def _build_fast(self) -> None:
        fast: dict[str, dict[str, _Entry | None]] = {}
        for (source, address), b in self.tagmap._exact.items():
            fast.setdefault(source, {})[address] = self._compile_entry(b)
        self._fast = fast
        self._fast_exact = {k: dict(v) for k, v in fast.items()}
        self._fast_added = 0

    def _fast_miss(self, source: str, address: str) -> _Entry | None:
        """An address that is not in the compiled dicts yet (an MQTT topic matched by a pattern, or
        no tag at all): resolved once through the tag map, then kept, at most ``CACHE_LIMIT``."""
        self.cache_misses += 1
        e = self._compile_entry(self.tagmap.resolve(source, address))
        if self._fast_added >= self.CACHE_LIMIT:  # bounded: drop every kept topic, keep the exact ones
            self._fast = {k: dict(v) for k, v in self._fast_exact.items()}
            self._fast_added = 0
            self.cache_resets += 1
        self._fast.setdefault(source, {})[address] = e
        self._fast_added += 1
        return e

    UNITS_PER_ENTRY = 16  # units a reading states that one compiled entry keeps beyond its own
    UNITS_KEPT = 4096  # such units kept over all entries; then all are dropped and learnt again

    def _unit_miss(self, entry: _Entry, unit: str) -> tuple[float, float] | None | bool:
        """(a, c) for a unit the reading states that this entry has not seen; False: refused.

        Bounded under a hostile sender: a refused unit is never kept (the reading goes through
        :meth:`tag`, which makes its dead letter; ontology.units caches the refusal, bounded); a
        unit is kept only in its normal form (no surrounding white space, so the variants of one
        unit take at most one slot plus its fixed aliases), at most UNITS_PER_ENTRY per entry and
        UNITS_KEPT in all; past that, all kept ones are dropped and learnt again as readings come."""
        try:
            ac = affine(unit, entry[2])
        except UnitError:  # affine raises nothing else, for any input
            return False
        if unit.strip() != unit:
            return ac  # converted through the normalised cache of ontology.units every time
        units = entry[7]
        if len(units) >= 3 + self.UNITS_PER_ENTRY:  # 3: the entry's own unit, source unit and None
            return ac
        kept: list[tuple[dict[str | None, tuple[float, float] | None], str]] = \
            self.__dict__.setdefault("_units_kept", [])
        if len(kept) >= self.UNITS_KEPT:
            for d, u in kept:
                d.pop(u, None)
            kept.clear()
            self.unit_cache_resets = getattr(self, "unit_cache_resets", 0) + 1
        units[unit] = ac
        kept.append((units, unit))
        return ac

    def _tag_other(self, r: RawReading, e: _Entry) -> Sample | RollEvent | DeadLetter | None:
        """A reading of a string tag or of a web-position / web-speed tag, its row already in order:
        the common outcomes here (a repeated roll id, a valid number), the rest through :meth:`tag`."""
        _, address, v, ts, _, unit, quality, line, roll, web, _ = r
        if ts is None:
            return self.tag(r)
        kind, tag_id, canon, lo, hi, step, eline, units, _, traceability = e
        if kind == _STRING:
            if type(v) is str:
                value = v.strip()
                if value and self.trace.last_roll_value.get((line or eline or self.default_line_id, tag_id)) == value:
                    return None  # unchanged roll id: nothing to store
            return self.tag(r)
        tv = type(v)
        if tv is float:
            x = v
        elif tv is int:
            try:
                x = float(v)
            except OverflowError:
                return self.tag(r)
        else:
            return self.tag(r)
        if x - x != 0.0:
            return self.tag(r)
        try:
            ac = units[unit]
        except KeyError:
            ac = self._unit_miss(e, unit)
            if ac is False:
                return self.tag(r)
        if ac is not None:
            x = ac[0] * x + ac[1]
        if not lo <= x <= hi:
            return self.tag(r)
        line = line or eline or self.default_line_id
        trace = self.trace
        key = (line, step)
        if traceability is Traceability.WEB_POSITION:  # as _advance_trace
            trace.web_pos_m[line] = trace.step_web[key] = x
        else:
            self._advance_trace(traceability, line, step, x, ts)
        if roll is None:
            roll = trace.step_roll.get(key) or trace.roll.get(line)
        if web is None:
            web = trace.step_web.get(key)
            if web is None:
                web = trace.web_pos_m.get(line)
        return tuple.__new__(Sample, (line, tag_id, x, canon, ts, r.received_ts_ns, quality, roll, web))

    def _is_trace(self, r: RawReading) -> bool:
        try:
            e = self._fast[r[0]][r[1]]
        except KeyError:
            e = self._fast_miss(r[0], r[1])
        return e is not None and e[8]

    def _finish_row(self, readings: "tuple[RawReading, ...] | list[RawReading]",
                    out: "list[Sample | RollEvent | DeadLetter | None]") -> int:
        """Keep the row rule of :meth:`tag_batch_per_reading` when the trace reading ``readings[i]``
        (``i = len(out)``) comes after other readings of its row: readings that share a source
        timestamp are a row, its trace readings (roll id, web position, web speed) are tagged before
        its other readings, and their results come first.

        ``out`` holds one result per reading, and the results of the row's readings seen so far
        stand in it trace results first. Returns 0 when nothing is to do (the reading starts a row,
        or only trace readings came before it in its row). Else it ends the row: the row's remaining
        trace readings are tagged, then the samples among the earlier results are made again (a
        sample reads the roll and web position; nothing else depends on them), then the row's
        remaining other readings; it returns how many readings it tagged."""
        i = len(out)
        ts = readings[i].source_ts_ns
        if i == 0 or readings[i - 1].source_ts_ns != ts:
            return 0
        s = i - 1
        while s > 0 and readings[s - 1].source_ts_ns == ts:
            s -= 1
        is_trace = self._is_trace
        before = readings[s:i]
        trace_before = [is_trace(x) for x in before]
        nt = sum(trace_before)
        if nt == i - s:
            return 0
        j, n = i + 1, len(readings)
        while j < n and readings[j].source_ts_ns == ts:
            j += 1
        rest = readings[i:j]
        trace_rest, later = [], []
        for x, t in zip(rest, map(is_trace, rest)):
            (trace_rest if t else later).append(x)
        previous = out[s + nt:]  # results of the row's earlier other readings, in their order
        redo = [x for x, t in zip(before, trace_before) if not t]
        redo = [x for x, y in zip(redo, previous) if type(y) is Sample]  # numbers only: no state
        del out[s + nt:]
        # one pass, trace readings first: no reading in it comes after another of its row
        again = self._tag_batch(trace_rest + redo + later, False)
        out.extend(again[:len(trace_rest)])
        again_it = iter(again[len(trace_rest):])
        out.extend(next(again_it) if type(y) is Sample else y for y in previous)
        out.extend(again_it)
        return j - i

    def tag_batch(self, readings: "tuple[RawReading, ...] | list[RawReading]") -> "list[Sample | RollEvent | DeadLetter | None]":
        """Tag a delivery. Readings that share a source timestamp (one row of a recording, one
        OPC-UA publish) are a row: its roll id and web position apply to all of it, wherever the
        columns stand.

        One loop over tuples compiled at start-up (address -> tag id, unit, range, unit
        conversions, traceability); a reading that fails a check, and a roll id that changes, goes
        through :meth:`tag`, so each dead letter keeps its reason. Results equal
        :meth:`tag_batch_per_reading`'s (tests/test_tagging.py compares them)."""
        return self._tag_batch(readings, True)

    def _tag_batch(self, readings: "tuple[RawReading, ...] | list[RawReading]",
                   rows: bool) -> "list[Sample | RollEvent | DeadLetter | None]":
        out: list[Sample | RollEvent | DeadLetter | None] = []
        append = out.append
        fast = self._fast
        default_line = self.default_line_id
        trace = self.trace
        step_roll, roll_of, step_web, web_of = trace.step_roll, trace.roll, trace.step_web, trace.web_pos_m
        new, sample, tag, other = tuple.__new__, Sample, self.tag, self._tag_other
        it = iter(readings)
        clean = -1
        for r in it:
            source, address, v, ts, rts, unit, quality, line, roll, web, _ = r
            try:
                e = fast[source][address]
            except KeyError:
                e = self._fast_miss(source, address)
                fast = self._fast  # replaced when the kept topics reach CACHE_LIMIT
            if e is None:
                append(tag(r))  # unknown address: a dead letter
                continue
            if e[0]:  # a string tag, or a number that moves the web position
                if rows and e[8]:
                    i = len(out)
                    # after another reading of its row that was not a trace reading: keep the row rule
                    if i and i != clean and readings[i - 1][3] == ts:
                        k = self._finish_row(readings, out)
                        if k:
                            for _ in islice(it, k - 1):
                                pass
                            continue
                    clean = i + 1  # readings[:i + 1] of this row are all trace readings
                append(other(r, e))
                continue
            tv = type(v)
            if tv is float:
                x = v
            elif tv is int:
                try:
                    x = float(v)
                except OverflowError:
                    append(tag(r))
                    continue
            else:
                append(tag(r))
                continue
            if x - x != 0.0 or ts is None:  # NaN or +-inf (checked before the conversion, as in tag())
                append(tag(r))
                continue
            _, tag_id, canon, lo, hi, step, eline, units, _, _ = e
            try:
                ac = units[unit]
            except KeyError:
                ac = self._unit_miss(e, unit)
                if ac is False:
                    append(tag(r))
                    continue
            if ac is not None:
                x = ac[0] * x + ac[1]
            if not lo <= x <= hi:
                append(tag(r))
                continue
            line = line or eline or default_line
            if roll is None:
                roll = step_roll.get((line, step)) or roll_of.get(line)
            if web is None:
                web = step_web.get((line, step))
                if web is None:
                    web = web_of.get(line)
            append(new(sample, (line, tag_id, x, canon, ts, rts, quality, roll, web)))
        return out
