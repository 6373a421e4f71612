"""Issue #19 acceptance: a recorded run replayed through the daemon, lab results arriving hours after their web
segments, a drift alert with a retrain request, a residual candidate refitted on the lab results and run in shadow,
compared on later lab results, promoted by an approved request and rolled back; the audit trail shows who, when
and the metrics at promotion. Real parts: the embedded store, the pipeline, the predictor on onnxruntime, the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.samples import ns_to_iso
from tests.lab.conftest import LEAD, client, lab_daemon, recorded_segments, replay
from twin.daemon import Daemon

HOURS = 3 * 3600 * 10**9  # the lab reports three hours after a segment ran
R1_ROWS, R2_ROWS = 4800, 9086  # R-0001 is rows 0..4799 of the recorded run, R-0002 rows 4800..9085


def lab_rows(roll: str) -> list[dict[str, Any]]:
    rows = []
    for s in recorded_segments(roll, 40.0):
        late = ns_to_iso(s["last_ns"] + HOURS)
        rows.append({"roll_id": roll, "start_m": s["start_m"], "end_m": s["end_m"], "quantity": "porosity_hg",
                     "value": s["porosity_pct"], "unit": "%", "measured_at": late, "sample_id": "Hg-1"})
        rows.append({"roll_id": roll, "start_m": s["start_m"], "end_m": s["end_m"], "quantity": "thickness",
                     "value": s["thickness_um"] / 1000.0, "unit": "mm", "measured_at": late, "sample_id": "M-1"})
    return rows


def excel_csv(rows: list[dict[str, Any]]) -> bytes:
    """What Excel writes for a German-locale lab sheet: BOM, ';' separators, decimal commas, CRLF."""
    cols = ["roll_id", "start_m", "end_m", "quantity", "value", "unit", "measured_at", "sample_id"]
    lines = [";".join(cols)]
    for r in rows:
        lines.append(";".join(f"{r[c]:.6f}".replace(".", ",") if isinstance(r[c], float) else str(r[c]) for c in cols))
    return ("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8")


async def test_replay_late_lab_results_shadow_compare_promote_rollback(tmp_path: Path) -> None:
    d = lab_daemon(tmp_path, feedback=True)
    p, lab, fb = d.predictor, d.lab, d.feedback
    assert fb is not None
    assert p is not None and lab is not None and p.model is not None
    committed = p.model.version
    await p.start()
    await lab.start()
    try:
        # 1. roll R-0001 runs; its lab results arrive hours later
        await replay(d, keep=lambda i: i < R1_ROWS)
        assert p.count > 100
        async with client(d) as c, client(d, LEAD) as lead:
            # with the lab on, the active model changes only through an approved promotion, never a bare reload
            r = await lead.post("/api/v1/models/reload")
            assert r.status_code == 409 and "promotion" in r.json()["detail"] and p.model.version == committed
            r1 = lab_rows("R-0001")
            rep = (await c.post("/api/v1/lab/results", json={"rows": r1, "origin": "lims R-0001"})).json()
            assert rep["stored"] == len(r1) and rep["dead_letters"] == 0
            one = (await c.get(f"/api/v1/lab/results/{rep['ids'][0]}")).json()
            assert one["result"]["unit"] == "percent" and one["result"]["parameter"] == "CalenderedPorosity"
            # linked to the predictions and the process inputs of the same web segment
            assert one["predictions"][committed]["n"] > 3 and one["process_inputs"]["n"] > 3
            assert one["segment"]["last_ts_ns"] + HOURS <= one["result"]["measured_ts_ns"]
            gap = one["process"]["calendering.gap_actual"]  # the stored process data of the segment itself
            assert gap["n"] > 100 and gap["unit"] == "um"
            assert abs(gap["mean"] - one["process_inputs"]["mean"]["gap"]) < 0.5
            # 2. drift: the committed model's band misses the line's porosity more often than its calibration says
            drift = (await c.get("/api/v1/lab/drift")).json()
            assert drift["drift_alert"] and drift["drift"]["porosity"]["alert"]
            assert drift["drift"]["porosity"]["outside_2sigma"] > drift["drift"]["porosity"]["expected_outside"]
            health = (await c.get("/healthz")).json()
            assert health["lab"]["drift_alert"] is True
            metrics = (await c.get("/metrics")).text
            assert 'twin_model_drift_alert{output="porosity"} 1.0' in metrics
            (retrain,) = (await c.get("/api/v1/models/requests", params={"state": "proposed"})).json()
            assert retrain["kind"] == "retrain" and retrain["created_by"] == "twin" and "porosity" in retrain["reason"]
            # 3. approved by a named user: a residual candidate is refitted on R-0001's lab results
            done = (await lead.post(f"/api/v1/models/requests/{retrain['id']}/approve",
                                    json={"comment": "refit on R-0001"})).json()
            assert done["state"] == "applied" and done["decided_by"] == "lab-lead"
            cand = done["version"]
            shadow = (await c.get("/api/v1/models/shadow")).json()
            (cj,) = shadow["candidates"]
            assert cj["version"] == cand and cj["kind"] == "residual_offset" and cj["base"]["version"] == committed
            assert sorted(cj["trained_on"]["lab_result_ids"]) == sorted(rep["ids"])
            assert (tmp_path / "lab_models" / "calendering" / cand / "model.onnx").is_file()
            assert p.model.version == committed  # a candidate is not active until promoted
            assert fb.predictor.model is p.model  # the feedback service reads the active model only

            # 4. roll R-0002 runs with the candidate in shadow; its lab results arrive late, as an Excel export
            before = lab.counts["shadow_predictions"]
            await replay(d, keep=lambda i: R1_ROWS <= i < R2_ROWS)
            assert lab.counts["shadow_predictions"] - before > 100
            r2 = lab_rows("R-0002")
            rep2 = (await c.post("/api/v1/lab/results/csv", params={"name": "R-0002.csv"}, content=excel_csv(r2),
                                 headers={"Content-Type": "text/csv"})).json()
            assert rep2["stored"] == len(r2) and rep2["dead_letters"] == 0, rep2
            cmp = (await c.get("/api/v1/models/comparison")).json()
            assert cmp["active"] == committed and set(cmp["versions"]) == {committed, cand}
            assert set(cmp["excluded_lab_ids"]) == set(rep["ids"])  # the fit's own lab results are left out
            pair = cmp["paired"][cand]["porosity"]
            assert pair["active"]["n"] == pair["candidate"]["n"] == len(r2) // 2
            for out in ("porosity", "thickness_after_um"):
                a, k = cmp["paired"][cand][out]["active"], cmp["paired"][cand][out]["candidate"]
                assert k["mae"] < a["mae"] and abs(k["bias"]) < abs(a["bias"]), (out, a, k)
                assert k["coverage_2sigma"] >= a["coverage_2sigma"]

            # 5. promotion: proposed by one user, approved by another, applied and audited
            r = await c.post("/api/v1/models/requests", json={"kind": "promote", "version": cand,
                                                              "reason": "lower MAE on R-0002"})
            assert r.status_code == 200, r.text
            req = r.json()
            assert req["state"] == "proposed" and p.model.version == committed
            anon = await client(d, None).post(f"/api/v1/models/requests/{req['id']}/approve")
            assert anon.status_code == 401 and p.model.version == committed
            ok = (await lead.post(f"/api/v1/models/requests/{req['id']}/approve", json={"comment": "go"})).json()
            assert ok["state"] == "applied" and ok["decided_by"] == "lab-lead"
            assert p.model.version == cand  # the predictor (and so the feedback service) now uses the candidate
            assert fb.predictor.model is p.model and fb.predictor.model.version == cand
            again = await lead.post(f"/api/v1/models/requests/{req['id']}/approve")
            assert again.status_code == 409
            trail = (await c.get(f"/api/v1/models/requests/{req['id']}/audit")).json()
            kinds = [(t["kind"], t["actor"]) for t in reversed(trail)]
            assert kinds == [("model_promote_proposed", "engineer"), ("model_promote_approved", "lab-lead"),
                             ("model_promote_applied", "lab-lead")]
            applied = trail[0]
            assert applied["ts_ns"] >= ok["decided_ts_ns"]
            body = applied["body"]
            assert body["active"] == cand and body["previous"] == committed and body["promoted_by"] == "lab-lead"
            at = body["metrics"]["comparison"]["paired"][cand]["porosity"]
            assert at["candidate"]["n"] == len(r2) // 2 and at["candidate"]["mae"] == pair["candidate"]["mae"]
            # the replaced model keeps running in shadow
            shadow = (await c.get("/api/v1/models/shadow")).json()
            assert shadow["active"]["version"] == cand and [x["version"] for x in shadow["candidates"]] == [committed]
    finally:
        await lab.stop()
        await p.stop()
    # 6. the promotion survives a restart
    d.store.close()
    d2: Daemon = lab_daemon(tmp_path)
    try:
        assert d2.predictor is not None and d2.predictor.model is not None
        assert d2.predictor.model.version == cand and d2.predictor.model.card["kind"] == "residual_offset"
        assert d2.lab is not None and sorted(d2.lab.candidates) == [committed]  # the replaced one in shadow again
        async with client(d2) as c, client(d2, LEAD) as lead:
            rb = (await c.post("/api/v1/models/requests", json={"kind": "rollback", "reason": "test"})).json()
            assert rb["version"] == committed
            ok = (await lead.post(f"/api/v1/models/requests/{rb['id']}/approve")).json()
            assert ok["state"] == "applied" and d2.predictor.model.version == committed
    finally:
        d2.store.close()


async def test_a_new_candidate_catches_up_on_the_recorded_line_inputs(tmp_path: Path) -> None:
    """Lab results trickle in: the first half of a roll's segments, a retrain requested by hand (too few for the
    drift rule's min_n), then the second half, for segments that ran before the candidate existed. The candidate is
    run on the stored line inputs of those segments (a replay), so the later lab results compare it at once."""
    d = lab_daemon(tmp_path)
    p, lab = d.predictor, d.lab
    assert p is not None and lab is not None and p.model is not None
    committed = p.model.version
    await p.start()
    await lab.start()
    try:
        await replay(d, keep=lambda i: i < R1_ROWS)
        rows = lab_rows("R-0001")
        first, later = rows[:10], rows[10:]  # 5 segments x (porosity, thickness), then the rest
        async with client(d) as c, client(d, LEAD) as lead:
            rep = (await c.post("/api/v1/lab/results", json={"rows": first})).json()
            assert rep["stored"] == 10
            assert not (await c.get("/api/v1/lab/drift")).json()["drift_alert"]  # n = 5 < min_n
            assert (await c.get("/api/v1/models/requests")).json() == []
            req = (await c.post("/api/v1/models/requests", json={"kind": "retrain", "reason": "first lab results"})).json()
            done = (await lead.post(f"/api/v1/models/requests/{req['id']}/approve")).json()
            assert done["state"] == "applied"
            cand = done["version"]
            applied = (await c.get(f"/api/v1/models/requests/{req['id']}/audit")).json()[0]
            assert applied["kind"] == "model_retrain_applied" and applied["body"]["backfilled"] == p.count
            rep2 = (await c.post("/api/v1/lab/results", json={"rows": later})).json()
            assert rep2["stored"] == len(later)
            cmp = (await c.get("/api/v1/models/comparison")).json()
            pair = cmp["paired"][cand]["porosity"]
            assert pair["active"]["n"] == pair["candidate"]["n"] == len(later) // 2  # the fitted half left out
            assert pair["candidate"]["mae"] < pair["active"]["mae"]
            assert cmp["active"] == committed and p.model.version == committed
    finally:
        await lab.stop()
        await p.stop()
        d.store.close()
