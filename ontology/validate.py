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
from typing import Any, Literal

from core.samples import (
    DEAD_LETTER_PAYLOAD_CHARS,
    TS_MAX_NS,
    TS_MIN_NS,
    DeadLetter,
    Quality,
    RawReading,
    RollEvent,
    Sample,
    SourceKind,
    safe_text,
    text_ok,
)
from ontology.tagmap import Binding, Tag, TagMap, Traceability, ValueType
from ontology.units import UnitError, affine

REASON_CODES = (
    "unknown_address", "wrong_type", "non_finite", "unknown_unit", "unit_dimension",
    "out_of_range", "missing_timestamp", "bad_timestamp", "malformed_payload", "bad_quality",
    "clock_skew", "bad_text", "store_rejected", "internal_error",
)

# longest text a reading may carry into the store (longer: a ``bad_text`` dead letter)
MAX_ADDRESS_CHARS = 1024  # an MQTT topic, a replay column, an OPC-UA NodeId
MAX_ID_CHARS = 256  # a roll id (a string tag's value or a reading's roll id)
MAX_UNIT_CHARS = 256  # a unit string the reading states


def payload_text(reading: RawReading) -> str:
    """The raw reading as JSON text for a dead letter (never raises; at most
    DEAD_LETTER_PAYLOAD_CHARS characters, whatever the value is)."""
    limit = DEAD_LETTER_PAYLOAD_CHARS
    body: dict[str, Any] = {"address": safe_text(reading.address, limit)}
    v = reading.value
    body["value"] = v if v is None or type(v) in (float, bool) or (type(v) is int and abs(v) < 10**18) \
        else safe_text(v, limit)
    if reading.unit is not None:
        body["unit"] = safe_text(reading.unit, 512)
    if reading.source_ts_ns is not None:
        ts = reading.source_ts_ns
        body["source_ts_ns"] = ts if type(ts) is int and abs(ts) < 10**30 else safe_text(ts, 64)
    if reading.roll_id is not None:
        body["roll_id"] = safe_text(reading.roll_id, 512)
    try:
        return safe_text(json.dumps(body, allow_nan=True), limit)
    except Exception:  # noqa: BLE001 - a dead letter must never fail to be made
        return safe_text(repr(body), limit)


@dataclass
class TraceState:
    """Roll and web position per (line, step) and per line, as the readings reveal them.

    A sample gets the roll now in its own step (from that step's roll-id tag); a step without a
    roll-id tag falls back to the line's newest roll. The web position comes from a web-position
    tag of the step, or is integrated from a web-speed tag (m/min) since the roll started.

    Keys are line ids (a pattern topic such as ``pilot/{line}/...`` takes them from the sender) and
    steps; roll ids are values of at most MAX_ID_CHARS. Every dict holds at most ``LIMIT`` keys: a
    sender cycling through line ids evicts the oldest (:meth:`Tagger._bound_trace`)."""

    LIMIT = 4096

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


_NO_LIMIT = 1 << 70  # a skew bound that never applies (timestamps are int64 ns)


class Tagger:
    CACHE_LIMIT = 100_000  # concrete addresses (MQTT topics) tag_batch keeps beyond the exact ones
    CACHE_KEY_CHARS = 8_000_000  # and the characters of their keys, in all
    UNKNOWN_LIMIT = 1024  # addresses without a tag kept (as None) at most; beyond, resolved each time
    TEXT_CACHE_LIMIT = 4096  # roll ids from readings already checked (bad_text), kept at most
    BINDING_LIMIT = 10_000  # pattern addresses tag() keeps resolved (its slow path: failures, roll changes)

    def __init__(self, tagmap: TagMap, default_line_id: str, *, max_future_skew_s: float | None = None,
                 max_past_age_s: float | None = None,
                 skew_exempt: tuple[SourceKind, ...] = (SourceKind.REPLAY,)) -> None:
        """``max_future_skew_s`` / ``max_past_age_s``: a source timestamp more than this after / before
        the reading's receive time is a ``clock_skew`` dead letter (None: no limit; the store's range,
        1677..2262, always applies: ``bad_timestamp``). Sources in ``skew_exempt`` (recorded files:
        history, or shifted to now and running ahead of it) are checked against the store's range only."""
        self.tagmap = tagmap
        self.default_line_id = default_line_id
        self.trace = TraceState()
        self._exact = tagmap._exact  # the hot path skips a method call for exact addresses
        self.cache_misses = 0  # addresses resolved through the tag map by tag_batch (then kept)
        self.cache_resets = 0  # times the kept topics reached CACHE_LIMIT and were dropped
        self.trace_evictions = 0  # trace-state keys dropped to keep TraceState bounded
        self._bindings: dict[tuple[str, str], Binding | None] = {}  # pattern addresses tag() resolved
        self._bindings_chars = 0
        self._bindings_unknown = 0
        self._text_seen: set[str] = set()  # roll ids from readings that passed the text check
        self.set_time_window(max_future_skew_s, max_past_age_s, skew_exempt)
        self._build_fast()

    def set_time_window(self, max_future_skew_s: float | None, max_past_age_s: float | None,
                        skew_exempt: tuple[SourceKind, ...] = (SourceKind.REPLAY,)) -> None:
        """Set the skew window (the pipeline applies its config here; see :meth:`__init__`)."""
        hi = _NO_LIMIT if max_future_skew_s is None else int(max_future_skew_s * 1e9)
        lo = -_NO_LIMIT if max_past_age_s is None else -int(max_past_age_s * 1e9)
        self.max_future_skew_s, self.max_past_age_s = max_future_skew_s, max_past_age_s
        self._window = (lo, hi)
        self._exempt = frozenset(skew_exempt)
        self._windows = {s: ((-_NO_LIMIT, _NO_LIMIT) if s in self._exempt else (lo, hi)) for s in SourceKind}

    def _window_of(self, source: str) -> tuple[int, int]:
        w = self._windows.get(source)  # type: ignore[call-overload]
        return w if w is not None else self._window

    def _dead(self, r: RawReading, code: str, reason: str, line: str | None = None) -> DeadLetter:
        return DeadLetter(r.source, safe_text(r.address, MAX_ADDRESS_CHARS), payload_text(r), safe_text(reason, 1024),
                          code, r.received_ts_ns, r.connector, line or r.line_id)

    def _binding(self, source: str, address: str) -> Binding | None:
        """The binding of an address: exact, or matched by a pattern (kept, bounded like tag_batch's)."""
        key = (source, address)
        try:
            return self._bindings[key]
        except KeyError:
            pass
        b = self._match(source, address)
        if b is None and self._bindings_unknown >= self.UNKNOWN_LIMIT:
            return None
        if len(self._bindings) >= self.BINDING_LIMIT or self._bindings_chars + len(address) > self.CACHE_KEY_CHARS:
            self._bindings.clear()
            self._bindings_chars = self._bindings_unknown = 0
        self._bindings[key] = b
        self._bindings_chars += len(address)
        self._bindings_unknown += b is None
        return b

    def _match(self, source: str, address: str) -> Binding | None:
        """The tag map's resolution without its own cache (which keeps every topic it saw, unbounded in
        key size): exact addresses, then the patterns in order."""
        hit = self._exact.get((source, address))
        if hit is not None:
            return hit
        for kind, rx, tag, unit in self.tagmap._patterns:
            if kind != source:
                continue
            m = rx.match(address)
            if m:
                return Binding(tag, unit, m.groupdict().get("line"))
        return None

    def _bound_trace(self, d: dict[Any, Any]) -> None:
        """Keep a TraceState dict at most TraceState.LIMIT keys: drop the oldest inserted."""
        while len(d) > TraceState.LIMIT:
            del d[next(iter(d))]
            self.trace_evictions += 1

    def _screen_ts(self, r: RawReading, line: str | None) -> DeadLetter | None:
        """A source timestamp in the store's range and in the skew window of the receive time."""
        ts = r.source_ts_ns
        if type(ts) is not int or not TS_MIN_NS <= ts <= TS_MAX_NS:
            return self._dead(r, "bad_timestamp", f"source timestamp {safe_text(ts, 40)} ns is outside the store's "
                                                  "range (1677-09-21 .. 2262-04-11 UTC, int64 nanoseconds)", line)
        lo, hi = self._window_of(r.source)
        d = ts - r.received_ts_ns
        if d > hi:
            return self._dead(r, "clock_skew", f"source timestamp is {d / 1e9:.3f} s after its receive time "
                                               f"(max_future_skew_s = {self.max_future_skew_s:g})", line)
        if d < lo:
            return self._dead(r, "clock_skew", f"source timestamp is {-d / 1e9:.3f} s before its receive time "
                                               f"(max_past_age_s = {self.max_past_age_s:g})", line)
        return None

    def _screen(self, r: RawReading, line: str | None) -> DeadLetter | None:
        """What the store and the later stages need of a number's reading beyond its value: a storable
        roll id, a finite web position, a storable unit string. None: all fine."""
        if r.roll_id is not None and not text_ok(r.roll_id, MAX_ID_CHARS):
            return self._dead(r, "bad_text", "roll id is not storable text (not a string, invalid Unicode, NUL, or "
                                             f"longer than {MAX_ID_CHARS} characters)", line)
        web = r.web_pos_m
        if web is not None and (type(web) not in (float, int) or not math.isfinite(web)):
            return self._dead(r, "non_finite", f"web position {safe_text(web, 40)} is not a finite number", line)
        if r.unit is not None and not text_ok(r.unit, MAX_UNIT_CHARS):
            return self._dead(r, "bad_text", "unit is not storable text (not a string, invalid Unicode, NUL, or "
                                             f"longer than {MAX_UNIT_CHARS} characters)", line)
        return None

    def tag(self, r: RawReading) -> Sample | RollEvent | DeadLetter | None:
        """None: a repeated roll id (the roll did not change)."""
        if not text_ok(r.address, MAX_ADDRESS_CHARS):
            return self._dead(r, "bad_text", "address is not storable text (invalid Unicode, NUL, or longer than "
                                             f"{MAX_ADDRESS_CHARS} characters)")
        # SourceKind is a str enum: it hashes and compares like "mqtt", so it is the dict key itself
        b = self._exact.get((r.source, r.address)) or self._binding(r.source, r.address)
        if b is None:
            return self._dead(r, "unknown_address",
                              f"unknown {getattr(r.source, 'value', r.source)} address {r.address!r}: "
                              "no tag map entry matches")
        tag: Tag = b.tag
        line = r.line_id or b.line_id or self.default_line_id
        if r.source_ts_ns is None:
            return self._dead(r, "missing_timestamp", f"{tag.id}: reading has no source timestamp", line)
        bad = self._screen_ts(r, line)
        if bad is not None:
            return bad
        v = r.value
        if tag.value_type is ValueType.STRING:
            if not isinstance(v, str) or not v.strip():
                return self._dead(r, "wrong_type",
                                  f"{tag.id}: expected a non-empty string, got {type(v).__name__} "
                                  f"{safe_text(repr(v) if isinstance(v, str) else v, 200)}", line)
            new_roll = v.strip()
            if not text_ok(new_roll, MAX_ID_CHARS):
                return self._dead(r, "bad_text", f"{tag.id}: value is not storable text (invalid Unicode, NUL, or "
                                                 f"longer than {MAX_ID_CHARS} characters)", line)
            key = (line, tag.id)
            trace = self.trace
            if trace.last_roll_value.get(key) == new_roll:
                return None  # unchanged roll id: nothing to store
            trace.last_roll_value[key] = new_roll
            self._bound_trace(trace.last_roll_value)
            if tag.traceability is Traceability.ROLL_ID:
                trace.roll[line] = new_roll
                trace.step_roll[(line, tag.step)] = new_roll
                trace.step_web[(line, tag.step)] = 0.0  # a new roll starts at 0 m
                trace.web_pos_m[line] = 0.0
                spd = trace.speed_at.get((line, tag.step))
                if spd is not None:  # integrate the new roll from its start
                    trace.speed_at[(line, tag.step)] = (r.source_ts_ns, spd[1])
                for d in (trace.roll, trace.step_roll, trace.step_web, trace.web_pos_m):
                    self._bound_trace(d)
            return RollEvent(line, tag.step, new_roll, r.source_ts_ns, tag.id)
        bad = self._screen(r, line)
        if bad is not None:
            return bad
        if v is None and r.quality is Quality.BAD:
            return self._dead(r, "bad_quality", f"{tag.id}: the source reports bad quality and no value", line)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return self._dead(r, "wrong_type", f"{tag.id}: expected a number, got {type(v).__name__} "
                                               f"{safe_text(repr(v) if isinstance(v, str) else v, 200)}", line)
        try:
            x = float(v)
        except OverflowError:  # an int beyond the float range (> ~1.8e308)
            return self._dead(r, "non_finite", f"{tag.id}: integer value of {int(v).bit_length()} bits does not "
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
            if len(trace.speed_at) > TraceState.LIMIT:
                self._bound_trace(trace.speed_at)
        if len(trace.step_web) > TraceState.LIMIT or len(trace.web_pos_m) > TraceState.LIMIT:
            self._bound_trace(trace.step_web)
            self._bound_trace(trace.web_pos_m)

    def _trace_first(self, r: RawReading) -> int:
        b = self._binding(r.source, r.address) if text_ok(r.address, MAX_ADDRESS_CHARS) else None
        return 0 if b is not None and b.tag.traceability is not Traceability.NONE else 1

    def tag_batch_per_reading(self, readings: tuple[RawReading, ...] | list[RawReading]) -> list[Sample | RollEvent | DeadLetter | None]:
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
        # unit the reading states (None: the source's unit) -> (a, c), or None for no conversion; one
        # dict per (tag, source unit), shared by every topic a pattern matches (bounded memory per topic)
        units = self._units_of.get((tag.id, su))
        if units is None:
            units = {tag.unit: None}
            units[su] = None if su == tag.unit else affine(su, tag.unit)
            units[None] = units[su]
            self._units_of[(tag.id, su)] = units
        return (kind, tag.id, tag.unit, tag.lo, tag.hi, tag.step, b.line_id, units, trace, tag.traceability)

    def _build_fast(self) -> None:
        self._units_of: dict[tuple[str, str | None], dict[str | None, tuple[float, float] | None]] = {}
        fast: dict[str, dict[str, _Entry | None]] = {}
        for (source, address), b in self.tagmap._exact.items():
            fast.setdefault(source, {})[address] = self._compile_entry(b)
        self._fast = fast
        self._fast_exact = {k: dict(v) for k, v in fast.items()}
        self._fast_added = self._fast_chars = self._fast_unknown = 0

    def _fast_miss(self, source: str, address: str) -> _Entry | None:
        """An address that is not in the compiled dicts yet (an MQTT topic matched by a pattern, or
        no tag at all): resolved once, then kept. Bounded under any sender: at most ``CACHE_LIMIT``
        addresses with a tag and ``CACHE_KEY_CHARS`` characters of keys (beyond either, every kept
        topic is dropped, the exact ones stay), at most ``UNKNOWN_LIMIT`` addresses without a tag
        (beyond, an unknown address is resolved again each time, not kept); an address that is not
        storable text (``bad_text``) is never kept."""
        self.cache_misses += 1
        if not text_ok(address, MAX_ADDRESS_CHARS):
            return None  # tag() makes the bad_text dead letter
        e = self._compile_entry(self._match(source, address))
        if e is None:
            if self._fast_unknown >= self.UNKNOWN_LIMIT:
                return None
            self._fast_unknown += 1
        if self._fast_added >= self.CACHE_LIMIT or self._fast_chars + len(address) > self.CACHE_KEY_CHARS:
            # bounded: drop every kept topic, keep the exact ones
            self._fast = {k: dict(v) for k, v in self._fast_exact.items()}
            self._fast_added = self._fast_chars = 0
            self._fast_unknown = int(e is None)
            self.cache_resets += 1
        self._fast.setdefault(source, {})[address] = e
        self._fast_added += e is not None
        self._fast_chars += len(address)
        return e

    UNITS_PER_ENTRY = 16  # units a reading states that one compiled entry keeps beyond its own
    UNITS_KEPT = 4096  # such units kept over all entries; then all are dropped and learnt again

    def _unit_miss(self, entry: _Entry, unit: str) -> tuple[float, float] | Literal[False]:
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
        source, address, v, ts, rts, unit, quality, line, roll, web, _ = r
        if ts is None:
            return self.tag(r)
        wlo, whi = self._windows.get(source) or self._window_of(source)
        if not (TS_MIN_NS <= ts <= TS_MAX_NS and wlo <= ts - rts <= whi):
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
        if roll is not None and roll not in self._text_seen and not self._roll_text_ok(roll):
            return self.tag(r)
        if web is not None and (type(web) is not float or web - web != 0.0):
            return self.tag(r)
        try:
            ac: tuple[float, float] | Literal[False] | None = units[unit]
        except KeyError:
            if unit is None or not text_ok(unit, MAX_UNIT_CHARS):  # None is always a key: not reached
                return self.tag(r)
            ac = self._unit_miss(e, unit)
            if ac is False:
                return self.tag(r)
        if ac:  # (a, c); None: the canonical unit, no conversion
            x = ac[0] * x + ac[1]
        if not lo <= x <= hi:
            return self.tag(r)
        line = line or eline or self.default_line_id
        trace = self.trace
        key = (line, step)
        if traceability is Traceability.WEB_POSITION:  # as _advance_trace
            trace.web_pos_m[line] = trace.step_web[key] = x
            if len(trace.step_web) > TraceState.LIMIT or len(trace.web_pos_m) > TraceState.LIMIT:
                self._bound_trace(trace.step_web)
                self._bound_trace(trace.web_pos_m)
        else:
            self._advance_trace(traceability, line, step, x, ts)
        if roll is None:
            roll = trace.step_roll.get(key) or trace.roll.get(line)
        if web is None:
            web = trace.step_web.get(key)
            if web is None:
                web = trace.web_pos_m.get(line)
        return tuple.__new__(Sample, (line, tag_id, x, canon, ts, r.received_ts_ns, quality, roll, web))

    def _roll_text_ok(self, roll: object) -> bool:
        """A roll id from a reading is storable text (then kept as checked, bounded)."""
        if not text_ok(roll, MAX_ID_CHARS):
            return False
        seen = self._text_seen
        if len(seen) >= self.TEXT_CACHE_LIMIT:
            seen.clear()
        seen.add(roll)  # type: ignore[arg-type]
        return True

    def _is_trace(self, r: RawReading) -> bool:
        try:
            e = self._fast[r[0]][r[1]]
        except KeyError:
            e = self._fast_miss(r[0], r[1])
        return e is not None and e[8]

    def _finish_row(self, readings: tuple[RawReading, ...] | list[RawReading],
                    out: list[Sample | RollEvent | DeadLetter | None]) -> int:
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
        trace_rest: list[RawReading] = []
        later: list[RawReading] = []
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

    def tag_batch(self, readings: tuple[RawReading, ...] | list[RawReading]) -> list[Sample | RollEvent | DeadLetter | None]:
        """Tag a delivery. Readings that share a source timestamp (one row of a recording, one
        OPC-UA publish) are a row: its roll id and web position apply to all of it, wherever the
        columns stand.

        One loop over tuples compiled at start-up (address -> tag id, unit, range, unit
        conversions, traceability); a reading that fails a check, and a roll id that changes, goes
        through :meth:`tag`, so each dead letter keeps its reason. Results equal
        :meth:`tag_batch_per_reading`'s (tests/test_tagging.py compares them)."""
        return self._tag_batch(readings, True)

    def _tag_batch(self, readings: tuple[RawReading, ...] | list[RawReading],
                   rows: bool) -> list[Sample | RollEvent | DeadLetter | None]:
        out: list[Sample | RollEvent | DeadLetter | None] = []
        append = out.append
        fast = self._fast
        default_line = self.default_line_id
        trace = self.trace
        step_roll, roll_of, step_web, web_of = trace.step_roll, trace.roll, trace.step_web, trace.web_pos_m
        new, sample, tag, other = tuple.__new__, Sample, self.tag, self._tag_other
        text_seen, roll_ok = self._text_seen, self._roll_text_ok
        windows = self._windows
        wsource: object = None
        wlo = whi = 0
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
            if source is not wsource:  # the skew window of this source (one lookup per delivery)
                wsource = source
                wlo, whi = windows.get(source) or self._window_of(source)
            # the store's range, the skew window; a roll id and a web position the reading brings
            if not (-9_223_372_036_854_775_806 <= ts <= 9_223_372_036_854_775_806 and wlo <= ts - rts <= whi) \
                    or (roll is not None and roll not in text_seen and not roll_ok(roll)) \
                    or (web is not None and (type(web) is not float or web - web != 0.0)):
                append(tag(r))
                continue
            _, tag_id, canon, lo, hi, step, eline, units, _, _ = e
            try:
                ac: tuple[float, float] | Literal[False] | None = units[unit]
            except KeyError:
                if unit is None or not text_ok(unit, MAX_UNIT_CHARS):  # None is always a key: not reached
                    append(tag(r))
                    continue
                ac = self._unit_miss(e, unit)
                if ac is False:
                    append(tag(r))
                    continue
            if ac:  # (a, c); None: the canonical unit, no conversion
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
