"""The unit guard: parse_unit / affine raise only UnitError for any input, return within a bounded
time, and keep memory bounded under a hostile sender (ontology/units.py, Tagger._unit_miss)."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.samples import DeadLetter, RawReading, Sample, SourceKind
from ontology import units
from ontology.tagmap import TagMap
from ontology.units import UnitError, affine, parse_unit
from ontology.validate import Tagger
from tests.conftest import DEFAULTS

LIMIT_S = 0.050  # CPU time of one call (thread time: other processes on the machine do not count)
T = 1_790_000_000 * 10**9

# inputs that, before the guard, ended the consumer (exceptions other than UnitError) or froze pint
KILLERS = ["1/0", "0**-1", "(m", "m)", "((m)", "m**99999999", "m^1e9", "m**1e9", "9**9**9", "km**99999999",
           "m²²²²²²", "((((((((((m))))))))))", "m+s", "m**m", "10**m", "[length]", "m\x00", "\ud800m",
           "m" * 65, "m/" * 40, "nan", "1e999", "inf", "m**(1/0)", "(1000*m)", "m**2**3", "m**--2",
           "(((9**12)**12)**12)", "m*" * 13 + "m", "km**12*km**12", "**", "^", "()", "(*)",
           "(((99999999999999999999**12)**12)**12)**12", "(m**2)**7", "((km**3)**2)**3"]


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[str, float]:
    """'ok' or the UnitError code; any other exception fails the test. Returns (outcome, cpu seconds)."""
    t0 = time.thread_time()
    try:
        fn(*args)
        out = "ok"
    except UnitError as err:
        assert err.code in ("unknown_unit", "unit_dimension"), err.code
        out = err.code
    return out, time.thread_time() - t0


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    parse_unit("m")  # pint builds its tokenizer regexes on the first call
    affine("mm", "um")


@pytest.mark.parametrize("unit", KILLERS)
def test_known_killers_are_refused_quickly(unit: str) -> None:
    for fn, args in ((parse_unit, (unit,)), (affine, (unit, "um")), (affine, ("um", unit))):
        out, dt = _timed(fn, *args)
        assert dt < LIMIT_S, (unit, dt)
        assert out == "unknown_unit", (fn.__name__, unit, out)


@pytest.mark.parametrize("unit", [3, 3.5, None, b"um", ["um"], {"u": 1}, object()])
def test_non_strings_are_unknown_units(unit: object) -> None:
    with pytest.raises(UnitError) as e:
        parse_unit(unit)  # type: ignore[arg-type]
    assert e.value.code == "unknown_unit" and "must be a string" in str(e.value)
    with pytest.raises(UnitError):
        affine(unit, "um")  # type: ignore[arg-type]


def test_units_the_line_uses_still_convert() -> None:
    cases = {("mm", "um"): (1000.0, 0.0), ("degF", "degC"): (5 / 9, -160 / 9), ("kN/m", "N/mm"): (1.0, 0.0),
             ("percent", "1"): (0.01, 0.0), ("m³/h", "m**3/h"): (1.0, 0.0), ("mPa·s", "Pa*s"): (0.001, 0.0),
             ("µm", "um"): (1.0, 0.0), ("mg/cm²", "g/m^2"): (10.0, 0.0), ("m/s^2", "m/min**2"): (3600.0, 0.0),
             ("kg/(m*s**2)", "Pa"): (1.0, 0.0), ("m**-12", "mm**-12"): (1e-36, 0.0), ("m⁻¹", "1/mm"): (0.001, 0.0)}
    for (src, dst), (a, b) in cases.items():
        got = affine(src, dst)
        assert got == pytest.approx((a, b), rel=1e-12, abs=1e-12), (src, dst, got)


def test_refusals_say_why_with_the_unit_as_written() -> None:
    with pytest.raises(UnitError, match=r"unknown unit 'm\*\*99999999': exponent 999"):
        parse_unit("m**99999999")
    with pytest.raises(UnitError, match=r"unit ' mm ' \[length\] cannot convert to 'kg' \[mass\]") as e:
        affine(" mm ", "kg")
    assert e.value.code == "unit_dimension"
    with pytest.raises(UnitError, match=r"unknown unit '1/0' \(ZeroDivisionError\)"):
        affine("1/0", "um")


def test_caches_are_keyed_on_the_normalised_string() -> None:
    units._parse.cache_clear()
    units._affine.cache_clear()
    for u in ("um", " um", "um ", "  um\t", "µm", "micrometer", " micrometer "):
        assert affine(u, "mm") == pytest.approx((0.001, 0.0))
    assert units._parse.cache_info().currsize == 2  # micrometer, mm
    assert units._affine.cache_info().currsize == 1


def _distinct_valid_units() -> list[str]:
    prefixes = ["", "k", "M", "G", "m", "u", "n", "p", "c", "d", "da", "h"]
    lengths = ["m", "inch", "ft", "yd", "mile", "furlong", "angstrom", "micron", "fathom", "league"]
    out = []
    for p in prefixes:
        for a in lengths:
            for q in prefixes:
                for e in range(1, 12):
                    out.append(f"{p}{a}**{e + 1}/{q}m**{e}")  # a length, written in 15,840 ways
    return out


def test_memory_stays_bounded_under_distinct_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Distinct valid units (all lengths: each is converted) and distinct refused ones: once the LRU
    caches are full they stay at their size, pint's registry caches are reset when they grew by
    PINT_CACHE_SLACK, and the traced memory does not grow (it grew without bound before)."""
    monkeypatch.setattr(units, "PINT_CACHE_SLACK", 300)  # reach the reset within the test's budget
    valid = _distinct_valid_units()
    assert len(valid) == 15_840
    bad = [f"m**{13 + i}" if i % 2 else f"zz{i}" for i in range(1000)]
    for u in valid[:units.CACHE_SIZE + 100]:  # fill the caches to their bound first
        try:
            affine(u, "um")
        except UnitError:  # a few underflow: e.g. nangstrom**12/Gm**11 is 1e-327
            pass
    resets = units.pint_cache_resets
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for u in valid[units.CACHE_SIZE + 100:units.CACHE_SIZE + 900] + bad:
            try:
                affine(u, "um")
            except UnitError:
                pass
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    info = units.cache_info()
    assert info["parse_entries"] == units.CACHE_SIZE and info["affine_entries"] == units.CACHE_SIZE
    assert units.pint_cache_resets > resets
    assert info["pint_cache_entries"] <= units._BASE_SIZE + units.PINT_CACHE_SLACK + 16
    assert grown < 2 * 2**20, f"memory grew by {grown / 2**20:.1f} MB"


# ---- property-based: any text -------------------------------------------------------------------
_NAMES = ["m", "mm", "um", "km", "s", "min", "h", "kg", "g", "N", "kN", "Pa", "degC", "degF", "percent", "1",
          "meter", "inch", "furlong", "e", "pi", "x", "nan", "inf", "[length]"]
_expr = st.recursive(
    st.one_of(st.sampled_from(_NAMES), st.integers(-10**30, 10**30).map(str),
              st.floats(allow_nan=False, allow_infinity=False).map(repr)),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["*", "/", "**", "^", " ", "·", "+", "-"]), inner).map("".join),
        inner.map(lambda x: f"({x})"),
        st.tuples(inner, st.sampled_from(["²", "³", "⁻¹", "²²", "**-", "^+"])).map("".join)),
    max_leaves=12)
_ANY_TEXT = st.one_of(st.text(max_size=80), st.text(alphabet=sorted(units._ALLOWED), max_size=80), _expr)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ANY_TEXT, st.sampled_from(["um", "degC", "N/mm", "1", "m/min"]))
def test_fuzz_only_unit_error_escapes_and_each_call_is_bounded(text: str, target: str) -> None:
    for fn, args in ((parse_unit, (text,)), (affine, (text, target)), (affine, (target, text))):
        _, dt = _timed(fn, *args)
        if dt >= LIMIT_S:
            # once in a few thousand calls a cold call pays for something that is not its input (a garbage
            # collection, pint rebuilding a cache it reset); the input's own cost shows again, cold
            units._parse.cache_clear()
            units._affine.cache_clear()
            _, dt = _timed(fn, *args)
        assert dt < LIMIT_S, (fn.__name__, args, dt)


# ---- the tagger's per-entry unit dicts ------------------------------------------------------------
def _reading(unit: str, value: float = 0.065) -> RawReading:
    return RawReading(SourceKind.MQTT, "pilot/line-7/calendering/gap_actual", value, T, T + 1, unit)


def test_tagger_keeps_units_bounded_and_never_keeps_refusals() -> None:
    tg = Tagger(TagMap.load(DEFAULTS / "tagmap.toml"), "pilot-1")
    first = tg.tag_batch([_reading("mm")])[0]
    assert isinstance(first, Sample) and first.value == pytest.approx(65.0)
    entry = tg._fast[SourceKind.MQTT]["pilot/line-7/calendering/gap_actual"]
    base = len(entry[7])
    # refused units: dead letters, nothing kept
    out = tg.tag_batch([_reading(u) for u in ("1/0", "m**99999999", "furlongs-ish", "kg", "(m")])
    assert [d.reason_code for d in out if isinstance(d, DeadLetter)] == \
        ["unknown_unit", "unknown_unit", "unknown_unit", "unit_dimension", "unknown_unit"]
    assert len(entry[7]) == base
    # white-space variants convert but take no slot
    out = tg.tag_batch([_reading(" " * i + "mm") for i in range(1, 50)])
    assert all(isinstance(s, Sample) and s.value == pytest.approx(65.0) for s in out)
    assert len(entry[7]) == base
    # many distinct valid units: at most UNITS_PER_ENTRY more on this entry
    lengths = [f"{p}m**{e + 1}/{q}m**{e}" for p in ("", "c", "d", "k") for q in ("", "c", "d") for e in range(1, 11)]
    out = tg.tag_batch([_reading(u, 1e-5) for u in lengths])
    assert all(not isinstance(s, DeadLetter) or s.reason_code == "out_of_range" for s in out)
    assert len(entry[7]) <= 3 + Tagger.UNITS_PER_ENTRY
    assert sum(isinstance(s, Sample) for s in out) >= 1


def test_tagger_units_kept_over_all_entries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The topics of one tag share one unit map (per tag and source unit), so a sender cycling through
    topics gains nothing; past UNITS_KEPT units in all, every kept one is dropped and learnt again."""
    monkeypatch.setattr(Tagger, "UNITS_KEPT", 40)
    monkeypatch.setattr(Tagger, "UNITS_PER_ENTRY", 1000)
    tg = Tagger(TagMap.load(DEFAULTS / "tagmap.toml"), "pilot-1")
    readings = [RawReading(SourceKind.MQTT, f"pilot/line-{i}/calendering/gap_actual", 65.0, T, T + 1, u)
                for i in range(20) for u in ("um", "micrometer", "µm", "micron")]
    out = tg.tag_batch(readings)
    assert all(isinstance(s, Sample) and s.value == pytest.approx(65.0) for s in out)
    maps = {id(tg._fast[SourceKind.MQTT][r.address][7]) for r in readings}
    assert len(maps) == 1  # 20 topics, one map
    lengths = [f"{p}m**{e + 1}/{q}m**{e}" for p in ("", "c", "d", "k") for q in ("", "c", "d") for e in range(1, 11)]
    out = tg.tag_batch([RawReading(SourceKind.MQTT, "pilot/line-0/calendering/gap_actual", 1e-5, T, T + 1, u)
                        for u in lengths])
    kept = tg.__dict__["_units_kept"]
    assert len(kept) <= 40 and tg.unit_cache_resets >= 1
    entry = tg._fast[SourceKind.MQTT]["pilot/line-0/calendering/gap_actual"]
    assert len(entry[7]) - 3 <= 40


# ---- "C" and "F" keep pint's meaning (coulomb, farad); temperatures have unambiguous names (#20) ----------

def test_bare_c_and_f_are_coulomb_and_farad() -> None:
    assert parse_unit("C") == units.ureg.coulomb and parse_unit("F") == units.ureg.farad
    assert affine("C", "A*s") == pytest.approx((1.0, 0.0))
    assert affine("mC", "C") == pytest.approx((1e-3, 0.0))
    assert affine("uF", "F") == pytest.approx((1e-6, 0.0))


@pytest.mark.parametrize("unit", ["°C", "℃", "degC", "degree_Celsius", "celsius", " °C "])
def test_celsius_is_reachable_by_unambiguous_names(unit: str) -> None:
    assert parse_unit(unit) == units.ureg.degC
    assert affine(unit, "K") == pytest.approx((1.0, 273.15))


@pytest.mark.parametrize("unit", ["°F", "degF", "degree_Fahrenheit", "fahrenheit"])
def test_fahrenheit_is_reachable_by_unambiguous_names(unit: str) -> None:
    assert affine(unit, "degC") == pytest.approx((5 / 9, -160 / 9))


@pytest.mark.parametrize(("unit", "hint"), [("C", "'C' is coulomb"), ("F", "'F' is farad")])
def test_a_bare_c_or_f_for_a_temperature_is_refused_with_the_fix_named(unit: str, hint: str) -> None:
    with pytest.raises(UnitError) as err:
        affine(unit, "degC")
    assert err.value.code == "unit_dimension" and hint in str(err.value) and "°" in str(err.value)


def test_a_temperature_reading_in_bare_c_becomes_a_dead_letter_not_a_temperature() -> None:
    tg = Tagger(TagMap.load(DEFAULTS / "tagmap.toml"), "pilot-1")
    addr = "pilot/line-7/drying/zone1_temperature_setpoint"
    ok, bad = tg.tag_batch([RawReading(SourceKind.MQTT, addr, 80.0, T, T + 1, "°C"),
                            RawReading(SourceKind.MQTT, addr, 80.0, T + 1, T + 2, "C")])
    assert isinstance(ok, Sample) and ok.value == pytest.approx(80.0) and ok.unit == "degC"
    assert isinstance(bad, DeadLetter) and bad.reason_code == "unit_dimension" and "coulomb" in bad.reason
