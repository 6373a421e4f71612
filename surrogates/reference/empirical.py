"""Empirical calendering models of seed 003 (Chen et al. review), with fitting to DEM data.

Models
------
* Meyer's porosity – line-load law with compaction factor p and temperature-dependent damping
  (eqs. 6–8):  eps = eps0 * (p + (1 - p) * exp(-q_L / gamma_C)),  gamma_C = (mu0 - xi*T_R) * M_C
* density – line-load law (eq. 4):  q_L = A * (rho - rho0)^B
* spring-back vs line load:  SB = s_inf * (1 - exp(-q_L / q_s))  (saturating; empirical)
* tortuosity – porosity:  tau = a * eps^b  (generalised Bruggeman), Bruggeman tau = eps^-0.5
* transport:  D_eff/D0 = kappa_eff/kappa0 = eps / tau  (eqs. 10–11)
* penetration-depth model (Tambio et al., eqs. 9, 13, 14):
  L_d = (eps/tau) * D0 * c0 * F / ((1 - t_Li) * I),  Q_I/Q0 = min(1, L_d / L)

Every fit returns a :class:`FitResult` with parameters, standard errors, R², RMSE and MAPE so the
quality is reported next to the numbers. ``predict_*`` functions are the fast fallback predictor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FARADAY = 96485.332  # C/mol


# --------------------------------------------------------------------------------------------
# Model equations
# --------------------------------------------------------------------------------------------


def gamma_c(T_R: np.ndarray | float, M_C: np.ndarray | float, mu0: float, xi: float) -> np.ndarray:
    """Damping correction factor gamma_C = (mu0 - xi T_R) M_C (N/mm per mg/cm^2 x mg/cm^2)."""
    return (mu0 - xi * np.asarray(T_R, dtype=float)) * np.asarray(M_C, dtype=float)


def meyer_porosity(q_L, eps0, p: float, gamma: np.ndarray | float) -> np.ndarray:
    """eps = eps0 (p + (1 - p) exp(-q_L / gamma_C))."""
    q = np.asarray(q_L, dtype=float)
    return np.asarray(eps0, dtype=float) * (p + (1.0 - p) * np.exp(-q / np.asarray(gamma, dtype=float)))


def density_line_load(rho, rho0, A: float, B: float) -> np.ndarray:
    """q_L = A (rho - rho0)^B (rho, rho0 in g/cm^3; q_L in N/mm)."""
    d = np.clip(np.asarray(rho, dtype=float) - np.asarray(rho0, dtype=float), 0.0, None)
    return A * d**B


def density_from_line_load(q_L, rho0, A: float, B: float) -> np.ndarray:
    """Inverse of :func:`density_line_load`."""
    return np.asarray(rho0, dtype=float) + (np.clip(np.asarray(q_L, dtype=float), 0, None) / A) ** (1.0 / B)


def springback_line_load(q_L, s_inf: float, q_s: float) -> np.ndarray:
    return s_inf * (1.0 - np.exp(-np.asarray(q_L, dtype=float) / q_s))


def tortuosity_power(eps, a: float, b: float) -> np.ndarray:
    """tau = a eps^b; Bruggeman: a = 1, b = -0.5."""
    return a * np.asarray(eps, dtype=float) ** b


def bruggeman_tortuosity(eps) -> np.ndarray:
    return np.asarray(eps, dtype=float) ** -0.5


def effective_transport(eps, tau) -> np.ndarray:
    """D_eff/D0 = kappa_eff/kappa0 = eps / tau."""
    return np.asarray(eps, dtype=float) / np.asarray(tau, dtype=float)


def penetration_depth_m(eps, tau, D0_m2_s: float = 3.0e-10, c0_mol_m3: float = 1000.0, t_li: float = 0.38,
                        current_A_m2: float = 30.0) -> np.ndarray:
    """Lithium-ion penetration depth L_d (m), Tambio et al. (seed 003 eq. 9)."""
    return effective_transport(eps, tau) * D0_m2_s * c0_mol_m3 * FARADAY / ((1.0 - t_li) * current_A_m2)


def capacity_ratio(eps, tau, thickness_m, **kw) -> np.ndarray:
    """Q_I/Q0 = min(1, L_d / L) (seed 003 eqs. 13-14)."""
    return np.minimum(1.0, penetration_depth_m(eps, tau, **kw) / np.asarray(thickness_m, dtype=float))


# --------------------------------------------------------------------------------------------
# Electrode bookkeeping
# --------------------------------------------------------------------------------------------

RHO_AM = 4.75  # g/cm^3 NMC111
RHO_CBD = 0.95  # g/cm^3 apparent CBD (same as the DEM)


def solid_density(am_fraction) -> np.ndarray:
    """Density of the pore-free solid mix (g/cm^3) from the AM mass fraction."""
    w = np.asarray(am_fraction, dtype=float)
    return 1.0 / (w / RHO_AM + (1.0 - w) / RHO_CBD)


def coating_density(porosity, am_fraction) -> np.ndarray:
    return (1.0 - np.asarray(porosity, dtype=float)) * solid_density(am_fraction)


def active_mass_loading(porosity, thickness_um, am_fraction) -> np.ndarray:
    """Active mass loading M_C in mg/cm^2 = rho_coating * h * w_AM."""
    h_cm = np.asarray(thickness_um, dtype=float) * 1e-4
    return coating_density(porosity, am_fraction) * h_cm * 1e3 * np.asarray(am_fraction, dtype=float)


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    name: str
    params: dict[str, float]
    stderr: dict[str, float]
    r2: float
    rmse: float
    mape_pct: float
    n: int
    formula: str
    predict: Callable[..., Any] | None = field(repr=False, default=None)

    def summary(self) -> str:
        ps = ", ".join(f"{k}={v:.4g}±{self.stderr.get(k, float('nan')):.2g}" for k, v in self.params.items())
        return f"{self.name}: {ps}; R²={self.r2:.3f}, RMSE={self.rmse:.4g}, MAPE={self.mape_pct:.1f}% (n={self.n})"

    def as_dict(self) -> dict:
        return {"name": self.name, "formula": self.formula, "params": self.params, "stderr": self.stderr,
                "r2": self.r2, "rmse": self.rmse, "mape_pct": self.mape_pct, "n": self.n}


def _quality(y: np.ndarray, yhat: np.ndarray) -> tuple[float, float, float]:
    y = np.asarray(y, dtype=float)
    yhat = np.asarray(yhat, dtype=float)
    ss_res = float(np.sum((y - yhat) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    rmse = math.sqrt(ss_res / len(y))
    nz = np.abs(y) > 1e-12
    mape = float(np.mean(np.abs((y[nz] - yhat[nz]) / y[nz])) * 100) if nz.any() else float("nan")
    return r2, rmse, mape


def _fit(name: str, formula: str, f: Callable, x, y, p0, names, bounds=(-np.inf, np.inf)) -> FitResult:
    from scipy.optimize import curve_fit

    y = np.asarray(y, dtype=float)
    popt, pcov = curve_fit(f, x, y, p0=p0, bounds=bounds, maxfev=20000)
    perr = np.sqrt(np.clip(np.diag(pcov), 0, None)) if np.all(np.isfinite(pcov)) else np.full(len(popt), np.nan)
    yhat = f(x, *popt)
    r2, rmse, mape = _quality(y, yhat)
    params = {k: float(v) for k, v in zip(names, popt)}

    def predict(xnew, _p=tuple(popt)):
        return f(xnew, *_p)

    return FitResult(name, params, {k: float(v) for k, v in zip(names, perr)}, r2, rmse, mape, len(y), formula,
                     predict)


def fit_meyer(q_L, eps, eps0, T_R, M_C) -> FitResult:
    """Fit p, mu0, xi of eps = eps0 (p + (1-p) exp(-q_L / ((mu0 - xi T_R) M_C)))."""
    X = np.vstack([q_L, eps0, T_R, M_C]).astype(float)

    def f(X, p, mu0, xi):
        q, e0, T, M = X
        g = np.clip((mu0 - xi * T) * M, 1e-6, None)
        return e0 * (p + (1 - p) * np.exp(-q / g))

    return _multistart(lambda mu: _fit("meyer_porosity_line_load",
                                       "eps = eps0 (p + (1-p) exp(-q_L / ((mu0 - xi T_R) M_C)))", f, X, eps,
                                       p0=[0.7, mu, 0.0], names=["p", "mu0", "xi"],
                                       bounds=([0.0, 1e-6, -10.0], [1.0, 1e4, 10.0])), q_L, M_C, T_R)


def _multistart(fit_at: Callable[[float], FitResult], q_L, M_C, T_R=None) -> FitResult:
    """The exponential saturates quickly; start the damping factor over three decades of q_L / M_C.

    A solution whose damping ``mu0 - xi T_R`` is not positive at every temperature of the data is degenerate: the
    model clips it to its floor there and predicts a constant, whatever the line load. Such a solution is taken
    only when no start gives a proper one."""
    q = np.asarray(q_L, dtype=float)
    M = float(np.mean(M_C))
    T = None if T_R is None else np.asarray(T_R, dtype=float)
    best, best_any = None, None
    lo, hi = max(np.percentile(q, 2), 1e-2) / M, max(np.percentile(q, 90), 1e-1) / M
    for mu in np.geomspace(lo / 3.0, hi * 3.0, 12):
        try:
            r = fit_at(float(mu))
        except (RuntimeError, ValueError):
            continue
        if best_any is None or r.rmse < best_any.rmse:
            best_any = r
        proper = T is None or bool(np.all(r.params["mu0"] - r.params["xi"] * T > 0))
        if proper and (best is None or r.rmse < best.rmse):
            best = r
    if best_any is None:
        raise RuntimeError("Meyer fit did not converge from any start")
    return best if best is not None else best_any


def fit_meyer_min(q_L, eps, eps0, T_R, M_C) -> FitResult:
    """Fit eps_min, mu0, xi of eq. 5: eps = eps_min + (eps0 - eps_min) exp(-q_L / ((mu0 - xi T_R) M_C))."""
    X = np.vstack([q_L, eps0, T_R, M_C]).astype(float)

    def f(X, eps_min, mu0, xi):
        q, e0, T, M = X
        g = np.clip((mu0 - xi * T) * M, 1e-6, None)
        return eps_min + (e0 - eps_min) * np.exp(-q / g)

    return _multistart(lambda mu: _fit("meyer_eq5_min_porosity",
                                       "eps = eps_min + (eps0 - eps_min) exp(-q_L / ((mu0 - xi T_R) M_C))", f, X,
                                       eps, p0=[float(np.min(eps)), mu, 0.0], names=["eps_min", "mu0", "xi"],
                                       bounds=([0.0, 1e-6, -10.0], [1.0, 1e4, 10.0])), q_L, M_C, T_R)


def fit_meyer_onset(q_L, eps, eps0, T_R, M_C, q0_max: float = 20.0) -> FitResult:
    """Meyer's eq. 8 with an onset (the simulated line's law, bench.simline_calibration): a loose dried layer first
    settles from eps0 to s eps0 over a small load q0 (<= ``q0_max``), then follows the exponential:
    eps = eps0 (p + (s - p) exp(-q_L / ((mu0 - xi T_R) M_C)) + (1 - s) exp(-q_L / q0)). With s = 1 it is eq. 8."""
    X = np.vstack([q_L, eps0, T_R, M_C]).astype(float)

    def f(X, s, q0, p, mu0, xi):
        q, e0, T, M = X
        g = np.clip((mu0 - xi * T) * M, 1e-6, None)
        return e0 * (p + (s - p) * np.exp(-q / g) + (1 - s) * np.exp(-q / max(q0, 1e-9)))

    return _multistart(lambda mu: _fit("meyer_onset",
                                       "eps = eps0 (p + (s-p) exp(-q_L / ((mu0 - xi T_R) M_C)) + (1-s) exp(-q_L / q0))",
                                       f, X, eps, p0=[0.8, 2.0, 0.6, mu, 0.0], names=["s", "q0", "p", "mu0", "xi"],
                                       bounds=([0.3, 1e-3, 0.0, 1e-6, -10.0], [1.0, q0_max, 1.0, 1e4, 10.0])),
                       q_L, M_C, T_R)


def fit_density_line_load(rho, rho0, q_L) -> FitResult:
    X = np.vstack([rho, rho0]).astype(float)

    def f(X, A, B):
        return density_line_load(X[0], X[1], A, B)

    return _fit("density_line_load", "q_L = A (rho - rho0)^B", f, X, q_L, p0=[100.0, 2.0], names=["A", "B"],
                bounds=([1e-6, 0.1], [1e7, 10.0]))


def fit_springback(q_L, sb_pct) -> FitResult:
    q = np.asarray(q_L, dtype=float)
    return _fit("springback_line_load", "SB = s_inf (1 - exp(-q_L / q_s))", springback_line_load, q, sb_pct,
                p0=[float(np.max(sb_pct)), float(np.median(q))], names=["s_inf", "q_s"],
                bounds=([0.0, 1e-6], [1e3, 1e6]))


def fit_tortuosity(eps, tau) -> FitResult:
    return _fit("tortuosity_power_law", "tau = a eps^b", tortuosity_power, np.asarray(eps, dtype=float), tau,
                p0=[1.0, -0.5], names=["a", "b"])


def bruggeman_quality(eps, tau) -> FitResult:
    """Bruggeman (no free parameter) scored on the same data."""
    eps = np.asarray(eps, dtype=float)
    r2, rmse, mape = _quality(tau, bruggeman_tortuosity(eps))
    return FitResult("bruggeman", {"a": 1.0, "b": -0.5}, {"a": 0.0, "b": 0.0}, r2, rmse, mape, len(eps),
                     "tau = eps^-0.5", lambda e: bruggeman_tortuosity(e))


def fit_all(ds: dict[str, np.ndarray]) -> dict[str, FitResult]:
    """Fit every empirical model to a DEM data set (dict of columns, see dataset.load_dataset)."""
    eps0 = ds["porosity_before"]
    eps = ds["porosity"]
    q = ds["line_load_N_per_mm"]
    w = ds["am_fraction"]
    M_C = active_mass_loading(eps0, ds["thickness_before_um"], w)
    rho0 = coating_density(eps0, w)
    rho = coating_density(eps, w)
    return {
        "meyer": fit_meyer(q, eps, eps0, ds["roll_temperature_C"], M_C),
        "meyer_eq5": fit_meyer_min(q, eps, eps0, ds["roll_temperature_C"], M_C),
        "meyer_onset": fit_meyer_onset(q, eps, eps0, ds["roll_temperature_C"], M_C),
        "density": fit_density_line_load(rho, rho0, q),
        "springback": fit_springback(q, ds["springback_pct"]),
        "tortuosity": fit_tortuosity(np.concatenate([eps, eps0]),
                                     np.concatenate([ds["tortuosity_factor"], ds["tortuosity_factor_before"]])),
        "bruggeman": bruggeman_quality(np.concatenate([eps, eps0]),
                                       np.concatenate([ds["tortuosity_factor"], ds["tortuosity_factor_before"]])),
    }
