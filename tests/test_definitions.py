"""One set of definitions from the line to the model (ontology/definitions.py, issue #16 item 5)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ontology.definitions import LINE_RECIPE, RHO_CBD_APPARENT, RHO_NMC, Recipe, coating_gap_um, compaction_degree
from surrogates.reference.dem import Material
from twin.predictor import PredictorConfig, line_to_model_inputs, outputs_to_line, porosity_kind
from twin.simline.model import LineParams


def test_densities_of_the_line_recipe():
    r = LINE_RECIPE
    assert r.rho_cbd_skeletal == pytest.approx(1.838, abs=1e-3)
    assert r.cbd_nanoporosity == pytest.approx(0.483, abs=1e-3)
    assert r.skeletal_density == pytest.approx(4.338, abs=1e-3)  # the gauge's density (was 4.34 in the predictor)
    assert r.apparent_density == pytest.approx(3.831, abs=1e-3)
    assert Recipe(am_fraction=0.96).apparent_density == pytest.approx(4.095, abs=1e-3)  # the DEM's composite


def test_every_user_takes_the_same_densities():
    assert LineParams().solid_density_g_cm3 == pytest.approx(LINE_RECIPE.skeletal_density, abs=1e-4)
    m = Material()
    assert (m.rho_am, m.rho_cbd) == (RHO_NMC, RHO_CBD_APPARENT)
    cfg = PredictorConfig()
    assert cfg.am_fraction == LINE_RECIPE.am_fraction


@given(st.floats(0.85, 0.99), st.floats(0.05, 0.7))
def test_total_and_macro_porosity_conserve_the_mass(w, eps_macro):
    r = Recipe(am_fraction=w)
    eps_total = r.total_from_macro(eps_macro)
    assert eps_total > eps_macro  # the CBD's nanopores add to the total
    assert r.macro_from_total(eps_total) == pytest.approx(eps_macro, abs=1e-12)
    # the same coating (loading, thickness) seen both ways
    h = 50.0
    m = (1 - eps_macro) * r.apparent_density * h / 10.0  # mg/cm2
    assert r.thickness_um(m, eps_macro, "macro") == pytest.approx(h)
    assert r.porosity(m, h, "macro") == pytest.approx(eps_macro, abs=1e-12)
    assert r.porosity(m, h, "total") == pytest.approx(eps_total, abs=1e-12)


def test_recipe_refuses_nonsense():
    with pytest.raises(ValueError):
        Recipe(am_fraction=1.2)
    with pytest.raises(ValueError):
        Recipe(rho_cbd_apparent=3.0)
    with pytest.raises(ValueError):
        LINE_RECIPE.porosity(20.0, 0.0)


def test_compaction_degree_round_trip():
    assert compaction_degree(80.0, coating_gap_um(80.0, 0.3)) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        compaction_degree(0.0, 10.0)


def test_predictor_feeds_a_macro_model_its_own_porosity_and_returns_the_lines():
    cfg = PredictorConfig(foil_thickness_um=15.0)
    r = Recipe(am_fraction=cfg.am_fraction)
    h0, m = 80.0, 20.0
    line = {"dry_thickness": h0, "areal_loading": m, "gap": 15.0 + 56.0, "roll_speed": 10.0, "roll_temperature": 60.0}
    total = line_to_model_inputs(line, cfg, 48.0, (30.0, 30.0), kind="total")
    macro = line_to_model_inputs(line, cfg, 48.0, (30.0, 30.0), kind="macro")
    assert total["initial_porosity"] == pytest.approx(r.porosity(m, h0, "total"))
    assert macro["initial_porosity"] == pytest.approx(r.porosity(m, h0, "macro"))
    assert macro["compaction_degree"] == pytest.approx(compaction_degree(h0, 56.0))
    names = ["porosity", "tortuosity_factor"]
    mean = np.array([[0.25, 3.0]])
    std = np.array([[0.01, 0.1]])
    outputs_to_line(cfg, "macro", names, mean, std)
    assert mean[0, 0] == pytest.approx(r.total_from_macro(0.25))
    assert std[0, 0] == pytest.approx(0.01 * r.apparent_density / r.skeletal_density)
    assert (mean[0, 1], std[0, 1]) == (3.0, 0.1)  # only porosity has two kinds
    before = mean.copy()
    outputs_to_line(cfg, "total", names, mean, std)
    assert np.array_equal(mean, before)


def test_porosity_kind_comes_from_the_card_unless_configured():
    assert porosity_kind(PredictorConfig(), {"porosity_kind": "macro"}) == "macro"
    assert porosity_kind(PredictorConfig(), {}) == "total"  # a card without it (v1) is taken as is
    assert porosity_kind(PredictorConfig(model_porosity="macro"), {}) == "macro"
