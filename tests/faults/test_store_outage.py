"""Fault: the store is unavailable for a while during ingest, with the daemon as its own process.

- InfluxDB backend: a real influxd (tests/influx/servers.py) is SIGKILLed and restarted after the
  outage on the same port and data; the daemon's outbox holds the backlog.
- Embedded store: another process holds an exclusive lock on the SQLite file (``BEGIN EXCLUSIVE``)
  for the outage; every commit of the daemon waits (and, beyond the 30 s busy timeout, fails and is
  retried), intake back-pressures into the broker.

Each: every reading the broker acknowledged is stored exactly once, nothing dead-lettered or dropped;
``/healthz`` answers 503 (degraded) during the outage and 200 after; recovery time measured. The
health check gets a grace to notice: 2 s for InfluxDB (a failed write), 3 s for the locked SQLite
file (no commit error before the 30 s busy timeout: a commit waiting that long must count as a
store that cannot commit).
Results: bench/results/faults_store_outage_influxdb.json, faults_store_outage_sqlite.json (+ _slow).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Mosquitto
from tests.faults.procs import (
    DaemonProcess,
    HealthProbe,
    LedgerPublisher,
    StoreLock,
    base_us,
    daemon_config,
    metric_sum,
    mqtt_connector,
    outcome,
    produce,
    stored_count,
    stored_rows,
    stream_messages,
    table_row,
    wait_until,
    write_result,
)
from tests.influx.servers import InfluxD

pytestmark = pytest.mark.integration

READINGS_PER_MSG = 10.5  # stream_messages alternates 1 and 20 readings per message


def influx_store(server: InfluxD, workdir: Path) -> str:
    return ('[store]\nbackend = "influxdb"\n[store.influxdb]\n'
            f'url = "{server.url}"\nwrite_api = "v1"\ndatabase = "{server.database}"\n'
            f'outbox_path = "{workdir / "outbox.sqlite"}"\n'
            "batch_size = 2000\nflush_interval_ms = 100\nmax_in_flight_batches = 1\n"
            "retry = { interval_ms = 500, max_retries = 4, max_delay_ms = 4000, max_time_ms = 15000 }\n")


def influx_rows(server: InfluxD) -> list[tuple[tuple[str, str, int], float]]:
    res = server.query('SELECT "value" FROM "twin_sample" WHERE "step" = \'calendering\' GROUP BY "line", "tag"')
    out = []
    for s in (res[0].get("series") or []) if res else []:
        line, tag = s["tags"]["line"], s["tags"]["tag"]
        out.extend(((line, tag, int(t)), float(v)) for t, v in s["values"])
    return out


def influx_count(server: InfluxD) -> int:
    try:
        return server.count(where="\"step\" = 'calendering'")
    except (OSError, RuntimeError):
        return -1


def health_windows(probe: HealthProbe, down: float, up: float, recovered: float | None,
                   grace_s: float) -> dict[str, object]:
    """Statuses of /healthz: during the outage (after ``grace_s`` to notice it) and after recovery."""
    during = probe.between(down + grace_s, up)
    after = probe.between(recovered + 2.0, recovered + 1e9) if recovered is not None else []
    t0 = probe._t0
    # when a probe in the window did not say 503: seconds after the fault began and before it ended, with its body
    other = [(round(t + t0 - down, 3), round(up - (t + t0), 3), c, (b or {}).get("problems"))
             for (t, c, _, b) in probe.samples if down + grace_s - t0 <= t <= up - t0 and c != 503]
    return {"during_outage": sorted(set(during)), "during_outage_probes": len(during),
            "during_outage_503": sum(1 for c in during if c == 503),
            "during_outage_not_503": [{"after_fault_s": a, "before_end_s": e, "status": c, "problems": p}
                                      for a, e, c, p in other],
            "after_recovery": sorted(set(after)), "after_recovery_probes": len(after),
            "max_answer_s": round(probe.max_answer_s(), 3), "grace_s": grace_s}


def run_influx_outage(tmp_path: Path, broker: Mosquitto, server: InfluxD, *, outage_s: float, total_s: float,
                      rate_msgs: float, case: str) -> None:
    work = tmp_path / "daemon"
    cfg, api = daemon_config(work, store=influx_store(server, work),
                             connectors=mqtt_connector(broker.port, "twin-faults-influx"))
    d = DaemonProcess(cfg, api)
    d.start()
    pub: LedgerPublisher | None = None
    stop = threading.Event()
    try:
        d.wait_connected("mqtt")
        n = int(total_s * rate_msgs * READINGS_PER_MSG)
        pub = LedgerPublisher(broker.port, "faults-publisher-influx")
        msgs = stream_messages(n, base_us(n, 1000))
        producer = threading.Thread(target=produce, args=(pub, msgs, rate_msgs, stop), daemon=True)
        with HealthProbe(d) as probe:
            producer.start()
            time.sleep(2.0)
            server.stop(signal.SIGKILL)  # InfluxDB crashes mid-ingest
            down = time.monotonic()
            time.sleep(outage_s)
            outbox_down = d.healthz()[1].get("store", {}).get("outbox", {})
            server.start()  # same ports, same data folder
            up = time.monotonic()
            base = influx_count(server)
            first = wait_until(lambda: influx_count(server) > base, 120, 0.1)
            producer.join(600)
            pub.wait_all_acked(120)
            sent = pub.sent_keys
            drained = wait_until(lambda: d.healthz()[1].get("store", {}).get("outbox", {}).get("pending", 1) == 0
                                 and influx_count(server) >= len(sent), 180, 0.2)
            recovered = None if drained is None else time.monotonic()
            time.sleep(3.0)  # health after recovery
        h = d.healthz()[1]
        outbox = h.get("store", {}).get("outbox", {})
        m = d.metrics()
        conn = d.connector("mqtt")
        acked = pub.acked_keys()
        rc = d.stop()
        rows = influx_rows(server)
        got = dict(rows)
        missing = acked - set(got)
        extra = set(got) - set(sent)
        wrong = sum(1 for k, v in got.items() if k in sent and abs(sent[k] - v) > 1e-9)
        health = health_windows(probe, down, up, recovered, grace_s=2.0)
        res = {
            "fault": "InfluxDB (influxd) SIGKILL during ingest, restarted after the outage; outbox in front",
            "store": "influxdb v1 write (/write), InfluxQL queries",
            "load": {"readings": n, "messages": len(msgs), "rate_msgs_per_s": rate_msgs,
                     "readings_per_s": rate_msgs * READINGS_PER_MSG, "outage_s": outage_s},
            "sent": len(sent), "acknowledged": len(acked), "stored_in_influxdb": len(got),
            "lost_acknowledged": len(missing), "stored_not_sent": len(extra), "wrong_values": wrong,
            "duplicate_rows": len(rows) - len(got), "outbox_pending_during_outage": outbox_down.get("pending"),
            "outbox_after": outbox, "dead_lettered": metric_sum(m, "twin_dead_letters"),
            "dropped": {"connector": conn.get("dropped"), "outbox": outbox.get("dropped")},
            "dropped_policy": "block (connector), outbox capacity 5,000,000 points (drop oldest beyond)",
            "commit_errors": metric_sum(m, "twin_store_commit_errors"),
            "recovery_first_point_s": None if first is None else round(first, 3),
            "recovery_backlog_drained_s": None if recovered is None else round(recovered - up, 3),
            "recovery_definition": "influxd ready again -> first new point in InfluxDB / outbox empty and "
                                   "every reading in InfluxDB",
            "healthz": health, "daemon_exit_code": rc,
        }
        res["table_row"] = table_row(
            "InfluxDB SIGKILL during ingest, restart", f"{n:,} readings, {rate_msgs * READINGS_PER_MSG:,.0f}/s, "
            f"influxd down {outage_s:g} s", len(sent), len(got), res["dead_lettered"],
            (conn.get("dropped") or 0) + (outbox.get("dropped") or 0), "block; outbox (drop oldest beyond capacity)",
            res["recovery_backlog_drained_s"], "influxd ready again -> backlog drained",
            f"first point {res['recovery_first_point_s']} s after restart; /healthz {health['during_outage']} "
            f"during, {health['after_recovery']} after")
        path = write_result(case, res)
        with outcome(path):
            assert len(acked) == len(sent) == n
            assert (outbox_down.get("pending") or 0) > 0, "the outbox held the backlog during the outage"
            assert not missing, f"{len(missing)} acknowledged readings not in InfluxDB, e.g. {sorted(missing)[:3]}"
            assert not extra and wrong == 0 and res["duplicate_rows"] == 0 and len(got) == n
            assert outbox.get("dropped") == 0 and outbox.get("rejected") == 0 and outbox.get("pending") == 0
            assert res["dead_lettered"] == 0 and conn.get("dropped") == 0
            assert recovered is not None, "backlog not drained within 180 s of influxd's restart"
            assert rc == 0
            # honest health: degraded (503) while InfluxDB is down, ok (200) once it is back
            assert health["during_outage_probes"] and health["during_outage"] == [503], \
                f"/healthz during the outage: {health}"
            assert health["after_recovery_probes"] and health["after_recovery"] == [200], \
                f"/healthz after recovery: {health}"
    finally:
        stop.set()
        if pub is not None:
            pub.close()
        if d.alive():
            d.kill()


def test_influxdb_killed_during_ingest_loses_nothing_and_health_says_so(tmp_path: Path, mosquitto: Mosquitto) -> None:
    server = InfluxD(tmp_path / "influxd")
    server.start()
    try:
        run_influx_outage(tmp_path, mosquitto, server, outage_s=6.0, total_s=12.0, rate_msgs=100,
                          case="store_outage_influxdb")
    finally:
        server.stop()


@pytest.mark.slow
def test_influxdb_killed_60_s_during_ingest(tmp_path: Path, mosquitto: Mosquitto) -> None:
    server = InfluxD(tmp_path / "influxd")
    server.start()
    try:
        run_influx_outage(tmp_path, mosquitto, server, outage_s=60.0, total_s=80.0, rate_msgs=200,
                          case="store_outage_influxdb_slow")
    finally:
        server.stop()


def run_sqlite_lock(tmp_path: Path, broker: Mosquitto, *, lock_s: float, total_s: float, rate_msgs: float,
                    case: str) -> None:
    work = tmp_path / "daemon"
    cfg, api = daemon_config(work, connectors=mqtt_connector(broker.port, "twin-faults-sqlite"))
    store = work / "store.sqlite"
    d = DaemonProcess(cfg, api)
    d.start()
    pub: LedgerPublisher | None = None
    lock = StoreLock(store, lock_s)
    stop = threading.Event()
    try:
        d.wait_connected("mqtt")
        n = int(total_s * rate_msgs * READINGS_PER_MSG)
        pub = LedgerPublisher(broker.port, "faults-publisher-sqlite")
        msgs = stream_messages(n, base_us(n, 1000))
        producer = threading.Thread(target=produce, args=(pub, msgs, rate_msgs, stop), daemon=True)
        with HealthProbe(d) as probe:
            producer.start()
            time.sleep(2.0)
            lock.acquire()  # another process holds the write lock: commits wait, then fail
            down = lock.locked_at
            stored_locked = stored_count(store)
            lock.wait_released()
            up = lock.released_at
            stored_before_release = stored_count(store)
            first = wait_until(lambda: stored_count(store) > stored_before_release, 120, 0.02)
            producer.join(600)
            pub.wait_all_acked(180)
            sent = pub.sent_keys
            drained = wait_until(lambda: stored_count(store) >= len(sent), 180, 0.1)
            recovered = None if drained is None else time.monotonic()
            time.sleep(3.0)
        m = d.metrics()
        conn = d.connector("mqtt")
        acked = pub.acked_keys()
        rc = d.stop()
        rows = stored_rows(store)
        got = dict(rows)
        missing = acked - set(got)
        extra = set(got) - set(sent)
        wrong = sum(1 for k, v in got.items() if k in sent and abs(sent[k] - v) > 1e-9)
        health = health_windows(probe, down, up, recovered, grace_s=3.0)
        res = {
            "fault": "embedded store (SQLite) locked by another process (BEGIN EXCLUSIVE) during ingest",
            "store": "embedded SQLite, WAL, busy timeout 30 s",
            "load": {"readings": n, "messages": len(msgs), "rate_msgs_per_s": rate_msgs,
                     "readings_per_s": rate_msgs * READINGS_PER_MSG, "lock_s": lock_s},
            "sent": len(sent), "acknowledged": len(acked), "stored": len(got),
            "stored_during_lock": stored_before_release - stored_locked,
            "lost_acknowledged": len(missing), "stored_not_sent": len(extra), "wrong_values": wrong,
            "duplicate_rows": len(rows) - len(got), "dead_lettered": metric_sum(m, "twin_dead_letters"),
            "dropped": conn.get("dropped"), "dropped_policy": "block (default)",
            "commit_errors": metric_sum(m, "twin_store_commit_errors"),
            "recovery_first_commit_s": None if first is None else round(first, 3),
            "recovery_backlog_drained_s": None if recovered is None else round(recovered - up, 3),
            "recovery_definition": "lock released -> first new sample stored / every reading stored",
            "healthz": health, "daemon_exit_code": rc,
        }
        res["table_row"] = table_row(
            "SQLite store locked by another process", f"{n:,} readings, {rate_msgs * READINGS_PER_MSG:,.0f}/s, "
            f"lock held {lock_s:g} s", len(sent), len(got), res["dead_lettered"], conn.get("dropped"),
            "block (default)", res["recovery_first_commit_s"], "lock released -> first commit",
            f"backlog drained {res['recovery_backlog_drained_s']} s after release; /healthz "
            f"{health['during_outage']} during, {health['after_recovery']} after")
        path = write_result(case, res)
        with outcome(path):
            assert len(acked) == len(sent) == n
            assert res["stored_during_lock"] == 0, "nothing can commit while the lock is held"
            assert not missing, f"{len(missing)} acknowledged readings lost, e.g. {sorted(missing)[:3]}"
            assert not extra and wrong == 0 and res["duplicate_rows"] == 0 and len(got) == n
            assert res["dead_lettered"] == 0 and conn.get("dropped") == 0
            assert first is not None and recovered is not None
            if lock_s > 35:  # beyond the busy timeout the commit fails, is counted and retried
                assert res["commit_errors"] >= 1
            assert rc == 0
            # honest health: the store cannot commit -> degraded (503); ok (200) once commits resume
            assert health["during_outage_probes"] and health["during_outage"] == [503], \
                f"/healthz during the outage: {health}"
            assert health["after_recovery_probes"] and health["after_recovery"] == [200], \
                f"/healthz after recovery: {health}"
    finally:
        stop.set()
        lock.kill()
        if pub is not None:
            pub.close()
        if d.alive():
            d.kill()


def test_sqlite_store_locked_during_ingest_loses_nothing_and_health_says_so(tmp_path: Path,
                                                                           mosquitto: Mosquitto) -> None:
    run_sqlite_lock(tmp_path, mosquitto, lock_s=8.0, total_s=12.0, rate_msgs=100, case="store_outage_sqlite")


@pytest.mark.slow
def test_sqlite_store_locked_beyond_the_busy_timeout(tmp_path: Path, mosquitto: Mosquitto) -> None:
    run_sqlite_lock(tmp_path, mosquitto, lock_s=45.0, total_s=60.0, rate_msgs=100, case="store_outage_sqlite_slow")
