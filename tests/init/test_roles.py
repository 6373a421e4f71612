"""Input roles bound to ontology terms; check-config tells the truth about them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ontology.tagmap import TagMap
from tests.conftest import DEFAULTS, free_port, write_config
from twin.config import ConfigError, check_config, check_config_report
from twin.roles import RoleError, bind_feedback, bind_predictor_inputs, canonical_ids, parse_term_ref

# a plant whose ids are its own: every point says which ontology term and role it is
FOREIGN = [
    ("acme.qcs_thk_in", "coating", "SP", "measured", "DryCoatingThickness", "um", [0, 300]),
    ("acme.qcs_cw", "coating", "SP", "measured", "ArealLoading", "mg/cm**2", [0, 60]),
    ("acme.cal_gap_pv", "calendering", "MP", "actual", "CalenderGap", "um", [0, 500]),
    ("acme.cal_gap_sp", "calendering", "MP", "setpoint", "CalenderGap", "um", [40, 200]),
    ("acme.cal_speed", "calendering", "MP", "actual", "CalenderingSpeed", "m/min", [0, 50]),
    ("acme.cal_temp", "calendering", "MP", "actual", "CalenderRollTemperature", "degC", [0, 200]),
    ("acme.qcs_poro", "calendering", "SP", "measured", "CalenderedPorosity", "percent", [0, 100]),
    ("acme.qcs_thk_out", "calendering", "SP", "measured", "CalenderedCoatingThickness", "um", [0, 300]),
]


def tagmap_file(tmp_path: Path, rows=FOREIGN, name: str = "tagmap.toml") -> Path:
    lines = ["version = 1"]
    for i, (tid, step, kind, role, param, unit, rng) in enumerate(rows):
        lines += ["[[tags]]", f'id = "{tid}"', f'step = "{step}"', f'kind = "{kind}"', f'role = "{role}"',
                  f'parameter = "{param}"', f'canonical_unit = "{unit}"', f"range = {rng}",
                  f'sources = [ {{ opcua = "ns=3;i={7000 + i}" }} ]']
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


SERVICES = "[predictor]\nenabled = true\n[feedback]\nenabled = true\n"


def test_defaults_resolve_by_role_in_a_plant_with_other_ids(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path, extra=SERVICES, tagmap=tagmap_file(tmp_path))
    cfg, tagmap, res, warnings = check_config_report(cfg_path)
    got = {r.spec.path: (r.tag_id, r.how) for r in res if r.spec.consumer != "dashboard"}
    assert got["predictor.inputs.gap"] == ("acme.cal_gap_pv", "role")
    assert got["predictor.inputs.dry_thickness"] == ("acme.qcs_thk_in", "role")
    assert got["feedback.manipulables.gap.setpoint_tag"] == ("acme.cal_gap_sp", "role")
    assert got["feedback.measured.porosity.tag"] == ("acme.qcs_poro", "role")
    assert bind_predictor_inputs(cfg.predictor, tagmap) == {
        "dry_thickness": "acme.qcs_thk_in", "areal_loading": "acme.qcs_cw", "gap": "acme.cal_gap_pv",
        "roll_speed": "acme.cal_speed", "roll_temperature": "acme.cal_temp"}
    fb = bind_feedback(cfg.feedback, tagmap)
    assert fb.gap_actual_tag == "acme.cal_gap_pv" and fb.web_speed_tag == "acme.cal_speed"
    # the default's factor is dropped: pint derives it from the unit of the gauge the role found
    assert fb.measured["porosity"].tag == "acme.qcs_poro" and fb.measured["porosity"].factor is None
    # no connector may write the gap setpoint's node: approvals would fail, and check-config says so
    assert any(w.startswith("feedback.manipulables.gap.setpoint_tag: approving a proposal writes 'ns=3;i=7003'")
               for w in warnings)
    # the dashboard reads fixed ids: warned, with the rename that fixes it
    assert any("dashboard.gap_actual" in w and "rename tag 'acme.cal_gap_pv' to \"calendering.gap_actual\"" in w
               for w in warnings)


def test_check_config_refuses_unresolved_model_inputs_naming_each_role(tmp_path: Path) -> None:
    rows = [r for r in FOREIGN if r[4] not in ("CalenderGap", "DryCoatingThickness")]
    cfg_path = write_config(tmp_path, extra="[predictor]\nenabled = true\n", tagmap=tagmap_file(tmp_path, rows))
    with pytest.raises(ConfigError) as e:
        check_config(cfg_path)
    msg = str(e.value)
    assert "2 input role(s) do not resolve" in msg
    assert "predictor.inputs.gap: no tag of the tag map is CalenderGap / actual" in msg
    assert "predictor.inputs.dry_thickness: no tag of the tag map is DryCoatingThickness / measured" in msg
    assert 'fix: give a tag parameter = "CalenderGap" and role = "actual"' in msg
    assert "predictor.inputs.areal_loading" not in msg  # resolved ones are not named
    # the command: exit 2 with the same message
    from twin.cli import app

    res = CliRunner().invoke(app, ["check-config", str(cfg_path)])
    assert res.exit_code == 2 and "predictor.inputs.gap" in res.output


def test_disabled_services_only_warn(tmp_path: Path) -> None:
    rows = [r for r in FOREIGN if r[4] != "CalenderGap"]
    cfg_path = write_config(tmp_path, tagmap=tagmap_file(tmp_path, rows))
    _, _, _, warnings = check_config_report(cfg_path)
    assert any(w.startswith("predictor.inputs.gap:") and w.endswith("(service disabled)") for w in warnings)


def test_explicit_ids_terms_typos_and_ambiguity(tmp_path: Path) -> None:
    tm = TagMap.load(tagmap_file(tmp_path))
    from twin.predictor import PredictorConfig

    # an explicit id of the tag map: used as it is; a term reference: found by term and role
    cfg = PredictorConfig(inputs={"gap": "acme.cal_gap_pv", "roll_speed": "CalenderingSpeed/actual"})
    assert bind_predictor_inputs(cfg, tm)["roll_speed"] == "acme.cal_speed"
    # an explicit id that is not there is a typo: named, with the id the tag map has for the role
    cfg = PredictorConfig(inputs={"gap": "acme.cal_gap_typo"})
    with pytest.raises(RoleError) as e:
        bind_predictor_inputs(cfg, tm)
    assert "predictor.inputs.gap: tag 'acme.cal_gap_typo' is not in the tag map" in str(e.value)
    assert 'set [predictor.inputs] gap = "acme.cal_gap_pv"' in str(e.value)
    # two tags of one term and role: the config must name one
    tm2 = TagMap.load(tagmap_file(tmp_path, FOREIGN + [("acme.cal_gap_pv2", "calendering", "MP", "actual",
                                                         "CalenderGap", "um", [0, 500])], "two.toml"))
    with pytest.raises(RoleError) as e:
        bind_predictor_inputs(PredictorConfig(), tm2)
    assert "2 tags are CalenderGap / actual: acme.cal_gap_pv, acme.cal_gap_pv2" in str(e.value)
    assert 'name one: [predictor.inputs] gap = "acme.cal_gap_pv"' in str(e.value)
    # an unknown term
    with pytest.raises(RoleError, match="neither a tag id nor a term of the ontology"):
        bind_predictor_inputs(PredictorConfig(inputs={"gap": "RollerGap/actual"}), tm)


def test_the_demo_config_keeps_resolving_by_tag_id() -> None:
    cfg, tagmap, res, warnings = check_config_report(DEFAULTS / "demo.toml")
    assert {r.how for r in res if r.ok and r.spec.consumer != "dashboard"} == {"tag id"}
    assert not [w for w in warnings if "predictor" in w or "feedback" in w]
    # the ids `twin init` writes for a term and role are the demo tag map's
    for (term, role), tid in canonical_ids().items():
        t = tagmap.tags[tid]
        assert (t.parameter, t.role.value) == (term, role), tid


def test_parse_term_ref() -> None:
    assert parse_term_ref("calendering.gap_actual") is None
    assert parse_term_ref("CalenderGap/actual") == ("CalenderGap", "actual")
    assert parse_term_ref("CalenderGap") == ("CalenderGap", None)
    assert parse_term_ref("https://w3id.org/pilotline-twin/ontology#CalenderGap/setpoint") == ("CalenderGap", "setpoint")


def test_cli_strict_and_connect(tmp_path: Path) -> None:
    from twin.cli import app

    port = free_port()  # nothing listens there
    cfg_path = write_config(tmp_path, tagmap=tagmap_file(tmp_path), connectors=(
        f'[[connectors]]\nkind = "opcua"\nname = "plc"\nurl = "opc.tcp://127.0.0.1:{port}"\nnodes = ["ns=3;i=7000"]\n'
        '[connectors.security]\npolicy = "none"\n'))
    runner = CliRunner()
    res = runner.invoke(app, ["check-config", str(cfg_path)])
    assert res.exit_code == 0 and "warning: dashboard.gap_actual" in res.output
    res = runner.invoke(app, ["check-config", str(cfg_path), "--strict"])
    assert res.exit_code == 2 and "warning(s) with --strict" in res.output
    res = runner.invoke(app, ["check-config", str(cfg_path), "--connect", "--timeout", "3"])
    assert res.exit_code == 3, res.output
    assert "failed connector opcua:plc" in res.output and "cannot reach" in res.output
    assert "ok store embedded" in res.output
