"""Reference v2 groundwork checks (issue #16): compaction sweep v1 vs v2, quasi-static and timestep checks.

    python -m surrogates.reference.v2_checks sweep --out bench/results/physics_v2_sweep.jsonl
    python -m surrogates.reference.v2_checks qs    --out bench/results/physics_v2_qs.jsonl
    python -m surrogates.reference.v2_checks tiny  --out bench/results/physics_v2_tiny.jsonl   (protocol study)
    python -m surrogates.reference.v2_checks sweep2 --out bench/results/physics_v2_sweep2.jsonl (v2 protocol)
    python -m surrogates.reference.v2_checks qs2   --out bench/results/physics_v2_qs2.jsonl    (data-set settings)

One run at a time, single-threaded (LAMMPS serial); every result line carries its wall and CPU time.
Resumable: a spec whose ``key`` is already in the output file is skipped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import GAP_SOLID_FRACTION_MAX, V2_CONTACT, V2_PROTOCOL, gap_solid_fraction
from .dem import DEMParams, run_calendering
from .dem_v2 import ContactV2, DEMParamsV2, run_calendering_v2
from .voxel import metrics, voxelize

CENTRE = dict(am_fraction=0.945, initial_porosity=0.46, initial_thickness_um=48.0, wall_speed_mm_s=60.0,
              roll_temperature_C=62.5, seed=1000)
# three design points for the quasi-static / timestep checks (centre, a gentle-cold and a hard-hot corner)
QS_POINTS = {
    "centre": dict(CENTRE, compaction_degree=0.35),
    "low": dict(CENTRE, compaction_degree=0.25, initial_porosity=0.42, initial_thickness_um=44.0,
                roll_temperature_C=30.0, seed=1001),
    "high": dict(CENTRE, compaction_degree=0.45, initial_porosity=0.50, initial_thickness_um=52.0,
                 roll_temperature_C=90.0, seed=1002),
    # the high point's hard-hot layer pressed to CD 0.40: dense (gap solid fraction ~0.9) but inside the domain
    # (the high point itself sits at the gap's full density, the domain's edge; docs/physics.md §7.10)
    "dense": dict(CENTRE, compaction_degree=0.40, initial_porosity=0.50, initial_thickness_um=52.0,
                  roll_temperature_C=90.0, seed=1002),
}


def one(model: str, params: dict, contact: dict | None = None) -> dict:
    t, c0 = time.perf_counter(), time.process_time()
    if model == "v1":
        r = run_calendering(DEMParams(**params))
    else:
        r = run_calendering_v2(DEMParamsV2(**params, contact=ContactV2(**(contact or {}))))
    out: dict[str, Any] = dict(h0=r.thickness_before_um, hmax=r.thickness_max_um, gap=r.gap_um, h1=r.thickness_after_um,
               springback_pct=r.springback_pct, compaction_kept=r.compaction_final, pmax_MPa=r.max_pressure_MPa,
               line_load_N_mm=r.line_load_N_per_mm, inertial_number=r.inertial_number, lost=r.lost_particles,
               steps=r.n_steps, dt_us=r.dt_us, n=int(r.n_am + r.n_cbd),
               dem_wall_s=round(time.perf_counter() - t, 1), dem_cpu_s=round(time.process_time() - c0, 1))
    t, c0 = time.perf_counter(), time.process_time()
    nz = int(np.ceil((r.thickness_before_um + 3) / 0.4))
    m0 = metrics(voxelize(r.frames[0], r.radius, r.ptype, r.box_um, nz=nz, thickness=r.thickness_before_um),
                 thickness=r.thickness_before_um)
    m = metrics(voxelize(r.frames[-1], r.radius, r.ptype, r.box_um, nz=nz, thickness=r.thickness_after_um),
                thickness=r.thickness_after_um)
    out.update(porosity_before=m0.porosity, porosity=m.porosity, tortuosity_factor=m.tortuosity_factor,
               d_eff=m.d_eff, metrics_wall_s=round(time.perf_counter() - t, 1),
               metrics_cpu_s=round(time.process_time() - c0, 1))
    if "radius_final" in r.extras:  # porosity with mdr's apparent (plastically enlarged) radii, for comparison
        img = voxelize(r.frames[-1], r.extras["radius_final"], r.ptype, r.box_um, nz=nz, thickness=r.thickness_after_um)
        out["porosity_apparent_radius"] = float((img[..., : int(round(r.thickness_after_um / 0.4))] == 0).mean())
    out["extras"] = {k: v for k, v in r.extras.items() if k != "radius_final"}
    return out


def specs(kind: str) -> list[dict]:
    if kind == "sweep":
        return [dict(key=f"{m}_cd{cd:.2f}", model=m, params=dict(CENTRE, compaction_degree=cd))
                for cd in (0.20, 0.30, 0.40, 0.45, 0.50) for m in ("v2", "v1")]
    if kind == "qs":
        out = []
        for name, pt in QS_POINTS.items():
            v = pt["wall_speed_mm_s"]
            out.append(dict(key=f"qs_{name}_base", model="v2", params=dict(pt)))
            out.append(dict(key=f"qs_{name}_v4", model="v2", params=dict(pt, wall_speed_mm_s=v / 4)))
            out.append(dict(key=f"qs_{name}_dt2", model="v2", params=dict(pt, dt_safety=0.075)))
        return out
    if kind == "sweep2":  # the v2 protocol (servo release to the contact-loss point), v2 only
        return [dict(key=f"v2p_cd{cd:.2f}", model="v2", params=dict(CENTRE, compaction_degree=cd))
                for cd in (0.20, 0.30, 0.40, 0.45, 0.50)]
    if kind == "qs2":  # speed check with every wall speed (compression and release) quartered, data-set settings

        out = []
        for name, pt in QS_POINTS.items():
            base = dict(pt, **V2_PROTOCOL)
            v = base["wall_speed_mm_s"]
            c = dict(V2_CONTACT)
            out.append(dict(key=f"qs2_{name}_base", model="v2", params=base, contact=c))
            out.append(dict(key=f"qs2_{name}_v4", model="v2", contact=c,
                            params=dict(base, wall_speed_mm_s=v / 4, release_speed_mm_s=5.0 / 4)))
            out.append(dict(key=f"qs2_{name}_dt2", model="v2", params=dict(base, dt_safety=0.075), contact=c))
            # chaotic noise of the same run: the stress scale perturbed by 1e-4 (LAMMPS gets its parameters with
            # six digits; the trajectories diverge, the physics does not change); the speed effect is judged
            # against this scatter
            for j in (1, 2):
                cj = dict(c, stress_scale=c.get("stress_scale", 1.0) * (1 + j * 1e-4))
                out.append(dict(key=f"qs2_{name}_base_p{j}", model="v2", params=base, contact=cj))
                out.append(dict(key=f"qs2_{name}_v4_p{j}", model="v2", contact=cj,
                                params=dict(base, wall_speed_mm_s=v / 4, release_speed_mm_s=5.0 / 4)))
        return out
    if kind == "qs3":  # the three points at half the first wall speed (30 mm/s vs 7.5 mm/s), with copies

        out = []
        for name in ("centre", "low", "high"):
            base = {**QS_POINTS[name], **V2_PROTOCOL, "wall_speed_mm_s": 30.0}
            for j in (0, 1, 2):
                cj = dict(V2_CONTACT, stress_scale=V2_CONTACT.get("stress_scale", 1.0) * (1 + j * 1e-4))
                out.append(dict(key=f"qs3_{name}_v30_p{j}", model="v2", params=base, contact=cj))
                out.append(dict(key=f"qs3_{name}_v7.5_p{j}", model="v2", contact=cj,
                                params=dict(base, wall_speed_mm_s=7.5, release_speed_mm_s=1.25)))
            out.append(dict(key=f"qs3_{name}_dt2", model="v2", params=dict(base, dt_safety=0.075),
                            contact=dict(V2_CONTACT)))
        # which speed moves the tortuosity factor: compression at 30 mm/s with the slow release (1.25 mm/s)
        base = {**QS_POINTS["centre"], **V2_PROTOCOL, "wall_speed_mm_s": 30.0, "release_speed_mm_s": 1.25}
        for j in (0, 1):
            cj = dict(V2_CONTACT, stress_scale=V2_CONTACT.get("stress_scale", 1.0) * (1 + j * 1e-4))
            out.append(dict(key=f"qs3_centre_v30r1.25_p{j}", model="v2", params=base, contact=cj))
        return out
    if kind == "qs8":  # the dense in-domain point with the data-set protocol: 30 vs 7.5 mm/s, copies, half step
        out = []
        base = {**QS_POINTS["dense"], **V2_PROTOCOL, "wall_speed_mm_s": 30.0}
        for j in (0, 1, 2):
            cj = dict(V2_CONTACT, stress_scale=V2_CONTACT.get("stress_scale", 1.0) * (1 + j * 1e-4))
            out.append(dict(key=f"qs8_dense_v30_p{j}", model="v2", params=base, contact=cj))
            out.append(dict(key=f"qs8_dense_v7.5_p{j}", model="v2", contact=cj,
                            params=dict(base, wall_speed_mm_s=7.5, release_speed_mm_s=1.25)))
        out.append(dict(key="qs8_dense_dt2", model="v2", params=dict(base, dt_safety=0.075), contact=dict(V2_CONTACT)))
        return out
    if kind == "qs9":  # two-stage compression (30 mm/s to solid fraction 0.8, then 7.5) vs the same schedule at a quarter
        out = []
        for name, copies in (("dense", (0, 1, 2)), ("centre", (0,))):
            base = {**QS_POINTS[name], **V2_PROTOCOL, "wall_speed_mm_s": 30.0, "slow_from_solid_fraction": 0.8,
                    "slow_speed_factor": 0.25}
            for j in copies:
                cj = dict(V2_CONTACT, stress_scale=V2_CONTACT.get("stress_scale", 1.0) * (1 + j * 1e-4))
                out.append(dict(key=f"qs9_{name}_v30_p{j}", model="v2", params=base, contact=cj))
                out.append(dict(key=f"qs9_{name}_v7.5_p{j}", model="v2", contact=cj,
                                params=dict(base, wall_speed_mm_s=7.5, release_speed_mm_s=1.25)))
        return out
    if kind == "qs10":  # which makes the dense point rate-sensitive: its loose hot layer or its dense gap?
        # the dense point's layer (eps0 0.50, 90 degC) pressed less (CD 0.30: gap solid fraction ~0.81), and the
        # centre's layer (eps0 0.46, 62.5 degC) pressed harder (CD 0.42: ~0.91); one speed, 30 vs 7.5 mm/s
        out = []
        for name, pt in (("denselayer_cd30", dict(QS_POINTS["dense"], compaction_degree=0.30)),
                         ("centrelayer_cd42", dict(QS_POINTS["centre"], compaction_degree=0.42))):
            base = {**pt, **V2_PROTOCOL, "wall_speed_mm_s": 30.0}
            out.append(dict(key=f"qs10_{name}_v30_p0", model="v2", params=base, contact=dict(V2_CONTACT)))
            out.append(dict(key=f"qs10_{name}_v7.5_p0", model="v2", contact=dict(V2_CONTACT),
                            params=dict(base, wall_speed_mm_s=7.5, release_speed_mm_s=1.25)))
        return out
    if kind == "ratemap":  # the compression-rate bias over the design: committed 30 mm/s runs again at 7.5 mm/s
        return ratemap_specs()
    if kind == "qs4":  # the servo release waits for the layer at p_end (release_wait_us 20): 30 vs 7.5 mm/s

        out = []
        for name in ("high", "centre", "low"):
            base = {**QS_POINTS[name], **V2_PROTOCOL, "wall_speed_mm_s": 30.0, "release_wait_us": 20.0}
            out.append(dict(key=f"qs4_{name}_v30_p0", model="v2", params=base, contact=dict(V2_CONTACT)))
            out.append(dict(key=f"qs4_{name}_v7.5_p0", model="v2", contact=dict(V2_CONTACT),
                            params=dict(base, wall_speed_mm_s=7.5, release_speed_mm_s=1.25)))
        return out
    if kind == "qs5":  # the high point with a weaker release drag (100 us instead of 30 us): 30 vs 7.5 mm/s

        base = {**QS_POINTS["high"], **V2_PROTOCOL, "wall_speed_mm_s": 30.0, "drag_release_us": 100.0}
        return [dict(key="qs5_high_v30_p0", model="v2", params=base, contact=dict(V2_CONTACT)),
                dict(key="qs5_high_v7.5_p0", model="v2", contact=dict(V2_CONTACT),
                     params=dict(base, wall_speed_mm_s=7.5, release_speed_mm_s=1.25))]
    if kind == "qs6":  # the high point with a weaker release drag still (300 us): 30 vs 7.5 mm/s

        base = {**QS_POINTS["high"], **V2_PROTOCOL, "wall_speed_mm_s": 30.0, "drag_release_us": 300.0}
        return [dict(key="qs6_high_v30_p0", model="v2", params=base, contact=dict(V2_CONTACT)),
                dict(key="qs6_high_v7.5_p0", model="v2", contact=dict(V2_CONTACT),
                     params=dict(base, wall_speed_mm_s=7.5, release_speed_mm_s=1.25))]
    if kind == "qs7":  # the high point: which speed moves it, the compression's or the release's

        base = {**QS_POINTS["high"], **V2_PROTOCOL, "wall_speed_mm_s": 30.0}
        return [dict(key="qs7_high_v30r1.25_p0", model="v2", contact=dict(V2_CONTACT),
                     params=dict(base, release_speed_mm_s=1.25)),
                dict(key="qs7_high_v7.5r5_p0", model="v2", contact=dict(V2_CONTACT),
                     params=dict(base, wall_speed_mm_s=7.5, release_speed_mm_s=5.0))]
    if kind == "tiny":  # the protocol study on the test system (docs/physics.md §7.4); every field explicit
        return json.loads((Path(__file__).with_name("v2_tiny_specs.json")).read_text())
    if kind == "qsrelax":  # the same speed check with relaxation to convergence (0.02 um per 200 us)
        out = []
        for name, pt in QS_POINTS.items():
            v = pt["wall_speed_mm_s"]
            out.append(dict(key=f"qsr_{name}_base", model="v2", params=dict(pt, relax_tol_um=0.02)))
            out.append(dict(key=f"qsr_{name}_v4", model="v2", params=dict(pt, wall_speed_mm_s=v / 4, relax_tol_um=0.02)))
        return out
    raise SystemExit(f"unknown kind {kind}")


def _load(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                out[d["key"]] = d
    return out


RATEMAP_CELLS = {"phi": (0.75, 0.85, 0.92, 1.0), "eps0": (0.40, 0.44, 0.48, 0.53)}


def ratemap_specs(runs_dir: Path = Path("data/dem_v2/runs"), per_cell: int = 2) -> list[dict]:
    """Committed in-domain Sobol runs, stratified by gap solid fraction x initial porosity (per_cell each, the
    roll temperatures spread), plus the loosest layers below phi 0.75; ordered round-robin over the cells so that a
    partial run already covers the design. Each is run again at a quarter of the wall and release speeds."""
    rows = []
    for f in sorted(runs_dir.glob("*.json")):
        d = json.loads(f.read_text())
        if d.get("design") != "sobol" or "error" in d or "porosity" not in d or d.get("in_domain") is False:
            continue
        d["phi"] = float(gap_solid_fraction(d["initial_thickness_um"], d["initial_porosity"],
                                            d["thickness_before_um"], d["compaction_degree"]))
        if d["phi"] <= GAP_SOLID_FRACTION_MAX:
            rows.append(d)
    pb, eb = RATEMAP_CELLS["phi"], RATEMAP_CELLS["eps0"]
    cells: list[list[dict]] = []
    for i in range(len(pb) - 1):
        for j in range(len(eb) - 1):
            cells.append([r for r in rows if pb[i] < r["phi"] <= pb[i + 1] and eb[j] <= r["initial_porosity"] < eb[j + 1]])
    cells.append([r for r in rows if r["phi"] <= pb[0] and r["initial_porosity"] >= eb[-2]])
    picked: list[list[dict]] = []
    for c in cells:
        c = sorted(c, key=lambda r: r["roll_temperature_C"])
        idx = np.linspace(0, len(c) - 1, per_cell).round().astype(int) if len(c) >= per_cell else range(len(c))
        picked.append([c[k] for k in dict.fromkeys(int(i) for i in idx)])
    order = [c[k] for k in range(per_cell) for c in picked if k < len(c)]
    inputs = ("am_fraction", "initial_porosity", "initial_thickness_um", "compaction_degree", "roll_temperature_C")
    out = []
    for r in order:
        params = {**{k: r[k] for k in inputs}, "seed": int(r["seed"]), **V2_PROTOCOL, "wall_speed_mm_s": 7.5,
                  "release_speed_mm_s": 1.25}
        ref = {k: r[k] for k in ("porosity", "tortuosity_factor", "d_eff", "springback_pct", "max_pressure_MPa",
                                 "thickness_after_um", "cpu_s")}
        out.append(dict(key=f"ratemap_{r['run_id']}", model="v2", params=params, contact=dict(V2_CONTACT),
                        run_id=r["run_id"], phi_gap=r["phi"], at_30=ref))
    return out


def ratemap_table(path: Path = Path("bench/results/physics_v2_ratemap.jsonl")) -> str:
    """Markdown: each design point at 30 and 7.5 mm/s, and a least-squares fit of the differences on the standardised
    inputs (gap solid fraction, initial porosity, roll temperature) with its coefficients' standard errors."""
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "error" not in r]
    rows.sort(key=lambda r: r["phi_gap"])
    out = ["| run | φ_gap | ε0 | roll T °C | CD | ε at 30 / 7.5 | Δε | τ at 30 / 7.5 | Δτ | DEM CPU s 30 / 7.5 |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        a, p = r["at_30"], r["params"]
        out.append(f"| {r['run_id']} | {r['phi_gap']:.3f} | {p['initial_porosity']:.3f} | {p['roll_temperature_C']:.0f} | "
                   f"{p['compaction_degree']:.3f} | {a['porosity']:.4f} / {r['porosity']:.4f} | "
                   f"{r['porosity'] - a['porosity']:+.4f} | {a['tortuosity_factor']:.3f} / {r['tortuosity_factor']:.3f} | "
                   f"{r['tortuosity_factor'] - a['tortuosity_factor']:+.3f} | {a['cpu_s']:.0f} / {r['dem_cpu_s']:.0f} |")
    if len(rows) < 5:
        return "\n".join(out)
    de = np.array([r["porosity"] - r["at_30"]["porosity"] for r in rows])
    dt = np.array([r["tortuosity_factor"] - r["at_30"]["tortuosity_factor"] for r in rows])
    X = np.array([[r["phi_gap"], r["params"]["initial_porosity"], r["params"]["roll_temperature_C"]] for r in rows])
    Z = (X - X.mean(0)) / X.std(0)
    A = np.column_stack([np.ones(len(rows)), Z])
    lines = ["", f"n = {len(rows)}: mean Δε {de.mean():+.4f} (sd {de.std(ddof=1):.4f}), |Δε| > 0.003 in "
             f"{int((np.abs(de) > 0.003).sum())}; mean Δτ {dt.mean():+.3f} (sd {dt.std(ddof=1):.3f}), |Δτ| > 0.02 in "
             f"{int((np.abs(dt) > 0.02).sum())}.", "",
             "| fit of Δ on standardised inputs | intercept | φ_gap | ε0 | roll T | residual sd |", "| --- | --- | --- | --- | --- | --- |"]
    for name, y in (("Δε", de), ("Δτ", dt)):
        coef, *_ = np.linalg.lstsq(A, y, rcond=None)
        res = y - A @ coef
        dof = max(1, len(y) - A.shape[1])
        s2 = float(res @ res) / dof
        se = np.sqrt(np.diag(s2 * np.linalg.inv(A.T @ A)))
        lines.append(f"| {name} | " + " | ".join(f"{c:+.4f} ± {e:.4f}" for c, e in zip(coef, se)) + f" | {np.sqrt(s2):.4f} |")
    return "\n".join(out + lines)


def qs_table(path: Path, prefix: str = "qs3", base: str = "v30", slow: str = "v7.5") -> str:
    """Markdown: the speed check (every wall speed quartered) and the time-step check, judged against the chaotic
    scatter of the same run (copies with the stress scale perturbed by 1e-4: ``_p1``, ``_p2``)."""
    r = _load(path)

    def runs(name: str, tag: str) -> list[dict]:
        keys = [f"{prefix}_{name}_{tag}", f"{prefix}_{name}_{tag}_p0", f"{prefix}_{name}_{tag}_p1",
                f"{prefix}_{name}_{tag}_p2"]
        return [r[k] for k in keys if k in r]

    def mean_sd(xs: list[float]) -> str:  # mean ± standard deviation of the copies
        return f"{np.mean(xs):.4f} ± {np.std(xs, ddof=1):.4f}" if len(xs) > 1 else (f"{xs[0]:.4f}" if xs else "–")

    rows = [f"| point | ε at {base} (n) | ε at {slow} (n) | Δε of the means ± 2 s.e. | τ at {base} / {slow} | "
            f"Δτ ± 2 s.e. | spring-back % {base} / {slow} | p_max MPa {base} / {slow} | half step: Δp_max, Δε, Δτ | "
            f"DEM CPU s {base} / {slow} / half step |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in QS_POINTS:
        b, v = runs(name, base), runs(name, slow)
        if not b:
            continue
        be, ve = [d["porosity"] for d in b], [d["porosity"] for d in v]
        bt, vt = [d["tortuosity_factor"] for d in b], [d["tortuosity_factor"] for d in v]
        if len(be) > 1 and len(ve) > 1:
            se = float(np.sqrt(np.var(be, ddof=1) / len(be) + np.var(ve, ddof=1) / len(ve)))
            de = f"{np.mean(ve) - np.mean(be):+.4f} ± {2 * se:.4f}"
        elif ve:
            de = f"{np.mean(ve) - np.mean(be):+.4f} (single runs)"
        else:
            de = "–"
        dt2 = r.get(f"{prefix}_{name}_dt2")
        b0 = b[0]
        half = (f"{100 * (dt2['pmax_MPa'] / b0['pmax_MPa'] - 1):+.1f} %, {dt2['porosity'] - b0['porosity']:+.4f}, "
                f"{dt2['tortuosity_factor'] - b0['tortuosity_factor']:+.3f}") if dt2 else "–"
        tau = f"{mean_sd(bt)} / {mean_sd(vt)}" if vt else f"{mean_sd(bt)} / –"
        if len(bt) > 1 and len(vt) > 1:
            se_t = float(np.sqrt(np.var(bt, ddof=1) / len(bt) + np.var(vt, ddof=1) / len(vt)))
            dtau = f"{np.mean(vt) - np.mean(bt):+.3f} ± {2 * se_t:.3f}"
        else:
            dtau = f"{np.mean(vt) - np.mean(bt):+.3f}" if vt else "–"
        sb = f"{np.mean([d['springback_pct'] for d in b]):.1f} / " + (
            f"{np.mean([d['springback_pct'] for d in v]):.1f}" if v else "–")
        pm = f"{np.mean([d['pmax_MPa'] for d in b]):.0f} / " + (f"{np.mean([d['pmax_MPa'] for d in v]):.0f}" if v else "–")
        cpu = (f"{np.mean([d['dem_cpu_s'] for d in b]):.0f} / "
               + (f"{np.mean([d['dem_cpu_s'] for d in v]):.0f}" if v else "–") + " / "
               + (f"{dt2['dem_cpu_s']:.0f}" if dt2 else "–"))
        rows.append(f"| {name} (CD {b0['params']['compaction_degree']:.2f}) | {mean_sd(be)} ({len(be)}) | "
                    f"{mean_sd(ve)} ({len(ve)}) | {de} | {tau} | {dtau} | {sb} | {pm} | {half} | {cpu} |")
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "table" and argv[1:2] == ["ratemap"]:
        print(ratemap_table())
        return
    if kind == "table":  # python -m surrogates.reference.v2_checks table qs3|qs2
        which = argv[1] if len(argv) > 1 else "qs3"
        tags = {"qs3": ("v30", "v7.5"), "qs2": ("base", "v4"), "qs8": ("v30", "v7.5"), "qs9": ("v30", "v7.5")}[which]
        print(qs_table(Path(f"bench/results/physics_v2_{which}.jsonl"), which, *tags))
        return
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path(f"bench/results/physics_v2_{kind}.jsonl")
    only = argv[argv.index("--only") + 1].split(",") if "--only" in argv else None
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {json.loads(x)["key"] for x in out.read_text().splitlines() if x.strip()}
    for s in specs(kind):
        if s["key"] in done or (only and s["key"] not in only):
            continue
        try:
            res = one(s["model"], s["params"], s.get("contact"))
        except Exception as e:  # noqa: BLE001 - record the failure, keep going
            res = {"error": repr(e)}
        line = json.dumps({**s, **res}, default=float)
        with out.open("a") as f:
            f.write(line + "\n")
        print(line[:300], flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
