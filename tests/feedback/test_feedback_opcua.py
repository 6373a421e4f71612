"""The feedback service against the simulated line over OPC-UA (real asyncua server on loopback, the
committed ONNX surrogate, the embedded store): approval gate, audit trail, clipping, refused writes,
no proposal on out-of-domain or stale inputs, and the closed loop under a loading disturbance."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.feedback.conftest import WRITE_TOKEN, line_and_twin, wait_for
from twin.simline.model import LineSimulation, Setpoints, make_scenario

pytestmark = pytest.mark.integration

OUT_OF_TOL_TARGET = {"porosity": {"target": 0.335, "tolerance": 0.01, "weight": 1.0, "unit": "1"}}


def fb(daemon):
    return daemon.extensions["feedback"]


async def test_nothing_is_written_without_approval_and_approval_writes_exactly_the_proposal(tmp_path: Path) -> None:
    async with line_and_twin(tmp_path, time_scale=10.0, api=True,
                             feedback={"targets": OUT_OF_TOL_TARGET}) as (srv, daemon):
        svc = fb(daemon)
        assert await wait_for(lambda: svc.open_proposal() is not None, 40), svc.last_decision
        p = svc.open_proposal()
        gap0 = srv.sim.setpoints.calender_gap_um
        await asyncio.sleep(1.5)  # the service keeps deciding; the line must stay untouched
        conn = daemon.connectors[0]
        assert srv.sim.setpoints.calender_gap_um == gap0 == p.settings[0].current
        assert len(conn.write_log) == 0 and p.state == "proposed"
        assert "porosity measured" in " ".join(p.reasons) and p.settings[0].proposed > p.settings[0].current

        base = f"http://127.0.0.1:{daemon.api_port}/api/v1"
        async with httpx.AsyncClient(timeout=15) as http:
            r = await http.get(f"{base}/proposals/current")
            assert r.status_code == 200 and r.json()["id"] == p.id
            r = await http.post(f"{base}/proposals/{p.id}/approve")
            assert r.status_code == 401 and srv.sim.setpoints.calender_gap_um == gap0
            r = await http.post(f"{base}/proposals/{p.id}/approve", headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
            r = await http.post(f"{base}/proposals/{p.id}/approve", json={"comment": "go"},
                                headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["state"] == "applied" and body["approved_by"] == "engineer"
            assert srv.sim.setpoints.calender_gap_um == body["settings"][0]["proposed"] == p.settings[0].proposed
            assert len(conn.write_log) == 1 and conn.write_log[0].ok
            r = await http.post(f"{base}/proposals/{p.id}/approve", headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
            assert r.status_code == 409  # applied once, never twice
            audit = (await http.get(f"{base}/proposals/{p.id}/audit")).json()
        kinds = [a["kind"] for a in audit]
        assert kinds == ["proposal.applied", "proposal.approved", "proposal.proposed"]
        applied = audit[0]
        assert applied["actor"] == "engineer"
        assert applied["body"]["model_version"] == str(daemon.extensions["predictor"].model.version)
        assert applied["body"]["inputs"]["line"]["dry_thickness"] > 0
        assert applied["body"]["predicted"]["porosity"]["target"] == 0.335
        assert applied["body"]["writes"][0]["readback"] == pytest.approx(p.settings[0].proposed)


async def test_a_refused_write_fails_the_proposal_and_leaves_the_line_untouched(tmp_path: Path) -> None:
    async with line_and_twin(tmp_path, time_scale=10.0, allowed_nodes=[],
                             feedback={"targets": OUT_OF_TOL_TARGET}) as (srv, daemon):
        svc = fb(daemon)
        assert await wait_for(lambda: svc.open_proposal() is not None, 40), svc.last_decision
        p = svc.open_proposal()
        gap0 = srv.sim.setpoints.calender_gap_um
        p = await svc.approve(p.id, "engineer")
        assert p.state == "failed" and "allowed_nodes" in (p.error or "")
        assert srv.sim.setpoints.calender_gap_um == gap0
        kinds = [a["kind"] for a in daemon.store.audit(ref=p.id)]
        assert kinds[0] == "proposal.failed"
        await asyncio.sleep(1.0)
        assert svc.proposals[p.id].state == "failed"  # no retry storm
        assert len(daemon.connectors[0].write_log) == 1


async def test_a_step_beyond_the_maximum_is_clipped_and_says_so(tmp_path: Path) -> None:
    gap = {"name": "gap", "setpoint_tag": "calendering.gap_setpoint", "min": 40.0, "max": 200.0, "max_step": 1.0}
    async with line_and_twin(tmp_path, time_scale=10.0,
                             feedback={"targets": OUT_OF_TOL_TARGET, "manipulables": [gap]}) as (srv, daemon):
        svc = fb(daemon)
        assert await wait_for(lambda: svc.open_proposal() is not None, 40), svc.last_decision
        s = svc.open_proposal().settings[0]
        assert s.clipped and "maximum step" in (s.limit_note or "")
        assert s.proposed - s.current == pytest.approx(1.0)
        assert any("clipped" in r for r in svc.open_proposal().reasons)


async def test_out_of_domain_state_gives_no_proposal_with_a_reason(tmp_path: Path) -> None:
    # a gap far above the dry coating: compaction degree near 0, outside the DEM's 20-50 % design
    async with line_and_twin(tmp_path, time_scale=10.0, setpoints=Setpoints(calender_gap_um=112.0),
                             feedback={"targets": OUT_OF_TOL_TARGET}) as (srv, daemon):
        svc = fb(daemon)
        assert await wait_for(lambda: "outside the model's domain" in " ".join(
            svc.last_decision.get("pilot-1").reasons if svc.last_decision.get("pilot-1") else []), 40), \
            svc.last_decision
        assert "compaction_degree" in " ".join(svc.last_decision["pilot-1"].reasons)
        assert svc.proposals == {}


async def test_stale_inputs_give_no_proposal_with_a_reason(tmp_path: Path) -> None:
    async with line_and_twin(tmp_path, time_scale=10.0, feedback={"targets": OUT_OF_TOL_TARGET}) as (srv, daemon):
        svc = fb(daemon)
        daemon.extensions["predictor"].config.stale_after_s = 1.5
        assert await wait_for(lambda: bool(svc.proposals) or "pilot-1" in svc.last_decision, 40)
        for p in list(svc.proposals.values()):
            if p.state == "proposed":
                await svc.reject(p.id, "test")
        n = len(svc.proposals)
        srv.pause()  # the line stops publishing: every input goes stale
        assert await wait_for(lambda: "stale input" in " ".join(svc.last_decision["pilot-1"].reasons), 20), \
            svc.last_decision
        assert len(svc.proposals) == n


def open_loop_porosity(seed: int, until_s: float, dt: float) -> np.ndarray:
    sim = LineSimulation(seed=seed, scenario=make_scenario("loading_drift"))
    out = []
    while sim.t_s < until_s:
        o = sim.advance(dt)
        out.append((sim.t_s, o.values["calendering.porosity_online"]))
    return np.array(out)


async def test_closed_loop_brings_porosity_back_after_a_loading_disturbance(tmp_path: Path) -> None:
    """Incoming areal loading +8 % (ramp 60-660 s of line time) drives porosity 2 points below target. With
    auto-apply, the twin brings it back within tolerance in at most 3 proposals after the disturbance has
    settled; the open-loop line stays out of tolerance."""
    target, tol, seed, scale, end_s = 0.32, 0.01, 3, 20.0, 1100.0
    ramp_end = 660.0
    base = open_loop_porosity(seed, end_s, 0.1 * scale)
    last = base[base[:, 0] > end_s - 60.0, 1].mean() / 100.0
    assert abs(last - target) > tol, f"open loop ends at {last:.4f}: the disturbance is too small to test"
    gap = {"name": "gap", "setpoint_tag": "calendering.gap_setpoint", "min": 40.0, "max": 200.0, "max_step": 5.0,
           "auto_apply": True, "settle_s": 15.0}
    async with line_and_twin(tmp_path, scenario="loading_drift", time_scale=scale, seed=seed, feedback={
            "targets": {"porosity": {"target": target, "tolerance": tol, "weight": 1.0, "unit": "1"}},
            "manipulables": [gap], "auto_apply_min_interval_s": 0.0}) as (srv, daemon):
        svc = fb(daemon)
        trace = []
        applied_at: dict[str, float] = {}  # proposal -> line time when it was applied
        while srv.sim.t_s < end_s:
            await asyncio.sleep(0.25)
            trace.append((srv.sim.t_s, srv.sim.outputs.values["calendering.porosity_online"],
                          srv.sim.setpoints.calender_gap_um))
            for pid, p in svc.proposals.items():
                if p.applied_ns and pid not in applied_at:
                    applied_at[pid] = srv.sim.t_s
        props = [svc.proposals[pid] for pid in svc.order]
        last_decision = svc.last_decision.get("pilot-1")
        last_reasons = list(last_decision.reasons) if last_decision is not None else []
    tr = np.array(trace)
    final = tr[tr[:, 0] > end_s - 60.0, 1].mean() / 100.0
    applied = [p for p in props if p.id in applied_at]
    after = [p for p in applied if applied_at[p.id] > ramp_end]
    back = tr[(tr[:, 0] > ramp_end) & (np.abs(tr[:, 1] / 100.0 - target) <= tol)]
    # time to recover: from the end of the ramp until the 40-s rolling mean of the online porosity enters the
    # tolerance band and stays there
    roll = np.array([tr[(tr[:, 0] > t - 40.0) & (tr[:, 0] <= t), 1].mean() / 100.0 for t in tr[:, 0]])
    inside = np.abs(roll - target) <= tol
    after_ramp = tr[:, 0] > ramp_end
    bad = np.flatnonzero(after_ramp & ~inside)
    recovered_at = float(tr[bad[-1] + 1, 0]) if len(bad) and bad[-1] + 1 < len(tr) else (
        float(tr[np.flatnonzero(after_ramp)[0], 0]) if not len(bad) else None)
    report = {"target": target, "tolerance": tol, "open_loop_final": last, "closed_loop_final": final,
              "final_error": final - target,
              "time_to_recover_s": None if recovered_at is None else max(0.0, recovered_at - ramp_end), "proposals": len(props), "applied": len(applied),
              "applied_after_disturbance_settled": len(after),
              "applied_at_line_s": [[applied_at[p.id], p.settings[0].current, p.settings[0].proposed]
                                    for p in applied],
              "gain": svc.gain, "states": [p.state for p in props],
              "reasons": [p.reasons for p in props], "realised": [p.realised for p in props],
              "last_decision_reasons": last_reasons}
    out = os.environ.get("PILOTLINE_FEEDBACK_REPORT")
    if out:
        Path(out).write_text(json.dumps({"report": report, "trace": tr.tolist(), "open_loop": base.tolist()}))
    assert applied, report
    assert abs(final - target) <= tol, report
    assert len(after) <= 3, report
    assert len(back) > 0 and recovered_at is not None, report
    # the model's sensitivity matches the line's: the gain learnt from the applied steps stays near 1
    g = svc.gain.get("pilot-1", {}).get("porosity", 1.0)
    assert 0.5 <= g <= 2.0, report


async def test_closed_loop_from_an_off_target_start(tmp_path: Path) -> None:
    """A steady line runs 2.5 points of porosity above the recipe's target: with auto-apply the twin brings it
    within tolerance in at most 3 applied proposals, and the gain it learns on the way stays within [0.5, 2]
    (issue #16: the surrogate trained on the v2 reference and the line calibrated on it agree)."""
    tol, scale, end_s = 0.01, 20.0, 700.0
    start = float(open_loop_porosity(5, 60.0, 1.0)[:, 1].mean()) / 100.0  # the steady line (before any ramp)
    target = round(start - 0.025, 3)  # the recipe asks for a denser electrode than the line makes
    gap = {"name": "gap", "setpoint_tag": "calendering.gap_setpoint", "min": 40.0, "max": 200.0, "max_step": 5.0,
           "auto_apply": True, "settle_s": 15.0}
    async with line_and_twin(tmp_path, scenario="steady", time_scale=scale, seed=5, feedback={
            "targets": {"porosity": {"target": target, "tolerance": tol, "weight": 1.0, "unit": "1"}},
            "manipulables": [gap], "auto_apply_min_interval_s": 0.0}) as (srv, daemon):
        svc = fb(daemon)
        trace, applied_at = [], {}
        inside_since: float | None = None
        while srv.sim.t_s < end_s:
            await asyncio.sleep(0.25)
            eps = srv.sim.outputs.values["calendering.porosity_online"] / 100.0
            trace.append((srv.sim.t_s, eps))
            for pid, p in svc.proposals.items():
                if p.applied_ns and pid not in applied_at:
                    applied_at[pid] = srv.sim.t_s
            window = [e for t, e in trace if t > srv.sim.t_s - 40.0]
            ok = abs(sum(window) / len(window) - target) <= tol
            inside_since = (inside_since or srv.sim.t_s) if ok else None
            if inside_since is not None and srv.sim.t_s - inside_since > 60.0:
                break  # within tolerance for a minute of line time (40-s rolling mean)
        gain = dict(svc.gain.get("pilot-1", {}))
        n_applied = len(applied_at)
        reasons = [svc.proposals[pid].reasons for pid in svc.order]
    report = {"start": start, "target": target, "applied": n_applied, "gain": gain, "inside_since": inside_since,
              "reasons": reasons}
    print("off-target start:", json.dumps(report, default=str))
    assert inside_since is not None, report
    assert 1 <= n_applied <= 3, report
    assert 0.5 <= gain.get("porosity", 1.0) <= 2.0, report
