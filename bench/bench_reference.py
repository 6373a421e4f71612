"""Benchmark of the physics reference: one DEM calendering run and one voxel-metrics evaluation
at 76 x 76 x 125 voxels (0.4 um) — the denominator of the surrogate speed-up.

    python bench/bench_reference.py [--repeats 3] [--out bench/results/reference.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dem-repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reference.json")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from surrogates.reference.dem import DEMParams, run_calendering
    from surrogates.reference.voxel import metrics, voxelize

    params = DEMParams(am_fraction=0.96, initial_porosity=0.48, initial_thickness_um=48.0, compaction_degree=0.35,
                       wall_speed_mm_s=50.0, roll_temperature_C=60.0, seed=1)
    dem_times, res = [], None
    for _ in range(args.dem_repeats):
        t0 = time.perf_counter()
        res = run_calendering(params)
        dem_times.append(time.perf_counter() - t0)
    vox_times, met_times, m = [], [], None
    nz = 125
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        img = voxelize(res.frames[-1], res.radius, res.ptype, res.box_um, nz=nz, thickness=res.thickness_after_um)
        t1 = time.perf_counter()
        m = metrics(img, thickness=res.thickness_after_um)
        t2 = time.perf_counter()
        vox_times.append(t1 - t0)
        met_times.append(t2 - t1)
    from bench.common import lammps_version, machine, versions

    out = {
        "benchmark": "physics reference (surrogates/reference)",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "threads": 1, "note": "2 shared cores; other jobs were running"},
        "versions": versions("torch", "taufactor", "numpy", lammps=lammps_version()),
        "dem_run": {
            "params": {k: getattr(params, k) for k in ("am_fraction", "initial_porosity", "initial_thickness_um",
                                                       "compaction_degree", "wall_speed_mm_s", "roll_temperature_C")},
            "particles": res.n_am + res.n_cbd, "n_am": res.n_am, "n_cbd": res.n_cbd,
            "steps": res.n_steps, "dt_us": res.dt_us, "frames": int(res.frames.shape[0]),
            "wall_s": dem_times, "wall_s_median": statistics.median(dem_times),
        },
        "voxel_metrics_76x76x125": {
            "shape": list(img.shape),
            "voxelize_s": vox_times, "voxelize_s_median": statistics.median(vox_times),
            "metrics_s": met_times, "metrics_s_median": statistics.median(met_times),
            "includes": "porosity, 2 taufactor solves (pore diffusion, solid conduction), 3 contact areas",
            "porosity": m.porosity, "tortuosity_factor": m.tortuosity_factor,
        },
        "per_data_set_run_s": "DEM + voxel metrics before/max/after; see data/dem/datasheet.md",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps({"dem_wall_s_median": out["dem_run"]["wall_s_median"],
                      "voxelize_s_median": out["voxel_metrics_76x76x125"]["voxelize_s_median"],
                      "metrics_s_median": out["voxel_metrics_76x76x125"]["metrics_s_median"]}, indent=1))
    _ = np


if __name__ == "__main__":
    main()
