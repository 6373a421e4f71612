"""The daemon's predictor and feedback service run on a plant whose tag ids are its own (bound by role)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.samples import Sample, now_ns
from tests.conftest import write_config
from tests.init.test_roles import tagmap_file
from twin.config import load_config
from twin.daemon import Daemon

VALUES = {"acme.qcs_thk_in": (100.0, "um"), "acme.qcs_cw": (22.8, "mg/cm**2"), "acme.cal_gap_pv": (85.0, "um"),
          "acme.cal_speed": (6.0, "m/min"), "acme.cal_temp": (50.0, "degC")}


def test_predictions_from_a_plant_with_other_ids(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, tagmap=tagmap_file(tmp_path), connectors=(
        '[[connectors]]\nkind = "opcua"\nname = "plc"\nurl = "opc.tcp://127.0.0.1:1"\nnodes = ["ns=3;i=7003"]\n'
        '[connectors.security]\npolicy = "none"\n[connectors.writes]\nallowed_nodes = ["ns=3;i=7003"]\n'),
        extra="[predictor]\nenabled = true\n[feedback]\nenabled = true\n"))

    async def run() -> None:
        d = Daemon(cfg)
        p, fb = d.extensions["predictor"], d.extensions["feedback"]
        assert p.input_tags["gap"] == "acme.cal_gap_pv" and fb.cfg.manipulables[0].setpoint_tag == "acme.cal_gap_sp"
        now = now_ns()
        await d.pipeline.submit([Sample("pilot-1", t, v, u, now, now) for t, (v, u) in VALUES.items()])
        await d.pipeline.flush()
        pred = await p.predict_line("pilot-1")
        assert pred is not None, p.last_skip_reason
        assert pred.line_inputs == {name: VALUES[tag][0] for name, tag in p.input_tags.items()}
        assert 0.0 < pred.mean["porosity"] < 1.0
        await d.pipeline.flush()  # the predicted samples are committed through the pipeline
        assert ("pilot-1", "calendering.porosity_predicted") in d.state.latest

    asyncio.run(run())
