"""The lab's parts on their own: the drift rule's binomial tail (against scipy), CSV dialects of lab exports, the
catalog refusing a quantity that does not fit the ontology, the residual candidate written and loaded as a model,
the dashboard's lab panel served with the page."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy.stats import binom

from surrogates.runtime import ModelRegistry
from tests.lab.conftest import lab_daemon
from twin.api import create_app
from twin.lab.candidate import ResidualModel, fit_residual, load_model, write_candidate
from twin.lab.catalog import Catalog, CatalogError
from twin.lab.compare import binomial_tail, drift_test
from twin.lab.config import LabQuantity
from twin.lab.parse import parse_csv

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("k", "n", "p"), [(0, 10, 0.05), (3, 8, 0.065), (4, 8, 0.065), (5, 10, 0.0455),
                                           (20, 50, 0.05), (9, 9, 0.3)])
def test_binomial_tail_matches_scipy(k: int, n: int, p: float) -> None:
    assert binomial_tail(k, n, p) == pytest.approx(float(binom.sf(k - 1, n, p)), rel=1e-9, abs=1e-15)


def test_drift_rule_needs_min_n_and_a_small_tail() -> None:
    miss = [(1.0, 0.0, 0.1)]  # 10 sigma off
    hit = [(0.0, 0.0, 0.1)]
    assert not drift_test(miss * 5, 0.95, 8, 0.01)["alert"]  # every one outside, but n < min_n
    assert not drift_test(miss * 1 + hit * 9, 0.95, 8, 0.01)["alert"]  # 1 of 10: as calibrated
    # 3 of 10 outside where 5 % are expected: P(X >= 3) = 0.0115, not below alpha = 0.01; 4 of 10: 0.0010
    three = drift_test(miss * 3 + hit * 7, 0.95, 8, 0.01)
    assert not three["alert"] and three["p_value"] == pytest.approx(0.01150, abs=1e-5)
    d = drift_test(miss * 4 + hit * 6, 0.95, 8, 0.01)
    assert d["alert"] and d["outside_2sigma"] == 4 and d["expected_outside"] == pytest.approx(0.5)
    assert not drift_test(miss * 4 + hit * 6, 0.70, 8, 0.01)["alert"]  # a wide calibration expects misses


def test_csv_dialects() -> None:
    cp1252 = "roll;start_m;end_m;parameter;value;unit\r\nR-1;0;5;thickness;71,5;µm\r\n".encode("cp1252")
    (p,) = parse_csv(cp1252, 100)
    assert p.row is not None and p.row.value == 71.5 and p.row.unit == "µm" and p.row.roll_id == "R-1"
    comma = b'roll_id,position_m,quantity,value,unit\nR-1,12.5,porosity_hg,"31.5",%\nR-1,x,porosity_hg,1,%\n'
    a, b = parse_csv(comma, 100)
    assert a.row is not None and (a.row.start_m, a.row.end_m, a.row.value) == (12.5, 12.5, 31.5)
    assert b.row is None and b.error is not None and b.error.code == "wrong_type"
    (h,) = parse_csv(b"when;what\n1;2\n", 100)
    assert h.error is not None and h.error.code == "malformed_payload"
    many = b"roll_id;position_m;quantity;value;unit\n" + b"R-1;1;thickness;70;um\n" * 5
    out = parse_csv(many, 3)
    assert [x.error.code if x.error else "ok" for x in out] == ["ok", "ok", "ok", "too_many_rows"]


def test_catalog_refuses_quantities_that_do_not_fit_the_ontology() -> None:
    with pytest.raises(CatalogError, match="not a term"):
        Catalog([LabQuantity(name="x", parameter="NoSuchTerm", unit="1", range=(0, 1))])
    with pytest.raises(CatalogError, match="not a structure parameter"):
        Catalog([LabQuantity(name="x", parameter="CalenderGap", unit="um", range=(0, 1))])
    with pytest.raises(CatalogError, match="canonical unit"):
        Catalog([LabQuantity(name="x", parameter="CalenderedCoatingThickness", unit="mm", range=(0, 1))])


def test_residual_candidate_is_a_versioned_model(tmp_path: Path) -> None:
    base = ModelRegistry(ROOT / "surrogates" / "models").latest("calendering")
    pairs = {"porosity": [(i, 0.30 + 0.001 * (i % 3), 0.32, 0.005) for i in range(6)],
             "tortuosity_factor": [(1, 2.0, 2.0, 0.1)]}  # one result: too few to fit
    corr = fit_residual(pairs, {"porosity": 1.0}, 5)
    assert set(corr) == {"porosity"} and corr["porosity"]["offset"] == pytest.approx(-0.019, abs=1e-9)
    path = write_candidate(tmp_path, base, corr, created_by="tester", reason="unit test")
    m = load_model(path)
    assert isinstance(m, ResidualModel) and m.version == path.name and m.card["base"]["version"] == base.version
    assert m.card["trained_on"]["lab_result_ids"] == list(range(6)) and (path / "card.md").is_file()
    x = np.array([[base.domain[k][0] * 0.5 + base.domain[k][1] * 0.5 for k in base.input_names]], dtype=np.float32)
    a, b = base.predict(x), m.predict(x)
    k = base.output_names.index("porosity")
    assert b.mean[0, k] - a.mean[0, k] == pytest.approx(corr["porosity"]["offset"], abs=1e-6)
    assert b.std[0, k] == pytest.approx(a.std[0, k] * corr["porosity"]["sigma_scale"], rel=1e-5)
    j = base.output_names.index("tortuosity_factor")
    assert b.mean[0, j] == a.mean[0, j] and b.std[0, j] == a.std[0, j]
    # a candidate of a candidate: offsets add up
    again = load_model(write_candidate(tmp_path, m, corr, created_by="tester", reason="twice"))
    assert again.card["correction"]["porosity"]["offset"] == pytest.approx(2 * corr["porosity"]["offset"])


def test_dashboard_serves_the_lab_panel(tmp_path: Path) -> None:
    d = lab_daemon(tmp_path, predictor=False)
    try:
        c = TestClient(create_app(d))
        page = c.get("/").text
        assert 'id="lab-panel"' in page and '<script src="/static/lab.js"></script>' in page
        js = c.get("/static/lab.js")
        assert js.status_code == 200
        for url in ("/api/v1/lab/drift", "/api/v1/models/comparison", "/api/v1/models/requests", "/api/v1/lab/results"):
            assert url in js.text
            assert c.get(url).status_code == 200
    finally:
        d.store.close()
    node = shutil.which("node")
    if node is not None:  # the panel's script parses (the browser test drives the page itself)
        subprocess.run([node, "--check", str(ROOT / "twin" / "web" / "lab.js")], check=True)


def test_documented_lab_section_loads_and_names_every_field() -> None:
    import re
    import tomllib

    from tests.conftest import DEFAULTS
    from twin.config import load_config
    from twin.lab.config import DriftRule, LabConfig, LabMqtt

    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```toml\n(.*?)```", doc, flags=re.S) if b.startswith("[lab]")]
    raw = tomllib.loads(block)
    cfg = load_config(data={"tagmap": str(DEFAULTS / "tagmap.toml"), **raw}, environ={})
    assert cfg.lab.quantities[0].model_output == "porosity" and cfg.lab.drift.alpha == 0.01
    for model, section in ((LabConfig, raw["lab"]), (DriftRule, raw["lab"]["drift"]), (LabMqtt, raw["lab"]["mqtt"])):
        named = set(section) | set(re.findall(r"# (\w+) =", block))
        assert set(model.model_fields) <= named, set(model.model_fields) - named


def test_config_refuses_a_quantity_off_the_ontology() -> None:
    from tests.conftest import DEFAULTS
    from twin.config import ConfigError, load_config

    bad = {"tagmap": str(DEFAULTS / "tagmap.toml"), "lab": {"enabled": True, "quantities": [
        {"name": "gap", "parameter": "CalenderGap", "unit": "um", "range": [0, 500]}]}}
    with pytest.raises(ConfigError, match="CalenderGap is a MP, not a structure parameter"):
        load_config(data=bad, environ={})
    bad["lab"]["enabled"] = False  # a disabled lab service is not checked against the ontology
    assert load_config(data=bad, environ={}).lab.quantities[0].name == "gap"
