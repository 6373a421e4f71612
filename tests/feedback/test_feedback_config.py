"""Feedback configuration refuses what it cannot do safely, with the field and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from twin.config import ConfigError, check_config, load_config

DEMO = Path(__file__).resolve().parents[2] / "twin" / "defaults" / "demo.toml"


def write(tmp_path: Path, extra: str) -> Path:
    text = DEMO.read_text().replace('tagmap = "tagmap.toml"', f'tagmap = "{DEMO.parent / "tagmap.toml"}"')
    p = tmp_path / "twin.toml"
    p.write_text(text + extra)
    return p


def test_demo_config_enables_an_approval_gated_feedback_service() -> None:
    cfg = load_config(DEMO)
    assert cfg.feedback.enabled and cfg.predictor.enabled
    assert [m.auto_apply for m in cfg.feedback.manipulables] == [False]
    assert cfg.connectors[0].writes.allowed_nodes == ["ns=2;s=Calender.GapSetpoint"]


@pytest.mark.parametrize("extra, words", [
    ('[[feedback.manipulables]]\nname = "line_load"\nsetpoint_tag = "calendering.line_load_setpoint"\n'
     'max_step = 50.0\n', "has no input that it sets"),
    ('[[feedback.manipulables]]\nname = "gap"\nsetpoint_tag = "calendering.gap_setpoint"\nmax_step = 5.0\n',
     "each parameter once"),
    ('[[feedback.manipulables]]\nname = "roll_temperature"\nsetpoint_tag = "calendering.roll_temperature_setpoint"\n'
     'max_step = 0\n', "max_step"),
])
def test_unsafe_feedback_configs_are_refused_with_the_field(tmp_path: Path, extra: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_config(write(tmp_path, extra))
    assert words in str(err.value) and "feedback" in str(err.value)


def test_feedback_without_the_predictor_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "")
    p.write_text(p.read_text().replace("[predictor]\nenabled = true", "[predictor]\nenabled = false"))
    with pytest.raises(ConfigError) as err:
        check_config(p)
    assert "feedback.enabled needs predictor.enabled" in str(err.value)


def test_history_windows_and_last_change() -> None:
    from core.samples import Quality, Sample
    from twin.feedback import History

    h = History({"calendering.gap_setpoint"})
    vals = [85.0, 85.0, 85.0 + 1e-9, 90.0, 90.0, 88.0, 88.0]
    h.add([Sample("L1", "calendering.gap_setpoint", v, "um", 100 + i, 0, Quality.GOOD, None, None)
           for i, v in enumerate(vals)])
    h.add([Sample("L1", "other.tag", 1.0, "um", 200, 0, Quality.GOOD, None, None)])  # not watched
    assert h.last_change_ns("L1", "calendering.gap_setpoint") == 105  # 90 -> 88; the 1e-9 wiggle is no change
    assert [v for _, v, _ in h.since("L1", "calendering.gap_setpoint", 104)] == [90.0, 88.0, 88.0]
    assert h.since("L1", "calendering.gap_setpoint", 1_000) == [] and h.since("L1", "other.tag", 0) == []
    assert h.last_change_ns("L2", "calendering.gap_setpoint") is None
