"""Parity plots per output and the calibration curve of the uncertainty band (matplotlib, onnxruntime).

``twin surrogates evaluate --plots docs/img`` writes ``surrogate_parity_<output>.png`` and
``surrogate_calibration.png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from surrogates.runtime import SurrogateModel
from surrogates.train import data as D


def _predictions(model_dir: Path) -> dict[str, Any]:
    m = SurrogateModel(model_dir)
    d = D.load()
    split = D.make_split(d, int(m.card["split"]["seed"]), subset=m.card["training"].get("subset"))
    fit = np.concatenate([split.train, split.val]) if m.card["training"].get("refit_on_train_and_val") else split.train
    out: dict[str, Any] = {"model": m, "scatter": D.replicate_scatter(d)}
    for name, idx in (("fit", fit), ("test", split.test), ("corner", split.corner)):
        x, y = D.matrices(d, idx)
        p = m.predict(x)
        out[name] = (y.astype(np.float64), p.mean, p.std)
    return out


def write_plots(model_dir: Path, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    P = _predictions(Path(model_dir))
    m = P["model"]
    written = []
    for j, name in enumerate(m.output_names):
        fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=110)
        yf, mf, _ = P["fit"]
        ax.scatter(yf[:, j], mf[:, j], s=8, c="0.75", label="training runs")
        yt, mt, st = P["test"]
        ax.errorbar(yt[:, j], mt[:, j], yerr=2 * st[:, j], fmt="o", ms=4, c="tab:blue", elinewidth=0.8,
                    label="test runs (±2σ)")
        yc, mc, sc = P["corner"]
        ax.errorbar(yc[:, j], mc[:, j], yerr=2 * sc[:, j], fmt="s", ms=4, c="tab:orange", elinewidth=0.8,
                    label="held-out corner (±2σ)")
        lo = float(min(yf[:, j].min(), yt[:, j].min(), mf[:, j].min()))
        hi = float(max(yf[:, j].max(), yt[:, j].max(), mf[:, j].max()))
        pad = 0.04 * (hi - lo)
        g = np.array([lo - pad, hi + pad])
        sd = P["scatter"]["outputs"][name]["sd"]
        ax.plot(g, g, "k-", lw=0.8)
        ax.fill_between(g, g - 2 * sd, g + 2 * sd, color="tab:green", alpha=0.15, label="±2 sd DEM replicates")
        ax.set_xlim(*g)
        ax.set_ylim(*g)
        mt_ = D.metrics(yt, mt, st, names=m.output_names)[name]
        ax.set_title(f"{name}\ntest R² {mt_['r2']:.3f}, MAE {mt_['mae']:.3g}, MAPE {mt_['mape_pct']:.2f} %",
                     fontsize=9)
        ax.set_xlabel(f"DEM [{D.UNITS.get(name, '')}]", fontsize=8)
        ax.set_ylabel("surrogate mean", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left")
        fig.tight_layout()
        path = out_dir / f"surrogate_parity_{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)

    # calibration: observed fraction of |error| <= k sigma vs the Gaussian expectation
    ks = np.linspace(0.0, 3.0, 61)
    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=110)
    expected = np.array([math.erf(k / math.sqrt(2.0)) for k in ks])
    ax.plot(ks, expected, "k--", lw=1, label="Gaussian expectation")
    for split, style in (("test", "-"), ("corner", ":")):
        y, mu, s = P[split]
        z = np.abs(mu - y) / s
        ax.plot(ks, [(z <= k).mean() for k in ks], style, lw=1.6, label=f"{split} runs, all outputs")
    ax.axvline(2.0, c="0.6", lw=0.6)
    ax.axhline(0.9, c="0.6", lw=0.6)
    ax.set_xlabel("k (band ±kσ)", fontsize=8)
    ax.set_ylabel("fraction of (run, output) pairs inside", fontsize=8)
    ax.set_title("calibration of the predictive band", fontsize=9)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    path = out_dir / "surrogate_calibration.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    return written
