"""The decision rules of a feedback round (docs/feedback.md, step 4), one function each.

A rule returns the reason, in words, why there is no proposal for the line this round, or None when it
holds. :meth:`twin.feedback.service.FeedbackService.decide` applies them in this module's order and stops at
the first reason; the reasons are what ``/api/v1/feedback/status`` and the dashboard show.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from core.samples import ns_to_iso
from twin.feedback.config import FeedbackConfig, ManipulableSpec, unit_suffix
from twin.feedback.lifecycle import Proposal, ProposalState, Setting
from twin.feedback.optimizer import OptimResult


# -- before anything is computed: the lifecycle of earlier proposals ---------------------------------
def waiting_for_approval(open_proposal: Proposal | None) -> str | None:
    return "a proposal is waiting for approval" if open_proposal is not None else None


def being_applied(proposals: Iterable[Proposal], line: str) -> str | None:
    if any(p.state == ProposalState.APPROVED and p.line_id == line for p in proposals):
        return "a proposal is being applied"
    return None


def settling_after_proposal(proposals: Iterable[Proposal], line: str) -> str | None:
    pending = [p.id for p in proposals if p.state == ProposalState.APPLIED and p.line_id == line]
    if pending:
        return (f"the line is settling after proposal {pending[-1]}: waiting for its realised outcome "
                "(settle time + transport lag + averaging window) before the next decision")
    return None


# -- the inputs -------------------------------------------------------------------------------------
def model_loaded(loaded: bool) -> str | None:
    return None if loaded else "no surrogate model is loaded"


def inputs_refused(err: Exception) -> str:
    """Missing, stale or flagged line inputs (twin.predictor.InputError)."""
    return f"no proposal on these inputs: {err}"


def setpoints_known(known: bool, manipulables: Sequence[ManipulableSpec]) -> str | None:
    if known:
        return None
    return ("current setpoints unknown (no value of " + ", ".join(m.setpoint_tag for m in manipulables) + " yet)")


def line_settled(settled_ns: int, now: int) -> str | None:
    if now < settled_ns:
        return (f"the line is settling after the last change: gauge readings of settled material from "
                f"{ns_to_iso(settled_ns)} on")
    return None


def enough_measurements(cfg: FeedbackConfig, counts: Mapping[str, int]) -> str | None:
    short = [o for o, t in cfg.targets.items() if t.weight > 0 and counts.get(o, 0) < cfg.min_window_samples]
    if short:
        return (f"too few settled measurements of {', '.join(short)} "
                f"({', '.join(str(counts.get(o, 0)) for o in short)} < {cfg.min_window_samples})")
    return None


def outside_deadband(cfg: FeedbackConfig, measured: Mapping[str, float], errors: Mapping[str, float]) -> str | None:
    within = all(abs(errors[o]) <= cfg.deadband * t.tolerance
                 for o, t in cfg.targets.items() if t.weight > 0 and o in errors)
    if within:
        return "within tolerance: " + ", ".join(
            f"{o} {measured[o]:.4g} (target {cfg.targets[o].target:g} +/- {cfg.targets[o].tolerance:g}"
            f"{unit_suffix(o)})"
            for o in errors)
    return None


def current_state_in_domain(ood_reasons: Sequence[str] | None) -> str | None:
    """``ood_reasons``: None when the current state is inside the model's domain, else the domain check's words."""
    if ood_reasons is None:
        return None
    return "the current state is outside the model's domain: " + "; ".join(ood_reasons)


# -- the optimizer's answer -----------------------------------------------------------------------------
def some_candidate_in_domain(res: OptimResult) -> str | None:
    return None if math.isfinite(res.cost_best) else "every candidate within the limits and the step is outside the model's domain"


def significant_improvement(cfg: FeedbackConfig, res: OptimResult) -> str | None:
    if res.cost_now - res.cost_best < cfg.min_improvement:
        return (f"no significant improvement: predicted cost {res.cost_now:.3g} -> {res.cost_best:.3g} "
                f"(needs a reduction of {cfg.min_improvement:g})")
    return None


def band_fits(cfg: FeedbackConfig, res: OptimResult) -> bool:
    """The corrected prediction's 2-sigma band lies within the tolerance of every weighted target."""
    return all(abs(v["mean"] - v["target"]) + 2 * v["std"] <= v["tolerance"]
               for o, v in res.corrected.items() if cfg.targets[o].weight > 0)


def band_fits_or_clipped(cfg: FeedbackConfig, res: OptimResult) -> str | None:
    """A proposal's band must fit the tolerance unless it is a step clipped on the way to the target."""
    if not band_fits(cfg, res) and not any(res.clipped):
        return "the predicted band does not fit the tolerance: " + ", ".join(
            f"{o} {v['mean']:.4g} +/- {2 * v['std']:.2g}{unit_suffix(o)}" for o, v in res.corrected.items())
    return None


def settings_change(settings: Sequence[Setting]) -> str | None:
    if all(abs(s.proposed - s.current) < 1e-9 for s in settings):
        return "the best settings are the current ones"
    return None


# -- the proposal's own reasons ---------------------------------------------------------------------------
def proposal_reasons(cfg: FeedbackConfig, measured: Mapping[str, float], errors: Mapping[str, float],
                     counts: Mapping[str, int], settings: Sequence[Setting], res: OptimResult,
                     gain: Mapping[str, float]) -> list[str]:
    """Why this proposal, in words: the errors, the changes, the predictions and the cost."""
    words = []
    for o, e in errors.items():
        t = cfg.targets[o]
        if t.weight > 0:
            words.append(f"{o} measured {measured[o]:.4g} is {e:+.3g} off target {t.target:g} "
                         f"(tolerance {t.tolerance:g}{unit_suffix(o)}, {counts[o]} settled readings)")
    for s in settings:
        if abs(s.proposed - s.current) > 1e-9:
            words.append(f"{s.parameter} {s.current:.4g} -> {s.proposed:.4g} {s.unit}")
        if s.limit_note:
            words.append(f"{s.parameter}: {s.limit_note}")
    for o, v in res.corrected.items():
        if cfg.targets[o].weight > 0:
            words.append(f"predicted {o} {v['mean']:.4g} +/- {2 * v['std']:.2g}{unit_suffix(o)} (2 sigma; now "
                         f"{res.corrected_now[o]['mean']:.4g}), model gain x{gain.get(o, 1.0):.3g} from the line")
    words.append(f"predicted cost {res.cost_now:.3g} -> {res.cost_best:.3g}")
    if not band_fits(cfg, res):
        words.append("the band does not fit the tolerance yet: a clipped step towards the target")
    return words


def auto_apply_rate_limited(cfg: FeedbackConfig, last_apply_ns: int | None, now: int) -> str | None:
    if last_apply_ns is not None and now - last_apply_ns < cfg.auto_apply_min_interval_s * 1e9:
        return (f"auto-apply rate limit: last apply {(now - last_apply_ns) / 1e9:.0f} s ago "
                f"(< {cfg.auto_apply_min_interval_s:g} s); waiting for approval")
    return None
