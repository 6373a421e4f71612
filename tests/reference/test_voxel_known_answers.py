"""Known-answer checks of the voxel metric solvers (real taufactor, no mocks)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from surrogates.reference.voxel import (
    AM,
    CBD,
    PORE,
    VOID,
    VOXEL_UM,
    column_thickness,
    interface_face_counts,
    metrics,
    multiphase_conductivity,
    thickness_from_voxels,
    voxelize,
)

pytest.importorskip("taufactor")


def _channels(n=24, nz=40, width=4, pitch=8) -> np.ndarray:
    """AM block with straight square pore channels along z."""
    img = np.full((n, n, nz), AM, dtype=np.uint8)
    for i in range(0, n, pitch):
        for j in range(0, n, pitch):
            img[i : i + width, j : j + width, :] = PORE
    return img


def test_straight_channels_tortuosity_one_and_deff_equals_porosity():
    img = _channels()
    m = metrics(img, thickness=img.shape[2] * VOXEL_UM)
    assert m.porosity == pytest.approx(0.25, abs=1e-9)
    assert m.tortuosity_factor == pytest.approx(1.0, abs=0.01)
    assert m.d_eff == pytest.approx(m.porosity, rel=0.01)
    # the solid between the channels is straight too
    assert m.solid_tortuosity_factor == pytest.approx(1.0, abs=0.01)
    assert m.conductivity_eff == pytest.approx(0.75, rel=0.01)


def test_blocked_pore_phase_has_zero_diffusivity():
    img = _channels()
    img[:, :, 20] = AM  # a dense AM layer closes every channel
    m = metrics(img, thickness=img.shape[2] * VOXEL_UM)
    assert m.d_eff == 0.0
    assert math.isinf(m.tortuosity_factor)


def test_layers_in_series_harmonic_mean():
    img = np.zeros((8, 8, 40), dtype=np.uint8)
    img[:, :, 20:] = 1  # 50 % of the thickness at sigma = 0.1
    sigma = multiphase_conductivity(img, {0: 1.0, 1: 0.1})
    assert sigma == pytest.approx(1.0 / (0.5 / 1.0 + 0.5 / 0.1), rel=0.01)


def test_layers_in_parallel_arithmetic_mean():
    img = np.zeros((8, 8, 40), dtype=np.uint8)
    img[:2] = 1  # 25 % of the cross-section at sigma = 0.1
    sigma = multiphase_conductivity(img, {0: 1.0, 1: 0.1})
    assert sigma == pytest.approx(0.75 * 1.0 + 0.25 * 0.1, rel=0.01)


def test_contact_area_of_cubes():
    img = np.full((30, 30, 30), PORE, dtype=np.uint8)
    img[8:22, 8:22, 8:22] = CBD  # 14^3 CBD shell
    img[10:20, 10:20, 10:20] = AM  # 10^3 AM core
    faces = interface_face_counts(img)
    assert (PORE, AM) not in faces
    assert faces[(CBD, AM)] == 6 * 10 * 10
    assert faces[(PORE, CBD)] == 6 * 14 * 14
    m = metrics(img, thickness=30 * VOXEL_UM, transport=False)
    assert m.area_am_cbd_um2 == pytest.approx(600 * VOXEL_UM**2)
    assert m.area_pore_cbd_um2 == pytest.approx(1176 * VOXEL_UM**2)
    assert m.sa_am_cbd_per_um == pytest.approx(600 * VOXEL_UM**2 / (30**3 * VOXEL_UM**3))


def test_face_counting_agrees_with_taufactor():
    tau_metrics = pytest.importorskip("taufactor.metrics")
    rng = np.random.default_rng(3)
    img = rng.integers(0, 3, size=(12, 12, 12)).astype(np.uint8)
    ours = interface_face_counts(img, periodic_xy=False)
    theirs = tau_metrics.interfacial_areas(img, normalize=False, device="cpu")
    for pair, n in ours.items():
        assert theirs[pair] == pytest.approx(n)


def test_voxelized_sphere_volume_and_periodic_wrap():
    r = 4.0
    # sphere centred on the x boundary: half of it wraps around
    img = voxelize(np.array([[0.0, 10.0, 6.0]]), np.array([r]), np.array([1]), (20.0, 20.0), nz=50, thickness=16.0)
    vol = (img == AM).sum() * VOXEL_UM**3
    assert vol == pytest.approx(4 / 3 * math.pi * r**3, rel=0.03)
    assert (img[:5] == AM).any() and (img[-5:] == AM).any()
    # void above the electrode surface, pore below
    assert (img[:, :, 45] == VOID).all()
    assert (img[:, :, 0] != VOID).all()


def test_am_overrides_cbd_and_thickness():
    pos = np.array([[5.0, 5.0, 3.0], [5.0, 5.0, 3.0]])
    img = voxelize(pos, np.array([3.0, 3.0]), np.array([2, 1]), (10.0, 10.0), nz=20, thickness=6.0)
    assert (img == CBD).sum() == 0
    # square layer of touching unit spheres: mean column top = pi/4 + (2 pi / 3) / 4
    xs = np.arange(1.0, 10.0, 2.0)
    grid = np.array([[x, y, 1.0] for x in xs for y in xs])
    exact = math.pi / 4 + (2 * math.pi / 3) / 4
    assert column_thickness(grid, np.full(len(grid), 1.0), 10.0, grid=0.05) == pytest.approx(exact, abs=0.02)
    h = column_thickness(grid, np.full(len(grid), 1.0), 10.0)
    lay = voxelize(grid, np.full(len(grid), 1.0), np.full(len(grid), 1), (10.0, 10.0), nz=10, thickness=h)
    assert thickness_from_voxels(lay) == pytest.approx(h, abs=0.4)
