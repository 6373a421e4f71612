"""Semantic mapping of plant points to ontology terms, units by UNECE code or pint, and init's plan."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from connectors.opcua.browse import BrowsedNode
from ontology.tagmap import TagMap
from twin.init import InitError, InitOptions, make_plan, render_config, render_tagmap, tagmap_for_browse
from twin.semantic import Point, resolve_unit, suggest, suggest_all, words


def test_words_split_names_and_apply_plant_synonyms() -> None:
    assert words("RollGapActual") == ["roll", "gap", "actual"]
    assert words("CoatThk_In") == ["coating", "thickness", "before"]
    assert words("T_Roll.SP") == ["t", "roll", "setpoint"]
    assert "lineload" in words("Line Load")


def test_units_by_code_then_by_pint_from_the_display_name() -> None:
    assert resolve_unit("mm", "mm") == ("mm", "UNECE code")
    assert resolve_unit(None, "°F") == ("degF", "display name (pint)")  # FAH is not in our UNECE table
    assert resolve_unit(None, "N/mm") == ("newton/millimeter", "display name (pint)")
    assert resolve_unit(None, "ft/min") == ("ft/min", "display name (pint)")
    assert resolve_unit(None, "blorps")[0] is None and resolve_unit(None, "blorps")[1].startswith("unknown")
    assert resolve_unit(None, None) == (None, "none")


def test_roll_gap_in_mm_is_the_calender_gap_in_um() -> None:
    s = suggest(Point("ns=1;i=1", "RollGapActual", "Calender", "/Objects/1:Line/1:Calender/1:RollGapActual", "",
                      "mm", "mm", (0.0, 0.5)))
    assert (s.term, s.role, s.canonical_unit, s.range, s.tag_id) == \
        ("CalenderGap", "actual", "um", (0.0, 500.0), "calendering.gap_actual")
    assert s.confidence >= 0.9 and "CoatingGap" in [a.term for a in s.alternatives]
    assert any("mm is a Length" in r for r in s.reasons)
    # the same name with a range no calender has (0-500 mm) is less certain and says why
    odd = suggest(Point("ns=1;i=1", "RollGapActual", "Calender", "", "", "mm", "mm", (0.0, 500.0)))
    assert odd.term == "CalenderGap" and odd.confidence < s.confidence
    assert any("unusual" in r for r in odd.reasons)


def test_fahrenheit_converts_to_celsius_with_its_range() -> None:
    s = suggest(Point("ns=1;s=TT", "RollTemp", "Calender", "", "roll surface temperature", None, "°F", (32.0, 302.0)))
    assert (s.term, s.unit, s.unit_how, s.canonical_unit) == ("CalenderRollTemperature", "degF",
                                                              "display name (pint)", "degC")
    assert s.range == pytest.approx((0.0, 150.0))
    # a °F point no term fits is still stored in degC (not dimensionless with a °F range)
    plain = suggest(Point("ns=1;s=X", "Xyzzy", "Utilities", "", "", None, "°F", (32.0, 212.0)))
    assert plain.term is None and plain.canonical_unit == "degC" and plain.range == pytest.approx((0.0, 100.0))


def test_a_length_is_never_a_temperature_and_writable_is_a_setpoint() -> None:
    s = suggest(Point("a", "RollTemp", "Calender", "", "", "mm", "mm", None))
    assert s.term != "CalenderRollTemperature"
    sp = suggest(Point("b", "RollTemperature", "Calender", "", "", "degC", "°C", (20, 150), writable=True))
    assert (sp.term, sp.role, sp.tag_id) == ("CalenderRollTemperature", "setpoint", "calendering.roll_temperature_setpoint")


def test_the_simulated_line_maps_to_the_demo_tag_map() -> None:
    """Measured: the simulator's 30 browse names map to the demo tag map's (parameter, role) and id."""
    from tests.conftest import DEFAULTS
    from twin.simline.model import SIGNALS

    truth = {t["id"]: (t.get("parameter"), t["role"]) for t in tomllib.loads((DEFAULTS / "tagmap.toml").read_text())["tags"]}
    pts = []
    for sig in SIGNALS:
        folder, name = sig.node.split(".", 1)
        pts.append(Point(f"ns=2;s={sig.node}", name, folder, f"/Objects/2:PilotLine/2:{folder}/2:{name}",
                         sig.description, sig.unit or None, None, sig.range, sig.role == "setpoint",
                         {"string": "String", "int": "Int32"}.get(sig.value_type, "Double")))
    hits = sum(1 for sig, s in zip(SIGNALS, suggest_all(pts)) if truth.get(sig.id) == (s.term, s.role)
               and s.tag_id == sig.id)
    assert hits >= 28, hits  # 29 of 30 today: Line.SpeedSetpoint is taken for the coating speed


def _node(node_id: str, name: str, folder: str, unit: str | None, disp: str | None, rng, writable=False,
          dtype: str = "Double", desc: str = "") -> BrowsedNode:
    return BrowsedNode(node_id, f"/Objects/1:Acme/1:{folder}/1:{name}", name, dtype, unit, disp, rng, True, writable,
                       desc, folder)


NODES = [
    _node("ns=1;i=1", "RollGapActual", "Calender", "mm", "mm", (0.0, 0.5)),
    _node("ns=1;i=2", "RollGapSP", "Calender", "mm", "mm", (0.04, 0.2), writable=True),
    _node("ns=1;i=3", "RollTemp", "Calender", None, "°F", (32.0, 400.0)),
    _node("ns=1;i=4", "LineSpeed", "Calender", None, "ft/min", (0.0, 150.0)),
    _node("ns=1;i=5", "CoatThicknessIn", "QCS", "um", "µm", (0.0, 300.0)),
    _node("ns=1;i=6", "CoatWeight", "QCS", "g/m^2", "g/m²", (0.0, 600.0)),
    _node("ns=1;i=7", "Porosity", "QCS", "percent", "%", (0.0, 100.0)),
    _node("ns=1;i=8", "Mystery", "Misc", None, None, None),
]


def test_browse_tagmap_loads_and_converts(tmp_path: Path) -> None:
    text, plan = tagmap_for_browse(NODES, "opc.tcp://x:4840")
    tm = TagMap.from_dict(tomllib.loads(text))
    b = tm.resolve("opcua", "ns=1;i=3")
    assert b is not None and b.tag.unit == "degC" and b.source_unit == "degF"
    assert (b.tag.lo, b.tag.hi) == pytest.approx((0.0, (400 - 32) / 1.8))
    assert tm.resolve("opcua", "ns=1;i=1").tag.iri.endswith("#CalenderGap")
    assert tm.resolve("opcua", "ns=1;i=8").tag.parameter is None  # no term fits: a plain tag
    assert "no ontology parameter fits" in text and "read by pint from the display name" in text


def test_plan_binds_roles_and_disables_what_cannot_run() -> None:
    points = [p for p in tagmap_for_browse(NODES, "u")[1].suggestions]
    opts = InitOptions(opcua="opc.tcp://x:4840", yes=True)
    plan = make_plan([s.point for s in points], opts, None, lambda m: None)
    assert plan.predictor and plan.feedback  # every model input, a porosity gauge and a writable gap setpoint
    cfg = render_config(plan, opts, "tagmap.toml", {})
    assert 'gap = "CalenderGap/actual"' in cfg and "# calendering.gap_actual <- ns=1;i=1 'RollGapActual' (mm)" in cfg
    assert "[feedback.measured.thickness_after_um]" not in cfg  # no thickness gauge after the calender: not bound
    assert 'allowed_nodes = ["ns=1;i=2"]' in cfg
    # without a porosity gauge the feedback service cannot run: disabled, and the config says why
    no_poro = [s.point for s in points if s.point.name != "Porosity"]
    plan = make_plan(no_poro, opts, None, lambda m: None)
    assert plan.predictor and not plan.feedback
    assert plan.notes == ["feedback disabled: CalenderedPorosity/measured"]
    cfg = render_config(plan, opts, "tagmap.toml", {})
    assert "enabled = false\n# feedback disabled: CalenderedPorosity/measured" in cfg and "allowed_nodes = []" in cfg
    with pytest.raises(InitError, match="unknown role"):
        make_plan([s.point for s in points], InitOptions(opcua="u", binds={"nip": "ns=1;i=1"}), None, lambda m: None)


def test_interactive_answers_and_bind_override(tmp_path: Path) -> None:
    pts = [Point("ns=1;i=1", "Spalt", "Kalander", "", "", "mm", "mm", (0.0, 0.5)),  # German: a gap
           Point("ns=1;i=9", "Wert17", "Misc", "", "", "mm", "mm", (0.0, 0.5))]
    asked: list[str] = []

    def ask(q: str, default: str) -> str:
        asked.append(q)
        return "y"

    plan = make_plan(pts, InitOptions(opcua="u", min_confidence=0.99), ask, lambda m: None)
    s = next(x for x in plan.suggestions if x.point.address == "ns=1;i=1")
    assert s.term == "CalenderGap" and plan.accepted["ns=1;i=1"]
    assert any("Spalt" in q for q in asked)  # below --min-confidence 0.99: asked, answered yes
    # --bind puts a point the words could not place into a role
    plan = make_plan(pts, InitOptions(opcua="u", binds={"gap": "ns=1;i=9"}), None, lambda m: None)
    s = next(x for x in plan.suggestions if x.point.address == "ns=1;i=9")
    assert (s.term, s.role, s.tag_id, s.range) == ("CalenderGap", "actual", "calendering.gap_actual", (0.0, 500.0))
    assert plan.roles["predictor.gap"][1] is s
    text = render_tagmap(plan, "u", InitOptions(opcua="u"))
    TagMap.from_dict(tomllib.loads(text))


def test_interactive_asks_for_a_missing_model_input() -> None:
    pts = [Point("ns=1;i=9", "Wert17", "Misc", "", "", "mm", "mm", (0.0, 0.5))]

    def ask(q: str, default: str) -> str:
        return "ns=1;i=9" if q.startswith("actual roll gap (um) (CalenderGap/actual): no point found") else default

    plan = make_plan(pts, InitOptions(opcua="u", feedback=False), ask, lambda m: None)
    s = plan.roles["predictor.gap"][1]
    assert s is not None and (s.point.address, s.term, s.tag_id) == ("ns=1;i=9", "CalenderGap", "calendering.gap_actual")
    assert not plan.predictor and "DryCoatingThickness/measured" in plan.notes[0]  # the others are still missing
