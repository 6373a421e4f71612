"""``[feedback]`` configuration: targets, measured tags, manipulables and the service's settings, with the
units and physical ranges of the model outputs (pint converts what a user gives to the canonical unit).

The checks that need the tag map or the model (limits within a setpoint tag's range, targets within a gauge's
range and the model's domain) are in :mod:`twin.feedback.service` (``FeedbackService.check_targets``)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ontology.units import UnitError, affine


@dataclass(frozen=True)
class OutputPhysics:
    """The service's canonical unit of a model output and its physical range (None: unbounded; open: the
    bound itself is excluded)."""

    unit: str
    lo: float | None
    lo_open: bool
    hi: float | None
    hi_open: bool
    what: str

    def contains(self, v: float) -> bool:
        below = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
        above = self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi)
        return not (below or above)

    def range_text(self) -> str:
        u = "" if self.unit == "1" else f" {self.unit}"
        if self.lo is not None and self.hi is not None:
            return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}{u}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}{u}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}{u}"
        return "finite"


# model output -> canonical unit and physical range. Targets and tolerances given in any unit pint converts
# to the canonical one are converted on the way in; the service, its API and its audit records state them in
# the canonical unit (porosity: a fraction, unit "1"; docs/feedback.md).
OUTPUTS: dict[str, OutputPhysics] = {
    "porosity": OutputPhysics("1", 0.0, True, 1.0, True, "pore volume fraction"),
    "thickness_after_um": OutputPhysics("um", 0.0, True, None, False, "coating thickness after the calender"),
    "tortuosity_factor": OutputPhysics("1", 1.0, False, None, False, "tortuosity factor of the pore phase"),
    "d_eff": OutputPhysics("1", 0.0, True, 1.0, False, "effective diffusivity ratio D_eff/D0"),
    "conductivity_eff": OutputPhysics("1", 0.0, True, 1.0, False, "effective conductivity ratio sigma_eff/sigma"),
    "springback_pct": OutputPhysics("percent", None, False, None, False, "spring-back after the nip"),
    "sa_pore_am_per_um": OutputPhysics("1/um", 0.0, False, None, False, "pore/active-material contact area density"),
    "sa_pore_cbd_per_um": OutputPhysics("1/um", 0.0, False, None, False, "pore/binder contact area density"),
    "sa_am_cbd_per_um": OutputPhysics("1/um", 0.0, False, None, False, "active-material/binder contact area density"),
}


def unit_suffix(output: str) -> str:
    """How reasons state an output's unit: porosity "(fraction)", others their canonical unit (none for "1")."""
    u = OUTPUTS[output].unit if output in OUTPUTS else "1"
    return " (fraction)" if output == "porosity" else ("" if u == "1" else f" {u}")


def clean(x: float) -> float:
    """A converted value without the float noise of the conversion (0.3 percent -> 0.003, not 0.0030000000000000005)."""
    return float(f"{x:.12g}")


_UNIT_CHARS = re.compile(r"[A-Za-z0-9 µμ°%/*^().,_+²³·-]*")
_EXPONENT = re.compile(r"(\*\*|\^)")
_SMALL_POWER = re.compile(r"\s*[-+]?\d{1,2}(\.\d{1,3})?")


def guard_unit(unit: str, what: str) -> None:
    """Refuse unit strings whose parsing could take unbounded time or memory (chained or parenthesised
    exponents such as 10**10**10, long numbers) before they reach pint: units come from API requests."""
    if len(unit) > 64 or _UNIT_CHARS.fullmatch(unit) is None:
        raise ValueError(f"{what}: unit {unit[:64]!r} is not a unit (at most 64 letters, digits, spaces and "
                         "* / ^ ( ) . % characters)")
    if re.search(r"\d{5,}", unit) or unit.count("(") > 4:
        raise ValueError(f"{what}: unit {unit!r} is too complex")
    for m in _EXPONENT.finditer(unit):
        rest = unit[m.end():]
        p = _SMALL_POWER.match(rest)
        if p is None or _EXPONENT.match(rest[p.end():].lstrip()):
            raise ValueError(f"{what}: unit {unit!r} is too complex (exponents must be plain numbers below 100)")


def affine_to(source: str, target: str, what: str) -> tuple[float, float]:
    """pint's affine map source -> target, or a ValueError that says what was wrong and what is expected."""
    guard_unit(source, what)
    try:
        return affine(source, target)
    except UnitError as err:
        raise ValueError(f"{what}: unit {source!r} cannot be used: {err} (expected a unit convertible to "
                         f"{target!r})") from err
    except Exception as err:  # pint raises many kinds on odd strings; all are a refused unit (re-raised)
        raise ValueError(f"{what}: unit {source!r} cannot be read ({type(err).__name__}); expected a unit "
                         f"convertible to {target!r}") from err


def canonical_target(output: str, spec: TargetSpec) -> TargetSpec:
    """The target converted to the output's canonical unit and checked against its physical range. Raises
    ValueError naming the output, the value, the unit and the range."""
    phys = OUTPUTS.get(output)
    if phys is None:
        raise ValueError(f"target {output!r}: unknown output; targets can be set for {sorted(OUTPUTS)}")
    unit = spec.unit if spec.unit is not None else phys.unit
    a, b = affine_to(unit, phys.unit, f"target {output!r}")
    target, tol = clean(a * spec.target + b), clean(abs(a) * spec.tolerance)
    given = f"{spec.target:g} (unit {unit!r}" + (f", = {target:g} {phys.unit!r})" if unit != phys.unit else ")")
    if not math.isfinite(target) or not phys.contains(target):
        hint = ""
        if output == "porosity" and 1.0 <= target <= 100.0 and a == 1.0:
            hint = f'; a porosity in percent needs unit = "percent" ({spec.target:g} percent = {target / 100:g})'
        raise ValueError(f"target {output!r} {given} is outside the physical range of the {phys.what}: "
                         f"{phys.range_text()}{hint}")
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"target {output!r}: tolerance {spec.tolerance:g} {unit} must be positive and finite")
    return spec.model_copy(update={"target": target, "tolerance": tol, "unit": phys.unit})


class TargetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: float = Field(..., allow_inf_nan=False, description="target value in ``unit``")
    tolerance: float = Field(..., gt=0, allow_inf_nan=False, description="+/- tolerance around the target, in ``unit``")
    weight: float = Field(1.0, ge=0, allow_inf_nan=False,
                          description="weight in the optimizer's cost (0: monitored only)")
    unit: str | None = Field(None, min_length=1, max_length=64, description=(
        "unit of target and tolerance, any unit pint converts to the output's canonical one (porosity: "
        "\"1\" = fraction or \"percent\"; thickness: \"um\"); omitted: the canonical unit. Stored and returned "
        "in the canonical unit"))


class MeasuredSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: str = Field(..., description=(
        "online structure-parameter tag measured after the calender: a tag id or \"<Term>/measured\" (twin/roles.py)"))
    factor: float | None = Field(None, allow_inf_nan=False, description=(
        "multiplies the stored value into the output's unit (percent -> 0.01); omitted: derived by pint from "
        "the tag's canonical unit, and a given factor must agree with it"))


Manipulable = Literal["gap", "roll_temperature", "line_load", "roll_speed"]


class ManipulableSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Manipulable = Field(..., description="gap or roll_temperature (the surrogate's inputs)")
    setpoint_tag: str = Field(..., description=(
        "tag of the setpoint written to the line: a tag id or \"<Term>/setpoint\" (twin/roles.py)"))
    unit: str | None = Field(None, min_length=1, max_length=64, description=(
        "unit of min, max and max_step (omitted: the setpoint tag's canonical unit); converted by pint"))
    min: float | None = Field(None, allow_inf_nan=False, description="lower limit (default: the setpoint tag's range)")
    max: float | None = Field(None, allow_inf_nan=False, description="upper limit (default: the setpoint tag's range)")
    max_step: float = Field(..., gt=0, allow_inf_nan=False, description="largest change per proposal")
    change_cost: float = Field(0.05, ge=0, allow_inf_nan=False,
                               description="cost of a change of max_step (in squared tolerances)")
    auto_apply: bool = Field(False, description="apply without approval (still limited and rate-limited)")
    settle_s: float = Field(15.0, ge=0, allow_inf_nan=False,
                            description="time the line needs to settle after a change (actuator)")
    grid: int = Field(41, ge=3, le=401, description="grid points over the step window (coarse pass)")


def _default_targets() -> dict[str, TargetSpec]:
    return {"porosity": TargetSpec(target=0.31, tolerance=0.01, weight=1.0, unit="1"),
            "thickness_after_um": TargetSpec(target=76.0, tolerance=3.0, weight=0.0, unit="um")}


def _default_measured() -> dict[str, MeasuredSpec]:
    return {"porosity": MeasuredSpec(tag="calendering.porosity_online", factor=0.01),
            "thickness_after_um": MeasuredSpec(tag="calendering.thickness_after", factor=1.0)}


def _default_manipulables() -> list[ManipulableSpec]:
    return [ManipulableSpec(name="gap", setpoint_tag="calendering.gap_setpoint", max_step=5.0)]


class FeedbackConfig(BaseModel):
    """``[feedback]``: targets per recipe, manipulables, decision rules and write-back."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="run the feedback service (needs [predictor] enabled)")
    recipe: str = Field("default", description="product (recipe) the targets belong to")
    targets: dict[str, TargetSpec] = Field(default_factory=_default_targets,
                                           description="model output -> target, tolerance, weight")
    measured: dict[str, MeasuredSpec] = Field(default_factory=_default_measured,
                                              description="model output -> online tag that measures it")
    manipulables: list[ManipulableSpec] = Field(default_factory=_default_manipulables,
                                                description="setpoints the optimizer may change")
    gap_actual_tag: str = Field("calendering.gap_actual", description="measured roll gap (um): a tag id or "
                                "\"CalenderGap/actual\"; the default finds it by that role when the id is absent")
    web_speed_tag: str = Field("calendering.roll_speed", description="web speed at the calender (m/min): a tag "
                               "id or \"CalenderingSpeed/actual\"; the default finds it by that role")
    gauge_distance_m: float = Field(0.5, ge=0, description="calender nip -> thickness gauge after it (m)")
    settle_s: float = Field(15.0, ge=0, description="settle time after any manipulable setpoint change")
    window_s: float = Field(20.0, gt=0, description="averaging window of the online measurements")
    min_window_samples: int = Field(5, ge=1, description="fewer settled measurements: no proposal")
    interval_s: float = Field(5.0, gt=0, description="how often the service decides")
    deadband: float = Field(0.5, ge=0, le=1, description="no proposal while every |error| <= deadband x tolerance")
    min_improvement: float = Field(0.5, ge=0, description="least predicted cost reduction (squared tolerances)")
    uncertainty_weight: float = Field(1.0, ge=0, description="weight of the predicted spread in the cost")
    proposal_ttl_s: float = Field(600.0, gt=0, description="an unanswered proposal expires after this long")
    auto_apply_min_interval_s: float = Field(60.0, ge=0, description="rate limit of automatic applies")
    gain_init: float = Field(1.0, gt=0, description="initial model-correction gain (1: trust the surrogate)")
    gain_bounds: tuple[float, float] = Field((0.1, 50.0), description="bounds of the estimated gain")
    gain_memory: float = Field(0.8, gt=0, le=1, description="weight of a new gain observation (log space)")
    gain_sd_rel: float = Field(0.5, ge=0, description="relative sd of the gain before any observation (shrinks "
                                                      "with 1/sqrt(1 + observations))")
    line_time_scale: float = Field(1.0, gt=0, description=(
        "simulated lines only: the line runs this many times faster than the wall clock, which divides "
        "lags and settle times; 1 for a real line"))
    write_connector: str | None = Field(None, description="connector that writes setpoints (default: the one that "
                                                          "owns a source address of the setpoint tag, OPC-UA or MQTT)")

    @model_validator(mode="after")
    def _check(self) -> FeedbackConfig:
        for m in self.manipulables:
            if m.name in ("line_load", "roll_speed"):
                raise ValueError(
                    f"manipulable {m.name!r}: the calendering surrogate has no input that it sets (gap and "
                    "roll temperature only; in line-load mode the gap results from the load, and the line speed "
                    "maps to the quasi-static end of the DEM domain, docs/feedback.md)")
            if m.min is not None and m.max is not None and m.min >= m.max:
                raise ValueError(f"manipulable {m.name!r}: min {m.min} must be below max {m.max}")
        names = [m.name for m in self.manipulables]
        if len(set(names)) != len(names):
            raise ValueError(f"manipulables: each parameter once (got {names})")
        # targets in the output's canonical unit, within its physical range (the model's domain and the gauge's
        # range are checked where the model and the tag map are known: FeedbackService.check_targets)
        self.targets = {k: canonical_target(k, t) for k, t in self.targets.items()}
        missing = [k for k, t in self.targets.items() if t.weight > 0 and k not in self.measured]
        if missing:
            raise ValueError(f"targets {missing} have weight but no measured tag in [feedback.measured]")
        return self
