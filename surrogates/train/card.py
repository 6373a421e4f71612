"""Model card: Markdown rendering of ``card.json`` (no torch, no numpy needed)."""

from __future__ import annotations

from typing import Any


def _f(v: Any, nd: int = 4) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        if v != v:  # NaN
            return "n/a"
        return f"{v:.{nd}g}"
    return str(v)


def metrics_table(m: dict[str, dict[str, float]], rel: dict[str, dict[str, float]] | None = None) -> list[str]:
    head = "| output | R² | MAE | MedianAE | MAPE % | RMSE | ±2σ coverage | mean σ |"
    sep = "| --- | --- | --- | --- | --- | --- | --- | --- |"
    if rel is not None:
        head += " replicate sd | RMSE / replicate sd | R² noise ceiling |"
        sep += " --- | --- | --- |"
    rows = [head, sep]
    for n, v in m.items():
        r = (f"| `{n}` | {_f(v['r2'])} | {_f(v['mae'])} | {_f(v['median_ae'])} | {_f(v['mape_pct'], 3)} | "
             f"{_f(v['rmse'])} | {_f(v.get('coverage_2sigma', float('nan')), 3)} | {_f(v.get('mean_std', float('nan')))} |")
        if rel is not None:
            q = rel[n]
            r += f" {_f(q['replicate_sd'])} | {_f(q['rmse_over_replicate_sd'], 3)} | {_f(q['r2_noise_ceiling'], 3)} |"
        rows.append(r)
    return rows


def card_markdown(card: dict[str, Any]) -> str:
    L: list[str] = []
    L.append(f"# Model card: `{card['family']}` {card['version']}")
    L.append("")
    L.append(card.get("summary", ""))
    L.append("")
    L.append("## Model")
    t = card["training"]
    hp = t["config"]["hparams"]
    L.append(f"- deep ensemble of {t['config']['members']} MLPs (width {hp['width']}, depth {hp['depth']}, "
             f"{hp['activation']}, linear skip path), bootstrap `{t['config']['bootstrap']}`, seed {t['config']['seed']}; "
             f"AdamW lr {_f(hp['lr'], 3)}, weight decay {_f(hp['weight_decay'], 3)}, {hp['epochs']} full-batch epochs")
    L.append("- input and output normalisation inside the graph; ONNX opset "
             f"{card['onnx']['opset']}, input `x` [batch, {len(card['inputs'])}] float32, "
             "outputs `mean`, `std` (predictive: ensemble spread and calibrated noise), `spread` (ensemble only)")
    s = t.get("search")
    if s:
        L.append(f"- hyperparameters: optuna TPE, {s['trials']} trials in {_f(s['elapsed_s'], 3)} s "
                 f"(budget {_f(s['budget_s'], 3)} s, at most {s['max_trials']}); selection: {s.get('selection', 'lowest')} "
                 f"(chosen {_f(s['best_val_loss'])}, lowest {_f(s.get('lowest_val_loss', s['best_val_loss']))})")
    if t.get("refit_on_train_and_val"):
        n = card["split"]["n_runs"]
        L.append(f"- the shipped ensemble is trained on train + validation ({n['train'] + n['val']} runs) with the chosen "
                 f"hyperparameters; its noise term is calibrated by {card['uncertainty'].get('method', 'k-fold')}; "
                 "the test runs and the corner stay unseen")
    L.append(f"- training wall time {_f(t['wall_s'], 3)} s; command: `{t['command']}`")
    L.append(f"- parity gate: ONNX vs torch max abs difference {_f(card['parity']['max_abs_diff'], 3)} "
             f"(<= {card['parity']['tol']:g}) on {card['parity']['rows']} test rows")
    L.append("")
    L.append("## Data")
    ds = card["dataset"]
    L.append(f"- `{ds['path']}` sha256 `{ds['sha256']}` ({ds['n_runs']} valid runs)")
    sp = card["split"]
    L.append(f"- split (seed {sp['seed']}): {sp['rule']}; runs: " +
             ", ".join(f"{k} {v}" for k, v in sp["n_runs"].items()))
    L.append("- held-out corner: " + ", ".join(f"{k} in [{a:g}, {b:g}]" for k, (a, b) in sp["corner"].items()))
    L.append("")
    L.append("## Inputs and their domain (out-of-domain flag)")
    defs = card.get("input_definitions", {})
    L.append("| input | meaning | low | high |")
    L.append("| --- | --- | --- | --- |")
    for k, (lo, hi) in card["domain"].items():
        L.append(f"| `{k}` | {defs.get(k, '')} | {lo:.4g} | {hi:.4g} |")
    if card.get("derived_features"):
        L.append("\nComputed inside the graph from the inputs (phi0 = `initial_porosity`, h0 = "
                 "`initial_thickness_um`, pi = `compaction_degree`) and fed to the network beside them: " +
                 ", ".join(f"`{k}` = {v}" for k, v in card["derived_features"].items()) + ".")
    for ex in card.get("domain_exclusions", []):
        L.append(f"\nFlagged inside the box too: {ex['name']} (" +
                 ", ".join(f"{k} in [{a:g}, {b:g}]" for k, (a, b) in ex["bounds"].items()) + f"): {ex['reason']}")
    L.append("")
    L.append("## Accuracy on the held-out test runs")
    L.extend(metrics_table(card["metrics"]["test"], card["relative_to_scatter"]["test"]))
    L.append("")
    cv = card.get("cross_validation")
    if cv and cv.get("metrics"):
        L.append("## Cross-validation over train + validation")
        L.append(f"{cv['method']}; each run predicted by an ensemble that did not see its design point "
                 "(no ±2σ columns: these predictions calibrate the band).")
        L.append("")
        L.append("| output | R² | MAE | MedianAE | MAPE % | RMSE |")
        L.append("| --- | --- | --- | --- | --- | --- |")
        for n, v in cv["metrics"].items():
            L.append(f"| `{n}` | {_f(v['r2'])} | {_f(v['mae'])} | {_f(v['median_ae'])} | {_f(v['mape_pct'], 3)} | "
                     f"{_f(v['rmse'])} |")
        L.append("")
    L.append("## Extrapolation: held-out corner")
    L.extend(metrics_table(card["metrics"]["corner"], card["relative_to_scatter"]["corner"]))
    L.append("")
    L.append("## DEM replicate scatter (the physical floor)")
    rs = card["replicate_scatter"]
    L.append(f"Pooled within-point standard deviation over {len(rs['design_points'])} design points repeated "
             f"with other packing seeds ({rs['runs']} runs): " +
             ", ".join(f"`{n}` sd {_f(v['sd'], 3)} (CV {_f(v['cv_pct'], 2)} %)" for n, v in rs["outputs"].items()) + ".")
    L.append("The R² noise ceiling is 1 - sd² / Var(y) on the evaluated runs: the expected R² of a model that "
             "predicted the noise-free DEM mean exactly.")
    if any("sd_given_measured_inputs" in v for v in rs["outputs"].values()):
        L.append("")
        L.append("Part of that scatter is explained by the inputs: another packing seed also gives another incoming "
                 "layer (measured thickness and porosity), which the model sees. Scatter left after a pooled "
                 "within-point linear fit on those measured inputs (a rough estimate, "
                 f"{next(iter(rs['outputs'].values())).get('dof_given_measured_inputs', '?')} degrees of freedom): " +
                 ", ".join(f"`{n}` sd {_f(v['sd_given_measured_inputs'], 3)}" for n, v in rs["outputs"].items()
                           if "sd_given_measured_inputs" in v) + ".")
    L.append("")
    L.append("## Acceptance (issue #6)")
    L.append("Noise limit: the best score a model that predicted the noise-free DEM mean exactly would get against "
             "single runs (R² ceiling; MAE and MAPE floors = sqrt(2/π) × replicate sd).")
    L.append("")
    L.append("| output | metric | target | value | met | noise limit (replicate scatter) | target beyond it "
             "| limit left after the measured inputs |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in card["acceptance"]["rows"]:
        L.append(f"| {r['output']} | {r['metric']} | {_f(r['target'])} | {_f(r['value'])} | {_f(r['met'])} | "
                 f"{_f(r.get('noise_ceiling', float('nan')), 3)} | {_f(r.get('target_above_ceiling', ''))} | "
                 f"{_f(r.get('ceiling_given_measured_inputs', float('nan')), 3)} |")
    L.append("")
    L.append(card.get("acceptance_note", ""))
    L.append("")
    u = card["uncertainty"]
    L.append("## Uncertainty")
    L.append("`std` = sqrt(ensemble variance + noise variance); noise sd per output = the largest of: the DEM "
             "scatter the inputs do not explain (the smaller of the replicate sd and the sd left after the measured "
             "inputs), the out-of-fold residual sd unexplained by the spread, and the smallest noise for which the "
             f"±2σ band holds {100 * u.get('coverage_target', 0.9545):.2f} % of the out-of-fold residuals: " +
             ", ".join(f"`{n}` {_f(v, 3)}" for n, v in zip(card["outputs"], u["noise_sd"])) + ".")
    L.append("")
    return "\n".join(L) + "\n"
