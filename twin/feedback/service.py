"""The feedback service: decision rounds on the daemon's scheduler, the proposal lifecycle, targets.

It receives what it uses as narrow interfaces (:mod:`twin.ports`), composed in :mod:`twin.daemon`: the tag
map, the store's audit trail, the line state, the pipeline's commit hooks, the predictor, the setpoint
writers, the scheduler and the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from connectors.opcua.errors import SetpointWriteError
from core.samples import Quality, Sample, now_ns, ns_to_iso
from core.supervise import RoundFailures, RoundHealth
from twin.feedback import rules
from twin.feedback.config import OUTPUTS, FeedbackConfig, TargetSpec, affine_to, canonical_target, clean
from twin.feedback.history import History
from twin.feedback.lifecycle import Decision, Proposal, ProposalError, ProposalState, Setting
from twin.feedback.optimizer import Correction, Optimizer, OptimResult
from twin.feedback.persistence import STATE_KIND, STATE_REF, ProposalStore
from twin.feedback.writers import in_source_unit, select_writer
from twin.ports import (
    AuditStore,
    CommitFeed,
    ErrorMetrics,
    LatestState,
    Predictions,
    Scheduler,
    SetpointWriter,
    TagCatalog,
)
from twin.predictor import InputError
from twin.roles import bind_feedback

log = logging.getLogger("twin.feedback")

JOB_ID = "feedback"  # the decision round's job on the daemon's scheduler


class FeedbackService(RoundHealth):
    """Lives in the daemon: ``daemon.extensions['feedback']``."""

    STATE_KIND = STATE_KIND
    STATE_REF = STATE_REF
    PERSIST_PROPOSALS = 100  # the newest proposals restored after a restart (the page shows 20, the API 50)

    def __init__(self, config: FeedbackConfig, *, tagmap: TagCatalog, store: AuditStore, state: LatestState,
                 commits: CommitFeed, predictor: Predictions, writers: Sequence[SetpointWriter],
                 scheduler: Scheduler, metrics: ErrorMetrics) -> None:
        config = bind_feedback(config, tagmap)  # roles -> the tag map's ids (twin/roles.py); fails fast
        self.cfg: FeedbackConfig = config
        self.tagmap = tagmap
        self.audit = ProposalStore(store)
        self.state = state
        self.commits = commits
        self.predictor = predictor
        self.writers = list(writers)
        self.scheduler = scheduler
        self.metrics = metrics
        self.proposals: dict[str, Proposal] = {}
        self.order: deque[str] = deque(maxlen=1000)
        self.gain: dict[str, dict[str, float]] = {}  # line -> output -> gain
        self.gain_n: dict[str, dict[str, int]] = {}  # line -> output -> gain observations
        self.last_decision: dict[str, Decision] = {}
        self.last_apply_ns: dict[str, int] = {}
        self.last_change_ns: dict[str, int] = {}
        self.latency_ms: deque[float] = deque(maxlen=1000)
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
        reg = metrics.registry
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
            spec = self.tagmap.tags.get(m.setpoint_tag)
            if spec is None:
                raise ValueError(f"feedback: setpoint tag {m.setpoint_tag!r} of {m.name!r} is not in the tag map")
            what = f"feedback: manipulable {m.name!r}"
            unit = m.unit if m.unit is not None else spec.unit
            a, b = affine_to(unit, spec.unit, what)
            lo_c = None if m.min is None else clean(a * m.min + b)
            hi_c = None if m.max is None else clean(a * m.max + b)
            if a < 0:
                lo_c, hi_c = hi_c, lo_c
            step = clean(abs(a) * m.max_step)
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
            spec = self.tagmap.tags.get(m.tag)
            phys = OUTPUTS.get(o)
            if phys is None:
                raise ValueError(f"feedback: measured output {o!r} is unknown; known: {sorted(OUTPUTS)}")
            if spec is None:
                if m.factor is None:
                    raise ValueError(f"feedback: measured tag {m.tag!r} of {o!r} is not in the tag map (its unit, "
                                     "and so the factor, is unknown)")
                out[o] = float(m.factor)
                continue
            a, b = affine_to(spec.unit, phys.unit, f"feedback: measured tag {m.tag!r} of {o!r}")
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
        model = self.predictor.model
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
                        a, b = affine_to(cu, OUTPUTS[k].unit, "")
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
            spec = self.tagmap.tags.get(m.tag) if m is not None else None
            if m is None or spec is None or not (math.isfinite(spec.lo) and math.isfinite(spec.hi)):
                continue
            f = self.factors.get(k, 1.0)
            lo, hi = sorted((spec.lo * f, spec.hi * f))
            if not lo <= t.target <= hi:
                raise ValueError(f"target {k!r} {t.target:g} {t.unit} is outside the range of its gauge "
                                 f"{m.tag!r}: {clean(lo):g} .. {clean(hi):g} {t.unit}")

    # -- persistence (the store's audit trail) ------------------------------------------------------------
    @staticmethod
    def _targets_body(cfg: FeedbackConfig) -> dict[str, Any]:
        return {"recipe": cfg.recipe, "targets": {k: v.model_dump() for k, v in cfg.targets.items()}}

    def _model_version(self) -> str | None:
        model = self.predictor.model
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
        await self.audit.append_state(self._state_body(cfg))  # the body is built on the loop: a consistent snapshot

    def _record_sync(self, p: Proposal, kind: str) -> None:
        p.updated_ns = now_ns()
        self.m_transitions.labels(kind).inc()
        self.audit.append_transition_sync(p, kind)
        log.info("proposal %s %s (at start-up)", p.id, kind)

    def _restore(self) -> dict[str, Any]:
        """Targets, gains and proposals from the newest ``feedback.state`` record (start-up, before the API
        answers). Targets set through the API are kept unless the configuration's targets changed since they
        were set; gains are kept unless the model changed; an open proposal that expired while the twin was
        down becomes ``expired``, one that was being applied becomes ``failed`` (no write is ever retried);
        both transitions are audited."""
        info: dict[str, Any] = {"targets": False, "gains": False, "proposals": 0, "expired": [], "interrupted": []}
        try:
            st = self.audit.newest_state()
        except Exception:  # a store that cannot answer: start from the configuration (logged with traceback)
            log.exception("feedback: the saved state could not be read; starting from the configuration")
            return info
        if st is None:
            return info
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
                p = self.audit.newest_proposal(str(pid))
            except Exception as err:  # noqa: BLE001 - one unreadable record must not stop the start-up
                log.warning("feedback: proposal %s not restored: %s", pid, err)
                continue
            if p is None:
                continue
            self.proposals[p.id] = p
            self.order.append(p.id)
        info["proposals"] = len(self.proposals)
        now = now_ns()
        for p in self.proposals.values():
            if p.state == ProposalState.PROPOSED and now - p.created_ns > self.cfg.proposal_ttl_s * 1e9:
                p.move_to(ProposalState.EXPIRED)
                p.reasons.append("expired while the twin was not running")
                self._record_sync(p, "expired")
                info["expired"].append(p.id)
            elif p.state == ProposalState.APPROVED:  # stopped between approval and the end of its writes
                p.move_to(ProposalState.FAILED)
                p.error = ("the twin stopped while applying this proposal; 'writes' lists what was written "
                           "(check the line: writes are never retried)")
                self._record_sync(p, "failed")
                info["interrupted"].append(p.id)
        if info["expired"] or info["interrupted"]:
            self.audit.append_state_sync(self._state_body())
        log.info("feedback: restored %s targets, gains for %d line(s), %d proposal(s) (%d expired, %d interrupted)",
                 "saved" if info["targets"] else "configured", len(self.gain), info["proposals"],
                 len(info["expired"]), len(info["interrupted"]))
        return info

    def _scaled(self, seconds: float) -> int:
        return int(seconds / self.cfg.line_time_scale * 1e9)

    # -- running: the decision round on the daemon's scheduler --------------------------------------------
    async def start(self) -> None:
        self.commits.after_commit.append(self.history.add)
        self.scheduler.every(JOB_ID, self.cfg.interval_s, self.run_round, health=self)

    async def stop(self) -> None:
        self.scheduler.cancel(JOB_ID)

    async def run_round(self) -> None:
        """One scheduled decision round. A failure is counted (``twin_internal_errors_total{stage="feedback"}``),
        shown by /healthz for a minute (``last_error_ns``) and logged with its traceback at most once a minute;
        the next round runs as scheduled."""
        try:
            await self.tick()
        except Exception as err:  # noqa: BLE001 - a bug in one round must not stop the service
            self.rounds.record(err, log, "feedback round")
            self.metrics.internal_errors.labels("feedback").inc()

    # -- audit and events ---------------------------------------------------------------------------
    async def _record(self, p: Proposal, kind: str, actor: str | None = None) -> None:
        p.updated_ns = now_ns()
        self.m_transitions.labels(kind).inc()
        for o, g in self.gain.get(p.line_id, {}).items():
            self.m_gain.labels(p.line_id, o).set(g)
        body = p.as_json()
        await self.audit.append_transition(p, kind, actor)
        await self._persist()
        self.state.broadcast({"type": "proposal", "proposal": body})
        log.info("proposal %s %s: %s", p.id, kind, "; ".join(f"{s.parameter} {s.current:g} -> {s.proposed:g}"
                                                                for s in p.settings))

    async def audit_trail(self, pid: str, limit: int = 100) -> list[dict[str, Any]]:
        """The store's audit records of one proposal, newest first."""
        return await self.audit.trail(pid, limit)

    # -- one round ----------------------------------------------------------------------------------
    def lines(self) -> list[str]:
        return self.history.lines_with(self.cfg.gap_actual_tag)

    async def tick(self) -> list[Decision]:
        async with self._lock:
            now = now_ns()
            for p in list(self.proposals.values()):
                if p.state == ProposalState.PROPOSED and now - p.created_ns > self.cfg.proposal_ttl_s * 1e9:
                    p.move_to(ProposalState.EXPIRED)
                    await self._record(p, "expired")
                elif p.state == ProposalState.APPLIED:
                    await self._evaluate(p, now)
            out = []
            for line in self.lines():
                out.append(await self._decide(line, now))
            return out

    def open_proposal(self, line: str | None = None) -> Proposal | None:
        for pid in reversed(self.order):
            p = self.proposals[pid]
            if p.is_open(line):
                return p
        return None

    def newest(self, state: str | None = None, limit: int = 50) -> list[Proposal]:
        """Proposals, newest first, in ``state`` when given."""
        out = []
        for pid in reversed(self.order):
            p = self.proposals.get(pid)
            if p is not None and (state is None or p.state == state):
                out.append(p)
            if len(out) >= limit:
                break
        return out

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
        speed = self.history.newest(line, self.cfg.web_speed_tag)
        if speed is None:
            return None
        v = speed / 60.0  # m/s
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
            v = self.history.newest(line, m.setpoint_tag)
            if v is None:
                return None
            vals.append(v)
        return np.array(vals, dtype=np.float64)

    def _done(self, line: str, now: int, reasons: list[str], pid: str | None = None) -> Decision:
        d = Decision(now, line, pid, reasons)
        self.last_decision[line] = d
        return d

    async def _decide(self, line: str, now: int) -> Decision:
        """One line's decision: the rules of :mod:`twin.feedback.rules` in order; the first that does not hold
        ends the round with its reason, else a proposal (auto-applied where every manipulable is so configured)."""
        ps = self.proposals.values()
        why = (rules.waiting_for_approval(self.open_proposal(line)) or rules.being_applied(ps, line)
               or rules.settling_after_proposal(ps, line) or rules.model_loaded(self.predictor.model is not None))
        if why:
            return self._done(line, now, [why])
        pred = self.predictor
        try:
            values, newest = pred.gather(line, now)
        except InputError as err:
            return self._done(line, now, [rules.inputs_refused(err)])
        sp_now = self._sp_now(line)
        settled, lag_unknown = self.settled_since(line)
        why = rules.setpoints_known(sp_now is not None, self.cfg.manipulables) or lag_unknown
        if why or sp_now is None or settled is None:
            return self._done(line, now, [str(why)])
        why = rules.line_settled(settled, now)
        if why:
            return self._done(line, now, [why])
        window_start = max(settled, now - self._scaled(self.cfg.window_s))
        measured, counts, se = self._measured(line, window_start)
        errors = {o: measured[o] - t.target for o, t in self.cfg.targets.items() if o in measured}
        why = rules.enough_measurements(self.cfg, counts) or rules.outside_deadband(self.cfg, measured, errors)
        if why:
            return self._done(line, now, [why])
        cr = self.correction(line, measured, se)
        opt = Optimizer(self.cfg, pred, self.limits)
        t0 = time.perf_counter()
        try:
            now_pred = opt.evaluate(values, sp_now, sp_now[None, :])
        except InputError as err:
            return self._done(line, now, [rules.inputs_refused(err)])
        ood_reasons = None
        if now_pred.ood[0]:
            _, why_ood = opt.model.domain_check(opt.model_rows(values, sp_now, sp_now[None, :]))
            ood_reasons = list(why_ood[0])
        why = rules.current_state_in_domain(ood_reasons)
        if why:
            return self._done(line, now, [why])
        res = await asyncio.to_thread(opt.run, values, sp_now, cr)
        self.latency_ms.append((time.perf_counter() - t0) * 1e3)
        why = (rules.some_candidate_in_domain(res) or rules.significant_improvement(self.cfg, res)
               or rules.band_fits_or_clipped(self.cfg, res))
        if why:
            return self._done(line, now, [why])
        settings = []
        for j, m in enumerate(self.cfg.manipulables):
            spec = self.tagmap.tags[m.setpoint_tag]
            new = float(np.clip(round(float(res.best[j]), 3), *self.limits[j]))
            settings.append(Setting(m.name, m.setpoint_tag, float(sp_now[j]), new, spec.unit,
                                    res.clipped[j] is not None, res.clipped[j]))
        why = rules.settings_change(settings)
        if why:
            return self._done(line, now, [why])
        words = rules.proposal_reasons(self.cfg, measured, errors, counts, settings, res, cr.gain)
        p = await self._propose(line, now, opt.model.version, settings, res, words, values, sp_now, newest, cr.gain,
                                measured)
        decided = list(words)  # the decision's reasons; a rate-limit note below goes to the proposal only
        if all(m.auto_apply for m in self.cfg.manipulables):
            limited = rules.auto_apply_rate_limited(self.cfg, self.last_apply_ns.get(line), now)
            if limited:
                p.reasons.append(limited)
            else:
                await self._approve(p, "auto", None, auto=True)
        return self._done(line, now, decided, p.id)

    async def _propose(self, line: str, now: int, model_version: object, settings: list[Setting], res: OptimResult,
                       words: list[str], values: dict[str, float], sp_now: np.ndarray, newest: Sample,
                       gain: dict[str, float], measured: dict[str, float]) -> Proposal:
        pid = uuid.uuid4().hex[:12]
        p = Proposal(pid, line, now, str(model_version), settings, res.corrected, res.corrected_now, words,
                     {"line": values, "setpoints": {m.name: float(sp_now[j]) for j, m in enumerate(self.cfg.manipulables)},
                      "newest_input_ts": ns_to_iso(newest.source_ts_ns), "roll_id": newest.roll_id,
                      "web_pos_m": newest.web_pos_m, "recipe": self.cfg.recipe},
                     dict(gain), res.raw_now, res.raw_best, measured)
        self.proposals[pid] = p
        self.order.append(pid)
        while len(self.proposals) > (self.order.maxlen or 0):  # pragma: no cover - bounded memory
            self.proposals.pop(next(iter(self.proposals)))
        await self._record(p, "proposed")
        return p

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
            if p.state != ProposalState.PROPOSED:
                raise ProposalError(f"proposal {pid} is {p.state}; only a proposed one can be rejected")
            p.move_to(ProposalState.REJECTED)
            p.approved_by = actor
            if comment:
                p.reasons.append(f"rejected by {actor}: {comment}")
            await self._record(p, "rejected", actor)
            return p

    def _writer(self, tag: str) -> tuple[SetpointWriter, str]:
        """The connector that writes ``tag`` and the address it writes (twin.feedback.writers)."""
        return select_writer(self.tagmap, self.writers, tag, self.cfg.write_connector)

    def _in_source_unit(self, tag: str, node: str, value: float) -> tuple[float, str | None]:
        """A setpoint in the tag's canonical unit -> the unit the node speaks (twin.feedback.writers)."""
        return in_source_unit(self.tagmap, tag, node, value)

    async def _approve(self, p: Proposal, actor: str, comment: str | None, auto: bool = False) -> Proposal:
        if p.state != ProposalState.PROPOSED:
            raise ProposalError(f"proposal {p.id} is {p.state}; only a proposed one can be approved")
        if now_ns() - p.created_ns > self.cfg.proposal_ttl_s * 1e9:
            p.move_to(ProposalState.EXPIRED)
            await self._record(p, "expired")
            raise ProposalError(f"proposal {p.id} expired")
        p.move_to(ProposalState.APPROVED)
        p.approved_by, p.auto = actor, auto
        if comment:
            p.reasons.append(f"approved by {actor}: {comment}")
        await self._record(p, "approved", actor)
        for s in p.settings:
            if abs(s.proposed - s.current) < 1e-9:
                continue
            names: list[str] = [m.name for m in self.cfg.manipulables]
            lo, hi = self.limits[names.index(s.parameter)]
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
                p.move_to(ProposalState.FAILED)
                p.error = f"{s.parameter}: {err}"
                p.writes.append({"tag": s.tag, "requested": s.proposed, "ok": False, "error": str(err)})
                await self._record(p, "failed", actor)
                return p
        p.move_to(ProposalState.APPLIED)
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
            r: dict[str, Any] = {"measured": measured[o], "predicted": v["mean"], "error": measured[o] - v["mean"],
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
        p.move_to(ProposalState.EVALUATED)
        await self._record(p, "evaluated")

    # -- targets ------------------------------------------------------------------------------------
    def targets_json(self) -> dict[str, Any]:
        """Targets of the current recipe, each in its output's canonical unit (stated in ``unit``)."""
        return self._targets_body(self.cfg)

    async def set_targets(self, recipe: str | None, targets: dict[str, TargetSpec], actor: str) -> dict[str, Any]:
        """Replace the targets. Each is converted to its output's canonical unit and checked (unit, physical
        range, gauge range, model); a refused set raises ValueError and changes nothing."""
        check_storable([recipe or "", *targets])
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
            await self.audit.append_targets(cfg.recipe, body, actor)
            await self._persist(cfg)
            self.cfg = cfg
        self.state.broadcast({"type": "targets", **body})
        return body

    def status_json(self) -> dict[str, Any]:
        """Last decision per line, model-correction gains, decision latency, manipulables and limits."""
        lat = sorted(self.latency_ms)
        return {"decisions": {k: v.as_json() for k, v in self.last_decision.items()}, "gain": self.gain,
                "gain_observations": self.gain_n,
                "latency_ms_p50": lat[len(lat) // 2] if lat else None,
                "manipulables": [m.model_dump() for m in self.cfg.manipulables],
                "limits": {m.name: list(lim) for m, lim in zip(self.cfg.manipulables, self.limits)}}


def check_storable(texts: Sequence[str]) -> None:
    """Recipe and output names go to the store and the page: valid Unicode without control characters. (Checked
    in the route, not in TargetsBody: the API's 422 handler echoes the input, which a lone surrogate breaks.)"""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("recipe and output names must be valid Unicode (no lone surrogates)") from None
        if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in text):
            raise ValueError("recipe and output names must not contain control characters")
