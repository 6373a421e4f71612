"""Shutdown while a commit is under way: what the commit holds is stored and acknowledged."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from core.samples import RawBatch, RawReading, SourceKind
from ontology.tagmap import TagMap
from ontology.validate import Tagger
from twin.config import PipelineConfig
from twin.metrics import Metrics
from twin.pipeline import Pipeline
from twin.store.sqlite import SQLiteStore

T = 1_790_000_000 * 10**9


def test_close_during_a_linger_commit_waits_for_it_and_acknowledges_it(tmp_path: Path) -> None:
    """Pipeline.close() cancels the linger task; when that task is inside its commit, the commit
    still finishes and acknowledges its batches before the final flush (a cancelled commit left its
    batches unacknowledged while a later batch was acknowledged: a replay checkpoint, which keeps
    the highest acknowledged row, then skipped rows that a store.close() could cut off)."""

    class SlowStore(SQLiteStore):
        started = threading.Event()

        def write(self, samples, dead_letters=(), rolls=()):  # type: ignore[no-untyped-def]
            self.started.set()
            time.sleep(0.3)
            return super().write(samples, dead_letters, rolls)

    tm = TagMap.from_dict({"tags": [{"id": "calendering.gap_actual", "step": "calendering", "kind": "MP",
                                     "canonical_unit": "um", "range": [0, 400],
                                     "sources": [{"mqtt": "pilot/{line}/calendering/gap_actual"}]}]})
    store = SlowStore(tmp_path / "s.sqlite")
    acked: list[int] = []

    def reading(i: int) -> RawReading:
        return RawReading(SourceKind.MQTT, "pilot/L1/calendering/gap_actual", 80.0 + i, T + i, T + i, "um")

    async def run() -> None:
        pipe = Pipeline(PipelineConfig(linger_ms=1), store, Tagger(tm, "L1"), Metrics())
        await pipe.ingest(RawBatch((reading(1),), (), lambda: acked.append(1)), "c")
        while not SlowStore.started.is_set():  # the linger task is committing batch 1
            await asyncio.sleep(0.001)
        await pipe.ingest(RawBatch((reading(2),), (), lambda: acked.append(2)), "c")
        await pipe.close()

    asyncio.run(run())
    try:
        assert acked == [1, 2]
        assert store.count() == 2
    finally:
        store.close()
