"""Embedded store on SQLite (WAL): the default, no server needed.

Why SQLite (see docs/store.md for the measurement against DuckDB): it is in the Python standard
library, a WAL commit is durable against a process crash with ``synchronous=NORMAL`` and against
power loss with ``FULL``, readers never block the writer, and a ``WITHOUT ROWID`` table keyed on
(series, source timestamp) makes the idempotency key the clustered index, so range queries of one
tag read contiguous pages and a duplicate costs one index probe (``INSERT OR IGNORE``).

Schema::

    series(id INTEGER PRIMARY KEY, line TEXT, tag TEXT, unit TEXT, UNIQUE(line, tag))
    samples(series, ts, value, quality, recv, roll, web_pos, PRIMARY KEY(series, ts)) WITHOUT ROWID
    dead_letters(id, recv, source, connector, address, line, reason_code, reason, payload)
    rolls(line, step, roll, ts, tag, PRIMARY KEY(line, step, roll)) WITHOUT ROWID  -- ts: first seen
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.samples import DeadLetter, RollEvent, Sample
from twin.store.base import Bucket, Store, StoredSample, WriteResult
from twin.store.config import Durability

__all__ = ["Durability", "SQLiteStore"]  # Durability is defined in twin/store/config.py


_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, line TEXT NOT NULL, tag TEXT NOT NULL, unit TEXT NOT NULL,
    UNIQUE(line, tag));
CREATE TABLE IF NOT EXISTS samples (
    series INTEGER NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL, quality INTEGER NOT NULL,
    recv INTEGER NOT NULL, roll TEXT, web_pos REAL,
    PRIMARY KEY (series, ts)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, recv INTEGER NOT NULL, source TEXT NOT NULL,
    connector TEXT, address TEXT, line TEXT, reason_code TEXT NOT NULL, reason TEXT NOT NULL,
    payload TEXT);
CREATE INDEX IF NOT EXISTS dead_letters_recv ON dead_letters(recv);
CREATE TABLE IF NOT EXISTS rolls (
    line TEXT NOT NULL, step TEXT NOT NULL, roll TEXT NOT NULL, ts INTEGER NOT NULL, tag TEXT,
    PRIMARY KEY (line, step, roll)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, kind TEXT NOT NULL, ref TEXT NOT NULL,
    line TEXT, actor TEXT, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_ref ON audit(ref);
"""


def _check_samples(samples: Sequence[Sample]) -> None:
    """Refuse what SQLite would take but not keep faithfully: a NaN value would be stored as NULL (and
    fail NOT NULL), an infinity as a REAL no JSON can carry; likewise the web position. A ValueError
    is a permanent error (twin.store.base.classify_store_error): the pipeline finds the row."""
    for s in samples:
        v, w = s.value, s.web_pos_m
        if v - v != 0.0 or (w is not None and w - w != 0.0):
            raise ValueError(f"sample {s.tag_id!r} at {s.source_ts_ns}: value {v!r} / web position {w!r} "
                             "is not a finite number")


class SQLiteStore(Store):
    backend = "embedded"

    def __init__(self, path: str | Path, durability: Durability | str = Durability.PROCESS_CRASH) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.durability = Durability(durability)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._w = self._connect()
        # checkpoint every ~40 MB of WAL, not every 4 MB (the default 1000 pages): a commit of one row per series
        # dirties a page per row, and each checkpoint copies a page once however often it changed (issue #23:
        # 20.6 -> 14.0 us per stored row at 1,000 series x 10 commits/s, bench/bench_opcua_path.py)
        self._w.execute("PRAGMA wal_autocheckpoint=10000")
        self._w.executescript(_SCHEMA)
        self._w.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', '1')")
        self._w.commit()
        self._series: dict[tuple[str, str], int] = {
            (line, tag): sid for sid, line, tag in self._w.execute("SELECT id, line, tag FROM series")
        }
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=" + ("FULL" if self.durability is Durability.POWER_LOSS else "NORMAL"))
        c.execute("PRAGMA temp_store=MEMORY")
        c.execute("PRAGMA cache_size=-32000")
        with self._conns_lock:
            self._conns.append(c)
        return c

    def _reader(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._connect()
            c.execute("PRAGMA query_only=1")
            self._local.conn = c
        return c

    def _bulk_reader(self) -> sqlite3.Connection:
        """The reader of :meth:`samples_page` (exports: long scans in keyset pages) with a small page cache
        (2 MB): a scan reads each page once, and the 32 MB cache of the query readers, filled by it, would
        stay resident in every thread that served a page."""
        c = getattr(self._local, "bulk", None)
        if c is None:
            c = self._connect()
            c.execute("PRAGMA query_only=1")
            c.execute("PRAGMA cache_size=-2000")
            self._local.bulk = c
        return c

    # -- writes ------------------------------------------------------------------------------
    def _series_id(self, line: str, tag: str, unit: str) -> int:
        key = (line, tag)
        sid = self._series.get(key)
        if sid is None:
            self._w.execute("INSERT OR IGNORE INTO series(line, tag, unit) VALUES (?, ?, ?)", (line, tag, unit))
            sid = self._w.execute("SELECT id FROM series WHERE line=? AND tag=?", key).fetchone()[0]
            self._series[key] = sid
        return sid

    def write(self, samples: Sequence[Sample], dead_letters: Sequence[DeadLetter] = (),
              rolls: Sequence[RollEvent] = ()) -> WriteResult:
        if not samples and not dead_letters and not rolls:
            return WriteResult(0, 0, 0)
        _check_samples(samples)
        with self._write_lock:
            w = self._w
            w.execute("BEGIN IMMEDIATE")
            try:
                sid = self._series_id
                rows = [(sid(s.line_id, s.tag_id, s.unit), s.source_ts_ns, s.value, int(s.quality),
                         s.received_ts_ns, s.roll_id, s.web_pos_m) for s in samples]
                before = w.total_changes
                w.executemany("INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                inserted = w.total_changes - before
                if dead_letters:
                    w.executemany(
                        "INSERT INTO dead_letters(recv, source, connector, address, line, reason_code, reason, payload)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [(d.received_ts_ns, getattr(d.source, "value", str(d.source)), d.connector, d.address,
                          d.line_id, d.reason_code, d.reason, d.payload) for d in dead_letters])
                if rolls:
                    w.executemany("INSERT INTO rolls VALUES (?, ?, ?, ?, ?) ON CONFLICT(line, step, roll)"
                                  " DO UPDATE SET ts = MIN(ts, excluded.ts)",
                                  [(r.line_id, r.step, r.roll_id, r.source_ts_ns, r.tag_id) for r in rolls])
                w.execute("COMMIT")
            except BaseException:
                w.execute("ROLLBACK")
                # series ids created inside the rolled-back transaction are gone too
                self._series = {(line, tag): i for i, line, tag in w.execute("SELECT id, line, tag FROM series")}
                raise
        return WriteResult(inserted, len(rows) - inserted, len(dead_letters))

    # -- queries -----------------------------------------------------------------------------
    @staticmethod
    def _row(r: tuple[Any, ...]) -> StoredSample:
        return StoredSample(r[0], r[1], r[4], r[2], r[3], r[6], r[5], r[7], r[8])

    def latest(self, line_id: str | None = None, tags: Sequence[str] | None = None) -> list[StoredSample]:
        q = ("SELECT s.line, s.tag, s.unit, x.ts, x.value, x.quality, x.recv, x.roll, x.web_pos"
             " FROM series s JOIN samples x ON x.series = s.id"
             " AND x.ts = (SELECT MAX(ts) FROM samples WHERE series = s.id)")
        cond, args = [], []
        if line_id is not None:
            cond.append("s.line = ?")
            args.append(line_id)
        if tags:
            cond.append("s.tag IN (%s)" % ",".join("?" * len(tags)))
            args.extend(tags)
        if cond:
            q += " WHERE " + " AND ".join(cond)
        q += " ORDER BY s.line, s.tag"
        return [self._row(r) for r in self._reader().execute(q, args)]

    def _series_ids(self, tag_id: str, line_id: str | None) -> list[int]:
        c = self._reader()
        if line_id is None:
            return [r[0] for r in c.execute("SELECT id FROM series WHERE tag=?", (tag_id,))]
        return [r[0] for r in c.execute("SELECT id FROM series WHERE tag=? AND line=?", (tag_id, line_id))]

    def series(self, tag_id: str, start_ns: int, end_ns: int, points: int,
               line_id: str | None = None) -> list[Bucket]:
        if end_ns <= start_ns or points < 1:
            return []
        ids = self._series_ids(tag_id, line_id)
        if not ids:
            return []
        width = -(-(end_ns - start_ns) // points)  # ceil
        q = ("SELECT (ts - ?) / ? AS b, MIN(value), AVG(value), MAX(value), COUNT(*), MIN(ts), MAX(ts)"
             " FROM samples WHERE series IN (%s) AND ts >= ? AND ts < ? GROUP BY b ORDER BY b"
             % ",".join("?" * len(ids)))
        out = []
        for b, lo, mean, hi, n, first, last in self._reader().execute(q, (start_ns, width, *ids, start_ns, end_ns)):
            s = start_ns + b * width
            out.append(Bucket(s, min(s + width, end_ns), first, last, lo, mean, hi, n))
        return out

    def raw(self, tag_id: str, start_ns: int, end_ns: int, line_id: str | None = None,
            limit: int = 100_000) -> list[StoredSample]:
        ids = self._series_ids(tag_id, line_id)
        if not ids:
            return []
        q = ("SELECT s.line, s.tag, s.unit, x.ts, x.value, x.quality, x.recv, x.roll, x.web_pos"
             " FROM samples x JOIN series s ON s.id = x.series WHERE x.series IN (%s)"
             " AND x.ts >= ? AND x.ts < ? ORDER BY x.ts LIMIT ?" % ",".join("?" * len(ids)))
        return [self._row(r) for r in self._reader().execute(q, (*ids, start_ns, end_ns, limit))]

    def samples_of_roll(self, roll_id: str, line_id: str | None = None,
                        limit: int = 1_000_000) -> list[StoredSample]:
        q = ("SELECT s.line, s.tag, s.unit, x.ts, x.value, x.quality, x.recv, x.roll, x.web_pos"
             " FROM samples x JOIN series s ON s.id = x.series WHERE x.roll = ?")
        args: list[Any] = [roll_id]
        if line_id is not None:
            q += " AND s.line = ?"
            args.append(line_id)
        q += " ORDER BY x.ts, s.tag LIMIT ?"
        args.append(limit)
        return [self._row(r) for r in self._reader().execute(q, args)]

    def samples_page(self, tags: Sequence[str], start_ns: int, end_ns: int, line_id: str | None = None, *,
                     roll_id: str | None = None, after: tuple[str, str, int] | None = None,
                     limit: int = 10_000) -> list[StoredSample]:
        # one query per series on its (series, ts) primary key, from the cursor on: no scan of what is behind
        if not tags:
            return []
        c = self._bulk_reader()
        q = "SELECT id, line, tag, unit FROM series WHERE tag IN (%s)" % ",".join("?" * len(tags))
        args: list[Any] = list(tags)
        if line_id is not None:
            q += " AND line = ?"
            args.append(line_id)
        keys = sorted((line, tag, sid, unit) for sid, line, tag, unit in c.execute(q, args))
        if after is not None:
            keys = [k for k in keys if (k[0], k[1]) >= after[:2]]
        out: list[StoredSample] = []
        for line, tag, sid, unit in keys:
            if len(out) >= limit:
                break
            lo = start_ns
            if after is not None and (line, tag) == after[:2]:
                lo = max(lo, after[2] + 1)
            sql = "SELECT ts, value, quality, recv, roll, web_pos FROM samples WHERE series = ? AND ts >= ? AND ts < ?"
            a: list[Any] = [sid, lo, end_ns]
            if roll_id is not None:
                sql += " AND roll = ?"
                a.append(roll_id)
            a.append(limit - len(out))
            out.extend(StoredSample(line, tag, v, unit, ts, recv, qual, roll, wp)
                       for ts, v, qual, recv, roll, wp in c.execute(sql + " ORDER BY ts LIMIT ?", a))
        return out

    def dead_letters(self, limit: int = 100, before_id: int | None = None) -> list[dict[str, Any]]:
        q = "SELECT id, recv, source, connector, address, line, reason_code, reason, payload FROM dead_letters"
        args: list[Any] = []
        if before_id is not None:
            q += " WHERE id < ?"
            args.append(before_id)
        q += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        keys = ("id", "received_ts_ns", "source", "connector", "address", "line_id", "reason_code", "reason", "payload")
        return [dict(zip(keys, r)) for r in self._reader().execute(q, args)]

    def count(self, tag_id: str | None = None, line_id: str | None = None) -> int:
        c = self._reader()
        if tag_id is None and line_id is None:
            return c.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        cond, args = [], []
        if tag_id is not None:
            cond.append("tag = ?")
            args.append(tag_id)
        if line_id is not None:
            cond.append("line = ?")
            args.append(line_id)
        q = ("SELECT COUNT(*) FROM samples WHERE series IN (SELECT id FROM series WHERE %s)" % " AND ".join(cond))
        return c.execute(q, args).fetchone()[0]

    def dead_letter_count(self) -> int:
        return self._reader().execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]

    def rolls(self, line_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = "SELECT line, step, roll, ts, tag FROM rolls"
        args: list[Any] = []
        if line_id is not None:
            q += " WHERE line = ?"
            args.append(line_id)
        q += " ORDER BY ts DESC LIMIT ?"
        args.append(limit)
        keys = ("line_id", "step", "roll_id", "source_ts_ns", "tag_id")
        return [dict(zip(keys, r)) for r in self._reader().execute(q, args)]

    def append_audit(self, kind: str, ref: str, body: dict[str, Any], *, line_id: str | None = None,
                     actor: str | None = None, ts_ns: int | None = None) -> None:
        import json
        import time

        with self._write_lock:
            self._w.execute("INSERT INTO audit(ts, kind, ref, line, actor, body) VALUES (?, ?, ?, ?, ?, ?)",
                            (ts_ns if ts_ns is not None else time.time_ns(), kind, ref, line_id, actor,
                             json.dumps(body, default=str, sort_keys=True)))
            self._w.commit()

    def audit(self, ref: str | None = None, line_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        import json

        q = "SELECT ts, kind, ref, line, actor, body FROM audit"
        conds: list[str] = []
        args: list[Any] = []
        if ref is not None:
            conds.append("ref = ?")
            args.append(ref)
        if line_id is not None:
            conds.append("line = ?")
            args.append(line_id)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        q += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [{"ts_ns": ts, "kind": k, "ref": r, "line_id": ln, "actor": a, "body": json.loads(b)}
                for ts, k, r, ln, a, b in self._reader().execute(q, args)]

    def apply_retention(self, samples_before_ns: int, dead_letters_before_ns: int) -> int:
        with self._write_lock:
            w = self._w
            w.execute("BEGIN IMMEDIATE")
            n = w.execute("DELETE FROM samples WHERE ts < ?", (samples_before_ns,)).rowcount
            n += w.execute("DELETE FROM dead_letters WHERE recv < ?", (dead_letters_before_ns,)).rowcount
            w.execute("COMMIT")
        return n

    def health(self) -> dict[str, Any]:
        try:
            self._reader().execute("SELECT 1").fetchone()
            return {"backend": self.backend, "ok": True, "path": str(self.path),
                    "durability": self.durability.value}
        except sqlite3.Error as err:
            return {"backend": self.backend, "ok": False, "error": str(err)}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._conns_lock:
            for c in self._conns:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._conns.clear()
