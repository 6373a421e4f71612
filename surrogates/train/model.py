"""Deep ensemble of MLPs (torch): normalisation inside the model, batched members, training, optuna search.

All members live in one module: the weights of layer l are one tensor ``[M, fan_in, fan_out]`` and the
forward pass is a broadcast matmul, so the whole ensemble trains in one loop and exports as one graph.
Each member has its own initialisation seed and (optionally) its own Bayesian-bootstrap weights of the
training runs. Adam is element-wise, so training the members jointly is the same as training them apart.

Outputs of ``forward`` (physical units):
- ``mean``   : ensemble mean per output
- ``std``    : predictive standard deviation = sqrt(ensemble variance + noise variance), where the noise
               variance per output is a buffer set after training from held-out residuals
               (``noise_from_residuals``: DEM scatter floor, unexplained residual variance, and a
               split-conformal step for the +-2 sigma coverage). It is what the +-2 sigma band is checked with.
- ``spread`` : the ensemble standard deviation alone (epistemic part)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"silu": nn.functional.silu, "tanh": torch.tanh,
                                                                   "gelu": nn.functional.gelu}

#: physics-informed features appended to the six inputs inside the graph (seed 001's compaction model: the
#: porosity the layer would have if pressed to the gap with its solids conserved, and the gap itself);
#: computed from the columns ``initial_porosity`` (phi0), ``initial_thickness_um`` (h0), ``compaction_degree`` (pi)
DERIVED_FEATURES: dict[str, str] = {
    "porosity_at_gap": "1 - (1 - phi0) / (1 - pi)",
    "coating_gap_um": "h0 * (1 - pi)",
    "solid_thickness_um": "h0 * (1 - phi0)",
}
_I_PHI, _I_H, _I_PI = 1, 2, 3  # column order of surrogates.train.data.INPUTS (checked in tests)


def derive(x: torch.Tensor) -> torch.Tensor:
    """[n, 6] physical inputs -> [n, 9]: the inputs and DERIVED_FEATURES (same arithmetic in training and in
    the exported graph)."""
    phi, h, pi = x[:, _I_PHI:_I_PHI + 1], x[:, _I_H:_I_H + 1], x[:, _I_PI:_I_PI + 1]
    keep = 1.0 - pi
    return torch.cat([x, 1.0 - (1.0 - phi) / keep, h * keep, h * (1.0 - phi)], dim=1)


def derive_np(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return derive(torch.as_tensor(np.asarray(x, dtype=np.float32))).numpy()


@dataclass
class HParams:
    width: int = 32
    depth: int = 1
    activation: str = "tanh"
    lr: float = 3e-3
    weight_decay: float = 1e-3
    epochs: int = 1000
    derived: bool = True  # append DERIVED_FEATURES inside the graph

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HParams:
        return cls(**{k: d[k] for k in asdict(cls()) if k in d})


@dataclass
class TrainConfig:
    members: int = 8
    seed: int = 0
    bootstrap: str = "bayesian"  # "bayesian" (Dirichlet weights per member) | "none" (seeds only)
    hparams: HParams = field(default_factory=HParams)
    threads: int = 1
    #: per-output weights of the squared error in normalised units (None: all 1); see output_weights()
    output_weights: list[float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EnsembleMLP(nn.Module):
    # buffers (register_buffer): declared for the type checker, which sees Module.__getattr__ otherwise
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor
    noise_var: torch.Tensor
    skip: torch.Tensor

    def __init__(self, n_in: int, n_out: int, members: int, width: int, depth: int, activation: str,
                 x_mean: np.ndarray, x_std: np.ndarray, y_mean: np.ndarray, y_std: np.ndarray,
                 seed: int = 0, derived: bool = False) -> None:
        super().__init__()
        self.members, self.activation, self.derived = members, activation, derived
        self.register_buffer("x_mean", torch.as_tensor(x_mean, dtype=torch.float32))
        self.register_buffer("x_std", torch.as_tensor(x_std, dtype=torch.float32))
        self.register_buffer("y_mean", torch.as_tensor(y_mean, dtype=torch.float32))
        self.register_buffer("y_std", torch.as_tensor(y_std, dtype=torch.float32))
        self.register_buffer("noise_var", torch.zeros(n_out, dtype=torch.float32))
        sizes = [n_in] + [width] * depth + [n_out]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(sizes[:-1], sizes[1:]):
            w = torch.empty(members, a, b)
            for m in range(members):  # each member its own seed: the ensemble does not depend on M's order
                g = torch.Generator().manual_seed(seed * 100_003 + m * 1009 + a * 7 + b)
                bound = math.sqrt(6.0 / (a + b))  # Glorot uniform
                w[m] = (torch.rand(a, b, generator=g) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(members, 1, b)))
        # linear skip path per member (in normalised units): a small data set is mostly linear-plus-curvature
        self.skip = nn.Parameter(torch.zeros(members, n_in, n_out))

    def members_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """[n, n_in] physical -> [M, n, n_out] normalised outputs (float32).

        Laid out for a fast graph: the first layer of every member and the linear skip paths are one GEMM
        on the shared normalised input ([n, d] @ [d, M*w + M*k]); later layers are batched matmuls."""
        act = ACTIVATIONS[self.activation]
        M = self.members
        if self.derived:
            x = derive(x)
        z = (x - self.x_mean) / self.x_std  # [n, d]
        d = z.shape[1]
        w0, b0 = self.weights[0], self.biases[0]  # [M, d, w], [M, 1, w]
        k = self.skip.shape[2]
        last = len(self.weights) - 1
        if last == 0:  # no hidden layer: the output layer is the first one
            w_cat = torch.cat([w0.permute(1, 0, 2).reshape(d, -1), self.skip.permute(1, 0, 2).reshape(d, -1)], 1)
            y = (z @ w_cat).reshape(-1, 2, M, k).sum(1).transpose(0, 1)
            return y + b0
        width = w0.shape[2]
        w_cat = torch.cat([w0.permute(1, 0, 2).reshape(d, M * width), self.skip.permute(1, 0, 2).reshape(d, M * k)], 1)
        b_cat = torch.cat([b0.reshape(M * width), torch.zeros(M * k, dtype=b0.dtype)])
        first = z @ w_cat + b_cat  # [n, M*w + M*k]
        h = act(first[:, : M * width]).reshape(-1, M, width).transpose(0, 1)  # [M, n, w]
        lin = first[:, M * width:].reshape(-1, M, k).transpose(0, 1)  # [M, n, k]
        for i in range(1, last + 1):
            h = torch.matmul(h, self.weights[i]) + self.biases[i]
            if i < last:
                h = act(h)
        return h + lin

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Physical units, float64 (the network runs in float32; de-normalisation, mean and spread run in
        float64 so the outputs carry no float32 rounding of ~50 um thicknesses)."""
        p = self.members_normalised(x).to(torch.float64) * self.y_std.to(torch.float64) + self.y_mean.to(torch.float64)
        mean = p.mean(dim=0)
        var = ((p - mean) ** 2).sum(dim=0) / max(self.members - 1, 1)
        spread = torch.sqrt(var)
        std = torch.sqrt(var + self.noise_var.to(torch.float64))
        return mean, std, spread


def _seed_everything(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True)


def build(x: np.ndarray, y: np.ndarray, members: int, hp: HParams, seed: int) -> EnsembleMLP:
    xf = derive_np(x) if hp.derived else x
    x_mean, x_std = xf.mean(0), xf.std(0) + 1e-12
    y_mean, y_std = y.mean(0), y.std(0) + 1e-12
    return EnsembleMLP(xf.shape[1], y.shape[1], members, hp.width, hp.depth, hp.activation,
                       x_mean, x_std, y_mean, y_std, seed=seed, derived=hp.derived)


def fit(x: np.ndarray, y: np.ndarray, cfg: TrainConfig,
        progress: Callable[[int, int, float], None] | None = None) -> EnsembleMLP:
    """Train the ensemble on (x, y) (float32 arrays, physical units), full batch, AdamW with a cosine
    learning-rate schedule. Deterministic for (data, cfg)."""
    hp = cfg.hparams
    _seed_everything(cfg.seed, cfg.threads)
    model = build(x, y, cfg.members, hp, cfg.seed)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    yn = (yt - model.y_mean) / model.y_std
    n = len(x)
    if cfg.bootstrap == "bayesian":
        rng = np.random.default_rng(cfg.seed + 7919)
        w = rng.dirichlet(np.ones(n), size=cfg.members) * n  # [M, n], mean 1
    elif cfg.bootstrap == "none":
        w = np.ones((cfg.members, n))
    else:
        raise ValueError(f"unknown bootstrap {cfg.bootstrap!r} (bayesian | none)")
    wt = torch.as_tensor(w, dtype=torch.float32)
    ow = torch.ones(y.shape[1]) if cfg.output_weights is None else torch.as_tensor(cfg.output_weights,
                                                                                     dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp.epochs, eta_min=hp.lr * 0.01)
    every = max(1, hp.epochs // 100)
    for ep in range(hp.epochs):
        opt.zero_grad(set_to_none=True)
        err = (model.members_normalised(xt) - yn) ** 2 * ow  # [M, n, k]
        loss_m = (err.mean(dim=2) * wt).sum(dim=1) / wt.sum(dim=1)
        loss = loss_m.sum()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and (ep % every == 0 or ep == hp.epochs - 1):
            progress(ep + 1, hp.epochs, float(loss.detach()) / cfg.members)
    model.eval()
    return model


@torch.no_grad()
def predict(model: EnsembleMLP, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean, std, spread = model(torch.as_tensor(np.asarray(x, dtype=np.float32)))
    return mean.numpy(), std.numpy(), spread.numpy()


#: coverage of the +-2 sigma band the noise term is calibrated to on out-of-fold residuals (Gaussian: 95.45 %)
COVERAGE_CALIBRATION = 0.9545


def noise_from_residuals(mean: np.ndarray, spread: np.ndarray, y: np.ndarray,
                         replicate_sd: np.ndarray, coverage: float = COVERAGE_CALIBRATION) -> dict[str, Any]:
    """Noise sd per output, from predictions ``mean``/``spread`` for runs the ensemble did not train on:
    the largest of
    - the floor ``replicate_sd`` (the DEM scatter the inputs cannot explain),
    - the sd of the held-out residuals that the ensemble spread does not explain (variance matching),
    - the smallest noise sd for which the +-2 sigma band, sqrt(spread² + noise²), holds ``coverage`` of the
      held-out residuals (a split-conformal step: the residuals are heavier-tailed than a Gaussian)."""
    mean, spread = np.asarray(mean, np.float64), np.asarray(spread, np.float64)
    e = mean - np.asarray(y, np.float64)
    resid_var = np.mean(e ** 2, axis=0)
    excess = np.maximum(resid_var - np.mean(spread ** 2, axis=0), 0.0)
    need = np.maximum((e / 2.0) ** 2 - spread ** 2, 0.0)  # per run: noise variance that just covers it
    conformal = np.quantile(need, coverage, axis=0, method="higher")
    rep_var = np.asarray(replicate_sd, dtype=np.float64) ** 2
    noise = np.maximum(np.maximum(rep_var, excess), conformal)
    return {"floor_sd": np.sqrt(rep_var).tolist(), "heldout_excess_sd": np.sqrt(excess).tolist(),
            "coverage_sd": np.sqrt(conformal).tolist(), "coverage_target": coverage,
            "noise_sd": np.sqrt(noise).tolist()}


@torch.no_grad()
def set_noise(model: EnsembleMLP, noise_sd: list[float]) -> None:
    model.noise_var.copy_(torch.as_tensor(np.asarray(noise_sd, np.float64) ** 2, dtype=torch.float32))


def calibrate_noise(model: EnsembleMLP, x_val: np.ndarray, y_val: np.ndarray,
                    replicate_sd: np.ndarray) -> dict[str, Any]:
    """Set the noise variance buffer from a validation set (see ``noise_from_residuals``)."""
    mean, _, spread = predict(model, x_val)
    res = noise_from_residuals(mean, spread, y_val, replicate_sd)
    set_noise(model, res["noise_sd"])
    return res


def val_loss(model: EnsembleMLP, x: np.ndarray, y: np.ndarray, output_weights: list[float] | None = None) -> float:
    """Mean squared error of the ensemble mean in normalised output units (weighted per output as in training)."""
    mean, _, _ = predict(model, x)
    ys = model.y_std.numpy().astype(np.float64)
    ow = np.ones(y.shape[1]) if output_weights is None else np.asarray(output_weights, np.float64)
    return float(np.mean(((mean - y) / ys) ** 2 * ow))


def output_weights(y: np.ndarray, noise_sd: np.ndarray) -> list[float]:
    """Weights that turn the normalised squared error into error / noise sd (a Gaussian likelihood with each
    output's own DEM noise): Var(y_j) / noise_j², scaled to mean 1. Outputs the inputs determine well (final
    thickness, spring-back) then count for more than outputs whose variation is mostly DEM scatter."""
    w = np.var(np.asarray(y, np.float64), axis=0) / np.asarray(noise_sd, np.float64) ** 2
    return (w / w.mean()).tolist()


SEARCH_SPACE: dict[str, Any] = {
    "width": [16, 32, 64],
    "depth": (1, 3),
    "activation": ["tanh", "silu"],
    "lr": (1e-3, 1e-2),
    "weight_decay": (1e-5, 1e-1),
    "epochs": (300, 1500, 100),
}


def inference_macs(hp: HParams, n_in: int = 6, n_out: int = 9) -> int:
    """Multiply-accumulates per row and member of the exported graph (first layer, hidden, output, skip)."""
    n_in += len(DERIVED_FEATURES) if hp.derived else 0
    return n_in * hp.width + (hp.depth - 1) * hp.width * hp.width + hp.width * n_out + n_in * n_out


def search(x_tr: np.ndarray, y_tr: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, seed: int,
           budget_s: float, max_trials: int, members: int = 3, bootstrap: str = "none",
           on_trial: Callable[[int, float, float], None] | None = None, parsimony: float = 0.05,
           output_weights: list[float] | None = None) -> dict[str, Any]:
    """Optuna (TPE, seeded) over SEARCH_SPACE under a wall-clock budget; objective = validation loss of a
    small ensemble. Deterministic for the same number of finished trials (the budget may cut it).

    Selection (parsimony rule, in the spirit of the one-standard-error rule): of the trials whose validation
    loss is within ``parsimony`` (relative) of the best, the one with the cheapest inference graph wins;
    on 30 validation runs smaller differences are noise, and the cheaper graph serves the line faster."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()

    def objective(trial: optuna.Trial) -> float:
        hp = HParams(width=trial.suggest_categorical("width", SEARCH_SPACE["width"]),
                     depth=trial.suggest_int("depth", *SEARCH_SPACE["depth"]),
                     activation=trial.suggest_categorical("activation", SEARCH_SPACE["activation"]),
                     lr=trial.suggest_float("lr", *SEARCH_SPACE["lr"], log=True),
                     weight_decay=trial.suggest_float("weight_decay", *SEARCH_SPACE["weight_decay"], log=True),
                     epochs=trial.suggest_int("epochs", SEARCH_SPACE["epochs"][0], SEARCH_SPACE["epochs"][1],
                                              step=SEARCH_SPACE["epochs"][2]))
        m = fit(x_tr, y_tr, TrainConfig(members=members, seed=seed, bootstrap=bootstrap, hparams=hp,
                                        output_weights=output_weights))
        v = val_loss(m, x_val, y_val, output_weights)
        if on_trial is not None:
            on_trial(trial.number, v, time.perf_counter() - t0)
        return v

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({k: v for k, v in asdict(HParams()).items() if k in SEARCH_SPACE})  # the default first
    study.optimize(objective, n_trials=max_trials, timeout=budget_s)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = float(study.best_value)
    near = [t for t in done if t.value is not None and t.value <= best * (1.0 + parsimony)]
    chosen = min(near, key=lambda t: (inference_macs(HParams.from_dict(t.params)), t.value, t.number))
    return {"best": HParams.from_dict(chosen.params), "best_val_loss": _value(chosen),
            "lowest_val_loss": best, "lowest_trial_params": study.best_params, "chosen_trial": chosen.number,
            "selection": f"cheapest graph within {100 * parsimony:g} % of the lowest validation loss",
            "trials": len(done), "budget_s": budget_s, "max_trials": max_trials,
            "elapsed_s": time.perf_counter() - t0, "space": {k: list(v) for k, v in SEARCH_SPACE.items()},
            "history": [{"number": t.number, "value": _value(t), "params": t.params} for t in done]}


def _value(trial: Any) -> float:
    """The objective value of a completed optuna trial (never None for one)."""
    assert trial.value is not None
    return float(trial.value)
