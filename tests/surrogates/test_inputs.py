"""The surrogate's inputs mean the same in training and on the line.

Training takes the incoming layer as the DEM measured it (thickness before the calender, porosity from the
inserted solids and that thickness); the daemon's predictor computes the same two quantities from the line's
thickness and areal-mass gauges (twin.predictor.line_to_model_inputs). Feeding a DEM run's own state through
the line mapping must give the training features back."""

from __future__ import annotations

import numpy as np
import pytest

from surrogates.train import data as D
from twin.predictor import PredictorConfig, line_to_model_inputs


def test_line_mapping_reproduces_the_training_features() -> None:
    d = D.load()
    x, _ = D.matrices(d)
    cfg = PredictorConfig(foil_thickness_um=12.0, solid_density_g_cm3=3.1)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(x), size=20, replace=False):
        h0 = float(d["thickness_before_um"][i])
        h_solid = float(D.solid_thickness_um(d)[i])
        line = {"dry_thickness": h0, "areal_loading": cfg.solid_density_g_cm3 * h_solid / 10.0,  # mg/cm2
                "gap": h0 * (1.0 - float(d["compaction_degree"][i])) + cfg.foil_thickness_um,
                "roll_speed": 10.0, "roll_temperature": float(d["roll_temperature_C"][i])}
        m = line_to_model_inputs(line, cfg, rve_thickness_um=h0)
        for k in ("initial_porosity", "initial_thickness_um", "compaction_degree", "roll_temperature_C"):
            assert m[k] == pytest.approx(float(x[i, D.INPUTS.index(k)]), rel=1e-5), (k, i)


def test_measured_inputs_differ_from_the_packing_targets() -> None:
    """Why the measured state is used: the packing misses low target porosities by a wide margin."""
    d = D.load()
    x, _ = D.matrices(d)
    gap = x[:, D.INPUTS.index("initial_thickness_um")] - np.asarray(d["initial_thickness_um"], np.float64)
    assert np.abs(gap).max() > 5.0  # um: some packed layers are far thicker than their target
    dom = D.training_domain(x)
    lo, hi = dom["initial_porosity"]
    assert lo <= x[:, 1].min() + 1e-3 and hi >= x[:, 1].max() - 1e-3
    assert dom["compaction_degree"] == D.DOMAIN["compaction_degree"]  # set exactly by the design
