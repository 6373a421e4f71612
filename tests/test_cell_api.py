"""``/api/v1/cell``: the cell consequence of a setting over HTTP (real PyBaMM, real feedback proposal objects)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ontology.definitions import LINE_RECIPE as R
from twin.routes import cell

pytest.importorskip("pybamm")


class _Feedback:
    def __init__(self, proposals: dict) -> None:
        self.proposals = proposals

    def get(self, pid: str):
        return self.proposals[pid]


def _client(proposals: dict | None = None) -> TestClient:
    daemon = SimpleNamespace(feedback=None if proposals is None else _Feedback(proposals))
    app = FastAPI()
    app.include_router(cell.make_router(daemon))
    return TestClient(app)


def test_discharge_of_a_cathode_and_clear_refusals():
    c = _client()
    eps = 0.34
    body = {"porosity": eps, "porosity_macro": R.macro_from_total(eps), "tortuosity_factor": 2.8,
            "thickness_um": R.thickness_um(20.0, eps), "loading_mg_cm2": 20.0, "c_rates": [0.5, 2.0]}
    r = c.get("/api/v1/cell/discharge", params=body)
    assert r.status_code == 200, r.text
    d = r.json()
    caps = [x["capacity_mAh_cm2"] for x in d["discharges"]]
    assert caps[1] < caps[0] and 3.5 < caps[0] < 5.5
    assert d["derived"]["bruggeman_exponent"] > 1.5
    # neither transport given
    assert c.get("/api/v1/cell/discharge", params={"porosity": 0.3, "thickness_um": 60}).status_code == 422
    # more transport than open pores: unphysical, said why
    r = c.get("/api/v1/cell/discharge", params={"porosity": 0.3, "d_eff": 0.5, "thickness_um": 60})
    assert r.status_code == 422 and "porosity" in r.text
    # loading that does not fit porosity and thickness
    r = c.get("/api/v1/cell/discharge", params={**body, "loading_mg_cm2": 30.0})
    assert r.status_code == 422 and "not the same coating" in r.text


def test_a_proposal_compared_with_the_current_setting():
    now = {"porosity": 0.36, "d_eff": 0.12, "thickness_after_um": 72.0}
    new = {"porosity": 0.31, "d_eff": 0.075, "thickness_after_um": 67.0}
    p = SimpleNamespace(raw_now=now, raw_new=new, model_version="test")
    c = _client({"abc": p, "bad": SimpleNamespace(raw_now={"porosity": 0.3}, raw_new=new, model_version="t")})
    r = c.get("/api/v1/cell/proposals/abc")
    assert r.status_code == 200, r.text
    d = r.json()
    assert set(d["difference"]) == {"0.5C", "2C"}
    cur2 = d["current"]["discharges"][1]["capacity_mAh_cm2"]
    new2 = d["proposed"]["discharges"][1]["capacity_mAh_cm2"]
    assert d["difference"]["2C"]["capacity_mAh_cm2"] == pytest.approx(new2 - cur2)
    assert new2 < cur2  # denser and more tortuous: less at 2C
    assert c.get("/api/v1/cell/proposals/nope").status_code == 404
    assert c.get("/api/v1/cell/proposals/bad").status_code == 409
    assert _client().get("/api/v1/cell/proposals/abc").status_code == 404  # feedback not enabled
