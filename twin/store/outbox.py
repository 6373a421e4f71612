"""A durable local outbox: line-protocol points on their way to a server, in one SQLite file.

What it guarantees (docs/influxdb.md):
- **Durable on return.** :meth:`Outbox.transaction` commits once (WAL; ``synchronous=NORMAL`` survives
  ``kill -9`` of the daemon, ``FULL`` survives power loss too). A point is in the outbox until the
  server confirmed it (:meth:`ack`), the server refused it for good (:meth:`reject`), or the capacity
  pushed it out (dropped).
- **Bounded, never silently.** At most ``capacity`` points wait. A commit that would exceed it deletes
  the oldest points that are not in flight (handed to the client and not yet answered) and counts
  them in ``dropped``. The counters ``written``, ``delivered``, ``dropped``, ``rejected`` live in the
  same file and change in the same transactions as the rows, so at every commit
  ``written == delivered + dropped + rejected + pending`` exactly, across restarts.
- **Idempotent on (line, tag, source timestamp)** within a window: the keys of admitted samples are
  remembered for ``dedupe_window_s`` of wall-clock time (by arrival), so a redelivered or replayed
  sample is recognised, counted as a duplicate and not sent again (first value wins). Beyond the window
  the server's own point identity (measurement, tag set, timestamp) still makes a re-sent point
  overwrite itself, not add a second one.

In flight: the sender takes points in sequence order (:meth:`take`), which advances ``taken``;
points with ``seq <= taken`` that are still here are in flight. :meth:`rewind` hands them back
(after a failed delivery, once nothing is in flight any more).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from twin.store.config import Durability

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, lp BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, line TEXT NOT NULL, tag TEXT NOT NULL,
    UNIQUE(line, tag));
CREATE TABLE IF NOT EXISTS keys (id INTEGER PRIMARY KEY, series INTEGER NOT NULL, ts INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS keys_series_ts ON keys(series, ts);
CREATE TABLE IF NOT EXISTS key_marks (at_ns INTEGER PRIMARY KEY, max_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rolls (line TEXT NOT NULL, step TEXT NOT NULL, roll TEXT NOT NULL,
    ts INTEGER NOT NULL, PRIMARY KEY (line, step, roll)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""
_COUNTERS = ("written", "delivered", "dropped", "rejected")
_MAX_VARS = 32_000  # SQLite >= 3.32 allows 32,766 host parameters per statement
_MARK_EVERY_NS = 10 * 10**9  # a (time, max key id) mark every 10 s drives the dedupe window


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    capacity: int
    written: int
    delivered: int
    dropped: int
    rejected: int
    in_flight: int
    oldest_seq: int | None

    def as_dict(self) -> dict[str, int | None]:
        return {"pending": self.pending, "capacity": self.capacity, "written": self.written,
                "delivered": self.delivered, "dropped": self.dropped, "rejected": self.rejected,
                "in_flight": self.in_flight, "oldest_seq": self.oldest_seq}


class Txn:
    """One outbox transaction: admit keys, append points; committed by :meth:`Outbox.transaction`."""

    def __init__(self, box: Outbox) -> None:
        self._box = box
        self._db = box._db
        self.appended = 0

    def admit(self, keys: Sequence[tuple[str, str, int]]) -> list[int]:
        """Indexes of ``keys`` (line, tag, ts) not seen within the dedupe window (first occurrence wins)."""
        box = self._box
        if box.dedupe_window_ns <= 0:
            return list(range(len(keys)))
        sid = box._series_id
        ids = [(sid(line, tag), ts) for line, tag, ts in keys]
        new: set[tuple[int, int]] = set()
        step = _MAX_VARS // 2
        for i in range(0, len(ids), step):
            chunk = ids[i:i + step]
            sql = ("INSERT OR IGNORE INTO keys(series, ts) VALUES " + ",".join(["(?,?)"] * len(chunk))
                   + " RETURNING series, ts")
            flat = [v for pair in chunk for v in pair]
            new.update((r[0], r[1]) for r in self._db.execute(sql, flat).fetchall())
        out = []
        for i, k in enumerate(ids):
            if k in new:
                new.discard(k)  # a key twice in one call: the first is new, the second a duplicate
                out.append(i)
        return out

    def admit_roll(self, line: str, step: str, roll: str, ts: int) -> bool:
        """True when (line, step, roll) is new or seen earlier than before (its first-seen time moves)."""
        row = self._db.execute("SELECT ts FROM rolls WHERE line=? AND step=? AND roll=?", (line, step, roll)).fetchone()
        if row is not None and row[0] <= ts:
            return False
        self._db.execute("INSERT INTO rolls VALUES (?, ?, ?, ?)"
                         " ON CONFLICT(line, step, roll) DO UPDATE SET ts = excluded.ts", (line, step, roll, ts))
        return True

    def append(self, lines: Sequence[bytes]) -> None:
        if lines:
            self._db.executemany("INSERT INTO outbox(lp) VALUES (?)", [(x,) for x in lines])
            self.appended += len(lines)


class Outbox:
    def __init__(self, path: str | Path, capacity: int, durability: Durability | str = Durability.PROCESS_CRASH,
                 dedupe_window_s: float = 3600.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.capacity = int(capacity)
        self.durability = Durability(durability)
        self.dedupe_window_ns = int(dedupe_window_s * 1e9)
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # notified when points leave the outbox
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=" + ("FULL" if self.durability is Durability.POWER_LOSS else "NORMAL"))
        self._db.execute("PRAGMA cache_size=-16000")
        self._db.executescript(_SCHEMA)
        self._db.executemany("INSERT OR IGNORE INTO counters VALUES (?, 0)", [(c,) for c in _COUNTERS])
        self._series = {(line, tag): i for i, line, tag in self._db.execute("SELECT id, line, tag FROM series")}
        self.counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        self.pending = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        self.last_seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        self.last_seq = max(self.last_seq, row[0] if row else 0)
        self.taken = 0  # points with seq <= taken are in flight
        self._last_mark_ns = 0
        self._closed = False

    # -- writing -----------------------------------------------------------------------------
    def _series_id(self, line: str, tag: str) -> int:
        key = (line, tag)
        sid = self._series.get(key)
        if sid is None:
            self._db.execute("INSERT OR IGNORE INTO series(line, tag) VALUES (?, ?)", key)
            sid = self._db.execute("SELECT id FROM series WHERE line=? AND tag=?", key).fetchone()[0]
            self._series[key] = sid
        return sid

    @contextmanager
    def transaction(self) -> Iterator[Txn]:
        """Everything done on the yielded :class:`Txn` is committed at once (durable on return)."""
        with self.lock:
            if self._closed:
                raise RuntimeError("outbox is closed")
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            txn = Txn(self)
            try:
                yield txn
                dropped = self._enforce_capacity(self.pending + txn.appended)
                self._bump(db, written=txn.appended, dropped=dropped)
                self._mark_keys(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._reload()
                raise
            self.pending += txn.appended - dropped
            self.last_seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()[0] \
                if txn.appended else self.last_seq
            self.counters["written"] += txn.appended
            self.counters["dropped"] += dropped
            if dropped:
                self.changed.notify_all()

    def _enforce_capacity(self, pending: int) -> int:
        excess = pending - self.capacity
        if excess <= 0:
            return 0
        # the oldest points that are not in flight; in-flight points are answered by the server first
        cur = self._db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE seq > ? "
                               "ORDER BY seq LIMIT ?)", (self.taken, excess))
        return cur.rowcount

    def _bump(self, db: sqlite3.Connection, **deltas: int) -> None:
        rows = [(v, k) for k, v in deltas.items() if v]
        if rows:
            db.executemany("UPDATE counters SET value = value + ? WHERE name = ?", rows)

    def _mark_keys(self, db: sqlite3.Connection) -> None:
        if self.dedupe_window_ns <= 0:
            return
        now = time.time_ns()
        if now - self._last_mark_ns >= _MARK_EVERY_NS:
            db.execute("INSERT OR REPLACE INTO key_marks VALUES (?, (SELECT COALESCE(MAX(id), 0) FROM keys))", (now,))
            self._last_mark_ns = now

    def _reload(self) -> None:
        db = self._db
        self._series = {(line, tag): i for i, line, tag in db.execute("SELECT id, line, tag FROM series")}
        self.counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
        self.pending = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def prune_keys(self, now_ns: int | None = None, chunk: int = 50_000) -> int:
        """Forget keys admitted longer than the dedupe window ago (by arrival). Deletes in chunks, each
        under the lock on its own, so a large prune never stalls ``write()`` for long. Returns keys removed."""
        if self.dedupe_window_ns <= 0:
            return 0
        cutoff = (now_ns or time.time_ns()) - self.dedupe_window_ns
        with self.lock:
            if self._closed:
                return 0
            row = self._db.execute("SELECT MAX(max_id) FROM key_marks WHERE at_ns < ?", (cutoff,)).fetchone()
        if row is None or row[0] is None:
            return 0
        total = 0
        while True:
            with self.lock:
                if self._closed:
                    return total
                n = self._db.execute("DELETE FROM keys WHERE id IN (SELECT id FROM keys WHERE id <= ? ORDER BY id "
                                     "LIMIT ?)", (row[0], chunk)).rowcount
                total += n
                if n < chunk:
                    self._db.execute("DELETE FROM key_marks WHERE at_ns < ?", (cutoff,))
                    return total

    # -- sending -----------------------------------------------------------------------------
    def take(self, limit: int) -> list[tuple[int, bytes]]:
        """The next ``limit`` points not in flight, oldest first; they are in flight from now on."""
        with self.lock:
            if self._closed or limit <= 0:
                return []
            rows = self._db.execute("SELECT seq, lp FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (self.taken, limit)).fetchall()
            if rows:
                self.taken = rows[-1][0]
            return rows

    def _remove(self, seqs: Sequence[int], counter: str) -> int:
        with self.lock:
            if self._closed or not seqs:
                return 0
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            n = 0
            for i in range(0, len(seqs), _MAX_VARS):
                chunk = seqs[i:i + _MAX_VARS]
                n += db.execute("DELETE FROM outbox WHERE seq IN (%s)" % ",".join("?" * len(chunk)), chunk).rowcount
            self._bump(db, **{counter: n})
            db.execute("COMMIT")
            self.pending -= n
            self.counters[counter] += n
            self.changed.notify_all()
            return n

    def ack(self, seqs: Sequence[int]) -> int:
        """The server stored these points: remove them, count them delivered."""
        return self._remove(seqs, "delivered")

    def reject(self, seqs: Sequence[int]) -> int:
        """The server refused these points for good (e.g. HTTP 400): remove them, count them rejected."""
        return self._remove(seqs, "rejected")

    def rewind(self) -> None:
        """Nothing is in flight any more: undelivered points are taken again from the oldest."""
        with self.lock:
            self.taken = 0

    def oldest_seq(self) -> int | None:
        with self.lock:
            if self._closed:
                return None
            return self._db.execute("SELECT MIN(seq) FROM outbox").fetchone()[0]

    def stats(self, in_flight: int = 0) -> OutboxStats:
        with self.lock:
            c = self.counters
            return OutboxStats(self.pending, self.capacity, c["written"], c["delivered"], c["dropped"],
                               c["rejected"], in_flight, None if self._closed else self.oldest_seq())

    def close(self) -> None:
        with self.lock:
            if self._closed:
                return
            self._closed = True
            self.changed.notify_all()
            try:
                self._db.close()
            except sqlite3.Error:
                pass
