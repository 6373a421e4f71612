"""The lab's SQLite file: lab results, the predictions of every model version, model requests and state.

Schema::

    lab_results(id, line, roll, start_m, end_m, quantity, parameter, value, unit, method, sample_id,
                measured, received, source, origin, UNIQUE(line, roll, start_m, end_m, quantity, sample_id))
    model_predictions(line, version, role, ts, roll, web_pos, mean, std, ood, inputs,
                      PRIMARY KEY(line, version, ts))            -- mean / std / inputs: JSON objects
    model_requests(id, kind, state, family, version, from_version, created, created_by, decided,
                   decided_by, comment, metrics, reason)       -- promote / rollback / retrain
    model_state(family, active_version, active_path, previous, updated)

A lab result is never updated: the same key again with the same value is a duplicate (counted, not
stored), with another value a conflict (a dead letter). One connection guarded by a lock: the volumes are
a few rows per roll, and the callers run it in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lab_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL, roll TEXT NOT NULL, start_m REAL NOT NULL,
    end_m REAL NOT NULL, quantity TEXT NOT NULL, parameter TEXT NOT NULL, value REAL NOT NULL, unit TEXT NOT NULL,
    method TEXT NOT NULL, sample_id TEXT NOT NULL, measured INTEGER, received INTEGER NOT NULL,
    source TEXT NOT NULL, origin TEXT NOT NULL,
    UNIQUE(line, roll, start_m, end_m, quantity, sample_id));
CREATE INDEX IF NOT EXISTS lab_results_roll ON lab_results(line, roll);
CREATE TABLE IF NOT EXISTS model_predictions (
    line TEXT NOT NULL, version TEXT NOT NULL, role TEXT NOT NULL, ts INTEGER NOT NULL, roll TEXT,
    web_pos REAL, mean TEXT NOT NULL, std TEXT NOT NULL, ood INTEGER NOT NULL, inputs TEXT,
    PRIMARY KEY (line, version, ts));
CREATE INDEX IF NOT EXISTS model_predictions_roll ON model_predictions(line, roll, web_pos);
CREATE TABLE IF NOT EXISTS model_requests (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, family TEXT NOT NULL, version TEXT,
    from_version TEXT, created INTEGER NOT NULL, created_by TEXT NOT NULL, decided INTEGER, decided_by TEXT,
    comment TEXT, metrics TEXT, reason TEXT);
CREATE TABLE IF NOT EXISTS model_state (
    family TEXT PRIMARY KEY, active_version TEXT NOT NULL, active_path TEXT NOT NULL, previous TEXT,
    updated INTEGER NOT NULL);
"""

RESULT_KEYS = ("id", "line_id", "roll_id", "start_m", "end_m", "quantity", "parameter", "value", "unit", "method",
               "sample_id", "measured_ts_ns", "received_ts_ns", "source", "origin")
REQUEST_KEYS = ("id", "kind", "state", "family", "version", "from_version", "created_ts_ns", "created_by",
                "decided_ts_ns", "decided_by", "comment", "metrics", "reason")


class LabStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- lab results ---------------------------------------------------------------------------
    def insert_results(self, rows: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
        """Store new rows in one transaction. Per row: ("stored", id), ("duplicate", id) for the same key and
        value already stored, or ("conflict", id) for the same key with another value (nothing changes)."""
        out: list[tuple[str, int]] = []
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for r in rows:
                    key = (r["line_id"], r["roll_id"], r["start_m"], r["end_m"], r["quantity"], r["sample_id"])
                    cur.execute("INSERT OR IGNORE INTO lab_results(line, roll, start_m, end_m, quantity, parameter,"
                                " value, unit, method, sample_id, measured, received, source, origin)"
                                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                (*key[:5], r["parameter"], r["value"], r["unit"], r["method"], r["sample_id"],
                                 r["measured_ts_ns"], r["received_ts_ns"], r["source"], r["origin"]))
                    if cur.rowcount == 1:
                        out.append(("stored", int(cur.lastrowid or 0)))
                        continue
                    rid, value, unit = cur.execute(
                        "SELECT id, value, unit FROM lab_results WHERE line=? AND roll=? AND start_m=? AND end_m=?"
                        " AND quantity=? AND sample_id=?", key).fetchone()
                    same = unit == r["unit"] and abs(value - r["value"]) <= 1e-9 * max(1.0, abs(value))
                    out.append(("duplicate" if same else "conflict", int(rid)))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return out

    def results(self, line_id: str | None = None, roll_id: str | None = None, quantity: str | None = None,
                limit: int = 100, before_id: int | None = None) -> list[dict[str, Any]]:
        q = f"SELECT {', '.join(_RESULT_COLS)} FROM lab_results WHERE 1=1"
        args: list[Any] = []
        for col, v in (("line", line_id), ("roll", roll_id), ("quantity", quantity)):
            if v is not None:
                q += f" AND {col} = ?"
                args.append(v)
        if before_id is not None:
            q += " AND id < ?"
            args.append(before_id)
        q += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            return [dict(zip(RESULT_KEYS, r)) for r in self._db.execute(q, args)]

    def result(self, rid: int) -> dict[str, Any] | None:
        with self._lock:
            r = self._db.execute(f"SELECT {', '.join(_RESULT_COLS)} FROM lab_results WHERE id = ?", (rid,)).fetchone()
        return None if r is None else dict(zip(RESULT_KEYS, r))

    def count_results(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM lab_results").fetchone()[0])

    # -- model predictions ---------------------------------------------------------------------
    def insert_predictions(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """rows: (line, version, role, ts, roll, web_pos, mean, std, ood, inputs) with dicts for mean/std/inputs;
        idempotent on (line, version, ts)."""
        if not rows:
            return 0
        enc = [(ln, v, role, ts, roll, pos, json.dumps(m), json.dumps(s), int(ood),
                None if inp is None else json.dumps(inp)) for ln, v, role, ts, roll, pos, m, s, ood, inp in rows]
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany("INSERT OR IGNORE INTO model_predictions VALUES (?,?,?,?,?,?,?,?,?,?)", enc)
                n = cur.rowcount
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return int(n)

    def active_inputs_without(self, version: str, limit: int = 200_000) -> list[tuple[str, int, Any, Any, dict[str, float]]]:
        """The active model's recorded predictions (line, ts, roll, web position, line inputs) that ``version`` has
        no prediction for, oldest first: what a new candidate is run on to catch up (a replay of the stored line
        inputs)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT a.line, a.ts, a.roll, a.web_pos, a.inputs FROM model_predictions a WHERE a.role = 'active'"
                " AND a.inputs IS NOT NULL AND NOT EXISTS (SELECT 1 FROM model_predictions b WHERE b.line = a.line"
                " AND b.version = ? AND b.ts = a.ts) ORDER BY a.ts LIMIT ?", (version, limit)).fetchall()
        return [(ln, ts, roll, pos, json.loads(inp)) for ln, ts, roll, pos, inp in rows]

    def segment_predictions(self, line_id: str, roll_id: str, start_m: float, end_m: float,
                            limit: int = 10_000) -> list[dict[str, Any]]:
        """Every model's predictions of one web segment (roll, start_m <= web position <= end_m)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT version, role, ts, web_pos, mean, std, ood, inputs FROM model_predictions"
                " WHERE line = ? AND roll = ? AND web_pos BETWEEN ? AND ? ORDER BY ts LIMIT ?",
                (line_id, roll_id, start_m, end_m, limit)).fetchall()
        return [{"version": v, "role": role, "ts_ns": ts, "web_pos_m": pos, "mean": json.loads(m), "std": json.loads(s),
                 "ood": bool(ood), "inputs": None if inp is None else json.loads(inp)}
                for v, role, ts, pos, m, s, ood, inp in rows]

    def matched(self, outputs: dict[str, str], pad_m: float, limit: int = 100_000) -> list[dict[str, Any]]:
        """Lab results of the compared quantities (``outputs``: quantity -> model output) joined with the mean
        prediction and mean +/-1 sigma of each model version over the same segment (padded by ``pad_m`` on each
        side), oldest lab result first: {id, quantity, output, value, unit, version, role, pred, std, n}."""
        if not outputs:
            return []
        marks = ",".join("?" * len(outputs))
        case = " ".join(f"WHEN '{q.replace(chr(39), '')}' THEN '$.\"{o}\"'" for q, o in outputs.items())
        sql = (f"SELECT r.id, r.line, r.roll, r.quantity, r.value, r.unit, p.version, MIN(p.role), "
               f"AVG(json_extract(p.mean, CASE r.quantity {case} END)), "
               f"AVG(json_extract(p.std, CASE r.quantity {case} END)), COUNT(*), MIN(p.ts), MAX(p.ts) "
               f"FROM lab_results r JOIN model_predictions p ON p.line = r.line AND p.roll = r.roll "
               f"AND p.web_pos BETWEEN r.start_m - ? AND r.end_m + ? "
               f"WHERE r.quantity IN ({marks}) GROUP BY r.id, p.version ORDER BY r.id LIMIT ?")
        with self._lock:
            rows = self._db.execute(sql, (pad_m, pad_m, *outputs, limit)).fetchall()
        keys = ("id", "line_id", "roll_id", "quantity", "value", "unit", "version", "role", "pred", "std", "n",
                "first_ts_ns", "last_ts_ns")
        return [dict(zip(keys, r)) | {"output": outputs[r[3]]} for r in rows if r[8] is not None and r[9] is not None]

    # -- model requests and state --------------------------------------------------------------
    def put_request(self, r: dict[str, Any]) -> None:
        vals = [r.get(k) for k in REQUEST_KEYS]
        vals[REQUEST_KEYS.index("metrics")] = json.dumps(r.get("metrics"), default=str)
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO model_requests VALUES ({','.join('?' * len(REQUEST_KEYS))})",
                             vals)

    def requests(self, state: str | None = None, kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM model_requests WHERE 1=1", list[Any]()
        if state is not None:
            q += " AND state = ?"
            args.append(state)
        if kind is not None:
            q += " AND kind = ?"
            args.append(kind)
        q += " ORDER BY created DESC, id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(q, args).fetchall()
        out = []
        for r in rows:
            d = dict(zip(REQUEST_KEYS, r))
            d["metrics"] = json.loads(d["metrics"]) if d["metrics"] else None
            out.append(d)
        return out

    def request(self, rid: str) -> dict[str, Any] | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM model_requests WHERE id = ?", (rid,)).fetchone()
        if r is None:
            return None
        d = dict(zip(REQUEST_KEYS, r))
        d["metrics"] = json.loads(d["metrics"]) if d["metrics"] else None
        return d

    def set_active(self, family: str, version: str, path: str, previous: dict[str, Any] | None) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO model_state VALUES (?,?,?,?,?)",
                             (family, version, path, json.dumps(previous), time.time_ns()))

    def active(self, family: str) -> dict[str, Any] | None:
        with self._lock:
            r = self._db.execute("SELECT active_version, active_path, previous, updated FROM model_state"
                                 " WHERE family = ?", (family,)).fetchone()
        if r is None:
            return None
        return {"version": r[0], "path": r[1], "previous": json.loads(r[2]) if r[2] else None, "updated_ts_ns": r[3]}


_RESULT_COLS = ("id", "line", "roll", "start_m", "end_m", "quantity", "parameter", "value", "unit", "method",
                "sample_id", "measured", "received", "source", "origin")
