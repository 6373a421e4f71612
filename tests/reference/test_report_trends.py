"""report.binned / report.trends: CD bins hold only runs of the Sobol box, the low-CD sweep stays apart."""

from __future__ import annotations

import numpy as np
import pytest

from surrogates.reference import report


def test_binned_drops_values_outside_the_bin_range():
    x = np.array([0.05, 0.19999, 0.21, 0.24, 0.26, 0.50, 0.55, np.nan])
    y = np.array([100.0, 50.0, 1.0, 3.0, 7.0, 9.0, -100.0, 1000.0])
    b = report.binned(x, y)
    assert b["n"] == [2, 1, 0, 0, 0, 1]  # 0.05, 0.19999, 0.55 and NaN dropped; 0.50 closes the last bin
    assert b["mean"][0] == pytest.approx(2.0)
    assert b["mean"][1] == pytest.approx(7.0)
    assert np.isnan(b["mean"][2])
    assert b["mean"][-1] == pytest.approx(9.0)


def _synthetic_dataset() -> dict[str, np.ndarray]:
    """Sobol + centre runs spread over CD 0.20-0.50, one replicate and a low-CD sweep with extreme values."""
    rng = np.random.default_rng(3)
    cd_box = np.linspace(0.205, 0.495, 30)
    n_box = len(cd_box)
    cd = np.concatenate([cd_box, [0.35], [0.05, 0.05, 0.10]])
    design = np.array(["sobol"] * (n_box - 1) + ["centre"] + ["replicate"] + ["lowcd"] * 3)
    n = len(cd)
    T = np.where(np.arange(n) % 2 == 0, 25.0, 100.0)
    porosity = 0.36 - 0.05 * (cd - 0.2)
    springback = 100.0 * (cd - 0.15)
    low = design == "lowcd"
    porosity[low] = 0.90  # extreme values: must not reach any CD bin mean
    springback[low] = -50.0
    return {
        "run_id": np.array([f"r{i}" for i in range(n)]),
        "design": design,
        "compaction_degree": cd,
        "roll_temperature_C": T,
        "wall_speed_mm_s": rng.uniform(20, 100, n),
        "porosity": porosity,
        "porosity_max": porosity - 0.5 * cd,
        "porosity_before": np.full(n, 0.45),
        "tortuosity_factor": 1.5 + cd,
        "tortuosity_factor_before": np.full(n, 1.8),
        "d_eff": porosity / (1.5 + cd),
        "d_eff_before": np.full(n, 0.25),
        "springback_pct": springback,
        "compaction_final": 0.2 + 0.01 * cd,
        "conductivity_eff": 0.1 + cd,
        "max_pressure_MPa": np.exp(10 * cd) * rng.uniform(0.9, 1.1, n),
        "line_load_N_per_mm": np.exp(8 * cd),
        "sa_pore_am_per_um": 0.5 - cd,
        "sa_pore_cbd_per_um": 0.3 - cd / 2,
        "sa_am_cbd_per_um": 0.2 + cd / 3,
    }


def test_trends_use_the_sobol_box_only():
    ds = _synthetic_dataset()
    tr = report.trends(ds)
    box = np.isin(ds["design"], ("sobol", "centre"))
    assert tr["n_design"] == int(box.sum())
    b = tr["porosity"]["binned_vs_cd"]
    first = box & (ds["compaction_degree"] < 0.25)
    assert b["n"][0] == int(first.sum())
    assert b["mean"][0] == pytest.approx(float(np.mean(ds["porosity"][first])))
    assert b["mean"][0] < 0.4  # the 0.90 of the low-CD runs at CD 0.05/0.10 stays out
    assert sum(b["n"]) == int(box.sum())
    sb = tr["springback_pct"]["binned_vs_cd"]["mean"]
    assert min(sb) > 0  # no -50 % sweep values
    # porosity falls linearly with CD over the box -> a perfect rank correlation once the sweep is left out
    assert tr["porosity"]["spearman_vs_cd"] == pytest.approx(-1.0)
    assert tr["springback_pct"]["spearman_vs_cd"] == pytest.approx(1.0)
    assert tr["springback_vs_line_load_spearman"] == pytest.approx(1.0)
    # the sweep is summarised separately
    sw = tr["lowcd_sweep"]
    assert sw["n"] == 3
    assert sw["cd_min"] == pytest.approx(0.05) and sw["cd_max"] == pytest.approx(0.10)
    assert sw["springback_min_pct"] == pytest.approx(-50.0)
    assert [p["cd"] for p in sw["line_load_high_vs_low_T"]] == [pytest.approx(0.05)]
