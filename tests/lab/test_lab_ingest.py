"""Lab results in: a lab file with wrong units, unknown rolls, out-of-range values and duplicate rows gives dead
letters with reasons in the twin's store and changes no stored value twice (issue #19 acceptance); JSON rows with
unit conversion by pint; the write scope; the watched folder. The embedded store, the pipeline and the API are real;
the rolls are known from a replayed part of the recorded run."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.lab.conftest import client, lab_daemon, replay
from twin.daemon import Daemon

BAD_FILE = (
    "\ufeffroll_id;start_m;end_m;quantity;value;unit;sample_id\r\n"
    "R-0001;0;10;porosity_hg;31,25;%;A\r\n"              # 1 stored: 31.25 percent
    "R-0001;0;10;tortuosity_eis;3,4;;A\r\n"              # 2 stored: dimensionless
    "R-0001;10;20;porosity_hg;31,0;mm;A\r\n"             # 3 wrong unit: a length for a porosity
    "R-9999;0;10;porosity_hg;30,0;%;A\r\n"               # 4 unknown roll
    "R-0001;10;20;porosity_hg;130,0;%;A\r\n"             # 5 out of range
    "R-0001;0;10;porosity_hg;31,25;%;A\r\n"              # 6 duplicate of row 1 in the same file
    "R-0001;10;20;adhesion_peel;12,5;blorbs;A\r\n"      # 7 unknown unit
    "R-0001;10;20;porosity_hg;abc;%;A\r\n"               # 8 not a number
    "R-0001;20;30;viscosity;1,0;Pa*s;A\r\n"              # 9 not a lab quantity
).encode("utf-8")


async def _twin(tmp_path: Path, lab: str = "") -> Daemon:
    d = lab_daemon(tmp_path, predictor=False, lab=lab)
    await replay(d, keep=lambda i: i < 200, rows_per_batch=100)  # roll R-0001 is known to the twin
    return d


async def test_bad_lab_file_dead_letters_and_no_value_changed_twice(tmp_path: Path) -> None:
    d = await _twin(tmp_path)
    try:
        async with client(d) as c:
            r = await c.post("/api/v1/lab/results/csv", params={"name": "lims.csv"}, content=BAD_FILE,
                             headers={"Content-Type": "text/csv"})
            assert r.status_code == 200, r.text
            rep = r.json()
            assert rep["rows"] == 9 and rep["stored"] == 2 and rep["duplicates"] == 0 and rep["dead_letters"] == 7
            codes = {x["row"]: x["reason_code"] for x in rep["rejected"]}
            assert codes == {3: "unit_dimension", 4: "unknown_roll", 5: "out_of_range", 6: "duplicate_row",
                             7: "unknown_unit", 8: "wrong_type", 9: "unknown_quantity"}
            # the dead letters are in the twin's store, with their reasons and raw rows
            dl = (await c.get("/api/v1/dead-letters", params={"limit": 50})).json()
            items = dl["items"] if isinstance(dl, dict) else dl
            mine = [x for x in items if x["connector"] == "lab-file"]
            assert sorted(x["reason_code"] for x in mine) == sorted(codes.values())
            unknown = next(x for x in mine if x["reason_code"] == "unknown_roll")
            assert "R-9999" in unknown["reason"] and "R-9999" in unknown["payload"] and unknown["line_id"] == "pilot-1"
            stored = (await c.get("/api/v1/lab/results")).json()
            assert {(x["quantity"], x["value"], x["unit"]) for x in stored} == {
                ("porosity_hg", 31.25, "percent"), ("tortuosity_eis", 3.4, "dimensionless")}
            assert all(x["parameter"] in ("CalenderedPorosity", "TortuosityFactor") for x in stored)
            # linked by roll and web position to the process data of its segment (no predictor here)
            por = next(x for x in stored if x["quantity"] == "porosity_hg")
            detail = (await c.get(f"/api/v1/lab/results/{por['id']}")).json()
            gap = detail["process"]["calendering.gap_actual"]
            assert gap["n"] > 50 and detail["predictions"] == {}
            assert (await c.get("/api/v1/lab/results/999999")).status_code == 404

            # the same file again: the good rows are duplicates, counted and not stored again
            rep2 = (await c.post("/api/v1/lab/results/csv", content=BAD_FILE,
                                 headers={"Content-Type": "text/csv"})).json()
            assert rep2["stored"] == 0 and rep2["duplicates"] == 2 and rep2["dead_letters"] == 7
            # a changed value for a stored key is refused: a stored lab value is never changed
            changed = BAD_FILE.replace(b"R-0001;0;10;porosity_hg;31,25", b"R-0001;0;10;porosity_hg;35,00", 1)
            rep3 = (await c.post("/api/v1/lab/results/csv", content=changed,
                                 headers={"Content-Type": "text/csv"})).json()
            assert rep3["stored"] == 0 and {x["row"]: x["reason_code"] for x in rep3["rejected"]}[1] == \
                "conflicting_value"
            after = (await c.get("/api/v1/lab/results")).json()
            assert sorted((x["id"], x["value"]) for x in after) == sorted((x["id"], x["value"]) for x in stored)
            assert d.lab is not None and d.lab.store.count_results() == 2
            metrics = (await c.get("/metrics")).text
            assert 'twin_lab_rows_total{outcome="duplicate"} 3.0' in metrics  # 2 re-sent, 1 with the changed file
            assert 'twin_lab_dead_letters_total{reason_code="unknown_roll"} 3.0' in metrics
    finally:
        d.store.close()


async def test_json_rows_units_terms_and_write_scope(tmp_path: Path) -> None:
    d = await _twin(tmp_path)
    try:
        async with client(d) as c:
            q = (await c.get("/api/v1/lab/quantities")).json()
            by = {x["name"]: x for x in q}
            assert by["conductivity"]["parameter"] == "ElectronicConductivity" and by["conductivity"]["unit"] == "S/m"
            assert by["porosity_hg"]["iri"].endswith("#CalenderedPorosity") and by["porosity_hg"]["offline"]
            rows = [
                {"roll_id": "R-0001", "position_m": 5, "quantity": "porosity_hg", "value": 0.3125, "unit": "1"},
                {"roll_id": "R-0001", "start_m": 5, "end_m": 6, "quantity": "CalenderedCoatingThickness",
                 "value": 0.0712, "unit": "mm"},
                {"roll_id": "R-0001", "start_m": 5, "end_m": 6, "quantity": "conductivity", "value": 0.35,
                 "unit": "S/cm"},
                {"roll_id": "R-0001", "start_m": 5, "end_m": 6, "quantity": "areal_mass", "value": 21.9,
                 "unit": "mg/cm^2"},
                {"roll_id": "R-0001", "start_m": 5, "end_m": 6, "quantity": "porosity_hg", "value": 31.0},
            ]
            rep = (await c.post("/api/v1/lab/results", json={"rows": rows})).json()
            assert rep["stored"] == 4 and [x["reason_code"] for x in rep["rejected"]] == ["unknown_unit"], rep["rejected"]
            got = {x["quantity"]: x for x in (await c.get("/api/v1/lab/results")).json()}
            assert abs(got["porosity_hg"]["value"] - 31.25) < 1e-9 and got["porosity_hg"]["start_m"] == 5.0
            assert abs(got["thickness"]["value"] - 71.2) < 1e-9 and got["thickness"]["unit"] == "um"
            assert abs(got["conductivity"]["value"] - 35.0) < 1e-9
            r = await client(d, None).post("/api/v1/lab/results", json={"rows": rows})
            assert r.status_code == 401
            r = await client(d, "wrong").post("/api/v1/lab/results/csv", content=BAD_FILE)
            assert r.status_code == 401
    finally:
        d.store.close()


async def test_watched_folder_imports_and_moves_files(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    d = await _twin(tmp_path, lab=f'watch_dir = "{inbox}"\nwatch_interval_s = 0.05\n')
    assert d.lab is not None
    (inbox / "a.csv").write_bytes(BAD_FILE)
    (inbox / "notes.txt").write_text("not a lab file")
    await d.lab.start()
    try:
        for _ in range(200):
            if (inbox / "done").is_dir() and any((inbox / "done").iterdir()):
                break
            await asyncio.sleep(0.05)
        assert [p.name.split("-", 1)[1] for p in (inbox / "done").iterdir()] == ["a.csv"]
        assert (inbox / "notes.txt").exists()
        assert d.lab.store.count_results() == 2 and d.lab.counts["dead_letters"] == 7
        rows = d.lab.store.results()
        assert {r["origin"] for r in rows} == {"file:a.csv"} and {r["source"] for r in rows} == {"lab-folder"}
    finally:
        await d.lab.stop()
        d.store.close()


async def test_a_roll_must_be_known_in_the_configured_step(tmp_path: Path) -> None:
    d = await _twin(tmp_path, lab='step = "coating"\n')  # the recorded run's roll ids are calendering roll events
    try:
        async with client(d) as c:
            rows = [{"roll_id": "R-0001", "position_m": 1, "quantity": "thickness", "value": 70, "unit": "um"}]
            rep = (await c.post("/api/v1/lab/results", json={"rows": rows})).json()
            (rej,) = rep["rejected"]
            assert rep["stored"] == 0 and rej["reason_code"] == "unknown_roll" and "in coating" in rej["reason"]
    finally:
        d.store.close()
