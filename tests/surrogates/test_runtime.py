"""Runtime (onnxruntime only): no torch, session settings, batch API, out-of-domain flag, registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from surrogates.runtime import ModelNotFound, ModelRegistry, SurrogateModel
from tests.surrogates.conftest import FAMILY, MODELS, ROOT, add_version

CENTRE = {"am_fraction": 0.945, "initial_porosity": 0.46, "initial_thickness_um": 48.0, "compaction_degree": 0.35,
          "wall_speed_mm_s": 60.0, "roll_temperature_C": 62.5}


def row(**over: float) -> np.ndarray:
    x = dict(CENTRE, **over)
    return np.array([[x[k] for k in CENTRE]], dtype=np.float32)


def test_runtime_never_imports_torch(committed_dir: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from surrogates.runtime import ModelRegistry\n"
        f"m = ModelRegistry({str(MODELS)!r}).latest({FAMILY!r})\n"
        "p = m.predict(np.full((3, len(m.input_names)), 0.5, dtype=np.float32))\n"
        "assert p.mean.shape == (3, len(m.output_names))\n"
        "ModelRegistry(" + repr(str(MODELS)) + ").list()\n"
        "import twin.predictor\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_one_session_single_threaded_no_spinning(committed_dir: Path) -> None:
    m = SurrogateModel(committed_dir)
    so = m.session.get_session_options()
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert m.session.get_providers() == ["CPUExecutionProvider"]


def test_batch_equals_rows_and_shapes(committed_dir: Path) -> None:
    m = SurrogateModel(committed_dir)
    rng = np.random.default_rng(0)
    lo = np.array([m.domain[k][0] for k in m.input_names])
    hi = np.array([m.domain[k][1] for k in m.input_names])
    x = (lo + rng.random((257, len(lo))) * (hi - lo)).astype(np.float32)
    p = m.predict(x)
    assert p.mean.shape == p.std.shape == p.spread.shape == (257, len(m.output_names))
    assert p.ood.shape == (257,) and len(p.ood_reasons) == 257
    assert np.all(p.std >= p.spread - 1e-12) and np.all(p.spread >= 0)
    for i in (0, 100, 256):
        one = m.predict(x[i:i + 1])
        np.testing.assert_allclose(one.mean[0], p.mean[i], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="batch"):
        m.predict(x[:, :3])


def test_predictions_are_physical_at_the_centre(committed_dir: Path) -> None:
    m = SurrogateModel(committed_dir)
    r = m.predict_dict(CENTRE)
    assert not r["ood"] and r["ood_reasons"] == []
    assert 0.30 < r["mean"]["porosity"] < 0.42
    assert 1.7 < r["mean"]["tortuosity_factor"] < 2.7
    # D_eff/D0 = eps / tau holds in the data; the surrogate learns it only approximately
    assert r["mean"]["d_eff"] == pytest.approx(r["mean"]["porosity"] / r["mean"]["tortuosity_factor"], rel=0.05)


@pytest.mark.parametrize("over, needle", [
    ({"compaction_degree": 0.55}, "compaction_degree=0.55 outside the training domain [0.2, 0.5]"),
    ({"compaction_degree": 0.10}, "compaction_degree=0.1 outside the training domain [0.2, 0.5]"),
    ({"wall_speed_mm_s": 1.0}, "wall_speed_mm_s=1 outside"),
    ({"initial_porosity": float("nan")}, "initial_porosity is not a finite number"),
    ({"compaction_degree": 0.45, "roll_temperature_C": 90.0}, "held-out corner"),
])
def test_out_of_domain_flag_with_reasons(committed_dir: Path, over: dict, needle: str) -> None:
    m = SurrogateModel(committed_dir)
    x = np.concatenate([row(), row(**over), row(compaction_degree=0.2), row(compaction_degree=0.5)])
    p = m.predict(x)
    assert p.ood.tolist() == [False, True, False, False]  # the box edges are inside
    assert p.ood_reasons[0] == [] and p.ood_reasons[2] == [] and p.ood_reasons[3] == []
    assert any(needle in r for r in p.ood_reasons[1]), p.ood_reasons[1]


def test_low_compaction_dem_runs_are_flagged(committed_dir: Path) -> None:
    from surrogates.train.data import load, matrices

    d = load()
    lowcd = np.flatnonzero(np.asarray(d["design"]).astype(str) == "lowcd")
    x, _ = matrices(d, lowcd)
    p = SurrogateModel(committed_dir).predict(x)
    assert len(x) == 18 and p.ood.all()
    assert all(any(r.startswith("compaction_degree=") for r in rs) for rs in p.ood_reasons)


def test_registry_lists_and_loads_newest(registry_copy: Path, committed_dir: Path) -> None:
    reg = ModelRegistry(registry_copy)
    assert reg.families() == [FAMILY]
    v0 = committed_dir.name
    assert reg.latest(FAMILY).version == v0
    add_version(registry_copy, committed_dir, "99990101T000000Z")
    (registry_copy / FAMILY / ".tmp-half-written").mkdir()  # an export in progress is no version
    listed = reg.list()
    assert [e["version"] for e in listed] == [v0, "99990101T000000Z"]
    assert [e["latest"] for e in listed] == [False, True]
    assert listed[0]["card"]["dataset"]["sha256"] and listed[0]["card"]["metrics"]["test"]
    assert reg.latest(FAMILY).version == "99990101T000000Z"
    assert reg.load(FAMILY, v0).version == v0
    with pytest.raises(ModelNotFound):
        reg.latest("no-such-family")
    with pytest.raises(ModelNotFound):
        reg.load(FAMILY, "nope")
    assert ModelRegistry(registry_copy / "missing").list() == []


def test_card_matches_graph(committed_dir: Path) -> None:
    import onnxruntime as ort

    card = json.loads((committed_dir / "card.json").read_text())
    sess = ort.InferenceSession(str(committed_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["input_names"]) == card["inputs"]
    assert json.loads(meta["output_names"]) == card["outputs"]
    assert meta["version"] == card["version"] == committed_dir.name
    assert sess.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    assert [o.name for o in sess.get_outputs()] == ["mean", "std", "spread"]
    assert card["parity"]["max_abs_diff"] <= 1e-5
    assert card["training"]["config"]["members"] >= 5
    assert (committed_dir / "card.md").read_text().startswith(f"# Model card: `{FAMILY}`")


def test_domain_edges_are_inside_at_float32(committed_dir: Path) -> None:
    m = SurrogateModel(committed_dir)
    lo = np.array([[m.domain[k][0] for k in m.input_names]])
    hi = np.array([[m.domain[k][1] for k in m.input_names]])
    hi[0, m.input_names.index("compaction_degree")] = m.domain["compaction_degree"][0]  # not the held-out corner
    for x in (lo, hi, lo.astype(np.float32), hi.astype(np.float32)):
        assert not m.ood_mask(x).any()
    assert not m.predict(lo).ood.any() and not m.predict(hi).ood.any()
    assert m.ood_mask(hi * 1.001).all() and m.ood_mask(lo * 0.999).all()


def test_single_row_fast_path_agrees_with_the_batch_path(committed_dir: Path) -> None:
    m = SurrogateModel(committed_dir)
    rng = np.random.default_rng(1)
    lo = np.array([m.domain[k][0] for k in m.input_names])
    hi = np.array([m.domain[k][1] for k in m.input_names])
    x = (lo - 0.1 * (hi - lo) + rng.random((600, len(lo))) * 1.2 * (hi - lo)).astype(np.float32)
    x[::37, 2] = np.nan
    batch = m.predict(x)
    assert 0.2 < batch.ood.mean() < 0.95  # both kinds of rows are exercised
    for i in range(len(x)):
        one = m.predict(x[i:i + 1])
        assert one.ood[0] == batch.ood[i] and one.ood_reasons[0] == batch.ood_reasons[i], i
        np.testing.assert_allclose(one.mean[0], batch.mean[i], rtol=1e-6)


def _with_constraints(registry_copy: Path, committed_dir: Path, constraints: list[dict]) -> Path:
    d = registry_copy / FAMILY / committed_dir.name
    card = json.loads((d / "card.json").read_text())
    card["domain_constraints"] = constraints
    (d / "card.json").write_text(json.dumps(card))
    return d


GAP = {"name": "gap above full density", "kind": "gap_solid_fraction", "max": 1.0,
       "reason": "the gap would be thinner than the layer's full-density thickness"}


def test_gap_solid_fraction_constraint_flags_gaps_beyond_full_density(registry_copy: Path,
                                                                      committed_dir: Path) -> None:
    m = SurrogateModel(_with_constraints(registry_copy, committed_dir, [GAP]))
    # (1 - 0.46) / (1 - 0.45) = 0.98 inside; the same layer at CD 0.47 (1.019) and a dense one at 0.40 (1.05) beyond
    inside, past, dense = row(compaction_degree=0.45), row(compaction_degree=0.47), row(
        compaction_degree=0.40, initial_porosity=0.37)
    x = np.concatenate([inside, past, dense]).astype(np.float32)
    x[:, list(CENTRE).index("roll_temperature_C")] = 40.0  # away from the held-out corner
    p = m.predict(x)
    assert list(p.ood) == [False, True, True]
    assert p.ood_reasons[0] == []
    assert p.ood_reasons[1][0].startswith("gap_solid_fraction=1.02 above 1 (gap above full density)")
    assert list(m.ood_mask(x)) == [False, True, True]
    for i in range(3):  # the daemon's one-row path agrees
        one = m.predict(x[i:i + 1])
        assert one.ood[0] == p.ood[i] and one.ood_reasons[0] == p.ood_reasons[i]


def test_unknown_domain_constraint_refuses_to_load(registry_copy: Path, committed_dir: Path) -> None:
    d = _with_constraints(registry_copy, committed_dir, [dict(GAP, kind="gap_magic")])
    with pytest.raises(ValueError, match="domain constraint"):
        SurrogateModel(d)
