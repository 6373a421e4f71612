"""The InfluxDB backend's sender: a thread that moves the outbox to InfluxDB in batches.

- ``write_api = "v2"``: influxdb-client's batching ``WriteApi`` (``batch_size``, ``flush_interval``,
  retries with exponential backoff through the client's ``WritesRetry``) posting to ``/api/v2/write``.
  Its success / error callbacks tell which points arrived; only those leave the outbox.
- ``write_api = "v1"``: ``POST /write?db=&rp=&precision=`` with the client's ``WritesRetry``.

When a request is given up the points stay in the outbox and are sent again, oldest first, after a
back-off (:class:`core.retry.Backoff`, equal jitter). A batch the server refuses for good (HTTP 400,
413, 422) is rejected from the outbox and counted, never retried for ever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any
from urllib.parse import urlencode

import urllib3

from core.retry import Backoff
from twin.store.config import InfluxStoreConfig, InfluxWriteApi
from twin.store.outbox import Outbox

log = logging.getLogger("twin.store.influx")


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


class OutboxSender:
    """Sends what ``outbox`` holds to InfluxDB; reports the server's state (``server_ok``,
    ``last_error``, ``retries``, ``requests``, consecutive ``failures``)."""

    def __init__(self, config: InfluxStoreConfig, outbox: Outbox, http: urllib3.PoolManager,
                 headers: dict[str, str]) -> None:
        self.config = config
        self.outbox = outbox
        self._http = http
        self._headers = headers
        _quiet_client_logs()
        self.v2 = config.write_api is InfluxWriteApi.V2
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
        self.closed = False
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def inflight(self) -> int:
        """Points handed to a request (or the v2 client) and not yet confirmed or failed."""
        return self._inflight_n

    def _retry(self) -> Any:
        from influxdb_client.client.write.retry import WritesRetry  # heavy; only the v1 path needs it

        r = self.config.retry
        return WritesRetry(total=r.max_retries, retry_interval=r.interval_ms / 1000,
                           max_retry_delay=r.max_delay_ms / 1000, max_retry_time=r.max_time_ms / 1000,
                           exponential_base=r.exponential_base, retry_callback=self._on_retry,
                           allowed_methods=["POST"])

    def start(self) -> None:
        if self.v2:
            self._open_v2()
        self._thread = threading.Thread(target=self._pump, name="influx-sender", daemon=True)
        self._thread.start()

    def _open_v2(self) -> None:
        # imported when the v2 path is opened: influxdb-client and reactivex take a while to load
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

    def _on_retry(self, err: Exception) -> int:
        """influxdb-client's retry hook (its signature wants an int back; the value is not used)."""
        self.retries += 1
        self.server_ok = False
        self.last_error = _brief(err)
        return self.retries

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
        if not self.closed:
            self.outbox.ack(seqs)
        self._delivered()
        self._wake.set()

    def _on_error(self, conf: Any, data: bytes | str, err: Exception) -> None:
        seqs = self._release(data)
        self._failed(seqs, getattr(err, "status", None) or getattr(getattr(err, "response", None), "status", None),
                     _brief(err))

    def _failed(self, seqs: list[int], status: int | None, message: str) -> None:
        if status in (400, 413, 422):  # the server will never take these points: do not retry for ever
            n = 0 if self.closed else self.outbox.reject(seqs)
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
            if not self.closed:
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
            except Exception:
                if self._stop.is_set():
                    break
                log.exception("InfluxDB sender failed; retrying")
                if not self.v2:
                    with self._inflight_lock:
                        self._inflight_n = 0  # v1 sends synchronously: nothing is in flight after a failure
                self._rewind = True
                self._stop.wait(1.0)

    def written(self) -> None:
        """New rows are in the outbox: wake the sender (v1 only once a batch is full)."""
        if self.v2 or self.outbox.pending - self._inflight_n >= self.config.batch_size:
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

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
                if oldest is None or oldest > target or self.closed:
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                box.changed.wait(0.1 if left is None else min(0.1, left))
                self._urgent = True
                self._wake.set()

    def close(self, drain_timeout: float = 5.0) -> None:
        """Send what the server takes within ``drain_timeout``, then stop the thread and the client
        (the outbox itself is the store's to close)."""
        if self.closed:
            return
        if self._thread is not None and self.server_ok is not False and drain_timeout > 0:
            self.flush(drain_timeout)
        self._stop.set()
        self._wake.set()
        if self._write_api is not None:
            try:
                self._write_api.close()  # waits at most max_close_wait (5 s) for batches in flight
            except Exception:  # noqa: BLE001 - closing must not raise; the outbox keeps what was not sent
                pass
        self.closed = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._scheduler is not None:
            self._scheduler.executor.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing must not raise
                pass
