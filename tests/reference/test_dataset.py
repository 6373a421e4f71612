"""Sobol design, resumable generation (tiny real runs), the committed data set and its loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from surrogates.reference import dataset as ds

COMMITTED = ds.DEFAULT_DIR


def test_sobol_design_within_ranges_and_replicates():
    rows = ds.full_design(160)
    sob = [r for r in rows if r["design"] == "sobol"]
    assert len(sob) == 160
    for k, (lo, hi, *_rest) in ds.DESIGN_RANGES.items():
        x = np.array([r[k] for r in sob])
        assert x.min() >= lo and x.max() <= hi
        # space filling: every quarter of every range is populated
        assert np.all(np.histogram(x, bins=4, range=(lo, hi))[0] > 20)
    reps = [r for r in rows if r["design"] == "replicate"]
    assert len(reps) == ds.N_REPLICATE_POINTS * len(ds.REPLICATE_SEEDS)
    base = {r["run_id"]: r for r in rows if r["design"] in ("sobol", "centre")}
    for r in reps:
        b = base[r["replicate_of"]]
        assert all(r[k] == b[k] for k in ds.INPUTS) and r["seed"] != b["seed"]
    assert len({r["run_id"] for r in rows}) == len(rows)


def _tiny_rows(n: int) -> list[dict]:
    """Small boxes (20 um footprint, ~300 particles) at a moderate compaction: a few seconds each."""
    rows = ds.sobol_design(n)
    for r in rows:
        r.update(footprint_um=20.0, initial_thickness_um=30.0, initial_porosity=0.45, am_fraction=0.95,
                 release_frames=4, compaction_degree=0.3, roll_temperature_C=40.0)
    return rows


def test_generate_is_resumable_and_loads(tmp_path):
    rows = _tiny_rows(2)
    seen = []
    table = ds.generate(out=tmp_path, rows=rows, workers=1, frames_subset=1, progress=False,
                        on_result=lambda r: seen.append(r["run_id"]), command="test")
    assert sorted(seen) == ["s0000", "s0001"]
    data = ds.load_dataset(table)
    assert len(data["run_id"]) == 2
    for col in ("porosity", "tortuosity_factor", "d_eff", "springback_pct", "line_load_N_per_mm",
                "sa_pore_am_per_um", "seed", "replicate_of"):
        assert col in data
    assert np.all((data["porosity"] > 0.1) & (data["porosity"] < 0.7))
    assert data["valid"].all() and np.all(data["lost_particles"] == 0)
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["versions"]["lammps"].isdigit() and prov["command"] == "test"
    assert len(list((tmp_path / "frames").glob("*.npz"))) == 1
    series = ds.load_time_series(path=tmp_path / "frames")
    assert series["voxels"].ndim == 4 and series["voxels"].shape[0] == len(series["phase"])
    # second call: nothing left to do, also when the per-run files are gone (table only)
    import shutil

    shutil.rmtree(tmp_path / "runs")
    seen.clear()
    ds.generate(out=tmp_path, rows=rows, workers=1, frames_subset=0, progress=False,
                on_result=lambda r: seen.append(r["run_id"]))
    assert seen == []
    # a failed run is recorded with its error and retried on resume
    bad = dict(rows[0], run_id="bad0", initial_porosity=1.5)
    ds.generate(out=tmp_path, rows=[bad], workers=1, frames_subset=0, progress=False)
    assert "error" in json.loads((tmp_path / "runs" / "bad0.json").read_text())
    assert len(ds.load_dataset(tmp_path)["run_id"]) == 2


@pytest.mark.skipif(not (COMMITTED / ds.TABLE_NAME).exists(), reason="committed data set not generated yet")
def test_committed_dataset():
    data = ds.load_dataset()
    n = len(data["run_id"])
    assert n >= 150
    sob = data["design"] == "sobol"
    assert sob.sum() >= 150
    for k, (lo, hi, *_r) in ds.DESIGN_RANGES.items():
        x = data[k][sob]
        span = hi - lo
        assert x.min() < lo + 0.05 * span and x.max() > hi - 0.05 * span
    reps = data["replicate_of"] != ""
    assert reps.sum() >= 10
    for col in ("thickness_before_um", "thickness_max_um", "thickness_after_um", "springback_pct",
                "max_pressure_MPa", "line_load_N_per_mm", "porosity", "tortuosity_factor", "d_eff",
                "conductivity_eff", "sa_pore_am_per_um", "sa_pore_cbd_per_um", "sa_am_cbd_per_um"):
        assert np.all(np.isfinite(data[col])), col
    assert np.all(data["thickness_max_um"] < data["thickness_before_um"])
    sheet = (COMMITTED / "datasheet.md").read_text()
    assert "twin surrogates generate" in sheet and "Provenance" in sheet
    frames = list((COMMITTED / "frames").glob("*.npz"))
    assert 1 <= len(frames) <= 5
    total = sum(f.stat().st_size for f in COMMITTED.rglob("*") if f.is_file() and "runs" not in f.parts)
    assert total < 20e6


def test_v2_design_has_no_wall_speed_and_a_replicated_centre_sweep():
    rows = ds.full_design(64, replicate_points=4, model="v2")
    assert "wall_speed_mm_s" not in ds.DESIGN_RANGES_V2
    assert all("wall_speed_mm_s" not in r for r in rows)
    sweep = [r for r in rows if r["design"] == "sweep"]
    assert sorted({r["compaction_degree"] for r in sweep}) == list(ds.CENTRE_SWEEP_CD)
    assert len({r["seed"] for r in sweep}) >= 3
    assert len({r["run_id"] for r in rows}) == len(rows)
    with pytest.raises(ValueError):
        ds.design_ranges("v3")


def test_v2_generation_records_model_cpu_and_position_frames(tmp_path):
    """One tiny real v2 (mdr) run through the generator: provenance names the model, its protocol and the
    CPU time; a frame series stored as positions is voxelised on load; a second call resumes (nothing to do)."""
    rows = ds.sobol_design(1, model="v2")
    rows[0].update(footprint_um=20.0, initial_thickness_um=30.0, initial_porosity=0.45, am_fraction=0.95,
                   compaction_degree=0.3, roll_temperature_C=40.0)
    table = ds.generate(out=tmp_path, rows=rows, workers=1, frames_subset=1, progress=False, model="v2",
                        command="test v2")
    data = ds.load_dataset(table)
    assert list(data["reference_model"]) == ["v2"]
    assert data["wall_speed_mm_s"][0] == ds.V2_PROTOCOL["wall_speed_mm_s"]
    assert 0.15 < data["porosity"][0] < data["porosity_before"][0]
    assert data["cpu_s"][0] > 0
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["reference_model"] == "v2" and prov["contact_v2"]["stress_scale"] == ds.V2_CONTACT["stress_scale"]
    assert prov["cpu_hours_total"] > 0 and prov["invocations"][-1]["command"] == "test v2"
    f = next((tmp_path / "frames").glob("*.npz"))
    with np.load(f) as z:
        assert "voxels" not in z.files and "positions" in z.files
    series = ds.load_time_series(path=tmp_path / "frames")
    assert series["voxels"].ndim == 4 and series["voxels"].shape[0] == len(series["phase"])
    assert series["porosity"][-1] == pytest.approx(data["porosity"][0], abs=0.02)
    seen: list[str] = []
    ds.generate(out=tmp_path, rows=rows, workers=1, frames_subset=0, progress=False, model="v2",
                on_result=lambda r: seen.append(r["run_id"]), command="resume")
    assert seen == []
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert [i["command"] for i in prov["invocations"]] == ["test v2", "resume"]


def test_v2_design_order_and_replicates_inside_the_domain():
    """v2 runs a first complete training set early (Sobol prefix, replicates, light compaction), and replicates
    points whose gap stays well inside the domain."""
    rows = ds.full_design(256, replicate_points=6, model="v2")
    kinds = [r["design"] for r in rows]
    first_rep = kinds.index("replicate")
    assert kinds[:first_rep].count("sobol") == ds.V2_FIRST_SOBOL
    assert kinds.index("lowcd") > first_rep and "sobol" in kinds[kinds.index("lowcd"):]
    reps = [r for r in rows if r["design"] == "replicate"]
    assert {r["seed"] for r in reps} == set(ds.REPLICATE_SEEDS_V2) and len(reps) == 6 * len(ds.REPLICATE_SEEDS_V2)
    assert all(r["compaction_degree"] <= ds.REPLICATE_CD_MAX_V2 for r in reps)


def test_gap_solid_fraction_definition():
    # 50 um target at 0.5 porosity = 25 um of solid; packed to 50 um and pressed into a 25 um gap: full density
    assert ds.gap_solid_fraction(50.0, 0.5, 50.0, 0.5) == pytest.approx(1.0)
    assert ds.gap_solid_fraction(50.0, 0.5, 50.0, 0.3) == pytest.approx(25.0 / 35.0)
    v = ds.gap_solid_fraction(np.array([50.0, 40.0]), np.array([0.5, 0.4]), np.array([52.0, 45.0]), 0.2)
    assert v.shape == (2,) and np.all(v < 1)


def test_v2_out_of_domain_point_stops_after_packing_and_is_not_retried(tmp_path):
    """A gap thinner than the layer's full-density thickness is recorded as out of domain once the layer is
    packed (no calendering), counts as finished (a resumed generation does not retry it) and is left out of the
    loaded data set unless asked for."""
    rows = ds.sobol_design(2, model="v2")
    tiny = dict(footprint_um=20.0, initial_thickness_um=30.0, initial_porosity=0.45, am_fraction=0.95,
                roll_temperature_C=40.0)
    rows[0].update(tiny, compaction_degree=0.3)
    rows[1].update(tiny, compaction_degree=0.62)  # the packed layer near 0.5 porosity cannot be pressed that far
    table = ds.generate(out=tmp_path, rows=rows, workers=1, frames_subset=0, progress=False, model="v2",
                        command="test ood")
    ood = json.loads((tmp_path / "runs" / f"{rows[1]['run_id']}.json").read_text())
    assert ood["in_domain"] is False and ood["valid"] is False and "error" not in ood
    assert ood["gap_solid_fraction"] > ds.GAP_SOLID_FRACTION_MAX and "full-density" in ood["out_of_domain"]
    assert "porosity" not in ood and ood["cpu_s"] > 0
    data = ds.load_dataset(table)
    assert list(data["run_id"]) == [rows[0]["run_id"]] and bool(data["in_domain"][0])
    assert data["gap_solid_fraction"][0] <= ds.GAP_SOLID_FRACTION_MAX
    everything = ds.load_dataset(table, valid_only=False)
    assert sorted(everything["run_id"]) == sorted(r["run_id"] for r in rows)
    seen: list[str] = []
    ds.generate(out=tmp_path, rows=rows, workers=1, frames_subset=0, progress=False, model="v2",
                on_result=lambda r: seen.append(r["run_id"]), command="resume")
    assert seen == []


def test_a_failing_run_is_retried_once_then_given_up_and_listed(tmp_path):
    """A run that fails is recorded with its error, retried by the next resumed generation, and given up after
    MAX_ATTEMPTS (never retried forever); provenance lists it."""
    rows = ds.sobol_design(1, model="v2")
    del rows[0]["initial_porosity"]  # fails at once (no DEM needed to show the bookkeeping)
    seen: list[dict] = []
    for k in range(ds.MAX_ATTEMPTS + 1):
        ds.generate(out=tmp_path, rows=rows, workers=1, frames_subset=0, progress=False, model="v2",
                    on_result=seen.append, command=f"attempt {k}")
    assert len(seen) == ds.MAX_ATTEMPTS and all("error" in r for r in seen)
    assert [r["attempts"] for r in seen] == list(range(1, ds.MAX_ATTEMPTS + 1))
    rec = json.loads((tmp_path / "runs" / f"{rows[0]['run_id']}.json").read_text())
    assert rec["attempts"] == ds.MAX_ATTEMPTS and "initial_porosity" in rec["error"]
    assert ds._failed_runs(tmp_path)[rows[0]["run_id"]]["attempts"] == ds.MAX_ATTEMPTS


@pytest.mark.slow  # three tiny DEM runs (about a minute); the two-stage protocol is off in V2_PROTOCOL (§7.15)
def test_two_stage_protocol_reruns_dense_one_speed_runs_and_keeps_the_old_record(tmp_path, monkeypatch):
    """Switching the data set to the two-stage compression (docs/physics.md §7.15): a resumed generation runs
    again only the in-domain points whose gap solid fraction is above the switch, keeps their one-speed records in
    runs_one_speed/ (the rate bias over the domain) and counts their CPU in provenance; lighter points stay."""
    rows = ds.sobol_design(2, model="v2")
    tiny = dict(footprint_um=20.0, initial_thickness_um=30.0, initial_porosity=0.45, am_fraction=0.95,
                roll_temperature_C=40.0)
    rows[0].update(tiny, compaction_degree=0.15)  # gap solid fraction ~0.65: never slowed
    rows[1].update(tiny, compaction_degree=0.40)  # ~0.9: slowed for the last part of the stroke
    monkeypatch.setitem(ds.V2_PROTOCOL, "slow_from_solid_fraction", 0.0)
    ds.generate(out=tmp_path, rows=rows, workers=1, frames_subset=0, progress=False, model="v2", command="one speed")
    first = {r["run_id"]: json.loads((tmp_path / "runs" / f"{r['run_id']}.json").read_text()) for r in rows}
    assert all("slow_travel_um" not in d for d in first.values())
    phi = {k: d["gap_solid_fraction"] for k, d in first.items()}
    assert phi[rows[0]["run_id"]] < 0.8 < phi[rows[1]["run_id"]] <= ds.GAP_SOLID_FRACTION_MAX
    table_before = ds.write_table(tmp_path)
    monkeypatch.setitem(ds.V2_PROTOCOL, "slow_from_solid_fraction", 0.8)
    monkeypatch.setitem(ds.V2_PROTOCOL, "slow_speed_factor", 0.25)
    assert ds._finished_ids(tmp_path) == {rows[0]["run_id"]}  # the table's dense row is stale too
    seen: list[dict] = []
    ds.generate(out=tmp_path, rows=rows, workers=1, frames_subset=0, progress=False, model="v2",
                on_result=seen.append, command="two stage")
    assert [r["run_id"] for r in seen] == [rows[1]["run_id"]]
    new = seen[0]
    assert new["slow_travel_um"] > 0.5 and new["slow_speed_mm_s"] == pytest.approx(0.25 * ds.V2_PROTOCOL["wall_speed_mm_s"])
    assert new["dem_steps"] > first[rows[1]["run_id"]]["dem_steps"]
    old = json.loads((tmp_path / "runs_one_speed" / f"{rows[1]['run_id']}.json").read_text())
    assert old == first[rows[1]["run_id"]]
    data = ds.load_dataset(table_before)
    assert sorted(data["run_id"]) == sorted(r["run_id"] for r in rows)
    assert data["slow_travel_um"][list(data["run_id"]).index(rows[1]["run_id"])] == pytest.approx(new["slow_travel_um"])
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["superseded_one_speed_runs"] == 1 and prov["cpu_hours_superseded"] > 0
