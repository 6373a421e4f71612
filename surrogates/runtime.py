"""Surrogate runtime: ONNX ensembles on onnxruntime (no torch), model registry, out-of-domain flag.

Registry layout (``surrogates/models`` for the committed models)::

    <root>/<family>/<version>/model.onnx   the whole ensemble as one graph: x [batch, n_in] float32 ->
                                           mean, std, spread [batch, n_out]
    <root>/<family>/<version>/card.json    names, units, input domain, data hash, metrics, parity
    <root>/<family>/<version>/card.md      the same for people

Versions sort as strings (the trainer writes UTC time stamps, ``YYYYMMDDTHHMMSSZ``), so ``latest`` is the
greatest one. Each loaded model holds one ``InferenceSession`` (1 intra-op thread, 1 inter-op thread,
spinning off: the daemon shares its cores with the pipeline and a busy-waiting pool would burn them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"


class ModelNotFound(LookupError):
    """No model of that family/version in the registry."""


@dataclass
class PredictionBatch:
    mean: np.ndarray  # [n, n_out]
    std: np.ndarray  # [n, n_out] predictive sd (ensemble spread + calibrated noise)
    spread: np.ndarray  # [n, n_out] ensemble sd alone
    ood: np.ndarray  # [n] bool
    ood_reasons: Sequence[list[str]]  # per row, empty when in domain (OODReasons: formatted when read)


def session_options() -> ort.SessionOptions:
    import onnxruntime as ort  # loaded with the first model, not when the daemon's modules are imported

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


#: domain constraints a card may name: kind -> the inputs it reads, in order
CONSTRAINT_KINDS: dict[str, tuple[str, ...]] = {
    # solid fraction of the layer pressed into the gap, h_solid / (h0 (1 - CD)) = (1 - eps0) / (1 - CD)
    "gap_solid_fraction": ("initial_porosity", "compaction_degree"),
}


class OODReasons(Sequence[list[str]]):
    """Reasons per row of a batch (a list-like: ``reasons[i]`` is a list of str, empty when in domain),
    formatted on access so that a large batch pays nothing for the rows nobody reads."""

    def __init__(self, model: SurrogateModel, x: np.ndarray, flagged: np.ndarray, bad: np.ndarray,
                 ex_masks: list[np.ndarray], con_masks: list[np.ndarray]) -> None:
        self._m, self._x, self._flagged, self._bad, self._ex = model, x, flagged, bad, ex_masks
        self._con = con_masks

    def __len__(self) -> int:
        return len(self._flagged)

    def row(self, i: int) -> list[str]:
        if not self._flagged[i]:
            return []
        m, r = self._m, []
        for j in np.flatnonzero(self._bad[i]):
            k = m.input_names[j]
            lo, hi = m.domain[k]
            v = self._x[i, j]
            r.append(f"{k} is not a finite number" if not np.isfinite(v)
                     else f"{k}={v:.4g} outside the training domain [{lo:g}, {hi:g}]")
        for ex, mask in zip(m.exclusions, self._ex):
            if mask[i]:
                r.append(f"in the {ex['name']}: {ex['reason']}")
        for c, mask in zip(m.constraints, self._con):
            if mask[i]:
                r.append(f"{c['kind']}={m.constraint_value(c, self._x[i:i + 1])[0]:.3g} above {c['max']:g} "
                         f"({c['name']}): {c['reason']}")
        return r

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.row(j) for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.row(i)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, OODReasons)):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"OODReasons({list(self)!r})"


class SurrogateModel:
    """One versioned ensemble: ``predict(x)`` on a [n, n_inputs] batch."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.card: dict[str, Any] = json.loads((self.path / CARD_FILE).read_text())
        self.family: str = self.card["family"]
        self.version: str = str(self.card["version"])
        self.input_names: list[str] = list(self.card["inputs"])
        self.output_names: list[str] = list(self.card["outputs"])
        self.domain: dict[str, tuple[float, float]] = {k: (float(v[0]), float(v[1]))
                                                       for k, v in self.card["domain"].items()}
        self.exclusions: list[dict[str, Any]] = list(self.card.get("domain_exclusions", []))
        #: physical limits inside the box (a relation between inputs), e.g. the gap may not be thinner than the
        #: layer's full-density thickness: {"name", "kind", "max", "reason"}
        self.constraints: list[dict[str, Any]] = list(self.card.get("domain_constraints", []))
        for c in self.constraints:
            if c.get("kind") not in CONSTRAINT_KINDS or not all(k in self.card["inputs"]
                                                                for k in CONSTRAINT_KINDS[c["kind"]]):
                raise ValueError(f"{self.path}: domain constraint {c!r} is not one this runtime can evaluate "
                                 f"({', '.join(CONSTRAINT_KINDS)}) on the model's inputs")
        import onnxruntime as ort  # see session_options

        self.session = ort.InferenceSession(str(self.path / MODEL_FILE), session_options(),
                                            providers=["CPUExecutionProvider"])
        self._heads = [o.name for o in self.session.get_outputs()]
        shape = self.session.get_inputs()[0].shape
        if shape[-1] != len(self.input_names):
            raise ValueError(f"{self.path}: graph takes {shape[-1]} inputs, the card names {len(self.input_names)}")
        self._lo = np.array([self.domain[k][0] for k in self.input_names], dtype=np.float32)
        self._hi = np.array([self.domain[k][1] for k in self.input_names], dtype=np.float32)
        self._ex_boxes = [(np.array([self.input_names.index(k) for k in ex["bounds"]]),
                           np.array([float(b[0]) for b in ex["bounds"].values()], dtype=np.float32),
                           np.array([float(b[1]) for b in ex["bounds"].values()], dtype=np.float32))
                          for ex in self.exclusions]
        self._lo_l, self._hi_l = self._lo.tolist(), self._hi.tolist()
        self._ex_boxes_l = [list(zip(c.tolist(), lo.tolist(), hi.tolist())) for c, lo, hi in self._ex_boxes]

    def __repr__(self) -> str:
        return f"SurrogateModel({self.family!r}, {self.version!r})"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Raw graph outputs by head name (mean, std, spread)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.input_names):
            raise ValueError(f"expected a [n, {len(self.input_names)}] batch ({', '.join(self.input_names)}), "
                             f"got shape {x.shape}")
        return dict(zip(self._heads, self.session.run(self._heads, {"x": x})))

    def constraint_value(self, c: dict[str, Any], x: np.ndarray) -> np.ndarray:
        """The constrained quantity of each row of ``x`` (see CONSTRAINT_KINDS)."""
        cols = [self.input_names.index(k) for k in CONSTRAINT_KINDS[c["kind"]]]
        x = np.asarray(x, dtype=np.float64)
        if c["kind"] == "gap_solid_fraction":  # h_solid / gap = (1 - eps0) / (1 - CD)
            with np.errstate(divide="ignore", invalid="ignore"):
                return (1.0 - x[:, cols[0]]) / (1.0 - x[:, cols[1]])
        raise ValueError(c["kind"])

    def _masks(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
        # in float32, as the graph sees the inputs (a bound like 0.97 is then inside at its own float32 value)
        x = np.asarray(x, dtype=np.float32)
        cons = [~(self.constraint_value(c, x) <= float(c["max"])) for c in self.constraints]
        if x.shape[0] == 1:  # the daemon's case: plain Python beats a dozen numpy calls on 6 numbers
            row = x[0].tolist()
            bad_row = [not (lo <= v <= hi) for v, lo, hi in zip(row, self._lo_l, self._hi_l)]
            exs = [all(lo <= row[c] <= hi for c, lo, hi in box) for box in self._ex_boxes_l]
            flag = any(bad_row) or any(exs) or any(bool(m[0]) for m in cons)
            return (np.array([flag]), np.array([bad_row]), [np.array([e]) for e in exs], cons)
        bad = ~((x >= self._lo) & (x <= self._hi))  # [n, d]; NaN compares False, so it is flagged too
        flagged = bad.any(axis=1)
        ex_masks = []
        for cols, lo, hi in self._ex_boxes:
            v = x[:, cols]
            m = ((v >= lo) & (v <= hi)).all(axis=1)
            ex_masks.append(m)
            flagged |= m
        for m in cons:
            flagged |= m
        return flagged, bad, ex_masks, cons  # type: ignore[return-value]  # numpy types .any() as bool | array

    def domain_check(self, x: np.ndarray) -> tuple[np.ndarray, OODReasons]:
        """Per row: out-of-domain flag and its reasons (input outside the training box, non-finite input,
        or inside a region of the box that was held out of training). The flags are computed for the
        whole batch at once (vectorised); a row's reason texts are formatted when they are read."""
        x = np.asarray(x, dtype=np.float32)
        flagged, bad, ex_masks, con_masks = self._masks(x)
        return flagged, OODReasons(self, x, flagged, bad, ex_masks, con_masks)

    def ood_mask(self, x: np.ndarray) -> np.ndarray:
        """The out-of-domain flag per row alone (vectorised; no reasons), for large candidate batches."""
        return self._masks(x)[0]

    def predict(self, x: np.ndarray, *, reasons: bool = True) -> PredictionBatch:
        """``reasons=False`` skips the per-row reason strings (flags only), for optimizer batches."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.input_names):
            raise ValueError(f"expected a [n, {len(self.input_names)}] batch ({', '.join(self.input_names)}), "
                             f"got shape {x.shape}")
        out = dict(zip(self._heads, self.session.run(self._heads, {"x": x})))
        if not reasons:
            return PredictionBatch(out["mean"], out["std"], out["spread"] if "spread" in out else out["std"],
                                   self.ood_mask(x), [[] for _ in range(len(x))])
        ood, reasons_ = self.domain_check(x)
        return PredictionBatch(out["mean"], out["std"], out["spread"] if "spread" in out else out["std"], ood,
                               reasons_)

    def predict_dict(self, inputs: dict[str, float]) -> dict[str, Any]:
        """One row by input name -> {mean, std, spread (by output name), ood, ood_reasons}."""
        row = np.array([[inputs[k] for k in self.input_names]], dtype=np.float32)
        p = self.predict(row)
        return {"mean": dict(zip(self.output_names, map(float, p.mean[0]))),
                "std": dict(zip(self.output_names, map(float, p.std[0]))),
                "spread": dict(zip(self.output_names, map(float, p.spread[0]))),
                "ood": bool(p.ood[0]), "ood_reasons": p.ood_reasons[0]}


def _version_key(v: str) -> tuple[Any, ...]:
    # numeric runs compare as numbers ("v10" > "v9"), the rest as text
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", v) if p)


class ModelRegistry:
    """Models on disk: ``<root>/<family>/<version>/{model.onnx,card.json,card.md}``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def families(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, family: str) -> list[str]:
        d = self.root / family
        if not d.is_dir():
            return []
        vs = [p.name for p in d.iterdir()
              if p.is_dir() and not p.name.startswith(".") and (p / MODEL_FILE).is_file() and (p / CARD_FILE).is_file()]
        return sorted(vs, key=_version_key)

    def list(self) -> list[dict[str, Any]]:
        """Every model with its card (newest version of each family last)."""
        out = []
        for fam in self.families():
            vs = self.versions(fam)
            for v in vs:
                p = self.root / fam / v
                try:
                    card = json.loads((p / CARD_FILE).read_text())
                except (OSError, ValueError) as err:
                    card = {"error": f"unreadable card: {err}"}
                out.append({"family": fam, "version": v, "path": str(p), "latest": v == vs[-1], "card": card})
        return out

    def path(self, family: str, version: str | None = None) -> Path:
        vs = self.versions(family)
        if not vs:
            raise ModelNotFound(f"no model of family {family!r} under {self.root}")
        if version is None:
            return self.root / family / vs[-1]
        if version not in vs:
            raise ModelNotFound(f"no version {version!r} of {family!r} under {self.root} (have {', '.join(vs)})")
        return self.root / family / version

    def load(self, family: str, version: str | None = None) -> SurrogateModel:
        return SurrogateModel(self.path(family, version))

    def latest(self, family: str) -> SurrogateModel:
        return self.load(family, None)
