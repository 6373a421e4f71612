"""The optimizer: a vectorised grid search over the manipulable setpoints on the surrogate ensemble, with
the line's correction (measured anchor, sensitivity gain) applied (docs/feedback.md, step 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from surrogates.runtime import SurrogateModel
from twin.feedback.config import FeedbackConfig
from twin.ports import Predictions


@dataclass
class Candidates:
    setpoints: np.ndarray  # [n, n_manipulables]
    raw_mean: np.ndarray  # [n, n_outputs] (thickness scaled to the line)
    raw_std: np.ndarray  # predictive sd (ensemble spread + calibrated DEM scatter)
    raw_spread: np.ndarray  # ensemble disagreement alone
    ood: np.ndarray


@dataclass
class Correction:
    """What the line says about the model (per output): the measured value the prediction is anchored
    to, its standard error, the sensitivity gain and the gain's relative uncertainty."""

    measured: dict[str, float]
    se: dict[str, float]
    gain: dict[str, float]
    gain_sd_rel: dict[str, float]


@dataclass
class OptimResult:
    best: np.ndarray  # setpoints
    cost_best: float
    cost_now: float
    corrected: dict[str, dict[str, Any]]  # output -> mean, std, target, tolerance, unit
    corrected_now: dict[str, dict[str, Any]]
    raw_best: dict[str, float]
    raw_now: dict[str, float]
    clipped: list[str | None]  # per manipulable: None or a note
    evaluated: int


class Optimizer:
    """Vectorised search over the ensemble, with the line correction applied."""

    def __init__(self, cfg: FeedbackConfig, predictor: Predictions, limits: list[tuple[float, float]]) -> None:
        self.cfg = cfg
        self.predictor = predictor
        self.limits = limits

    @property
    def model(self) -> SurrogateModel:
        m = self.predictor.model
        if m is None:
            raise RuntimeError("no surrogate model is loaded")
        return m

    def model_rows(self, values: dict[str, float], sp_now: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Model input rows for candidate setpoints: a gap setpoint moves the actual gap by the same amount
        (the roll displacement at the new load is a second-order effect the gain absorbs); a roll
        temperature setpoint is the steady-state roll temperature."""
        p = self.predictor
        model = self.model
        base = p.model_inputs(values)
        names = list(model.input_names)
        x = np.tile(np.array([base[n] for n in names], dtype=np.float64), (len(cand), 1))
        h0 = values["dry_thickness"]
        for j, m in enumerate(self.cfg.manipulables):
            if m.name == "gap":
                gap = values["gap"] + (cand[:, j] - sp_now[j]) - p.foil_thickness_um
                x[:, names.index("compaction_degree")] = 1.0 - gap / h0
            elif m.name == "roll_temperature":
                x[:, names.index("roll_temperature_C")] = cand[:, j]
        return x.astype(np.float32)

    def evaluate(self, values: dict[str, float], sp_now: np.ndarray, cand: np.ndarray) -> Candidates:
        model = self.model
        res = model.predict(self.model_rows(values, sp_now, cand), reasons=False)
        mean = np.asarray(res.mean, dtype=np.float64).copy()
        std = np.asarray(res.std, dtype=np.float64).copy()
        spread = np.asarray(res.spread, dtype=np.float64).copy()
        names = list(model.output_names)
        if "thickness_after_um" in names:
            k = names.index("thickness_after_um")
            scale = values["dry_thickness"] / self.predictor.rve_thickness()
            for a in (mean, std, spread):
                a[:, k] *= scale
        self.predictor.outputs_to_line(names, mean, std, spread)
        return Candidates(cand, mean, std, spread, np.asarray(res.ood, dtype=bool))

    def cost(self, c: Candidates, cr: Correction, raw_now: np.ndarray, spread_now: np.ndarray,
             sp_now: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Corrected prediction y(u) = y_measured + gain (f(u) - f(u_now)) and its sd: the standard error of
        the measured anchor, the gain's uncertainty times the predicted change, and the growth of the
        ensemble's disagreement away from the anchored point (the DEM scatter in the absolute sd is the
        same at u and u_now and cancels in a change)."""
        names = list(self.model.output_names)
        total = np.zeros(len(c.setpoints))
        corr: dict[str, np.ndarray] = {}
        sd: dict[str, np.ndarray] = {}
        for out, t in self.cfg.targets.items():
            if out not in names or out not in cr.measured:
                continue
            k = names.index(out)
            g = cr.gain.get(out, self.cfg.gain_init)
            df = c.raw_mean[:, k] - raw_now[k]
            y = cr.measured[out] + g * df
            s = np.sqrt(cr.se.get(out, 0.0) ** 2 + (cr.gain_sd_rel.get(out, 0.5) * g * df) ** 2
                        + (g * np.maximum(c.raw_spread[:, k] - spread_now[k], 0.0)) ** 2)
            corr[out], sd[out] = y, s
            if t.weight > 0:
                total += t.weight * (((y - t.target) / t.tolerance) ** 2
                                     + self.cfg.uncertainty_weight * (s / t.tolerance) ** 2)
        for j, m in enumerate(self.cfg.manipulables):
            total += m.change_cost * ((c.setpoints[:, j] - sp_now[j]) / m.max_step) ** 2
        total[c.ood] = np.inf
        return total, corr, sd

    def _grid(self, lo: np.ndarray, hi: np.ndarray, n: list[int]) -> np.ndarray:
        axes = [np.linspace(a, b, k) if b > a else np.array([a]) for a, b, k in zip(lo, hi, n)]
        mesh = np.meshgrid(*axes, indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=1)

    def run(self, values: dict[str, float], sp_now: np.ndarray, cr: Correction) -> OptimResult:
        ms = self.cfg.manipulables
        lim_lo = np.array([lo for lo, _ in self.limits])
        lim_hi = np.array([hi for _, hi in self.limits])
        step = np.array([m.max_step for m in ms])
        win_lo = np.maximum(lim_lo, sp_now - step)
        win_hi = np.minimum(lim_hi, sp_now + step)
        # per axis: the configured grid for one manipulable; at most 21 points each for several (a 2-D search
        # with 21 x 21 coarse points and a 21 x 21 refinement resolves a 5-um step to 0.025 um)
        n_axis = [m.grid if len(ms) == 1 else min(m.grid, 21) for m in ms]
        coarse = self._grid(win_lo, win_hi, n_axis)
        wide = self._grid(lim_lo, lim_hi, n_axis)
        now = sp_now[None, :]
        allc = np.concatenate([now, coarse, wide])
        c = self.evaluate(values, sp_now, allc)
        raw_now, spread_now = c.raw_mean[0], c.raw_spread[0]
        cost, _, _ = self.cost(c, cr, raw_now, spread_now, sp_now)
        cost_now = float(cost[0])
        n_coarse = len(coarse)
        i_best = int(np.argmin(cost[1:1 + n_coarse])) + 1
        # local refinement: a finer grid around the best coarse point (one coarse spacing each side)
        spacing = (win_hi - win_lo) / np.maximum(np.array(n_axis) - 1, 1)
        f_lo = np.maximum(win_lo, allc[i_best] - spacing)
        f_hi = np.minimum(win_hi, allc[i_best] + spacing)
        fine = self._grid(f_lo, f_hi, [21] * len(ms))
        cf = self.evaluate(values, sp_now, fine)
        cost_f, _, _ = self.cost(cf, cr, raw_now, spread_now, sp_now)
        j = int(np.argmin(cost_f))
        if cost_f[j] <= cost[i_best]:
            best, cost_best = fine[j], float(cost_f[j])
        else:
            best, cost_best = allc[i_best], float(cost[i_best])
        # clipping: is the best point over the machine limits outside the step window, or on a limit?
        i_wide = int(np.argmin(cost[1 + n_coarse:])) + 1 + n_coarse
        clipped: list[str | None] = []
        for k, m in enumerate(ms):
            note = None
            w = allc[i_wide, k]
            if np.isfinite(cost[i_wide]) and cost[i_wide] < cost_best - 1e-9 and (w > win_hi[k] + 1e-9
                                                                                  or w < win_lo[k] - 1e-9):
                note = (f"clipped to the maximum step of {m.max_step:g} per proposal (the optimum over the machine "
                        f"limits is near {w:.4g}); a further step will be proposed after the line settles")
            if abs(best[k] - lim_lo[k]) < 1e-9 and sp_now[k] - step[k] < lim_lo[k]:
                note = f"clipped at the machine limit {lim_lo[k]:g}"
            elif abs(best[k] - lim_hi[k]) < 1e-9 and sp_now[k] + step[k] > lim_hi[k]:
                note = f"clipped at the machine limit {lim_hi[k]:g}"
            clipped.append(note)
        both = self.evaluate(values, sp_now, np.stack([sp_now, best]))
        _, corr, sd = self.cost(both, cr, raw_now, spread_now, sp_now)
        names = list(self.model.output_names)

        def pack(i: int) -> dict[str, dict[str, Any]]:
            out = {}
            for o in corr:
                t = self.cfg.targets[o]
                out[o] = {"mean": float(corr[o][i]), "std": float(sd[o][i]), "target": t.target,
                          "tolerance": t.tolerance, "unit": t.unit}
            return out

        return OptimResult(best, cost_best, cost_now, pack(1), pack(0),
                           {n: float(both.raw_mean[1, k]) for k, n in enumerate(names)},
                           {n: float(both.raw_mean[0, k]) for k, n in enumerate(names)}, clipped,
                           len(allc) + len(fine) + 2)
