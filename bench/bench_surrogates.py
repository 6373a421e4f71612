"""Benchmark of the surrogate runtime: the committed calendering ensemble on onnxruntime (1 intra-op thread,
no spinning, as in the daemon), batch 1 latency p50/p99, batch 10,000, and the speed-up against the physics
reference (one DEM calendering run + the voxel metrics of the released structure, bench/results/reference.json).

    .venv/bin/python -m bench.bench_surrogates [--repeats 2000] [--batch 10000]

Goals (issue #6): batch 1 p99 <= 1 ms, batch 10,000 <= 20 ms, speed-up >= 1e5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, percentile, versions, write_result  # noqa: E402


def v2_reference_run() -> tuple[float, float]:
    """Wall seconds of one v2 DEM run (the data set's protocol and contact law) at the design centre and of the
    voxel metrics of its released frame."""
    from surrogates.reference.dataset import V2_CONTACT, V2_PROTOCOL
    from surrogates.reference.dem_v2 import ContactV2, DEMParamsV2, run_calendering_v2
    from surrogates.reference.voxel import VOXEL_UM, metrics, voxelize

    p = DEMParamsV2(am_fraction=0.945, initial_porosity=0.46, initial_thickness_um=48.0, compaction_degree=0.35,
                    roll_temperature_C=62.5, seed=3000, **V2_PROTOCOL, contact=ContactV2(**V2_CONTACT))
    t0 = time.perf_counter()
    res = run_calendering_v2(p)
    dem_s = time.perf_counter() - t0
    nz = int(-(-(res.thickness_before_um + 3.0) // VOXEL_UM))
    t0 = time.perf_counter()
    img = voxelize(res.frames[-1].astype("float64"), res.radius, res.ptype, res.box_um, nz=nz,
                   thickness=res.thickness_after_um)
    metrics(img, thickness=res.thickness_after_um)
    return dem_s, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5000, help="batch-1 calls timed")
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--batch-repeats", type=int, default=50)
    ap.add_argument("--models", type=Path, default=ROOT / "surrogates" / "models")
    ap.add_argument("--family", default="calendering")
    args = ap.parse_args()

    import numpy as np

    from surrogates.runtime import ModelRegistry

    t0 = time.perf_counter()
    model = ModelRegistry(args.models).latest(args.family)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    lo = np.array([model.domain[k][0] for k in model.input_names])
    hi = np.array([model.domain[k][1] for k in model.input_names])
    xs = (lo + rng.random((args.batch, len(lo))) * (hi - lo)).astype(np.float32)

    def timed(fn, x, n):
        for _ in range(min(50, n)):
            fn(x)  # warm-up
        out = []
        for i in range(n):
            t = time.perf_counter()
            fn(x if len(x) > 1 else xs[i % len(xs)][None])
            out.append(time.perf_counter() - t)
        return out

    # batch 1: the full runtime call (graph + out-of-domain check) and the graph alone
    b1 = timed(model.predict, xs[:1], args.repeats)
    b1_graph = timed(model.run, xs[:1], args.repeats)
    big = timed(model.predict, xs, args.batch_repeats)
    big_graph = timed(model.run, xs, args.batch_repeats)

    def ms(v):
        return v * 1e3

    if "wall_speed_mm_s" in model.input_names:  # a v1 model: the v1 reference's benchmark (bench_reference.py)
        ref_path = RESULTS / "reference.json"
        ref = json.loads(ref_path.read_text())
        dem_s = float(ref["dem_run"]["wall_s_median"])
        metrics_s = float(ref["voxel_metrics_76x76x125"]["metrics_s_median"])
        ref_note = "bench/results/reference.json: one v1 DEM run (median) + voxel metrics of one frame"
    else:  # a v2 model: one run of its own reference, in this benchmark run (the data set's protocol)
        dem_s, metrics_s = v2_reference_run()
        ref_note = ("one v2 DEM run at the design centre (CD 0.35, data-set protocol) + voxel metrics of the released "
                    "frame, measured in this benchmark run")
    per_run_s = dem_s + metrics_s  # one structure prediction by the physics: DEM run + metrics of the result
    p50_1 = statistics.median(b1)
    per_row_big = statistics.median(big) / args.batch
    res = {
        "model": {"family": model.family, "version": model.version, "members": model.card["training"]["config"]["members"],
                  "inputs": len(model.input_names), "outputs": len(model.output_names),
                  "onnx_bytes": os.path.getsize(model.path / "model.onnx"), "load_s": load_s},
        "runtime": {"onnxruntime_threads": {"intra_op": 1, "inter_op": 1}, "allow_spinning": "0",
                    "load_avg_1min": os.getloadavg()[0],
                    "note": "2 shared cores; other jobs may run: figures are upper bounds"},
        "batch1": {"repeats": args.repeats, "min_ms": ms(min(b1)), "p50_ms": ms(p50_1), "p99_ms": ms(percentile(b1, 99)),
                   "max_ms": ms(max(b1)), "share_over_1ms": sum(t > 1e-3 for t in b1) / len(b1),
                   "p90_ms": ms(percentile(b1, 90)), "graph_only_p50_ms": ms(statistics.median(b1_graph)),
                   "graph_only_p99_ms": ms(percentile(b1_graph, 99)), "goal_p99_ms": 1.0,
                   "graph_only_share_over_1ms": sum(t > 1e-3 for t in b1_graph) / len(b1_graph),
                   "meets_goal": ms(percentile(b1, 99)) <= 1.0},
        f"batch{args.batch}": {"repeats": args.batch_repeats, "min_ms": ms(min(big)), "p50_ms": ms(statistics.median(big)),
                               "p99_ms": ms(percentile(big, 99)), "graph_only_p50_ms": ms(statistics.median(big_graph)),
                               "per_row_us": per_row_big * 1e6, "goal_ms": 20.0,
                               "meets_goal": ms(statistics.median(big)) <= 20.0},
        "speedup": {"reference": ref_note,
                    "dem_run_s": dem_s, "metrics_s": metrics_s, "physics_per_run_s": per_run_s,
                    "vs_batch1_p50": per_run_s / p50_1, "vs_batch_per_row": per_run_s / per_row_big,
                    "goal": 1e5 if "wall_speed_mm_s" in model.input_names else 1e6,
                    "meets_goal": per_run_s / p50_1 >= (1e5 if "wall_speed_mm_s" in model.input_names else 1e6)},
    }
    write_result("surrogates", res, versions("onnxruntime", "numpy"))


if __name__ == "__main__":
    main()
