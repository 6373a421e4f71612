"""Embedded store engines compared in one run: SQLite (WAL) vs DuckDB, same schema and key.

    .venv/bin/python -m bench.bench_store [--samples 300000]

Measures (1) insert rate in commits of 5,000 samples, idempotent on (series, ts), with each
engine's fastest bulk path; (2) a re-insert of the same data (all duplicates); (3) the downsampled
range query of the API: the store holds 1 h of 10 tags at 10 Hz, each query buckets one tag's hour
into 500 points (min/mean/max/count), p50/p95 over 100 queries, plus all 10 tags in a row.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import percentile, versions, write_result
from core.samples import Quality, Sample
from twin.store.sqlite import Durability, SQLiteStore

T0 = 1_790_000_000 * 10**9
BATCH = 5000


def make_samples(n: int, tags: int = 10, hz: int = 10) -> list[Sample]:
    step = 10**9 // hz
    rng = np.random.default_rng(1)
    vals = rng.normal(60, 1, n)
    return [Sample("pilot-1", f"calendering.t{i % tags}", float(vals[i]), "um", T0 + (i // tags) * step,
                   T0 + (i // tags) * step + 1000, Quality.GOOD, "R-1", None) for i in range(n)]


def bench_sqlite(samples: list[Sample], d: Path, durability: Durability) -> dict[str, float]:
    s = SQLiteStore(d / f"sqlite-{durability.value}.db", durability=durability)
    t = time.perf_counter()
    for i in range(0, len(samples), BATCH):
        s.write(samples[i:i + BATCH])
    ins = len(samples) / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, len(samples), BATCH):
        r = s.write(samples[i:i + BATCH])
        assert r.inserted == 0
    dup = len(samples) / (time.perf_counter() - t)
    lat = []
    span = 3600 * 10**9
    for k in range(100):
        q = time.perf_counter()
        b = s.series(f"calendering.t{k % 10}", T0, T0 + span, 500)
        lat.append(time.perf_counter() - q)
        assert len(b) == 500
    q = time.perf_counter()
    for k in range(10):
        s.series(f"calendering.t{k}", T0, T0 + span, 500)
    all10 = time.perf_counter() - q
    s.close()
    return {"insert_samples_per_s": ins, "duplicate_insert_samples_per_s": dup,
            "query_p50_ms": percentile(lat, 50) * 1e3, "query_p95_ms": percentile(lat, 95) * 1e3,
            "query_10_tags_ms": all10 * 1e3}


def bench_duckdb(samples: list[Sample], d: Path) -> dict[str, float]:
    import duckdb
    import pyarrow as pa

    con = duckdb.connect(str(d / "duck.db"))
    con.execute("CREATE TABLE series(id INTEGER PRIMARY KEY, line VARCHAR, tag VARCHAR, unit VARCHAR)")
    con.execute("CREATE TABLE samples(series INTEGER, ts BIGINT, value DOUBLE, quality INTEGER, recv BIGINT,"
                " roll VARCHAR, web_pos DOUBLE, PRIMARY KEY(series, ts))")
    ids: dict[str, int] = {}

    def table(chunk: list[Sample]) -> pa.Table:
        for x in chunk:
            if x.tag_id not in ids:
                ids[x.tag_id] = len(ids) + 1
                con.execute("INSERT INTO series VALUES (?, ?, ?, ?)", (ids[x.tag_id], x.line_id, x.tag_id, x.unit))
        return pa.table({"series": [ids[x.tag_id] for x in chunk], "ts": [x.source_ts_ns for x in chunk],
                         "value": [x.value for x in chunk], "quality": [int(x.quality) for x in chunk],
                         "recv": [x.received_ts_ns for x in chunk], "roll": [x.roll_id for x in chunk],
                         "web_pos": [x.web_pos_m for x in chunk]})

    def write(chunk: list[Sample]) -> None:
        arrow_chunk = table(chunk)  # noqa: F841 - referenced by name in the SQL below
        con.execute("BEGIN")
        con.execute("INSERT OR IGNORE INTO samples SELECT * FROM arrow_chunk")
        con.execute("COMMIT")

    t = time.perf_counter()
    for i in range(0, len(samples), BATCH):
        write(samples[i:i + BATCH])
    ins = len(samples) / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, len(samples), BATCH):
        write(samples[i:i + BATCH])
    dup = len(samples) / (time.perf_counter() - t)
    span = 3600 * 10**9
    width = span // 500
    lat = []
    for k in range(100):
        q = time.perf_counter()
        rows = con.execute("SELECT (ts - ?) // ? AS b, MIN(value), AVG(value), MAX(value), COUNT(*) FROM samples"
                           " WHERE series = ? AND ts >= ? AND ts < ? GROUP BY b ORDER BY b",
                           (T0, width, ids[f"calendering.t{k % 10}"], T0, T0 + span)).fetchall()
        lat.append(time.perf_counter() - q)
        assert len(rows) == 500
    con.close()
    return {"insert_samples_per_s": ins, "duplicate_insert_samples_per_s": dup,
            "query_p50_ms": percentile(lat, 50) * 1e3, "query_p95_ms": percentile(lat, 95) * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=360_000, help="default: 1 h of 10 tags at 10 Hz")
    a = ap.parse_args()
    samples = make_samples(a.samples)
    d = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        res = {
            "samples": a.samples, "batch": BATCH,
            "sqlite_wal_normal": bench_sqlite(samples, d, Durability.PROCESS_CRASH),
            "sqlite_wal_full": bench_sqlite(samples, d, Durability.POWER_LOSS),
            "duckdb": bench_duckdb(samples, d),
        }
        res["ratio_insert_sqlite_over_duckdb"] = (res["sqlite_wal_normal"]["insert_samples_per_s"]
                                                  / res["duckdb"]["insert_samples_per_s"])
        res["ratio_query_p95_duckdb_over_sqlite"] = (res["duckdb"]["query_p95_ms"]
                                                     / res["sqlite_wal_normal"]["query_p95_ms"])
    finally:
        shutil.rmtree(d, ignore_errors=True)
    write_result("store", res, versions("duckdb", "pyarrow", "numpy"))


if __name__ == "__main__":
    main()
