"""Export the ensemble to ONNX (one graph, dynamic batch axis) behind a parity gate, with its model card.

``write_model`` exports into a temporary folder next to the target, runs the parity gate (onnxruntime vs
torch on the given inputs, max abs difference over ``mean``, ``std`` and ``spread`` <= ``tol``), and only
then writes the cards and moves the folder into place. A model that fails the gate leaves nothing behind.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from surrogates.train.card import card_markdown as render
from surrogates.train.model import ACTIVATIONS, EnsembleMLP, derive

PARITY_TOL = 1e-5
OUTPUT_HEADS = ("mean", "std", "spread")
OPSET = 17


class ParityError(RuntimeError):
    """The exported ONNX graph does not reproduce the torch model within the tolerance."""


class ExportGraph(torch.nn.Module):
    """What is exported: the trained ensemble re-laid for a fast inference graph, same arithmetic.

    The members share the normalised input, so layer 1 of all members is one GEMM ``[n, d] @ [d, M*w]``;
    later layers are block-diagonal GEMMs ``[n, M*w] @ [M*w, M*w']`` (zeros between members) and the linear
    skip paths one more GEMM; the members' mean and variance are GEMMs with constant averaging matrices, so
    the graph holds no batched matmuls, transposes, splits or middle-axis reductions: on one core this is
    several times faster than the training layout. The network runs in float32 (normalised units); the
    de-normalisation to physical units runs in float64 (float32 outputs of ~50 um thickness would round in
    4e-6 steps, too close to the 1e-5 gate). The parity gate compares this graph on onnxruntime with the *training* module.
    """

    # buffers (register_buffer): declared for the type checker, which sees Module.__getattr__ otherwise
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor
    noise_var: torch.Tensor
    skip: torch.Tensor
    avg: torch.Tensor
    rep: torch.Tensor
    bessel: torch.Tensor

    def __init__(self, model: EnsembleMLP) -> None:
        super().__init__()
        m = copy.deepcopy(model).eval()
        self.members, self.activation, self.derived = m.members, m.activation, bool(getattr(m, "derived", False))
        M = m.members
        with torch.no_grad():
            d = m.weights[0].shape[1]
            self.register_buffer("x_mean", m.x_mean.clone())
            self.register_buffer("x_std", m.x_std.clone())
            self.register_buffer("y_mean", m.y_mean.to(torch.float64))
            self.register_buffer("y_std", m.y_std.to(torch.float64))
            self.register_buffer("noise_var", m.noise_var.to(torch.float64))
            self.register_buffer("skip", m.skip.permute(1, 0, 2).reshape(d, -1).contiguous())  # [d, M*k]
            k = m.skip.shape[2]
            eye = torch.eye(k)
            self.register_buffer("avg", torch.cat([eye / M] * M, 0))  # [M*k, k]: mean over members
            self.register_buffer("rep", torch.cat([eye] * M, 1))  # [k, M*k]: the mean back to every member
            self.register_buffer("bessel", torch.tensor(M / max(M - 1, 1), dtype=torch.float32))
            self.mats, self.bias = [], []
            for i, (w, b) in enumerate(zip(m.weights, m.biases)):
                if i == 0:
                    mat = w.permute(1, 0, 2).reshape(d, -1)  # [d, M*w]
                else:
                    mat = torch.block_diag(*[w[j] for j in range(M)])  # [M*w_in, M*w_out]
                self.register_buffer(f"w{i}", mat.contiguous())
                self.register_buffer(f"b{i}", b.reshape(-1).contiguous())
                self.mats.append(f"w{i}")
                self.bias.append(f"b{i}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        act = ACTIVATIONS[self.activation]
        if self.derived:
            x = derive(x)
        z = (x - self.x_mean) / self.x_std
        h = z
        last = len(self.mats) - 1
        for i, (wn, bn) in enumerate(zip(self.mats, self.bias)):
            h = h @ getattr(self, wn) + getattr(self, bn)
            if i < last:
                h = act(h)
        out = h + z @ self.skip  # [n, M*k] normalised member outputs
        # member mean and (unbiased) variance as GEMMs: reductions over a middle axis are slow on one core
        mean_n = out @ self.avg  # [n, k]
        dev = out - mean_n @ self.rep
        var_n = (dev * dev) @ self.avg * self.bessel
        mean = mean_n.to(torch.float64) * self.y_std + self.y_mean
        var = var_n.to(torch.float64) * self.y_std ** 2
        spread = torch.sqrt(var)
        return mean, torch.sqrt(var + self.noise_var), spread


@torch.no_grad()
def graph_predict(graph: torch.nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    res = graph(torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32)))
    return {h: r.numpy() for h, r in zip(OUTPUT_HEADS, res)}


def export_onnx(graph: torch.nn.Module, path: Path, input_names: list[str], output_names: list[str],
                metadata: dict[str, str] | None = None) -> Path:
    """torch -> ONNX: input ``x`` [batch, n_inputs] float32, outputs ``mean``/``std``/``spread``
    [batch, n_outputs]. Column names travel as metadata (and in the card)."""
    import onnx

    if isinstance(graph, EnsembleMLP):
        graph = ExportGraph(graph)
    graph.eval()
    dummy = torch.zeros(2, len(input_names), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(graph, (dummy,), str(path), dynamo=False, opset_version=OPSET, input_names=["x"],
                          output_names=list(OUTPUT_HEADS),
                          dynamic_axes={"x": {0: "batch"}, **{h: {0: "batch"} for h in OUTPUT_HEADS}})
    m = onnx.load(str(path))
    meta = {"input_names": json.dumps(input_names), "output_names": json.dumps(output_names), **(metadata or {})}
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def onnx_predict(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    res = sess.run(list(OUTPUT_HEADS), {"x": np.ascontiguousarray(x, dtype=np.float32)})
    return dict(zip(OUTPUT_HEADS, res))


def parity(graph: torch.nn.Module, path: Path, x: np.ndarray) -> dict[str, float]:
    """Max abs difference per head between onnxruntime running ``path`` and the torch module ``graph`` (the
    trained ensemble) on ``x``."""
    ref = graph_predict(graph, x)
    got = onnx_predict(path, x)
    return {h: float(np.max(np.abs(got[h].astype(np.float64) - ref[h].astype(np.float64)))) for h in OUTPUT_HEADS}


def check_parity(graph: torch.nn.Module, path: Path, x: np.ndarray, tol: float = PARITY_TOL) -> dict[str, Any]:
    """The gate: raises ParityError when onnxruntime and torch differ by more than ``tol`` anywhere."""
    diffs = parity(graph, path, x)
    worst = max(diffs.values())
    if not np.isfinite(worst) or worst > tol:
        raise ParityError(f"ONNX vs torch max abs difference {worst:.3g} > {tol:g} on {len(x)} rows: {diffs}")
    return {"max_abs_diff": worst, "per_head": diffs, "tol": tol, "rows": int(len(x))}


def write_model(model: EnsembleMLP, out_dir: Path, x_parity: np.ndarray, card: dict[str, Any],
                input_names: list[str], output_names: list[str], tol: float = PARITY_TOL,
                card_markdown: str | None = None) -> Path:
    """Export + parity gate + cards, atomically into ``out_dir`` (which must not exist yet)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists: a model version is never overwritten")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is for every reader
    try:
        onnx_path = export_onnx(ExportGraph(model), tmp / "model.onnx", input_names, output_names,
                                {"version": str(card.get("version", "")), "family": str(card.get("family", ""))})
        gate = check_parity(model, onnx_path, x_parity, tol)  # ONNX vs the trained torch ensemble
        card = dict(card, parity=gate)
        (tmp / "card.json").write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
        if card_markdown is None:
            card_markdown = render(card)
        (tmp / "card.md").write_text(card_markdown)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
