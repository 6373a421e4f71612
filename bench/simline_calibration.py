"""Calibrate the simulated line's calendering law on the physics reference v2 (issue #16, item 6).

The simulated line (``twin.simline.model``) calenders with Meyer's porosity–line-load law (seed 003, eq. 8) and a
spring-back law, in the line's terms: *total* porosity (the CBD's nanopores counted as pores, skeletal density),
areal loading of the solids in mg/cm², line load in N/mm. The DEM reference (``data/dem_v2``) works in *macro*
porosity (the CBD at its apparent density). This module converts every DEM run into the line's terms with the one
set of definitions (``ontology.definitions``), fits the line's law to it, and compares the line's response with
the DEM's:

* to the line load: the line's porosity and spring-back at the DEM's line load;
* to the gap: the line's nip solved in gap mode at the DEM's gap (no foil, no roll deflection, no thermal gap:
  the DEM has none of them) — porosity and line load.

Fitted law (``LineParams``):

    eps = eps0 (p + (s - p) exp(-q_L / ((mu0 - xi T_R) M)) + (1 - s) exp(-q_L / q_0))   (Meyer eq. 8, onset)
    SB  = s_inf (1 - exp(-q_L / q_s))                                (saturating spring-back, seed 003 / §4)

``s`` is the porosity at which the layer starts to carry load, as a fraction of the incoming porosity: the DEM's
dried layer is a loose packing that densifies at almost no load before Meyer's exponential takes over (§7.10);
``s = 1`` is Meyer's original law. ``M`` is the areal loading of the solids (the line's beta gauge), as the line
uses it.

    python -m bench.simline_calibration [--data data/dem_v2] [--json bench/results/simline_calibration.json]

(A benchmark-side tool, not part of the daemon: it needs scipy, which only the [physics] and [train] extras bring.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ontology.definitions import Recipe
from twin.simline.model import LineParams, meyer_porosity, springback

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "data" / "dem_v2"
DEFAULT_JSON = ROOT / "bench" / "results" / "simline_calibration.json"
#: the onset is the settling of a loose layer at small loads: its scale is bounded so that it cannot take over the
#: role of Meyer's exponential (the two would otherwise trade places in the fit)
ONSET_Q_MAX = 20.0
#: LineParams fields the calibration sets
FITTED = ("meyer_onset", "meyer_onset_q_N_mm", "meyer_p", "meyer_mu0", "meyer_xi", "springback_max",
          "springback_q_s")


def line_terms(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every DEM run in the line's terms: incoming total porosity, areal loading, line load, roll temperature,
    released total porosity, spring-back (relative), the coating gap and the incoming thickness."""
    w = np.asarray(d["am_fraction"], np.float64)
    h_solid = np.asarray(d["initial_thickness_um"], np.float64) * (1.0 - np.asarray(d["initial_porosity"], np.float64))
    h0 = np.asarray(d["thickness_before_um"], np.float64)
    recipes = [Recipe(am_fraction=float(x)) for x in w]
    rho_app = np.array([r.apparent_density for r in recipes])
    ratio = np.array([r.apparent_density / r.skeletal_density for r in recipes])
    eps0_macro = 1.0 - h_solid / h0
    return {
        "eps0": 1.0 - (1.0 - eps0_macro) * ratio,
        "loading": 0.1 * h_solid * rho_app,  # mg/cm2: um x 1e-4 cm x g/cm3 x 1e3 mg/g
        "q": np.asarray(d["line_load_N_per_mm"], np.float64),
        "T": np.asarray(d["roll_temperature_C"], np.float64),
        "eps": 1.0 - (1.0 - np.asarray(d["porosity"], np.float64)) * ratio,
        "sb": np.asarray(d["springback_pct"], np.float64) / 100.0,
        "gap": h0 * (1.0 - np.asarray(d["compaction_degree"], np.float64)),
        "h0": h0,
        "h_after": np.asarray(d["thickness_after_um"], np.float64),
        "solid_density": np.array([r.skeletal_density for r in recipes]),
    }


def _meyer(x: np.ndarray, s: float, q0: float, p: float, mu0: float, xi: float) -> np.ndarray:
    eps0, q, loading, T = x
    g = np.clip((mu0 - xi * T) * loading, 1e-6, None)
    return eps0 * (p + (s - p) * np.exp(-q / g) + (1.0 - s) * np.exp(-q / max(q0, 1e-9)))


def _sb(q: np.ndarray, s_inf: float, q_s: float) -> np.ndarray:
    return s_inf * (1.0 - np.exp(-q / q_s))


def _r2(y: np.ndarray, yhat: np.ndarray) -> float:
    return float(1.0 - np.sum((y - yhat) ** 2) / np.sum((y - y.mean()) ** 2))


def yield_softening_per_K() -> float:
    """Relative fall of the reference's yield stress per K over the design's 25-100 degC (least squares on the
    contact law's Y(T) / Y(25)): in plastic compaction the load for a given densification scales with the yield
    stress, so Meyer's damping gamma_C = (mu0 - xi T) M falls by the same relative slope."""
    from surrogates.reference.dem_v2 import ContactV2  # lazy: the reference package, only when calibrating

    c = ContactV2()
    T = np.linspace(25.0, 100.0, 76)
    ratio = np.array([c.yield_MPa_at(float(x)) / c.yield_MPa_at(25.0) for x in T])
    return float(-np.polyfit(T - 25.0, ratio, 1)[0])


def fit(t: dict[str, np.ndarray]) -> dict[str, Any]:
    """Least-squares fit of the line's law (multistart over the damping, as ``empirical._multistart``).

    The temperature factor is not resolved by the reference's scatter (a free fit gives xi with a standard error
    ten times its value), so it is tied to the reference's own contact law: xi = r (mu0 - 25 xi), r the yield
    stress's relative fall per K (``yield_softening_per_K``); the free fit is reported beside it."""
    from scipy.optimize import curve_fit  # lazy: scipy only when calibrating

    x = np.vstack([t["eps0"], t["q"], t["loading"], t["T"]])
    r = yield_softening_per_K()

    def tied(xx: np.ndarray, s: float, q0: float, p: float, a: float) -> np.ndarray:  # a = gamma_C(25 degC) / M
        return _meyer(xx, s, q0, p, a * (1.0 + 25.0 * r), a * r)

    def multistart(f: Any, p0: list[float], lo: list[float], hi: list[float], mu_at: int
                   ) -> tuple[float, np.ndarray, np.ndarray]:
        best: tuple[float, np.ndarray, np.ndarray] | None = None
        for mu in np.geomspace(0.1, 1000.0, 16):
            start = list(p0)
            start[mu_at] = mu
            try:
                popt, pcov = curve_fit(f, x, t["eps"], p0=start, bounds=(lo, hi), maxfev=20000)
            except (RuntimeError, ValueError):
                continue
            rmse = float(np.sqrt(np.mean((f(x, *popt) - t["eps"]) ** 2)))
            if best is None or rmse < best[0]:
                best = (rmse, popt, np.sqrt(np.diag(pcov)))
        if best is None:
            raise RuntimeError("the Meyer fit did not converge from any start")
        return best

    _, pt, et = multistart(tied, [0.8, 2.0, 0.6, 1.0], [0.3, 1e-3, 0.0, 1e-6], [1.0, ONSET_Q_MAX, 1.0, 1e5], 3)
    _, pf, ef = multistart(_meyer, [0.8, 2.0, 0.6, 1.0, 0.0], [0.3, 1e-3, 0.0, 1e-6, -10.0],
                           [1.0, ONSET_Q_MAX, 1.0, 1e5, 10.0], 3)
    pm = np.array([pt[0], pt[1], pt[2], pt[3] * (1.0 + 25.0 * r), pt[3] * r])
    em = np.array([et[0], et[1], et[2], et[3] * (1.0 + 25.0 * r), et[3] * r])
    ps, cs = curve_fit(_sb, t["q"], t["sb"], p0=[0.2, float(np.median(t["q"]))],
                       bounds=([0.0, 1e-3], [1.0, 1e6]), maxfev=20000)
    es = np.sqrt(np.diag(cs))
    params = dict(zip(FITTED, [float(v) for v in (*pm, *ps)]))
    errors = dict(zip(FITTED, [float(v) for v in (*em, *es)]))
    return {"params": params, "sd": errors, "xi_tied_to_yield": {"relative_yield_fall_per_K": r},
            "free_xi_fit": {"params": dict(zip(FITTED[:5], [float(v) for v in pf])),
                            "sd": dict(zip(FITTED[:5], [float(v) for v in ef])), "r2": _r2(t["eps"], _meyer(x, *pf))},
            "meyer_r2": _r2(t["eps"], _meyer(x, *pm)), "springback_r2": _r2(t["sb"], _sb(t["q"], *ps)),
            "gamma_C_per_loading_range": [float(pm[3] - pm[4] * t["T"].max()), float(pm[3] - pm[4] * t["T"].min())]}


def line_params(params: dict[str, float], base: LineParams | None = None) -> LineParams:
    return dataclasses.replace(base or LineParams(), **params)


def line_response(t: dict[str, np.ndarray], p: LineParams) -> dict[str, np.ndarray]:
    """The simulated line's answer for every DEM run: porosity and spring-back at the DEM's line load, and porosity
    and line load with the nip solved at the DEM's gap (no foil, roll deflection or thermal gap)."""
    n = len(t["q"])
    eps_q = np.empty(n)
    sb_q = np.empty(n)
    eps_g = np.empty(n)
    q_g = np.empty(n)
    for i in range(n):
        pi = dataclasses.replace(p, solid_density_g_cm3=float(t["solid_density"][i]))
        eps0, m, T = float(t["eps0"][i]), float(t["loading"][i]), float(t["T"][i])
        eps_q[i] = meyer_porosity(eps0, float(t["q"][i]), m, T, pi)
        sb_q[i] = springback(float(t["q"][i]), m, pi)
        # gap mode: the load at which the loaded thickness h_after / (1 + SB) equals the gap
        gap = float(t["gap"][i])

        def excess(q: float, _eps0: float = eps0, _m: float = m, _T: float = T, _p: LineParams = pi,
                   _gap: float = gap) -> float:
            eps = meyer_porosity(_eps0, q, _m, _T, _p)
            h = 10.0 * _m / (_p.solid_density_g_cm3 * (1.0 - eps))
            return h / (1.0 + springback(q, _m, _p)) - _gap

        lo, hi = 0.0, 1.0e5
        if excess(lo) <= 0.0:
            q = 0.0
        elif excess(hi) > 0.0:
            q = math.inf
        else:
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if excess(mid) > 0.0 else (lo, mid)
            q = 0.5 * (lo + hi)
        q_g[i] = q
        eps_g[i] = meyer_porosity(eps0, q, m, T, pi) if math.isfinite(q) else math.nan
    return {"eps_at_q": eps_q, "sb_at_q": sb_q, "eps_at_gap": eps_g, "q_at_gap": q_g}


def compare(t: dict[str, np.ndarray], r: dict[str, np.ndarray], scatter_sd: dict[str, float]) -> dict[str, Any]:
    """Residuals of the line against the DEM: mean offset, sd, and the sd over the DEM's replicate scatter."""
    out: dict[str, Any] = {}
    pairs = {"porosity_at_line_load": (r["eps_at_q"], t["eps"], "porosity"),
             "springback_at_line_load": (r["sb_at_q"], t["sb"], "springback"),
             "porosity_at_gap": (r["eps_at_gap"], t["eps"], "porosity"),
             "log_line_load_at_gap": (np.log(r["q_at_gap"]), np.log(t["q"]), "log_line_load")}
    for name, (line, dem, kind) in pairs.items():
        ok = np.isfinite(line) & np.isfinite(dem)
        e = line[ok] - dem[ok]
        sd_rep = scatter_sd[kind]
        out[name] = {"n": int(ok.sum()), "offset": float(e.mean()), "sd": float(e.std(ddof=1)),
                     "replicate_sd": sd_rep, "sd_over_replicate_sd": float(e.std(ddof=1) / sd_rep),
                     "r2": _r2(dem[ok], line[ok]), "not_solved": int((~ok).sum())}
    return out


def replicate_sd(d: dict[str, np.ndarray], t: dict[str, np.ndarray]) -> dict[str, float]:
    """Pooled within-design-point sd of the DEM's replicates (same inputs, other packing seeds), in line terms."""
    rep = np.asarray(d["replicate_of"]).astype(str)
    rid = np.asarray(d["run_id"]).astype(str)
    design = np.asarray(d["design"]).astype(str)
    groups = np.where(rep != "", rep, rid)
    cd = np.asarray(d["compaction_degree"], np.float64)
    groups = np.where(design == "sweep", np.char.add("sweep", np.char.mod("%.3f", cd)), groups)
    vals = {"porosity": t["eps"], "springback": t["sb"], "log_line_load": np.log(t["q"])}
    out = {}
    for k, v in vals.items():
        ss, dof = 0.0, 0
        for g in np.unique(groups):
            m = groups == g
            if m.sum() >= 2:
                ss += float(np.sum((v[m] - v[m].mean()) ** 2))
                dof += int(m.sum()) - 1
        out[k] = math.sqrt(ss / dof) if dof else math.nan
    return out


def calibrate(data: Path | str = DEFAULT_DATA) -> dict[str, Any]:
    from surrogates.reference.dataset import load_dataset  # lazy: pyarrow, only when calibrating

    d = load_dataset(data)  # the light-compaction runs included: they resolve the onset
    t = line_terms(d)
    f = fit(t)
    sd = replicate_sd(d, t)
    committed = LineParams()
    return {"n_runs": int(len(t["q"])), "fit": f, "replicate_sd": sd,
            "fitted_vs_dem": compare(t, line_response(t, line_params(f["params"])), sd),
            "committed_params": {k: getattr(committed, k) for k in FITTED},
            "committed_vs_dem": compare(t, line_response(t, committed), sd)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--json", default=str(DEFAULT_JSON))
    a = ap.parse_args(argv)
    res = calibrate(a.data)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=2))
    print(json.dumps({k: res[k] for k in ("n_runs", "fit", "replicate_sd")}, indent=2))
    for which in ("fitted_vs_dem", "committed_vs_dem"):
        print(which)
        for k, v in res[which].items():
            print(f"  {k:26s} offset {v['offset']:+.4f} sd {v['sd']:.4f} (replicate sd {v['replicate_sd']:.4f}, "
                  f"ratio {v['sd_over_replicate_sd']:.2f}) R2 {v['r2']:.3f} n {v['n']} unsolved {v['not_solved']}")


if __name__ == "__main__":
    main()
