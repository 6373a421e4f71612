"""Generate the synthetic recorded calendering run shipped in data/recorded/ (labelled synthetic).

    python data/generate_recorded_run.py --hours 3 --seed 7 --out data/recorded/calendering_run_01.csv.gz

Physics (seed 003, section 3.1), per second of line time:
- incoming dried coating: areal loading M (mg/cm^2) and dry thickness h0 (um) with slow drift and
  gauge noise; solid (skeletal) density of the composite RHO_S = 4.4 g/cm^3 (NMC 96 wt% + CBD);
  initial porosity eps0 = 1 - M / (RHO_S * h0);
- gap-controlled calender: the actual gap follows its setpoint (first order, TAU_GAP); in the nip
  the coating is compressed to the gap, porosity eps_nip = 1 - M / (RHO_S * gap);
- Meyer's law eps = eps0 * (p + (1 - p) * exp(-qL / gammaC)), gammaC = (mu0 - xi * T_R) * M,
  inverted for the line load qL (N/mm) the rolls must apply to reach eps_nip;
- spring-back after the nip grows with line load and falls with loading:
  h1 = gap * (1 + SB0 + SB1 * (qL / 1000) * (M_REF / M)); online porosity eps1 = 1 - M / (RHO_S h1);
- the thickness gauge sits GAUGE_DISTANCE_M downstream: it sees the web that left the nip
  distance / speed seconds earlier (transport lag);
- roll changes every ROLL_LENGTH_M of web; web position integrates the roll speed.
Scripted events: gap setpoint changes, a roll-temperature step, a speed change, a loading drift.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

RHO_S = 4.4  # g/cm^3
P_COMPACTION = 0.45  # Meyer's compaction factor p: eps_min = p * eps0
MU0 = 52.0  # N/mm per (mg/cm^2) at 0 degC
XI = 0.20  # N/mm per (mg/cm^2) per degC
SB0, SB1, M_REF = 0.015, 0.03, 20.0
TAU_GAP_S, TAU_TEMP_S = 8.0, 120.0
GAUGE_DISTANCE_M = 3.0
ROLL_LENGTH_M = 400.0

COLUMNS = ["timestamp", "roll_id", "web_position_m", "coating_dry_thickness_um", "coating_areal_loading_mg_cm2",
           "calender_gap_setpoint_um", "calender_gap_actual_um", "calender_line_load_N_mm",
           "calender_roll_speed_m_min", "calender_roll_temperature_C", "calender_thickness_after_um",
           "calender_porosity_online_pct"]


def meyer_line_load(eps_target: float, eps0: float, loading: float, t_roll: float) -> float:
    gamma = (MU0 - XI * t_roll) * loading
    ratio = (eps_target / eps0 - P_COMPACTION) / (1 - P_COMPACTION)
    ratio = min(max(ratio, 1e-4), 1.0)
    return -gamma * math.log(ratio)


def schedule(t: float) -> tuple[float, float, float]:
    """Setpoints (gap um, roll temperature degC, speed m/min) at time t seconds."""
    gap = 69.0 if t < 2400 else 67.0 if t < 6000 else 68.0
    temp = 60.0 if t < 4200 else 80.0
    speed = 5.0 if t < 7800 else 7.0
    return gap, temp, speed


def generate(hours: float, seed: int, start: datetime) -> list[list[object]]:
    rng = np.random.default_rng(seed)
    n = int(hours * 3600)
    gap_act, temp_act = 69.0, 60.0
    web = 0.0
    roll_no = 1
    roll_start = 0.0
    history: list[tuple[float, float]] = []  # (web position at nip, relaxed thickness)
    rows = []
    drift = 0.0
    for i in range(n):
        t = float(i)
        gap_sp, temp_sp, speed = schedule(t)
        gap_act += (gap_sp - gap_act) * (1 - math.exp(-1 / TAU_GAP_S))
        temp_act += (temp_sp - temp_act) * (1 - math.exp(-1 / TAU_TEMP_S))
        drift += rng.normal(0, 0.004)
        drift *= 0.9995
        ramp = 0.06 * min(max((t - 8400) / 1800, 0), 1)  # +6 % loading drift late in the run
        loading = 22.0 * (1 + ramp) + drift
        h0 = loading / (RHO_S * (1 - 0.445)) * 10 + rng.normal(0, 0.3)  # um; eps0 ~ 0.445
        eps0 = 1 - loading / (RHO_S * h0 * 1e-1)
        eps_nip = 1 - loading / (RHO_S * gap_act * 1e-1)
        q_l = meyer_line_load(eps_nip, eps0, loading, temp_act)
        h1 = gap_act * (1 + SB0 + SB1 * (q_l / 1000) * (M_REF / loading))
        web += speed / 60.0
        history.append((web, h1))
        if web - roll_start >= ROLL_LENGTH_M:
            roll_no += 1
            roll_start = web
        # gauge: thickness of the web that left the nip GAUGE_DISTANCE_M ago
        target = web - GAUGE_DISTANCE_M
        h_gauge = None
        for w, h in reversed(history[-600:]):
            if w <= target:
                h_gauge = h
                break
        ts = start + timedelta(seconds=t)
        row: list[object] = [ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"), f"R-{roll_no:04d}",
                             round(web - roll_start, 3), round(h0 + rng.normal(0, 0.4), 2),
                             round(loading + rng.normal(0, 0.15), 3), round(gap_sp, 2),
                             round(gap_act + rng.normal(0, 0.1), 2), round(q_l * (1 + rng.normal(0, 0.01)), 1),
                             round(speed + rng.normal(0, 0.01), 3), round(temp_act + rng.normal(0, 0.2), 2)]
        if h_gauge is None:
            row += ["", ""]
        else:
            h_meas = h_gauge + rng.normal(0, 0.4)
            eps_meas = 1 - loading / (RHO_S * h_meas * 1e-1)
            row += [round(h_meas, 2), round(100 * eps_meas, 2)]
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--start", default="2026-11-02T06:00:00+00:00")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "recorded" / "calendering_run_01.csv.gz")
    a = ap.parse_args()
    rows = generate(a.hours, a.seed, datetime.fromisoformat(a.start).astimezone(UTC))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if a.out.suffix == ".gz" else open
    with opener(a.out, "wt", newline="") as fh:  # type: ignore[operator]
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {a.out}")


if __name__ == "__main__":
    main()
