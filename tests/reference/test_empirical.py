"""Seed-003 empirical models: equations and fitting recover known parameters."""

from __future__ import annotations

import numpy as np
import pytest

from surrogates.reference import empirical as em


def test_meyer_limits_and_temperature():
    eps0 = 0.5
    g = em.gamma_c(25.0, 10.0, mu0=5.0, xi=0.02)
    assert g == pytest.approx((5.0 - 0.5) * 10.0)
    assert em.meyer_porosity(0.0, eps0, 0.6, g) == pytest.approx(eps0)
    assert em.meyer_porosity(1e9, eps0, 0.6, g) == pytest.approx(0.6 * eps0)
    # hotter roll -> smaller gamma_C -> lower porosity at the same line load (seed 003)
    hot = em.meyer_porosity(100.0, eps0, 0.6, em.gamma_c(90.0, 10.0, 5.0, 0.02))
    cold = em.meyer_porosity(100.0, eps0, 0.6, g)
    assert hot < cold


def test_fit_meyer_recovers_parameters():
    rng = np.random.default_rng(0)
    n = 200
    q = rng.uniform(0, 600, n)
    eps0 = rng.uniform(0.42, 0.52, n)
    T = rng.uniform(25, 100, n)
    M = rng.uniform(8, 16, n)
    eps = em.meyer_porosity(q, eps0, 0.55, em.gamma_c(T, M, 12.0, 0.05)) + rng.normal(0, 1e-3, n)
    fit = em.fit_meyer(q, eps, eps0, T, M)
    assert fit.params["p"] == pytest.approx(0.55, abs=0.02)
    assert fit.params["mu0"] == pytest.approx(12.0, rel=0.1)
    assert fit.params["xi"] == pytest.approx(0.05, abs=0.02)
    assert fit.r2 > 0.98
    assert "R²" in fit.summary()


def test_density_law_roundtrip_and_fit():
    rho0 = np.full(50, 2.2)
    rho = np.linspace(2.3, 3.2, 50)
    q = em.density_line_load(rho, rho0, A=300.0, B=1.8)
    assert em.density_from_line_load(q, rho0, 300.0, 1.8) == pytest.approx(rho)
    fit = em.fit_density_line_load(rho, rho0, q)
    assert fit.params["A"] == pytest.approx(300.0, rel=1e-3)
    assert fit.params["B"] == pytest.approx(1.8, rel=1e-3)


def test_tortuosity_power_law_and_bruggeman():
    eps = np.linspace(0.2, 0.6, 30)
    fit = em.fit_tortuosity(eps, em.bruggeman_tortuosity(eps))
    assert fit.params["a"] == pytest.approx(1.0, rel=1e-4)
    assert fit.params["b"] == pytest.approx(-0.5, rel=1e-4)
    assert em.bruggeman_quality(eps, eps**-0.5).rmse == pytest.approx(0.0, abs=1e-12)
    assert em.effective_transport(0.36, 3.0) == pytest.approx(0.12)


def test_springback_fit():
    q = np.linspace(1, 500, 40)
    sb = em.springback_line_load(q, 12.0, 80.0)
    fit = em.fit_springback(q, sb)
    assert fit.params["s_inf"] == pytest.approx(12.0, rel=1e-3)
    assert fit.params["q_s"] == pytest.approx(80.0, rel=1e-3)


def test_penetration_depth_model():
    # L_d = eps/tau * D0 c0 F / ((1 - t) I)
    ld = em.penetration_depth_m(0.3, 2.0, D0_m2_s=3e-10, c0_mol_m3=1000.0, t_li=0.38, current_A_m2=30.0)
    assert ld == pytest.approx(0.15 * 3e-10 * 1000 * em.FARADAY / (0.62 * 30))
    assert em.capacity_ratio(0.3, 2.0, thickness_m=1e-6) == 1.0
    assert em.capacity_ratio(0.3, 2.0, thickness_m=10 * ld) == pytest.approx(0.1)


def test_mass_loading_bookkeeping():
    rho_s = em.solid_density(0.96)
    assert em.RHO_CBD < rho_s < em.RHO_AM
    # 60 um at 40 % porosity: M = rho (1-eps) h w
    m = em.active_mass_loading(0.4, 60.0, 0.96)
    assert m == pytest.approx(rho_s * 0.6 * 60e-4 * 1e3 * 0.96)


@pytest.mark.parametrize("fit_fn", [em.fit_meyer, em.fit_meyer_min])
def test_meyer_fit_on_the_dem_set_is_not_degenerate(fit_fn):
    """On the committed DEM set a start once converged where mu0 - xi T_R <= 0 above 25 degC: the model then clips
    the damping and predicts a constant fraction of eps0 whatever the line load. The multistart must prefer a
    solution whose damping is positive at every temperature of the data, and the porosity must then fall with
    the line load."""
    from surrogates.reference.dataset import load_dataset

    d = load_dataset()
    T = d["roll_temperature_C"]
    M_C = em.active_mass_loading(d["porosity_before"], d["thickness_before_um"], d["am_fraction"])
    fit = fit_fn(d["line_load_N_per_mm"], d["porosity"], d["porosity_before"], T, M_C)
    assert np.all(fit.params["mu0"] - fit.params["xi"] * T > 0), fit.summary()
    assert fit.stderr["mu0"] < 10 * abs(fit.params["mu0"]), fit.summary()  # identified, not free to wander
    # at 60 degC the porosity still follows the line load between two small loads (the degenerate fit had already
    # saturated at any load above zero and gave the same value for both)
    X = np.array([[0.05, 0.5], [0.47, 0.47], [60.0, 60.0], [float(np.median(M_C))] * 2])
    light, heavier = fit.predict(X)
    assert heavier < light - 1e-3, fit.summary()
