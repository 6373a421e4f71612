"""InfluxDB store backend: a durable local outbox in front of InfluxDB (docs/influxdb.md).

Write path. ``write()`` turns samples, dead letters and roll events into line protocol and commits
them to the local outbox (:mod:`twin.store.outbox`, one SQLite file) in one transaction; when it
returns they are **durable in the outbox**, which is what the store contract's "durable when it
returns" means for this backend (the pipeline then acknowledges the source). A sender thread moves
the outbox to InfluxDB in batches, with one of two write APIs:

- ``write_api = "v2"``: influxdb-client's batching ``WriteApi`` (``batch_size``, ``flush_interval``,
  retries with exponential backoff through the client's ``WritesRetry``) posting to ``/api/v2/write``:
  InfluxDB 2.x, 3.x, 1.8+ (compatibility endpoint) and VictoriaMetrics. Its success / error callbacks
  tell which points arrived; only those leave the outbox.
- ``write_api = "v1"``: ``POST /write?db=&rp=&precision=`` with the same line protocol and the client's
  ``WritesRetry``: every InfluxDB 1.x (1.6 / 1.7 have no ``/api/v2/write``) and 3.x's v1 compatibility.

When a request is given up (the server is down longer than the retries last) the points stay in
the outbox and are sent again, oldest first, after a jittered backoff; an outage loses nothing
within the outbox capacity, and beyond it the oldest are dropped and counted exactly.

Query path: InfluxQL on ``/query`` (1.x; 2.x through a DBRP mapping and v1 auth; 3.x through its v1
compatibility API). A query first waits (at most ``read_barrier_s``) until what was written before
it has left the outbox, so a caller reads its own writes while the server is up.

Schema (one measurement per kind of record; tags sorted by key as InfluxDB prefers):

- ``twin_sample`` tags ``kind, line, role, [roll], step, tag, unit``; fields ``value`` (float),
  ``quality`` (int 0/1/2), ``received_ns`` (int), ``web_pos_m`` (float, when known),
  [``roll`` (string) with ``roll_storage = "field"``]; time = source timestamp.
- ``twin_dead_letter`` tags ``connector, [line], [n], reason_code, source, writer``; fields
  ``address``, ``reason``, ``payload`` (strings, JSON-escaped), ``received_ns``; time = receive time
  (``n`` numbers dead letters received in the same nanosecond by one writer).
- ``twin_roll`` tags ``line, roll, step``; field ``tag_id``; time = first seen (the earliest point wins).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import urllib3

from core.retry import Backoff
from core.samples import TS_MAX_NS, TS_MIN_NS, DeadLetter, RollEvent, Sample
from twin.store.base import Bucket, Store, StoredSample, WriteResult
from twin.store.outbox import Outbox

log = logging.getLogger("twin.store.influx")

SAMPLES = "twin_sample"
DEAD_LETTERS = "twin_dead_letter"
ROLLS = "twin_roll"
AUDIT = "twin_audit"
_PRECISION_DIV = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_SAMPLE_COLUMNS = '"value", "quality", "received_ns", "web_pos_m", "roll", "unit", "line", "tag"'


class InfluxError(RuntimeError):
    """InfluxDB refused or could not answer a request (status and message in the text)."""


# -- line protocol ---------------------------------------------------------------------------
_TAG_ESC = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\r": r"\r"})


def _tag(value: str) -> str:
    v = value.translate(_TAG_ESC)
    return v[:-1] + "_" if v.endswith("\\") and not v.endswith("\\\\") else v


def _str_field(value: str) -> str:
    """A string field, reversible: JSON-escaped (no raw newlines), then line-protocol-escaped."""
    inner = json.dumps(value, ensure_ascii=False)[1:-1]
    return '"' + inner.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unstr(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads('"' + value + '"')
    except ValueError:
        return value


def _brief(err: BaseException) -> str:
    """One line about a failed request (the client's exceptions carry headers and bodies)."""
    status, reason, body = getattr(err, "status", None), getattr(err, "reason", None), getattr(err, "body", None)
    if status:
        text = f"{reason or ''} {body.decode(errors='replace') if isinstance(body, bytes) else body or ''}"
        return " ".join(text.split())[:300]
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


def _quiet_client_logs() -> None:
    """The store reports failed and retried requests itself (counters, /healthz, one log line per
    event); the client libraries would log every retry of every batch during an outage."""
    for name in ("influxdb_client.client.write_api", "influxdb_client.client.write.retry"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def _q(value: str) -> str:
    """An InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


TagInfo = Callable[[str], "tuple[str | None, str | None, str | None]"]


def tag_info_from_tagmap(tagmap: Any) -> TagInfo:
    """(step, kind, role) of a tag id from a :class:`ontology.tagmap.TagMap` (looked up when first
    written, so tags added later, such as predicted ones, are found too)."""

    def info(tag_id: str) -> tuple[str | None, str | None, str | None]:
        t = tagmap.tags.get(tag_id)
        if t is None:
            return None, None, None
        return t.step, getattr(t.kind, "value", str(t.kind)), getattr(t.role, "value", str(t.role))

    return info


class LineProtocol:
    """Renders the twin's records as line protocol (bytes, one point each, no newline)."""

    def __init__(self, precision: str = "ns", roll_as_tag: bool = True, tag_info: TagInfo | None = None,
                 writer: str = "") -> None:
        self.div = _PRECISION_DIV[precision]
        self.roll_as_tag = roll_as_tag
        self.tag_info = tag_info
        self.writer = writer
        self._prefix: dict[tuple[str, str, str, str | None], str] = {}
        self._last_dl_ns = -1
        self._dl_n = 0

    def _series(self, line: str, tag: str, unit: str, roll: str | None) -> str:
        key = (line, tag, unit, roll if self.roll_as_tag else None)
        p = self._prefix.get(key)
        if p is None:
            step, kind, role = self.tag_info(tag) if self.tag_info else (None, None, None)
            if step is None:
                step = tag.split(".", 1)[0] if "." in tag else None
            tags = {"kind": kind, "line": line, "role": role, "step": step, "tag": tag, "unit": unit,
                    "roll": roll if self.roll_as_tag else None}
            p = SAMPLES + "".join(f",{k}={_tag(v)}" for k, v in sorted(tags.items()) if v)
            if len(self._prefix) > 100_000:
                self._prefix.clear()
            self._prefix[key] = p
        return p

    def sample(self, s: Sample) -> bytes:
        """Raises ValueError for a point InfluxDB would refuse (HTTP 400 for the whole request): a value
        or web position that is not finite, a timestamp outside int64 ns. At ``write()`` time, inside
        the outbox transaction, so the call stores nothing and the pipeline can find the row."""
        value = float(s.value)
        ts = s.source_ts_ns
        if value - value != 0.0 or not TS_MIN_NS <= ts <= TS_MAX_NS:
            raise ValueError(f"sample {s.tag_id!r}: value {value!r} at {ts} ns cannot be written to InfluxDB "
                             "(not finite, or a time outside int64 nanoseconds)")
        fields = f"value={value!r},quality={int(s.quality)}i,received_ns={s.received_ts_ns}i"
        if s.web_pos_m is not None:
            web = float(s.web_pos_m)
            if web - web != 0.0:
                raise ValueError(f"sample {s.tag_id!r}: web position {web!r} is not finite")
            fields += f",web_pos_m={web!r}"
        if s.roll_id and not self.roll_as_tag:
            fields += ",roll=" + _str_field(s.roll_id)
        return f"{self._series(s.line_id, s.tag_id, s.unit, s.roll_id)} {fields} {s.source_ts_ns // self.div}".encode()

    def dead_letter(self, d: DeadLetter) -> bytes:
        if d.received_ts_ns == self._last_dl_ns:
            self._dl_n += 1
        else:
            self._last_dl_ns, self._dl_n = d.received_ts_ns, 0
        tags = {"connector": d.connector, "line": d.line_id, "n": str(self._dl_n) if self._dl_n else None,
                "reason_code": d.reason_code, "source": getattr(d.source, "value", str(d.source)),
                "writer": self.writer}
        head = DEAD_LETTERS + "".join(f",{k}={_tag(v)}" for k, v in sorted(tags.items()) if v)
        fields = (f"address={_str_field(d.address)},reason={_str_field(d.reason)},"
                  f"payload={_str_field(d.payload)},received_ns={d.received_ts_ns}i")
        return f"{head} {fields} {d.received_ts_ns // self.div}".encode()

    def roll(self, r: RollEvent) -> bytes:
        head = f"{ROLLS},line={_tag(r.line_id)},roll={_tag(r.roll_id)},step={_tag(r.step)}"
        return f"{head} tag_id={_str_field(r.tag_id)} {r.source_ts_ns // self.div}".encode()


# -- the store -------------------------------------------------------------------------------
class InfluxStore(Store):
    backend = "influxdb"

    def __init__(self, config: Any, *, tagmap: Any = None, tag_info: TagInfo | None = None,
                 start_sender: bool = True) -> None:
        """``config`` is :class:`twin.config.InfluxStoreConfig`; ``tagmap`` (or ``tag_info``) supplies
        the step / kind / role tags (without it ``step`` is the tag id's first part)."""
        from twin.store.config import InfluxWriteApi, RollStorage

        self.config = c = config
        _quiet_client_logs()
        self.v2 = c.write_api is InfluxWriteApi.V2
        self.writer = c.writer_id or socket.gethostname()
        if tag_info is None and tagmap is not None:
            tag_info = tag_info_from_tagmap(tagmap)
        self.lp = LineProtocol(c.precision.value, c.roll_storage is RollStorage.TAG, tag_info, self.writer)
        self.outbox = Outbox(c.outbox_path, c.outbox_capacity, c.outbox_durability, c.dedupe_window_s)
        self._write_lock = threading.Lock()
        self._http = self._pool()
        self._headers = self._auth_headers()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._urgent = False
        self._rewind = False
        self._inflight: dict[bytes, list[int]] = defaultdict(list)
        self._inflight_n = 0
        self._inflight_lock = threading.Lock()
        self.server_ok: bool | None = None  # None until the first delivery attempt answers
        self.last_error: str | None = None
        self.retries = 0
        self.requests = 0
        self.failures = 0  # consecutive failed deliveries
        self._last_failure_log = 0.0
        self._client: Any = None
        self._write_api: Any = None
        self._scheduler: Any = None
        self._closed = False
        self._thread: threading.Thread | None = None
        if start_sender:
            self.start()

    # -- HTTP ---------------------------------------------------------------------------------
    def _pool(self) -> urllib3.PoolManager:
        c = self.config
        kw: dict[str, Any] = {"timeout": urllib3.Timeout(total=c.timeout_ms / 1000), "maxsize": 4, "retries": False}
        if c.url.startswith("https://"):
            kw["cert_reqs"] = "CERT_REQUIRED"
            if c.ca_file is not None:
                kw["ca_certs"] = str(c.ca_file)
        return urllib3.PoolManager(**kw)

    def _auth_headers(self) -> dict[str, str]:
        c = self.config
        if c.token:
            return {"Authorization": f"Token {c.token}"}
        if c.username is not None:
            return urllib3.make_headers(basic_auth=f"{c.username}:{c.password or ''}")
        return {}

    def _retry(self) -> Any:
        from influxdb_client.client.write.retry import WritesRetry

        r = self.config.retry
        return WritesRetry(total=r.max_retries, retry_interval=r.interval_ms / 1000,
                           max_retry_delay=r.max_delay_ms / 1000, max_retry_time=r.max_time_ms / 1000,
                           exponential_base=r.exponential_base, retry_callback=self._on_retry,
                           allowed_methods=["POST"])

    def query(self, q: str, *, method: str = "GET", chunked: bool = False) -> list[dict[str, Any]]:
        """Run InfluxQL on /query; return the statements' results (an error raises InfluxError)."""
        c = self.config
        params = {"db": c.database, "q": q, "epoch": "ns"}
        if c.retention_policy:
            params["rp"] = c.retention_policy
        if chunked:
            params.update(chunked="true", chunk_size="10000")
        try:
            r = self._http.request(method, f"{c.url.rstrip('/')}/query?{urlencode(params)}", headers=self._headers,
                                   preload_content=True)
        except urllib3.exceptions.HTTPError as err:
            raise InfluxError(f"InfluxDB query failed: {err}") from err
        if r.status >= 300:
            raise InfluxError(f"InfluxDB query failed with HTTP {r.status}: {r.data[:500]!r}")
        results: dict[int, dict[str, Any]] = {}
        for chunk in r.data.splitlines() if chunked else [r.data]:
            if not chunk.strip():
                continue
            body = json.loads(chunk)
            if "error" in body:
                raise InfluxError(f"InfluxDB query error: {body['error']}")
            for res in body.get("results", []):
                if "error" in res:
                    raise InfluxError(f"InfluxDB query error: {res['error']}")
                into = results.setdefault(res.get("statement_id", 0), {"series": []})
                into["series"].extend(res.get("series", []))
        return [results[k] for k in sorted(results)]

    # -- sender -------------------------------------------------------------------------------
    def start(self) -> None:
        if self.v2:
            self._open_v2()
        self._thread = threading.Thread(target=self._pump, name="influx-sender", daemon=True)
        self._thread.start()

    def _open_v2(self) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import WriteOptions, WriteType
        from reactivex.scheduler import ThreadPoolScheduler

        c = self.config
        kw: dict[str, Any] = {"url": c.url, "org": c.org or "-", "timeout": c.timeout_ms}
        if c.token:
            kw["token"] = c.token
        elif c.username is not None:
            kw.update(username=c.username, password=c.password or "")
        if c.ca_file is not None:
            kw["ssl_ca_cert"] = str(c.ca_file)
        self._client = InfluxDBClient(**kw)
        _quiet_client_logs()  # the client sets its loggers' levels when it is created
        self._scheduler = ThreadPoolScheduler(1)
        r = c.retry
        opts = WriteOptions(write_type=WriteType.batching, batch_size=c.batch_size, flush_interval=c.flush_interval_ms,
                            retry_interval=r.interval_ms, max_retries=r.max_retries, max_retry_delay=r.max_delay_ms,
                            max_retry_time=r.max_time_ms, exponential_base=r.exponential_base, max_close_wait=5_000,
                            write_scheduler=self._scheduler)
        self._write_api = self._client.write_api(write_options=opts, success_callback=self._on_success,
                                                 error_callback=self._on_error, retry_callback=self._on_retry_v2)

    def _on_retry(self, err: Exception) -> None:
        self.retries += 1
        self.server_ok = False
        self.last_error = _brief(err)

    def _on_retry_v2(self, conf: Any, data: Any, err: Exception) -> None:
        self._on_retry(err)

    def _release(self, data: bytes | str) -> list[int]:
        raw = data.encode() if isinstance(data, str) else data
        seqs = []
        with self._inflight_lock:
            for line in raw.split(b"\n"):
                lst = self._inflight.get(line)
                if lst:
                    seqs.append(lst.pop(0))
                    if not lst:
                        del self._inflight[line]
            self._inflight_n -= len(seqs)
        return seqs

    def _on_success(self, conf: Any, data: bytes | str) -> None:
        seqs = self._release(data)
        if not self._closed:
            self.outbox.ack(seqs)
        self._delivered()
        self._wake.set()

    def _on_error(self, conf: Any, data: bytes | str, err: Exception) -> None:
        seqs = self._release(data)
        self._failed(seqs, getattr(err, "status", None) or getattr(getattr(err, "response", None), "status", None),
                     _brief(err))

    def _failed(self, seqs: list[int], status: int | None, message: str) -> None:
        if status in (400, 413, 422):  # the server will never take these points: do not retry for ever
            n = 0 if self._closed else self.outbox.reject(seqs)
            self.server_ok = True
            self.last_error = f"HTTP {status}: {n} points rejected: {message[:300]}"
            log.error("InfluxDB refused a batch for good (%s); %d points rejected and counted", message[:300], n)
        else:
            self.server_ok = False
            self.last_error = f"HTTP {status}: {message[:300]}" if status else message[:300]
            self.failures += 1
            now = time.monotonic()
            if self.failures == 1 or now - self._last_failure_log >= 60:  # an event, not one line per retry
                self._last_failure_log = now
                log.warning("InfluxDB write failed (%s); %d points wait in the outbox and will be sent again "
                            "(%d failed attempts so far)", self.last_error, self.outbox.pending, self.failures)
            self._rewind = True
        self._wake.set()

    def _delivered(self) -> None:
        if self.failures:
            log.info("InfluxDB writes resumed after %d failed attempts", self.failures)
            self.failures = 0
        self.server_ok = True
        self.last_error = None

    def _send_v1(self, rows: list[tuple[int, bytes]]) -> None:
        c = self.config
        params = {"db": c.database, "precision": c.precision.value}
        if c.retention_policy:
            params["rp"] = c.retention_policy
        body = b"\n".join(lp for _, lp in rows)
        seqs = [s for s, _ in rows]
        self.requests += 1
        try:
            r = self._http.request("POST", f"{c.url.rstrip('/')}/write?{urlencode(params)}", body=body,
                                   headers={**self._headers, "Content-Type": "text/plain; charset=utf-8"},
                                   retries=self._retry())
        except urllib3.exceptions.HTTPError as err:  # retries exhausted, connection refused, timeout
            with self._inflight_lock:
                self._inflight_n -= len(seqs)
            self._failed(seqs, None, _brief(err))
            return
        with self._inflight_lock:
            self._inflight_n -= len(seqs)
        if r.status in (200, 204):
            if not self._closed:
                self.outbox.ack(seqs)
            self._delivered()
        else:
            self._failed(seqs, r.status, r.data[:300].decode(errors="replace"))

    def _send_v2(self, rows: list[tuple[int, bytes]]) -> None:
        with self._inflight_lock:
            for seq, lp in rows:
                self._inflight[lp].append(seq)
            self._inflight_n += len(rows)
        self.requests += 1
        lines = [lp for _, lp in rows]
        try:
            self._write_api.write(bucket=self.config.bucket, org=self.config.org or "-", record=lines,
                                  write_precision=self.config.precision.value)
        except Exception:
            self._release(b"\n".join(lines))  # never handed over: not in flight
            raise

    def _pump(self) -> None:
        c = self.config
        backoff = Backoff(c.retry.interval_ms / 1000, c.retry.max_delay_ms / 1000)
        max_inflight = c.batch_size * c.max_in_flight_batches
        next_prune = time.monotonic() + 30
        linger = c.flush_interval_ms / 1000
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_prune:
                    self.outbox.prune_keys()
                    next_prune = time.monotonic() + 30
                if self._rewind:
                    if self._inflight_n > 0:
                        self._wake.wait(0.05)
                        self._wake.clear()
                        continue
                    delay = backoff.next_delay()
                    if self._stop.wait(delay):
                        break
                    self._rewind = False
                    self.outbox.rewind()
                room = min(c.batch_size, max_inflight - self._inflight_n)
                if room <= 0:
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                if not self.v2 and not self._urgent and self.outbox.pending - self._inflight_n < c.batch_size:
                    # v1: wait up to the flush interval for a full batch (v2: the WriteApi's window does it)
                    self._wake.wait(linger)
                    self._wake.clear()
                rows = self.outbox.take(room)
                if not rows:
                    self._urgent = False
                    self._wake.wait(linger)
                    self._wake.clear()
                    continue
                if self.v2:
                    self._send_v2(rows)
                else:
                    with self._inflight_lock:
                        self._inflight_n += len(rows)
                    self._send_v1(rows)
                if self.server_ok:
                    backoff.reset()
            except Exception:  # noqa: BLE001 - the sender must outlive any single failure
                if self._stop.is_set():
                    break
                log.exception("InfluxDB sender failed; retrying")
                if not self.v2:
                    with self._inflight_lock:
                        self._inflight_n = 0  # v1 sends synchronously: nothing is in flight after a failure
                self._rewind = True
                self._stop.wait(1.0)

    # -- writes -------------------------------------------------------------------------------
    def write(self, samples: Sequence[Sample], dead_letters: Sequence[DeadLetter] = (),
              rolls: Sequence[RollEvent] = ()) -> WriteResult:
        if not samples and not dead_letters and not rolls:
            return WriteResult(0, 0, 0)
        lp = self.lp
        with self._write_lock:
            with self.outbox.transaction() as txn:
                new = txn.admit([(s.line_id, s.tag_id, s.source_ts_ns) for s in samples]) if samples else []
                txn.append([lp.sample(samples[i]) for i in new])
                if dead_letters:
                    txn.append([lp.dead_letter(d) for d in dead_letters])
                if rolls:
                    txn.append([lp.roll(r) for r in rolls
                                if txn.admit_roll(r.line_id, r.step, r.roll_id, r.source_ts_ns)])
        if self.v2 or self.outbox.pending - self._inflight_n >= self.config.batch_size:
            self._wake.set()
        return WriteResult(len(new), len(samples) - len(new), len(dead_letters))

    def append_audit(self, kind: str, ref: str, body: dict[str, Any], *, line_id: str | None = None,
                     actor: str | None = None, ts_ns: int | None = None) -> None:
        """An audit record is a point of ``twin_audit`` (tags kind, ref, line; fields actor, body as JSON),
        committed to the outbox like samples. Times are made unique per store so no record overwrites
        another."""
        import json

        ts = ts_ns if ts_ns is not None else time.time_ns()
        with self._write_lock:
            last = getattr(self, "_audit_last_ns", 0)
            ts = max(ts, last + self.lp.div)
            self._audit_last_ns = ts
            tags = {"kind": kind, "ref": ref, "line": line_id}
            head = AUDIT + "".join(f",{k}={_tag(v)}" for k, v in sorted(tags.items()) if v)
            fields = f"body={_str_field(json.dumps(body, default=str, sort_keys=True))}"
            if actor:
                fields += f",actor={_str_field(actor)}"
            with self.outbox.transaction() as txn:
                txn.append([f"{head} {fields} {ts // self.lp.div}".encode()])
        self._wake.set()

    def audit(self, ref: str | None = None, line_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        import json

        self._barrier()
        conds = [f'"ref" = {_q(ref)}' if ref is not None else None,
                 f'"line" = {_q(line_id)}' if line_id is not None else None]
        q = (f'SELECT "body", "actor", "kind", "ref", "line" FROM "{AUDIT}"' + self._where(*conds)
             + f" ORDER BY time DESC LIMIT {int(limit)}")
        return [{"ts_ns": int(r["time"]), "kind": r.get("kind") or "", "ref": r.get("ref") or "",
                 "line_id": r.get("line") or None, "actor": _unstr(r.get("actor")) or None,
                 "body": json.loads(_unstr(r.get("body")))} for _, r in self._rows(self.query(q))]

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything written so far has left the outbox (delivered, rejected or dropped).
        Returns False when ``timeout`` passed first (e.g. the server is down)."""
        target = self.outbox.last_seq
        deadline = None if timeout is None else time.monotonic() + timeout
        self._urgent = True
        self._wake.set()
        box = self.outbox
        with box.changed:
            while True:
                oldest = box.oldest_seq()
                if oldest is None or oldest > target or self._closed:
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                box.changed.wait(0.1 if left is None else min(0.1, left))
                self._urgent = True
                self._wake.set()

    def _barrier(self) -> None:
        if self.config.read_barrier_s > 0 and self.server_ok is not False and self.outbox.pending:
            self.flush(self.config.read_barrier_s)

    # -- queries ------------------------------------------------------------------------------
    @staticmethod
    def _rows(results: list[dict[str, Any]]) -> list[tuple[dict[str, str], dict[str, Any]]]:
        out = []
        for res in results:
            for s in res.get("series", []) or []:
                cols = s["columns"]
                tags = s.get("tags") or {}
                for v in s["values"]:
                    out.append((tags, dict(zip(cols, v))))
        return out

    @staticmethod
    def _sample(line: str, tag: str, r: dict[str, Any]) -> StoredSample:
        wp = r.get("web_pos_m")
        return StoredSample(line, tag, float(r["value"]), r.get("unit") or "", int(r["time"]),
                            int(r.get("received_ns") or 0), int(r.get("quality") or 0),
                            _unstr(r.get("roll")) or None, None if wp is None else float(wp))

    def _where(self, *conds: str | None) -> str:
        conds_ = [c for c in conds if c]
        return (" WHERE " + " AND ".join(conds_)) if conds_ else ""

    def _t(self, ns: int) -> int:
        return ns  # InfluxQL time literals are integers in ns whatever the write precision

    def latest(self, line_id: str | None = None, tags: Sequence[str] | None = None) -> list[StoredSample]:
        self._barrier()
        cond_tags = "(" + " OR ".join(f'"tag" = {_q(t)}' for t in tags) + ")" if tags else None
        q = (f'SELECT last("value") AS "value", "quality", "received_ns", "web_pos_m", "roll", "unit" FROM "{SAMPLES}"'
             + self._where(f'"line" = {_q(line_id)}' if line_id is not None else None, cond_tags)
             + ' GROUP BY "line", "tag"')
        out = [self._sample(t.get("line", ""), t.get("tag", ""), r) for t, r in self._rows(self.query(q))]
        return sorted(out, key=lambda s: (s.line_id, s.tag_id))

    def series(self, tag_id: str, start_ns: int, end_ns: int, points: int,
               line_id: str | None = None) -> list[Bucket]:
        if end_ns <= start_ns or points < 1:
            return []
        self._barrier()
        width = -(-(end_ns - start_ns) // points)
        offset = start_ns % width
        q = (f'SELECT min("value"), mean("value"), max("value"), count("value") FROM "{SAMPLES}"'
             + self._where(f'"tag" = {_q(tag_id)}', f'"line" = {_q(line_id)}' if line_id is not None else None,
                           f"time >= {start_ns}", f"time < {end_ns}")
             + f" GROUP BY time({width}ns, {offset}ns) fill(none)")
        out = []
        for _, r in self._rows(self.query(q)):
            s = int(r["time"])
            if not r.get("count"):
                continue
            e = min(s + width, end_ns)
            # InfluxQL gives selectors in a GROUP BY time() the bucket's time, not the points':
            # first/last are the bucket's bounds here (docs/influxdb.md)
            out.append(Bucket(s, e, max(s, start_ns), e - 1, float(r["min"]), float(r["mean"]), float(r["max"]),
                              int(r["count"])))
        return out

    def _select_samples(self, where: str, limit: int) -> list[StoredSample]:
        q = f'SELECT {_SAMPLE_COLUMNS} FROM "{SAMPLES}"{where} ORDER BY time ASC LIMIT {int(limit)}'
        rows = self._rows(self.query(q, chunked=True))
        return [self._sample(r.get("line") or "", r.get("tag") or "", r) for _, r in rows]

    def raw(self, tag_id: str, start_ns: int, end_ns: int, line_id: str | None = None,
            limit: int = 100_000) -> list[StoredSample]:
        self._barrier()
        return self._select_samples(self._where(f'"tag" = {_q(tag_id)}',
                                                f'"line" = {_q(line_id)}' if line_id is not None else None,
                                                f"time >= {start_ns}", f"time < {end_ns}"), limit)

    def samples_of_roll(self, roll_id: str, line_id: str | None = None,
                        limit: int = 1_000_000) -> list[StoredSample]:
        self._barrier()
        rows = self._select_samples(self._where(f'"roll" = {_q(roll_id)}',
                                                f'"line" = {_q(line_id)}' if line_id is not None else None), limit)
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
            where = self._where(f'"tag" = {_q(tag)}', f'"line" = {_q(line)}', f"time >= {lo}", f"time < {end_ns}",
                                f'"roll" = {_q(roll_id)}' if roll_id is not None else None)
            out.extend(self._select_samples(where, limit - len(out)))
        return out

    def dead_letters(self, limit: int = 100, before_id: int | None = None) -> list[dict[str, Any]]:
        self._barrier()
        q = (f'SELECT "address", "reason", "payload", "received_ns", "reason_code", "source", "connector", "line" '
             f'FROM "{DEAD_LETTERS}"' + self._where(f"time < {int(before_id)}" if before_id is not None else None)
             + f" ORDER BY time DESC LIMIT {int(limit)}")
        out = []
        for _, r in self._rows(self.query(q)):
            out.append({"id": int(r["time"]), "received_ts_ns": int(r.get("received_ns") or r["time"]),
                        "source": r.get("source") or "", "connector": r.get("connector") or "",
                        "address": _unstr(r.get("address")), "line_id": r.get("line") or None,
                        "reason_code": r.get("reason_code") or "", "reason": _unstr(r.get("reason")),
                        "payload": _unstr(r.get("payload"))})
        return out

    def _count(self, measurement: str, field: str, where: str = "") -> int:
        rows = self._rows(self.query(f'SELECT count("{field}") FROM "{measurement}"{where}'))
        return int(rows[0][1]["count"]) if rows else 0

    def count(self, tag_id: str | None = None, line_id: str | None = None) -> int:
        self._barrier()
        return self._count(SAMPLES, "value", self._where(f'"tag" = {_q(tag_id)}' if tag_id is not None else None,
                                                          f'"line" = {_q(line_id)}' if line_id is not None else None))

    def dead_letter_count(self) -> int:
        self._barrier()
        return self._count(DEAD_LETTERS, "reason")

    def rolls(self, line_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        self._barrier()
        q = (f'SELECT first("tag_id") AS "tag_id" FROM "{ROLLS}"'
             + self._where(f'"line" = {_q(line_id)}' if line_id is not None else None)
             + ' GROUP BY "line", "step", "roll"')
        out = [{"line_id": t.get("line", ""), "step": t.get("step", ""), "roll_id": t.get("roll", ""),
                "source_ts_ns": int(r["time"]), "tag_id": _unstr(r.get("tag_id")) or ""}
               for t, r in self._rows(self.query(q))]
        out.sort(key=lambda d: d["source_ts_ns"], reverse=True)
        return out[:limit]

    def apply_retention(self, samples_before_ns: int, dead_letters_before_ns: int) -> int:
        from twin.store.config import InfluxRetention

        if self.config.retention is not InfluxRetention.DELETE:
            return 0  # the bucket's (retention policy's) own retention applies
        self.flush(self.config.read_barrier_s)  # what is still in the outbox would come back after the delete
        n = self._count(SAMPLES, "value", f" WHERE time < {int(samples_before_ns)}")
        n += self._count(DEAD_LETTERS, "reason", f" WHERE time < {int(dead_letters_before_ns)}")
        self.query(f'DELETE FROM "{SAMPLES}" WHERE time < {int(samples_before_ns)}', method="POST")
        self.query(f'DELETE FROM "{DEAD_LETTERS}" WHERE time < {int(dead_letters_before_ns)}', method="POST")
        return n

    # -- health and shutdown --------------------------------------------------------------------
    def outbox_stats(self) -> dict[str, Any]:
        return self.outbox.stats(self._inflight_n).as_dict() | {"retries": self.retries, "requests": self.requests}

    def health(self) -> dict[str, Any]:
        return {"backend": self.backend, "ok": self.server_ok is not False, "url": self.config.url,
                "write_api": self.config.write_api.value, "query_api": self.config.query_api.value,
                "last_error": self.last_error, "outbox": self.outbox_stats()}

    def close(self, drain_timeout: float = 5.0) -> None:
        """Send what the server takes within ``drain_timeout``; the rest stays in the outbox file and
        goes out on the next start."""
        if self._closed:
            return
        if self._thread is not None and self.server_ok is not False and drain_timeout > 0:
            self.flush(drain_timeout)
        self._stop.set()
        self._wake.set()
        if self._write_api is not None:
            try:
                self._write_api.close()  # waits at most max_close_wait (5 s) for batches in flight
            except Exception:  # noqa: BLE001
                pass
        self._closed = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._scheduler is not None:
            self._scheduler.executor.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
        self.outbox.close()
        self._http.clear()
