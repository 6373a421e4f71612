"""What a calender setting means for the cell: a PyBaMM Doyle–Fuller–Newman model of the calendered cathode
(issue #18, item 4; seed 000 compares discharge curves of electrodes made two ways).

The calendered cathode enters through three numbers the twin predicts for every setting — the electrolyte-filled
(total) porosity, the effective diffusivity of its pore network and its thickness — and the coating's recipe and
areal loading, which calendering does not change:

* electrolyte volume fraction ε_e = total porosity (``ontology.definitions``: the CBD's nanopores hold
  electrolyte too);
* active-material volume fraction ε_AM = (1 − ε_e) · φ_AM, with φ_AM the NMC share of the solid volume from the
  recipe's skeletal densities; with the loading given, ε_AM · L = loading · w / ρ_NMC is checked against it;
* transport: PyBaMM's electrolyte transport efficiency is ε_e^b (Bruggeman); b is set so that ε_e^b equals the
  predicted D_eff / D_0 (the voxel metric of the resolved pore network; from a tortuosity factor τ of the macro
  pores: D_eff / D_0 = ε_macro / τ), i.e. b = ln(D_eff / D_0) / ln ε_e, one Bruggeman exponent fitted per
  setting to the predicted τ–ε pair.

Everything else (graphite anode, separator, electrolyte, kinetics, the NMC811 open-circuit potential) is PyBaMM's
Chen2020 parameter set (an LG M50 cell: NMC811 / graphite-SiOx, 75.6 µm cathode). The discharge current of a C-rate
is taken from the cathode's own nominal capacity (Chen2020's 5 Ah scaled with ε_AM · L), so two settings of the
same coating (same loading) are discharged at the same current and differ only by their structure.

Speed: the model is discretised once per cathode thickness (the mesh depends on it; kept in a small cache) and
solved with PyBaMM's IDAKLU solver with the structure as input parameters. Nothing is downloaded (Chen2020 ships
with PyBaMM) and PyBaMM's telemetry is switched off before it is imported.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ontology.definitions import LINE_RECIPE, Recipe

os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")

PARAMETER_SET = "Chen2020"
#: the Chen2020 cathode the nominal capacity refers to: ε_AM 0.665 × 75.6 µm
_REF_AM_UM = 0.665 * 75.6
_REF_CAPACITY_AH = 5.0
_INPUTS = ("Positive electrode porosity", "Positive electrode active material volume fraction",
           "Positive electrode Bruggeman coefficient (electrolyte)", "Current function [A]")


class CellInputError(ValueError):
    """A cathode state the cell model cannot take (unphysical porosity, diffusivity, thickness or loading)."""


@dataclass(frozen=True)
class CathodeState:
    """A calendered cathode: total porosity, D_eff / D_0 of its pores, thickness (µm), areal loading (mg/cm²,
    optional: checked against the others)."""

    porosity: float
    d_eff: float
    thickness_um: float
    loading_mg_cm2: float | None = None

    @classmethod
    def from_tortuosity(cls, porosity_total: float, porosity_macro: float, tortuosity_factor: float,
                        thickness_um: float, loading_mg_cm2: float | None = None) -> CathodeState:
        """From the DEM's macro-porosity and tortuosity factor: D_eff / D_0 = ε_macro / τ."""
        if tortuosity_factor < 1.0:
            raise CellInputError(f"tortuosity factor {tortuosity_factor} < 1")
        return cls(porosity_total, porosity_macro / tortuosity_factor, thickness_um, loading_mg_cm2)


@dataclass
class Discharge:
    c_rate: float
    current_A: float
    capacity_Ah: float
    capacity_mAh_cm2: float
    energy_Wh: float
    mean_voltage_V: float
    termination: str
    curve: dict[str, list[float]] = field(default_factory=dict)  # capacity_mAh_cm2, voltage_V (≤ 60 points)


@dataclass
class CellResult:
    state: dict[str, Any]
    derived: dict[str, float]
    discharges: list[Discharge]
    parameter_set: str
    cpu_s: float

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "derived": self.derived, "parameter_set": self.parameter_set,
                "cpu_s": self.cpu_s, "discharges": [asdict(d) for d in self.discharges]}


def bruggeman_exponent(porosity: float, d_eff: float) -> float:
    """b with ε^b = D_eff / D_0 (b = 1.5 is Bruggeman's spheres; calendered NMC cathodes are often 2–3)."""
    if not 0.0 < d_eff < porosity < 1.0:
        raise CellInputError(f"need 0 < D_eff/D0 ({d_eff}) < porosity ({porosity}) < 1")
    return math.log(d_eff) / math.log(porosity)


class CellModel:
    """DFN discharges of calendered cathodes (thread-safe; one instance per process is enough)."""

    def __init__(self, recipe: Recipe = LINE_RECIPE, c_rates: tuple[float, ...] = (0.5, 2.0),
                 cache_size: int = 8, curve_points: int = 60) -> None:
        if not c_rates or any(c <= 0 for c in c_rates):
            raise ValueError(f"C-rates must be positive: {c_rates}")
        self.recipe = recipe
        self.c_rates = tuple(float(c) for c in c_rates)
        self.cutoff_V = 2.5  # Chen2020 lower voltage cut-off
        self.curve_points = curve_points
        self._cache: OrderedDict[float, Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        w = recipe.am_fraction
        v_am, v_cbd = w / recipe.rho_am, (1.0 - w) / recipe.rho_cbd_skeletal
        self.am_volume_share = v_am / (v_am + v_cbd)

    # -- the cathode -------------------------------------------------------------------------------
    def derive(self, s: CathodeState) -> dict[str, float]:
        if not 0.05 <= s.porosity <= 0.7:
            raise CellInputError(f"porosity {s.porosity} outside 0.05-0.70")
        if not 10.0 <= s.thickness_um <= 300.0:
            raise CellInputError(f"thickness {s.thickness_um} um outside 10-300 um")
        b = bruggeman_exponent(s.porosity, s.d_eff)
        eps_am = (1.0 - s.porosity) * self.am_volume_share
        out = {"electrolyte_fraction": s.porosity, "am_volume_fraction": eps_am, "bruggeman_exponent": b,
               "tortuosity_factor_effective": s.porosity / s.d_eff,
               "am_thickness_um": eps_am * s.thickness_um}
        if s.loading_mg_cm2 is not None:
            expect = s.loading_mg_cm2 * self.recipe.am_fraction / self.recipe.rho_am * 10.0  # um of NMC
            if abs(expect - out["am_thickness_um"]) > 0.03 * expect:
                raise CellInputError(
                    f"porosity {s.porosity:.4f} and thickness {s.thickness_um:.2f} um hold "
                    f"{out['am_thickness_um']:.2f} um of NMC, the loading {s.loading_mg_cm2} mg/cm2 "
                    f"{expect:.2f} um: not the same coating (total porosity expected, ontology.definitions)")
        out["nominal_capacity_Ah"] = _REF_CAPACITY_AH * out["am_thickness_um"] / _REF_AM_UM
        return out

    def cached_thicknesses(self) -> list[float]:
        """Cathode thicknesses (µm, 0.1 µm steps) with a discretised model in the cache."""
        with self._lock:
            return list(self._cache)

    # -- PyBaMM ------------------------------------------------------------------------------------
    def _simulation(self, thickness_um: float) -> Any:
        key = round(thickness_um, 1)
        with self._lock:
            sim = self._cache.get(key)
            if sim is not None:
                self._cache.move_to_end(key)
                return sim
        import pybamm

        pv = pybamm.ParameterValues(PARAMETER_SET)
        pv.update({"Positive electrode thickness [m]": key * 1e-6, **{k: "[input]" for k in _INPUTS}})
        # a cathode that starves its electrolyte at a high rate makes the solver stop before the cut-off voltage:
        # keep the partial solution (what the cell delivered until then) and say so in `termination`
        sim = pybamm.Simulation(pybamm.lithium_ion.DFN(), parameter_values=pv,
                                solver=pybamm.IDAKLUSolver(on_failure="ignore"))
        with self._lock:
            self._cache[key] = sim
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return sim

    def evaluate(self, state: CathodeState) -> CellResult:
        t0 = time.process_time()
        der = self.derive(state)
        sim = self._simulation(state.thickness_um)
        area_cm2 = 1e4 * float(sim.parameter_values["Electrode height [m]"] * sim.parameter_values["Electrode width [m]"])
        out = []
        for c in self.c_rates:
            current = c * der["nominal_capacity_Ah"]
            inputs = {"Positive electrode porosity": der["electrolyte_fraction"],
                      "Positive electrode active material volume fraction": der["am_volume_fraction"],
                      "Positive electrode Bruggeman coefficient (electrolyte)": der["bruggeman_exponent"],
                      "Current function [A]": current}
            with self._lock:  # a Simulation is not re-entrant
                sol = sim.solve([0.0, 3600.0 * 1.3 / c], inputs=inputs)
            q = np.asarray(sol["Discharge capacity [A.h]"].entries, dtype=np.float64)
            v = np.asarray(sol["Voltage [V]"].entries, dtype=np.float64)
            e = float(np.trapezoid(v, q)) if len(q) > 1 else 0.0
            idx = np.unique(np.linspace(0, len(q) - 1, min(self.curve_points, len(q))).round().astype(int))
            cap = float(q[-1])
            term = str(sol.termination)
            if "Minimum voltage" not in term and v[-1] > self.cutoff_V + 0.05:
                c_e = np.asarray(sol["Electrolyte concentration [mol.m-3]"].entries, dtype=np.float64)[:, -1]
                term = (f"stopped at {v[-1]:.2f} V before the cut-off (solver failure; lowest electrolyte "
                        f"concentration {c_e.min():.0f} mol/m3: transport-limited at this rate); capacity is "
                        "what the cell delivered until then")
            out.append(Discharge(c, current, cap, 1e3 * cap / area_cm2, e, e / cap if cap > 0 else float("nan"),
                                 term,
                                 {"capacity_mAh_cm2": [float(x) for x in 1e3 * q[idx] / area_cm2],
                                  "voltage_V": [float(x) for x in v[idx]]}))
        return CellResult(asdict(state), der, out, PARAMETER_SET, time.process_time() - t0)

    def compare(self, a: CathodeState, b: CathodeState) -> dict[str, Any]:
        """Two settings side by side (e.g. the current one and a proposal): capacity differences per C-rate."""
        ra, rb = self.evaluate(a), self.evaluate(b)
        diff = {f"{da.c_rate:g}C": {"capacity_mAh_cm2": db.capacity_mAh_cm2 - da.capacity_mAh_cm2,
                                    "capacity_pct": 100.0 * (db.capacity_Ah / da.capacity_Ah - 1.0)
                                    if da.capacity_Ah > 0 else float("nan")}
                for da, db in zip(ra.discharges, rb.discharges)}
        return {"a": ra.as_json(), "b": rb.as_json(), "difference_b_minus_a": diff}
