"""Feedback targets carry units: through the API of a running daemon (simulated line over OPC-UA on loopback,
the committed ONNX surrogate, the embedded store), a porosity target in percent gives exactly the proposal the
same target as a fraction gives, and refused targets (unknown or wrong-dimension units, values outside the
physical range, tolerance 0) answer 422 and change nothing."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.feedback.conftest import WRITE_TOKEN, line_and_twin, wait_for
from twin.feedback import FeedbackConfig, TargetSpec, canonical_target

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {WRITE_TOKEN}"}
THICKNESS = {"target": 76.0, "tolerance": 3.0, "weight": 0.0, "unit": "um"}


def test_units_convert_to_the_canonical_unit_and_ranges_are_refused_with_the_range() -> None:
    assert canonical_target("porosity", TargetSpec(target=30, tolerance=1, unit="percent")) == \
        TargetSpec(target=0.3, tolerance=0.01, unit="1", weight=1.0)
    assert canonical_target("porosity", TargetSpec(target=0.3, tolerance=0.01, unit="1")).target == 0.3
    t = canonical_target("thickness_after_um", TargetSpec(target=0.076, tolerance=0.003, unit="mm"))
    assert (t.target, t.tolerance, t.unit) == (76.0, 3.0, "um")
    assert canonical_target("porosity", TargetSpec(target=0.3, tolerance=0.01)).unit == "1"  # omitted: canonical
    cases = [("porosity", {"target": 30, "tolerance": 1, "unit": "1"}, ["(0, 1)", '"percent"']),
             ("porosity", {"target": 0.3, "tolerance": 0.01, "unit": "furlongs"}, ["furlongs", "[length]"]),
             ("porosity", {"target": 0.3, "tolerance": 0.01, "unit": "no_such_unit"}, ["no_such_unit"]),
             ("porosity", {"target": 0.0, "tolerance": 0.01, "unit": "1"}, ["(0, 1)"]),
             ("thickness_after_um", {"target": -5, "tolerance": 1, "unit": "um"}, ["> 0 um"]),
             ("thickness_after_um", {"target": 76, "tolerance": 3, "unit": "1"}, ["dimensionless"]),
             ("tortuosity_factor", {"target": 0.9, "tolerance": 0.1}, [">= 1"]),
             ("d_eff", {"target": 1.2, "tolerance": 0.1}, ["(0, 1]"]),
             ("not_an_output", {"target": 1.0, "tolerance": 0.1}, ["unknown output"])]
    for out, spec, words in cases:
        with pytest.raises(ValueError) as err:
            FeedbackConfig(targets={out: spec}, measured={})
        assert all(w in str(err.value) for w in words), (out, spec, str(err.value))
    for bad in ({"target": 0.3, "tolerance": 0.0}, {"target": math.nan, "tolerance": 0.01},
                {"target": 0.3, "tolerance": math.inf}):
        with pytest.raises(ValueError):
            FeedbackConfig(targets={"porosity": bad})


def props_settings(p: dict[str, Any]) -> list[tuple[str, float, float]]:
    return [(s["parameter"], s["current"], s["proposed"]) for s in p["settings"]]


async def test_percent_and_fraction_targets_give_the_same_proposal_and_refused_targets_change_nothing(
        tmp_path: Path) -> None:
    # the averaging window reaches back to the start (window_s large), so with the line paused the state the
    # service decides on is frozen: two decisions differ only by their targets
    feedback = {"targets": {"porosity": {"target": 0.32, "tolerance": 0.01, "weight": 0.0, "unit": "1"},
                            "thickness_after_um": THICKNESS},
                "window_s": 1e6}
    async with line_and_twin(tmp_path, time_scale=10.0, api=True, feedback=feedback) as (srv, daemon):
        svc = daemon.extensions["feedback"]
        daemon.extensions["predictor"].config.stale_after_s = 600.0
        assert await wait_for(lambda: len(svc.history.since("pilot-1", "calendering.porosity_online", 0)) >= 30, 40)
        srv.pause()
        await asyncio.sleep(1.5)  # what the line published has been committed
        base = f"http://127.0.0.1:{daemon.api_port}/api/v1"
        async with httpx.AsyncClient(timeout=15) as http:
            async def propose(porosity: dict[str, Any]) -> dict[str, Any]:
                r = await http.put(f"{base}/feedback/targets", headers=AUTH,
                                   json={"targets": {"porosity": porosity, "thickness_after_um": THICKNESS}})
                assert r.status_code == 200, r.text
                assert r.json()["targets"]["porosity"] == {"target": 0.27, "tolerance": 0.01, "weight": 1.0,
                                                           "unit": "1"}
                got: dict[str, Any] = {}

                async def current() -> bool:
                    got["p"] = (await http.get(f"{base}/proposals/current")).json()
                    return got["p"] is not None

                end = asyncio.get_running_loop().time() + 30
                while not await current():
                    assert asyncio.get_running_loop().time() < end, svc.last_decision
                    await asyncio.sleep(0.2)
                return got["p"]

            # far enough below the line (~32 %) that the step is clipped at the gap's maximum step: a clipped step is
            # proposed even while its band cannot fit the tolerance yet (the band rule is not what this test is about)
            p1 = await propose({"target": 27, "tolerance": 1, "weight": 1.0, "unit": "percent"})
            r = await http.post(f"{base}/proposals/{p1['id']}/reject", headers=AUTH, json={"comment": "again"})
            assert r.status_code == 200, r.text
            p2 = await propose({"target": 0.27, "tolerance": 0.01, "weight": 1.0, "unit": "1"})
            assert p2["id"] != p1["id"]
            # the same state ...
            assert p1["measured_before"] == p2["measured_before"] and p1["inputs"]["line"] == p2["inputs"]["line"]
            # ... gives the same proposal, and it moves the right way: porosity ~32 % above the 27 % target
            # needs more compaction, a smaller gap
            assert props_settings(p1) == props_settings(p2)
            assert p1["predicted"] == p2["predicted"]
            assert p1["measured_before"]["porosity"] > 0.305
            assert p1["settings"][0]["proposed"] < p1["settings"][0]["current"]
            assert p1["predicted"]["porosity"]["mean"] < p1["predicted_now"]["porosity"]["mean"]

            # refused targets: 422 with the reason, and nothing changes
            before_targets = (await http.get(f"{base}/feedback/targets")).json()
            before_props = (await http.get(f"{base}/proposals", params={"limit": 100})).json()
            before_audit = daemon.store.audit(None, None, 1000)
            bad = [({"porosity": {"target": 0.3, "tolerance": 0.01, "unit": "furlongs"}}, "furlongs"),
                   ({"porosity": {"target": 30, "tolerance": 1, "unit": "1"}}, "(0, 1)"),
                   ({"thickness_after_um": {"target": -5, "tolerance": 1, "weight": 0, "unit": "um"}}, "> 0 um"),
                   ({"thickness_after_um": {"target": 5000, "tolerance": 1, "weight": 0, "unit": "um"}},
                    "calendering.thickness_after"),
                   ({"porosity": {"target": 0.3, "tolerance": 0, "unit": "1"}}, "tolerance"),
                   ({"porosity": {"target": 0.3, "tolerance": 0.01, "unit": "1/0"}}, "1/0"),
                   # would take pint unbounded time on the event loop: refused before it reaches pint
                   ({"porosity": {"target": 0.3, "tolerance": 0.01, "unit": "10**10**10"}}, "too complex"),
                   ({"springback": {"target": 1, "tolerance": 1}}, "unknown output")]
            for targets, words in bad:
                body = {"targets": {"porosity": {"target": 0.31, "tolerance": 0.01, "weight": 1.0, "unit": "1"},
                                    "thickness_after_um": THICKNESS, **targets}}
                r = await http.put(f"{base}/feedback/targets", headers=AUTH, json=body)
                assert r.status_code == 422, (targets, r.status_code, r.text)
                assert words in r.text, (targets, r.text)
            # (a lone surrogate or NaN in the body: pydantic refuses them before the route, but twin/api.py's 422
            # handler echoes the input and answers 500 on them; reported to the API's owner)
            for recipe in ("control\x00char", "bell\x07"):  # the store and the page could not show these
                raw = json.dumps({"recipe": recipe, "targets": {  # ASCII JSON with the escapes, as a client sends
                    "porosity": {"target": 0.31, "tolerance": 0.01, "weight": 1.0, "unit": "1"}}}).encode()
                r = await http.put(f"{base}/feedback/targets", headers={**AUTH, "Content-Type": "application/json"},
                                   content=raw)
                assert r.status_code == 422, (recipe, r.text)
            await asyncio.sleep(1.0)  # decision rounds run meanwhile
            assert (await http.get(f"{base}/feedback/targets")).json() == before_targets
            assert (await http.get(f"{base}/proposals", params={"limit": 100})).json() == before_props
            assert daemon.store.audit(None, None, 1000) == before_audit
            assert before_targets["targets"]["porosity"]["target"] == 0.27


def _daemon(tmp_path: Path, feedback: dict[str, Any]) -> Any:
    from ontology.tagmap import TagMap
    from tests.feedback.conftest import twin_config
    from twin.daemon import Daemon

    cfg = twin_config(tmp_path, "opc.tcp://127.0.0.1:1/never-run", feedback=feedback)
    return Daemon(cfg, tagmap=TagMap.load(cfg.tagmap))


async def test_targets_outside_the_gauge_range_or_the_cards_output_range_are_refused(tmp_path: Path) -> None:
    d = _daemon(tmp_path, {})
    try:
        svc = d.extensions["feedback"]
        before = svc.targets_json()
        thick = {"thickness_after_um": TargetSpec(target=400, tolerance=3, weight=0.0, unit="um")}
        with pytest.raises(ValueError, match=r"range of its gauge 'calendering.thickness_after': 10 \.\. 300 um"):
            await svc.set_targets(None, {"porosity": TargetSpec(target=0.31, tolerance=0.01), **thick}, "test")
        # a card that states the output ranges of its training data bounds the targets too
        svc.predictor.model.card["output_ranges"] = {"porosity": [0.305, 0.45]}
        with pytest.raises(ValueError, match=r"outside the model's domain: the training data cover porosity "
                                             r"0\.305 \.\. 0\.45"):
            await svc.set_targets(None, {"porosity": TargetSpec(target=30, tolerance=1, unit="percent")}, "test")
        assert svc.targets_json() == before and d.store.audit(None, None, 10) == []
        body = await svc.set_targets(None, {"porosity": TargetSpec(target=31, tolerance=1, unit="percent")}, "test")
        assert body["targets"] == {"porosity": {"target": 0.31, "tolerance": 0.01, "weight": 1.0, "unit": "1"}}
        assert [r["kind"] for r in d.store.audit(None, None, 10)] == ["feedback.state", "targets.set"]
    finally:
        d.store.close()


def test_a_measured_factor_that_disagrees_with_the_tags_unit_refuses_the_start(tmp_path: Path) -> None:
    # calendering.porosity_online is stored in percent: a factor of 1 would read 31 % as a porosity of 31
    with pytest.raises(ValueError, match=r"measured\.porosity\.factor = 1, .*'percent'.*the factor is 0\.01"):
        _daemon(tmp_path, {"measured": {"porosity": {"tag": "calendering.porosity_online", "factor": 1.0}}})
    d = _daemon(tmp_path, {"measured": {"porosity": {"tag": "calendering.porosity_online"}},
                           "targets": {"porosity": {"target": 0.31, "tolerance": 0.01}}})
    assert d.extensions["feedback"].factors == {"porosity": 0.01}
    d.store.close()
