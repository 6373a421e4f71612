"""The committed model, re-evaluated from the DEM data set with onnxruntime (no torch): its card is
reproducible, it meets the issue-#6 targets the DEM data can support, and the gap to the others is stated.

What the data supports: the DEM's own run-to-run scatter (the same design point with other packing seeds)
caps the R² any model can reach against single runs at 1 - sd_rep² / Var(y) (the "noise ceiling"), and
floors the MAE at sqrt(2/pi) sd_rep. On the test runs the R² ceilings are ~0.94 (porosity), ~0.92
(tortuosity factor), ~0.93 (effective diffusivity) — below the 0.99 / 0.97 targets, also after the part of
the scatter the measured inputs explain (~0.95 / 0.95 / 0.96) — and ~0.995 for the final thickness. Targets
beyond the ceiling are asserted to be beyond it (so the statement stays true if the data set changes), not
tuned for; the feasible ones are asserted to be met.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from surrogates.train import data as D
from surrogates.train.pipeline import evaluate_model

#: regression floors of the shipped model on the test runs (a retrained model must not fall below them);
#: each sits a little under what the committed model reaches and under the noise ceiling (see the card)
R2_FLOORS = {"porosity": 0.83, "thickness_after_um": 0.985, "tortuosity_factor": 0.90, "d_eff": 0.88}
#: the model's RMSE on the test runs within this many DEM replicate standard deviations, for every output
RMSE_OVER_SCATTER_MAX = 2.5


@pytest.fixture(scope="module")
def ev(committed_dir: Path) -> dict:
    return evaluate_model(committed_dir)


@pytest.fixture(scope="module")
def card(committed_dir: Path) -> dict:
    return json.loads((committed_dir / "card.json").read_text())


def test_card_is_reproducible_from_the_data(ev: dict, card: dict) -> None:
    assert ev["dataset_matches_card"] and card["dataset"]["sha256"] == D.dataset_sha256()
    for split in ("test", "corner", "ood_lowcd"):
        for out in D.OUTPUTS:
            for k in ("r2", "mae", "median_ae", "mape_pct", "coverage_2sigma"):
                assert ev["metrics"][split][out][k] == pytest.approx(card["metrics"][split][out][k], abs=1e-6), \
                    (split, out, k)
    assert card["replicate_scatter"]["outputs"]["porosity"]["sd"] == pytest.approx(
        ev["replicate_scatter"]["outputs"]["porosity"]["sd"])


def test_replicate_scatter_matches_the_physics_reference(ev: dict) -> None:
    rs = ev["replicate_scatter"]
    assert len(rs["design_points"]) >= 4 and rs["runs"] >= 16
    assert 0.003 < rs["outputs"]["porosity"]["sd"] < 0.007  # 1.3-1.4 % CV (docs/physics.md)
    assert 1.0 < rs["outputs"]["tortuosity_factor"]["cv_pct"] < 2.5


def test_r2_targets_beyond_the_noise_ceiling_are_flagged_not_tuned(ev: dict, card: dict) -> None:
    rel = ev["relative"]["test"]
    for out in ("porosity", "tortuosity_factor", "d_eff"):
        target = D.TARGETS[out]["r2_min"]
        assert rel[out]["r2_noise_ceiling"] < target  # no faithful model can reach it on these runs
        row = next(r for r in card["acceptance"]["rows"] if r["output"] == out and r["metric"] == "r2")
        assert row["target_above_ceiling"] and not row["met"]
        # also beyond the ceiling left after the part of the scatter the measured inputs explain
        assert row["ceiling_given_measured_inputs"] < target, out
    assert "ceiling" in card["acceptance_note"]


def test_meets_the_targets_the_data_supports(ev: dict) -> None:
    m = ev["metrics"]["test"]
    assert m["tortuosity_factor"]["mape_pct"] <= D.TARGETS["tortuosity_factor"]["mape_pct_max"]  # 3 %
    assert D.pooled_coverage(m) >= D.COVERAGE_TARGET  # the +-2 sigma band covers >= 90 % of test points


def test_r2_floors_and_accuracy_relative_to_the_dem_scatter(ev: dict) -> None:
    m, rel = ev["metrics"]["test"], ev["relative"]["test"]
    for out, floor in R2_FLOORS.items():
        assert floor <= m[out]["r2"] <= rel[out]["r2_noise_ceiling"] + 0.05, out
    for out in D.OUTPUTS:
        assert rel[out]["rmse_over_replicate_sd"] <= RMSE_OVER_SCATTER_MAX, out


def test_porosity_mae_target(ev: dict) -> None:
    assert ev["metrics"]["test"]["porosity"]["mae"] <= D.TARGETS["porosity"]["mae_max"]  # 0.5 percentage points


def test_thickness_r2_target(ev: dict) -> None:
    assert ev["metrics"]["test"]["thickness_after_um"]["r2"] >= D.TARGETS["thickness_after_um"]["r2_min"]


def test_uncertainty_floor_is_the_scatter_the_inputs_leave(card: dict) -> None:
    """Spring-back's replicate scatter (4.7 %-points) is mostly the incoming layer the packing seed made, which the
    model sees; its noise term must not be held at the raw replicate sd, or its band would be ~4x too wide."""
    u, rs = card["uncertainty"], card["replicate_scatter"]["outputs"]
    for j, out in enumerate(D.OUTPUTS):
        assert u["floor_sd"][j] == pytest.approx(min(rs[out]["sd"], rs[out]["sd_given_measured_inputs"]))
        assert u["noise_sd"][j] >= u["floor_sd"][j]
    j = D.OUTPUTS.index("springback_pct")
    assert u["noise_sd"][j] < 0.5 * rs["springback_pct"]["sd"]


def test_held_out_corner_extrapolation_is_flagged_and_bounded(ev: dict) -> None:
    assert ev["ood_flagged"]["corner"] == 1.0 and ev["ood_flagged"]["ood_lowcd"] == 1.0
    assert ev["ood_flagged"]["test"] == 0.0
    c = ev["metrics"]["corner"]
    assert c["porosity"]["mae"] <= 0.01 and c["tortuosity_factor"]["mape_pct"] <= 4.0
    assert c["thickness_after_um"]["r2"] >= 0.9


def test_card_markdown_is_rendered_from_the_json(committed_dir: Path, card: dict) -> None:
    from surrogates.train.card import card_markdown

    assert (committed_dir / "card.md").read_text() == card_markdown(card)
    cv = card["cross_validation"]["metrics"]  # out-of-fold over train + validation, in the card and the Markdown
    assert set(cv) == set(D.OUTPUTS) and "## Cross-validation" in (committed_dir / "card.md").read_text()
