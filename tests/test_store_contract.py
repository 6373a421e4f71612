"""The store contract, run against every registered backend (embedded SQLite, and InfluxDB against a
real influxd). A registered backend without a factory in STORE_FACTORIES fails the suite."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.samples import DeadLetter, Quality, RollEvent, Sample, SourceKind
from twin.store import base as store_base
from twin.store.base import Store
from twin.store.sqlite import SQLiteStore

T0 = 1_790_000_000 * 10**9
S = 10**9

def _influxdb_store(d: Path, request: pytest.FixtureRequest) -> Store:
    """The InfluxDB backend against a real influxd (1.6.7 here: v1 /write and InfluxQL /query),
    started on free loopback ports in the test's folder (tests/influx/servers.py)."""
    from tests.influx.servers import InfluxD
    from twin.config import InfluxStoreConfig
    from twin.store.influx import InfluxStore

    server = InfluxD(d / "influxd")
    try:
        server.start()
    except FileNotFoundError as err:
        pytest.fail(str(err))
    request.addfinalizer(server.stop)
    return InfluxStore(InfluxStoreConfig(url=server.url, write_api="v1", database=server.database,
                                         outbox_path=d / "outbox.sqlite", retention="delete",
                                         batch_size=1000, max_in_flight_batches=1, flush_interval_ms=20))


# backend -> factory(folder, request); a factory may start the server its backend talks to
STORE_FACTORIES: dict[str, Callable[[Path, pytest.FixtureRequest], Store]] = {
    "embedded": lambda d, request: SQLiteStore(d / "store.sqlite"),
    "influxdb": _influxdb_store,
}


def test_every_registered_backend_has_a_contract_fixture() -> None:
    assert set(store_base.BACKENDS) == set(STORE_FACTORIES)


@pytest.fixture(params=sorted(STORE_FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = STORE_FACTORIES[request.param](tmp_path, request)
    yield s
    s.close()


def smp(tag: str, i: int, v: float, line: str = "L1", roll: str | None = None) -> Sample:
    return Sample(line, tag, v, "um", T0 + i * S, T0 + i * S + 1000, Quality.GOOD, roll, float(i))


def test_write_is_idempotent_on_line_tag_source_ts(store: Store) -> None:
    batch = [smp("a.b", i, float(i)) for i in range(100)]
    r1 = store.write(batch)
    r2 = store.write(batch)
    assert (r1.inserted, r1.duplicates) == (100, 0)
    assert (r2.inserted, r2.duplicates) == (0, 100)
    # same timestamp on another line or tag is a different sample
    store.write([smp("a.b", 0, 5.0, line="L2"), smp("a.c", 0, 5.0)])
    assert store.count() == 102
    assert store.count("a.b") == 101 and store.count("a.b", "L1") == 100


def test_latest_per_line_and_tag(store: Store) -> None:
    store.write([smp("a.b", i, float(i), roll="R1") for i in range(10)] + [smp("a.c", 3, 33.0)])
    store.write([smp("a.b", 5, 999.0)])  # an older duplicate timestamp does not change latest
    latest = {(s.line_id, s.tag_id): s for s in store.latest()}
    assert latest[("L1", "a.b")].value == 9.0 and latest[("L1", "a.b")].roll_id == "R1"
    assert latest[("L1", "a.b")].web_pos_m == 9.0
    assert latest[("L1", "a.c")].value == 33.0
    assert [s.tag_id for s in store.latest(tags=["a.c"])] == ["a.c"]
    assert store.latest(line_id="nope") == []


def test_series_downsampled_to_buckets(store: Store) -> None:
    store.write([smp("a.b", i, float(i)) for i in range(1000)])  # 1 Hz, values 0..999
    buckets = store.series("a.b", T0, T0 + 1000 * S, 10)
    assert len(buckets) == 10
    assert [b.count for b in buckets] == [100] * 10
    assert buckets[0].min == 0 and buckets[0].max == 99 and buckets[0].mean == pytest.approx(49.5)
    assert buckets[-1].mean == pytest.approx(949.5)
    assert buckets[3].start_ns == T0 + 300 * S
    assert sum(b.count for b in store.series("a.b", T0 + 100 * S, T0 + 200 * S, 500)) == 100
    assert store.series("a.b", T0, T0 + 1000 * S, 2000)[0].count == 1
    assert store.series("missing.tag", T0, T0 + S, 10) == []


def test_dead_letters_rolls_and_retention(store: Store) -> None:
    dl = DeadLetter(SourceKind.MQTT, "x/y", '{"value": "a"}', "x.y: expected a number", "wrong_type", T0, "mqtt", "L1")
    store.write([smp("a.b", i, 1.0) for i in range(10)], [dl, dl], [RollEvent("L1", "calendering", "R-7", T0)])
    rows = store.dead_letters()
    assert len(rows) == 2 and rows[0]["reason_code"] == "wrong_type" and rows[0]["payload"] == '{"value": "a"}'
    assert store.dead_letter_count() == 2
    assert store.rolls()[0]["roll_id"] == "R-7"
    removed = store.apply_retention(T0 + 5 * S, T0 + 1)
    assert removed == 5 + 2
    assert store.count() == 5 and store.dead_letter_count() == 0


@pytest.mark.parametrize("bad", [
    Sample("L1", "a.b", float("nan"), "um", T0 + 7 * S, T0, Quality.GOOD),  # SQLite would store NULL
    Sample("L1", "a.b", float("inf"), "um", T0 + 7 * S, T0, Quality.GOOD),
    Sample("L1", "a.b", 1.0, "um", T0 + 7 * S, T0, Quality.GOOD, None, float("nan")),
    Sample("L1", "a.\ud800", 1.0, "um", T0 + 7 * S, T0, Quality.GOOD),  # UTF-8 cannot encode it
    Sample("L1", "a.b", 1.0, "um", 2**64, T0, Quality.GOOD),  # beyond int64 nanoseconds
], ids=["nan", "inf", "nan_web_position", "lone_surrogate_tag", "ts_beyond_int64"])
def test_a_row_the_backend_cannot_take_fails_the_whole_write_permanently(store: Store, bad: Sample) -> None:
    """The pipeline splits a refused commit to find the row (twin.pipeline): that needs a refused
    write() to store nothing of the call and to raise an error classified as permanent; a later write
    works as before."""
    from twin.store.base import StoreErrorKind, classify_store_error

    good = [smp("a.b", i, float(i)) for i in range(5)]
    with pytest.raises(Exception) as info:
        store.write(good + [bad] + [smp("a.c", 1, 1.0)],
                    [DeadLetter(SourceKind.MQTT, "x", "{}", "r", "wrong_type", T0)])
    assert classify_store_error(info.value) is StoreErrorKind.PERMANENT, repr(info.value)
    assert store.count() == 0 and store.dead_letter_count() == 0
    assert store.write(good).inserted == 5
    assert store.count() == 5


WRITER = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
from twin.store.sqlite import SQLiteStore
from core.samples import Sample, Quality
s = SQLiteStore(sys.argv[1])
T0 = 1_790_000_000 * 10**9
i = 0
while True:
    s.write([Sample("L1", "a.b", float(i + k), "um", T0 + (i + k) * 1000, T0, Quality.GOOD) for k in range(500)])
    i += 500
    print(i, flush=True)   # acknowledged: write() returned
"""


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    root = str(Path(__file__).resolve().parents[1])
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(db), root], stdout=subprocess.PIPE, text=True)
    acked = 0
    assert p.stdout is not None
    deadline = time.monotonic() + 30
    while acked < 20_000 and time.monotonic() < deadline:
        acked = int(p.stdout.readline())
    p.kill()  # SIGKILL mid-stream
    p.wait()
    assert acked >= 20_000
    s = SQLiteStore(db)
    try:
        n = s.count()
        assert n >= acked  # every acknowledged sample is there (and maybe one more batch)
        assert n % 500 == 0  # no torn batch: a commit is all or nothing
        values = [x.value for x in s.raw("a.b", 0, 2**62, limit=10**7)]
        assert values == [float(i) for i in range(n)]
    finally:
        s.close()


def test_audit_trail_appends_and_reads_back_newest_first(store: Store) -> None:
    for i in range(3):
        store.append_audit("proposal.proposed" if i < 2 else "proposal.applied", f"p{i % 2}",
                           {"i": i, "setpoint": 80.0 + i, "note": "gap 'a' \"b\" \\ ok"},
                           line_id="L1", actor="alice" if i == 2 else None, ts_ns=T0 + i * S)
    store.append_audit("proposal.proposed", "p9", {"i": 9}, line_id="L2", ts_ns=T0)  # same instant, other line
    recs = store.audit(ref="p0")
    assert [r["body"]["i"] for r in recs] == [2, 0]
    assert recs[0]["kind"] == "proposal.applied" and recs[0]["actor"] == "alice" and recs[0]["line_id"] == "L1"
    assert recs[0]["body"]["note"] == "gap 'a' \"b\" \\ ok" and recs[0]["body"]["setpoint"] == 82.0
    assert {r["ref"] for r in store.audit(line_id="L1")} == {"p0", "p1"}
    assert len(store.audit()) == 4 and len(store.audit(limit=2)) == 2
    assert store.audit(ref="nope") == []


def test_samples_page_walks_every_sample_once_in_line_tag_time_order(store: Store) -> None:
    # two lines, three tags (one not asked for), two rolls; pages of 7 across series boundaries
    rows = [smp(tag, i, float(i) + (100 if line == "L2" else 0), line=line, roll="R1" if i < 12 else "R2")
            for line in ("L1", "L2") for tag in ("a.b", "a.c", "a.x") for i in range(20)]
    store.write(rows)
    tags = ["a.c", "a.b"]
    got = [s for page in store.iter_samples(tags, T0 + 2 * S, T0 + 18 * S, page=7) for s in page]
    keys = [(s.line_id, s.tag_id, s.source_ts_ns) for s in got]
    expected = sorted((line, tag, T0 + i * S) for line in ("L1", "L2") for tag in tags for i in range(2, 18))
    assert keys == expected  # each once, in order, end exclusive, the unasked tag left out
    s0 = got[0]
    assert (s0.value, s0.unit, s0.roll_id, s0.web_pos_m, s0.received_ts_ns) == (2.0, "um", "R1", 2.0, T0 + 2 * S + 1000)
    assert [s.value for s in got if s.line_id == "L2" and s.tag_id == "a.b"] == [100.0 + i for i in range(2, 18)]
    # one line, one roll; a page after a key continues behind it
    r2 = store.samples_page(tags, 0, 2**62, "L2", roll_id="R2", limit=100)
    assert [(s.tag_id, s.source_ts_ns) for s in r2] == [(t, T0 + i * S) for t in ("a.b", "a.c") for i in range(12, 20)]
    nxt = store.samples_page(tags, 0, 2**62, "L2", roll_id="R2", after=("L2", "a.b", T0 + 19 * S), limit=3)
    assert [(s.tag_id, s.source_ts_ns) for s in nxt] == [("a.c", T0 + i * S) for i in (12, 13, 14)]
    assert store.samples_page(["no.such"], 0, 2**62) == [] and store.samples_page([], 0, 2**62) == []
