"""Tag map resolution, unit conversion through pint, and dead-letter reasons."""

from __future__ import annotations

import math

import pytest

from core.samples import DeadLetter, Quality, RawReading, RollEvent, Sample, SourceKind
from ontology.tagmap import TagMap, TagMapError
from ontology.units import UnitError, affine
from ontology.validate import Tagger
from tests.conftest import DEFAULTS

T = 1_790_000_000 * 10**9


@pytest.fixture(scope="module")
def tagger() -> Tagger:
    return Tagger(TagMap.load(DEFAULTS / "tagmap.toml"), "pilot-1")


def mq(topic: str, value: object, unit: str | None = None, ts: int | None = T) -> RawReading:
    return RawReading(SourceKind.MQTT, topic, value, ts, T + 1, unit)


def test_mm_reading_for_um_tag_is_stored_converted(tagger: Tagger) -> None:
    s = tagger.tag(mq("pilot/line-7/calendering/gap_actual", 0.0655, "mm"))
    assert isinstance(s, Sample)
    assert s.value == pytest.approx(65.5)
    assert s.unit == "um" and s.line_id == "line-7" and s.tag_id == "calendering.gap_actual"


def test_fahrenheit_reading_for_celsius_tag(tagger: Tagger) -> None:
    s = tagger.tag(mq("pilot/pilot-1/calendering/roll_temperature", 176.0, "degF"))
    assert isinstance(s, Sample) and s.value == pytest.approx(80.0)
    s2 = tagger.tag(mq("pilot/pilot-1/calendering/roll_temperature", 353.15, "K"))
    assert isinstance(s2, Sample) and s2.value == pytest.approx(80.0)


def test_line_load_in_kN_per_m_is_N_per_mm(tagger: Tagger) -> None:
    s = tagger.tag(mq("pilot/pilot-1/calendering/line_load", 1200.0, "kN/m"))
    assert isinstance(s, Sample) and s.value == pytest.approx(1200.0)


@pytest.mark.parametrize(("value", "unit", "code", "fragment"), [
    (1.0, "kg", "unit_dimension", "cannot convert"),
    (1.0, "parsecs-per-fortnight", "unknown_unit", "unknown unit"),
    (float("nan"), None, "non_finite", "not finite"),
    (float("inf"), None, "non_finite", "not finite"),
    ("65", None, "wrong_type", "expected a number"),
    (True, None, "wrong_type", "expected a number"),
    (None, None, "wrong_type", "expected a number"),
    (500.0, None, "out_of_range", "outside allowed range [10, 400] um"),
    (0.5, "mm", "out_of_range", "value 500 um outside"),
])
def test_bad_readings_are_dead_letters_with_precise_reasons(tagger: Tagger, value: object, unit: str | None,
                                                            code: str, fragment: str) -> None:
    d = tagger.tag(mq("pilot/pilot-1/calendering/gap_actual", value, unit))
    assert isinstance(d, DeadLetter)
    assert d.reason_code == code
    assert fragment in d.reason
    assert "calendering.gap_actual" in d.reason
    assert d.address == "pilot/pilot-1/calendering/gap_actual"


def test_unknown_address_and_missing_timestamp(tagger: Tagger) -> None:
    d = tagger.tag(mq("pilot/pilot-1/calendering/nope", 1.0))
    assert isinstance(d, DeadLetter) and d.reason_code == "unknown_address"
    d = tagger.tag(mq("pilot/pilot-1/calendering/gap_actual", 60.0, ts=None))
    assert isinstance(d, DeadLetter) and d.reason_code == "missing_timestamp"
    # the same column name from another source kind is not a match
    d = tagger.tag(RawReading(SourceKind.OPCUA, "calender_gap_actual_um", 60.0, T, T))
    assert isinstance(d, DeadLetter) and d.reason_code == "unknown_address"


def test_roll_id_and_web_position_travel_with_samples(tagger: Tagger) -> None:
    t = Tagger(tagger.tagmap, "pilot-1")
    ev = t.tag(RawReading(SourceKind.REPLAY, "roll_id", "R-0042", T, T))
    assert isinstance(ev, RollEvent) and ev.roll_id == "R-0042" and ev.step == "calendering"
    w = t.tag(RawReading(SourceKind.REPLAY, "web_position_m", 12.5, T, T))
    assert isinstance(w, Sample)
    s = t.tag(RawReading(SourceKind.REPLAY, "calender_gap_actual_um", 66.0, T, T, quality=Quality.UNCERTAIN))
    assert isinstance(s, Sample) and s.roll_id == "R-0042" and s.web_pos_m == 12.5
    assert s.quality is Quality.UNCERTAIN
    bad = t.tag(RawReading(SourceKind.REPLAY, "roll_id", 17.0, T, T))
    assert isinstance(bad, DeadLetter) and bad.reason_code == "wrong_type"


def test_affine_conversions_come_from_pint() -> None:
    a, b = affine("degF", "degC")
    assert a * 212 + b == pytest.approx(100.0)
    assert affine("percent", "dimensionless") == pytest.approx((0.01, 0.0))
    with pytest.raises(UnitError) as e:
        affine("um", "N/mm")
    assert e.value.code == "unit_dimension"


@pytest.mark.parametrize(("mutation", "fragment"), [
    ({"canonical_unit": "bananas"}, "unknown unit 'bananas'"),
    ({"range": [5, 1]}, "min > max"),
    ({"sources": [{"mqtt": "a/b", "unit": "kg"}]}, "cannot convert"),
    ({"kind": "XX"}, "kind"),
    ({"sources": [{"mqtt": "a/b", "replay": "c"}]}, "exactly one"),
])
def test_broken_tag_map_is_refused_naming_the_tag(mutation: dict, fragment: str) -> None:
    tag = {"id": "calendering.gap_actual", "step": "calendering", "kind": "MP", "canonical_unit": "um",
           "range": [10, 400], "sources": [{"mqtt": "x/y"}]}
    tag.update(mutation)
    with pytest.raises(TagMapError) as e:
        TagMap.from_dict({"tags": [tag]}, origin="plant.toml")
    msg = str(e.value)
    assert "plant.toml" in msg and "calendering.gap_actual" in msg and fragment in msg


def test_duplicate_addresses_are_refused() -> None:
    t1 = {"id": "a.b", "step": "s", "kind": "MP", "sources": [{"mqtt": "x/y"}]}
    t2 = {"id": "a.c", "step": "s", "kind": "MP", "sources": [{"mqtt": "x/y"}]}
    with pytest.raises(TagMapError, match="mapped to both"):
        TagMap.from_dict({"tags": [t1, t2]})


def test_nan_never_reaches_the_store_even_in_range_checks(tagger: Tagger) -> None:
    out = [tagger.tag(mq("pilot/pilot-1/calendering/gap_actual", v)) for v in (65.0, math.nan, -math.inf)]
    assert [type(o).__name__ for o in out] == ["Sample", "DeadLetter", "DeadLetter"]


def test_roll_per_step_and_web_position_integrated_from_speed() -> None:
    spec = {"tags": [
        {"id": "coating.roll_id", "step": "coating", "kind": "TRACE", "value_type": "string",
         "traceability": "roll_id", "sources": [{"replay": "coat_roll"}]},
        {"id": "coating.speed", "step": "coating", "kind": "MP", "canonical_unit": "m/min",
         "traceability": "web_speed", "sources": [{"replay": "coat_speed", "unit": "m/min"}]},
        {"id": "coating.wet_film", "step": "coating", "kind": "SP", "canonical_unit": "um",
         "sources": [{"replay": "wet"}]},
        {"id": "calendering.roll_id", "step": "calendering", "kind": "TRACE", "value_type": "string",
         "traceability": "roll_id", "sources": [{"replay": "cal_roll"}]},
        {"id": "calendering.gap", "step": "calendering", "kind": "MP", "canonical_unit": "um",
         "sources": [{"replay": "gap"}]},
    ]}
    t = Tagger(TagMap.from_dict(spec), "L")
    def r(addr, v, ts):
        return RawReading(SourceKind.REPLAY, addr, v, T + ts * 10**9, T)

    t.tag(r("coat_roll", "C-7", 0))
    t.tag(r("cal_roll", "K-3", 0))
    t.tag(r("coat_speed", 6.0, 0))
    t.tag(r("coat_speed", 6.0, 60))  # 6 m/min for 60 s -> 6 m
    wet = t.tag(r("wet", 150.0, 60))
    gap = t.tag(r("gap", 70.0, 60))
    assert isinstance(wet, Sample) and wet.roll_id == "C-7" and wet.web_pos_m == pytest.approx(6.0)
    assert isinstance(gap, Sample) and gap.roll_id == "K-3"
    t.tag(r("coat_roll", "C-8", 61))  # roll change resets the position
    t.tag(r("coat_speed", 6.0, 91))
    wet2 = t.tag(r("wet", 150.0, 91))
    assert isinstance(wet2, Sample) and wet2.roll_id == "C-8" and wet2.web_pos_m == pytest.approx(3.0)


# -- the compiled batch path (tag_batch) against the per-reading path (tag + row sort) -----------------

_EQUIV_SPEC = {"tags": [
    {"id": "coating.roll_id", "step": "coating", "kind": "TRACE", "value_type": "string",
     "traceability": "roll_id", "sources": [{"replay": "coat_roll"}, {"mqtt": "p/{line}/coating/roll"}]},
    {"id": "coating.parent_roll", "step": "coating", "kind": "TRACE", "value_type": "string",
     "traceability": "parent_roll_id", "sources": [{"replay": "coat_parent"}]},
    {"id": "coating.recipe", "step": "coating", "kind": "SP", "value_type": "string",
     "sources": [{"replay": "recipe"}, {"opcua": "ns=2;s=Recipe"}]},
    {"id": "coating.speed", "step": "coating", "kind": "MP", "canonical_unit": "m/min", "range": [0, 60],
     "traceability": "web_speed", "sources": [{"replay": "coat_speed", "unit": "m/min"},
                                              {"opcua": "ns=2;s=Speed", "unit": "m/s"}]},
    {"id": "coating.wet_film", "step": "coating", "kind": "SP", "canonical_unit": "um", "range": [0, 1000],
     "sources": [{"replay": "wet"}, {"mqtt": "p/{line}/coating/wet", "unit": "mm"}, {"opcua": "ns=2;s=Wet"}]},
    {"id": "coating.temp", "step": "coating", "kind": "MP", "canonical_unit": "degC", "range": [-20, 200],
     "sources": [{"replay": "temp_F", "unit": "degF"}, {"mqtt": "p/+/coating/temp/#"}]},
    {"id": "calendering.roll_id", "step": "calendering", "kind": "TRACE", "value_type": "string",
     "traceability": "roll_id", "sources": [{"replay": "cal_roll"}]},
    {"id": "calendering.web_position", "step": "calendering", "kind": "TRACE", "canonical_unit": "m",
     "range": [0, 100000], "traceability": "web_position",
     "sources": [{"replay": "cal_web"}, {"mqtt": "p/{line}/calendering/web", "unit": "km"}]},
    {"id": "calendering.gap", "step": "calendering", "kind": "MP", "canonical_unit": "um", "range": [10, 400],
     "sources": [{"replay": "gap"}, {"mqtt": "p/line-x/calendering/gap", "unit": "mm"}, {"opcua": "ns=2;s=Gap"}]},
    {"id": "calendering.load", "step": "calendering", "kind": "MP", "canonical_unit": "N/mm",
     "sources": [{"replay": "load", "unit": "kN/m"}]},
]}


def _random_batches(seed: int, n_batches: int) -> list[list[RawReading]]:
    import random

    rnd = random.Random(seed)
    replay = ["coat_roll", "coat_parent", "recipe", "coat_speed", "wet", "temp_F", "cal_roll", "cal_web", "gap",
              "load", "nope"]
    mqtt = ["p/L1/coating/roll", "p/L2/coating/wet", "p/L1/coating/temp/a/b", "p/L2/calendering/web",
            "p/line-x/calendering/gap", "p/L1/nothing", "p/L3/coating/wet"]
    opcua = ["ns=2;s=Recipe", "ns=2;s=Speed", "ns=2;s=Wet", "ns=2;s=Gap", "ns=2;s=Nope"]
    values = [lambda: rnd.uniform(-50, 1200), lambda: rnd.randint(0, 500), lambda: rnd.choice(["R-1", "R-2", " R-2 ", ""]),
              lambda: rnd.choice([math.nan, math.inf, -math.inf, True, False, None, "7", -0.0, 0.0, 1e308, 2**70])]
    units = [None, None, None, "um", "mm", "degF", "degC", "K", "m", "km", "m/min", "m/s", "kg", "bananas", "N/mm"]
    batches, ts = [], T
    for _ in range(n_batches):
        batch: list[RawReading] = []
        for _ in range(rnd.randint(1, 12)):  # rows
            ts = ts + rnd.choice([0, 10**9, 10**9, 10**9, -10**9])
            row_ts = None if rnd.random() < 0.05 else ts
            for _ in range(rnd.choice([1, 1, 2, 4, 11, 16])):
                src = rnd.choice([SourceKind.REPLAY, SourceKind.REPLAY, SourceKind.MQTT, SourceKind.OPCUA])
                addr = rnd.choice(replay if src is SourceKind.REPLAY else mqtt if src is SourceKind.MQTT else opcua)
                v = rnd.choice(values)() if rnd.random() < 0.3 else (
                    rnd.choice(["R-1", "R-2", "R-3"]) if "roll" in addr or "parent" in addr or "Recipe" in addr
                    or addr == "recipe" else rnd.uniform(0, 300))
                batch.append(RawReading(
                    src, addr, v, row_ts, T + 1, rnd.choice(units) if rnd.random() < 0.3 else None,
                    rnd.choice([Quality.GOOD, Quality.GOOD, Quality.UNCERTAIN, Quality.BAD]),
                    rnd.choice([None, None, None, "L9", ""]), rnd.choice([None, None, None, "R-own"]),
                    rnd.choice([None, None, None, 3.5]), "c1"))
        batches.append(batch)
    return batches


@pytest.mark.parametrize("seed", range(8))
def test_tag_batch_equals_the_per_reading_path(seed: int) -> None:
    tm = TagMap.from_dict(_EQUIV_SPEC)
    fast, ref = Tagger(tm, "L0"), Tagger(tm, "L0")
    for batch in _random_batches(seed, 300):
        a, b = fast.tag_batch(batch), ref.tag_batch_per_reading(tuple(batch))
        assert [type(x) for x in a] == [type(x) for x in b]
        assert a == b and repr(a) == repr(b)
    assert fast.trace == ref.trace


def test_tag_batch_rows_put_trace_readings_first_wherever_they_stand() -> None:
    t = Tagger(TagMap.from_dict(_EQUIV_SPEC), "L")
    def r(addr, v, ts=0):
        return RawReading(SourceKind.REPLAY, addr, v, T + ts, T)

    out = t.tag_batch([r("gap", 70.0), r("cal_roll", "K-1"), r("load", 1.0), r("cal_web", 2.5), r("recipe", "A"),
                       r("gap", 71.0, 1), r("cal_web", 3.0, 1)])
    assert [getattr(o, "tag_id", None) for o in out] == [
        "calendering.roll_id", "calendering.web_position", "calendering.gap", "calendering.load",
        "coating.recipe", "calendering.web_position", "calendering.gap"]
    assert out[2].roll_id == "K-1" and out[2].web_pos_m == 2.5 and out[6].web_pos_m == 3.0


def test_tag_batch_keeps_pattern_topics_bounded() -> None:
    t = Tagger(TagMap.load(DEFAULTS / "tagmap.toml"), "pilot-1")
    t.CACHE_LIMIT = 10
    batch = [mq(f"pilot/line-{i}/calendering/gap_actual", 65.0) for i in range(25)] + [mq("pilot/x/nope", 1.0)]
    out = t.tag_batch(batch)
    assert [o.line_id for o in out[:25]] == [f"line-{i}" for i in range(25)]
    assert isinstance(out[25], DeadLetter) and out[25].reason_code == "unknown_address"
    assert t.cache_misses == 26 and t.cache_resets == 2
    assert t.tag_batch(batch[24:25])[0].line_id == "line-24" and t.cache_misses == 26


def test_an_integer_beyond_the_float_range_is_a_dead_letter_not_a_crash(tagger: Tagger) -> None:
    huge = 10 ** 400  # a JSON payload can carry it; float() overflows
    r = mq("pilot/pilot-1/calendering/gap_actual", huge)
    one = tagger.tag(r)
    assert type(one).__name__ == "DeadLetter" and one.reason_code == "non_finite" and "overflow" in one.reason
    batch = tagger.tag_batch([mq("pilot/pilot-1/calendering/gap_actual", 65), r,
                              mq("pilot/pilot-1/calendering/gap_actual", 66.0)])
    assert [type(o).__name__ for o in batch] == ["Sample", "DeadLetter", "Sample"]
    assert batch[1].reason_code == "non_finite"


def _hostile_batches(seed: int, n_batches: int) -> list[list[RawReading]]:
    """_random_batches with hostile readings mixed in: timestamps beyond the store's range and far
    outside the skew window, lone surrogates / NUL / over-long text in addresses, roll ids and units,
    non-finite web positions, roll ids cycling."""
    import random

    rnd = random.Random(1000 + seed)
    batches = _random_batches(seed, n_batches)
    day = 86400 * 10**9
    for batch in batches:
        for k, r in enumerate(batch):
            x = rnd.random()
            if x < 0.04:
                r = r._replace(source_ts_ns=rnd.choice([2**63 + 1, -(2**63) - 1, 2**80]))
            elif x < 0.08 and r.source_ts_ns is not None:
                r = r._replace(source_ts_ns=r.received_ts_ns + rnd.choice([301 * 10**9, -401 * day, 10**15]))
            elif x < 0.11:
                r = r._replace(address=r.address + rnd.choice(["\ud800", "\x00", "z" * 1100]))
            elif x < 0.14:
                r = r._replace(roll_id=rnd.choice(["R-\udcff", "R\x00", "R" * 300, f"R-{rnd.randint(0, 10**6)}"]))
            elif x < 0.16:
                r = r._replace(web_pos_m=rnd.choice([math.nan, math.inf, -math.inf]))
            elif x < 0.18:
                r = r._replace(unit=rnd.choice(["u\x00m", "\ud800", "m" * 300]))
            elif x < 0.20 and isinstance(r.value, str):
                r = r._replace(value=rnd.choice(["R-\ud800", "R" * 300, f"R-{rnd.randint(0, 10**6)}"]))
            batch[k] = r
    return batches


@pytest.mark.parametrize("seed", range(6))
def test_tag_batch_equals_the_per_reading_path_under_hostile_input(seed: int) -> None:
    """The screening (store range, skew window, storable text, finite web position) gives the same
    results on both paths; with a skew window set, and nothing unstorable passes."""
    tm = TagMap.from_dict(_EQUIV_SPEC)
    fast, ref = Tagger(tm, "L0"), Tagger(tm, "L0")
    for t in (fast, ref):
        t.set_time_window(300.0, 400 * 86400.0)
    codes: set[str] = set()
    for batch in _hostile_batches(seed, 200):
        a, b = fast.tag_batch(batch), ref.tag_batch_per_reading(tuple(batch))
        assert [type(x) for x in a] == [type(x) for x in b]
        assert a == b and repr(a) == repr(b)
        for x in a:
            if type(x) is DeadLetter:
                codes.add(x.reason_code)
            elif type(x) is Sample:
                assert -(2**63) < x.source_ts_ns < 2**63
                for text in (x.line_id, x.tag_id, x.roll_id or ""):
                    text.encode("utf-8")
                    assert "\x00" not in text and len(text) <= 1024
                assert x.web_pos_m is None or math.isfinite(x.web_pos_m)
    assert fast.trace == ref.trace
    assert {"bad_timestamp", "clock_skew", "bad_text"} <= codes
