"""The simulated pilot line: coating -> drying -> calendering, in pure Python.

Deterministic for a given seed; no protocol library is imported here, so the OPC-UA server, the MQTT
publisher, the recorded-CSV generator and closed-loop tests all run the same physics.

The core is a pure function::

    new_state, outputs = step(state, setpoints, dt_s, rng, params, disturbances)

``state`` and ``setpoints`` are frozen dataclasses (never mutated), ``rng`` is the noise source
(``random.Random``; the only thing ``step`` changes). :class:`LineSimulation` wraps it for callers that
want a mutable line with limit-checked setpoint writes and a scripted scenario.

Physics (constants in :class:`LineParams`, defaults documented in docs/opcua.md):

* Web tracking. The web is cut into segments of ``segment_m``; each is laid down at the coater and
  travels at the line speed past the stations: dryer exit (beta gauge and laser thickness gauge
  before the calender), the calender nip, and the laser thickness gauge downstream of the calender.
  Every segment carries its roll id and its position in the roll, so a gauge reading is attributed to
  the material it measured and the transport lag (distance / speed) follows speed changes exactly.
* Coater (comma bar): wet film = ``wet_gap_ratio`` x coater gap; areal loading
  = wet film x slurry density x solids mass fraction (x incoming-loading drift).
* Dryer: dry-coating porosity eps0 rises slightly with the mean zone temperature and the airflow
  (faster drying, more open structure); dry thickness h0 = loading / (rho_solid (1 - eps0))
  (mass conservation).
* Calender (seed 003, sec. 3.1): Meyer's law eps = eps0 (p + (1 - p) exp(-q_L / gamma_C)) with
  gamma_C = (mu0 - xi T_R) M_C (M_C = areal loading in mg/cm2). Thickness after the calender from mass
  conservation h = M_C / (rho_solid (1 - eps)). Spring-back after the nip grows linearly with the line
  load and falls with the loading: h_nip = h / (1 + sb), sb = a q_L (1 - b (M_C - M_ref)). The rolls
  are pushed apart by the load (roll displacement, linear in q_L) and the gap closes as the rolls warm
  up (thermal expansion). In gap mode the line load is the one that compresses the coating to the
  real gap (solved by bisection; capped at the machine's force limit, where the gap then opens); in
  line-load mode the load follows its setpoint and the gap results. Compaction degree
  = 1 - h_after / h_before.
* Actuators follow their setpoints with first-order dynamics (roll temperature and dryer zones slowly),
  slow drifts are Ornstein-Uhlenbeck processes (slurry solids, dry porosity), gauges add white noise
  of the size of the accuracies in seed 004 (tables 6-8).
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import gzip
import math
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.samples import ns_to_iso
from ontology.definitions import LINE_RECIPE

# --------------------------------------------------------------------------------------------
# parameters


def composite_density(fractions: Mapping[str, tuple[float, float]]) -> float:
    """Solid density of a composite from {component: (mass fraction, density g/cm3)} (rule of mixtures
    on specific volume)."""
    total = sum(w for w, _ in fractions.values())
    return total / sum(w / rho for w, rho in fractions.values())


#: NMC811 / carbon black / PVDF 94:3:3 by mass (typical pilot-line cathode) -> 4.34 g/cm3 skeletal; the one
#: recipe of the line (ontology.definitions.LINE_RECIPE). The simulated line's porosities are total porosities.
DEFAULT_COMPOSITION: dict[str, tuple[float, float]] = {
    "NMC811": (LINE_RECIPE.am_fraction, LINE_RECIPE.rho_am),
    "carbon_black": ((1 - LINE_RECIPE.am_fraction) * LINE_RECIPE.carbon_share, LINE_RECIPE.rho_carbon),
    "PVDF": ((1 - LINE_RECIPE.am_fraction) * (1 - LINE_RECIPE.carbon_share), LINE_RECIPE.rho_binder)}


@dataclass(frozen=True)
class LineParams:
    """Constants of the simulated line. Lengths in m, thicknesses in um, loads in N/mm."""

    # geometry
    coating_width_mm: float = 200.0
    coater_to_dryer_exit_m: float = 6.0  # coater lip -> dryer exit (beta gauge, laser gauge before)
    dryer_exit_to_calender_m: float = 1.0  # dryer exit gauges -> calender nip
    calender_to_gauge_m: float = 0.5  # calender nip -> laser thickness gauge after the calender
    segment_m: float = 0.05  # resolution of the web tracking
    roll_length_m: float = 1000.0  # a new roll (lot) starts at the coater every this many metres (0: never)
    # materials
    solid_density_g_cm3: float = field(default_factory=lambda: round(composite_density(DEFAULT_COMPOSITION), 4))
    foil_thickness_um: float = 15.0  # aluminium current collector (gauges report the coating only)
    slurry_density_g_cm3: float = 2.0
    solids_mass_fraction: float = 0.68
    wet_gap_ratio: float = 0.80  # wet film thickness / coater gap
    # dry-coating (total) porosity at the reference drying conditions: 0.50 total is 0.434 macro at the line's recipe,
    # inside the packed layers of the physics reference v2 (0.41-0.54 macro), so the line runs in the model's domain
    eps0_ref: float = 0.50
    eps0_per_K: float = 0.0008  # d eps0 / d (mean dryer zone temperature)
    eps0_per_rel_airflow: float = 0.01  # d eps0 / d (airflow / reference airflow)
    dryer_ref_C: float = 100.0
    airflow_ref_m3_h: float = 600.0
    # calendering: Meyer's law (seed 003, eq. 8) with an onset, and a saturating spring-back, calibrated on the
    # physics reference v2 by bench.simline_calibration (docs/physics.md §7.11, bench/results/simline_calibration.json)
    meyer_onset: float = 0.764  # s: porosity at which the layer starts to carry load, as a fraction of eps0
    meyer_onset_q_N_mm: float = 0.63  # line load over which the loose dried layer settles to s eps0
    meyer_p: float = 0.565  # compaction factor: eps_min = p eps0
    meyer_mu0: float = 27.6  # N/mm per (mg/cm2), at 0 degC
    meyer_xi: float = 0.0708  # N/mm per (mg/cm2) per degC
    springback_max: float = 0.261  # relative spring-back at high line load
    springback_q_s: float = 1303.0  # N/mm: line load of 63 % of the saturation
    roll_displacement_um_per_N_mm: float = 0.004  # the load pushes the rolls apart (linear)
    gap_thermal_um_per_K: float = 0.01  # thermal closing of the gap per K above 25 degC left after compensation
    max_line_load_N_mm: float = 3000.0  # force limit of the calender
    # dynamics (first-order time constants, s)
    tau_speed_s: float = 3.0
    tau_coater_gap_s: float = 1.0
    tau_dryer_s: float = 60.0
    tau_airflow_s: float = 5.0
    tau_gap_s: float = 2.0
    tau_line_load_s: float = 1.5
    tau_roll_temp_s: float = 120.0
    # slow drifts (Ornstein-Uhlenbeck: stationary standard deviation, correlation time)
    loading_drift_sd: float = 0.005  # relative
    loading_drift_tau_s: float = 900.0
    eps0_drift_sd: float = 0.004
    eps0_drift_tau_s: float = 1200.0
    roll_loading_sd: float = 0.01  # relative loading offset of each new roll (slurry batch)
    roll_eps0_sd: float = 0.004
    # gauge and sensor noise (1 sigma; seed 004 tables 6-8)
    noise_thickness_um: float = 0.5  # laser triangulation
    noise_loading_mg_cm2: float = 0.02  # beta gauge
    noise_gap_um: float = 0.3
    noise_speed_m_min: float = 0.02
    noise_temp_C: float = 0.2
    noise_airflow_m3_h: float = 2.0
    noise_line_load_rel: float = 0.004

    @property
    def dryer_exit_m(self) -> float:
        return self.coater_to_dryer_exit_m

    @property
    def calender_m(self) -> float:
        return self.coater_to_dryer_exit_m + self.dryer_exit_to_calender_m

    @property
    def gauge_after_m(self) -> float:
        return self.calender_m + self.calender_to_gauge_m


class CalenderMode(enum.IntEnum):
    GAP = 0  # position control: the gap is set, the line load results
    LINE_LOAD = 1  # force control: the line load is set, the gap results


@dataclass(frozen=True)
class Setpoints:
    """Everything an operator (or the feedback service) sets. Units in the names."""

    line_speed_m_min: float = 6.0
    coater_gap_um: float = 210.0
    dryer_zone1_C: float = 80.0
    dryer_zone2_C: float = 100.0
    dryer_zone3_C: float = 110.0
    dryer_airflow_m3_h: float = 600.0
    calender_mode: int = int(CalenderMode.GAP)
    calender_gap_um: float = 85.0
    line_load_N_per_mm: float = 1200.0
    roll_temp_C: float = 50.0


#: Machine limits of every setpoint (a write outside is refused).
LIMITS: dict[str, tuple[float, float]] = {
    "line_speed_m_min": (0.5, 50.0),
    "coater_gap_um": (20.0, 1000.0),
    "dryer_zone1_C": (20.0, 160.0),
    "dryer_zone2_C": (20.0, 160.0),
    "dryer_zone3_C": (20.0, 160.0),
    "dryer_airflow_m3_h": (0.0, 2000.0),
    "calender_mode": (0, 1),
    "calender_gap_um": (20.0, 300.0),
    "line_load_N_per_mm": (0.0, 3000.0),
    "roll_temp_C": (20.0, 150.0),
}


class SetpointError(ValueError):
    """A setpoint write the machine refuses: unknown name, wrong type, or outside the limits."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code  # "unknown", "type", "out_of_range"


def check_setpoint(name: str, value: Any) -> float | int:
    """Validate one setpoint value against its type and machine limits; returns it normalised."""
    if name not in LIMITS:
        raise SetpointError(f"unknown setpoint {name!r}; known: {sorted(LIMITS)}", "unknown")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SetpointError(f"{name}: expected a number, got {type(value).__name__} {value!r}", "type")
    if not math.isfinite(value):
        raise SetpointError(f"{name}: value {value!r} is not finite", "type")
    lo, hi = LIMITS[name]
    if name == "calender_mode":
        if int(value) != value:
            raise SetpointError(f"calender_mode: expected 0 (gap) or 1 (line load), got {value!r}", "type")
        value = int(value)
    if not lo <= value <= hi:
        raise SetpointError(f"{name}: {value:g} outside the machine limits [{lo:g}, {hi:g}]", "out_of_range")
    return value if name == "calender_mode" else float(value)


# --------------------------------------------------------------------------------------------
# signals: one catalog for the OPC-UA nodes, MQTT topics and CSV columns


@dataclass(frozen=True)
class Signal:
    id: str  # "<step>.<parameter>", also the MQTT "<step>/<parameter>"
    node: str  # OPC-UA string NodeId (in the simulator's namespace), e.g. "Calender.GapActual"
    unit: str | None  # pint spelling (None: no unit)
    kind: str  # MP / PP / SP / TRACE (seed 004)
    role: str  # setpoint / actual / measured
    column: str  # column in a recorded CSV
    description: str
    value_type: str = "double"  # double / int / string
    setpoint: str | None = None  # Setpoints field when writable
    range: tuple[float, float] | None = None  # EURange: machine limits or measuring range

    @property
    def step(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def param(self) -> str:
        return self.id.split(".", 1)[1]

    @property
    def folder(self) -> str:
        return self.node.split(".", 1)[0]


def _sp(id_: str, node: str, unit: str | None, column: str, desc: str, field_: str,
        kind: str = "MP", value_type: str = "double") -> Signal:
    return Signal(id_, node, unit, kind, "setpoint", column, desc, value_type, field_, LIMITS[field_])


SIGNALS: tuple[Signal, ...] = (
    # line drive
    _sp("line.speed_setpoint", "Line.SpeedSetpoint", "m/min", "line_speed_setpoint_m_min",
        "line (web) speed setpoint, coater to calender", "line_speed_m_min"),
    # coater
    Signal("coating.speed", "Coater.Speed", "m/min", "MP", "actual", "coating_speed_m_min",
           "coating speed", range=(0, 60)),
    _sp("coating.gap_setpoint", "Coater.GapSetpoint", "um", "coating_gap_setpoint_um",
        "coater (comma bar) gap setpoint", "coater_gap_um"),
    Signal("coating.gap_actual", "Coater.GapActual", "um", "MP", "actual", "coating_gap_actual_um",
           "coater gap, measured", range=(0, 1100)),
    Signal("coating.wet_film_thickness", "Coater.WetFilmThickness", "um", "SP", "measured",
           "coating_wet_film_thickness_um", "wet film thickness (laser triangulation)", range=(0, 1000)),
    # dryer
    _sp("drying.zone1_temperature_setpoint", "Dryer.Zone1TemperatureSetpoint", "degC",
        "drying_zone1_temperature_setpoint_C", "dryer zone 1 air temperature setpoint", "dryer_zone1_C"),
    _sp("drying.zone2_temperature_setpoint", "Dryer.Zone2TemperatureSetpoint", "degC",
        "drying_zone2_temperature_setpoint_C", "dryer zone 2 air temperature setpoint", "dryer_zone2_C"),
    _sp("drying.zone3_temperature_setpoint", "Dryer.Zone3TemperatureSetpoint", "degC",
        "drying_zone3_temperature_setpoint_C", "dryer zone 3 air temperature setpoint", "dryer_zone3_C"),
    Signal("drying.zone1_temperature", "Dryer.Zone1Temperature", "degC", "MP", "actual",
           "drying_zone1_temperature_C", "dryer zone 1 air temperature", range=(0, 200)),
    Signal("drying.zone2_temperature", "Dryer.Zone2Temperature", "degC", "MP", "actual",
           "drying_zone2_temperature_C", "dryer zone 2 air temperature", range=(0, 200)),
    Signal("drying.zone3_temperature", "Dryer.Zone3Temperature", "degC", "MP", "actual",
           "drying_zone3_temperature_C", "dryer zone 3 air temperature", range=(0, 200)),
    _sp("drying.airflow_setpoint", "Dryer.AirflowSetpoint", "m^3/h", "drying_airflow_setpoint_m3_h",
        "dryer airflow setpoint", "dryer_airflow_m3_h"),
    Signal("drying.airflow", "Dryer.Airflow", "m^3/h", "MP", "actual", "drying_airflow_m3_h",
           "dryer airflow", range=(0, 2500)),
    Signal("drying.line_speed", "Dryer.LineSpeed", "m/min", "MP", "actual", "drying_line_speed_m_min",
           "line speed through the dryer", range=(0, 60)),
    # gauges before the calender (SPs of the coating/drying steps)
    Signal("coating.dry_thickness", "Gauges.ThicknessBeforeCalender", "um", "SP", "measured",
           "coating_dry_thickness_um", "dry coating thickness before the calender (laser triangulation)",
           range=(0, 400)),
    Signal("coating.areal_loading", "Gauges.ArealLoading", "mg/cm^2", "SP", "measured",
           "coating_areal_loading_mg_cm2", "areal mass loading (beta gauge)", range=(0, 60)),
    # calender
    _sp("calendering.control_mode", "Calender.ControlMode", None, "calender_control_mode",
        "0 = gap control, 1 = line-load control", "calender_mode", value_type="int"),
    _sp("calendering.gap_setpoint", "Calender.GapSetpoint", "um", "calender_gap_setpoint_um",
        "roll gap setpoint (gap mode)", "calender_gap_um"),
    Signal("calendering.gap_actual", "Calender.GapActual", "um", "MP", "actual", "calender_gap_actual_um",
           "roll gap, measured (setpoint + roll displacement under load)", range=(0, 400)),
    _sp("calendering.line_load_setpoint", "Calender.LineLoadSetpoint", "N/mm", "calender_line_load_setpoint_N_mm",
        "line load setpoint (line-load mode)", "line_load_N_per_mm"),
    Signal("calendering.line_load", "Calender.LineLoad", "N/mm", "MP", "actual", "calender_line_load_N_mm",
           "line load = roll force / coating width", range=(0, 3500)),
    Signal("calendering.roll_force", "Calender.RollForce", "kN", "MP", "actual", "calender_roll_force_kN",
           "roll force (load cells)", range=(0, 800)),
    Signal("calendering.roll_speed", "Calender.RollSpeed", "m/min", "MP", "actual", "calender_roll_speed_m_min",
           "roll circumferential speed", range=(0, 60)),
    _sp("calendering.roll_temperature_setpoint", "Calender.RollTemperatureSetpoint", "degC",
        "calender_roll_temperature_setpoint_C", "roll temperature setpoint", "roll_temp_C"),
    Signal("calendering.roll_temperature", "Calender.RollTemperature", "degC", "MP", "actual",
           "calender_roll_temperature_C", "roll surface temperature", range=(0, 200)),
    Signal("calendering.roll_id", "Calender.RollId", None, "TRACE", "actual", "roll_id",
           "id of the roll (lot) in the calender", value_type="string"),
    Signal("calendering.web_position", "Calender.WebPosition", "m", "TRACE", "actual", "web_position_m",
           "web position at the calender since the roll started", range=(0, 100000)),
    # gauges after the calender
    Signal("calendering.thickness_after", "Gauges.ThicknessAfterCalender", "um", "SP", "measured",
           "calender_thickness_after_um", "coating thickness after the calender (laser triangulation)",
           range=(0, 400)),
    Signal("calendering.porosity_online", "Gauges.PorosityOnline", "percent", "SP", "measured",
           "calender_porosity_online_pct", "porosity from thickness after the calender and areal loading",
           range=(0, 100)),
    Signal("calendering.compaction_degree", "Gauges.CompactionDegree", "percent", "SP", "measured",
           "calender_compaction_degree_pct", "compaction degree 1 - h_after / h_before (same material)",
           range=(0, 100)),
)

SIGNALS_BY_ID: dict[str, Signal] = {s.id: s for s in SIGNALS}
SETPOINT_SIGNALS: dict[str, Signal] = {s.setpoint: s for s in SIGNALS if s.setpoint}


# --------------------------------------------------------------------------------------------
# state


@dataclass(frozen=True, slots=True)
class Coated:
    """A web segment as laid down by the coater."""

    pos_m: float  # cumulative web length at the coater when it was coated
    roll_id: str
    roll_pos_m: float
    loading: float  # mg/cm2 (true)
    wet_um: float
    eps0_offset: float  # dry-porosity offset of the roll's slurry batch


@dataclass(frozen=True, slots=True)
class Dried:
    pos_m: float
    roll_id: str
    roll_pos_m: float
    loading: float
    eps0: float
    h0_um: float  # dry coating thickness (true)
    loading_meas: float  # beta gauge reading
    h0_meas_um: float  # laser gauge reading before the calender


@dataclass(frozen=True, slots=True)
class Calendered:
    pos_m: float
    roll_id: str
    roll_pos_m: float
    loading_meas: float
    h0_meas_um: float
    h_um: float  # coating thickness after the calender (true)
    eps: float
    h_meas_um: float = math.nan  # laser gauge reading after the calender (set when it passes the gauge)


@dataclass(frozen=True)
class Disturbances:
    """External influences for one step (scenario scripts set them)."""

    loading_factor: float = 1.0  # incoming loading multiplier (slurry solids drift)
    new_roll: bool = False  # start a new roll at the coater now
    new_roll_loading_offset: float | None = None  # relative loading offset of the new roll (None: random)


NO_DISTURBANCE = Disturbances()


@dataclass(frozen=True)
class LineState:
    t_s: float
    web_m: float  # cumulative web length past the coater
    next_seg_m: float  # where the next segment starts
    speed_m_min: float
    coater_gap_um: float
    dryer_C: tuple[float, float, float]
    airflow_m3_h: float
    gap_pos_um: float  # roll gap actuator position
    line_load_N_mm: float
    roll_temp_C: float
    loading_drift: float  # relative (OU)
    eps0_drift: float  # absolute (OU)
    roll_no: int
    roll_start_m: float
    roll_loading_offset: float
    roll_eps0_offset: float
    coated: tuple[Coated, ...]
    dried: tuple[Dried, ...]
    calendered: tuple[Calendered, ...]
    at_dryer_exit: Dried | None
    in_nip: Dried | None
    nip_result: Calendered | None
    at_gauge: Calendered | None


@dataclass(frozen=True)
class NipResult:
    line_load_N_mm: float
    gap_um: float  # real gap between the rolls (what the gap sensors read)
    eps: float
    h_after_um: float
    springback: float
    force_limited: bool


@dataclass(frozen=True)
class Outputs:
    """One sample of every signal: ``values[signal id]`` and, per signal, the (roll id, web position in
    m) of the material it describes (``trace``). Do not mutate."""

    t_s: float
    values: dict[str, float | int | str]
    trace: dict[str, tuple[str, float]]

    def __getitem__(self, signal_id: str) -> float | int | str:
        return self.values[signal_id]


def roll_name(no: int) -> str:
    return f"R-{no:04d}"


# --------------------------------------------------------------------------------------------
# physics


def meyer_porosity(eps0: float, line_load_N_mm: float, loading_mg_cm2: float, roll_temp_C: float,
                   p: LineParams) -> float:
    """Meyer's law (seed 003, eq. 8) with an onset: eps = eps0 (p + (s - p) exp(-q_L / gamma_C)
    + (1 - s) exp(-q_L / q_0)), gamma_C = (mu0 - xi T_R) M_C. With s = 1 it is Meyer's law; s < 1 lets a loose
    dried layer settle to s eps0 over a small load q_0 before the exponential takes over (the DEM's behaviour)."""
    gamma = max((p.meyer_mu0 - p.meyer_xi * roll_temp_C) * loading_mg_cm2, 1e-9)
    q = max(line_load_N_mm, 0.0)
    return eps0 * (p.meyer_p + (p.meyer_onset - p.meyer_p) * math.exp(-q / gamma)
                   + (1.0 - p.meyer_onset) * math.exp(-q / max(p.meyer_onset_q_N_mm, 1e-9)))


def thickness_um(loading_mg_cm2: float, eps: float, p: LineParams) -> float:
    """Coating thickness from mass conservation: h = M / (rho_solid (1 - eps))."""
    return 10.0 * loading_mg_cm2 / (p.solid_density_g_cm3 * (1.0 - eps))


def springback(line_load_N_mm: float, loading_mg_cm2: float, p: LineParams) -> float:
    """Relative elastic recovery after the nip, saturating with the line load: s_inf (1 - exp(-q_L / q_s)).
    (The loading is kept in the signature: the reference resolves no loading dependence at 6-12 mg/cm2.)"""
    return p.springback_max * (1.0 - math.exp(-max(line_load_N_mm, 0.0) / p.springback_q_s))


def nip(seg: Dried, mode: CalenderMode, gap_pos_um: float, line_load_N_mm: float, roll_temp_C: float,
        p: LineParams) -> NipResult:
    """The calender nip for one segment: gap mode solves the line load, line-load mode the gap."""
    thermal = p.gap_thermal_um_per_K * (roll_temp_C - 25.0)

    def h_after(q: float) -> float:
        return thickness_um(seg.loading, meyer_porosity(seg.eps0, q, seg.loading, roll_temp_C, p), p)

    def h_nip(q: float) -> float:
        return h_after(q) / (1.0 + springback(q, seg.loading, p))

    limited = False
    if mode is CalenderMode.GAP:
        g = gap_pos_um - thermal  # gap at zero load

        def excess(q: float) -> float:  # > 0: the coating is still thicker than the (loaded) gap
            return p.foil_thickness_um + h_nip(q) - (g + p.roll_displacement_um_per_N_mm * q)

        if excess(0.0) <= 0.0:
            q = 0.0
        elif excess(p.max_line_load_N_mm) > 0.0:
            q, limited = p.max_line_load_N_mm, True
        else:
            lo, hi = 0.0, p.max_line_load_N_mm
            for _ in range(40):
                mid = 0.5 * (lo + hi)
                if excess(mid) > 0.0:
                    lo = mid
                else:
                    hi = mid
            q = 0.5 * (lo + hi)
    else:
        q = min(max(line_load_N_mm, 0.0), p.max_line_load_N_mm)
    if q <= 0.0:
        gap = max(gap_pos_um - thermal, p.foil_thickness_um + seg.h0_um) if mode is CalenderMode.GAP \
            else p.foil_thickness_um + seg.h0_um
        return NipResult(0.0, gap, seg.eps0, seg.h0_um, 0.0, False)
    eps = meyer_porosity(seg.eps0, q, seg.loading, roll_temp_C, p)
    h = thickness_um(seg.loading, eps, p)
    sb = springback(q, seg.loading, p)
    return NipResult(q, p.foil_thickness_um + h / (1.0 + sb), eps, h, sb, limited)


def _lag(x: float, target: float, tau: float, dt: float) -> float:
    return x + (target - x) * (1.0 - math.exp(-dt / tau))


def _ou(x: float, sd: float, tau: float, dt: float, rng: random.Random) -> float:
    if sd <= 0.0:
        return 0.0
    a = math.exp(-dt / tau)
    return x * a + sd * math.sqrt(1.0 - a * a) * rng.gauss(0.0, 1.0)


def _transport(coated: list[Coated], dried: list[Dried], calendered: list[Calendered], web: float,
               at_dryer_exit: Dried | None, in_nip: Dried | None, nip_result: Calendered | None,
               at_gauge: Calendered | None, eps0_of: Any, calender: Any, rng: random.Random,
               p: LineParams) -> tuple[Dried | None, Dried | None, Calendered | None, Calendered | None,
                                       list[Coated], list[Dried], list[Calendered]]:
    """Move segments past the stations; each segment is finalised exactly once per station."""
    i = 0
    while i < len(coated) and web - coated[i].pos_m >= p.dryer_exit_m:
        c = coated[i]
        eps0 = eps0_of(c)
        h0 = thickness_um(c.loading, eps0, p)
        d = Dried(c.pos_m, c.roll_id, c.roll_pos_m, c.loading, eps0, h0,
                  c.loading + rng.gauss(0.0, p.noise_loading_mg_cm2), h0 + rng.gauss(0.0, p.noise_thickness_um))
        dried.append(d)
        at_dryer_exit = d
        i += 1
    coated = coated[i:]
    i = 0
    while i < len(dried) and web - dried[i].pos_m >= p.calender_m:
        d = dried[i]
        r: NipResult = calender(d)
        cal = Calendered(d.pos_m, d.roll_id, d.roll_pos_m, d.loading_meas, d.h0_meas_um, r.h_after_um, r.eps)
        calendered.append(cal)
        in_nip, nip_result = d, cal
        i += 1
    dried = dried[i:]
    i = 0
    while i < len(calendered) and web - calendered[i].pos_m >= p.gauge_after_m:
        cal_i = calendered[i]
        at_gauge = dataclasses.replace(cal_i, h_meas_um=cal_i.h_um + rng.gauss(0.0, p.noise_thickness_um))
        i += 1
    calendered = calendered[i:]
    return at_dryer_exit, in_nip, nip_result, at_gauge, coated, dried, calendered


def _coat(coated: list[Coated], start: float, web: float, roll_id: str, roll_start: float, loading: float,
          wet: float, eps0_offset: float, p: LineParams) -> float:
    pos = start
    while pos <= web:
        coated.append(Coated(pos, roll_id, pos - roll_start, loading, wet, eps0_offset))
        pos += p.segment_m
    return pos


def _eps0(zones: tuple[float, float, float], airflow: float, drift: float, roll_offset: float,
          p: LineParams) -> float:
    mean_t = sum(zones) / 3.0
    e = (p.eps0_ref + p.eps0_per_K * (mean_t - p.dryer_ref_C)
         + p.eps0_per_rel_airflow * (airflow / p.airflow_ref_m3_h - 1.0) + drift + roll_offset)
    return min(max(e, 0.2), 0.8)


def _loading(wet_um: float, factor: float, p: LineParams) -> float:
    """Areal loading (mg/cm2) of a wet film: wet thickness x slurry density x solids fraction."""
    return 0.1 * wet_um * p.slurry_density_g_cm3 * p.solids_mass_fraction * factor


def initial_state(params: LineParams | None = None, setpoints: Setpoints | None = None,
                  seed: int = 0) -> LineState:
    """A line at steady state on the given setpoints, full of material (roll R-0001)."""
    p = params or LineParams()
    sp = setpoints or Setpoints()
    rng = random.Random(f"initial:{seed}")
    zones = (sp.dryer_zone1_C, sp.dryer_zone2_C, sp.dryer_zone3_C)
    wet = p.wet_gap_ratio * sp.coater_gap_um
    loading = _loading(wet, 1.0, p)
    coated: list[Coated] = []
    web = p.gauge_after_m + 2 * p.segment_m
    nxt = _coat(coated, 0.0, web, roll_name(1), 0.0, loading, wet, 0.0, p)
    mode = CalenderMode(sp.calender_mode)
    def eps0_of(c: Coated) -> float:
        return _eps0(zones, sp.dryer_airflow_m3_h, 0.0, 0.0, p)

    def calender(d: Dried) -> NipResult:
        return nip(d, mode, sp.calender_gap_um, sp.line_load_N_per_mm, sp.roll_temp_C, p)

    ade, inn, nres, atg, c2, d2, k2 = _transport(coated, [], [], web, None, None, None, None, eps0_of, calender, rng, p)
    assert inn is not None
    r = calender(inn)
    gap_pos = sp.calender_gap_um if mode is CalenderMode.GAP else r.gap_um - p.roll_displacement_um_per_N_mm * r.line_load_N_mm
    return LineState(
        t_s=0.0, web_m=web, next_seg_m=nxt, speed_m_min=sp.line_speed_m_min, coater_gap_um=sp.coater_gap_um,
        dryer_C=zones, airflow_m3_h=sp.dryer_airflow_m3_h, gap_pos_um=gap_pos, line_load_N_mm=r.line_load_N_mm,
        roll_temp_C=sp.roll_temp_C, loading_drift=0.0, eps0_drift=0.0, roll_no=1, roll_start_m=0.0,
        roll_loading_offset=0.0, roll_eps0_offset=0.0, coated=tuple(c2), dried=tuple(d2), calendered=tuple(k2),
        at_dryer_exit=ade, in_nip=inn, nip_result=nres, at_gauge=atg)


def step(state: LineState, setpoints: Setpoints, dt_s: float, rng: random.Random,
         params: LineParams | None = None, disturbances: Disturbances = NO_DISTURBANCE) -> tuple[LineState, Outputs]:
    """Advance the line by ``dt_s`` seconds. Pure apart from drawing noise from ``rng``."""
    if not dt_s > 0:
        raise ValueError(f"dt_s must be > 0, got {dt_s!r}")
    p = params or LineParams()
    sp = setpoints
    s = state
    t = s.t_s + dt_s
    # actuators (first order)
    speed = _lag(s.speed_m_min, sp.line_speed_m_min, p.tau_speed_s, dt_s)
    coater_gap = _lag(s.coater_gap_um, sp.coater_gap_um, p.tau_coater_gap_s, dt_s)
    zones = (_lag(s.dryer_C[0], sp.dryer_zone1_C, p.tau_dryer_s, dt_s),
             _lag(s.dryer_C[1], sp.dryer_zone2_C, p.tau_dryer_s, dt_s),
             _lag(s.dryer_C[2], sp.dryer_zone3_C, p.tau_dryer_s, dt_s))
    airflow = _lag(s.airflow_m3_h, sp.dryer_airflow_m3_h, p.tau_airflow_s, dt_s)
    roll_temp = _lag(s.roll_temp_C, sp.roll_temp_C, p.tau_roll_temp_s, dt_s)
    mode = CalenderMode(sp.calender_mode)
    gap_pos = _lag(s.gap_pos_um, sp.calender_gap_um, p.tau_gap_s, dt_s) if mode is CalenderMode.GAP else s.gap_pos_um
    load_state = _lag(s.line_load_N_mm, sp.line_load_N_per_mm, p.tau_line_load_s, dt_s) \
        if mode is CalenderMode.LINE_LOAD else s.line_load_N_mm
    # slow drifts
    loading_drift = _ou(s.loading_drift, p.loading_drift_sd, p.loading_drift_tau_s, dt_s, rng)
    eps0_drift = _ou(s.eps0_drift, p.eps0_drift_sd, p.eps0_drift_tau_s, dt_s, rng)
    # web and rolls
    web = s.web_m + speed / 60.0 * dt_s
    roll_no, roll_start = s.roll_no, s.roll_start_m
    roll_lo, roll_eo = s.roll_loading_offset, s.roll_eps0_offset
    if disturbances.new_roll or (p.roll_length_m > 0 and web - roll_start >= p.roll_length_m):
        roll_no, roll_start = roll_no + 1, s.web_m
        roll_lo = disturbances.new_roll_loading_offset if disturbances.new_roll_loading_offset is not None \
            else rng.gauss(0.0, p.roll_loading_sd)
        roll_eo = rng.gauss(0.0, p.roll_eps0_sd)
    wet = p.wet_gap_ratio * coater_gap
    loading = _loading(wet, disturbances.loading_factor * (1.0 + loading_drift) * (1.0 + roll_lo), p)
    coated = list(s.coated)
    nxt = _coat(coated, s.next_seg_m, web, roll_name(roll_no), roll_start, loading, wet, roll_eo, p)

    def eps0_of(c: Coated) -> float:
        return _eps0(zones, airflow, eps0_drift, c.eps0_offset, p)

    def calender(d: Dried) -> NipResult:
        return nip(d, mode, gap_pos, load_state, roll_temp, p)

    ade, inn, nres, atg, coated, dried, calendered = _transport(
        coated, list(s.dried), list(s.calendered), web, s.at_dryer_exit, s.in_nip, s.nip_result, s.at_gauge,
        eps0_of, calender, rng, p)
    assert ade is not None and inn is not None and nres is not None and atg is not None
    r = calender(inn)
    if mode is CalenderMode.GAP:
        load_state = r.line_load_N_mm
        if r.force_limited:  # the actuator cannot close further
            gap_pos = r.gap_um - p.roll_displacement_um_per_N_mm * r.line_load_N_mm \
                + p.gap_thermal_um_per_K * (roll_temp - 25.0)
    else:
        gap_pos = r.gap_um - p.roll_displacement_um_per_N_mm * r.line_load_N_mm \
            + p.gap_thermal_um_per_K * (roll_temp - 25.0)

    new = LineState(
        t_s=t, web_m=web, next_seg_m=nxt, speed_m_min=speed, coater_gap_um=coater_gap, dryer_C=zones,
        airflow_m3_h=airflow, gap_pos_um=gap_pos, line_load_N_mm=load_state, roll_temp_C=roll_temp,
        loading_drift=loading_drift, eps0_drift=eps0_drift, roll_no=roll_no, roll_start_m=roll_start,
        roll_loading_offset=roll_lo, roll_eps0_offset=roll_eo, coated=tuple(coated), dried=tuple(dried),
        calendered=tuple(calendered), at_dryer_exit=ade, in_nip=inn, nip_result=nres, at_gauge=atg)
    return new, _outputs(new, sp, r, wet, rng, p)


def _where(seg: Dried | Calendered, web: float, station_m: float) -> tuple[str, float]:
    """(roll id, position in the roll) of the web at a station: the segment there plus how far it
    has moved past the station since it arrived."""
    return seg.roll_id, round(max(seg.roll_pos_m + (web - station_m - seg.pos_m), 0.0), 3)


def _outputs(s: LineState, sp: Setpoints, r: NipResult, wet: float, rng: random.Random,
             p: LineParams) -> Outputs:
    g = rng.gauss
    assert s.at_dryer_exit is not None and s.in_nip is not None and s.at_gauge is not None
    h_after_meas = s.at_gauge.h_meas_um
    load_meas = r.line_load_N_mm * (1.0 + g(0.0, p.noise_line_load_rel)) if r.line_load_N_mm > 0 else 0.0
    speed_meas = s.speed_m_min + g(0.0, p.noise_speed_m_min)
    values: dict[str, float | int | str] = {
        "line.speed_setpoint": sp.line_speed_m_min,
        "coating.speed": speed_meas,
        "coating.gap_setpoint": sp.coater_gap_um,
        "coating.gap_actual": s.coater_gap_um + g(0.0, p.noise_gap_um),
        "coating.wet_film_thickness": wet + g(0.0, p.noise_thickness_um),
        "drying.zone1_temperature_setpoint": sp.dryer_zone1_C,
        "drying.zone2_temperature_setpoint": sp.dryer_zone2_C,
        "drying.zone3_temperature_setpoint": sp.dryer_zone3_C,
        "drying.zone1_temperature": s.dryer_C[0] + g(0.0, p.noise_temp_C),
        "drying.zone2_temperature": s.dryer_C[1] + g(0.0, p.noise_temp_C),
        "drying.zone3_temperature": s.dryer_C[2] + g(0.0, p.noise_temp_C),
        "drying.airflow_setpoint": sp.dryer_airflow_m3_h,
        "drying.airflow": max(0.0, s.airflow_m3_h + g(0.0, p.noise_airflow_m3_h)),
        "drying.line_speed": s.speed_m_min + g(0.0, p.noise_speed_m_min),
        "coating.dry_thickness": s.at_dryer_exit.h0_meas_um,
        "coating.areal_loading": s.at_dryer_exit.loading_meas,
        "calendering.control_mode": int(sp.calender_mode),
        "calendering.gap_setpoint": sp.calender_gap_um,
        "calendering.gap_actual": r.gap_um + g(0.0, p.noise_gap_um),
        "calendering.line_load_setpoint": sp.line_load_N_per_mm,
        "calendering.line_load": load_meas,
        "calendering.roll_force": load_meas * p.coating_width_mm / 1000.0,
        "calendering.roll_speed": s.speed_m_min + g(0.0, p.noise_speed_m_min),
        "calendering.roll_temperature_setpoint": sp.roll_temp_C,
        "calendering.roll_temperature": s.roll_temp_C + g(0.0, p.noise_temp_C),
        "calendering.roll_id": s.in_nip.roll_id,
        "calendering.web_position": _where(s.in_nip, s.web_m, p.calender_m)[1],
        "calendering.thickness_after": h_after_meas,
        "calendering.porosity_online": 100.0 * (1.0 - thickness_um(s.at_gauge.loading_meas, 0.0, p) / h_after_meas),
        "calendering.compaction_degree": 100.0 * (1.0 - h_after_meas / s.at_gauge.h0_meas_um),
    }
    coater = (roll_name(s.roll_no), round(s.web_m - s.roll_start_m, 3))
    exit_ = _where(s.at_dryer_exit, s.web_m, p.dryer_exit_m)
    nip_ = _where(s.in_nip, s.web_m, p.calender_m)
    gauge = _where(s.at_gauge, s.web_m, p.gauge_after_m)
    trace: dict[str, tuple[str, float]] = {}
    for sig in SIGNALS:
        if sig.step == "coating" and sig.id not in ("coating.dry_thickness", "coating.areal_loading"):
            trace[sig.id] = coater
        elif sig.id in ("coating.dry_thickness", "coating.areal_loading") or sig.step == "drying":
            trace[sig.id] = exit_
        elif sig.id in ("calendering.thickness_after", "calendering.porosity_online",
                        "calendering.compaction_degree"):
            trace[sig.id] = gauge
        else:
            trace[sig.id] = nip_
    return Outputs(s.t_s, values, trace)


# --------------------------------------------------------------------------------------------
# scenarios


@dataclass(frozen=True)
class ScenarioEvent:
    t_s: float
    setpoint: str | None = None  # Setpoints field to write
    value: float | None = None
    roll_change: bool = False
    roll_loading_offset: float | None = None


@dataclass(frozen=True)
class Scenario:
    """A scripted run: setpoint writes and roll changes at given times, plus an incoming-loading ramp."""

    name: str
    description: str
    events: tuple[ScenarioEvent, ...] = ()
    loading_ramp: tuple[float, float, float] | None = None  # (start s, ramp duration s, relative magnitude)

    def loading_factor(self, t_s: float) -> float:
        if self.loading_ramp is None:
            return 1.0
        start, dur, mag = self.loading_ramp
        if t_s <= start:
            return 1.0
        return 1.0 + mag * min(1.0, (t_s - start) / dur if dur > 0 else 1.0)

    def events_between(self, t0: float, t1: float) -> list[ScenarioEvent]:
        return [e for e in self.events if t0 < e.t_s <= t1]


def make_scenario(name: str, *, start_s: float = 60.0, ramp_s: float = 600.0, magnitude: float = 0.08,
                  roll_temp_C: float = 80.0, roll_loading_offset: float = -0.03) -> Scenario:
    """The scripted scenarios: 'steady', 'loading_drift' (incoming loading +8 % over ``ramp_s``),
    'roll_temperature_step' (roll temperature setpoint to ``roll_temp_C``), 'roll_change' (a new roll
    whose loading is ``roll_loading_offset`` off)."""
    if name == "steady":
        return Scenario("steady", "steady operation: drift and noise only")
    if name == "loading_drift":
        return Scenario("loading_drift", f"incoming areal loading +{magnitude:.0%} over {ramp_s:g} s from t={start_s:g} s",
                        loading_ramp=(start_s, ramp_s, magnitude))
    if name == "roll_temperature_step":
        return Scenario("roll_temperature_step", f"roll temperature setpoint to {roll_temp_C:g} degC at t={start_s:g} s",
                        (ScenarioEvent(start_s, "roll_temp_C", roll_temp_C),))
    if name == "roll_change":
        return Scenario("roll_change", f"new roll at the coater at t={start_s:g} s (loading {roll_loading_offset:+.0%})",
                        (ScenarioEvent(start_s, roll_change=True, roll_loading_offset=roll_loading_offset),))
    raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")


SCENARIOS = ("steady", "loading_drift", "roll_temperature_step", "roll_change")


# --------------------------------------------------------------------------------------------
# a mutable line for servers, publishers and closed-loop tests


class LineSimulation:
    """The line as a mutable object: limit-checked setpoint writes, scenario, ``advance(dt)``."""

    def __init__(self, params: LineParams | None = None, setpoints: Setpoints | None = None, *, seed: int = 0,
                 scenario: Scenario | None = None) -> None:
        self.params = params or LineParams()
        self.setpoints = setpoints or Setpoints()
        for name in LIMITS:
            check_setpoint(name, getattr(self.setpoints, name))
        self.rng = random.Random(seed)
        self.state = initial_state(self.params, self.setpoints, seed)
        self.scenario = scenario or make_scenario("steady")
        self.outputs: Outputs | None = None

    @property
    def t_s(self) -> float:
        return self.state.t_s

    def write(self, name: str, value: Any) -> float | int:
        """Set one setpoint (a Setpoints field name or a setpoint signal id); raises SetpointError."""
        if name in SIGNALS_BY_ID and SIGNALS_BY_ID[name].setpoint:
            name = SIGNALS_BY_ID[name].setpoint  # type: ignore[assignment]
        v = check_setpoint(name, value)
        change: dict[str, Any] = {name: v}  # a field of Setpoints: check_setpoint refuses other names
        self.setpoints = dataclasses.replace(self.setpoints, **change)
        return v

    def advance(self, dt_s: float) -> Outputs:
        t0, t1 = self.state.t_s, self.state.t_s + dt_s
        dist = Disturbances(loading_factor=self.scenario.loading_factor(t1))
        for ev in self.scenario.events_between(t0, t1):
            if ev.setpoint is not None and ev.value is not None:
                self.write(ev.setpoint, ev.value)
            if ev.roll_change:
                dist = dataclasses.replace(dist, new_roll=True, new_roll_loading_offset=ev.roll_loading_offset)
        self.state, self.outputs = step(self.state, self.setpoints, dt_s, self.rng, self.params, dist)
        return self.outputs


def simulate(duration_s: float, dt_s: float = 1.0, *, seed: int = 0, scenario: Scenario | None = None,
             params: LineParams | None = None, setpoints: Setpoints | None = None) -> Iterator[Outputs]:
    """Run the line for ``duration_s`` and yield the outputs of every step."""
    sim = LineSimulation(params, setpoints, seed=seed, scenario=scenario)
    n = int(round(duration_s / dt_s))
    for _ in range(n):
        yield sim.advance(dt_s)


def write_csv(path: str | Path, outputs: Iterable[Outputs], start_ns: int,
              signals: Iterable[Signal] = SIGNALS) -> int:
    """Write a wide CSV (``timestamp`` ISO 8601 UTC + one column per signal, see ``Signal.column``),
    gzip-compressed when the name ends in .gz. Returns the number of rows."""
    sigs = list(signals)
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    n = 0
    with opener(path, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp"] + [s.column for s in sigs])
        for out in outputs:
            row: list[Any] = [ns_to_iso(start_ns + int(round(out.t_s * 1e9)))]
            for s in sigs:
                v = out.values[s.id]
                row.append(v if isinstance(v, (str, int)) else f"{v:.4f}")
            w.writerow(row)
            n += 1
    return n
