"""Run the closed-loop scenario test (simulated line over OPC-UA, loading +8 %, auto-apply) and plot it.

    .venv/bin/python -m bench.feedback_scenario

Runs ``tests/feedback/test_feedback_opcua.py::test_closed_loop_brings_porosity_back_after_a_loading_disturbance``
with PILOTLINE_FEEDBACK_REPORT set, so the figures come from the same run the test asserts on; writes
bench/results/feedback_scenario.json and docs/img/feedback_closed_loop.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import write_result

ROOT = Path(__file__).resolve().parents[1]
TEST = ("tests/feedback/test_feedback_opcua.py::"
        "test_closed_loop_brings_porosity_back_after_a_loading_disturbance")


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        rep = Path(d) / "report.json"
        env = dict(os.environ, PILOTLINE_FEEDBACK_REPORT=str(rep))
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST], cwd=ROOT, env=env)
        data = json.loads(rep.read_text())
    report = data["report"]
    report["test_passed"] = rc == 0
    write_result("feedback_scenario", report)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tr = np.array(data["trace"])
    ol = np.array(data["open_loop"])
    t, tol = report["target"] * 100, report["tolerance"] * 100
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    a1.plot(ol[:, 0], ol[:, 1], color="0.6", lw=0.8, label="open loop (no feedback)")
    a1.plot(tr[:, 0], tr[:, 1], color="C0", lw=0.9, label="closed loop (twin, auto-apply)")
    a1.axhspan(t - tol, t + tol, color="C2", alpha=0.15, label="target ± tolerance")
    a1.axvspan(60, 660, color="C3", alpha=0.06, label="loading ramp +8 %")
    a1.set_ylabel("online porosity [%]")
    a1.legend(loc="lower left", fontsize=8)
    a2.step(tr[:, 0], tr[:, 2], where="post", color="C1")
    for t_app, _, _ in report["applied_at_line_s"]:
        a2.axvline(t_app, color="C1", ls=":", lw=0.8)
    a2.set_ylabel("gap setpoint [µm]")
    a2.set_xlabel("line time [s]")
    fig.suptitle("Closed loop on the simulated line over OPC-UA (dotted: applied proposals)", fontsize=10)
    fig.tight_layout()
    out = ROOT / "docs" / "img" / "feedback_closed_loop.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
