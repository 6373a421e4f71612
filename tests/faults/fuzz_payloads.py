"""Hypothesis strategies of hostile MQTT messages, each with the outcome the daemon must give it.

A strategy here draws a :class:`MessagePlan`: what to publish (topic, and a payload made of JSON
*fragments*, so that NaN, 5000-digit integers, lone-surrogate escapes such as ``"\\ud800"`` and
200,000-deep nesting can be written as a hostile sender would) and, per reading in it, the outcome
the issue requires:

- ``VALID``: stored exactly once under its key (tag id, source timestamp);
- ``INVALID``: a dead letter whose ``reason_code`` is one of ``codes`` and nothing stored;
- ``EITHER``: a reading that a strict validator may refuse and a lenient one may store (a numeric
  roll id, a unit such as ``((((((m))))))`` that pint reads as metre, an unusual line id in a topic);
  it is stored under its key or it is one dead letter with a code in ``codes``, never both, never
  lost. The test finds out which by looking its key up in the store.

Source timestamps are not drawn: the :class:`Ledger` gives every reading that has a timestamp a
fresh (tag, whole second) key near the present, so each valid reading is unique and a stored
invalid one is found by its key. The categories (``CATEGORIES``) cover the issue's list: invalid
JSON, non-UTF-8, deep nesting, very long integers, NaN / inf, huge / negative / far-future /
far-past / naive timestamps, wrong types, unknown and hostile unit strings, very long strings,
lone surrogates in roll ids and units, huge and non-string roll ids, batches with mixed items,
unknown / very long / unusual topics.
"""

from __future__ import annotations

import enum
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from hypothesis import strategies as st

from ontology.tagmap import TagMap, Traceability, ValueType
from tests.conftest import DEFAULTS

LINE = "pilot-1"
BATCH_TOPIC = f"pilot/{LINE}/batch"

# --- the tags valid readings go to: numbers with an MQTT pattern and no traceability role -------
_TM = TagMap.load(DEFAULTS / "tagmap.toml")


@dataclass(frozen=True)
class TagInfo:
    id: str
    pattern: str  # MQTT pattern with {line}
    unit: str  # canonical unit (every MQTT source of the default tag map speaks it)
    lo: float
    hi: float

    def topic(self, line: str = LINE) -> str:
        return self.pattern.replace("{line}", line)


def _tags() -> list[TagInfo]:
    out = []
    for t in _TM.tags.values():
        if t.value_type is not ValueType.NUMBER or t.traceability is not Traceability.NONE:
            continue
        pats = [a for kind, a, _ in _TM.sources_of(t.id) if kind == "mqtt"]
        if not pats or "{line}" not in pats[0]:
            continue
        b = _TM.resolve("mqtt", pats[0].replace("{line}", LINE))
        if b is None or b.source_unit != t.unit:
            continue
        out.append(TagInfo(t.id, pats[0], t.unit, float(t.lo), float(t.hi)))
    return out


TAGS: list[TagInfo] = _tags()
assert len(TAGS) >= 20, "the default tag map should offer many numeric MQTT tags"

# --- outcome codes (ontology/validate.py REASON_CODES + the shared decisions of issue #15) ------
TS_CODES = frozenset({"bad_timestamp", "clock_skew", "store_rejected"})  # unrepresentable / skewed time
TEXT_CODES = frozenset({"bad_text", "store_rejected"})  # text the store cannot hold
UNIT_CODES = frozenset({"unknown_unit", "unit_dimension", "bad_text"})  # a unit that cannot apply
MALFORMED = frozenset({"malformed_payload"})


class Outcome(str, enum.Enum):
    VALID = "valid"
    INVALID = "invalid"
    EITHER = "either"


class TsMode(str, enum.Enum):
    """How a reading's (fresh, valid) timestamp is written; LITERAL: ``ts_literal`` as given; OMIT: no ts."""

    ISO_Z = "iso_z"
    ISO_OFFSET = "iso_offset"
    ISO_FRACTION = "iso_fraction"
    EPOCH_INT = "epoch_int"
    EPOCH_FLOAT = "epoch_float"
    LITERAL = "literal"
    OMIT = "omit"


@dataclass(frozen=True)
class ItemPlan:
    """One reading: its address, its fields as JSON fragments, and the outcome it must have."""

    category: str
    outcome: Outcome
    tag: int | None = None  # index into TAGS (None: ``address`` is not a tag's topic)
    address: str | None = None  # explicit address (unknown topic, unusual line id ...)
    value: str | None = None  # JSON fragment; None: a valid value for the tag
    unit: str | None = None  # JSON fragment of "unit", None: no unit key
    ts_mode: TsMode = TsMode.ISO_Z
    ts_literal: str = ""
    extra: tuple[tuple[str, str], ...] = ()  # more keys: (name, JSON fragment)
    codes: frozenset[str] = frozenset()  # allowed reason codes (INVALID / EITHER)
    raw_item: str | None = None  # batch only: the item's whole JSON text (not an object, no topic ...)


@dataclass(frozen=True)
class MessagePlan:
    """One MQTT message. ``kind``: "single" (one item on its own topic), "batch" (items on the
    batch topic) or "raw" (``raw_payload`` on ``raw_topic``; the whole message is one dead letter
    with a code in ``codes``, or, with ``raw_tag`` set, an INVALID reading of that tag)."""

    kind: str
    category: str
    items: tuple[ItemPlan, ...] = ()
    raw_topic: str = ""
    raw_payload: bytes = b""
    codes: frozenset[str] = frozenset()


# --- building blocks ---------------------------------------------------------------------------
_tag_index = st.integers(0, len(TAGS) - 1)


def _mqtt_safe_char(c: str) -> bool:
    """Characters mosquitto accepts in a topic (no wildcards, separators, controls, non-characters)."""
    o = ord(c)
    return not (c in "+#/" or o <= 0x1F or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xDFFF
                or 0xFDD0 <= o <= 0xFDEF or (o & 0xFFFF) in (0xFFFE, 0xFFFF))


_topic_text = st.text(st.characters(codec="utf-8").filter(_mqtt_safe_char), min_size=1, max_size=40)
_plain_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=40)
_any_text = st.text(max_size=60)  # may hold lone surrogates: rendered with json.dumps (ASCII escapes)


def js(obj: object) -> str:
    """A JSON fragment of a Python value (ASCII; lone surrogates become \\udXXX escapes)."""
    return json.dumps(obj, allow_nan=True)


def _valid_item(category: str = "valid") -> st.SearchStrategy[ItemPlan]:
    """A valid reading in one of several correct spellings (unit stated or not, ts formats, roll, quality)."""
    @st.composite
    def build(draw: st.DrawFn) -> ItemPlan:
        i = draw(_tag_index)
        t = TAGS[i]
        unit = draw(st.sampled_from([None, js(t.unit)] + ([js("mm")] if t.unit == "um" else [])))
        mode = draw(st.sampled_from([TsMode.ISO_Z, TsMode.ISO_OFFSET, TsMode.ISO_FRACTION, TsMode.EPOCH_INT,
                                     TsMode.EPOCH_FLOAT]))
        extra: list[tuple[str, str]] = []
        if draw(st.booleans()):
            extra.append(("roll", js(draw(st.sampled_from(["R-0042", "Rolle-Ä-7", "R 1", "卷-3"])))))
        if draw(st.booleans()):
            extra.append(("quality", js(draw(st.sampled_from(["good", "uncertain", "GOOD", 0, 1])))))
        if draw(st.booleans()):
            extra.append(("web_pos_m", js(draw(st.floats(0, 5000, allow_nan=False)))))
        return ItemPlan(category, Outcome.VALID, tag=i, unit=unit, ts_mode=mode, extra=tuple(extra))
    return build()


def _invalid(category: str, codes: Iterable[str], **fields: st.SearchStrategy[object]) -> st.SearchStrategy[ItemPlan]:
    """An INVALID reading of a random tag, its other fields valid, ``fields`` drawn (fragments)."""
    @st.composite
    def build(draw: st.DrawFn) -> ItemPlan:
        kw = {k: draw(v) for k, v in fields.items()}
        return ItemPlan(category, Outcome.INVALID, tag=draw(_tag_index), codes=frozenset(codes), **kw)  # type: ignore[arg-type]
    return build()


def _either(category: str, codes: Iterable[str], **fields: st.SearchStrategy[object]) -> st.SearchStrategy[ItemPlan]:
    @st.composite
    def build(draw: st.DrawFn) -> ItemPlan:
        kw = {k: draw(v) for k, v in fields.items()}
        return ItemPlan(category, Outcome.EITHER, tag=draw(_tag_index), codes=frozenset(codes), **kw)  # type: ignore[arg-type]
    return build()


def _literal_ts(values: st.SearchStrategy[str]) -> dict[str, st.SearchStrategy[object]]:
    return {"ts_mode": st.just(TsMode.LITERAL), "ts_literal": values}


def _long_int(lo: int, hi: int, big: int | None = None) -> st.SearchStrategy[str]:
    return _sized(lo, hi, big).map(lambda n: "9" * n)


def _sized(lo: int, hi: int, big: int | None = None) -> st.SearchStrategy[int]:
    """A size in [lo, hi], and one draw in ten ``big`` (keeps the volume through the broker modest)."""
    if big is None:
        return st.integers(lo, hi)
    return st.tuples(st.integers(0, 9), st.integers(lo, hi)).map(lambda t: big if t[0] == 0 else t[1])


def _deep(lo: int, hi: int, big: int | None = None) -> st.SearchStrategy[str]:
    return st.tuples(_sized(lo, hi, big), st.sampled_from("[{")).map(
        lambda d: ("[" * d[0] + "]" * d[0]) if d[1] == "[" else ('{"a":' * d[0] + "1" + "}" * d[0]))


# --- reading-level categories (usable alone or inside a batch: the JSON stays parseable) ---------
ITEM_CATEGORIES: dict[str, st.SearchStrategy[ItemPlan]] = {
    "valid": _valid_item(),
    # a text value is refused as text first when it is not storable text (over-long, lone surrogates, NUL)
    "wrong_type_value": _invalid("wrong_type_value", {"wrong_type"} | TEXT_CODES, value=st.one_of(
        st.sampled_from(['"sixty"', "true", "false", "null", "[]", "{}", "[1, 2]", '"61.3"', '""', '{"v": 1}']),
        _any_text.map(js), _deep(2, 50))),
    "non_finite_value": _invalid("non_finite_value", {"non_finite"}, value=st.sampled_from(
        ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])),
    "long_int_value": _invalid("long_int_value", {"non_finite", "out_of_range", "malformed_payload"},
                               value=_long_int(310, 4000)),
    "out_of_range_value": _invalid("out_of_range_value", {"out_of_range"}, value=st.sampled_from(
        ["1e300", "-1e300", "123456789012", "-123456789012", "1.7976931348623157e308"])),
    "unknown_unit": _invalid("unknown_unit", {"unknown_unit", "bad_text"}, unit=st.one_of(
        st.sampled_from(["furlongs-ish", "flibbertigibbet", "qq_zork", "m^^2", "μ-parsec-ish"]),
        st.from_regex(r"qq_[a-z]{1,20}", fullmatch=True)).map(js)),
    "unit_dimension": _invalid("unit_dimension", {"unit_dimension"}, unit=st.sampled_from(
        ["A*s", "mol", "cd", "A*s/mol"]).map(js)),
    "hostile_unit": _invalid("hostile_unit", UNIT_CODES | {"non_finite", "out_of_range"}, unit=st.one_of(
        st.sampled_from(["m**99999999", "m**-99999999", "1/0", "m/0", "0**-1", "((((((m", "m))))))", "m**(1/0)",
                         "10**99999999 m", "m**1e308", "(" * 5000 + "m" + ")" * 5000, "*".join(["m"] * 5000),
                         "m" * 100_000, "kg" + "**2" * 3000]),
        st.integers(20, 4000).map(lambda n: "(" * n + "A*s" + ")" * n)).map(js)),
    "odd_unit": _either("odd_unit", UNIT_CODES | {"out_of_range", "non_finite"}, unit=st.sampled_from(
        ["((((((um))))))", "um*1", "um**1", " um ", "1e0 um", "um/1"]).map(js)),
    "surrogate_unit": _invalid("surrogate_unit", UNIT_CODES | {"store_rejected"}, unit=st.sampled_from(
        ['"\\ud800"', '"um\\udfff"', '"\\udc80\\ud800"', '"um\\u0000"', '"\\u0000"'])),
    "missing_timestamp": _invalid("missing_timestamp", {"missing_timestamp"}, ts_mode=st.just(TsMode.OMIT)),
    "bad_timestamp": _invalid("bad_timestamp", TS_CODES | TEXT_CODES, **_literal_ts(st.one_of(
        st.sampled_from([
            '"9999-12-31T23:59:59Z"', "1e30", "-1e30", "1e19", "-1e19", str(10 ** 20), "-" + str(10 ** 20),
            '"0001-01-01T00:00:00Z"', '"1677-09-20T00:00:00Z"', '"2262-04-12T00:00:00Z"', '"2300-01-01T00:00:00+14:00"',
            '"2026-12-03T08:00:00"', '"yesterday"', '""', "true", "false", "[]", "{}", "[1790000000]",
            "NaN", "Infinity", "-Infinity", "1e400", '"\\ud800"',
            '"+275760-09-13T00:00:00Z"', '"2026-13-45T25:61:61Z"', "9" * 400, "9" * 4000]),
        _any_text.map(lambda s: js("x" + s))))),
    "skewed_timestamp": _invalid("skewed_timestamp", TS_CODES, **_literal_ts(st.sampled_from([
        '"2200-01-01T00:00:00Z"', '"2261-12-31T00:00:00Z"', '"1800-01-01T00:00:00Z"', '"1700-06-01T00:00:00Z"',
        "0", "-1", "1", "-2000000000", "7000000000", '"1970-01-01T00:00:00Z"']))),
    "bad_quality": _invalid("bad_quality", {"malformed_payload", "bad_quality"}, extra=st.sampled_from(
        ['"meh"', "7", "-1", "1.5", "[]", "{}", '"\\ud800"']).map(lambda q: (("quality", q),))),
    "bad_web_pos": _invalid("bad_web_pos", {"malformed_payload", "non_finite", "wrong_type", "out_of_range"},
                            extra=st.sampled_from(['"abc"', "NaN", "Infinity", "-1e400", "1e400", "9" * 400, "[]",
                                                   "true"]).map(lambda w: (("web_pos_m", w),))),
    "bad_roll_text": _invalid("bad_roll_text", TEXT_CODES, extra=st.one_of(
        st.sampled_from(['"\\ud800"', '"R-\\udfff-1"', '"\\udc00\\ud800"', '"R\\u0000"', js("R" * 100_000)]),
        _sized(20_000, 50_000, 200_000).map(lambda n: js("R" * n))).map(lambda r: (("roll", r),))),
    "odd_roll": _either("odd_roll", TEXT_CODES | MALFORMED | {"wrong_type"}, extra=st.one_of(
        st.sampled_from(["42", "true", "1.5", "[]", "{}", '{"id": "R-1"}', "1e400", "9" * 400, '""', '"   "',
                         js("R" * 300), '"R\\t1"', '"R\\n1"']),
        _plain_text.map(js)).map(lambda r: (("roll", r),))),
    "unknown_topic": st.builds(
        lambda seg: ItemPlan("unknown_topic", Outcome.INVALID, address=f"pilot/{LINE}/calendering/no-{seg}",
                             codes=frozenset({"unknown_address", "bad_text"})), _topic_text),
    "long_topic": st.builds(
        lambda n, c: ItemPlan("long_topic", Outcome.INVALID, address=f"pilot/{LINE}/x/" + c * (n // len(c.encode())),
                              codes=frozenset({"unknown_address", "bad_text"})),
        _sized(300, 8000, 60_000), st.sampled_from(["a", "é", "🚀", "z/"]))
    # (mosquitto refuses more than 200 topic levels as a protocol error: at most ~150 levels here)
    .map(lambda it: it if it.address.count("/") < 150 else ItemPlan(
        "long_topic", Outcome.INVALID, address="/".join(it.address.split("/")[:150]), codes=it.codes)),
    "odd_line_topic": st.builds(
        lambda i, seg: ItemPlan("odd_line_topic", Outcome.EITHER, tag=i, address=TAGS[i].topic("L-" + seg),
                                codes=frozenset({"bad_text", "unknown_address"})), _tag_index, _topic_text),
}

# readings that only a batch can carry (their "topic" is a JSON string, not an MQTT topic)
BATCH_ONLY: dict[str, st.SearchStrategy[ItemPlan]] = {
    "batch_bad_address_text": st.builds(
        lambda a: ItemPlan("batch_bad_address_text", Outcome.INVALID, address=a,
                           codes=frozenset({"bad_text", "unknown_address", "store_rejected"})),
        st.sampled_from(["pilot/pilot-1/calendering/\ud800", "\udfff", "pilot/\ud800/calendering/gap_actual",
                         "pilot/pilot-1\u0000/calendering/gap_actual", "\u0000", "pilot/" + "\ud83d" * 50])),
    "batch_not_object": st.builds(lambda t: ItemPlan("batch_not_object", Outcome.INVALID, codes=MALFORMED, raw_item=t),
                                  st.sampled_from(["5", '"x"', "[]", "null", "true", "[1, 2]"])),
    "batch_no_topic": st.builds(lambda t: ItemPlan("batch_no_topic", Outcome.INVALID, codes=MALFORMED, raw_item=t),
                                st.sampled_from(['{"ts": 1, "value": 1}', '{"topic": 5, "value": 1}',
                                                 '{"topic": "", "value": 1}', '{"topic": null}', "{}"])),
}


def _single(category: str, item: st.SearchStrategy[ItemPlan]) -> st.SearchStrategy[MessagePlan]:
    return item.map(lambda it: MessagePlan("single", f"single:{category}", (it,)))


def _raw(category: str, codes: Iterable[str], payload: st.SearchStrategy[bytes],
         topic: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[MessagePlan]:
    topic = topic if topic is not None else _tag_index.map(lambda i: TAGS[i].topic())
    return st.builds(lambda t, p: MessagePlan("raw", category, raw_topic=t, raw_payload=p, codes=frozenset(codes)),
                     topic, payload)


_mixed_item = st.one_of(*ITEM_CATEGORIES.values(), *BATCH_ONLY.values())

# --- message-level categories ------------------------------------------------------------------
MESSAGE_CATEGORIES: dict[str, st.SearchStrategy[MessagePlan]] = {
    **{f"single:{k}": _single(k, v) for k, v in ITEM_CATEGORIES.items()},
    "batch:mixed": st.lists(_mixed_item, min_size=1, max_size=12).map(
        lambda items: MessagePlan("batch", "batch:mixed", tuple(items))),
    "batch:valid": st.lists(_valid_item("batch_valid"), min_size=1, max_size=20).map(
        lambda items: MessagePlan("batch", "batch:valid", tuple(items))),
    "raw:invalid_json": _raw("raw:invalid_json", MALFORMED, st.one_of(
        st.sampled_from([b"{not json", b"", b"{", b'{"ts": 1, "value": }', b"\x00", b"[1, 2", b'{"value": 1,}']),
        _any_text.map(lambda s: ("<" + s).encode("utf-8", "surrogatepass")))),
    "raw:not_object": _raw("raw:not_object", MALFORMED, st.sampled_from([b"[1, 2]", b"42", b'"x"', b"null", b"true"])),
    "raw:no_value": _raw("raw:no_value", MALFORMED, st.sampled_from([b'{"ts": 1790000000}', b"{}", b'{"val": 1}'])),
    "raw:non_utf8": _raw("raw:non_utf8", MALFORMED | {"bad_text"}, st.one_of(
        st.sampled_from([b"\xff\xfe", b'{"ts": 1, "value": 1, "roll": "\xc3\x28"}', b"\xed\xa0\x80", b"\x80" * 100]),
        st.binary(min_size=1, max_size=64).map(lambda b: b"\xff" + b))),
    "raw:deep_nesting": _raw("raw:deep_nesting", MALFORMED | {"wrong_type"}, st.one_of(
        _deep(1500, 5000, 200_000).map(str.encode),
        _deep(1500, 5000, 200_000).map(lambda d: ('{"ts": __TS__", "value": ' + d + "}").encode()))),
    "raw:deep_batch": _raw("raw:deep_batch", MALFORMED, _deep(1500, 5000, 100_000).map(
        lambda d: ('{"readings": ' + d + "}").encode()), topic=st.just(BATCH_TOPIC)),
    "raw:huge_int": _raw("raw:huge_int", MALFORMED | {"non_finite"}, _long_int(4301, 8000, 50_000).map(
        lambda n: ('{"ts": "__TS__", "value": ' + n + "}").encode())),
    "raw:bad_batch": _raw("raw:bad_batch", MALFORMED, st.sampled_from(
        [b'{"readings": 5}', b"[]", b'{"readings": {"a": 1}}', b'{"items": []}', b'{"readings": "x"}']),
        topic=st.just(BATCH_TOPIC)),
}

CATEGORIES = sorted(MESSAGE_CATEGORIES)
messages: st.SearchStrategy[MessagePlan] = st.one_of(*MESSAGE_CATEGORIES.values())


# --- the ledger: fresh keys, rendering, expected outcomes --------------------------------------
@dataclass
class Expected:
    """What must be in the store after everything was delivered."""

    valid: dict[tuple[str, int], float] = field(default_factory=dict)  # key -> value (canonical unit)
    either: dict[tuple[str, int], frozenset[str]] = field(default_factory=dict)  # key -> codes if refused
    invalid_keys: set[tuple[str, int]] = field(default_factory=set)  # keys that must never be stored
    invalid_codes: list[frozenset[str]] = field(default_factory=list)  # one per dead letter required
    categories: Counter[str] = field(default_factory=Counter)  # messages per category
    outcomes: Counter[str] = field(default_factory=Counter)  # readings per outcome
    messages: int = 0


class Ledger:
    """Assigns keys, renders plans into (topic, payload bytes) and records the expected outcomes.

    Keys: every reading of a tag that has a timestamp gets the next free millisecond of that tag,
    counted from ``base_s`` (by default one minute before now): 100,000 readings over the ~29 tags
    span a few seconds, well inside any sensible clock-skew window."""

    def __init__(self, base_s: int | None = None) -> None:
        self.base_s = base_s if base_s is not None else int(time.time()) - 60
        self.next_slot: dict[str, int] = {}
        self.expected = Expected()

    def _key(self, tag: TagInfo) -> tuple[int, int, int]:
        """The next free millisecond of ``tag`` from ``base_s``: (seconds, milliseconds, ns)."""
        slot = self.next_slot.get(tag.id, 0)
        self.next_slot[tag.id] = slot + 1
        s, ms = divmod(self.base_s * 1000 + slot, 1000)
        return s, ms, (s * 1000 + ms) * 1_000_000

    def iso_now(self) -> str:
        """A valid ISO time near the run's keys (for readings whose key does not matter)."""
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.base_s))

    @staticmethod
    def _ts_fragment(mode: TsMode, s: int, ms: int) -> str:
        if mode is TsMode.ISO_Z:
            return js(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{ms:03d}Z")
        if mode is TsMode.ISO_OFFSET:  # the same instant written in UTC+02:00
            return js(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s + 7200)) + f".{ms:03d}+02:00")
        if mode is TsMode.ISO_FRACTION:
            return js(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{ms:03d}000+00:00")
        if mode is TsMode.EPOCH_INT:  # an integer where the key is a whole second, else a decimal
            return str(s) if ms == 0 else f"{s}.{ms:03d}"
        return repr(s + ms / 1000)  # EPOCH_FLOAT: a binary float (parsed to the microsecond)

    def valid_reading(self, tag: int | None = None) -> tuple[str, bytes]:
        """A plain valid single reading (the interleaved stream); recorded as expected."""
        if tag is None:
            tag = sum(self.next_slot.values()) % len(TAGS)
        return self.render(MessagePlan("single", "interleaved_valid", (ItemPlan("interleaved_valid", Outcome.VALID,
                                                                                 tag=tag),)))

    def _item(self, it: ItemPlan, in_batch: bool) -> tuple[str, str]:
        """(address, JSON text of the reading) and its expected outcome recorded."""
        e = self.expected
        e.outcomes[it.outcome.value] += 1
        if it.raw_item is not None:
            e.invalid_codes.append(it.codes)
            return "", it.raw_item
        tag = TAGS[it.tag] if it.tag is not None else None
        address = it.address if it.address is not None else tag.topic() if tag is not None else ""
        fields: list[tuple[str, str]] = []
        key: tuple[str, int] | None = None
        if it.ts_mode is TsMode.LITERAL:
            fields.append(("ts", it.ts_literal))
        elif it.ts_mode is not TsMode.OMIT and tag is not None:
            s, ms, ns = self._key(tag)
            key = (tag.id, ns)
            fields.append(("ts", self._ts_fragment(it.ts_mode, s, ms)))
        elif it.ts_mode is not TsMode.OMIT:  # an unknown address: any valid time
            fields.append(("ts", js(self.iso_now())))
        value = it.value
        expected_value = None
        if value is None and tag is not None:
            mid = round(tag.lo + (tag.hi - tag.lo) * (0.3 + 0.4 * (len(self.expected.valid) % 101) / 100), 6)
            expected_value = mid
            value = repr(mid / 1000.0) if it.unit == js("mm") else repr(mid)
        fields.append(("value", value if value is not None else "100.0"))  # in range of e.g. gap_actual
        if it.unit is not None:
            fields.append(("unit", it.unit))
        fields.extend(it.extra)
        if in_batch:
            fields.insert(0, ("topic", js(address)))
        text = "{" + ", ".join(f"{js(k)}: {v}" for k, v in fields) + "}"
        if it.outcome is Outcome.VALID:
            assert key is not None and expected_value is not None, it
            e.valid[key] = expected_value
        elif it.outcome is Outcome.EITHER:
            # without a key the test could not tell "stored" from "lost": every EITHER has one
            assert key is not None, f"an EITHER reading needs a tag and a timestamp: {it}"
            e.either[key] = it.codes
        else:
            e.invalid_codes.append(it.codes)
            if key is not None:
                e.invalid_keys.add(key)
        return address, text

    def render(self, plan: MessagePlan) -> tuple[str, bytes]:
        e = self.expected
        e.messages += 1
        e.categories[plan.category] += 1
        if plan.kind == "raw":
            e.outcomes["invalid"] += 1
            e.invalid_codes.append(plan.codes)
            return plan.raw_topic, plan.raw_payload.replace(b"__TS__", self.iso_now().encode())
        if plan.kind == "single":
            address, text = self._item(plan.items[0], in_batch=False)
            return address, text.encode()
        texts = [self._item(it, in_batch=True)[1] for it in plan.items]
        return BATCH_TOPIC, ('{"readings": [' + ", ".join(texts) + "]}").encode()
