"""The InfluxDB backend's store API: writes commit to the outbox, queries run InfluxQL.

``write()`` turns samples, dead letters and roll events into line protocol
(:mod:`twin.store.influx.lineprotocol`) and commits them to the local outbox
(:mod:`twin.store.outbox`) in one transaction; when it returns they are durable in the outbox. The
sender (:mod:`twin.store.influx.sender`) moves them on. A query (:mod:`twin.store.influx.influxql`)
first waits (at most ``read_barrier_s``) until what was written before it has left the outbox.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from core.samples import DeadLetter, RollEvent, Sample
from twin.store.base import Bucket, Store, StoredSample, WriteResult
from twin.store.config import InfluxRetention, InfluxStoreConfig, RollStorage
from twin.store.influx import influxql as ql
from twin.store.influx.lineprotocol import DEAD_LETTERS, SAMPLES, LineProtocol, TagInfo, _unstr, tag_info_from_tagmap
from twin.store.influx.sender import OutboxSender
from twin.store.outbox import Outbox


class InfluxStore(Store):
    backend = "influxdb"

    def __init__(self, config: InfluxStoreConfig, *, tagmap: Any = None, tag_info: TagInfo | None = None,
                 start_sender: bool = True) -> None:
        """``config`` is :class:`twin.store.config.InfluxStoreConfig`; ``tagmap`` (or ``tag_info``)
        supplies the step / kind / role tags (without it ``step`` is the tag id's first part)."""
        self.config = c = config
        self.writer = c.writer_id or socket.gethostname()
        if tag_info is None and tagmap is not None:
            tag_info = tag_info_from_tagmap(tagmap)
        self.lp = LineProtocol(c.precision.value, c.roll_storage is RollStorage.TAG, tag_info, self.writer)
        self.outbox = Outbox(c.outbox_path, c.outbox_capacity, c.outbox_durability, c.dedupe_window_s)
        self._write_lock = threading.Lock()
        self._audit_last_ns = 0
        self._http = ql.http_pool(c)
        self._headers = ql.auth_headers(c)
        self.sender = OutboxSender(c, self.outbox, self._http, self._headers)
        self.v2 = self.sender.v2
        if start_sender:
            self.start()

    # -- the sender's state (read by health, tests and the read barrier) --------------------------
    @property
    def server_ok(self) -> bool | None:
        return self.sender.server_ok

    @property
    def last_error(self) -> str | None:
        return self.sender.last_error

    @property
    def retries(self) -> int:
        return self.sender.retries

    @property
    def requests(self) -> int:
        return self.sender.requests

    @property
    def failures(self) -> int:
        return self.sender.failures

    def start(self) -> None:
        self.sender.start()

    def query(self, q: str, *, method: str = "GET", chunked: bool = False) -> list[dict[str, Any]]:
        """Run InfluxQL on /query; return the statements' results (an error raises InfluxError)."""
        return ql.run_query(self._http, self._headers, self.config, q, method=method, chunked=chunked)

    # -- writes -------------------------------------------------------------------------------
    def write(self, samples: Sequence[Sample], dead_letters: Sequence[DeadLetter] = (),
              rolls: Sequence[RollEvent] = ()) -> WriteResult:
        if not samples and not dead_letters and not rolls:
            return WriteResult(0, 0, 0)
        lp = self.lp
        with self._write_lock, self.outbox.transaction() as txn:
            new = txn.admit([(s.line_id, s.tag_id, s.source_ts_ns) for s in samples]) if samples else []
            txn.append([lp.sample(samples[i]) for i in new])
            if dead_letters:
                txn.append([lp.dead_letter(d) for d in dead_letters])
            if rolls:
                txn.append([lp.roll(r) for r in rolls
                            if txn.admit_roll(r.line_id, r.step, r.roll_id, r.source_ts_ns)])
        self.sender.written()
        return WriteResult(len(new), len(samples) - len(new), len(dead_letters))

    def append_audit(self, kind: str, ref: str, body: dict[str, Any], *, line_id: str | None = None,
                     actor: str | None = None, ts_ns: int | None = None) -> None:
        """An audit record is a point of ``twin_audit`` (tags kind, ref, line; fields actor, body as JSON),
        committed to the outbox like samples. Times are made unique per store so no record overwrites
        another."""
        ts = ts_ns if ts_ns is not None else time.time_ns()
        with self._write_lock:
            ts = max(ts, self._audit_last_ns + self.lp.div)
            self._audit_last_ns = ts
            point = self.lp.audit(kind, ref, line_id, json.dumps(body, default=str, sort_keys=True), actor, ts)
            with self.outbox.transaction() as txn:
                txn.append([point])
        self.sender.wake()

    def audit(self, ref: str | None = None, line_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        self._barrier()
        return [{"ts_ns": int(r["time"]), "kind": r.get("kind") or "", "ref": r.get("ref") or "",
                 "line_id": r.get("line") or None, "actor": _unstr(r.get("actor")) or None,
                 "body": json.loads(_unstr(r.get("body")))}
                for _, r in ql.rows(self.query(ql.audit(ref, line_id, limit)))]

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything written so far has left the outbox (delivered, rejected or dropped).
        Returns False when ``timeout`` passed first (e.g. the server is down)."""
        return self.sender.flush(timeout)

    def _barrier(self) -> None:
        if self.config.read_barrier_s > 0 and self.server_ok is not False and self.outbox.pending:
            self.flush(self.config.read_barrier_s)

    # -- queries ------------------------------------------------------------------------------
    def latest(self, line_id: str | None = None, tags: Sequence[str] | None = None) -> list[StoredSample]:
        self._barrier()
        out = [ql.stored_sample(t.get("line", ""), t.get("tag", ""), r)
               for t, r in ql.rows(self.query(ql.latest(line_id, tags)))]
        return sorted(out, key=lambda s: (s.line_id, s.tag_id))

    def series(self, tag_id: str, start_ns: int, end_ns: int, points: int,
               line_id: str | None = None) -> list[Bucket]:
        if end_ns <= start_ns or points < 1:
            return []
        self._barrier()
        width = -(-(end_ns - start_ns) // points)
        out = []
        for _, r in ql.rows(self.query(ql.series(tag_id, start_ns, end_ns, width, line_id))):
            s = int(r["time"])
            if not r.get("count"):
                continue
            e = min(s + width, end_ns)
            # InfluxQL gives selectors in a GROUP BY time() the bucket's time, not the points':
            # first/last are the bucket's bounds here (docs/influxdb.md)
            out.append(Bucket(s, e, max(s, start_ns), e - 1, float(r["min"]), float(r["mean"]), float(r["max"]),
                              int(r["count"])))
        return out

    def _select_samples(self, cond: str, limit: int) -> list[StoredSample]:
        rows = ql.rows(self.query(ql.samples(cond, limit), chunked=True))
        return [ql.stored_sample(r.get("line") or "", r.get("tag") or "", r) for _, r in rows]

    def raw(self, tag_id: str, start_ns: int, end_ns: int, line_id: str | None = None,
            limit: int = 100_000) -> list[StoredSample]:
        self._barrier()
        return self._select_samples(ql.samples_where(tag_id=tag_id, line_id=line_id, start_ns=start_ns,
                                                     end_ns=end_ns), limit)

    def samples_of_roll(self, roll_id: str, line_id: str | None = None,
                        limit: int = 1_000_000) -> list[StoredSample]:
        self._barrier()
        rows = self._select_samples(ql.samples_where(roll_id=roll_id, line_id=line_id), limit)
        return sorted(rows, key=lambda s: (s.source_ts_ns, s.tag_id))

    def samples_page(self, tags: Sequence[str], start_ns: int, end_ns: int, line_id: str | None = None, *,
                     roll_id: str | None = None, after: tuple[str, str, int] | None = None,
                     limit: int = 10_000) -> list[StoredSample]:
        if not tags:
            return []
        self._barrier()
        wanted = set(tags)
        keys = sorted((s.line_id, s.tag_id) for s in self.latest(line_id, list(wanted)) if s.tag_id in wanted)
        if after is not None:
            keys = [k for k in keys if k >= after[:2]]
        out: list[StoredSample] = []
        for line, tag in keys:
            if len(out) >= limit:
                break
            lo = max(start_ns, after[2] + 1) if after is not None and (line, tag) == after[:2] else start_ns
            cond = ql.samples_where(tag_id=tag, line_id=line, start_ns=lo, end_ns=end_ns, roll_id=roll_id)
            out.extend(self._select_samples(cond, limit - len(out)))
        return out

    def dead_letters(self, limit: int = 100, before_id: int | None = None) -> list[dict[str, Any]]:
        self._barrier()
        out = []
        for _, r in ql.rows(self.query(ql.dead_letters(limit, before_id))):
            out.append({"id": int(r["time"]), "received_ts_ns": int(r.get("received_ns") or r["time"]),
                        "source": r.get("source") or "", "connector": r.get("connector") or "",
                        "address": _unstr(r.get("address")), "line_id": r.get("line") or None,
                        "reason_code": r.get("reason_code") or "", "reason": _unstr(r.get("reason")),
                        "payload": _unstr(r.get("payload"))})
        return out

    def _count(self, measurement: str, field: str, cond: str = "") -> int:
        rows = ql.rows(self.query(ql.count(measurement, field, cond)))
        return int(rows[0][1]["count"]) if rows else 0

    def count(self, tag_id: str | None = None, line_id: str | None = None) -> int:
        self._barrier()
        return self._count(SAMPLES, "value", ql.samples_where(tag_id=tag_id, line_id=line_id))

    def dead_letter_count(self) -> int:
        self._barrier()
        return self._count(DEAD_LETTERS, "reason")

    def rolls(self, line_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        self._barrier()
        out = [{"line_id": t.get("line", ""), "step": t.get("step", ""), "roll_id": t.get("roll", ""),
                "source_ts_ns": int(r["time"]), "tag_id": _unstr(r.get("tag_id")) or ""}
               for t, r in ql.rows(self.query(ql.rolls(line_id)))]
        out.sort(key=lambda d: d["source_ts_ns"], reverse=True)
        return out[:limit]

    def apply_retention(self, samples_before_ns: int, dead_letters_before_ns: int) -> int:
        if self.config.retention is not InfluxRetention.DELETE:
            return 0  # the bucket's (retention policy's) own retention applies
        self.flush(self.config.read_barrier_s)  # what is still in the outbox would come back after the delete
        n = self._count(SAMPLES, "value", ql.where(f"time < {int(samples_before_ns)}"))
        n += self._count(DEAD_LETTERS, "reason", ql.where(f"time < {int(dead_letters_before_ns)}"))
        self.query(ql.delete_before(SAMPLES, samples_before_ns), method="POST")
        self.query(ql.delete_before(DEAD_LETTERS, dead_letters_before_ns), method="POST")
        return n

    # -- health and shutdown --------------------------------------------------------------------
    def outbox_stats(self) -> dict[str, Any]:
        return self.outbox.stats(self.sender.inflight).as_dict() | {"retries": self.retries, "requests": self.requests}

    def health(self) -> dict[str, Any]:
        return {"backend": self.backend, "ok": self.server_ok is not False, "url": self.config.url,
                "write_api": self.config.write_api.value, "query_api": self.config.query_api.value,
                "last_error": self.last_error, "outbox": self.outbox_stats()}

    def close(self, drain_timeout: float = 5.0) -> None:
        """Send what the server takes within ``drain_timeout``; the rest stays in the outbox file and
        goes out on the next start."""
        if self.sender.closed:
            return
        self.sender.close(drain_timeout)
        self.outbox.close()
        self._http.clear()
