"""Candidate models refitted on lab results: a residual (offset + spread) correction of an ONNX ensemble.

The line tells the twin what the simulations cannot: a systematic offset (another active material, a
stiffer calender) and a spread the ensemble does not know of. :func:`fit_residual` estimates, per compared
output, the mean of (lab - prediction) over the lab results the active model predicted, and the factor that
makes the remaining residuals' z-scores have unit RMS (so that +/-2 sigma covers what it says).
:func:`write_candidate` writes it as a model version of its own, ``<dir>/<family>/<version>/`` with the
base ensemble's ``model.onnx`` (copied), a ``card.json`` (``kind = "residual_offset"``, the base version,
the correction, the lab results it was fitted on and the fit metrics) and a ``card.md``.
:class:`ResidualModel` loads such a folder: the base graph on onnxruntime, then the correction. It is an
honest, small model: a constant offset per output at every operating point, not a new physics fit.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from surrogates.runtime import CARD_FILE, MODEL_FILE, PredictionBatch, SurrogateModel

KIND = "residual_offset"


class ResidualModel(SurrogateModel):
    """A base ensemble plus the card's ``correction``: mean + offset, std * sigma_scale (model units)."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path)
        corr = self.card.get("correction", {})
        n = len(self.output_names)
        self._offset = np.zeros(n, dtype=np.float32)
        self._scale = np.ones(n, dtype=np.float32)
        for i, name in enumerate(self.output_names):
            c = corr.get(name)
            if c:
                self._offset[i] = float(c["offset"])
                self._scale[i] = float(c["sigma_scale"])

    def predict(self, x: np.ndarray, *, reasons: bool = True) -> PredictionBatch:
        b = super().predict(x, reasons=reasons)
        return PredictionBatch(b.mean + self._offset, b.std * self._scale, b.spread, b.ood, b.ood_reasons)


def load_model(path: Path | str) -> SurrogateModel:
    """A model folder: a residual candidate or a plain ensemble, by its card's ``kind``."""
    card = json.loads((Path(path) / CARD_FILE).read_text())
    return ResidualModel(path) if card.get("kind") == KIND else SurrogateModel(path)


def fit_residual(pairs: dict[str, list[tuple[int, float, float, float]]], to_model: dict[str, float],
                 min_n: int) -> dict[str, dict[str, Any]]:
    """``pairs``: output -> [(lab id, lab value, predicted mean, predicted sigma)] in line units of the model
    output; ``to_model``: output -> d(model unit)/d(line unit) (1 but for a macro-porosity model's porosity).
    Returns output -> {offset (model units), offset_line, sigma_scale, n, mae_before, mae_after_in_sample}."""
    out: dict[str, dict[str, Any]] = {}
    for name, rows in pairs.items():
        rows = [r for r in rows if math.isfinite(r[1]) and math.isfinite(r[2]) and r[3] > 0]
        if len(rows) < min_n:
            continue
        lab = np.array([r[1] for r in rows])
        pred = np.array([r[2] for r in rows])
        sd = np.array([r[3] for r in rows])
        resid = lab - pred
        offset = float(np.mean(resid))
        z = (resid - offset) / sd
        # n / (n - 1): the offset was estimated from the same residuals
        scale = float(np.sqrt(np.mean(z ** 2) * len(z) / max(1, len(z) - 1)))
        scale = min(max(scale, 0.5), 20.0)
        out[name] = {"offset": offset * to_model.get(name, 1.0), "offset_line": offset, "sigma_scale": scale,
                     "n": len(rows), "lab_ids": sorted(int(r[0]) for r in rows),
                     "mae_before": float(np.mean(np.abs(resid))),
                     "mae_after_in_sample": float(np.mean(np.abs(resid - offset)))}
    return out


def new_version(base_version: str) -> str:
    """A version that sorts after the stamps the trainer writes: ``<UTC stamp>-lab``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-lab-{time.time_ns() % 1_000_000:06d}"


def write_candidate(root: Path, base: SurrogateModel, correction: dict[str, dict[str, Any]], *, created_by: str,
                    reason: str) -> Path:
    """Write a residual candidate folder (model.onnx copied from the base, card.json, card.md)."""
    version = new_version(base.version)
    d = root / base.family / version
    tmp = root / base.family / f".{version}.tmp"
    tmp.mkdir(parents=True, exist_ok=False)
    shutil.copyfile(base.path / MODEL_FILE, tmp / MODEL_FILE)
    base_card = dict(base.card)
    base_corr = base_card.get("correction", {}) if base_card.get("kind") == KIND else {}
    merged: dict[str, dict[str, Any]] = {}
    for name in base.output_names:  # a candidate refitted on a candidate: offsets add, scales multiply
        b, c = base_corr.get(name), correction.get(name)
        if b is None and c is None:
            continue
        merged[name] = {"offset": (b or {}).get("offset", 0.0) + (c or {}).get("offset", 0.0),
                        "sigma_scale": (b or {}).get("sigma_scale", 1.0) * (c or {}).get("sigma_scale", 1.0)}
    lab_ids = sorted({i for c in correction.values() for i in c.get("lab_ids", [])})
    card = base_card | {
        "version": version, "kind": KIND, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": (f"residual correction of {base.family} {base.version} refitted on {len(lab_ids)} lab results "
                    "(constant offset and spread factor per output)"),
        "base": {"family": base.family, "version": base.version, "path": str(base.path)},
        "correction": merged,
        "fit": {name: {k: v for k, v in c.items() if k != "lab_ids"} for name, c in correction.items()},
        "trained_on": {"lab_result_ids": lab_ids, "created_by": created_by, "reason": reason},
    }
    (tmp / CARD_FILE).write_text(json.dumps(card, indent=1, sort_keys=True, default=str))
    lines = [f"# {base.family} {version} (residual candidate)", "", card["summary"], "",
             f"Base model: {base.family} {base.version}. Created by {created_by}: {reason}.", "",
             "| output | offset (model unit) | sigma scale | n | MAE before | MAE after (in sample) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, c in correction.items():
        lines.append(f"| {name} | {c['offset']:.5g} | {c['sigma_scale']:.3g} | {c['n']} | {c['mae_before']:.4g} | "
                     f"{c['mae_after_in_sample']:.4g} |")
    lines += ["", "The comparison with the active model (docs/lab.md) uses only lab results not listed in "
              "`trained_on`."]
    (tmp / "card.md").write_text("\n".join(lines) + "\n")
    tmp.rename(d)
    return d
