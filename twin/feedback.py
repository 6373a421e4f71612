"""Feedback service: corrected calender settings to hit target structure metrics, approval-gated.

What it does every ``interval_s`` (docs/feedback.md):

1. **Line reality.** The online structure parameters (porosity from thickness and loading, thickness
   after the calender) are averaged over material that passed the calender *after* the line settled
   from the last setpoint change: a reading at the gauge is attributed to the material that was in the
   nip one transport lag (gauge distance / web speed) earlier.
2. **Model correction (digital-real exchange, seed 004 Fig. 1).** The surrogate ensemble is anchored
   at the measured value (the bias is the measured minus predicted value at the current settings) and
   its local sensitivity is scaled by a gain estimated from the line's response to earlier changes
   (``gain``: realised change / predicted change, a log-space exponentially weighted estimate, bounded).
   Corrected prediction for candidate settings u: ``y(u) = y_measured + gain * (f(u) - f(u_now))``,
   spread ``gain * sd(u)``.
3. **Optimizer.** A vectorised grid over the manipulable setpoints (one ONNX batch), within the machine
   limits and the maximum step per proposal, then a finer grid around the best point. Cost: weighted
   squared deviation from target in tolerances + a penalty on the predicted spread + a cost of change.
   Candidates the model flags out of domain are refused. A wider grid up to the machine limits tells
   whether the step limit or a machine limit clipped the proposal.
4. **Decision rules.** No proposal on missing, stale or flagged inputs, out-of-domain current state,
   while the line settles, within the dead band, or without a significant predicted improvement; a
   proposal's predicted band must fit the tolerance unless it is a clipped step towards the target
   (then it says a further step will follow). Every decision carries its reasons in words.
5. **Lifecycle.** proposed -> approved / rejected / expired -> applied (verified OPC-UA write) or
   failed -> evaluated (realised vs predicted after settling). Approval through the API with a write
   token; auto-apply only for manipulables configured so, bounded by limits and a rate limit. Every
   transition is appended to the store's audit trail with the model version, input snapshot and
   predictions.
6. **Units and persistence.** Targets and tolerances are converted by pint to the output's canonical unit
   (porosity: a fraction) and refused outside the physical range, the measuring gauge's range and the model
   card's output ranges; manipulable limits are converted to the setpoint tag's unit and checked against
   its range. Targets, gains and the newest proposals are restored from the audit trail at start-up
   (``feedback.state`` records); proposals that expired meanwhile become ``expired``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from twin.predictor import line_to_model_inputs, outputs_to_line
from twin.roles import bind_feedback
from core.samples import Quality, Sample, now_ns, ns_to_iso
from core.supervise import RoundFailures

log = logging.getLogger("twin.feedback")


# -- configuration ------------------------------------------------------------------------------
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
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True

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


def _clean(x: float) -> float:
    """A converted value without the float noise of the conversion (0.3 percent -> 0.003, not 0.0030000000000000005)."""
    return float(f"{x:.12g}")


_UNIT_CHARS = re.compile(r"[A-Za-z0-9 µμ°%/*^().,_+²³·-]*")
_EXPONENT = re.compile(r"(\*\*|\^)")
_SMALL_POWER = re.compile(r"\s*[-+]?\d{1,2}(\.\d{1,3})?")


def _guard_unit(unit: str, what: str) -> None:
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


def _affine(source: str, target: str, what: str) -> tuple[float, float]:
    """pint's affine map source -> target, or a ValueError that says what was wrong and what is expected."""
    from ontology.units import UnitError, affine

    _guard_unit(source, what)
    try:
        return affine(source, target)
    except UnitError as err:
        raise ValueError(f"{what}: unit {source!r} cannot be used: {err} (expected a unit convertible to "
                         f"{target!r})") from err
    except Exception as err:  # noqa: BLE001 - pint raises many kinds on odd strings; all are a refused unit
        raise ValueError(f"{what}: unit {source!r} cannot be read ({type(err).__name__}); expected a unit "
                         f"convertible to {target!r}") from err


def canonical_target(output: str, spec: "TargetSpec") -> "TargetSpec":
    """The target converted to the output's canonical unit and checked against its physical range. Raises
    ValueError naming the output, the value, the unit and the range."""
    phys = OUTPUTS.get(output)
    if phys is None:
        raise ValueError(f"target {output!r}: unknown output; targets can be set for {sorted(OUTPUTS)}")
    unit = spec.unit if spec.unit is not None else phys.unit
    a, b = _affine(unit, phys.unit, f"target {output!r}")
    target, tol = _clean(a * spec.target + b), _clean(abs(a) * spec.tolerance)
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
    def _check(self) -> "FeedbackConfig":
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


# -- proposals ------------------------------------------------------------------------------------
STATES = ("proposed", "approved", "rejected", "expired", "applied", "failed", "evaluated")


@dataclass
class Setting:
    parameter: str
    tag: str
    current: float
    proposed: float
    unit: str
    clipped: bool = False
    limit_note: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"parameter": self.parameter, "tag": self.tag, "current": self.current, "proposed": self.proposed,
                "unit": self.unit, "clipped": self.clipped, "limit_note": self.limit_note}


@dataclass
class Proposal:
    id: str
    line_id: str
    created_ns: int
    model_version: str
    settings: list[Setting]
    predicted: dict[str, dict[str, float]]
    predicted_now: dict[str, dict[str, float]]
    reasons: list[str]
    inputs: dict[str, Any]
    gain: dict[str, float]
    raw_now: dict[str, float]  # uncorrected model outputs at the current settings
    raw_new: dict[str, float]  # uncorrected model outputs at the proposed settings
    measured_before: dict[str, float]
    state: str = "proposed"
    updated_ns: int = 0
    approved_by: str | None = None
    error: str | None = None
    applied_ns: int | None = None
    realised: dict[str, Any] | None = None
    writes: list[dict[str, Any]] = field(default_factory=list)
    auto: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "line_id": self.line_id, "state": self.state, "created": ns_to_iso(self.created_ns),
                "updated": ns_to_iso(self.updated_ns or self.created_ns), "model_version": self.model_version,
                "settings": [s.as_json() for s in self.settings], "predicted": self.predicted,
                "predicted_now": self.predicted_now, "reasons": self.reasons, "approved_by": self.approved_by,
                "error": self.error, "realised": self.realised, "inputs": self.inputs, "gain": self.gain,
                "measured_before": self.measured_before, "writes": self.writes, "auto": self.auto,
                "applied": ns_to_iso(self.applied_ns) if self.applied_ns else None}

    def record_json(self) -> dict[str, Any]:
        """The audit body: the API's view plus what a restart needs to restore the proposal exactly."""
        return {**self.as_json(), "created_ns": self.created_ns, "updated_ns": self.updated_ns,
                "applied_ns": self.applied_ns, "raw_now": self.raw_now, "raw_new": self.raw_new}

    @classmethod
    def from_record(cls, b: dict[str, Any]) -> "Proposal":
        """A proposal from its newest audit body (``record_json``). Raises KeyError/TypeError/ValueError."""
        settings = [Setting(s["parameter"], s["tag"], float(s["current"]), float(s["proposed"]), s["unit"],
                            bool(s.get("clipped")), s.get("limit_note")) for s in b["settings"]]
        state = str(b["state"])
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        return cls(id=str(b["id"]), line_id=str(b["line_id"]), created_ns=int(b["created_ns"]),
                   model_version=str(b["model_version"]), settings=settings, predicted=dict(b["predicted"]),
                   predicted_now=dict(b["predicted_now"]), reasons=list(b["reasons"]), inputs=dict(b["inputs"]),
                   gain=dict(b["gain"]), raw_now=dict(b["raw_now"]), raw_new=dict(b["raw_new"]),
                   measured_before=dict(b["measured_before"]), state=state, updated_ns=int(b.get("updated_ns") or 0),
                   approved_by=b.get("approved_by"), error=b.get("error"),
                   applied_ns=int(b["applied_ns"]) if b.get("applied_ns") is not None else None,
                   realised=b.get("realised"), writes=list(b.get("writes") or []), auto=bool(b.get("auto")))


class ProposalError(RuntimeError):
    """A transition the proposal's state does not allow (HTTP 409)."""


@dataclass
class Decision:
    """The outcome of one decision round: a proposal, or the reasons there is none."""

    ts_ns: int
    line_id: str
    proposal_id: str | None
    reasons: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"ts": ns_to_iso(self.ts_ns), "line_id": self.line_id, "proposal_id": self.proposal_id,
                "reasons": self.reasons}


# -- optimizer ----------------------------------------------------------------------------------
@dataclass
class Candidates:
    setpoints: np.ndarray  # [n, n_manipulables]
    raw_mean: np.ndarray  # [n, n_outputs] (thickness scaled to the line)
    raw_std: np.ndarray  # predictive sd (ensemble spread + calibrated DEM scatter)
    raw_spread: np.ndarray  # ensemble disagreement alone
    ood: np.ndarray


@dataclass
class Correction:
    """What the line says about the model (per output): the measured value the prediction is anchored
    to, its standard error, the sensitivity gain and the gain's relative uncertainty."""

    measured: dict[str, float]
    se: dict[str, float]
    gain: dict[str, float]
    gain_sd_rel: dict[str, float]


@dataclass
class OptimResult:
    best: np.ndarray  # setpoints
    cost_best: float
    cost_now: float
    corrected: dict[str, dict[str, float]]
    corrected_now: dict[str, dict[str, float]]
    raw_best: dict[str, float]
    raw_now: dict[str, float]
    clipped: list[str | None]  # per manipulable: None or a note
    evaluated: int


class Optimizer:
    """Vectorised search over the ensemble, with the line correction applied."""

    def __init__(self, cfg: FeedbackConfig, predictor: Any, limits: list[tuple[float, float]]) -> None:
        self.cfg = cfg
        self.predictor = predictor
        self.limits = limits

    def _model_rows(self, values: dict[str, float], sp_now: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Model input rows for candidate setpoints: a gap setpoint moves the actual gap by the same amount
        (the roll displacement at the new load is a second-order effect the gain absorbs); a roll
        temperature setpoint is the steady-state roll temperature."""
        p = self.predictor
        model = p.model
        base = line_to_model_inputs(values, p.config, p.rve_thickness(), model.domain.get("wall_speed_mm_s"),
                                    p.porosity_kind)
        names = list(model.input_names)
        x = np.tile(np.array([base[n] for n in names], dtype=np.float64), (len(cand), 1))
        h0 = values["dry_thickness"]
        for j, m in enumerate(self.cfg.manipulables):
            if m.name == "gap":
                gap = values["gap"] + (cand[:, j] - sp_now[j]) - p.config.foil_thickness_um
                x[:, names.index("compaction_degree")] = 1.0 - gap / h0
            elif m.name == "roll_temperature":
                x[:, names.index("roll_temperature_C")] = cand[:, j]
        return x.astype(np.float32)

    def evaluate(self, values: dict[str, float], sp_now: np.ndarray, cand: np.ndarray) -> Candidates:
        model = self.predictor.model
        res = model.predict(self._model_rows(values, sp_now, cand), reasons=False)
        mean = np.asarray(res.mean, dtype=np.float64).copy()
        std = np.asarray(res.std, dtype=np.float64).copy()
        spread = np.asarray(res.spread, dtype=np.float64).copy()
        names = list(model.output_names)
        if "thickness_after_um" in names:
            k = names.index("thickness_after_um")
            scale = values["dry_thickness"] / self.predictor.rve_thickness()
            for a in (mean, std, spread):
                a[:, k] *= scale
        outputs_to_line(self.predictor.config, self.predictor.porosity_kind, names, mean, std, spread)
        return Candidates(cand, mean, std, spread, np.asarray(res.ood, dtype=bool))

    def cost(self, c: Candidates, cr: Correction, raw_now: np.ndarray, spread_now: np.ndarray,
             sp_now: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Corrected prediction y(u) = y_measured + gain (f(u) - f(u_now)) and its sd: the standard error of
        the measured anchor, the gain's uncertainty times the predicted change, and the growth of the
        ensemble's disagreement away from the anchored point (the DEM scatter in the absolute sd is the
        same at u and u_now and cancels in a change)."""
        names = list(self.predictor.model.output_names)
        total = np.zeros(len(c.setpoints))
        corr: dict[str, np.ndarray] = {}
        sd: dict[str, np.ndarray] = {}
        for out, t in self.cfg.targets.items():
            if out not in names or out not in cr.measured:
                continue
            k = names.index(out)
            g = cr.gain.get(out, self.cfg.gain_init)
            df = c.raw_mean[:, k] - raw_now[k]
            y = cr.measured[out] + g * df
            s = np.sqrt(cr.se.get(out, 0.0) ** 2 + (cr.gain_sd_rel.get(out, 0.5) * g * df) ** 2
                        + (g * np.maximum(c.raw_spread[:, k] - spread_now[k], 0.0)) ** 2)
            corr[out], sd[out] = y, s
            if t.weight > 0:
                total += t.weight * (((y - t.target) / t.tolerance) ** 2
                                     + self.cfg.uncertainty_weight * (s / t.tolerance) ** 2)
        for j, m in enumerate(self.cfg.manipulables):
            total += m.change_cost * ((c.setpoints[:, j] - sp_now[j]) / m.max_step) ** 2
        total[c.ood] = np.inf
        return total, corr, sd

    def _grid(self, lo: np.ndarray, hi: np.ndarray, n: list[int]) -> np.ndarray:
        axes = [np.linspace(a, b, k) if b > a else np.array([a]) for a, b, k in zip(lo, hi, n)]
        mesh = np.meshgrid(*axes, indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=1)

    def run(self, values: dict[str, float], sp_now: np.ndarray, cr: Correction) -> OptimResult:
        ms = self.cfg.manipulables
        lim_lo = np.array([lo for lo, _ in self.limits])
        lim_hi = np.array([hi for _, hi in self.limits])
        step = np.array([m.max_step for m in ms])
        win_lo = np.maximum(lim_lo, sp_now - step)
        win_hi = np.minimum(lim_hi, sp_now + step)
        # per axis: the configured grid for one manipulable; at most 21 points each for several (a 2-D search
        # with 21 x 21 coarse points and a 21 x 21 refinement resolves a 5-um step to 0.025 um)
        n_axis = [m.grid if len(ms) == 1 else min(m.grid, 21) for m in ms]
        coarse = self._grid(win_lo, win_hi, n_axis)
        wide = self._grid(lim_lo, lim_hi, n_axis)
        now = sp_now[None, :]
        allc = np.concatenate([now, coarse, wide])
        c = self.evaluate(values, sp_now, allc)
        raw_now, spread_now = c.raw_mean[0], c.raw_spread[0]
        cost, _, _ = self.cost(c, cr, raw_now, spread_now, sp_now)
        cost_now = float(cost[0])
        n_coarse = len(coarse)
        i_best = int(np.argmin(cost[1:1 + n_coarse])) + 1
        # local refinement: a finer grid around the best coarse point (one coarse spacing each side)
        spacing = (win_hi - win_lo) / np.maximum(np.array(n_axis) - 1, 1)
        f_lo = np.maximum(win_lo, allc[i_best] - spacing)
        f_hi = np.minimum(win_hi, allc[i_best] + spacing)
        fine = self._grid(f_lo, f_hi, [21] * len(ms))
        cf = self.evaluate(values, sp_now, fine)
        cost_f, _, _ = self.cost(cf, cr, raw_now, spread_now, sp_now)
        j = int(np.argmin(cost_f))
        if cost_f[j] <= cost[i_best]:
            best, cost_best = fine[j], float(cost_f[j])
        else:
            best, cost_best = allc[i_best], float(cost[i_best])
        # clipping: is the best point over the machine limits outside the step window, or on a limit?
        i_wide = int(np.argmin(cost[1 + n_coarse:])) + 1 + n_coarse
        clipped: list[str | None] = []
        for k, m in enumerate(ms):
            note = None
            w = allc[i_wide, k]
            if np.isfinite(cost[i_wide]) and cost[i_wide] < cost_best - 1e-9 and (w > win_hi[k] + 1e-9
                                                                                  or w < win_lo[k] - 1e-9):
                note = (f"clipped to the maximum step of {m.max_step:g} per proposal (the optimum over the machine "
                        f"limits is near {w:.4g}); a further step will be proposed after the line settles")
            if abs(best[k] - lim_lo[k]) < 1e-9 and sp_now[k] - step[k] < lim_lo[k]:
                note = f"clipped at the machine limit {lim_lo[k]:g}"
            elif abs(best[k] - lim_hi[k]) < 1e-9 and sp_now[k] + step[k] > lim_hi[k]:
                note = f"clipped at the machine limit {lim_hi[k]:g}"
            clipped.append(note)
        both = self.evaluate(values, sp_now, np.stack([sp_now, best]))
        _, corr, sd = self.cost(both, cr, raw_now, spread_now, sp_now)
        names = list(self.predictor.model.output_names)

        def pack(i: int) -> dict[str, dict[str, float]]:
            out = {}
            for o in corr:
                t = self.cfg.targets[o]
                out[o] = {"mean": float(corr[o][i]), "std": float(sd[o][i]), "target": t.target,
                          "tolerance": t.tolerance, "unit": t.unit}
            return out

        return OptimResult(best, cost_best, cost_now, pack(1), pack(0),
                           {n: float(both.raw_mean[1, k]) for k, n in enumerate(names)},
                           {n: float(both.raw_mean[0, k]) for k, n in enumerate(names)}, clipped,
                           len(allc) + len(fine) + 2)


# -- the service ----------------------------------------------------------------------------------
class History:
    """Recent committed values of the tags the service watches (fed by the pipeline's after-commit hook).
    The time of each tag's last value change is kept as values arrive, so a decision round reads it in
    O(1) instead of scanning the history."""

    CHANGE_EPS = 1e-6  # relative: a setpoint that moved by less did not change

    def __init__(self, tags: set[str], maxlen: int = 50_000) -> None:
        self.tags = tags
        self.data: dict[tuple[str, str], deque[tuple[int, float, int]]] = {}
        self.changed: dict[tuple[str, str], int] = {}
        self.maxlen = maxlen

    def add(self, samples: Sequence[Sample]) -> None:
        for s in samples:
            if s.tag_id in self.tags and isinstance(s.value, (int, float)):
                key = (s.line_id, s.tag_id)
                q = self.data.get(key)
                if q is None:
                    q = self.data[key] = deque(maxlen=self.maxlen)
                v = float(s.value)
                if q and abs(v - q[-1][1]) > self.CHANGE_EPS * max(1.0, abs(q[-1][1])):
                    self.changed[key] = s.source_ts_ns
                q.append((s.source_ts_ns, v, int(s.quality)))

    def since(self, line: str, tag: str, t0_ns: int) -> list[tuple[int, float, int]]:
        """Values from ``t0_ns`` on, read from the newest end (the window is short, the history long)."""
        q = self.data.get((line, tag))
        if q is None:
            return []
        out = []
        for x in reversed(q):
            if x[0] < t0_ns:
                break
            out.append(x)
        out.reverse()
        return out

    def last_change_ns(self, line: str, tag: str) -> int | None:
        return self.changed.get((line, tag))


class FeedbackService:
    """Lives in the daemon: ``daemon.extensions['feedback']``."""

    STATE_KIND = "feedback.state"
    STATE_REF = "feedback:state"
    PERSIST_PROPOSALS = 100  # the newest proposals restored after a restart (the page shows 20, the API 50)

    def __init__(self, config: FeedbackConfig, daemon: Any) -> None:
        config = bind_feedback(config, daemon.tagmap)  # roles -> the tag map's ids (twin/roles.py); fails fast
        self.cfg = config
        self.daemon = daemon
        self.proposals: dict[str, Proposal] = {}
        self.order: deque[str] = deque(maxlen=1000)
        self.gain: dict[str, dict[str, float]] = {}  # line -> output -> gain
        self.gain_n: dict[str, dict[str, int]] = {}  # line -> output -> gain observations
        self.last_decision: dict[str, Decision] = {}
        self.last_apply_ns: dict[str, int] = {}
        self.last_change_ns: dict[str, int] = {}
        self.latency_ms: deque[float] = deque(maxlen=1000)
        self._task: asyncio.Task[None] | None = None
        self.rounds = RoundFailures()
        self._lock = asyncio.Lock()
        tags = {m.setpoint_tag for m in config.manipulables} | {s.tag for s in config.measured.values()}
        tags |= {config.gap_actual_tag, config.web_speed_tag}
        self.history = History(tags)
        # fail fast: limits in the setpoint tags' units, measured factors from the tags' units, targets within
        # what the gauges measure and the model covers
        self.limits = self._limits()
        self.factors = self._factors()
        self.check_targets(self.cfg.targets)
        self._config_targets = self._targets_body(self.cfg)
        from prometheus_client import Counter, Gauge

        reg = daemon.metrics.registry
        self.m_transitions = Counter("twin_feedback_proposals", "Proposal state transitions", ["state"], registry=reg)
        self.m_gain = Gauge("twin_feedback_model_gain", "Model-correction gain estimated from the line",
                            ["line", "output"], registry=reg)
        self.restored = self._restore()

    # -- set-up -------------------------------------------------------------------------------------
    def _limits(self) -> list[tuple[float, float]]:
        """Machine limits per manipulable in the setpoint tag's canonical unit. min, max and max_step are
        converted from the manipulable's ``unit`` (pint) and must lie within the tag's range; the converted
        values replace the configured ones (``self.cfg.manipulables`` then states the tag's unit)."""
        out, converted = [], []
        for m in self.cfg.manipulables:
            spec = self.daemon.tagmap.tags.get(m.setpoint_tag)
            if spec is None:
                raise ValueError(f"feedback: setpoint tag {m.setpoint_tag!r} of {m.name!r} is not in the tag map")
            what = f"feedback: manipulable {m.name!r}"
            unit = m.unit if m.unit is not None else spec.unit
            a, b = _affine(unit, spec.unit, what)
            lo_c = None if m.min is None else _clean(a * m.min + b)
            hi_c = None if m.max is None else _clean(a * m.max + b)
            if a < 0:
                lo_c, hi_c = hi_c, lo_c
            step = _clean(abs(a) * m.max_step)
            rng = (spec.lo, spec.hi) if math.isfinite(spec.lo) and math.isfinite(spec.hi) else None
            lo = lo_c if lo_c is not None else (rng[0] if rng else None)
            hi = hi_c if hi_c is not None else (rng[1] if rng else None)
            if lo is None or hi is None:
                raise ValueError(f"feedback: {m.name!r} needs limits: set min/max or a range on {m.setpoint_tag!r}")
            if rng and (lo < rng[0] or hi > rng[1]):
                given = f" (given as [{m.min}, {m.max}] {unit})" if unit != spec.unit else ""
                raise ValueError(f"feedback: limits [{lo:g}, {hi:g}] {spec.unit}{given} of {m.name!r} exceed the tag's "
                                 f"range {list(rng)} {spec.unit}")
            if not lo < hi:
                raise ValueError(f"{what}: min {lo:g} must be below max {hi:g} ({spec.unit})")
            if not 0 < step <= hi - lo:
                raise ValueError(f"{what}: max_step {step:g} {spec.unit} must be positive and at most the span of "
                                 f"the limits ({hi - lo:g} {spec.unit})")
            out.append((float(lo), float(hi)))
            converted.append(m.model_copy(update={"unit": spec.unit, "min": float(lo), "max": float(hi),
                                                  "max_step": step}))
        self.cfg = self.cfg.model_copy(update={"manipulables": converted})
        return out

    def _factors(self) -> dict[str, float]:
        """Per measured output: the factor from the tag's stored (canonical) unit to the output's unit, by pint.
        A configured factor must agree with it (a percent tag read as a fraction moves the line the wrong way)."""
        out = {}
        for o, m in self.cfg.measured.items():
            spec = self.daemon.tagmap.tags.get(m.tag)
            phys = OUTPUTS.get(o)
            if phys is None:
                raise ValueError(f"feedback: measured output {o!r} is unknown; known: {sorted(OUTPUTS)}")
            if spec is None:
                if m.factor is None:
                    raise ValueError(f"feedback: measured tag {m.tag!r} of {o!r} is not in the tag map (its unit, "
                                     "and so the factor, is unknown)")
                out[o] = float(m.factor)
                continue
            a, b = _affine(spec.unit, phys.unit, f"feedback: measured tag {m.tag!r} of {o!r}")
            if b != 0.0:
                raise ValueError(f"feedback: measured tag {m.tag!r} ({spec.unit}) of {o!r}: offset units cannot be "
                                 "averaged into a factor")
            if m.factor is not None and not math.isclose(m.factor, a, rel_tol=1e-9):
                raise ValueError(f"feedback: measured.{o}.factor = {m.factor:g}, but {m.tag!r} is stored in "
                                 f"{spec.unit!r} and {o} is in {phys.unit!r}: the factor is {a:g} (or omit it)")
            out[o] = a
        return out

    def check_targets(self, targets: dict[str, TargetSpec]) -> None:
        """Targets (canonical units, physical range already checked) against what the model predicts, its card's
        units and output ranges (where the card states them), and the range of the gauge that measures them.
        Raises ValueError naming the output and the range."""
        model = getattr(self.predictor, "model", None)
        if model is not None:
            names = list(model.output_names)
            unknown = [k for k in targets if k not in names]
            if unknown:
                raise ValueError(f"unknown outputs {unknown}; the model predicts {sorted(names)}")
            card = getattr(model, "card", {}) or {}
            units = card.get("units", {})
            ranges = card.get("output_ranges", {}) or {}
            for k, t in targets.items():
                cu = units.get(k)
                if cu:
                    try:
                        a, b = _affine(cu, OUTPUTS[k].unit, "")
                    except ValueError:  # a ratio name such as "D_eff/D0": no pint unit to compare
                        a, b = 1.0, 0.0
                    if not (math.isclose(a, 1.0, rel_tol=1e-9) and abs(b) < 1e-12):
                        raise ValueError(f"the model card states {k} in {cu!r}; the feedback service works in "
                                         f"{OUTPUTS[k].unit!r} (a model in other units needs a new card)")
                if k in ranges:
                    lo, hi = (float(x) for x in ranges[k])
                    if not lo <= t.target <= hi:
                        raise ValueError(f"target {k!r} {t.target:g} {t.unit} is outside the model's domain: the "
                                         f"training data cover {k} {lo:g} .. {hi:g} {t.unit}")
        for k, t in targets.items():
            m = self.cfg.measured.get(k)
            spec = self.daemon.tagmap.tags.get(m.tag) if m is not None else None
            if spec is None or not (math.isfinite(spec.lo) and math.isfinite(spec.hi)):
                continue
            f = self.factors.get(k, 1.0)
            lo, hi = sorted((spec.lo * f, spec.hi * f))
            if not lo <= t.target <= hi:
                raise ValueError(f"target {k!r} {t.target:g} {t.unit} is outside the range of its gauge "
                                 f"{m.tag!r}: {_clean(lo):g} .. {_clean(hi):g} {t.unit}")

    # -- persistence (the store's audit trail) ------------------------------------------------------------
    @staticmethod
    def _targets_body(cfg: FeedbackConfig) -> dict[str, Any]:
        return {"recipe": cfg.recipe, "targets": {k: v.model_dump() for k, v in cfg.targets.items()}}

    def _model_version(self) -> str | None:
        pred = self.daemon.extensions.get("predictor")
        model = getattr(pred, "model", None)
        return None if model is None else str(model.version)

    def _state_body(self, cfg: FeedbackConfig | None = None) -> dict[str, Any]:
        """What a restart restores: targets (and the configuration they replaced), gains with their observation
        counts, the rate-limit clocks and the ids of the newest proposals (their bodies are their own newest
        audit records)."""
        ids = [pid for pid in self.order if pid in self.proposals][-self.PERSIST_PROPOSALS:]
        return {"version": 1, **self._targets_body(cfg or self.cfg), "config_targets": self._config_targets,
                "model_version": self._model_version(),
                "gain": {k: dict(v) for k, v in self.gain.items()},
                "gain_n": {k: dict(v) for k, v in self.gain_n.items()},
                "last_apply_ns": dict(self.last_apply_ns), "last_change_ns": dict(self.last_change_ns),
                "proposals": ids}

    async def _persist(self, cfg: FeedbackConfig | None = None) -> None:
        body = self._state_body(cfg)  # built on the loop: a consistent snapshot
        await asyncio.to_thread(self.daemon.store.append_audit, self.STATE_KIND, self.STATE_REF, body)

    def _record_sync(self, p: Proposal, kind: str) -> None:
        p.updated_ns = now_ns()
        self.m_transitions.labels(kind).inc()
        self.daemon.store.append_audit(f"proposal.{kind}", p.id, p.record_json(), line_id=p.line_id,
                                       ts_ns=p.updated_ns)
        log.info("proposal %s %s (at start-up)", p.id, kind)

    def _restore(self) -> dict[str, Any]:
        """Targets, gains and proposals from the newest ``feedback.state`` record (start-up, before the API
        answers). Targets set through the API are kept unless the configuration's targets changed since they
        were set; gains are kept unless the model changed; an open proposal that expired while the twin was
        down becomes ``expired``, one that was being applied becomes ``failed`` (no write is ever retried);
        both transitions are audited."""
        info: dict[str, Any] = {"targets": False, "gains": False, "proposals": 0, "expired": [], "interrupted": []}
        store = self.daemon.store
        try:
            recs = store.audit(self.STATE_REF, None, 1)
        except Exception:  # noqa: BLE001 - a store that cannot answer: start from the configuration
            log.exception("feedback: the saved state could not be read; starting from the configuration")
            return info
        if not recs or not isinstance(recs[0].get("body"), dict):
            return info
        st = recs[0]["body"]
        if st.get("config_targets") == self._config_targets:
            try:
                targets = {str(k): canonical_target(str(k), TargetSpec.model_validate(v))
                           for k, v in dict(st["targets"]).items()}
                self.check_targets(targets)
                self.cfg = FeedbackConfig.model_validate(self.cfg.model_copy(update={
                    "targets": targets, "recipe": str(st.get("recipe") or self.cfg.recipe)}).model_dump())
                info["targets"] = True
            except (KeyError, TypeError, ValueError) as err:
                log.warning("feedback: the saved targets are refused now (%s); using the configuration's", err)
        else:
            log.info("feedback: the configuration's targets changed since the last run; they replace the saved ones")
        try:
            if st.get("model_version") == self._model_version():
                lo, hi = self.cfg.gain_bounds
                for line, d in dict(st.get("gain") or {}).items():
                    g = {str(o): float(v) for o, v in dict(d).items()}
                    self.gain[str(line)] = {o: v for o, v in g.items() if math.isfinite(v) and lo <= v <= hi}
                    for o, v in self.gain[str(line)].items():
                        self.m_gain.labels(str(line), o).set(v)
                for line, d in dict(st.get("gain_n") or {}).items():
                    self.gain_n[str(line)] = {str(o): max(0, int(n)) for o, n in dict(d).items()}
                info["gains"] = bool(self.gain)
            else:
                log.info("feedback: the model changed since the last run (%s -> %s); gains start from gain_init",
                         st.get("model_version"), self._model_version())
            self.last_apply_ns = {str(k): int(v) for k, v in dict(st.get("last_apply_ns") or {}).items()}
            self.last_change_ns = {str(k): int(v) for k, v in dict(st.get("last_change_ns") or {}).items()}
        except (TypeError, ValueError) as err:
            log.warning("feedback: saved gains unreadable (%s); starting from gain_init", err)
        ids = list(st.get("proposals") or [])[-self.PERSIST_PROPOSALS:]
        for pid in ids:
            try:
                r = store.audit(str(pid), None, 1)
                if not r or not str(r[0].get("kind", "")).startswith("proposal."):
                    continue
                p = Proposal.from_record(r[0]["body"])
            except Exception as err:  # noqa: BLE001 - one unreadable record must not stop the start-up
                log.warning("feedback: proposal %s not restored: %s", pid, err)
                continue
            self.proposals[p.id] = p
            self.order.append(p.id)
        info["proposals"] = len(self.proposals)
        now = now_ns()
        for p in self.proposals.values():
            if p.state == "proposed" and now - p.created_ns > self.cfg.proposal_ttl_s * 1e9:
                p.state = "expired"
                p.reasons.append("expired while the twin was not running")
                self._record_sync(p, "expired")
                info["expired"].append(p.id)
            elif p.state == "approved":  # stopped between approval and the end of its writes
                p.state = "failed"
                p.error = ("the twin stopped while applying this proposal; 'writes' lists what was written "
                           "(check the line: writes are never retried)")
                self._record_sync(p, "failed")
                info["interrupted"].append(p.id)
        if info["expired"] or info["interrupted"]:
            self.daemon.store.append_audit(self.STATE_KIND, self.STATE_REF, self._state_body())
        log.info("feedback: restored %s targets, gains for %d line(s), %d proposal(s) (%d expired, %d interrupted)",
                 "saved" if info["targets"] else "configured", len(self.gain), info["proposals"],
                 len(info["expired"]), len(info["interrupted"]))
        return info

    @property
    def predictor(self) -> Any:
        p = self.daemon.extensions.get("predictor")
        if p is None:
            raise RuntimeError("the feedback service needs the predictor ([predictor] enabled = true)")
        return p

    def _scaled(self, seconds: float) -> int:
        return int(seconds / self.cfg.line_time_scale * 1e9)

    async def start(self) -> None:
        self.daemon.pipeline.after_commit.append(self.history.add)
        self._task = asyncio.create_task(self._every(), name="feedback")

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.interval_s)
            try:
                await self.tick()
            except Exception as err:  # noqa: BLE001 - a bug in one round must not stop the service
                # counted, shown by /healthz for a minute (last_error_ns), traceback at most once a minute
                self.rounds.record(err, log, "feedback round")
                self.daemon.metrics.internal_errors.labels("feedback").inc()

    @property
    def last_error(self) -> str | None:
        return self.rounds.last_error

    @property
    def last_error_ns(self) -> int | None:
        return self.rounds.last_error_ns

    # -- audit and events ---------------------------------------------------------------------------
    async def _record(self, p: Proposal, kind: str, actor: str | None = None) -> None:
        p.updated_ns = now_ns()
        self.m_transitions.labels(kind).inc()
        for o, g in self.gain.get(p.line_id, {}).items():
            self.m_gain.labels(p.line_id, o).set(g)
        body = p.as_json()
        await asyncio.to_thread(self.daemon.store.append_audit, f"proposal.{kind}", p.id, p.record_json(),
                                line_id=p.line_id, actor=actor, ts_ns=p.updated_ns)
        await self._persist()
        self.daemon.state.broadcast({"type": "proposal", "proposal": body})
        log.info("proposal %s %s: %s", p.id, kind, "; ".join(f"{s.parameter} {s.current:g} -> {s.proposed:g}"
                                                                for s in p.settings))

    # -- one round ----------------------------------------------------------------------------------
    def lines(self) -> list[str]:
        return sorted({line for (line, tag) in self.history.data if tag == self.cfg.gap_actual_tag})

    async def tick(self) -> list[Decision]:
        async with self._lock:
            now = now_ns()
            for p in list(self.proposals.values()):
                if p.state == "proposed" and now - p.created_ns > self.cfg.proposal_ttl_s * 1e9:
                    p.state = "expired"
                    await self._record(p, "expired")
                elif p.state == "applied":
                    await self._evaluate(p, now)
            out = []
            for line in self.lines():
                out.append(await self._decide(line, now))
            return out

    def open_proposal(self, line: str | None = None) -> Proposal | None:
        for pid in reversed(self.order):
            p = self.proposals[pid]
            if p.state == "proposed" and (line is None or p.line_id == line):
                return p
        return None

    def _measured(self, line: str, since_ns: int) -> tuple[dict[str, float], dict[str, int], dict[str, float]]:
        """Mean, count and standard error of the mean of the good online readings since ``since_ns``."""
        vals, counts, se = {}, {}, {}
        for out, m in self.cfg.measured.items():
            xs = [v for ts, v, q in self.history.since(line, m.tag, since_ns) if q == Quality.GOOD]
            counts[out] = len(xs)
            if xs:
                f = self.factors.get(out, 1.0)
                vals[out] = float(np.mean(xs)) * f
                se[out] = float(np.std(xs, ddof=1) / math.sqrt(len(xs))) * abs(f) if len(xs) > 1 else 0.0
        return vals, counts, se

    def correction(self, line: str, measured: dict[str, float], se: dict[str, float]) -> Correction:
        gain = self.gain.setdefault(line, {o: self.cfg.gain_init for o in self.cfg.targets})
        n = self.gain_n.setdefault(line, {o: 0 for o in self.cfg.targets})
        return Correction(measured, se, dict(gain),
                          {o: self.cfg.gain_sd_rel / math.sqrt(1 + n.get(o, 0)) for o in self.cfg.targets})

    def _lag_ns(self, line: str) -> int | None:
        q = self.history.data.get((line, self.cfg.web_speed_tag))
        if not q:
            return None
        v = q[-1][1] / 60.0  # m/s
        if v <= 0:
            return None
        return self._scaled(self.cfg.gauge_distance_m / v)

    def settled_since(self, line: str) -> tuple[int | None, str | None]:
        """Earliest source time from which gauge readings show material calendered after the line settled."""
        lag = self._lag_ns(line)
        if lag is None:
            return None, "no web speed yet (the transport lag to the gauge is unknown)"
        last = self.last_change_ns.get(line, 0)
        settle = self.cfg.settle_s
        for m in self.cfg.manipulables:
            ch = self.history.last_change_ns(line, m.setpoint_tag)
            if ch is not None and ch > last:
                last = ch
            settle = max(settle, m.settle_s)
        return last + self._scaled(settle) + lag, None

    def _sp_now(self, line: str) -> np.ndarray | None:
        vals = []
        for m in self.cfg.manipulables:
            q = self.history.data.get((line, m.setpoint_tag))
            if not q:
                return None
            vals.append(q[-1][1])
        return np.array(vals, dtype=np.float64)

    async def _decide(self, line: str, now: int) -> Decision:
        reasons: list[str] = []

        def done(pid: str | None = None) -> Decision:
            d = Decision(now, line, pid, reasons)
            self.last_decision[line] = d
            return d

        if self.open_proposal(line) is not None:
            reasons.append("a proposal is waiting for approval")
            return done()
        if any(p.state == "approved" and p.line_id == line for p in self.proposals.values()):
            reasons.append("a proposal is being applied")
            return done()
        pending = [p.id for p in self.proposals.values() if p.state == "applied" and p.line_id == line]
        if pending:
            reasons.append(f"the line is settling after proposal {pending[-1]}: waiting for its realised outcome "
                           "(settle time + transport lag + averaging window) before the next decision")
            return done()
        pred = self.predictor
        if pred.model is None:
            reasons.append("no surrogate model is loaded")
            return done()
        from twin.predictor import InputError

        try:
            values, newest = pred.gather(line, now)
        except InputError as err:
            reasons.append(f"no proposal on these inputs: {err}")
            return done()
        sp_now = self._sp_now(line)
        if sp_now is None:
            reasons.append("current setpoints unknown (no value of "
                           + ", ".join(m.setpoint_tag for m in self.cfg.manipulables) + " yet)")
            return done()
        settled, why = self.settled_since(line)
        if settled is None:
            reasons.append(str(why))
            return done()
        window_start = max(settled, now - self._scaled(self.cfg.window_s))
        if now < settled:
            reasons.append(f"the line is settling after the last change: gauge readings of settled material from "
                           f"{ns_to_iso(settled)} on")
            return done()
        measured, counts, se = self._measured(line, window_start)
        short = [o for o, t in self.cfg.targets.items() if t.weight > 0
                 and counts.get(o, 0) < self.cfg.min_window_samples]
        if short:
            reasons.append(f"too few settled measurements of {', '.join(short)} "
                           f"({', '.join(str(counts.get(o, 0)) for o in short)} < {self.cfg.min_window_samples})")
            return done()
        errors = {o: measured[o] - t.target for o, t in self.cfg.targets.items() if o in measured}
        within = all(abs(errors[o]) <= self.cfg.deadband * t.tolerance
                     for o, t in self.cfg.targets.items() if t.weight > 0 and o in errors)
        if within:
            reasons.append("within tolerance: " + ", ".join(
                f"{o} {measured[o]:.4g} (target {self.cfg.targets[o].target:g} +/- {self.cfg.targets[o].tolerance:g}"
                f"{unit_suffix(o)})"
                for o in errors))
            return done()
        cr = self.correction(line, measured, se)
        gain = cr.gain
        opt = Optimizer(self.cfg, pred, self.limits)
        t0 = time.perf_counter()
        try:
            now_pred = opt.evaluate(values, sp_now, sp_now[None, :])
        except InputError as err:
            reasons.append(f"no proposal on these inputs: {err}")
            return done()
        if now_pred.ood[0]:
            model_x = opt._model_rows(values, sp_now, sp_now[None, :])
            _, why_ood = pred.model.domain_check(model_x)
            reasons.append("the current state is outside the model's domain: " + "; ".join(why_ood[0]))
            return done()
        res = await asyncio.to_thread(opt.run, values, sp_now, cr)
        self.latency_ms.append((time.perf_counter() - t0) * 1e3)
        if not math.isfinite(res.cost_best):
            reasons.append("every candidate within the limits and the step is outside the model's domain")
            return done()
        improvement = res.cost_now - res.cost_best
        if improvement < self.cfg.min_improvement:
            reasons.append(f"no significant improvement: predicted cost {res.cost_now:.3g} -> {res.cost_best:.3g} "
                           f"(needs a reduction of {self.cfg.min_improvement:g})")
            return done()
        fits = all(abs(v["mean"] - v["target"]) + 2 * v["std"] <= v["tolerance"]
                   for o, v in res.corrected.items() if self.cfg.targets[o].weight > 0)
        clipped = any(res.clipped)
        if not fits and not clipped:
            reasons.append("the predicted band does not fit the tolerance: " + ", ".join(
                f"{o} {v['mean']:.4g} +/- {2 * v['std']:.2g}{unit_suffix(o)}" for o, v in res.corrected.items()))
            return done()
        settings = []
        for j, m in enumerate(self.cfg.manipulables):
            spec = self.daemon.tagmap.tags[m.setpoint_tag]
            new = float(np.clip(round(float(res.best[j]), 3), *self.limits[j]))
            settings.append(Setting(m.name, m.setpoint_tag, float(sp_now[j]), new, spec.unit,
                                    res.clipped[j] is not None, res.clipped[j]))
        if all(abs(s.proposed - s.current) < 1e-9 for s in settings):
            reasons.append("the best settings are the current ones")
            return done()
        words = []
        for o, e in errors.items():
            t = self.cfg.targets[o]
            if t.weight > 0:
                words.append(f"{o} measured {measured[o]:.4g} is {e:+.3g} off target {t.target:g} "
                             f"(tolerance {t.tolerance:g}{unit_suffix(o)}, {counts[o]} settled readings)")
        for s in settings:
            if abs(s.proposed - s.current) > 1e-9:
                words.append(f"{s.parameter} {s.current:.4g} -> {s.proposed:.4g} {s.unit}")
            if s.limit_note:
                words.append(f"{s.parameter}: {s.limit_note}")
        for o, v in res.corrected.items():
            if self.cfg.targets[o].weight > 0:
                words.append(f"predicted {o} {v['mean']:.4g} +/- {2 * v['std']:.2g}{unit_suffix(o)} (2 sigma; now "
                             f"{res.corrected_now[o]['mean']:.4g}), model gain x{gain.get(o, 1.0):.3g} from the line")
        words.append(f"predicted cost {res.cost_now:.3g} -> {res.cost_best:.3g}")
        if not fits:
            words.append("the band does not fit the tolerance yet: a clipped step towards the target")
        pid = uuid.uuid4().hex[:12]
        p = Proposal(pid, line, now, str(pred.model.version), settings, res.corrected, res.corrected_now, words,
                     {"line": values, "setpoints": {m.name: float(sp_now[j]) for j, m in enumerate(self.cfg.manipulables)},
                      "newest_input_ts": ns_to_iso(newest.source_ts_ns), "roll_id": newest.roll_id,
                      "web_pos_m": newest.web_pos_m, "recipe": self.cfg.recipe},
                     dict(gain), res.raw_now, res.raw_best, measured)
        self.proposals[pid] = p
        self.order.append(pid)
        while len(self.proposals) > self.order.maxlen:  # pragma: no cover - bounded memory
            self.proposals.pop(next(iter(self.proposals)))
        await self._record(p, "proposed")
        reasons.extend(words)
        if all(m.auto_apply for m in self.cfg.manipulables):
            last = self.last_apply_ns.get(line)
            if last is not None and now - last < self.cfg.auto_apply_min_interval_s * 1e9:
                p.reasons.append(f"auto-apply rate limit: last apply {(now - last) / 1e9:.0f} s ago "
                                 f"(< {self.cfg.auto_apply_min_interval_s:g} s); waiting for approval")
            else:
                await self._approve(p, "auto", None, auto=True)
        return done(pid)

    # -- lifecycle ----------------------------------------------------------------------------------
    def get(self, pid: str) -> Proposal:
        p = self.proposals.get(pid)
        if p is None:
            raise KeyError(pid)
        return p

    async def approve(self, pid: str, actor: str, comment: str | None = None) -> Proposal:
        async with self._lock:
            return await self._approve(self.get(pid), actor, comment)

    async def reject(self, pid: str, actor: str, comment: str | None = None) -> Proposal:
        async with self._lock:
            p = self.get(pid)
            if p.state != "proposed":
                raise ProposalError(f"proposal {pid} is {p.state}; only a proposed one can be rejected")
            p.state = "rejected"
            p.approved_by = actor
            if comment:
                p.reasons.append(f"rejected by {actor}: {comment}")
            await self._record(p, "rejected", actor)
            return p

    def _writer(self, tag: str) -> tuple[Any, str]:
        """The connector that owns one of the tag's source addresses (OPC-UA or MQTT) and that address;
        a connector of the address's kind that does not declare it still gets it (and refuses it)."""
        sources = [(kind, addr) for kind, addr, _ in self.daemon.tagmap.sources_of(tag) if kind in ("opcua", "mqtt")]
        if not sources:
            raise RuntimeError(f"setpoint tag {tag!r} has no OPC-UA or MQTT source address to write to")
        node = sources[0][1]
        fallback = None
        for c in self.daemon.connectors:
            if not hasattr(c, "write_setpoint"):
                continue
            if self.cfg.write_connector is not None and c.name != self.cfg.write_connector:
                continue
            for kind, addr in sources:
                if kind == getattr(c, "kind", "opcua"):
                    if getattr(c, "owns_setpoint", lambda a: True)(addr):
                        return c, addr
                    fallback = fallback or (c, addr)
        if fallback is not None:
            return fallback
        raise RuntimeError(f"no connector can write {tag!r} (an OPC-UA connector with writes.allowed_nodes = "
                           f"[{node!r}] or an MQTT one with writes.setpoints"
                           + (f" named {self.cfg.write_connector!r}" if self.cfg.write_connector else "") + ")")

    def _in_source_unit(self, tag: str, node: str, value: float) -> tuple[float, str | None]:
        """A setpoint in the tag's canonical unit -> the unit the node speaks (the tag map's source unit, pint);
        (value, that unit) or (value, None) when they are the same."""
        spec = self.daemon.tagmap.tags[tag]
        unit = next((u for k, a, u in self.daemon.tagmap.sources_of(tag) if k in ("opcua", "mqtt") and a == node),
                    spec.unit)
        if unit == spec.unit:
            return value, None
        a, b = _affine(spec.unit, unit, f"feedback: setpoint {tag!r} to node {node!r}")
        return _clean(a * value + b), unit

    async def _approve(self, p: Proposal, actor: str, comment: str | None, auto: bool = False) -> Proposal:
        if p.state != "proposed":
            raise ProposalError(f"proposal {p.id} is {p.state}; only a proposed one can be approved")
        if now_ns() - p.created_ns > self.cfg.proposal_ttl_s * 1e9:
            p.state = "expired"
            await self._record(p, "expired")
            raise ProposalError(f"proposal {p.id} expired")
        p.state, p.approved_by, p.auto = "approved", actor, auto
        if comment:
            p.reasons.append(f"approved by {actor}: {comment}")
        await self._record(p, "approved", actor)
        from connectors.opcua.errors import SetpointWriteError

        for s in p.settings:
            if abs(s.proposed - s.current) < 1e-9:
                continue
            lo, hi = self.limits[[m.name for m in self.cfg.manipulables].index(s.parameter)]
            try:
                if not lo <= s.proposed <= hi:  # defence in depth: never write outside the limits
                    raise RuntimeError(f"{s.parameter} {s.proposed} outside the limits [{lo}, {hi}]")
                conn, node = self._writer(s.tag)
                value, unit = self._in_source_unit(s.tag, node, s.proposed)  # the node's unit (a PLC in mm, degF)
                wr = await conn.write_setpoint(node, value, reason=f"proposal {p.id}", actor=actor)
                p.writes.append({"tag": s.tag, "node": node, "requested": s.proposed, "written": wr.written,
                                 "previous": wr.previous, "readback": wr.readback, "ok": True,
                                 "ts": ns_to_iso(wr.ts_ns), **({"node_unit": unit} if unit else {})})
            except (SetpointWriteError, RuntimeError, OSError) as err:
                p.state = "failed"
                p.error = f"{s.parameter}: {err}"
                p.writes.append({"tag": s.tag, "requested": s.proposed, "ok": False, "error": str(err)})
                await self._record(p, "failed", actor)
                return p
        p.state = "applied"
        p.applied_ns = now_ns()
        self.last_apply_ns[p.line_id] = p.applied_ns
        self.last_change_ns[p.line_id] = p.applied_ns
        await self._record(p, "applied", actor)
        return p

    async def _evaluate(self, p: Proposal, now: int) -> None:
        """Realised vs predicted once the change has settled; updates the line's model-correction gain.
        The realised value is the mean over ``window_s`` of gauge readings of material calendered after
        the change settled (applied + settle time + transport lag)."""
        lag = self._lag_ns(p.line_id)
        if lag is None or p.applied_ns is None:
            return
        settle = max([self.cfg.settle_s] + [m.settle_s for m in self.cfg.manipulables])
        start = p.applied_ns + self._scaled(settle) + lag
        if now < start + self._scaled(self.cfg.window_s):
            return
        measured, counts, _ = self._measured(p.line_id, start)
        if any(counts.get(o, 0) < self.cfg.min_window_samples for o, t in self.cfg.targets.items() if t.weight > 0):
            return
        realised: dict[str, Any] = {}
        gain = self.gain.setdefault(p.line_id, {o: self.cfg.gain_init for o in self.cfg.targets})
        for o, v in p.predicted.items():
            if o not in measured:
                continue
            r = {"measured": measured[o], "predicted": v["mean"], "error": measured[o] - v["mean"],
                 "within_tolerance": abs(measured[o] - v["target"]) <= v["tolerance"]}
            d_model = p.raw_new.get(o, 0.0) - p.raw_now.get(o, 0.0)
            d_line = measured[o] - p.measured_before.get(o, measured[o])
            if abs(d_model) > 1e-9 and o in p.measured_before:
                obs = d_line / d_model
                r["gain_observed"] = obs
                lo, hi = self.cfg.gain_bounds
                if obs > 0:
                    self.gain_n.setdefault(p.line_id, {}).setdefault(o, 0)
                    self.gain_n[p.line_id][o] += 1
                    g0 = gain.get(o, self.cfg.gain_init)
                    a = self.cfg.gain_memory
                    gain[o] = float(np.clip(math.exp((1 - a) * math.log(g0) + a * math.log(obs)), lo, hi))
                    r["gain"] = gain[o]
                else:
                    r["gain_note"] = "the line moved against the model's direction (noise or a disturbance); " \
                                     "gain kept"
            realised[o] = r
        p.realised = realised
        p.state = "evaluated"
        await self._record(p, "evaluated")

    # -- targets ------------------------------------------------------------------------------------
    def targets_json(self) -> dict[str, Any]:
        """Targets of the current recipe, each in its output's canonical unit (stated in ``unit``)."""
        return self._targets_body(self.cfg)

    async def set_targets(self, recipe: str | None, targets: dict[str, TargetSpec], actor: str) -> dict[str, Any]:
        """Replace the targets. Each is converted to its output's canonical unit and checked (unit, physical
        range, gauge range, model); a refused set raises ValueError and changes nothing."""
        from pydantic import ValidationError

        _check_storable([recipe or "", *targets])
        async with self._lock:
            conv = {k: canonical_target(k, t) for k, t in targets.items()}
            self.check_targets(conv)
            try:  # the same checks as at start-up
                cfg = FeedbackConfig.model_validate(self.cfg.model_copy(update={
                    "targets": conv, "recipe": recipe or self.cfg.recipe}).model_dump())
            except ValidationError as err:
                raise ValueError("; ".join(str(e.get("msg", "")).removeprefix("Value error, ")
                                           for e in err.errors())) from None
            body = self._targets_body(cfg)
            # stored first: a store that refuses leaves the service on the old targets (the client sees the error)
            await asyncio.to_thread(self.daemon.store.append_audit, "targets.set", f"recipe:{cfg.recipe}", body,
                                    actor=actor)
            await self._persist(cfg)
            self.cfg = cfg
        self.daemon.state.broadcast({"type": "targets", **body})
        return body


# -- API --------------------------------------------------------------------------------------------
class TargetsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipe: str | None = Field(None, min_length=1, max_length=200)
    targets: dict[str, TargetSpec] = Field(..., max_length=len(OUTPUTS))


def _check_storable(texts: Sequence[str]) -> None:
    """Recipe and output names go to the store and the page: valid Unicode without control characters. (Checked
    in the route, not in TargetsBody: the API's 422 handler echoes the input, which a lone surrogate breaks.)"""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("recipe and output names must be valid Unicode (no lone surrogates)") from None
        if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in text):
            raise ValueError("recipe and output names must not contain control characters")


class CommentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str | None = Field(None, max_length=2000)


def install_routes(app: Any, daemon: Any, auth: Any) -> None:
    """Proposal and target endpoints (404 while the feedback service is not enabled)."""
    from fastapi import Body, Depends, HTTPException, Query

    def svc() -> FeedbackService:
        s = getattr(daemon, "extensions", {}).get("feedback")
        if s is None:
            raise HTTPException(404, detail="the feedback service is not enabled ([feedback] enabled = true)")
        return s

    def one(pid: str) -> Proposal:
        try:
            return svc().get(pid)
        except KeyError:
            raise HTTPException(404, detail=f"no proposal {pid!r}") from None

    @app.get("/api/v1/proposals", summary="Proposals, newest first (state filter optional)")
    async def proposals(state: str | None = Query(None, pattern="^(" + "|".join(STATES) + ")$"),
                        limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        s = svc()
        out = []
        for pid in reversed(s.order):
            p = s.proposals.get(pid)
            if p is not None and (state is None or p.state == state):
                out.append(p.as_json())
            if len(out) >= limit:
                break
        return out

    @app.get("/api/v1/proposals/current", summary="The open proposal (state proposed), or null")
    async def current() -> dict[str, Any] | None:
        p = svc().open_proposal()
        return None if p is None else p.as_json()

    @app.get("/api/v1/proposals/{pid}", summary="One proposal")
    async def get_one(pid: str) -> dict[str, Any]:
        return one(pid).as_json()

    @app.get("/api/v1/proposals/{pid}/audit", summary="Audit trail of one proposal (from the store)")
    async def audit(pid: str) -> list[dict[str, Any]]:
        svc()
        return await asyncio.to_thread(daemon.store.audit, pid, None, 100)

    async def transition(pid: str, body: CommentBody | None, principal: Any, approve: bool) -> dict[str, Any]:
        p = one(pid)
        try:
            if approve:
                p = await svc().approve(pid, principal.name, body.comment if body else None)
            else:
                p = await svc().reject(pid, principal.name, body.comment if body else None)
        except ProposalError as err:
            raise HTTPException(409, detail=str(err)) from None
        return p.as_json()

    @app.post("/api/v1/proposals/{pid}/approve", summary="Approve and apply a proposal (write scope)")
    async def approve(pid: str, body: CommentBody | None = Body(None),
                      principal: Any = Depends(auth("write"))) -> dict[str, Any]:
        return await transition(pid, body, principal, True)

    @app.post("/api/v1/proposals/{pid}/reject", summary="Reject a proposal (write scope)")
    async def reject(pid: str, body: CommentBody | None = Body(None),
                     principal: Any = Depends(auth("write"))) -> dict[str, Any]:
        return await transition(pid, body, principal, False)

    @app.get("/api/v1/feedback/targets", summary="Targets of the current recipe")
    async def targets() -> dict[str, Any]:
        return svc().targets_json()

    @app.put("/api/v1/feedback/targets", summary="Set the targets (write scope)")
    async def put_targets(body: TargetsBody, principal: Any = Depends(auth("write"))) -> dict[str, Any]:
        try:
            return await svc().set_targets(body.recipe, body.targets, principal.name)
        except ValueError as err:
            raise HTTPException(422, detail=str(err)) from None

    @app.get("/api/v1/feedback/status", summary="Last decision per line, model-correction gains, latency")
    async def status() -> dict[str, Any]:
        s = svc()
        lat = sorted(s.latency_ms)
        return {"decisions": {k: v.as_json() for k, v in s.last_decision.items()}, "gain": s.gain,
                "gain_observations": s.gain_n,
                "latency_ms_p50": lat[len(lat) // 2] if lat else None,
                "manipulables": [m.model_dump() for m in s.cfg.manipulables],
                "limits": {m.name: list(lim) for m, lim in zip(s.cfg.manipulables, s.limits)}}
