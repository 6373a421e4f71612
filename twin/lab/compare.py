"""Errors of model versions against lab results, and the drift test of the active model.

Metrics per (version, output), lab value and prediction in the model output's unit:
``n``, ``mae``, ``bias`` (mean of prediction - lab), ``rmse``, ``coverage_2sigma`` (share of lab values inside
the prediction's +/-2 sigma band) and ``mean_std``.

Drift rule (docs/lab.md): over the newest ``window`` lab results of an output that the active version
predicted, with ``n >= min_n``, let k be the number outside +/-2 sigma. Under the model's calibration a lab
value falls outside with probability ``p = 1 - c`` (c: the card's held-out ``coverage_2sigma`` of that
output); the one-sided binomial tail ``P(X >= k | n, p)`` below ``alpha`` raises the alert.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def metrics(rows: Iterable[tuple[float, float, float]]) -> dict[str, Any]:
    """rows: (lab, predicted mean, predicted sigma) in one unit."""
    rows = list(rows)
    n = len(rows)
    if n == 0:
        return {"n": 0, "mae": None, "bias": None, "rmse": None, "coverage_2sigma": None, "mean_std": None}
    err = [p - lab for lab, p, _ in rows]
    inside = sum(1 for lab, p, s in rows if abs(lab - p) <= 2.0 * s)
    return {"n": n, "mae": sum(abs(e) for e in err) / n, "bias": sum(err) / n,
            "rmse": math.sqrt(sum(e * e for e in err) / n), "coverage_2sigma": inside / n,
            "mean_std": sum(s for _, _, s in rows) / n}


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    p = min(max(p, 1e-12), 1 - 1e-12)
    return min(1.0, sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1)))


def drift_test(rows: list[tuple[float, float, float]], coverage: float, min_n: int, alpha: float) -> dict[str, Any]:
    """rows: the newest window of (lab, mean, sigma) of one output, oldest first."""
    n = len(rows)
    misses = sum(1 for lab, p, s in rows if abs(lab - p) > 2.0 * s)
    p_miss = 1.0 - coverage
    pval = binomial_tail(misses, n, p_miss) if n else 1.0
    return {"n": n, "outside_2sigma": misses, "expected_outside": round(n * p_miss, 3), "calibrated_coverage": coverage,
            "observed_coverage": None if n == 0 else 1 - misses / n, "p_value": pval, "min_n": min_n, "alpha": alpha,
            "alert": n >= min_n and pval < alpha}
