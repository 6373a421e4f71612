"""Train -> calibrate -> evaluate -> export (parity gate) -> card; and re-evaluation of a saved model.

``evaluate_model`` needs onnxruntime and numpy only (it runs the exported graph through
``surrogates.runtime``), so the acceptance tests recompute a committed model's metrics without torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from surrogates.reference.dataset import GAP_SOLID_FRACTION_MAX
from surrogates.train import data as D

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = ROOT / "surrogates" / "models"
FAMILY = "calendering"

ACCEPTANCE_NOTE = (
    "The DEM's own run-to-run scatter (one design point, other packing seeds) bounds what any surrogate can score "
    "against single DEM runs. For porosity, tortuosity factor and effective diffusivity the R² targets of issue #6 "
    "lie above that ceiling on this data set (the 'noise limit' column); they were not tuned for. A packing seed "
    "also changes the incoming layer the model is given (its measured thickness and porosity), so part of that "
    "scatter is explained by the inputs: the last column is the limit left after them, estimated from the same few "
    "replicates (a rough estimate). The error targets (porosity MAE in percentage points, tortuosity MAPE) and the "
    "±2σ coverage are compatible with the scatter and are what the tests hold the model to, together with R² "
    "floors set below the noise ceiling.")


@dataclass
class PipelineConfig:
    family: str = FAMILY
    version: str | None = None  # default: UTC time stamp
    out: Path = MODELS_DIR
    data: Path | None = None
    split_seed: int = 0
    seed: int = 0
    members: int = 5
    bootstrap: str = "none"
    budget_s: float = 60.0
    max_trials: int = 30
    search_members: int = 3
    subset: int | None = None  # keep this many training design points (smoke runs)
    refit: bool = True  # final ensemble on train + validation; noise calibrated by group k-fold on them
    calib_folds: int = 5
    hparams: dict[str, Any] | None = None  # skip the search and use these
    threads: int = 1
    loss: str = "uniform"  # "uniform": every output alike in normalised units | "noise": error / DEM noise sd
    command: str = ""


def train(cfg: PipelineConfig, progress: Callable[[str, int, int, str], None] | None = None) -> dict[str, Any]:
    """Run the whole training; returns {model, card, split, data}. Nothing is written (see ``export``)."""
    from surrogates.train import model as M  # lazy: torch (the [train] extra), only when training

    t0 = time.perf_counter()
    d = D.load(cfg.data)
    split = D.make_split(d, cfg.split_seed, subset=cfg.subset)
    xtr, ytr = D.matrices(d, split.train)
    xv, yv = D.matrices(d, split.val)
    scatter = D.replicate_scatter(d)
    # floor of the noise term: the DEM scatter the model cannot explain, i.e. the replicate scatter left after
    # the measured inputs where that is smaller (spring-back: 4.7 -> 0.7 %-points), else the replicate scatter
    rep_sd = np.array([min(scatter["outputs"][n]["sd"], scatter["outputs"][n].get("sd_given_measured_inputs", np.inf))
                       for n in D.OUTPUTS])
    if cfg.loss == "noise":
        ow: list[float] | None = M.output_weights(np.concatenate([ytr, yv]), rep_sd)
    elif cfg.loss == "uniform":
        ow = None
    else:
        raise ValueError(f"unknown loss {cfg.loss!r} (uniform | noise)")
    search_res: dict[str, Any] | None = None
    if cfg.hparams is not None:
        hp = M.HParams.from_dict(cfg.hparams)
    else:
        def on_trial(n: int, v: float, el: float) -> None:
            if progress is not None:
                progress("search", min(int(el), int(cfg.budget_s)), int(cfg.budget_s), f"trial {n} val {v:.4f}")

        search_res = M.search(xtr, ytr, xv, yv, cfg.seed, cfg.budget_s, cfg.max_trials, members=cfg.search_members,
                              bootstrap=cfg.bootstrap, on_trial=on_trial, output_weights=ow)
        hp = search_res["best"]
        search_res = dict(search_res, best=asdict(hp))
    tcfg = M.TrainConfig(members=cfg.members, seed=cfg.seed, bootstrap=cfg.bootstrap, hparams=hp, threads=cfg.threads,
                         output_weights=ow)

    def on_epoch(ep: int, n: int, loss: float) -> None:
        if progress is not None:
            progress("train", ep, n, f"loss {loss:.4f}")

    cv_metrics: dict[str, Any] | None = None
    if cfg.refit:
        # out-of-fold predictions over train + validation (folds by design point) calibrate the noise term,
        # then the shipped ensemble trains on all of train + validation; the test runs stay unseen
        fit_idx = np.concatenate([split.train, split.val])
        xf, yf = D.matrices(d, fit_idx)
        groups = D.design_groups(d)[fit_idx]
        ug = np.array(sorted(set(groups)))
        ug = ug[np.random.default_rng(cfg.seed + 1).permutation(len(ug))]
        oof_mean, oof_spread = np.zeros_like(yf, dtype=np.float64), np.zeros_like(yf, dtype=np.float64)
        for k, fold in enumerate(np.array_split(ug, cfg.calib_folds)):
            te = np.isin(groups, fold)
            if progress is not None:
                progress("calibrate", k, cfg.calib_folds, f"fold {k + 1}")
            mk = M.fit(xf[~te], yf[~te], tcfg)
            mean_k, _, spread_k = M.predict(mk, xf[te])
            oof_mean[te], oof_spread[te] = mean_k, spread_k
        if progress is not None:
            progress("calibrate", cfg.calib_folds, cfg.calib_folds, "done")
        calib = M.noise_from_residuals(oof_mean, oof_spread, yf, rep_sd)
        cv_metrics = D.metrics(yf, oof_mean)
        calib["method"] = f"{cfg.calib_folds}-fold out-of-fold residuals over train + validation (by design point)"
        model = M.fit(xf, yf, tcfg, progress=on_epoch)
        M.set_noise(model, calib["noise_sd"])
    else:
        model = M.fit(xtr, ytr, tcfg, progress=on_epoch)
        calib = M.calibrate_noise(model, xv, yv, rep_sd)
        calib["method"] = "validation residuals"
    wall = time.perf_counter() - t0

    # the card's metrics are those of the graph that ships: the ONNX export run on onnxruntime (the parity
    # gate at export then ties that graph to the torch ensemble)
    import tempfile

    from surrogates.train.export import export_onnx, onnx_predict  # lazy: torch (the [train] extra), only when training

    tmpdir = tempfile.TemporaryDirectory(prefix="surrogate-eval-")
    onnx_path = export_onnx(model, Path(tmpdir.name) / "model.onnx", D.inputs_of(d), D.OUTPUTS)
    metrics: dict[str, Any] = {}
    rel: dict[str, Any] = {}
    for name in ("fit", "test", "corner", "ood"):
        idx = np.concatenate([split.train, split.val]) if name == "fit" and cfg.refit else (
            split.train if name == "fit" else getattr(split, name))
        if len(idx) == 0:
            continue
        x, y = D.matrices(d, idx)
        g = onnx_predict(onnx_path, x)
        mean, std = g["mean"], g["std"]
        metrics[name if name != "ood" else "ood_lowcd"] = D.metrics(y, mean, std)
        if name in ("test", "corner"):
            rel[name] = D.relative_to_scatter(metrics[name], y, scatter)
    tmpdir.cleanup()
    # baseline: a quadratic ridge on the same features, fitted on the same runs as the shipped ensemble
    fit_rows = np.concatenate([split.train, split.val]) if cfg.refit else split.train
    xb, yb = D.matrices(d, fit_rows)
    ridge = D.fit_quadratic_ridge(xb, yb, D.design_groups(d)[fit_rows], seed=cfg.seed)
    baseline: dict[str, Any] = {"model": "quadratic ridge (inputs standardised, squares and pairwise products; "
                                         "alpha per output by 5-fold cross-validation by design point)",
                                "alphas": dict(zip(D.OUTPUTS, ridge.alphas)), "metrics": {}, "margin": {}}
    for name in ("test", "corner"):
        idx = getattr(split, name)
        if len(idx) == 0 or name not in metrics:
            continue
        x, y = D.matrices(d, idx)
        baseline["metrics"][name] = D.metrics(y, ridge.predict(x))
        baseline["margin"][name] = D.baseline_margin(metrics[name], baseline["metrics"][name])
    inputs = D.inputs_of(d)
    targets = D.targets_for(inputs)
    version = cfg.version or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    data_path = D.dataset_path(cfg.data)
    try:
        shown_path = str(data_path.resolve().relative_to(ROOT))
    except ValueError:
        shown_path = str(data_path)
    card = {
        "family": cfg.family, "version": version, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": ("Deep-ensemble surrogate of the DEM calendering reference (issue #5 data set): calendering inputs "
                    "-> structure metrics after release, with predictive uncertainty and an out-of-domain flag."),
        "inputs": D.inputs_of(d), "outputs": D.OUTPUTS, "units": D.UNITS,
        # the DEM resolves pores between particles, the CBD's nanopores count as solid (ontology.definitions):
        # the predictor converts the line's total porosity to this and back
        "porosity_kind": "macro",
        "domain": {k: list(v) for k, v in D.training_domain(
            D.matrices(d, np.concatenate([split.train, split.val]) if cfg.refit else split.train)[0]).items()},
        "input_definitions": {k: D.INPUT_DEFINITIONS[k] for k in D.inputs_of(d)},
        "derived_features": _derived_features(),
        "domain_exclusions": [{"name": "held-out corner", "bounds": {k: list(v) for k, v in D.CORNER.items()},
                               "reason": "held out of training to probe extrapolation (high compaction and roll "
                                         "temperature); predictions there are extrapolations"}],
        "domain_constraints": ([] if "wall_speed_mm_s" in inputs else [
            {"name": "gap above full density", "kind": "gap_solid_fraction", "max": GAP_SOLID_FRACTION_MAX,
             "reason": "the gap would be thinner than the layer's full-density thickness (no calender reaches it; "
                       "the reference answers there with its bulk-elastic branch, outside its validity)"}]),
        "dataset": {"path": shown_path, "sha256": D.dataset_sha256(cfg.data), "n_runs": int(len(d["run_id"]))},
        "split": split.summary(),
        "training": {"config": tcfg.as_dict(), "search": search_res, "wall_s": wall, "refit_on_train_and_val": cfg.refit, "loss": cfg.loss,
                     "command": cfg.command or "twin surrogates train", "subset": cfg.subset,
                     "libraries": _versions()},
        "uncertainty": calib,
        "cross_validation": ({"method": f"{cfg.calib_folds}-fold by design point over train + validation "
                                        "(the out-of-fold predictions that calibrate the noise term)",
                              "metrics": cv_metrics} if cv_metrics is not None else None),
        "metrics": metrics,
        "replicate_scatter": scatter,
        "relative_to_scatter": rel,
        "targets": targets,
        "baseline_quadratic_ridge": baseline,
        "onnx": {"opset": 17, "input": "x", "heads": ["mean", "std", "spread"]},
    }
    if "test" in metrics:
        card["acceptance"] = D.acceptance(metrics["test"], rel["test"], targets)
        card["acceptance_note"] = ACCEPTANCE_NOTE
    return {"model": model, "card": card, "split": split, "data": d}


def export(result: dict[str, Any], out: Path, tol: float | None = None) -> Path:
    """Write ``out/<family>/<version>/`` behind the parity gate (on the test inputs)."""
    from surrogates.train.export import PARITY_TOL, write_model  # lazy: torch (the [train] extra), only when training

    card = result["card"]
    x_test, _ = D.matrices(result["data"], result["split"].test)
    return write_model(result["model"], Path(out) / card["family"] / card["version"], x_test, card,
                       D.inputs_of(result["data"]),
                       D.OUTPUTS, tol=PARITY_TOL if tol is None else tol)


def _derived_features() -> dict[str, str]:
    from surrogates.train.model import DERIVED_FEATURES  # lazy: torch (the [train] extra), only when training

    return dict(DERIVED_FEATURES)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for p in ("torch", "optuna", "onnx", "onnxruntime", "numpy"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


def evaluate_model(model_dir: Path | str, data: Path | None = None) -> dict[str, Any]:
    """Recompute a saved model's metrics from the data set with onnxruntime (no torch): the split comes from
    the card's seed, the data set must hash to the card's sha256."""
    from surrogates.runtime import SurrogateModel  # lazy: onnxruntime, only when checking an exported model

    m = SurrogateModel(model_dir)
    card = m.card
    sha = D.dataset_sha256(data)
    d = D.load(data)
    split = D.make_split(d, int(card["split"]["seed"]), subset=card["training"].get("subset"))
    scatter = D.replicate_scatter(d)
    out: dict[str, Any] = {"family": m.family, "version": m.version, "dataset_sha256": sha,
                           "dataset_matches_card": sha == card["dataset"]["sha256"], "metrics": {}, "relative": {}}
    for name in ("test", "corner", "ood"):
        idx = getattr(split, name)
        if len(idx) == 0:  # e.g. no light-compaction runs in a v2 data set yet
            continue
        x, y = D.matrices(d, idx)
        p = m.predict(x)
        key = name if name != "ood" else "ood_lowcd"
        out["metrics"][key] = D.metrics(y, p.mean, p.std)
        out.setdefault("ood_flagged", {})[key] = float(np.mean(p.ood))
        if name in ("test", "corner"):
            out["relative"][name] = D.relative_to_scatter(out["metrics"][name], y, scatter)
    out["acceptance"] = D.acceptance(out["metrics"]["test"], out["relative"]["test"], D.targets_for(m.input_names))
    out["replicate_scatter"] = scatter
    return out
