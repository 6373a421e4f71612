"""The lab service: lab results in, shadow model versions, approval-gated promotion and rollback, drift.

Lab results (API, CSV files, a watched folder, MQTT) are parsed (twin.lab.parse), tagged against the ontology's
SP terms (twin.lab.catalog: unit by pint, range), checked against the rolls the twin has seen, and stored once
(twin.lab.store). Every refused row becomes a dead letter in the twin's store with a reason and a reason code
(``LAB_REASON_CODES``); a row sent again with the same value is counted as a duplicate and not stored again.

Shadow: each prediction of the active model (twin.predictor) is recorded with its roll and web position, and
every candidate model runs on the same line values through the predictor's own mapping; both are stored.
The comparison matches lab results to the predictions of the same web segment (roll, start_m..end_m).

Requests (``promote``, ``rollback``, ``retrain``) follow the feedback service's lifecycle
(twin.feedback.lifecycle: proposed -> approved -> applied | failed, or rejected): created by a user or by the
drift rule, approved by a named user, applied, and every step appended to the store's audit trail (who, when,
the metrics). The feedback service reads only the predictor's active model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from core.samples import DeadLetter, SourceKind, now_ns, ns_to_iso
from core.supervise import RoundFailures, RoundHealth
from ontology.units import UnitError, affine
from surrogates.runtime import SurrogateModel
from twin.feedback.lifecycle import ProposalError, ProposalState, can_move
from twin.lab.candidate import KIND, fit_residual, load_model, write_candidate
from twin.lab.catalog import Catalog, RowError
from twin.lab.compare import drift_test, metrics
from twin.lab.config import LabConfig
from twin.lab.parse import LabRow, Parsed, parse_csv, parse_json_text, parse_objects
from twin.lab.store import LabStore
from twin.ports import AuditStore, DeadLetterSink, ErrorMetrics, ModelHost, RollCatalog, Scheduler
from twin.predictor import porosity_kind, porosity_to_line

log = logging.getLogger("twin.lab")

#: reason codes of lab dead letters (the tagger's codes where they mean the same, and the lab's own)
LAB_REASON_CODES = ("unknown_roll", "unknown_quantity", "unknown_unit", "unit_dimension", "out_of_range",
                    "non_finite", "wrong_type", "malformed_payload", "bad_timestamp", "bad_text", "duplicate_row",
                    "conflicting_value", "too_many_rows", "file_too_large")
REQUEST_KINDS = ("promote", "rollback", "retrain")
JOB_WATCH = "lab_watch"
SEGMENT_PAD_M = 0.5  # a lab range is matched with predictions up to this far outside it (a point sample: +/- pad)


def roll_window(rolls: list[dict[str, Any]], roll_id: str) -> tuple[int, int | None] | None:
    """The time span of a roll from the roll events: from its first event to the next roll's on the same step
    (None: the roll still runs). None when the roll has no event."""
    mine = [r for r in rolls if r["roll_id"] == roll_id]
    if not mine:
        return None
    first = min(mine, key=lambda r: r["source_ts_ns"])
    later = [r["source_ts_ns"] for r in rolls if r["step"] == first["step"] and r["source_ts_ns"] > first["source_ts_ns"]]
    return first["source_ts_ns"], (min(later) if later else None)


def segment_process(samples: list[Any], start_m: float, end_m: float) -> dict[str, dict[str, Any]]:
    """The twin's stored samples of one web segment (web position in [start_m, end_m]), per tag: n, mean, min,
    max, unit and time span."""
    out: dict[str, dict[str, Any]] = {}
    for s in samples:
        if s.web_pos_m is None or not start_m <= s.web_pos_m <= end_m:
            continue
        a = out.setdefault(s.tag_id, {"n": 0, "sum": 0.0, "min": s.value, "max": s.value, "unit": s.unit,
                                      "first_ts_ns": s.source_ts_ns, "last_ts_ns": s.source_ts_ns})
        a["n"] += 1
        a["sum"] += s.value
        a["min"], a["max"] = min(a["min"], s.value), max(a["max"], s.value)
        a["first_ts_ns"], a["last_ts_ns"] = min(a["first_ts_ns"], s.source_ts_ns), max(a["last_ts_ns"], s.source_ts_ns)
    for a in out.values():
        a["mean"] = a.pop("sum") / a["n"]
    return out


class LabError(RuntimeError):
    """A request the service cannot carry out (HTTP 409 / 404 at the API)."""


class LabService(RoundHealth):
    def __init__(self, config: LabConfig, *, line_id: str, store: LabStore, rolls: RollCatalog,
                 sink: DeadLetterSink, audit: AuditStore, predictor: ModelHost | None = None,
                 scheduler: Scheduler | None = None, metrics: ErrorMetrics | None = None) -> None:
        self.config = config
        self.line_id = line_id
        self.store = store
        self.rolls = rolls
        self.sink = sink
        self.audit = audit
        self.predictor = predictor
        self.scheduler = scheduler
        self.metrics = metrics
        self.catalog = Catalog(config.quantities)  # fails fast on a quantity that does not fit the ontology
        self.rounds = RoundFailures()
        self.candidates: dict[str, SurrogateModel] = {}
        self.counts = {"stored": 0, "duplicates": 0, "dead_letters": 0, "shadow_predictions": 0,
                       "predictions_dropped": 0, "files": 0}
        self._known: dict[str, set[str]] = {}
        self._pending: deque[tuple[Any, ...]] = deque()
        self._max_pending = 10_000
        self._flushing: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one request transition at a time
        self.drift: dict[str, dict[str, Any]] = {}
        self._out_unit: dict[str, float] = {}
        self._activated_ns = now_ns()
        self.mqtt: Any = None  # connectors.mqtt.lab.LabSubscriber while [lab.mqtt] enabled
        self._mqtt_task: asyncio.Task[None] | None = None
        reg = metrics.registry if metrics is not None else None
        self._m_rows = Counter("twin_lab_rows_total", "Lab rows by outcome (stored, duplicate, dead_letter)",
                               ["outcome"], registry=reg)
        self._m_dead = Counter("twin_lab_dead_letters_total", "Lab dead letters by reason code", ["reason_code"],
                               registry=reg)
        self._m_alert = Gauge("twin_model_drift_alert", "1 while lab results leave the active model's +/-2 sigma "
                              "band more often than its calibration says", ["output"], registry=reg)
        self._m_pval = Gauge("twin_model_drift_p_value", "Binomial tail of the drift test", ["output"], registry=reg)
        self._m_shadow = Counter("twin_shadow_predictions_total", "Predictions recorded, by role", ["role"],
                                 registry=reg)
        if predictor is not None:
            self._restore_active()
            self.load_candidates()

    # -- models --------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return str(self.predictor.config.model) if self.predictor is not None else ""

    @property
    def active(self) -> SurrogateModel | None:
        return None if self.predictor is None else self.predictor.model

    def _restore_active(self) -> None:
        """A promotion survives a restart: the promoted version is made active again."""
        assert self.predictor is not None
        st = self.store.active(self.family)
        if st is None or self.active is None or st["version"] == self.active.version:
            return
        replaced = self.active
        assert replaced is not None
        try:
            self.predictor.use_model(load_model(st["path"]))
            self.candidates[replaced.version] = replaced  # the model it replaced runs in shadow again
            log.info("lab: promoted model %s restored", st["version"])
        except Exception as err:  # noqa: BLE001 - a missing folder must not refuse start-up; the committed model stays
            log.error("lab: cannot restore the promoted model %s from %s: %s", st["version"], st["path"], err)

    def load_candidates(self) -> list[str]:
        """Load every candidate of the family under ``candidates_dir`` (and keep those already loaded)."""
        d = Path(self.config.candidates_dir) / self.family
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.name.startswith(".") or not (p / "card.json").is_file() or p.name in self.candidates:
                    continue
                if self.active is not None and p.name == self.active.version:
                    continue
                try:
                    self.candidates[p.name] = load_model(p)
                except Exception as err:  # noqa: BLE001 - one unreadable candidate must not hide the others
                    log.error("lab: candidate %s not loaded: %s", p, err)
        return sorted(self.candidates)

    def _unit_factor(self, unit: str, output: str) -> float | None:
        """Lab unit -> the model output's unit (the active card's ``units``), by pint; None: not comparable."""
        key = f"{unit}->{output}"
        if key not in self._out_unit:
            model = self.active
            card_unit = str((model.card.get("units") or {}).get(output, "")) if model is not None else ""
            try:
                a, c = affine(unit, card_unit.replace("%", "percent") or "dimensionless")
                self._out_unit[key] = a if c == 0 else float("nan")
            except UnitError:
                self._out_unit[key] = float("nan")
        f = self._out_unit[key]
        return None if f != f else f

    # -- lab results in ------------------------------------------------------------------------
    def _known_roll(self, line: str, roll: str, refreshed: set[str]) -> bool:
        """Is ``roll`` a roll the twin has seen on ``line``? The rolls are read from the store at most once per
        delivery and line (a file of unknown rolls costs one query, not one per row)."""
        known = self._known.get(line)
        if known is not None and roll in known:
            return True
        if line in refreshed:
            return False
        refreshed.add(line)
        step = self.config.step
        self._known[line] = {r["roll_id"] for r in self.rolls.rolls(line, 1_000_000) if not step or r["step"] == step}
        return roll in self._known[line]

    def _dead(self, p: Parsed, code: str, reason: str, source: SourceKind, connector: str, origin: str,
              row: LabRow | None, now: int) -> DeadLetter:
        addr = f"lab/{row.quantity}/{row.roll_id}" if row is not None else f"lab/{origin}"
        return DeadLetter(source, addr, p.raw, f"lab row {p.n} of {origin}: {reason}", code, now, connector,
                          row.line_id if row is not None and row.line_id else self.line_id)

    def _check(self, parsed: list[Parsed], source: SourceKind, connector: str, origin: str, now: int
               ) -> tuple[list[tuple[Parsed, dict[str, Any]]], list[DeadLetter], list[int]]:
        """Tag, convert, range- and roll-check one delivery (a worker thread): the rows to store, the dead
        letters and the row number of each."""
        dead: list[DeadLetter] = []
        rows_of: list[int] = []
        good: list[tuple[Parsed, dict[str, Any]]] = []
        seen: set[tuple[Any, ...]] = set()
        refreshed: set[str] = set()
        for p in parsed:
            row = p.row
            try:
                if p.error is not None or row is None:
                    raise p.error or RowError("unreadable row", "malformed_payload")
                q = self.catalog.resolve(row.quantity)
                value = self.catalog.convert(q, row.value, row.unit)
                line = row.line_id or self.line_id
                if not self._known_roll(line, row.roll_id, refreshed):
                    raise RowError(f"roll {row.roll_id!r} is unknown on line {line!r} (no roll event of it"
                                   + (f" in {self.config.step})" if self.config.step else ")"), "unknown_roll")
                key = (line, row.roll_id, row.start_m, row.end_m, q.name, row.sample_id)
                if key in seen:
                    raise RowError(f"duplicate row: {q.name} of roll {row.roll_id} at {row.start_m:g}..{row.end_m:g} m"
                                   f"{' sample ' + row.sample_id if row.sample_id else ''} is already in this "
                                   "delivery", "duplicate_row")
                seen.add(key)
                good.append((p, {"line_id": line, "roll_id": row.roll_id, "start_m": row.start_m, "end_m": row.end_m,
                                 "quantity": q.name, "parameter": q.parameter, "value": value, "unit": q.unit,
                                 "method": row.method or q.method, "sample_id": row.sample_id,
                                 "measured_ts_ns": row.measured_ns, "received_ts_ns": now, "source": connector,
                                 "origin": origin[:512]}))
            except RowError as err:
                dead.append(self._dead(p, err.code, str(err), source, connector, origin, row, now))
                rows_of.append(p.n)
        return good, dead, rows_of

    async def ingest(self, parsed: list[Parsed], *, source: SourceKind, connector: str, origin: str) -> dict[str, Any]:
        """Check, store and dead-letter one delivery; returns the report (counts, ids, dead letters)."""
        now = now_ns()
        good, dead, rows_of = await asyncio.to_thread(self._check, parsed, source, connector, origin, now)
        outcomes = await asyncio.to_thread(self.store.insert_results, [g for _, g in good]) if good else []
        stored, dups = [], []
        for (p, g), (what, rid) in zip(good, outcomes):
            if what == "stored":
                stored.append(rid)
            elif what == "duplicate":
                dups.append(rid)
            else:
                dead.append(self._dead(p, "conflicting_value", f"{g['quantity']} of roll {g['roll_id']} at "
                                       f"{g['start_m']:g}..{g['end_m']:g} m is stored (lab result {rid}) with another "
                                       "value; a stored lab value is never changed", source, connector, origin,
                                       p.row, now))
                rows_of.append(p.n)
        if dead:
            await asyncio.to_thread(self.sink.write, [], dead)
        self.counts["stored"] += len(stored)
        self.counts["duplicates"] += len(dups)
        self.counts["dead_letters"] += len(dead)
        self._m_rows.labels("stored").inc(len(stored))
        self._m_rows.labels("duplicate").inc(len(dups))
        self._m_rows.labels("dead_letter").inc(len(dead))
        for d in dead:
            self._m_dead.labels(d.reason_code).inc()
        if stored:
            await self.check_drift()
        return {"origin": origin, "rows": len(parsed), "stored": len(stored), "duplicates": len(dups),
                "dead_letters": len(dead), "ids": stored, "duplicate_ids": dups,
                "rejected": [{"row": n, "reason_code": d.reason_code, "reason": d.reason}
                             for n, d in zip(rows_of, dead)]}

    async def ingest_csv(self, data: bytes, *, origin: str, connector: str = "lab-file",
                         source: SourceKind = SourceKind.API) -> dict[str, Any]:
        self.counts["files"] += 1
        if len(data) > self.config.max_file_bytes:
            p = Parsed(0, f"{len(data)} bytes", None, None)
            d = self._dead(p, "file_too_large", f"the file has {len(data)} bytes, at most {self.config.max_file_bytes}",
                           source, connector, origin, None, now_ns())
            await asyncio.to_thread(self.sink.write, [], [d])
            self.counts["dead_letters"] += 1
            self._m_dead.labels(d.reason_code).inc()
            return {"origin": origin, "rows": 0, "stored": 0, "duplicates": 0, "dead_letters": 1, "ids": [],
                    "duplicate_ids": [], "rejected": [{"row": None, "reason_code": d.reason_code, "reason": d.reason}]}
        parsed = await asyncio.to_thread(parse_csv, data, self.config.max_rows)
        return await self.ingest(parsed, source=source, connector=connector, origin=origin)

    async def ingest_rows(self, rows: Any, *, origin: str, connector: str = "lab-api",
                          source: SourceKind = SourceKind.API) -> dict[str, Any]:
        parsed = await asyncio.to_thread(parse_objects, rows, self.config.max_rows)
        return await self.ingest(parsed, source=source, connector=connector, origin=origin)

    async def ingest_message(self, topic: str, payload: bytes) -> dict[str, Any]:
        """One MQTT message: a JSON row or a list of rows; the topic's ``{line}`` level names the line when the
        rows do not (``pilot/<line>/lab/results``)."""
        parsed = await asyncio.to_thread(parse_json_text, payload, self.config.max_rows)
        parts = topic.split("/")
        line = parts[1] if len(parts) >= 4 and parts[-2:] == ["lab", "results"] else None
        if line:
            parsed = [Parsed(p.n, p.raw, p.row if p.row is None or p.row.line_id else replace(p.row, line_id=line),
                             p.error) for p in parsed]
        return await self.ingest(parsed, source=SourceKind.MQTT, connector="lab-mqtt", origin=f"mqtt:{topic}")

    async def watch_round(self) -> int:
        """Import the CSV files in ``watch_dir`` (at most 20 a round): done/ after import, failed/ when unreadable."""
        d = self.config.watch_dir
        if d is None or not Path(d).is_dir():
            return 0
        files = sorted(p for p in Path(d).iterdir() if p.is_file() and p.suffix.lower() == ".csv")[:20]
        for f in files:
            try:
                data = await asyncio.to_thread(f.read_bytes)
                await self.ingest_csv(data, origin=f"file:{f.name}", connector="lab-folder")
                target = Path(d) / "done"
            except OSError as err:
                log.error("lab: cannot read %s: %s", f, err)
                target = Path(d) / "failed"
            target.mkdir(exist_ok=True)
            await asyncio.to_thread(shutil.move, str(f), str(target / f"{now_ns()}-{f.name}"))
        return len(files)

    async def _watch_guarded(self) -> None:
        try:
            await self.watch_round()
        except Exception as err:  # noqa: BLE001 - one bad round must not end the folder watch
            self.rounds.record(err, log, "lab folder round")
            if self.metrics is not None:
                self.metrics.internal_errors.labels("lab").inc()

    # -- shadow --------------------------------------------------------------------------------
    def on_prediction(self, pred: Any) -> None:
        """After each active prediction (on the event loop): record it and run every candidate on the same line
        values; the rows are written by a worker thread (bounded buffer, overflow counted)."""
        rows = [(pred.line_id, pred.model_version, "active", pred.ts_ns, pred.roll_id, pred.web_pos_m, pred.mean,
                 pred.std, pred.ood, pred.line_inputs)]
        if self.config.shadow and self.predictor is not None:
            for version, model in list(self.candidates.items()):
                if version == pred.model_version:
                    continue
                try:
                    _, mean, std, ood, _ = self.predictor.evaluate(model, pred.line_inputs)
                except Exception as err:  # noqa: BLE001 - a candidate that cannot run is shown, the rest go on
                    self.rounds.record(err, log, f"shadow model {version}")
                    continue
                rows.append((pred.line_id, version, "shadow", pred.ts_ns, pred.roll_id, pred.web_pos_m, mean, std,
                             ood, None))
        for r in rows:
            if len(self._pending) >= self._max_pending:
                self.counts["predictions_dropped"] += 1
                continue
            self._pending.append(r)
            self._m_shadow.labels(r[2]).inc()
        self.counts["shadow_predictions"] += len(rows) - 1
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(len(self._pending), 1000))]
            try:
                await asyncio.to_thread(self.store.insert_predictions, batch)
            except Exception as err:  # noqa: BLE001 - the lab file unavailable: counted, the predictions go on
                self.counts["predictions_dropped"] += len(batch)
                self.rounds.record(err, log, "recording predictions")
                return

    def backfill_sync(self, version: str) -> int:
        """Run candidate ``version`` on the line inputs of the active model's recorded predictions it has none for
        (role ``replay``), so that lab results of segments that ran before it existed compare it too. A worker
        thread; returns the number of predictions written."""
        model = self.candidates.get(version)
        if model is None or self.predictor is None:
            return 0
        out = []
        for line, ts, roll, pos, inputs in self.store.active_inputs_without(version):
            try:
                _, mean, std, ood, _ = self.predictor.evaluate(model, inputs)
            except Exception as err:  # noqa: BLE001 - a row the candidate cannot take is skipped, and shown
                self.rounds.record(err, log, f"backfill of {version}")
                continue
            out.append((line, version, "replay", ts, roll, pos, mean, std, ood, None))
        for i in range(0, len(out), 1000):
            self.store.insert_predictions(out[i:i + 1000])
        self.counts["shadow_predictions"] += len(out)
        return len(out)

    async def flush(self) -> None:
        """Wait until the recorded predictions are written (tests, shutdown)."""
        if self._flushing is not None:
            await self._flushing
        await self._flush()

    # -- comparison and drift ------------------------------------------------------------------
    def _outputs(self) -> dict[str, str]:
        return {q.name: q.model_output for q in self.catalog.by_name.values() if q.model_output}

    def _matched(self) -> list[dict[str, Any]]:
        out = []
        for m in self.store.matched(self._outputs(), SEGMENT_PAD_M):
            f = self._unit_factor(m["unit"], m["output"])
            if f is None:
                continue
            out.append(m | {"lab": m["value"] * f})
        return out

    def _trained_ids(self, model: SurrogateModel | None) -> set[int]:
        if model is None:
            return set()
        return {int(i) for i in (model.card.get("trained_on") or {}).get("lab_result_ids", [])}

    def comparison_sync(self, versions: list[str] | None = None) -> dict[str, Any]:
        """Errors of the active model and the candidates against the lab results of the same web segments. The
        lab results a compared candidate was fitted on are left out for every version (a fair, paired set)."""
        active = self.active
        models = {v: m for v, m in self.candidates.items() if versions is None or v in versions}
        if active is not None:
            models[active.version] = active
        excluded: set[int] = set()
        for m in models.values():
            excluded |= self._trained_ids(m)
        rows = [r for r in self._matched() if r["version"] in models and r["id"] not in excluded]
        by: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        ids: dict[tuple[str, str], set[int]] = {}
        for r in rows:
            by.setdefault((r["version"], r["output"]), []).append((r["lab"], r["pred"], r["std"]))
            ids.setdefault((r["version"], r["output"]), set()).add(r["id"])
        out: dict[str, Any] = {}
        for v, m in models.items():
            outs = {o: metrics(by.get((v, o), [])) for o in sorted(set(self._outputs().values()))}
            out[v] = {"role": "active" if active is not None and v == active.version else "shadow",
                      "kind": m.card.get("kind", "ensemble"), "base": m.card.get("base"), "outputs": outs}
        paired: dict[str, dict[str, Any]] = {}
        if active is not None:
            for v in models:
                if v == active.version:
                    continue
                for o in sorted(set(self._outputs().values())):
                    common = ids.get((v, o), set()) & ids.get((active.version, o), set())
                    a = [(r["lab"], r["pred"], r["std"]) for r in rows if r["version"] == active.version
                         and r["output"] == o and r["id"] in common]
                    c = [(r["lab"], r["pred"], r["std"]) for r in rows if r["version"] == v and r["output"] == o
                         and r["id"] in common]
                    paired.setdefault(v, {})[o] = {"active": metrics(a), "candidate": metrics(c)}
        return {"family": self.family, "active": None if active is None else active.version, "versions": out,
                "paired": paired, "excluded_lab_ids": sorted(excluded), "lab_results": self.store.count_results(),
                "ts": ns_to_iso(now_ns())}

    async def comparison(self, versions: list[str] | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self.comparison_sync, versions)

    def _coverage(self, output: str) -> float:
        model = self.active
        try:
            c = float(model.card["metrics"]["test"][output]["coverage_2sigma"]) if model is not None else None
        except (KeyError, TypeError, ValueError):
            c = None
        return c if c is not None and 0 < c < 1 else self.config.drift.default_coverage

    def drift_sync(self) -> dict[str, dict[str, Any]]:
        active = self.active
        if active is None:
            return {}
        rule = self.config.drift
        out: dict[str, dict[str, Any]] = {}
        rows = [r for r in self._matched() if r["version"] == active.version]
        for o in sorted(set(self._outputs().values())):
            mine = [(r["lab"], r["pred"], r["std"]) for r in rows if r["output"] == o][-rule.window:]
            out[o] = drift_test(mine, self._coverage(o), rule.min_n, rule.alpha)
        return out

    async def check_drift(self) -> dict[str, dict[str, Any]]:
        """Run the drift test; set the gauges; on an alert, create a retrain request (once per episode)."""
        self.drift = await asyncio.to_thread(self.drift_sync)
        for o, d in self.drift.items():
            self._m_alert.labels(o).set(1 if d["alert"] else 0)
            self._m_pval.labels(o).set(d["p_value"])
        alerts = {o: d for o, d in self.drift.items() if d["alert"]}
        if alerts and self.config.drift.propose_retrain and self.active is not None:
            open_ = await asyncio.to_thread(self.store.requests, None, "retrain", 20)
            busy = any(r["state"] in ("proposed", "approved") or
                       (r["state"] == "applied" and (r["decided_ts_ns"] or 0) >= self._activated_ns) for r in open_)
            if not busy:
                words = "; ".join(f"{o}: {d['outside_2sigma']} of {d['n']} lab results outside +/-2 sigma "
                                  f"(calibrated coverage {d['calibrated_coverage']:.3f}, p = {d['p_value']:.2g})"
                                  for o, d in alerts.items())
                await self.create_request("retrain", None, "twin", f"drift of {self.active.version}: {words}")
        return self.drift

    def drift_alert(self) -> bool:
        return any(d["alert"] for d in self.drift.values())

    # -- requests ------------------------------------------------------------------------------
    def _request_or_404(self, rid: str) -> dict[str, Any]:
        r = self.store.request(rid)
        if r is None:
            raise KeyError(rid)
        return r

    async def create_request(self, kind: str, version: str | None, actor: str, reason: str) -> dict[str, Any]:
        """A ``promote`` (candidate version), ``rollback`` (to the previous active) or ``retrain`` request."""
        if kind not in REQUEST_KINDS:
            raise LabError(f"unknown request kind {kind!r} ({', '.join(REQUEST_KINDS)})")
        active = self.active
        if active is None:
            raise LabError("no active model (the predictor is not enabled)")
        if kind == "promote" and (version is None or version not in self.candidates):
            raise LabError(f"no shadow candidate {version!r} (have {', '.join(sorted(self.candidates)) or 'none'})")
        if kind == "rollback":
            prev = (await asyncio.to_thread(self.store.active, self.family) or {}).get("previous")
            if not prev:
                raise LabError("nothing to roll back to: the active model was never promoted here")
            version = prev["version"]
        cmp = await self.comparison([version] if version else [])
        r = {"id": uuid.uuid4().hex[:12], "kind": kind, "state": ProposalState.PROPOSED.value, "family": self.family,
             "version": version, "from_version": active.version, "created_ts_ns": now_ns(), "created_by": actor,
             "decided_ts_ns": None, "decided_by": None, "comment": None, "reason": reason[:2000],
             "metrics": {"at": "proposal", "comparison": cmp, "drift": self.drift}}
        await asyncio.to_thread(self.store.put_request, r)
        await self._audit(r, "proposed", actor)
        return r

    async def _audit(self, r: dict[str, Any], what: str, actor: str | None, extra: dict[str, Any] | None = None) -> None:
        body = {"request": r["id"], "kind": r["kind"], "state": r["state"], "family": r["family"],
                "version": r["version"], "from_version": r["from_version"], "reason": r["reason"],
                "comment": r["comment"], "metrics": r["metrics"]} | (extra or {})
        await asyncio.to_thread(self.audit.append_audit, f"model_{r['kind']}_{what}", r["id"], body, actor=actor)

    async def audit_trail(self, rid: str, limit: int = 100) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.audit.audit, rid, None, limit)

    def _move(self, r: dict[str, Any], to: ProposalState) -> None:
        if not can_move(r["state"], to):
            raise ProposalError(f"request {r['id']} is {r['state']}; it cannot become {to.value}")
        r["state"] = to.value

    async def reject(self, rid: str, actor: str, comment: str | None = None) -> dict[str, Any]:
        async with self._lock:
            r = self._request_or_404(rid)
            self._move(r, ProposalState.REJECTED)
            r.update(decided_ts_ns=now_ns(), decided_by=actor, comment=comment)
            await asyncio.to_thread(self.store.put_request, r)
            await self._audit(r, "rejected", actor)
            return r

    async def approve(self, rid: str, actor: str, comment: str | None = None) -> dict[str, Any]:
        """Approve and apply: promote / roll back the active model, or refit a residual candidate."""
        async with self._lock:
            r = self._request_or_404(rid)
            self._move(r, ProposalState.APPROVED)
            r.update(decided_ts_ns=now_ns(), decided_by=actor, comment=comment)
            await asyncio.to_thread(self.store.put_request, r)
            await self._audit(r, "approved", actor)
            try:
                extra = await self._apply(r, actor)
            except Exception as err:  # noqa: BLE001 - the request fails with its reason; the active model stays
                self._move(r, ProposalState.FAILED)
                r["reason"] = f"{r['reason']} | failed: {type(err).__name__}: {err}"[:2000]
                await asyncio.to_thread(self.store.put_request, r)
                await self._audit(r, "failed", actor, {"error": str(err)[:500]})
                return r
            self._move(r, ProposalState.APPLIED)
            await asyncio.to_thread(self.store.put_request, r)
            await self._audit(r, "applied", actor, extra)
            return r

    async def _apply(self, r: dict[str, Any], actor: str) -> dict[str, Any]:
        assert self.predictor is not None
        active = self.active
        if active is None:
            raise LabError("no active model")
        if r["kind"] == "retrain":
            version = await asyncio.to_thread(self._refit, actor, r["reason"] or "retrain")
            r["version"] = version
            await self.flush()
            n = await asyncio.to_thread(self.backfill_sync, version)
            return {"candidate": version, "card": self.candidates[version].card.get("fit"), "backfilled": n}
        if active.version != r["from_version"]:
            raise LabError(f"the active model is {active.version}, not {r['from_version']} as when this was proposed")
        cmp = await self.comparison([r["version"]])
        if r["kind"] == "promote":
            new = self.candidates[r["version"]]
        else:  # rollback: the previous active model, from its folder
            prev = (await asyncio.to_thread(self.store.active, self.family) or {}).get("previous") or {}
            cached = self.candidates.get(prev.get("version", ""))
            new = cached if cached is not None else await asyncio.to_thread(load_model, prev["path"])
        self.predictor.use_model(new)
        self.candidates.pop(new.version, None)
        self.candidates[active.version] = active  # the replaced model keeps running in shadow
        previous = {"version": active.version, "path": str(active.path)}
        await asyncio.to_thread(self.store.set_active, self.family, new.version, str(new.path), previous)
        self._activated_ns = now_ns()
        self._out_unit.clear()
        r["metrics"] = {"at": "promotion", "comparison": cmp, "drift": self.drift,
                        "proposed": (r.get("metrics") or {}).get("comparison")}
        await self.check_drift()
        return {"active": new.version, "previous": active.version, "promoted_by": actor,
                "promoted_at": ns_to_iso(now_ns())}

    def _refit(self, actor: str, reason: str) -> str:
        """A residual candidate of the active model fitted on the lab results it predicted (worker thread)."""
        assert self.predictor is not None and self.active is not None
        active = self.active
        pairs: dict[str, list[tuple[int, float, float, float]]] = {}
        for m in self._matched():
            if m["version"] == active.version:
                pairs.setdefault(m["output"], []).append((m["id"], m["lab"], m["pred"], m["std"]))
        a = porosity_to_line(self.predictor.config, porosity_kind(self.predictor.config, active.card))
        corr = fit_residual(pairs, {"porosity": 1.0 / a}, self.config.min_fit_n)
        if not corr:
            raise LabError(f"not enough lab results to refit (at least {self.config.min_fit_n} per output; have "
                           + ", ".join(f"{o}: {len(v)}" for o, v in pairs.items()) + ")")
        path = write_candidate(Path(self.config.candidates_dir), active, corr, created_by=actor, reason=reason)
        model = load_model(path)
        self.candidates[model.version] = model
        log.info("lab: candidate %s (%s of %s) written to %s", model.version, KIND, active.version, path)
        return model.version

    # -- service -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.predictor is not None and self.on_prediction not in self.predictor.after_predict:
            self.predictor.after_predict.append(self.on_prediction)
        if self.config.watch_dir is not None and self.scheduler is not None:
            self.scheduler.every(JOB_WATCH, self.config.watch_interval_s, self._watch_guarded, health=self)
        m = self.config.mqtt
        if m.enabled and self._mqtt_task is None:
            from connectors.mqtt.lab import LabSubscriber  # lazy: paho's client, only when lab results come over MQTT

            self.mqtt = LabSubscriber(host=m.host, port=m.port, topic=m.topic, client_id=m.client_id,
                                      username=m.username, password=m.password, queue_size=m.queue_size)
            self._mqtt_task = asyncio.get_running_loop().create_task(self.mqtt.run(self.ingest_message),
                                                                     name="lab-mqtt")
        self.drift = await asyncio.to_thread(self.drift_sync)

    async def stop(self) -> None:
        if self._mqtt_task is not None:
            self._mqtt_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mqtt_task
            self._mqtt_task = None
        if self.scheduler is not None:
            self.scheduler.cancel(JOB_WATCH)
        if self.predictor is not None and self.on_prediction in self.predictor.after_predict:
            self.predictor.after_predict.remove(self.on_prediction)
        await self.flush()

    def status_json(self) -> dict[str, Any]:
        alerts = [{"output": o} | d for o, d in self.drift.items() if d["alert"]]
        return {"active": None if self.active is None else self.active.version,
                "candidates": sorted(self.candidates), "counts": dict(self.counts), "drift": self.drift,
                "drift_alert": bool(alerts), "alerts": alerts,
                "mqtt": None if self.mqtt is None else self.mqtt.describe()}
