"""Cost of the cell consequence of a setting (issue #18: "the PyBaMM evaluation runs in ≤ 2 s per setting on one
core"): PyBaMM DFN (Chen2020) discharges at two C-rates of a calendered cathode, surrogates/cell.py.

    .venv/bin/python -m bench.bench_cell [--settings 12]

Two cases, in one run: every setting at a new cathode thickness (the model is discretised again: the worst case,
and what a proposal that changes the gap costs the first time) and settings at a thickness already in the cache
(porosity and transport change, the mesh does not). CPU seconds per setting (process_time; PyBaMM's solver runs
in this thread) and wall seconds. Writes bench/results/cell.json with the commit and the PyBaMM version.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", type=int, default=12)
    a = ap.parse_args()
    import pybamm

    from bench.common import percentile, versions, write_result
    from ontology.definitions import LINE_RECIPE as R
    from surrogates.cell import CathodeState, CellModel

    t = time.process_time()
    model = CellModel()
    model.evaluate(CathodeState.from_tortuosity(0.36, R.macro_from_total(0.36), 2.6, R.thickness_um(20.0, 0.36), 20.0))
    first = time.process_time() - t  # import, parameter set, the first discretisation
    loading = 20.0
    rows = {"new_thickness": [], "cached_thickness": []}
    for case in rows:
        for i in range(a.settings):
            eps = 0.42 - 0.14 * i / max(a.settings - 1, 1)
            if case == "cached_thickness":  # same thickness as the last new one, other structure
                h = R.thickness_um(loading, 0.28)
                tau = 2.2 + 1.5 * i / max(a.settings - 1, 1)
                s = CathodeState(0.28 + 1e-9, (R.macro_from_total(0.28)) / tau, h)
            else:
                s = CathodeState.from_tortuosity(eps, R.macro_from_total(eps), 2.2 + 8.0 * (0.42 - eps),
                                                 R.thickness_um(loading, eps), loading)
            c0, w0 = time.process_time(), time.perf_counter()
            r = model.evaluate(s)
            rows[case].append({"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0,
                               "porosity": s.porosity, "thickness_um": s.thickness_um,
                               "capacity_mAh_cm2": [d.capacity_mAh_cm2 for d in r.discharges]})
    summary = {}
    for case, rs in rows.items():
        cpu = [x["cpu_s"] for x in rs]
        summary[case] = {"n": len(rs), "cpu_s_p50": percentile(cpu, 50), "cpu_s_max": max(cpu),
                         "wall_s_p50": percentile([x["wall_s"] for x in rs], 50)}
    write_result("cell", {"command": "python -m bench.bench_cell --settings %d" % a.settings,
                          "parameter_set": "Chen2020",
                          "c_rates": list(model.c_rates), "first_call_cpu_s": first, "summary": summary,
                          "goal": "<= 2 s per setting on one core (issue #18)", "runs": rows},
                 versions("pybamm", "pybammsolvers", "casadi", "numpy", pybamm_module=pybamm.__version__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
