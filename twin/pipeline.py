"""The pipeline: connectors -> tagging -> batched, durable store commits -> acknowledgements.

Flow control, end to end:
- each connector owns a bounded queue with a named overflow policy (connectors.base);
- the pipeline tags each delivery at once and keeps the results pending; a commit happens when
  ``batch_size`` samples are pending, when the intake pauses for ``linger_ms``, or from the periodic
  flush job; at most ``max_pending`` samples wait, beyond that intake waits for the commit
  (back-pressure into the connector queues, never a silent drop);
- a delivery is acknowledged to its source (MQTT PUBACK, replay checkpoint) only after the commit
  that holds all of its samples and dead letters returned;
- a failed commit is retried with backoff; nothing is acknowledged until it succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ontology.validate import Tagger
from twin.config import PipelineConfig
from twin.metrics import Metrics
from twin.samples import DeadLetter, RawBatch, RollEvent, Sample, now_ns, ns_to_iso
from twin.state import LineState
from twin.store.base import Store

log = logging.getLogger("twin.pipeline")


@dataclass
class PipelineStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    commits: int = 0
    commit_errors: int = 0
    acked_batches: int = 0
    last_commit_ns: int = 0
    lag_s: float = 0.0


class Pipeline:
    def __init__(self, config: PipelineConfig, store: Store, tagger: Tagger,
                 metrics: Metrics | None = None, state: LineState | None = None) -> None:
        self.config = config
        self.store = store
        self.tagger = tagger
        self.metrics = metrics or Metrics()
        self.state = state or LineState()
        self.stats = PipelineStats()
        self._samples: list[Sample] = []
        self._dead: list[DeadLetter] = []
        self._rolls: list[RollEvent] = []
        self._acks: list[Callable[[], None]] = []
        self._flush_lock = asyncio.Lock()
        self._linger: asyncio.Task[None] | None = None
        self._stopping = False
        self.after_commit: list[Callable[[Sequence[Sample]], None]] = []

    @property
    def pending(self) -> int:
        return len(self._samples) + len(self._dead) + len(self._rolls)

    # -- intake ------------------------------------------------------------------------------
    async def consume(self, connector_name: str, batches: "asyncio.AsyncIterator[RawBatch]") -> None:
        async for batch in batches:
            await self.ingest(batch, connector_name)

    async def ingest(self, batch: RawBatch, connector_name: str = "") -> None:
        samples, dead, rolls = self._samples, self._dead, self._rolls
        n_dead = 0
        for out in self.tagger.tag_batch(batch.readings):
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
        self._acks.append(batch.ack)
        n = len(batch.readings) + len(batch.dead_letters)
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

    # -- commits -----------------------------------------------------------------------------
    async def flush(self) -> int:
        """Commit everything pending, then acknowledge its deliveries. Returns samples committed."""
        async with self._flush_lock:
            if not self._samples and not self._dead and not self._rolls and not self._acks:
                return 0
            samples, dead, rolls, acks = self._samples, self._dead, self._rolls, self._acks
            self._samples, self._dead, self._rolls, self._acks = [], [], [], []
            self.metrics.pending.set(0)
            delay = 0.05
            attempt = 0
            while True:
                attempt += 1
                t0 = time.perf_counter()
                try:
                    result = await asyncio.to_thread(self.store.write, samples, dead, rolls)
                    break
                except Exception as err:  # noqa: BLE001 - any store failure: retry, never ack
                    self.stats.commit_errors += 1
                    self.metrics.commit_errors.inc()
                    log.error("store commit of %d samples failed (attempt %d): %s", len(samples), attempt, err)
                    if self._stopping and attempt >= 3:
                        log.error("giving up on %d samples at shutdown; they were not acknowledged "
                                  "and will be redelivered by their source", len(samples))
                        return 0
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            self.metrics.commit_seconds.observe(time.perf_counter() - t0)
            t = now_ns()
            self.stats.commits += 1
            self.stats.stored += result.inserted
            self.stats.duplicates += result.duplicates
            self.stats.last_commit_ns = t
            self.metrics.stored.inc(result.inserted)
            self.metrics.duplicates.inc(result.duplicates)
            if samples:
                newest = samples[-1]
                self.stats.lag_s = (t - newest.received_ts_ns) / 1e9
                self.metrics.lag.set(self.stats.lag_s)
                self.metrics.source_lag.set((t - newest.source_ts_ns) / 1e9)
            for ack in acks:
                try:
                    ack()
                except Exception as err:  # noqa: BLE001 - a failed ack means a redelivery, not a loss
                    log.warning("acknowledgement failed (the source will redeliver): %s", err)
            self.stats.acked_batches += len(acks)
            self.state.update(samples, rolls)
            if dead:  # the live page shows dead letters as they happen (newest 20 of this commit)
                self.state.broadcast({"type": "dead_letters", "count": len(dead), "dead_letters": [
                    {"received": ns_to_iso(d.received_ts_ns), "source": getattr(d.source, "value", str(d.source)),
                     "connector": d.connector, "address": d.address, "line_id": d.line_id,
                     "reason_code": d.reason_code, "reason": d.reason} for d in dead[-20:]]})
            for fn in self.after_commit:
                try:
                    fn(samples)
                except Exception:  # noqa: BLE001
                    log.exception("after-commit hook failed")
            return len(samples)

    async def close(self) -> None:
        """Final flush (shutdown): everything already taken in is committed and acknowledged."""
        self._stopping = True
        if self._linger is not None and not self._linger.done():
            self._linger.cancel()
        await self.flush()
