"""The pipeline: connectors -> tagging -> batched, durable store commits -> acknowledgements.

Flow control, end to end:
- each connector owns a bounded queue with a named overflow policy (connectors.base);
- the pipeline tags each delivery at once and keeps the results pending; a commit happens when
  ``batch_size`` samples are pending, when the intake pauses for ``linger_ms``, or from the periodic
  flush job; at most ``max_pending`` samples wait, beyond that intake waits for the commit
  (back-pressure into the connector queues, never a silent drop);
- a delivery is acknowledged to its source (MQTT PUBACK, replay checkpoint) only after the commit
  that holds all of its samples and dead letters returned.

Poison isolation (docs/store.md, "Failed commits"):
- the tagger screens every reading before it enters a batch (timestamp in the store's range and the
  skew window, finite numbers, storable text); what fails is a dead letter;
- a commit that fails with a **permanent** error (the same rows will fail again:
  :func:`twin.store.base.classify_store_error`) is split in halves until the offending rows are
  found; they become ``store_rejected`` dead letters, everything else is stored and acknowledged.
  A row that cannot be stored even as a sanitised dead letter is counted (``stats.unstorable``) and
  logged, and its delivery acknowledged all the same: retrying it could never succeed;
- a **transient** error (locked database, disk, network) is retried with capped back-off while the
  daemon runs (``stats.store_failing_since_ns`` etc. show it; /healthz says degraded); at shutdown
  after ``shutdown_commit_attempts`` attempts the pipeline gives up and says, per connector, what was
  not stored and whether its source redelivers it (:class:`core.samples.Redelivery`);
- an unexpected exception while tagging a delivery never ends the consumer: the traceback is logged
  (rate-limited), ``stats.internal_errors`` counts it, the delivery's readings become
  ``internal_error`` dead letters and the delivery is acknowledged after their commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from core.samples import DeadLetter, RawBatch, Redelivery, RollEvent, Sample, SourceKind, now_ns, ns_to_iso, safe_text
from core.supervise import RateLimitedLog
from ontology.validate import Tagger, payload_text
from twin.config import PipelineConfig
from twin.metrics import Metrics
from twin.state import LineState
from twin.store.base import Store, StoreErrorKind, WriteResult, classify_store_error

log = logging.getLogger("twin.pipeline")

_REDELIVERY_TEXT = {
    Redelivery.SOURCE: "left unacknowledged: the source redelivers it (MQTT QoS 1 on a persistent session)",
    Redelivery.CHECKPOINT: "not stored and not redelivered (a file is read once); its checkpoint / ack log "
                           "records what was stored: replay the file again to store the rest (no duplicates)",
    Redelivery.NONE: "lost: this source cannot redeliver it",
}


@dataclass
class PipelineStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0  # dead letters made (tagging, connectors, store_rejected, internal_error)
    commits: int = 0
    commit_errors: int = 0  # failed store.write calls (transient and permanent)
    acked_batches: int = 0
    last_commit_ns: int = 0
    lag_s: float = 0.0
    store_rejected: int = 0  # rows a commit refused for good, found by splitting: stored as dead letters
    unstorable: int = 0  # rows not even storable as a sanitised dead letter: counted, logged, acknowledged
    internal_errors: int = 0  # unexpected exceptions while tagging a delivery (readings -> internal_error)
    lost_at_shutdown: int = 0  # rows not stored at shutdown that their source cannot redeliver
    unacked_at_shutdown: int = 0  # rows not stored at shutdown, left unacknowledged for the source to redeliver
    store_failing_since_ns: int = 0  # 0: the last commit succeeded; else when the current failure run began
    store_consecutive_failures: int = 0  # transient commit failures since the last success
    store_last_error: str | None = None  # the last commit error (also kept after recovery)


class _Delivery(NamedTuple):
    ack: Callable[[], None]
    connector: str
    rows: int  # readings + dead letters in it
    redelivery: Redelivery


class _GiveUp(Exception):
    """Transient store failures outlasted the shutdown attempts."""


class _Rejected(Exception):
    def __init__(self, err: BaseException) -> None:
        super().__init__(str(err))
        self.err = err


class Pipeline:
    def __init__(self, config: PipelineConfig, store: Store, tagger: Tagger,
                 metrics: Metrics | None = None, state: LineState | None = None) -> None:
        self.config = config
        self.store = store
        self.tagger = tagger
        tagger.set_time_window(config.max_future_skew_s, config.max_past_age_s)
        self.metrics = metrics or Metrics()
        self.state = state or LineState()
        self.stats = PipelineStats()
        self._samples: list[Sample] = []
        self._dead: list[DeadLetter] = []
        self._rolls: list[RollEvent] = []
        self._acks: list[_Delivery] = []
        self._submitted = 0  # samples from submit() pending (no delivery to acknowledge)
        self._flush_lock = asyncio.Lock()
        self._linger: asyncio.Task[None] | None = None
        self._stopping = False
        self.commit_started_ns = 0  # when the commit in flight began (0: none in flight)
        self._shutdown_attempts = 0
        self._events_log = RateLimitedLog(log)
        self.after_commit: list[Callable[[Sequence[Sample]], None]] = []
        self.shutdown_report: list[dict[str, Any]] = []  # per connector: what was not stored at shutdown

    @property
    def pending(self) -> int:
        return len(self._samples) + len(self._dead) + len(self._rolls)

    @property
    def store_ok(self) -> bool:
        return self.stats.store_failing_since_ns == 0

    # -- logging and counting of events -----------------------------------------------------------
    def _log_event(self, key: str, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        """At most one log line per event key a minute (the suppressed ones are counted)."""
        self._events_log.log(key, level, msg, *args, exc=exc_info)

    def _count_internal(self, stage: str) -> None:
        self.stats.internal_errors += 1
        counter = getattr(self.metrics, "internal_errors", None)  # twin_internal_errors_total{stage}
        if counter is not None:
            try:
                counter.labels(stage).inc()
            except Exception:  # noqa: BLE001 - a metric must not stop ingestion
                pass

    # -- intake ------------------------------------------------------------------------------
    async def consume(self, connector_name: str, batches: AsyncIterator[RawBatch]) -> None:
        """Take a connector's deliveries until it ends. No single delivery ends it: what goes wrong
        with one is logged, counted and turned into dead letters (see :meth:`ingest`)."""
        async for batch in batches:
            try:
                await self.ingest(batch, connector_name)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug outside tagging; the delivery is not acknowledged
                self._count_internal("consume")
                self._log_event("consume", logging.ERROR, "pipeline: delivery from %s failed; it is not "
                                "acknowledged", connector_name, exc_info=True)

    def _tag(self, batch: RawBatch, connector_name: str) -> list[Sample | RollEvent | DeadLetter | None]:
        try:
            return self.tagger.tag_batch(batch.readings)
        except Exception as err:  # noqa: BLE001 - one delivery must never stop the consumer
            self._count_internal("tagging")
            self._log_event("tagging:" + type(err).__name__, logging.ERROR,
                            "pipeline: unexpected error while tagging a delivery of %d readings from %s; "
                            "they become internal_error dead letters", len(batch.readings), connector_name,
                            exc_info=True)
            reason = safe_text(f"unexpected error while tagging this delivery: {type(err).__name__}: {err}", 1024)
            return [self._internal_dead(r, reason, connector_name) for r in batch.readings]

    @staticmethod
    def _internal_dead(r: Any, reason: str, connector_name: str) -> DeadLetter:
        try:
            return DeadLetter(r.source, r.address, payload_text(r), reason, "internal_error", r.received_ts_ns,
                              r.connector or connector_name, r.line_id)
        except Exception:  # noqa: BLE001 - not even a RawReading: keep what its text says
            return DeadLetter(SourceKind.INTERNAL, "", safe_text(r, 4096), reason, "internal_error", now_ns(),
                              connector_name)

    async def ingest(self, batch: RawBatch, connector_name: str = "") -> None:
        samples, dead, rolls = self._samples, self._dead, self._rolls
        n_dead = 0
        for out in self._tag(batch, connector_name):
            if type(out) is Sample:
                samples.append(out)
            elif type(out) is DeadLetter:
                dead.append(out)
                n_dead += 1
                self.metrics.rejected.labels(out.reason_code).inc()
            elif out is not None:
                rolls.append(out)  # type: ignore[arg-type]
        for d in batch.dead_letters:
            self.metrics.rejected.labels(d.reason_code).inc()
        dead.extend(batch.dead_letters)
        n = len(batch.readings) + len(batch.dead_letters)
        try:
            redelivery = batch.redelivery_of()
        except Exception:  # noqa: BLE001 - a connector's bug must not stop the consumer; assume a first delivery
            redelivery = Redelivery.NONE
        self._acks.append(_Delivery(batch.ack, connector_name, n, redelivery))
        self.stats.received += n
        self.stats.rejected += n_dead + len(batch.dead_letters)
        self.metrics.received.labels(connector_name).inc(n)
        pending = self.pending
        if pending >= self.config.batch_size:
            await self.flush()
        elif self._linger is None or self._linger.done():
            self._linger = asyncio.create_task(self._linger_flush())
        while self.pending >= self.config.max_pending:
            await self.flush()

    async def submit(self, samples: Sequence[Sample]) -> None:
        """Samples the twin makes itself (predictions): already tagged, same commit path."""
        self._samples.extend(samples)
        self._submitted += len(samples)
        if self.pending >= self.config.batch_size:
            await self.flush()
        elif self._linger is None or self._linger.done():
            self._linger = asyncio.create_task(self._linger_flush())

    async def _linger_flush(self) -> None:
        await asyncio.sleep(self.config.linger_ms / 1000.0)
        # close() cancels this task: a commit it has begun still finishes and acknowledges its
        # batches (close's own flush waits for it on the lock); cancelled halfway, its batches were
        # never acknowledged while later ones were
        await asyncio.shield(self.flush())

    # -- store writes ------------------------------------------------------------------------
    def _store_failed(self, err: BaseException, rows: int) -> None:
        st = self.stats
        st.commit_errors += 1
        self.metrics.commit_errors.inc()
        st.store_consecutive_failures += 1
        st.store_last_error = safe_text(f"{type(err).__name__}: {err}", 500)
        if not st.store_failing_since_ns:
            st.store_failing_since_ns = now_ns()
        self._log_event("store_transient", logging.ERROR,
                        "store commit of %d rows failed (%s); retrying with back-off, nothing is acknowledged "
                        "until it succeeds (%d failed attempts in a row)", rows, st.store_last_error,
                        st.store_consecutive_failures)

    def _store_ok(self) -> None:
        st = self.stats
        if st.store_failing_since_ns:
            log.info("store commits succeed again after %d failed attempts (%.1f s)", st.store_consecutive_failures,
                     (now_ns() - st.store_failing_since_ns) / 1e9)
        st.store_failing_since_ns = 0
        st.store_consecutive_failures = 0

    async def _write(self, samples: Sequence[Sample], dead: Sequence[DeadLetter],
                     rolls: Sequence[RollEvent]) -> WriteResult:
        """One durable write, transient errors retried with capped back-off. Raises :class:`_Rejected`
        on a permanent error (nothing of the call was stored), :class:`_GiveUp` when stopping and the
        shutdown attempts are spent."""
        delay = self.config.commit_retry_initial_s
        while True:
            if self._stopping and self._shutdown_attempts >= self.config.shutdown_commit_attempts:
                raise _GiveUp()
            self.commit_started_ns = now_ns()  # a commit that hangs (a locked file) shows in /healthz
            try:
                result = await asyncio.to_thread(self.store.write, samples, dead, rolls)
            except Exception as err:
                self.commit_started_ns = 0
                if classify_store_error(err) is StoreErrorKind.PERMANENT:
                    self.stats.commit_errors += 1
                    self.metrics.commit_errors.inc()
                    raise _Rejected(err) from err
                self._store_failed(err, len(samples) + len(dead) + len(rolls))
                if self._stopping:
                    self._shutdown_attempts += 1
                    if self._shutdown_attempts >= self.config.shutdown_commit_attempts:
                        raise _GiveUp() from err
                    await asyncio.sleep(min(delay, 0.5))
                else:
                    await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.commit_retry_max_s)
                continue
            self.commit_started_ns = 0
            self._store_ok()
            return result

    @staticmethod
    def _rejected_dead(row: Sample | DeadLetter | RollEvent, err: BaseException) -> DeadLetter:
        why = safe_text(f"{type(err).__name__}: {err}", 500)
        if isinstance(row, DeadLetter):
            body = {"dead_letter": {"source": getattr(row.source, "value", row.source), "address": row.address,
                                    "reason_code": row.reason_code, "reason": row.reason, "payload": row.payload}}
            return DeadLetter(row.source if isinstance(row.source, SourceKind) else SourceKind.INTERNAL,
                              row.address, safe_text(json.dumps(body, default=str), 4096),
                              f"the store refused this dead letter ({why})", "store_rejected", row.received_ts_ns,
                              row.connector, row.line_id)
        if isinstance(row, RollEvent):
            body = {"roll_event": {"line_id": row.line_id, "step": row.step, "roll_id": row.roll_id,
                                   "source_ts_ns": row.source_ts_ns, "tag_id": row.tag_id}}
            return DeadLetter(SourceKind.INTERNAL, row.tag_id, safe_text(json.dumps(body, default=str), 4096),
                              f"the store refused this roll event ({why})", "store_rejected", now_ns(), "",
                              row.line_id)
        s = row
        body = {"sample": {"line_id": s.line_id, "tag_id": s.tag_id, "value": s.value, "unit": s.unit,
                           "source_ts_ns": s.source_ts_ns, "received_ts_ns": s.received_ts_ns,
                           "quality": s.quality, "roll_id": s.roll_id, "web_pos_m": s.web_pos_m}}
        return DeadLetter(SourceKind.INTERNAL, s.tag_id, safe_text(json.dumps(body, default=str), 4096),
                          f"the store refused this sample ({why})", "store_rejected", s.received_ts_ns, "", s.line_id)

    async def _isolate(self, rows: list[Sample | DeadLetter | RollEvent],
                       counts: list[int]) -> tuple[list[Sample | DeadLetter | RollEvent], list[DeadLetter]]:
        """Split ``rows`` (halves, then halves of the half that fails...) until every row is stored or
        found to be refused. ``counts`` = [inserted, duplicates, rows stored] is updated as parts commit.
        Returns the refused rows and the ``store_rejected`` dead letters made for them. At most about
        2 x len(rows) writes; a transient error in between is retried as any commit."""
        refused: list[Sample | DeadLetter | RollEvent] = []
        made: list[DeadLetter] = []
        stack = [rows]
        while stack:
            part = stack.pop()
            s = [x for x in part if type(x) is Sample]
            d = [x for x in part if type(x) is DeadLetter]
            r = [x for x in part if type(x) is RollEvent]
            try:
                res = await self._write(s, d, r)
            except _Rejected as rej:
                if len(part) == 1:
                    refused.append(part[0])
                    made.append(self._rejected_dead(part[0], rej.err))
                    continue
                mid = len(part) // 2
                stack.append(part[mid:])
                stack.append(part[:mid])
                continue
            counts[0] += res.inserted
            counts[1] += res.duplicates
            counts[2] += len(part)
        return refused, made

    async def _store_dead_letters(self, made: list[DeadLetter], counts: list[int]) -> None:
        """Store the dead letters made for refused rows; one that is refused too is counted and logged."""
        if not made:
            return
        try:
            await self._write((), made, ())
            counts[2] += len(made)
            return
        except _Rejected:
            pass
        for d in made:  # one by one: each refused one is counted, none retried
            try:
                await self._write((), (d,), ())
                counts[2] += 1
            except _Rejected as rej:
                self.stats.unstorable += 1
                self._log_event("unstorable", logging.ERROR, "pipeline: a row could not be stored, not even as a "
                                "sanitised dead letter (%s); counted in unstorable and acknowledged (retrying "
                                "could never succeed): %s", safe_text(rej.err, 300), safe_text(d.payload, 300))

    async def _commit(self, samples: list[Sample], dead: list[DeadLetter],
                      rolls: list[RollEvent]) -> tuple[int, int, list[Sample], list[RollEvent], list[DeadLetter]]:
        """Store everything; returns (inserted, duplicates, samples stored, rolls stored, dead letters
        stored beyond ``dead``). Raises _GiveUp (with ``rows_stored``) at shutdown."""
        counts = [0, 0, 0]
        try:
            try:
                res = await self._write(samples, dead, rolls)
                return res.inserted, res.duplicates, samples, rolls, []
            except _Rejected as rej:
                self._log_event("store_rejected", logging.WARNING,
                                "store refused a commit of %d rows for good (%s); splitting it to find the rows",
                                len(samples) + len(dead) + len(rolls), safe_text(rej.err, 300))
            rows: list[Sample | DeadLetter | RollEvent] = [*samples, *dead, *rolls]
            refused, made = await self._isolate(rows, counts)
            self.stats.store_rejected += len(refused)
            self.stats.rejected += sum(1 for x in refused if type(x) is not DeadLetter)  # a refused dead
            if made:  # letter was counted when it was made; its store_rejected one replaces it
                self.metrics.rejected.labels("store_rejected").inc(len(made))
            await self._store_dead_letters(made, counts)
        except _GiveUp as gu:
            gu.rows_stored = counts[2]  # type: ignore[attr-defined]
            raise
        bad = {id(x) for x in refused}
        return (counts[0], counts[1], [x for x in samples if id(x) not in bad],
                [x for x in rolls if id(x) not in bad], made)

    # -- commits -----------------------------------------------------------------------------
    async def flush(self) -> int:
        """Commit everything pending, then acknowledge its deliveries. Returns samples committed."""
        async with self._flush_lock:
            if not self._samples and not self._dead and not self._rolls and not self._acks:
                return 0
            samples, dead, rolls, acks = self._samples, self._dead, self._rolls, self._acks
            submitted = self._submitted
            self._samples, self._dead, self._rolls, self._acks = [], [], [], []
            self._submitted = 0
            self.metrics.pending.set(0)
            t0 = time.perf_counter()
            try:
                inserted, duplicates, stored, stored_rolls, made = await self._commit(samples, dead, rolls)
            except _GiveUp as gu:
                self._report_unstored(acks, submitted, len(samples) + len(dead) + len(rolls),
                                      getattr(gu, "rows_stored", 0))
                return 0
            self.metrics.commit_seconds.observe(time.perf_counter() - t0)
            t = now_ns()
            self.stats.commits += 1
            self.stats.stored += inserted
            self.stats.duplicates += duplicates
            self.stats.last_commit_ns = t
            self.metrics.stored.inc(inserted)
            self.metrics.duplicates.inc(duplicates)
            if stored:
                newest = stored[-1]
                self.stats.lag_s = (t - newest.received_ts_ns) / 1e9
                self.metrics.lag.set(self.stats.lag_s)
                self.metrics.source_lag.set((t - newest.source_ts_ns) / 1e9)
            for d in acks:
                try:
                    d.ack()
                except Exception as err:  # noqa: BLE001 - a failed ack means a redelivery, not a loss
                    self._log_event("ack", logging.WARNING, "acknowledgement to %s failed (%s): %s", d.connector,
                                    _REDELIVERY_TEXT[d.redelivery] if d.redelivery is Redelivery.SOURCE
                                    else "its source does not redeliver; the data is stored", safe_text(err, 300))
            self.stats.acked_batches += len(acks)
            try:
                self.state.update(stored, stored_rolls)
                shown = (dead + made)[-20:]
                if shown:  # the live page shows dead letters as they happen (newest 20 of this commit)
                    self.state.broadcast({"type": "dead_letters", "count": len(dead) + len(made), "dead_letters": [
                        {"received": ns_to_iso(d.received_ts_ns), "source": getattr(d.source, "value", str(d.source)),
                         "connector": d.connector, "address": d.address, "line_id": d.line_id,
                         "reason_code": d.reason_code, "reason": d.reason} for d in shown]})
            except Exception:  # noqa: BLE001 - the data is stored; the live view must not stop ingestion
                self._count_internal("commit")
                self._log_event("state", logging.ERROR, "pipeline: updating the line state failed", exc_info=True)
            for fn in self.after_commit:
                try:
                    fn(stored)
                except Exception:  # noqa: BLE001 - a hook's failure is logged; the data is stored already
                    self._log_event("after_commit", logging.ERROR, "after-commit hook failed", exc_info=True)
            return len(stored)

    def _report_unstored(self, acks: list[_Delivery], submitted: int, rows: int, rows_stored: int) -> None:
        """Shutdown gave up on a commit: say per connector what was not stored and whether its source
        redelivers it (never claiming a redelivery a source cannot make)."""
        per: dict[tuple[str, Redelivery], list[int]] = {}
        for d in acks:
            v = per.setdefault((d.connector, d.redelivery), [0, 0])
            v[0] += 1
            v[1] += d.rows
        if submitted:
            per.setdefault(("twin (predictions)", Redelivery.NONE), [0, 0])[1] += submitted
        partly = f"; {rows_stored} of the {rows} rows were stored by part-commits before the store failed" \
            if rows_stored else ""
        log.error("store still failing at shutdown (%s) after %d attempts: %d rows pending were not stored%s",
                  self.stats.store_last_error, self.config.shutdown_commit_attempts, rows - rows_stored, partly)
        for (name, red), (n_deliveries, n_rows) in per.items():
            if red is Redelivery.SOURCE:
                self.stats.unacked_at_shutdown += n_rows
            else:
                self.stats.lost_at_shutdown += n_rows
            entry = {"connector": name, "deliveries": n_deliveries, "rows": n_rows, "redelivery": red.value,
                     "what_happens": _REDELIVERY_TEXT[red]}
            self.shutdown_report.append(entry)
            log.error("not stored at shutdown: %s: %d rows in %d deliveries: %s", name, n_rows, n_deliveries,
                      _REDELIVERY_TEXT[red])

    async def close(self) -> None:
        """Final flush (shutdown): everything already taken in is committed and acknowledged, or, if the
        store keeps failing, reported as not stored (bounded: ``shutdown_commit_attempts``)."""
        self._stopping = True
        if self._linger is not None and not self._linger.done():
            self._linger.cancel()
        await self.flush()

