"""Poison isolation (issue #15, point 1): no single reading, row or delivery stops ingestion.

Against a real SQLite store: timestamps the store cannot hold, clock skew, text that is not storable,
rows the store refuses for good (found by splitting the commit), a store that is locked (transient:
retried, state exposed, honest at shutdown), an unexpected exception while tagging, and a hostile
sender cycling through topics, line ids and roll ids (bounded memory)."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.samples import (
    DEAD_LETTER_PAYLOAD_CHARS,
    TS_MAX_NS,
    DeadLetter,
    Quality,
    RawBatch,
    RawReading,
    Redelivery,
    Sample,
    SourceKind,
    now_ns,
    parse_time_ns,
    safe_text,
)
from ontology.tagmap import TagMap
from ontology.validate import Tagger, TraceState
from twin.config import PipelineConfig
from twin.metrics import Metrics
from twin.pipeline import Pipeline
from twin.store.sqlite import SQLiteStore

GAP = "pilot/L1/calendering/gap_actual"
SPEC = {"tags": [
    {"id": "calendering.gap_actual", "step": "calendering", "kind": "MP", "canonical_unit": "um",
     "range": [0, 400], "sources": [{"mqtt": "pilot/{line}/calendering/gap_actual"}, {"replay": "gap"},
                                    {"opcua": "ns=2;s=Gap"}]},
    {"id": "calendering.roll_id", "step": "calendering", "kind": "TRACE", "value_type": "string",
     "traceability": "roll_id", "sources": [{"mqtt": "pilot/{line}/calendering/roll_id"}, {"replay": "roll"}]},
    {"id": "calendering.web_position", "step": "calendering", "kind": "TRACE", "canonical_unit": "m",
     "range": [0, 100000], "traceability": "web_position",
     "sources": [{"mqtt": "pilot/{line}/calendering/web"}]},
]}


@pytest.fixture()
def tagmap() -> TagMap:
    return TagMap.from_dict(SPEC)


def mq(value: object = 80.0, ts: int | None = None, recv: int | None = None, address: str = GAP,
       unit: str | None = "um", roll: object = None, web: object = None,
       source: SourceKind = SourceKind.MQTT) -> RawReading:
    recv = now_ns() if recv is None else recv
    return RawReading(source, address, value, recv if ts is None else ts, recv, unit, Quality.GOOD, None,
                      roll, web, "c")  # type: ignore[arg-type]


# -- 1. timestamps, safe_text, bounded dead letters --------------------------------------------
@pytest.mark.parametrize("value", [
    "9999-12-31T23:59:59Z", 1e30, 1e308, -1e308, 10**30, "HUGE_INT", 2**63, "1677-09-21T00:00:00Z",
    "2262-04-12T00:00:00Z", "+99999-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
])
def test_times_outside_the_store_range_are_a_value_error(value: object) -> None:
    if value == "HUGE_INT":
        value = 10**5000  # built here: pytest cannot name a parameter this long
    with pytest.raises(ValueError) as info:
        parse_time_ns(value)
    assert "store's range" in str(info.value) or "not ISO 8601" in str(info.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "x" * 100_000, "\ud800", "2026-01-01\x00Z", None,
                                   [1], {"a": 1}, True, "2026-13-01T00:00:00Z"], ids=lambda v: safe_text(v, 30))
def test_parse_time_ns_raises_only_value_error(value: object) -> None:
    with pytest.raises(ValueError):
        parse_time_ns(value)


def test_times_at_the_edges_of_the_range_parse_exactly() -> None:
    assert parse_time_ns("2262-04-11T23:47:16.854775Z") == 9_223_372_036_854_775_000
    assert parse_time_ns("1677-09-21T00:12:44Z") == -9_223_372_036_000_000_000
    assert parse_time_ns("2026-11-02T06:00:00.5+01:00") == parse_time_ns(1793595600.5) == 1793595600_500_000_000


def test_safe_text_is_storable_and_bounded() -> None:
    for s, limit in [("a\ud800b\x00c", 100), ("é" * 10_000, 60), (10**100_000, 50), (b"\xff", 20), ("\udcff" * 50, 30)]:
        out = safe_text(s, limit)
        assert len(out) <= limit
        out.encode("utf-8")  # no lone surrogate left
        assert "\x00" not in out
    assert safe_text("plain", 10) == "plain"
    assert safe_text("x" * 100, 40).endswith("[truncated, 100 chars in all]")

    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert safe_text(Boom(), 20) == "<Boom>"


def test_dead_letters_are_bounded_and_storable_whoever_builds_them(tmp_path: Path) -> None:
    d = DeadLetter(SourceKind.MQTT, "t/\ud800" + "x" * 5000, "p\x00" * 10_000, "r\ud800", "code", 10**30, "c\x00",
                   "L\udcff")
    assert len(d.payload) <= DEAD_LETTER_PAYLOAD_CHARS and len(d.address) <= 1024
    assert 0 < d.received_ts_ns <= TS_MAX_NS
    store = SQLiteStore(tmp_path / "s.sqlite")
    try:
        store.write([], [d])
        row = store.dead_letters()[0]
        assert row["payload"].startswith("p\\x00p\\x00") and "truncated" in row["payload"]
        assert row["address"].startswith("t/\\ud800")
    finally:
        store.close()


# -- 2. screening in both tagging paths ----------------------------------------------------------
def _both(tagmap: TagMap, readings: list[RawReading], **window: float | None) -> list[object]:
    a, b = Tagger(tagmap, "L0"), Tagger(tagmap, "L0")
    for t in (a, b):
        t.set_time_window(window.get("future", 300.0), window.get("past", 400 * 86400.0))
    one = a.tag_batch(readings)
    ref = b.tag_batch_per_reading(readings)
    assert one == ref and repr(one) == repr(ref)
    return one


def test_screening_makes_dead_letters_with_their_reason_in_both_paths(tagmap: TagMap) -> None:
    now = now_ns()
    day = 86400 * 10**9
    cases = [
        (mq(ts=2**63 + 5, recv=now), "bad_timestamp"),
        (mq(ts=-(2**63) - 5, recv=now), "bad_timestamp"),
        (mq(ts=now + 301 * 10**9, recv=now), "clock_skew"),
        (mq(ts=now - 401 * day, recv=now), "clock_skew"),
        (mq(address="pilot/L\ud800/calendering/gap_actual"), "bad_text"),
        (mq(address="pilot/L\x00/calendering/gap_actual"), "bad_text"),
        (mq(address="pilot/" + "L" * 2000 + "/calendering/gap_actual"), "bad_text"),
        (mq(roll="R-\ud800"), "bad_text"),
        (mq(roll="R" * 300), "bad_text"),
        (mq(unit="u\x00m"), "bad_text"),
        (mq(web=float("nan")), "non_finite"),
        (mq(web=float("inf")), "non_finite"),
        (mq(value="R-\ud800", address="pilot/L1/calendering/roll_id", unit=None), "bad_text"),
        (mq(value=float("nan"), address="pilot/L1/calendering/web", unit="m"), "non_finite"),
        (mq(value=5.0, ts=now + 10**12, address="pilot/L1/calendering/web", unit="m"), "clock_skew"),
        (mq(value="R-9", ts=2**64, address="pilot/L1/calendering/roll_id", unit=None), "bad_timestamp"),
    ]
    good = mq(81.0, roll="R-1", web=2.5)
    readings = [r for r, _ in cases] + [good]
    out = _both(tagmap, readings)
    assert [getattr(o, "reason_code", None) for o in out[:-1]] == [code for _, code in cases]
    assert type(out[-1]) is Sample and out[-1].roll_id == "R-1" and out[-1].web_pos_m == 2.5
    # within the window, and the window follows the config
    ok = _both(tagmap, [mq(ts=now + 299 * 10**9, recv=now), mq(ts=now - 399 * day, recv=now)])
    assert [type(o) for o in ok] == [Sample, Sample]
    assert [type(o) for o in _both(tagmap, [mq(ts=now - 10**6 * day // 1000, recv=now)], past=None)] == [Sample]


def test_replayed_history_is_exempt_from_the_skew_window_not_from_the_store_range(tagmap: TagMap) -> None:
    now = now_ns()
    old = parse_time_ns("2019-05-01T00:00:00Z")
    out = _both(tagmap, [mq(ts=old, recv=now, address="gap", source=SourceKind.REPLAY),
                         mq(ts=now + 3 * 86400 * 10**9, recv=now, address="gap", source=SourceKind.REPLAY),
                         mq(ts=2**63, recv=now, address="gap", source=SourceKind.REPLAY),
                         mq(ts=old, recv=now)])
    assert [getattr(o, "reason_code", "sample") for o in out] == ["sample", "sample", "bad_timestamp", "clock_skew"]


# -- 3. commits: permanent errors are split to the row, transient ones retried ---------------------
def _pipe(tmp_path: Path, tagmap: TagMap, store: SQLiteStore | None = None, **cfg: object) -> Pipeline:
    store = store or SQLiteStore(tmp_path / "s.sqlite")
    return Pipeline(PipelineConfig(**{"linger_ms": 1, **cfg}), store, Tagger(tagmap, "L1"), Metrics())


def _sample(i: int, value: float = 80.0, tag: str = "calendering.gap_actual", ts: int | None = None) -> Sample:
    t = now_ns()
    return Sample("L1", tag, value, "um", ts if ts is not None else t - 10**9 * 1000 + i, t, Quality.GOOD)


def test_rows_the_store_refuses_become_store_rejected_and_the_rest_is_stored(tmp_path: Path,
                                                                              tagmap: TagMap) -> None:
    """Rows that no screening stops (the twin's own samples: predictions) but SQLite refuses: a time
    beyond int64 (OverflowError), a NaN (ValueError), text UTF-8 cannot encode (UnicodeEncodeError).
    The commit is split until they are found; the other rows and the delivery's readings are stored and
    the delivery acknowledged once."""
    pipe = _pipe(tmp_path, tagmap)
    acked: list[int] = []
    bad = [_sample(0, ts=2**64), _sample(0, value=math.nan), _sample(0, tag="calendering.\ud800")]
    good = [_sample(i) for i in range(1, 200)]

    async def run() -> None:
        await pipe.ingest(RawBatch((mq(81.0),), (), lambda: acked.append(1)), "c")
        await pipe.submit(good[:50] + [bad[0]] + good[50:120] + [bad[1]] + good[120:] + [bad[2]])
        await pipe.flush()
        await pipe.ingest(RawBatch((mq(82.0, ts=now_ns() + 1),), (), lambda: acked.append(2)), "c")
        await pipe.close()

    asyncio.run(run())
    store = pipe.store
    try:
        assert acked == [1, 2]
        assert store.count() == 199 + 2
        rows = store.dead_letters(limit=10)
        assert sorted(r["reason_code"] for r in rows) == ["store_rejected"] * 3
        reasons = " ".join(r["reason"] for r in rows)
        assert "OverflowError" in reasons and "not a finite number" in reasons and "UnicodeEncodeError" in reasons
        assert all(len(r["payload"]) <= DEAD_LETTER_PAYLOAD_CHARS and '"sample"' in r["payload"] for r in rows)
        assert pipe.stats.store_rejected == 3 and pipe.stats.unstorable == 0
        assert pipe.stats.store_failing_since_ns == 0  # permanent errors are not an unhealthy store
    finally:
        store.close()


def test_a_row_not_even_storable_as_a_dead_letter_is_counted_never_retried(tmp_path: Path, tagmap: TagMap) -> None:
    class Picky(SQLiteStore):
        """Real SQLite that also refuses (permanently) any dead letter mentioning 'poison'."""

        writes = 0

        def write(self, samples, dead_letters=(), rolls=()):  # type: ignore[no-untyped-def]
            Picky.writes += 1
            if any("poison" in d.payload or "poison" in d.address for d in dead_letters):
                raise sqlite3.IntegrityError("refused: poison")
            return super().write(samples, dead_letters, rolls)

    store = Picky(tmp_path / "s.sqlite")
    pipe = _pipe(tmp_path, tagmap, store)
    acked: list[int] = []
    poison = DeadLetter(SourceKind.MQTT, "poison", "poison", "x", "malformed_payload", now_ns(), "c")

    async def run() -> None:
        await pipe.ingest(RawBatch((mq(81.0),), (poison,), lambda: acked.append(1)), "c")
        await pipe.close()

    asyncio.run(run())
    try:
        assert acked == [1]  # acknowledged: a redelivery would fail the same way
        assert store.count() == 1 and store.dead_letter_count() == 0
        assert pipe.stats.unstorable == 1 and pipe.stats.store_rejected == 1
        assert Picky.writes < 10
    finally:
        store.close()


def test_a_locked_store_is_retried_reported_and_recovers(tmp_path: Path, tagmap: TagMap) -> None:
    """A real lock: another connection holds the write lock; the store's busy timeout is short, so
    write() fails with sqlite3.OperationalError 'database is locked' (transient)."""
    store = SQLiteStore(tmp_path / "s.sqlite")
    store._w.execute("PRAGMA busy_timeout=20")
    blocker = sqlite3.connect(tmp_path / "s.sqlite", isolation_level=None)
    pipe = _pipe(tmp_path, tagmap, store, commit_retry_initial_s=0.01, commit_retry_max_s=0.05)
    acked: list[int] = []

    async def run() -> None:
        blocker.execute("BEGIN IMMEDIATE")
        t0 = now_ns()
        await pipe.ingest(RawBatch((mq(81.0),), (), lambda: acked.append(1)), "c")
        while pipe.stats.store_consecutive_failures < 3:
            await asyncio.sleep(0.01)
        st = pipe.stats
        assert st.store_failing_since_ns >= t0 and not pipe.store_ok
        assert "locked" in (st.store_last_error or "") and acked == []
        blocker.execute("COMMIT")
        while not acked:
            await asyncio.sleep(0.01)
        assert pipe.store_ok and pipe.stats.store_consecutive_failures == 0
        await pipe.close()

    try:
        asyncio.run(run())
        assert acked == [1] and store.count() == 1 and pipe.stats.store_rejected == 0
    finally:
        blocker.close()
        store.close()


def test_shutdown_with_a_failing_store_says_per_source_what_was_not_stored(
        tmp_path: Path, tagmap: TagMap, caplog: pytest.LogCaptureFixture) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    store._w.execute("PRAGMA busy_timeout=20")
    blocker = sqlite3.connect(tmp_path / "s.sqlite", isolation_level=None)
    pipe = _pipe(tmp_path, tagmap, store, linger_ms=10_000, shutdown_commit_attempts=2)
    acked: list[str] = []

    async def run() -> None:
        blocker.execute("BEGIN IMMEDIATE")
        await pipe.ingest(RawBatch((mq(81.0), mq(82.0, ts=now_ns() + 1)), (), lambda: acked.append("mqtt")), "broker")
        await pipe.ingest(RawBatch((mq(83.0, address="gap", source=SourceKind.REPLAY),), (),
                                   lambda: acked.append("replay"), Redelivery.CHECKPOINT), "file")
        await pipe.ingest(RawBatch((mq(84.0, address="ns=2;s=Gap", source=SourceKind.OPCUA),), (),
                                   lambda: acked.append("opcua")), "plc")
        await pipe.close()

    caplog.set_level(logging.ERROR, logger="twin.pipeline")
    try:
        asyncio.run(run())
    finally:
        blocker.close()
    try:
        assert acked == [] and store.count() == 0
        st = pipe.stats
        assert st.unacked_at_shutdown == 2 and st.lost_at_shutdown == 2
        report = {r["connector"]: r for r in pipe.shutdown_report}
        assert report["broker"]["redelivery"] == "source" and report["broker"]["rows"] == 2
        assert report["file"]["redelivery"] == "checkpoint" and report["plc"]["redelivery"] == "none"
        lines = [r.getMessage() for r in caplog.records if "not stored at shutdown" in r.getMessage()]
        assert len(lines) == 3
        for line in lines:  # only the broker is said to redeliver
            assert ("redelivers" in line) == line.startswith("not stored at shutdown: broker")
        assert any("lost: this source cannot redeliver it" in x for x in lines if "plc" in x)
        assert any("not redelivered (a file is read once)" in x for x in lines if "file" in x)
    finally:
        store.close()


# -- 4. an unexpected exception while tagging never ends the consumer ------------------------------
class Treacherous(float):
    """A value whose conversion to float raises (a bug path inside tag(): float(v))."""

    def __float__(self) -> float:
        raise RuntimeError("conversion exploded")


def test_an_exception_while_tagging_becomes_internal_error_dead_letters_and_ingestion_goes_on(
        tmp_path: Path, tagmap: TagMap, caplog: pytest.LogCaptureFixture) -> None:
    pipe = _pipe(tmp_path, tagmap)
    acked: list[int] = []
    t = now_ns()

    async def deliveries() -> AsyncIterator[RawBatch]:
        yield RawBatch((mq(80.0, ts=t),), (), lambda: acked.append(1))
        yield RawBatch((mq(81.0, ts=t + 1), mq(Treacherous(5.0), ts=t + 2)), (), lambda: acked.append(2))
        yield RawBatch((mq(Treacherous(6.0), ts=t + 3),), (), lambda: acked.append(3))
        for i in range(4, 10):
            yield RawBatch((mq(80.0 + i, ts=t + i),), (), lambda i=i: acked.append(i))

    async def run() -> None:
        await pipe.consume("c", deliveries())
        await pipe.close()

    caplog.set_level(logging.ERROR, logger="twin.pipeline")
    asyncio.run(run())
    store = pipe.store
    try:
        assert acked == list(range(1, 10))
        assert pipe.stats.internal_errors == 2
        assert store.count() == 1 + 6  # the first and every later delivery
        rows = store.dead_letters()
        assert sorted(r["reason_code"] for r in rows) == ["internal_error"] * 3  # both readings of delivery 2
        assert all("conversion exploded" in r["reason"] for r in rows)
        tracebacks = [r for r in caplog.records if r.exc_info]
        assert len(tracebacks) == 1  # the same error again within a minute: counted, not logged again
    finally:
        store.close()


# -- 5. bounded memory under a hostile sender -------------------------------------------------------
@pytest.mark.parametrize(("n", "cache_limit", "bound_mib"), [
    (60_000, 10_000, 16),
    pytest.param(300_000, None, 48, marks=pytest.mark.slow),
], ids=["60k_topics_limit_10k", "300k_topics_default_limits"])
def test_hostile_topics_line_ids_and_roll_ids_keep_tagger_memory_bounded(
        tagmap: TagMap, n: int, cache_limit: int | None, bound_mib: int) -> None:
    """Distinct topics, each a new line id (pattern capture), a quarter with no tag at all, roll ids
    cycling through new values, 80-character topics. The tagger's caches and trace state stay within
    their bounds and tracemalloc's peak stays under the stated bound: 48 MiB with the default limits
    for 300,000 topics (measured 36.6 MiB; keeping every topic would grow without end), 16 MiB with
    CACHE_LIMIT = 10,000 for the quick run."""
    t = Tagger(tagmap, "L0")
    if cache_limit is not None:
        t.CACHE_LIMIT = t.BINDING_LIMIT = cache_limit
    t.set_time_window(300.0, None)
    recv = now_ns()
    tracemalloc.start()
    try:
        for start in range(0, n, 1000):
            batch = []
            for i in range(start, start + 1000):
                line = f"hostile-{i:07d}-" + "x" * 60
                if i % 4 == 0:
                    batch.append(mq(f"R-{i}", ts=recv, recv=recv, address=f"pilot/{line}/calendering/roll_id",
                                    unit=None))
                elif i % 4 == 1:
                    batch.append(mq(5.0, ts=recv, recv=recv, address=f"pilot/{line}/calendering/web", unit="m"))
                elif i % 4 == 2:
                    batch.append(mq(80.0, ts=recv, recv=recv, address=f"pilot/{line}/calendering/gap_actual",
                                    roll=f"R-{i}"))
                else:
                    batch.append(mq(80.0, ts=recv, recv=recv, address=f"nothing/{line}/{i}"))
            out = t.tag_batch(batch)
            assert len(out) == 1000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < bound_mib * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert t._fast_unknown <= t.UNKNOWN_LIMIT and t._fast_added <= t.CACHE_LIMIT
    assert t._fast_chars <= t.CACHE_KEY_CHARS
    assert len(t._bindings) <= t.BINDING_LIMIT and len(t._text_seen) <= t.TEXT_CACHE_LIMIT
    for d in vars(t.trace).values():
        assert len(d) <= TraceState.LIMIT
    assert t.trace_evictions > 0


def test_a_kept_topic_budget_in_characters_bounds_long_topics(tagmap: TagMap) -> None:
    t = Tagger(tagmap, "L0")
    t.CACHE_KEY_CHARS = 10_000
    long_line = "y" * 900
    for i in range(100):
        out = t.tag_batch([mq(80.0, address=f"pilot/{long_line}{i}/calendering/gap_actual")])
        assert type(out[0]) is Sample and out[0].line_id == f"{long_line}{i}"
    assert t._fast_chars <= 10_000 and t.cache_resets >= 8

