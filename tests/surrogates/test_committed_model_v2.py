"""The model the daemon loads, trained on the physics reference v2 (issue #16), re-evaluated from its committed data
set with onnxruntime (no torch): the card is reproducible, every target is met or shown to sit above the DEM's noise
ceiling, every output states its margin over a quadratic ridge baseline, and the domain carries the gap bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from surrogates.reference.dataset import GAP_SOLID_FRACTION_MAX
from surrogates.runtime import SurrogateModel
from surrogates.train import data as D
from surrogates.train.pipeline import evaluate_model
from tests.surrogates.conftest import ROOT

V2_DATA = ROOT / "data" / "dem_v2"


@pytest.fixture(scope="module")
def card(latest_dir: Path) -> dict:
    c = json.loads((latest_dir / "card.json").read_text())
    if "wall_speed_mm_s" in c["inputs"]:
        pytest.skip("the latest model is a v1 model")
    return c


@pytest.fixture(scope="module")
def ev(latest_dir: Path, card: dict) -> dict:
    return evaluate_model(latest_dir, data=V2_DATA)


def test_card_is_reproducible_from_the_v2_data(ev: dict, card: dict) -> None:
    assert card["dataset"]["path"].startswith("data/dem_v2") and card["porosity_kind"] == "macro"
    assert ev["dataset_matches_card"], "the data set changed after training: retrain (README, surrogates.md)"
    for split in ("test", "corner"):
        for out in D.OUTPUTS:
            for k in ("r2", "mae", "coverage_2sigma"):
                assert ev["metrics"][split][out][k] == pytest.approx(card["metrics"][split][out][k], abs=1e-6), \
                    (split, out, k)


#: acceptance points the shipped (preliminary) v2 model does not meet yet, each with why (docs/surrogates.md): a
#: strict xfail, so a retrained model that meets one makes this test fail until the entry is removed
_WHY = ("the model saw a fifth of the design (123 runs, 18 test runs; 356 in-domain runs are recorded since) and its "
        "test split is small; the compression-rate effect is within single-run scatter except at the loose hot corner "
        "(physics.md §7.16)")
NOT_MET_YET = {
    "porosity": "R2 0.973 against 0.99; ceiling 0.963 from the raw replicate scatter but 0.993 given the measured "
                "inputs: " + _WHY,
    "thickness_after_um": "R2 0.989 against 0.99; ceiling 0.981 raw, 0.996 given the measured inputs: " + _WHY,
    "tortuosity_factor": "R2 0.926 against 0.97; ceiling 0.975 raw, 0.994 given the measured inputs: " + _WHY,
}


@pytest.mark.parametrize("out", list(D.TARGETS_V2))
def test_every_target_met_or_shown_above_the_noise_ceiling(card: dict, out: str, request: pytest.FixtureRequest
                                                           ) -> None:
    if out in NOT_MET_YET:
        request.applymarker(pytest.mark.xfail(reason=NOT_MET_YET[out], strict=True))
    assert card["targets"] == D.TARGETS_V2
    row = next(r for r in card["acceptance"]["rows"] if r["output"] == out and r["metric"] == "r2")
    # a target the DEM's scatter allows must be met; one it does not is flagged, not tuned for (beyond the ceiling
    # of the raw replicate scatter and beyond the one left after the part the measured inputs explain)
    above = row["target_above_ceiling"] and row.get("ceiling_given_measured_inputs", 0.0) < row["target"]
    assert row["met"] or above, row


def test_pooled_coverage_in_band(card: dict) -> None:
    rows = card["acceptance"]["rows"]
    lo = next(r for r in rows if r["metric"] == "coverage_2sigma" and r["output"].startswith("all outputs"))
    hi = next(r for r in rows if r["metric"] == "coverage_2sigma_max")
    assert lo["met"] and hi["met"], (lo, hi)  # 90-97 % of (run, output) pairs inside +-2 sigma


def test_margin_over_the_quadratic_ridge_baseline_for_every_output(card: dict) -> None:
    b = card["baseline_quadratic_ridge"]
    assert set(b["margin"]["test"]) == set(D.OUTPUTS) and set(b["alphas"]) == set(D.OUTPUTS)
    for out, m in b["margin"]["test"].items():
        assert m["r2_margin"] == pytest.approx(m["r2_model"] - m["r2_ridge"]), out
        assert np.isfinite(m["rmse_ratio"]), out


def test_the_gap_bound_is_part_of_the_domain(latest_dir: Path, card: dict) -> None:
    (c,) = card["domain_constraints"]
    assert c["kind"] == "gap_solid_fraction" and c["max"] == GAP_SOLID_FRACTION_MAX
    m = SurrogateModel(latest_dir)
    centre = {k: 0.5 * (lo + hi) for k, (lo, hi) in m.domain.items()}
    x = np.array([[centre[k] for k in m.input_names]], dtype=np.float32)
    assert not m.predict(x).ood[0]
    # the same layer pressed past its full-density thickness
    eps0 = centre["initial_porosity"]
    x[0, m.input_names.index("compaction_degree")] = min(eps0 + 0.02, m.domain["compaction_degree"][1])
    p = m.predict(x)
    assert p.ood[0] and any("gap_solid_fraction" in r for r in p.ood_reasons[0])
