"""Proposal latency of the feedback optimizer: one full search (coarse grid over the step window and the
machine limits, fine grid around the best point, corrected predictions of the chosen point) on the
committed ONNX ensemble, for 1 manipulable (gap) and 2 (gap + roll temperature).

    .venv/bin/python -m bench.bench_feedback [--repeats 300]

Writes bench/results/feedback.json. Goal (issue #7): p99 <= 50 ms per proposal.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import percentile, versions, write_result
from twin.feedback import Correction, FeedbackConfig, ManipulableSpec, Optimizer
from twin.predictor import Predictor, PredictorConfig

LINE = {"dry_thickness": 101.0, "areal_loading": 22.8, "gap": 89.5, "roll_speed": 6.0, "roll_temperature": 50.0}


def run(repeats: int) -> dict:
    pred = Predictor(PredictorConfig(enabled=True))
    pred.load()
    cases = {
        "gap": ([ManipulableSpec(name="gap", setpoint_tag="calendering.gap_setpoint", max_step=5.0)],
                [(40.0, 200.0)], np.array([85.0])),
        "gap+roll_temperature": (
            [ManipulableSpec(name="gap", setpoint_tag="calendering.gap_setpoint", max_step=5.0),
             ManipulableSpec(name="roll_temperature", setpoint_tag="calendering.roll_temperature_setpoint",
                             max_step=10.0)],
            [(40.0, 200.0), (25.0, 100.0)], np.array([85.0, 50.0])),
    }
    out = {}
    for name, (ms, limits, sp) in cases.items():
        cfg = FeedbackConfig(enabled=True, manipulables=ms)
        opt = Optimizer(cfg, pred, limits)
        cr = Correction({"porosity": 0.293}, {"porosity": 0.0015}, {"porosity": 2.0}, {"porosity": 0.25})
        for _ in range(10):  # warm-up
            opt.run(LINE, sp, cr)
        lat = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = opt.run(LINE, sp, cr)
            lat.append((time.perf_counter() - t0) * 1e3)
        out[name] = {"candidates_per_proposal": res.evaluated, "p50_ms": round(percentile(lat, 50), 3),
                     "p99_ms": round(percentile(lat, 99), 3), "max_ms": round(max(lat), 3), "repeats": repeats,
                     "best": [round(float(v), 3) for v in res.best]}
    return {"model_version": str(pred.model.version), "goal_p99_ms": 50.0, "cases": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=300)
    a = ap.parse_args()
    write_result("feedback", run(a.repeats), versions("onnxruntime", "numpy"))


if __name__ == "__main__":
    main()
