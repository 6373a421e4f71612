"""The cell consequence of a calendered cathode (surrogates/cell.py, issue #18 item 4): a real PyBaMM DFN."""

from __future__ import annotations

import math

import pytest

from ontology.definitions import LINE_RECIPE as R
from surrogates.cell import CathodeState, CellInputError, CellModel, bruggeman_exponent

pytest.importorskip("pybamm")

LOADING = 20.0  # mg/cm2


def _setting(eps_total: float, tau: float) -> CathodeState:
    return CathodeState.from_tortuosity(eps_total, R.macro_from_total(eps_total), tau,
                                        R.thickness_um(LOADING, eps_total), LOADING)


@pytest.fixture(scope="module")
def model() -> CellModel:
    return CellModel(c_rates=(0.5, 2.0))


def test_bruggeman_exponent_reproduces_the_transport():
    b = bruggeman_exponent(0.3, 0.06)
    assert 0.3 ** b == pytest.approx(0.06)
    assert bruggeman_exponent(0.4, 0.4 ** 1.5) == pytest.approx(1.5)
    with pytest.raises(CellInputError):
        bruggeman_exponent(0.3, 0.35)  # more transport than open pore volume: impossible


def test_the_same_coating_keeps_its_active_material(model: CellModel):
    a, b = model.derive(_setting(0.40, 2.3)), model.derive(_setting(0.30, 3.3))
    assert a["am_thickness_um"] == pytest.approx(b["am_thickness_um"], rel=1e-9)  # calendering moves no mass
    assert a["am_thickness_um"] == pytest.approx(LOADING * R.am_fraction / R.rho_am * 10.0, rel=1e-9)
    assert a["nominal_capacity_Ah"] == pytest.approx(b["nominal_capacity_Ah"])
    assert b["bruggeman_exponent"] > a["bruggeman_exponent"] > 1.5


def test_inconsistent_inputs_are_refused_with_the_reason(model: CellModel):
    s = _setting(0.35, 2.6)
    with pytest.raises(CellInputError, match="not the same coating"):
        # a macro-porosity where the total one is meant: the loading does not fit the thickness
        model.derive(CathodeState(R.macro_from_total(0.35), s.d_eff, s.thickness_um, LOADING))
    with pytest.raises(CellInputError):
        model.derive(CathodeState(0.9, 0.1, 60.0))
    with pytest.raises(CellInputError):
        model.derive(CathodeState(0.3, 0.05, 2.0))


def test_denser_calendering_costs_rate_capability_not_low_rate_capacity(model: CellModel):
    loose, dense = _setting(0.40, 2.3), _setting(0.30, 3.3)
    cmp = model.compare(loose, dense)
    lo = {d["c_rate"]: d for d in cmp["a"]["discharges"]}
    de = {d["c_rate"]: d for d in cmp["b"]["discharges"]}
    # at C/2 both deliver nearly all of their (equal) active material
    assert de[0.5]["capacity_mAh_cm2"] == pytest.approx(lo[0.5]["capacity_mAh_cm2"], rel=0.01)
    assert 3.5 < lo[0.5]["capacity_mAh_cm2"] < 5.5  # ~ 18.8 mg/cm2 of NMC811 x 200-250 mAh/g
    # at 2C the denser, more tortuous cathode starves its electrolyte and delivers clearly less
    assert de[2.0]["capacity_mAh_cm2"] < 0.9 * lo[2.0]["capacity_mAh_cm2"]
    assert cmp["difference_b_minus_a"]["2C"]["capacity_pct"] < -10.0
    for d in (*lo.values(), *de.values()):
        assert d["capacity_mAh_cm2"] > 0 and 3.0 < d["mean_voltage_V"] < 4.2
        v = d["curve"]["voltage_V"]
        assert len(v) >= 10 and all(math.isfinite(x) for x in v)
        assert v[-1] < v[0]  # a discharge


def test_a_cached_thickness_is_reused(model: CellModel):
    s = _setting(0.34, 2.8)
    model.evaluate(s)
    n = len(model.cached_thicknesses())
    other = CathodeState(s.porosity, s.d_eff * 0.8, s.thickness_um)
    r = model.evaluate(other)
    assert len(model.cached_thicknesses()) == n and r.discharges[0].capacity_Ah > 0
