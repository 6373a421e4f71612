"""An approved setpoint is written in the unit its node speaks (the tag map's source unit), not the canonical one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ontology.tagmap import TagMap
from twin.feedback import FeedbackService

TAGS = {"version": 1, "tags": [
    {"id": "calendering.gap_setpoint", "step": "calendering", "kind": "MP", "role": "setpoint",
     "parameter": "CalenderGap", "canonical_unit": "um", "range": [40, 200],
     "sources": [{"opcua": "ns=1;i=51002", "unit": "mm"}, {"mqtt": "acme/gap_sp", "unit": "um"}]},
    {"id": "calendering.roll_temperature_setpoint", "step": "calendering", "kind": "MP", "role": "setpoint",
     "parameter": "CalenderRollTemperature", "canonical_unit": "degC", "range": [20, 150],
     "sources": [{"opcua": "ns=1;s=TC.SP", "unit": "degF"}]},
    {"id": "calendering.line_load_setpoint", "step": "calendering", "kind": "MP", "role": "setpoint",
     "parameter": "CalenderPressure", "canonical_unit": "N/mm", "range": [0, 3000],
     "sources": [{"opcua": "ns=1;i=7"}]},
]}


def test_setpoints_are_converted_to_the_node_unit() -> None:
    svc = SimpleNamespace(tagmap=TagMap.from_dict(TAGS))
    conv = FeedbackService._in_source_unit
    assert conv(svc, "calendering.gap_setpoint", "ns=1;i=51002", 80.0) == (pytest.approx(0.08), "mm")
    value, unit = conv(svc, "calendering.roll_temperature_setpoint", "ns=1;s=TC.SP", 50.0)
    assert unit == "degF" and value == pytest.approx(122.0)
    assert conv(svc, "calendering.line_load_setpoint", "ns=1;i=7", 1200.0) == (1200.0, None)  # same unit
