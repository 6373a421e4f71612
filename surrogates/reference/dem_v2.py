"""Reference v2 contact law: elastic-plastic (LAMMPS ``mdr``) calendering DEM (issue #16, groundwork).

Same geometry, packing, drying consolidation, compression/hold/release protocol, outputs and line-load
definition as :mod:`dem` (v1, unchanged and still reproducible); only the contact law differs:

* normal: ``mdr`` (Zunker & Kamrin 2024, mechanically derived contact of adhesive elastic-perfectly
  plastic spheres up to large deformation, with plastic incompressibility through an apparent
  radius and a bulk elastic response at high confinement). LAMMPS allows ONE mdr material per pair
  style and the walls must use the same E, nu, Y, psi_b, damping, so AM and CBD are one *effective*
  material here (the CBD particles keep their size, density and phase label for the voxel metrics);
  the roll temperature enters through the effective yield stress Y(T) (PVDF softening).
* damping: ``damping mdr 1`` (the only damping class mdr accepts) plus the v1 background drag.
* tangential: ``linear_history`` (static friction: elastic tangential spring with Coulomb cap).
* rolling: ``sds`` rolling resistance.
* walls: ``fix wall/gran/region`` with the same mdr law for the current collector (plane z = 0) and
  the roll (mdr does not support ``fix wall/gran``); zero wall adhesion.

Needs ``atom_style sphere 1`` (dynamic radii) and ``newton off``. See docs/physics.md, "Reference v2".
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .dem import AM_TYPE, CBD_TYPE, DEMParams, DEMResult, _Sim, run_calendering

CONTACT_V2_SOURCES = {
    "E_GPa": "effective modulus of the AM + CBD solid: NMC secondary particles 5-30 GPa (v1 value 10 GPa kept)",
    "yield_MPa": "effective yield stress of the AM + CBD solid, a calibration parameter (mdr doc: free parameter "
    "for materials without a tabulated yield stress); NMC agglomerate crushing / CBD flow 50-500 MPa",
    "yield_T_scale_K": "PVDF softening with roll temperature (v1: modulus exp(-(T-25)/62 K)); applied to the "
    "binder share of the effective yield: Y(T) = Y25 (f_am + (1 - f_am) exp(-(T-25)/62 K)) with f_am = 0.7",
    "surface_energy_mJ_m2": "effective surface energy 300 mJ/m2 (mdr input; K_Ic = sqrt(2 gamma E/(1-nu^2)) = "
    "0.08 MPa m^0.5, a weak binder-bridged aggregate; v1's JKR CBD value was 40 mJ/m2)",
    "psi_b": "critical confinement ratio 0.5 (mdr doc / example default)",
    "friction": "sliding friction 0.3 (oxide powders 0.3-0.6), static through linear_history",
    "rolling_friction": "rolling resistance 0.1 (typical for rough oxide/carbon aggregates 0.05-0.3)",
}


@dataclass(frozen=True)
class ContactV2:
    E_GPa: float = 10.0
    poisson: float = 0.3
    yield_MPa: float = 300.0
    yield_am_share: float = 0.7  # share of the effective yield stress that does not soften with T
    yield_T_scale_K: float = 62.0
    surface_energy_mJ_m2: float = 300.0  # K_Ic = sqrt(2 gamma E / (1 - nu^2)) = 0.08 MPa m^0.5
    wall_surface_energy_mJ_m2: float = 0.0
    psi_b: float = 0.5
    damp: float = 0.2  # mdr normal damping coefficient eta_n0 (damping mdr 1)
    friction: float = 0.3
    kt_factor: float = 2.0 / 7.0  # k_t = kt_factor * E * R_ref (LAMMPS mdr example)
    rolling_friction: float = 0.1
    dt_safety: float = 0.08  # of sqrt(m_min / (kappa R_min)) (mdr doc's conservative bulk-elastic step)
    # multiplies E, Y and the surface energy (every stress of the contact law) AND the mass scaling: the
    # trajectories are unchanged (same time step, same inertial number), every force and pressure is x k.
    # It sets the stress level of the effective solid (calibrated to the line loads) at no CPU cost.
    stress_scale: float = 1.0

    def yield_MPa_at(self, T_C: float) -> float:
        soft = math.exp(-(T_C - 25.0) / self.yield_T_scale_K)
        return self.yield_MPa * (self.yield_am_share + (1.0 - self.yield_am_share) * soft)


@dataclass(frozen=True)
class DEMParamsV2(DEMParams):
    contact: ContactV2 = field(default_factory=ContactV2)
    drag_release_us: float = 30.0  # background drag while unloading (the servo release holds the layer)
    v2_rest_us: float = 50.0
    release_speed_mm_s: float = 5.0  # wall retraction speed; 0 = the compression speed (as v1)
    # relaxation after release continues (chunks of relax_chunk_us, extra "relax" frames) until the column
    # thickness changes by less than relax_tol_um per chunk, at most relax_max_us; 0 = fixed frames as v1
    relax_tol_um: float = 0.0
    relax_chunk_us: float = 200.0
    relax_max_us: float = 4000.0
    # protocol durations independent of the wall speed (0 = v1's rule: a number of compression frame intervals)
    hold_us: float = 20.0
    relax_us: float = 0.5
    release_frames: int = 1
    # "wall": the wall retracts at release_speed to its start (v1); "servo": it retracts at release_speed only
    # while it carries load, and once it has been free over release_free_um of travel it leaves quickly
    release_mode: str = "servo"
    release_free_um: float = 0.5
    # servo only: > 0 ends the release once the wall pressure falls below this (MPa), the contact-loss point of
    # a quasi-static unloading; the layer's state there is the released state (see docs/physics.md §7)
    release_end_MPa: float = 0.5
    # at p_end the wall stops for release_wait_us; if the still-expanding layer pushes it above p_end again, the
    # release continues (at most release_wait_max_us of waiting): the wall cannot outrun a slow recovery
    release_wait_us: float = 0.0
    release_wait_max_us: float = 2000.0
    release_chunk_um: float = 0.02
    # two-stage compression (docs/physics.md §7.13, §7.15): the wall moves at wall_speed_mm_s until the layer's
    # solid fraction under it (h_solid / wall height, h_solid = h0 (1 - eps0) as in dataset.gap_solid_fraction)
    # reaches slow_from_solid_fraction, then at slow_speed_factor of it to the gap; 0 = one speed (as before).
    # Frames keep the same spacing in wall travel through both stages.
    slow_from_solid_fraction: float = 0.0
    slow_speed_factor: float = 0.25


class _SimV2(_Sim):
    """v1 simulation with the mdr contact law (see module docstring)."""

    p: DEMParamsV2  # run_calendering_v2 builds it with DEMParamsV2 only

    def build(self) -> None:
        """Dried electrode from the v1 model (same seed -> the identical dried layer as v1), then a fresh
        LAMMPS instance with the mdr law takes the particles over at rest.

        Why: the drying consolidation relies on JKR adhesion to hold the loose network (v1, §1);
        with mdr (40-200 mJ/m2, rolling resistance 0.1-0.3) the layer settled 6-16 % below its
        target thickness and yielded already (radius growth p95 5 %), and the consolidation at the
        mdr time step cost 31 s of a 34 s small run (measured). Reusing v1's dried layer keeps the
        incoming structure identical between v1 and v2, so differences are the contact law's."""
        import dataclasses

        p, m = self.p, self.m
        c: ContactV2 = p.contact
        v1 = _Sim(dataclasses.replace(p, dt_safety=0.15))
        try:
            v1.build()
            self.h_dried_v1 = v1.settle()
            pos = v1.positions()
            radii, types = v1.radius.copy(), v1.ptype.copy()
            self.v1_steps = v1.step
        finally:
            v1.close()
        L = p.footprint_um
        n = len(radii)
        self.n, self.radius, self.ptype = n, radii, types
        self.radius0 = radii.copy()
        self.z_box = float(max(v1.z_box, pos[:, 2].max() + radii.max() + 5.0))
        S = p.mass_scale * c.stress_scale
        self.mass_scale_eff = S
        nu = c.poisson
        E = c.E_GPa * 1e6 * c.stress_scale  # kPa
        self.E_am = E
        kappa = E / (3 * (1 - 2 * nu))

        def t_bulk(r, rho):
            mass = rho * 4.0 / 3.0 * math.pi * r**3
            return math.sqrt(mass / (kappa * r))

        r_am_min = float(radii[types == AM_TYPE].min())
        r_cbd_min = float(radii[types == CBD_TYPE].min()) if (types == CBD_TYPE).any() else r_am_min
        t_am = t_bulk(r_am_min, m.rho_am * S)
        self.cbd_extra_scale = max(1.0, (t_am / t_bulk(r_cbd_min, m.rho_cbd * S)) ** 2)
        self.dt = c.dt_safety * t_am * (p.dt_safety / 0.15)  # p.dt_safety scales the step (0.15 = nominal)
        dens = {AM_TYPE: m.rho_am * S, CBD_TYPE: m.rho_cbd * S * self.cbd_extra_scale}
        fd, path = tempfile.mkstemp(suffix=".data", prefix="dem2_")
        with os.fdopen(fd, "w") as f:
            f.write(f"dem calendering v2\n\n{n} atoms\n2 atom types\n")
            f.write(f"0 {L} xlo xhi\n0 {L} ylo yhi\n-1.0 {self.z_box} zlo zhi\n\nAtoms # sphere\n\n")
            for i in range(n):
                f.write(f"{i + 1} {types[i]} {2 * radii[i]:.6f} {dens[types[i]]:.6g} "
                        f"{pos[i, 0]:.6f} {pos[i, 1]:.6f} {max(pos[i, 2], radii[i]):.6f}\n")
        mass = {1: dens[AM_TYPE] * math.pi / 6 * m.d50_am_um**3,
                2: dens[CBD_TYPE] * math.pi / 6 * float(np.mean(m.d_cbd_um)) ** 3}
        self.mass = mass
        self.rr = {1: m.d50_am_um / 2, 2: float(np.mean(m.d_cbd_um)) / 2}
        self.T_now = p.roll_temperature_C
        lines = [
            "units micro", "atom_style sphere 1", "atom_modify map array", "boundary p p fm",
            "comm_modify vel yes", "newton off", f"read_data {path}",
            "neighbor 0.5 bin", "neigh_modify delay 0 every 1 check yes",
            "thermo_modify lost ignore",
            "pair_style granular",
            self.pair_line(self.T_now),
            "fix integ all nve/sphere",
            "region ccw plane 0 0 0 0 0 1 side in units box",
            f"fix cc all wall/gran/region {self.wall_model(self.T_now)} region ccw",
            f"timestep {self.dt:.6g}",
        ]
        self.cmd("\n".join(lines))
        os.unlink(path)

    def settle(self) -> float:
        """The v1 dried layer at rest under the mdr law: background drag, short rest, no body force."""
        self._add_top_wall(z0=self.z_box - 0.5)
        self.set_drag(self.p.drag_compress_us)
        self.run(int(self.p.v2_rest_us / self.dt))
        self._growth_dried = self.current_radius() / self.radius0 - 1
        return self.column_thickness(self.positions())

    # -- contact law ---------------------------------------------------------------------
    def _mdr(self, T: float, gamma: float) -> str:
        c: ContactV2 = self.p.contact
        k = c.stress_scale
        E = c.E_GPa * 1e6 * k
        Y = c.yield_MPa_at(T) * 1e3 * k  # MPa -> kPa
        gamma = gamma * k
        r_ref = self.rr[1]
        kt = c.kt_factor * E * r_ref
        k_roll = 2.25 * c.rolling_friction**2 * E * r_ref
        roll = f" rolling sds {k_roll:.6g} 0.0 {c.rolling_friction}" if c.rolling_friction > 0 else ""
        return (f"mdr {E:.6g} {c.poisson} {Y:.6g} {gamma:.6g} {c.psi_b} {c.damp} damping mdr 1 "
                f"tangential linear_history {kt:.6g} 1.0 {c.friction}{roll}")

    def pair_line(self, T: float) -> str:
        return f"pair_coeff * * {self._mdr(T, self.p.contact.surface_energy_mJ_m2)}"

    def wall_model(self, T: float) -> str:
        return f"granular {self._mdr(T, self.p.contact.wall_surface_energy_mJ_m2)}"

    def pair_lines(self, T: float) -> list[str]:
        """No switch: redefining an mdr pair_coeff mid-run corrupts its per-atom state (F_MDR is NaN,
        measured), so the roll-temperature yield stress is set in :meth:`build` from the start. The
        drying consolidation stays below the yield load (measured: ``radius_growth_dried_p95``)."""
        return []

    def _add_top_wall(self, z0: float) -> None:
        self.wall_z0 = z0
        self.wall_z = z0
        self.cmd(f"variable dz equal 0.0\n"
                 f"region topw plane 0 0 {z0} 0 0 -1 side in move NULL NULL v_dz units box\n"
                 f"fix top all wall/gran/region {self.wall_model(self.T_now)} region topw contacts")

    # -- diagnostics ---------------------------------------------------------------------
    def current_radius(self) -> np.ndarray:
        nlocal = int(self.lmp.extract_global("nlocal"))
        r = np.array(self.lmp.numpy.extract_atom("radius")[:nlocal], dtype=np.float64)
        ids = np.array(self.lmp.numpy.extract_atom("id")[:nlocal])
        out = self.radius0.copy()
        out[ids - 1] = r
        return out

    def overlap_stats(self) -> dict:
        """Overlaps of the *input* spheres (radius R0) at the current positions: delta / R_eff per contact."""
        from scipy.spatial import cKDTree

        pos = self.positions()
        keep = pos[:, 2] > LOST_Z_GUARD
        L = self.p.footprint_um
        big = 1e6
        pts = pos.copy()
        pts[:, :2] %= L
        pts[:, 2] += 1000.0
        tree = cKDTree(np.where(keep[:, None], pts, big / 2), boxsize=[L, L, big])
        r0 = self.radius0
        pairs = tree.query_pairs(2 * float(r0.max()), output_type="ndarray")
        if len(pairs) == 0:
            return {"n_contacts": 0}
        i, j = pairs[:, 0], pairs[:, 1]
        d = pts[i] - pts[j]
        d[:, :2] -= L * np.round(d[:, :2] / L)
        dist = np.linalg.norm(d, axis=1)
        delta = r0[i] + r0[j] - dist
        ok = (delta > 0) & keep[i] & keep[j]
        reff = r0[i] * r0[j] / (r0[i] + r0[j])
        rel = delta[ok] / reff[ok]
        if rel.size == 0:
            return {"n_contacts": 0}
        return {"n_contacts": int(rel.size), "coordination": float(2 * rel.size / keep.sum()),
                "delta_over_Reff_p50": float(np.percentile(rel, 50)),
                "delta_over_Reff_p95": float(np.percentile(rel, 95)),
                "delta_over_Reff_max": float(rel.max())}

    def _compress_two_stage(self, z_target: float, speed: float, record: bool, phase: str, frame_every: int,
                            chunk: int) -> None:
        """Compression at `speed` down to the switch height h_solid / slow_from_solid_fraction, then at
        slow_speed_factor * speed to z_target; curve points every chunk (in steps of the fast stage, scaled so
        that they keep their spacing in wall travel), frames every frame_every fast-stage steps of travel."""
        p = self.p
        h_solid = p.initial_thickness_um * (1.0 - p.initial_porosity)
        z_start = self.wall_z
        z_sw = min(z_start, max(z_target, h_solid / p.slow_from_solid_fraction))
        f = p.slow_speed_factor
        chunk = chunk or 1
        d_frame = speed * frame_every * self.dt if frame_every else float("inf")
        next_frame = z_start - d_frame
        legs = [(z_sw, speed, chunk), (z_target, speed * f, max(1, int(round(chunk / f))))]
        z0, zw, last_frame_z = z_start, z_start, float("nan")
        self._two_stage = {"switch_um": z_sw, "h_solid_um": h_solid, "switch_solid_fraction": p.slow_from_solid_fraction,
                           "slow_speed_mm_s": speed * f * 1e3, "fast_travel_um": z_start - z_sw,
                           "slow_travel_um": z_sw - z_target, "step_at_switch": None}
        for z_end, v, ch in legs:
            if z0 - z_end < 1e-9:
                continue
            if v < speed:
                self._two_stage["step_at_switch"] = int(self.step)
            nsteps = int(math.ceil((z0 - z_end) / (v * self.dt)))
            self._set_wall_motion(z0, -v)
            done = 0
            while done < nsteps:
                k = min(ch, nsteps - done)
                if record and frame_every:  # land on the next frame's wall height (within one step)
                    k = min(k, max(1, int(math.ceil((zw - next_frame) / (v * self.dt) - 1e-6))))
                self.run(k)
                done += k
                zw = z0 - v * done * self.dt
                self.curve.append((self.time_us(), zw, self.wall_pressure_MPa()))
                if record and zw <= next_frame + 1e-9:
                    self._frame(phase, zw)
                    last_frame_z = zw
                    while next_frame >= zw - 1e-9:
                        next_frame -= d_frame
            z0 = zw
        if record and frame_every and last_frame_z != zw:
            self._frame(phase, zw)  # the last compression frame at the gap, as the one-speed protocol
        self.wall_z = z_target
        self.cmd(f"variable dz equal {z_target - self.wall_z0:.8g}")

    def _move_wall_to(self, z_target: float, speed: float, record: bool, phase: str = "", frame_every: int = 0,
                      chunk: int = 0, frames_while_loaded: bool = False) -> None:
        p = self.p
        if phase == "compress" and p.slow_from_solid_fraction > 0:
            self._compress_two_stage(z_target, speed, record, phase, frame_every, chunk)
            return
        if phase != "release" or p.release_mode != "servo":
            super()._move_wall_to(z_target, speed, record, phase, frame_every, chunk, frames_while_loaded)
            return
        # servo release: follow the layer up at `speed` while the wall carries load (quasi-static unloading),
        # frames at the compression's frame spacing in wall travel; leave once unloaded over release_free_um
        z_start = self.wall_z
        n_chunk = max(1, int(math.ceil(p.release_chunk_um / (speed * self.dt))))
        v_comp = p.wall_speed_mm_s * 1e-3  # frames at the compression's spacing in wall travel
        d_frame = v_comp * frame_every * self.dt if frame_every else float("inf")
        d_frame = max(d_frame, n_chunk * speed * self.dt)
        self._set_wall_motion(z_start, speed)
        done, free, next_frame, z, waited = 0, 0.0, d_frame, z_start, 0.0
        z_first = z_start
        while z < z_target:
            self.run(n_chunk)
            done += n_chunk
            z = z_start + speed * done * self.dt
            pr = self.wall_pressure_MPa()
            self.curve.append((self.time_us(), z, pr))
            free = free + n_chunk * speed * self.dt if pr <= 0.0 else 0.0
            if p.release_end_MPa > 0 and pr < p.release_end_MPa:
                # the wall waits for the layer: stop it and let the layer catch up; if it pushes the wall above
                # p_end again the release goes on, else this is the contact-loss point
                caught_up = False
                if p.release_wait_us > 0 and waited < p.release_wait_max_us:
                    self.cmd(f"variable dz equal {z - self.wall_z0:.8g}")
                    self.run(int(p.release_wait_us / self.dt))
                    waited += p.release_wait_us
                    pr = self.wall_pressure_MPa()
                    caught_up = pr >= p.release_end_MPa
                if not caught_up:
                    self._release_end = (self.time_us(), z, pr, waited)
                    if record:
                        self._frame(phase, z)
                    break
                z_start, done = z, 0
                self._set_wall_motion(z_start, speed)
            if record and z - z_first >= next_frame:
                next_frame += d_frame
                if pr > 0.0 or free <= d_frame:  # loaded, or the first frame after unloading
                    self._frame(phase, z)
            if free >= p.release_free_um:
                break
        self._release_travel_um = z - z_first
        self.wall_z = z
        self.cmd(f"variable dz equal {z - self.wall_z0:.8g}")
        if z < z_target:
            super()._move_wall_to(z_target, 2.0, False)

    def hold(self, duration_us: float, phase: str, n_frames: int, record_wall: bool = True) -> None:
        p = self.p
        if phase == "hold" and p.hold_us > 0:
            duration_us = p.hold_us
        if phase == "relax" and p.relax_us > 0:
            duration_us = p.relax_us
        super().hold(duration_us, phase, n_frames, record_wall)
        if phase != "relax" or p.relax_tol_um <= 0:
            return
        h_prev = self.column_thickness(self.positions())
        extra = 0.0
        self._relax_trace = [(self.time_us(), h_prev)]
        while extra < p.relax_max_us:
            super().hold(p.relax_chunk_us, phase, 1, record_wall)
            extra += p.relax_chunk_us
            h = self.column_thickness(self.positions())
            self._relax_trace.append((self.time_us(), h))
            if abs(h - h_prev) < p.relax_tol_um:
                break
            h_prev = h

    def at_max_compression(self) -> None:
        self._ov_max = self.overlap_stats()
        self._r_max = self.current_radius()

    def extras(self) -> dict:
        r_end = self.current_radius()
        return {"contact_model": "mdr", "h_dried_v1_um": self.h_dried_v1, "v1_settle_steps": self.v1_steps, "overlap_at_max": getattr(self, "_ov_max", {}),
                "overlap_after": self.overlap_stats(),
                "radius_growth_dried_p95": float(np.percentile(self._growth_dried, 95)),
                "radius_growth_dried_max": float(self._growth_dried.max()),
                "radius_growth_at_max_p95": float(np.percentile(self._r_max / self.radius0 - 1, 95)),
                "radius_growth_at_max_max": float((self._r_max / self.radius0 - 1).max()),
                "radius_final": r_end.astype(np.float32),
                "relax_trace": getattr(self, "_relax_trace", []),
                "release_travel_um": getattr(self, "_release_travel_um", None),
                "release_end": getattr(self, "_release_end", None),
                "two_stage": getattr(self, "_two_stage", None),
                "yield_MPa_at_T": self.p.contact.yield_MPa_at(self.p.roll_temperature_C)}


LOST_Z_GUARD = -50.0


def run_calendering_v2(params: DEMParamsV2 | None = None, after_settle: Callable[[float], None] | None = None,
                       **overrides) -> DEMResult:
    """One calendering run with the v2 (mdr) contact law; same outputs as :func:`dem.run_calendering`."""
    return run_calendering(params or DEMParamsV2(), _sim_cls=_SimV2, after_settle=after_settle, **overrides)
