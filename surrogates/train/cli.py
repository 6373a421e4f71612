"""``twin surrogates train`` / ``twin surrogates evaluate`` (typer functions mounted by twin.cli).

Also runnable without the twin CLI: ``python -m surrogates.train.cli train --help``.
torch is imported inside ``train`` only; ``evaluate`` runs the exported graph on onnxruntime.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from surrogates.train.pipeline import FAMILY, MODELS_DIR, PipelineConfig, evaluate_model, export
from surrogates.train.pipeline import train as run_train
from surrogates.train.plots import write_plots

console = Console()


def train(
    out: Path = typer.Option(MODELS_DIR, help="model registry folder; the model goes to <out>/<family>/<version>/"),
    family: str = typer.Option(FAMILY, help="model family"),
    version: str | None = typer.Option(None, help="version name (default: UTC time stamp YYYYMMDDTHHMMSSZ)"),
    data: Path | None = typer.Option(None, help="DEM data set folder or parquet (default data/dem)"),
    budget_s: float = typer.Option(60.0, help="wall-clock budget of the optuna hyperparameter search [s]"),
    max_trials: int = typer.Option(30, help="at most this many search trials"),
    members: int = typer.Option(5, min=2, help="ensemble members (>= 5 for a shipped model)"),
    bootstrap: str = typer.Option("none", help="per-member bootstrap of the training runs: none | bayesian"),
    seed: int = typer.Option(0, help="seed of the members, the bootstrap and the search"),
    split_seed: int = typer.Option(0, help="seed of the train/val/test split by design point"),
    subset: int | None = typer.Option(None, help="train on this many design points only (smoke run)"),
    refit: bool = typer.Option(True, help="ship an ensemble trained on train + validation (noise calibrated by "
                                          "k-fold); --no-refit: train only, calibrate on validation"),
    hparams: str | None = typer.Option(None, help="JSON hyperparameters: skip the search"),
    loss: str = typer.Option("uniform", help="uniform: every output alike in normalised units; noise: each output's "
                                             "error in units of its DEM noise sd (search and training)"),
    no_export: bool = typer.Option(False, help="train and report, write nothing"),
) -> None:
    """Train the surrogate ensemble on the DEM data set, export it to ONNX behind the parity gate, write its card."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    cfg = PipelineConfig(family=family, version=version, out=out, data=data, split_seed=split_seed, seed=seed,
                         members=members, bootstrap=bootstrap, budget_s=budget_s, max_trials=max_trials,
                         subset=subset, refit=refit, loss=loss, hparams=json.loads(hparams) if hparams else None,
                         command="twin surrogates train " + " ".join(
                             shlex.quote(a) for a in sys.argv[sys.argv.index("train") + 1:] if "train" in sys.argv))
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console) as bar:
        tasks: dict[str, Any] = {}  # stage -> rich's TaskID

        def progress(stage: str, done: int, total: int, info: str) -> None:
            if stage not in tasks:
                label = {"search": "hyperparameter search [s]", "calibrate": "noise calibration folds",
                         "train": "training epochs"}[stage]
                tasks[stage] = bar.add_task(label, total=total, info="")
            bar.update(tasks[stage], completed=done, total=total, info=info)

        res = run_train(cfg, progress=progress)
        for t in tasks.values():
            bar.update(t, completed=bar.tasks[t].total)
    card = res["card"]
    _print_metrics(card["metrics"], card.get("relative_to_scatter", {}), card.get("acceptance"))
    if no_export:
        return
    path = export(res, out)
    console.print(f"[green]model written[/]: {path} (parity max abs diff "
                  f"{json.loads((path / 'card.json').read_text())['parity']['max_abs_diff']:.2g})")


def evaluate(
    model_dir: Path | None = typer.Option(None, help="model folder (default: newest of the family)"),
    models: Path = typer.Option(MODELS_DIR, help="model registry folder"),
    family: str = typer.Option(FAMILY, help="model family"),
    data: Path | None = typer.Option(None, help="DEM data set folder or parquet (default data/dem)"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the recomputed metrics here"),
    plots: Path | None = typer.Option(None, help="write parity plots per output and the calibration curve here"),
) -> None:
    """Recompute a saved model's metrics (test runs, held-out corner, low-compaction OOD runs) on onnxruntime."""
    from surrogates.runtime import ModelRegistry  # lazy: onnxruntime, only when this command runs
    path = model_dir or ModelRegistry(models).path(family)
    res = evaluate_model(path, data)
    console.print(f"model {res['family']} {res['version']}  data sha256 {res['dataset_sha256'][:16]}… "
                  f"({'matches' if res['dataset_matches_card'] else 'DIFFERS FROM'} the card)")
    _print_metrics(res["metrics"], res["relative"], res["acceptance"])
    console.print("out-of-domain flag raised on: " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in res["ood_flagged"].items()))
    if json_out is not None:
        json_out.write_text(json.dumps(res, indent=2) + "\n")
    if plots is not None:
        for p in write_plots(path, plots):
            console.print(f"plot: {p}")
    if not res["dataset_matches_card"]:
        raise typer.Exit(2)


def _print_metrics(metrics: dict, rel: dict, acc: dict | None) -> None:
    for name in ("test", "corner"):
        if name not in metrics:
            continue
        t = Table(title=f"{name} runs (n={next(iter(metrics[name].values()))['n']})")
        for c in ("output", "R²", "MAE", "MedianAE", "MAPE %", "±2σ cov.", "R² ceiling", "RMSE/rep.sd"):
            t.add_column(c)
        for n, m in metrics[name].items():
            r = rel.get(name, {}).get(n, {})
            t.add_row(n, f"{m['r2']:.3f}", f"{m['mae']:.4g}", f"{m['median_ae']:.4g}", f"{m['mape_pct']:.2f}",
                      f"{m.get('coverage_2sigma', float('nan')):.2f}", f"{r.get('r2_noise_ceiling', float('nan')):.3f}",
                      f"{r.get('rmse_over_replicate_sd', float('nan')):.2f}")
        console.print(t)
    if acc:
        for r in acc["rows"]:
            extra = (f" (beyond the DEM noise limit {r['noise_ceiling']:.4g})" if r.get("target_above_ceiling")
                     else f" (noise limit {r['noise_ceiling']:.4g})" if "noise_ceiling" in r else "")
            console.print(f"  {'[green]met[/]' if r['met'] else '[red]not met[/]'}  {r['output']} {r['metric']} "
                          f"{r['value']:.4g} vs {r['target']:g}{extra}")


if __name__ == "__main__":  # pragma: no cover
    app = typer.Typer(no_args_is_help=True)
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app()
