"""Voxelisation of sphere packings and microstructure metrics (seed 001 conventions).

Phases (uint8 labels, as seed 001): ``PORE = 0``, ``CBD = 1``, ``AM = 2``, ``VOID = 3`` (the
region above the electrode surface). Arrays are indexed ``[x, y, z]`` with z through the
thickness (z = 0 is the current collector); voxel edge 0.4 µm by default.

Metrics (:func:`metrics`):

* porosity of the electrode slab ``0 <= z < h`` (h = electrode thickness, see
  :func:`column_thickness`),
* through-plane tortuosity factor and relative effective diffusivity ``D_eff/D0 = eps/tau`` of
  the pore phase, from a steady-state diffusion solve with taufactor (periodic in x, y;
  Dirichlet at the current collector and at the top of the slab),
* relative effective electronic conductivity ``sigma_eff/sigma_solid`` of the solid network
  (AM + CBD treated as one conducting phase, the same solve on the solid voxels),
* contact (interfacial) surface areas pore–AM, pore–CBD, AM–CBD by face counting, in µm² and
  per electrode volume (µm²/µm³ = 1/µm; multiply by 1e6 for m²/m³).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

PORE, CBD, AM, VOID = 0, 1, 2, 3
PHASES = {"pore": PORE, "cbd": CBD, "am": AM, "void": VOID}
VOXEL_UM = 0.4


# --------------------------------------------------------------------------------------------
# Voxelisation
# --------------------------------------------------------------------------------------------


def voxelize(
    positions: np.ndarray,
    radii: np.ndarray,
    types: np.ndarray,
    box_xy: tuple[float, float],
    nz: int | None = None,
    voxel: float = VOXEL_UM,
    thickness: float | None = None,
    am_type: int = 1,
) -> np.ndarray:
    """Label a periodic (x, y) sphere packing on a voxel grid.

    A voxel belongs to a particle when its centre lies inside the sphere; AM overrides CBD.
    Voxels above the electrode surface (z >= ``thickness``, default the mean column height)
    that are not solid are labelled VOID.
    """
    pos = np.asarray(positions, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    nx = int(round(box_xy[0] / voxel))
    ny = int(round(box_xy[1] / voxel))
    if nz is None:
        nz = int(math.ceil((pos[:, 2] + radii).max() / voxel)) + 1
    img = np.zeros((nx, ny, nz), dtype=np.uint8)
    centres = (np.arange(max(nx, ny, nz)) + 0.5) * voxel
    # CBD first, AM second so AM wins where they overlap
    order = np.argsort(types == am_type, kind="stable")
    for i in order:
        x, y, z = pos[i]
        r = radii[i]
        label = AM if types[i] == am_type else CBD
        i0, i1 = int(math.floor((x - r) / voxel)), int(math.ceil((x + r) / voxel))
        j0, j1 = int(math.floor((y - r) / voxel)), int(math.ceil((y + r) / voxel))
        k0, k1 = max(0, int(math.floor((z - r) / voxel))), min(nz, int(math.ceil((z + r) / voxel)))
        if k1 <= k0:
            continue
        ii = np.arange(i0, i1)
        jj = np.arange(j0, j1)
        kk = np.arange(k0, k1)
        dx = (ii + 0.5) * voxel - x
        dy = (jj + 0.5) * voxel - y
        dz = centres[kk] - z
        inside = (dx[:, None, None] ** 2 + dy[None, :, None] ** 2 + dz[None, None, :] ** 2) <= r * r
        if not inside.any():
            continue
        sub = img[np.ix_(ii % nx, jj % ny, kk)]
        sub[inside] = label
        img[np.ix_(ii % nx, jj % ny, kk)] = sub
    if thickness is None:
        thickness = thickness_from_voxels(img, voxel)
    k_top = int(round(thickness / voxel))
    top = img[:, :, k_top:]
    top[top == PORE] = VOID
    return img


def column_thickness(positions: np.ndarray, radii: np.ndarray, box_xy: float, grid: float = VOXEL_UM) -> float:
    """Electrode thickness = mean over (x, y) columns of the highest solid point (profilometer-like)."""
    pos = np.asarray(positions, dtype=np.float64)
    r = np.asarray(radii, dtype=np.float64)
    n = int(round(box_xy / grid))
    c = (np.arange(n) + 0.5) * grid
    top = np.zeros((n, n))
    for shift_x in (-box_xy, 0.0, box_xy):
        for shift_y in (-box_xy, 0.0, box_xy):
            px = pos[:, 0] + shift_x
            py = pos[:, 1] + shift_y
            sel = (px + r > 0) & (px - r < box_xy) & (py + r > 0) & (py - r < box_xy)
            for x, y, z, rr in zip(px[sel], py[sel], pos[sel, 2], r[sel]):
                i0, i1 = max(0, int((x - rr) / grid)), min(n, int(math.ceil((x + rr) / grid)))
                j0, j1 = max(0, int((y - rr) / grid)), min(n, int(math.ceil((y + rr) / grid)))
                if i1 <= i0 or j1 <= j0:
                    continue
                d2 = (c[i0:i1, None] - x) ** 2 + (c[None, j0:j1] - y) ** 2
                h = np.where(d2 <= rr * rr, z + np.sqrt(np.clip(rr * rr - d2, 0, None)), 0.0)
                np.maximum(top[i0:i1, j0:j1], h, out=top[i0:i1, j0:j1])
    return float(top.mean())


def thickness_from_voxels(img: np.ndarray, voxel: float = VOXEL_UM) -> float:
    """Mean column height of the solid phases (voxel version of :func:`column_thickness`)."""
    solid = (img == AM) | (img == CBD)
    nz = img.shape[2]
    has = solid.any(axis=2)
    top = nz - np.argmax(solid[:, :, ::-1], axis=2)
    top = np.where(has, top, 0)
    return float(top.mean() * voxel)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def interface_face_counts(img: np.ndarray, periodic_xy: bool = True) -> dict[tuple[int, int], int]:
    """Number of voxel faces shared by each unordered pair of different labels."""
    counts: dict[tuple[int, int], int] = {}
    a = img.astype(np.int16)

    def add(u: np.ndarray, v: np.ndarray) -> None:
        m = u != v
        if not m.any():
            return
        lo = np.minimum(u[m], v[m])
        hi = np.maximum(u[m], v[m])
        key = lo * 16 + hi
        vals, cnt = np.unique(key, return_counts=True)
        for k, c in zip(vals, cnt):
            pair = (int(k // 16), int(k % 16))
            counts[pair] = counts.get(pair, 0) + int(c)

    add(a[:-1], a[1:])
    add(a[:, :-1], a[:, 1:])
    add(a[:, :, :-1], a[:, :, 1:])
    if periodic_xy:
        add(a[-1:], a[:1])
        add(a[:, -1:], a[:, :1])
    return counts


def _solve_through_z(mask: np.ndarray, periodic_xy: bool = True, conv_crit: float = 1e-2, iter_limit: int = 20000):
    """taufactor diffusion solve along z on a binary mask [x, y, z]; returns (tau, D_rel, vf)."""
    import taufactor as tau

    vf = float(mask.mean())
    if vf == 0.0:
        return math.inf, 0.0, 0.0
    if vf == 1.0:
        return 1.0, 1.0, 1.0
    img = np.ascontiguousarray(np.transpose(mask.astype(np.uint8), (2, 0, 1)))  # flux along axis 0
    # percolation check: a connected path from bottom to top is needed
    from scipy import ndimage

    lab, _ = ndimage.label(img)
    spanning = np.intersect1d(np.unique(lab[0][lab[0] > 0]), np.unique(lab[-1][lab[-1] > 0]))
    if spanning.size == 0:
        return math.inf, 0.0, vf
    cls = tau.PeriodicSolver if periodic_xy else tau.Solver
    s = cls(img, device="cpu")
    s.solve(verbose=False, conv_crit=conv_crit, iter_limit=iter_limit)
    d_rel = float(np.asarray(s.D_rel).ravel()[0])
    t = float(np.asarray(s.tau).ravel()[0])
    return t, d_rel, vf


@dataclass
class Metrics:
    thickness_um: float
    porosity: float
    tortuosity_factor: float
    d_eff: float  # D_eff / D0 = eps / tau (pore phase)
    conductivity_eff: float  # sigma_eff / sigma_solid of the AM+CBD network
    solid_tortuosity_factor: float
    am_fraction_vol: float
    cbd_fraction_vol: float
    area_pore_am_um2: float
    area_pore_cbd_um2: float
    area_am_cbd_um2: float
    sa_pore_am_per_um: float  # um^2 / um^3 of electrode
    sa_pore_cbd_per_um: float
    sa_am_cbd_per_um: float
    solve_time_s: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def metrics(img: np.ndarray, voxel: float = VOXEL_UM, thickness: float | None = None,
            transport: bool = True, periodic_xy: bool = True) -> Metrics:
    """All voxel metrics of one labelled microstructure [x, y, z]."""
    t0 = time.perf_counter()
    if thickness is None:
        thickness = thickness_from_voxels(img, voxel)
    k = max(1, min(img.shape[2], int(round(thickness / voxel))))
    slab = img[:, :, :k].copy()
    slab[slab == VOID] = PORE
    n = slab.size
    solid = (slab == AM) | (slab == CBD)
    porosity = 1.0 - float(solid.mean())
    faces = interface_face_counts(slab, periodic_xy=periodic_xy)
    fa = voxel * voxel
    vol = n * voxel**3
    a_pa = faces.get((PORE, AM), 0) * fa
    a_pc = faces.get((PORE, CBD), 0) * fa
    a_ac = faces.get((CBD, AM), 0) * fa
    if transport:
        tau_p, d_rel, _ = _solve_through_z(slab == PORE, periodic_xy)
        tau_s, s_rel, _ = _solve_through_z(solid, periodic_xy)
    else:
        tau_p = d_rel = tau_s = s_rel = float("nan")
    return Metrics(
        thickness_um=float(thickness),
        porosity=porosity,
        tortuosity_factor=tau_p,
        d_eff=d_rel,
        conductivity_eff=s_rel,
        solid_tortuosity_factor=tau_s,
        am_fraction_vol=float((slab == AM).mean()),
        cbd_fraction_vol=float((slab == CBD).mean()),
        area_pore_am_um2=a_pa,
        area_pore_cbd_um2=a_pc,
        area_am_cbd_um2=a_ac,
        sa_pore_am_per_um=a_pa / vol,
        sa_pore_cbd_per_um=a_pc / vol,
        sa_am_cbd_per_um=a_ac / vol,
        solve_time_s=time.perf_counter() - t0,
    )


def multiphase_conductivity(img: np.ndarray, cond: dict[int, float], conv_crit: float = 1e-3,
                            iter_limit: int = 50000) -> float:
    """Effective through-plane (z) conductivity of a labelled image [x, y, z] with per-label
    conductivities (labels missing from ``cond`` are insulating), via taufactor's
    MultiPhaseSolver. Returns sigma_eff in the units of ``cond``. Used for the known-answer
    checks (series / parallel layers) and for AM/CBD networks with different conductivities."""
    import taufactor as tau

    lab = np.zeros(img.shape, dtype=np.int64)
    c = {}
    for i, (label, sigma) in enumerate(sorted(cond.items()), start=1):
        lab[img == label] = i
        c[i] = float(sigma)
    lab = np.ascontiguousarray(np.transpose(lab, (2, 0, 1)))
    s = tau.MultiPhaseSolver(lab, cond=c, device="cpu")
    s.solve(verbose=False, conv_crit=conv_crit, iter_limit=iter_limit)
    return float(np.asarray(s.D_eff).ravel()[0])
