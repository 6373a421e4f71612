"""`twin init --mqtt` without a broker: what a Sparkplug B birth says about units and ranges (engUnit /
engLow / engHigh properties, a unit in the description), the feedback limits (--limit, or the feedback
left off with the reason), and the config written for Sparkplug and plain-topic setpoints, checked as
`twin check-config` checks it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pysparkplug as spb
import pytest
from pysparkplug import _protobuf as pb

from connectors.mqtt.discover import Discovery, _sparkplug, metric_unit_range
from twin.config import check_config_report
from twin.init import SPARKPLUG_POINTS, InitError, InitOptions, make_plan, parse_limit, render_config, render_tagmap
from twin.semantic import Point

T = 1_796_000_000_000


def _birth_with_properties() -> bytes:
    birth = pb.Payload.FromString(spb.DBirth(timestamp=T, seq=1, metrics=(
        spb.Metric(timestamp=T, name="Nip/GapSet", datatype=spb.DataType.DOUBLE, value=0.08, alias=4),
        spb.Metric(timestamp=T, name="Speed", datatype=spb.DataType.FLOAT, value=6.0, alias=5,
                   metadata=spb.Metadata(description="web speed [m/min]")),
    )).encode())
    props = birth.metrics[0].properties
    for key, kind, field, value in (("engUnit", 12, "string_value", "mm"), ("engLow", 10, "double_value", 0.03),
                                    ("engHigh", 10, "double_value", 0.25)):
        props.keys.append(key)
        pv = props.values.add()
        pv.type = kind
        setattr(pv, field, value)
    return birth.SerializeToString()


def test_a_birth_states_units_and_ranges_in_properties_or_the_description() -> None:
    disc = Discovery("h", 1, 1.0)
    _sparkplug(disc, "spBv1.0/G/DBIRTH/E/cal", _birth_with_properties(), {}, None)
    meta = disc.sparkplug_meta
    assert (meta["G/E/cal/Nip/GapSet"]["unit"], meta["G/E/cal/Nip/GapSet"]["range"]) == ("mm", (0.03, 0.25))
    assert (meta["G/E/cal/Speed"]["unit"], meta["G/E/cal/Speed"]["range"]) == ("m/min", None)
    assert disc.sparkplug_metrics["G/E/cal/Speed"] == ("FLOAT", 5)
    # a bad birth is left out, nothing raises
    _sparkplug(disc, "spBv1.0/G/DBIRTH/E/x", b"\xff\x00garbage", {}, None)
    assert not any(a.startswith("G/E/x/") for a in disc.sparkplug_meta)
    # the properties win over the description; inverted or partial ranges are no range
    assert metric_unit_range({"engunit": "degF", "englow": 5, "enghigh": 1}, "x [mm]") == {"unit": "degF",
                                                                                          "range": None}
    assert metric_unit_range({}, "no unit here") == {"unit": None, "range": None}


@pytest.mark.parametrize("text,canonical,expected", [
    ("40:200", "um", (40.0, 200.0)), ("0.04:0.2mm", "um", (40.0, 200.0)), ("0.04 : 0.2 mm", "um", (40.0, 200.0)),
    ("104:140degF", "degC", (40.0, 60.0))])
def test_limits_take_a_unit(text: str, canonical: str, expected: tuple[float, float]) -> None:
    assert parse_limit("gap", text, canonical) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["200:40", "a:b", "40-200", "0.04:0.2degC", "nan:1"])
def test_bad_limits_are_refused_with_the_form(text: str) -> None:
    with pytest.raises(InitError, match="--limit gap="):
        parse_limit("gap", text, "um")


def _points(sp_address: str, sp_range: tuple[float, float] | None = None) -> list[Point]:
    def p(addr: str, desc: str, unit: str | None, rng: tuple[float, float] | None = None) -> Point:
        parts = addr.split("/")
        return Point(addr, parts[-1], parts[-2], addr, desc, None, unit, rng, False, "Double", "mqtt")

    return [p("G/E/calender/RollGap", "roll gap, actual", "mm"), p(sp_address, "roll gap setpoint", "mm", sp_range),
            p("G/E/calender/RollTemp", "", "degF"), p("G/E/calender/Speed", "web speed", "m/min"),
            p("G/E/qcs/ThicknessIn", "thickness gauge, incoming web", "um"),
            p("G/E/coater/CoatWeight", "", "g/m2"),
            p("G/E/qcs/Porosity", "online porosity gauge after the calender", "%")]


def _write(tmp_path: Path, opts: InitOptions, points: list[Point], extra: dict) -> tuple[dict, object]:
    plan = make_plan(points, opts, None, lambda _m: None)
    (tmp_path / "tagmap.toml").write_text(render_tagmap(plan, opts.mqtt or "", opts))
    (tmp_path / "twin.toml").write_text(render_config(plan, opts, "tagmap.toml", extra))
    return tomllib.loads((tmp_path / "twin.toml").read_text()), plan


def test_a_setpoint_without_range_needs_limits_or_the_feedback_stays_off(tmp_path: Path) -> None:
    sp = "G/E/calender/RollGapSP"
    extra = {"sparkplug": {"enabled": True, "groups": ["G"]}, SPARKPLUG_POINTS: [a.address for a in _points(sp)]}
    opts = InitOptions(mqtt="mqtt://127.0.0.1:1883", yes=True, out=tmp_path / "twin.toml")
    cfg, plan = _write(tmp_path, opts, _points(sp), extra)
    assert plan.predictor and not cfg["feedback"]["enabled"]  # type: ignore[attr-defined]
    assert any("give --limit gap=LO:HI in um" in n for n in plan.notes)  # type: ignore[attr-defined]
    assert "writes" not in cfg["connectors"][0]
    assert cfg["connectors"][0]["topics"] == ["spBv1.0/G/#"]  # only Sparkplug: its group
    check_config_report(tmp_path / "twin.toml")

    opts.limits = {"gap": "0.04:0.2mm"}
    opts.force = True
    cfg, plan = _write(tmp_path, opts, _points(sp), extra)
    assert cfg["feedback"]["enabled"]
    man = cfg["feedback"]["manipulables"][0]
    assert (man["min"], man["max"]) == (40.0, 200.0)
    # the Sparkplug setpoint is written with DCMD, its limits in the unit the metric speaks
    assert cfg["connectors"][0]["writes"]["setpoints"] == [{"address": sp, "sparkplug": True, "min": 0.04,
                                                            "max": 0.2}]
    _c, _t, res, _w = check_config_report(tmp_path / "twin.toml")
    assert any("feedback.manipulables" in str(r) for r in res)


def test_a_stated_range_is_the_limits_and_a_plain_topic_setpoint_gets_a_template(tmp_path: Path) -> None:
    sp = "acme/l1/calender/GapSP"
    pts = _points(sp, (0.05, 0.15))
    extra = {"sparkplug": {"enabled": True, "groups": ["G"]},
             SPARKPLUG_POINTS: [a.address for a in pts if a.address != sp]}
    opts = InitOptions(mqtt="mqtt://127.0.0.1:1883", yes=True, out=tmp_path / "twin.toml")
    cfg, _plan = _write(tmp_path, opts, pts, extra)
    assert cfg["feedback"]["enabled"] and "min" not in cfg["feedback"]["manipulables"][0]
    assert cfg["connectors"][0]["topics"] == ["acme/#"]
    assert cfg["connectors"][0]["writes"] == {"confirm_timeout_s": 5.0}  # no setpoint: the command topic is unknown
    text = (tmp_path / "twin.toml").read_text()
    assert f'# address = "{sp}"' in text and '# command_topic = "..."' in text
    check_config_report(tmp_path / "twin.toml")


def test_an_unknown_limit_name_is_refused() -> None:
    opts = InitOptions(mqtt="mqtt://h:1", yes=True, limits={"speed": "1:2"})
    with pytest.raises(InitError, match="--limit speed=...: unknown setpoint"):
        make_plan(_points("G/E/calender/RollGapSP"), opts, None, lambda _m: None)


def test_a_folded_pattern_catches_no_other_topic_and_comes_after_the_exact_ones() -> None:
    from connectors.mqtt.discover import TopicSeen, classify, payload_tables

    disc = Discovery("h", 1, 1.0)
    for topic, body in {"a/l/x": b"1.5", "a/l/y": b"2.5", "a/l/z": b'{"value": 1, "ts": "2026-12-03T10:00:00Z"}',
                        "b/l/x": b"1", "b/l/y": b"2", "b/m": b'{"v": 3, "t": 1796292000}'}.items():
        seen = TopicSeen(topic, 1, [body])
        seen.kind, seen.mapping, seen.note = classify(topic, body)
        disc.topics[topic] = seen
    tables = payload_tables(disc)
    # a/l/+ would turn the built-in a/l/z into numbers: a/l/x and a/l/y stay exact; b/l/+ folds
    assert [t["topic"] for t in tables] == ["a/l/x", "a/l/y", "b/m", "b/l/+"]
    assert tables[2] == {"topic": "b/m", "value": "v", "timestamp": "t", "timestamp_format": "epoch_s"}


def test_interactive_set_up_asks_for_the_limits_a_setpoint_does_not_state(tmp_path: Path) -> None:
    asked: list[str] = []

    def ask(question: str, default: str) -> str:
        asked.append(question)
        return "0.05:0.15 mm" if question.startswith("limits of the gap setpoint") else default

    sp = "G/E/calender/RollGapSP"
    opts = InitOptions(mqtt="mqtt://127.0.0.1:1883", out=tmp_path / "twin.toml")
    plan = make_plan(_points(sp), opts, ask, lambda _m: None)
    assert plan.feedback and plan.limits == {"gap": pytest.approx((50.0, 150.0))}
    assert any(q.startswith(f"limits of the gap setpoint {sp} (it states no range)") for q in asked)


def test_an_unreachable_broker_is_a_clear_error(tmp_path: Path) -> None:
    from tests.conftest import free_port
    from twin.init import run_init

    opts = InitOptions(mqtt=f"mqtt://127.0.0.1:{free_port()}", yes=True, listen_s=0.5, out=tmp_path / "twin.toml")
    with pytest.raises(InitError, match="cannot listen to the MQTT broker 127.0.0.1:"):
        run_init(opts, ask=None, say=lambda _m: None)
    assert not (tmp_path / "twin.toml").exists()
