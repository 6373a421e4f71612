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

from surrogates.train.model import EnsembleMLP, predict

PARITY_TOL = 1e-5
OUTPUT_HEADS = ("mean", "std", "spread")
OPSET = 17


class ParityError(RuntimeError):
    """The exported ONNX graph does not reproduce the torch model within the tolerance."""


class Float64Graph(torch.nn.Module):
    """What is exported: the trained ensemble in float64, taking the float32 batch. Float32 outputs of ~50 um
    thickness have a 4e-6 rounding step, too close to the 1e-5 gate for two runtimes summing in different
    orders; in float64 the gate measures export errors, not rounding. (float32 -> float64 changes the
    predictions by ~1e-7 relative; the card records it.)"""

    def __init__(self, model: EnsembleMLP) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).double().eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model(x.to(torch.float64))


@torch.no_grad()
def graph_predict(graph: torch.nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    res = graph(torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32)))
    return {h: r.numpy() for h, r in zip(OUTPUT_HEADS, res)}


def export_onnx(graph: torch.nn.Module, path: Path, input_names: list[str], output_names: list[str],
                metadata: dict[str, str] | None = None) -> Path:
    """torch -> ONNX: input ``x`` [batch, n_inputs] float32, outputs ``mean``/``std``/``spread``
    [batch, n_outputs]. Column names travel as metadata (and in the card)."""
    import onnx  # noqa: PLC0415

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
    import onnxruntime as ort  # noqa: PLC0415

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    res = sess.run(list(OUTPUT_HEADS), {"x": np.ascontiguousarray(x, dtype=np.float32)})
    return dict(zip(OUTPUT_HEADS, res))


def parity(graph: torch.nn.Module, path: Path, x: np.ndarray) -> dict[str, float]:
    """Max abs difference per head between onnxruntime and the exported torch graph on ``x``."""
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
        graph = Float64Graph(model)
        onnx_path = export_onnx(graph, tmp / "model.onnx", input_names, output_names,
                                {"version": str(card.get("version", "")), "family": str(card.get("family", ""))})
        gate = check_parity(graph, onnx_path, x_parity, tol)
        f32 = dict(zip(OUTPUT_HEADS, predict(model, x_parity)))
        f64 = graph_predict(graph, x_parity)
        gate["float32_torch_vs_exported_max_rel"] = float(max(
            np.max(np.abs(f64[h] - f32[h]) / np.maximum(np.abs(f64[h]), 1e-12)) for h in OUTPUT_HEADS))
        card = dict(card, parity=gate)
        (tmp / "card.json").write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
        if card_markdown is None:
            from surrogates.train.card import card_markdown as render  # noqa: PLC0415

            card_markdown = render(card)
        (tmp / "card.md").write_text(card_markdown)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
