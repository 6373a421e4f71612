"""Fault: the OPC-UA server (the simulated line, its own process on a fixed port) is SIGKILLed and
started again on the same port while the daemon (its own process) is subscribed to it.

The connector reconnects and re-creates its subscriptions by itself; data is back within 10 s of the
server listening again; the outage is flagged as exactly one gap (a ``connector.simline_gap`` sample
whose value is the gap in seconds, stamped at the gap's start), and nothing is stored with a source
timestamp inside the gap (never interpolated). ``/healthz`` is degraded (503) while the source is
disconnected and ok (200) after. Results: bench/results/faults_opcua_kill.json (+ _slow).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.faults.procs import (
    DaemonProcess,
    HealthProbe,
    SimLineProcess,
    daemon_config,
    metric_sum,
    outcome,
    table_row,
    write_result,
)

pytestmark = pytest.mark.integration

GAP_TAG = "connector.simline_gap"


def opcua_connector(url: str) -> str:
    return ("[[connectors]]\n"
            f'kind = "opcua"\nname = "simline"\nurl = "{url}"\nmode = "subscription"\n'
            'browse_roots = ["ns=2;s=PilotLine"]\ngap_marker = "reading"\n'
            "watchdog_interval_s = 0.5\nrequest_timeout_s = 2.0\n"
            'security = { policy = "none" }\n'
            "subscription = { publishing_interval_ms = 100.0 }\n"
            "backoff = { initial_s = 0.2, max_s = 1.0 }\n")


def _q(path: Path, sql: str, *args: object) -> list[tuple]:
    c = sqlite3.connect(path, timeout=30.0)
    try:
        return c.execute(sql, args).fetchall()
    finally:
        c.close()


def line_samples_since(path: Path, ts_ns: int) -> int:
    """Samples of the line (not the connector's own gap tag) with a source timestamp >= ts_ns."""
    try:
        return _q(path, "SELECT count(*) FROM samples x JOIN series s ON s.id = x.series "
                        "WHERE s.tag NOT LIKE 'connector.%' AND x.ts >= ?", ts_ns)[0][0]
    except sqlite3.Error:
        return 0


def run_opcua_kill(tmp_path: Path, *, before_s: float, down_s: float, after_s: float, case: str) -> None:
    srv = SimLineProcess(free_port())
    srv.start()
    work = tmp_path / "daemon"
    cfg, api = daemon_config(work, connectors=opcua_connector(srv.url))
    store = work / "store.sqlite"
    d = DaemonProcess(cfg, api)
    try:
        d.start()
        d.wait_connected("simline", 60)
        with HealthProbe(d) as probe:
            time.sleep(before_s)
            assert line_samples_since(store, 0) > 0
            kill_ns = time.time_ns()
            srv.kill()
            killed = time.monotonic()
            time.sleep(down_s)
            stored_down = line_samples_since(store, 0)
            conn_down = d.connector("simline")
            restart_ns = time.time_ns()
            t_restart = time.monotonic()
            srv.start()  # same port; the daemon is not touched
            listening = time.monotonic()
            back = None
            while time.monotonic() - listening < 30.0:
                if line_samples_since(store, restart_ns) > 0:
                    back = time.monotonic() - listening
                    break
                time.sleep(0.05)
            time.sleep(after_s)
            recovered = time.monotonic()
            time.sleep(1.0)
        conn = d.connector("simline")
        m = d.metrics()
        rc = d.stop()
        gaps = _q(store, "SELECT x.ts, x.value FROM samples x JOIN series s ON s.id = x.series WHERE s.tag = ?",
                  GAP_TAG)
        inside = 0
        if len(gaps) == 1:
            inside = _q(store, "SELECT count(*) FROM samples x JOIN series s ON s.id = x.series "
                               "WHERE s.tag NOT LIKE 'connector.%' AND x.ts > ? AND x.ts < ?",
                        gaps[0][0], restart_ns)[0][0]
        total = line_samples_since(store, 0)
        dead = dict(_q(store, "SELECT reason_code, count(*) FROM dead_letters GROUP BY reason_code"))
        during = probe.between(killed + 2.0, t_restart)
        after = probe.between(recovered, recovered + 1e9)
        res = {
            "fault": "OPC-UA server (simulated line, own process) SIGKILL, restarted on the same port",
            "load": {"server": "python -m twin.simline.opcua_server, 10 Hz steps, browse root ns=2;s=PilotLine",
                     "subscription_publishing_interval_ms": 100, "before_s": before_s, "down_s": down_s,
                     "after_s": after_s},
            "stored_line_samples": total, "stored_when_restarted": stored_down,
            "connected_while_down": conn_down.get("connected"),
            "data_back_after_server_listening_s": None if back is None else round(back, 3),
            "server_restart_s": round(listening - t_restart, 3),
            "gaps_counted": conn.get("gaps"), "gap_samples_stored": len(gaps),
            "gap_s": gaps[0][1] if len(gaps) == 1 else None,
            "gap_start_before_kill_ms": round((kill_ns - gaps[0][0]) / 1e6, 1) if len(gaps) == 1 else None,
            "samples_inside_gap": inside, "reconnects": conn.get("reconnects"),
            "dead_lettered": dead, "dropped": conn.get("dropped"), "dropped_policy": "block (default)",
            "duplicates": metric_sum(m, "twin_samples_duplicate"),
            "recovery_s": None if back is None else round(back, 3),
            "recovery_definition": "server listening again -> first sample with a source timestamp after the "
                                   "restart stored",
            "healthz": {"during_outage": sorted(set(during)), "during_outage_probes": len(during),
                        "after_recovery": sorted(set(after)), "after_recovery_probes": len(after),
                        "max_answer_s": round(probe.max_answer_s(), 3)},
            "daemon_exit_code": rc,
        }
        res["table_row"] = table_row(
            "OPC-UA server SIGKILL, restart", f"simulated line at 10 Hz, server down {down_s:g} s "
            f"(+{listening - t_restart:.1f} s start-up)", None, total, sum(dead.values()), conn.get("dropped"),
            "block (default)", res["recovery_s"], "server listening again -> first new sample stored",
            f"{len(gaps)} gap flagged ({gaps[0][1] if len(gaps) == 1 else '?'} s), {inside} samples inside it")
        path = write_result(case, res)
        with outcome(path):
            assert conn_down.get("connected") is False
            assert back is not None and back < 10.0, "data not back within 10 s of the server listening again"
            assert conn.get("gaps") == 1 and len(gaps) == 1, "one outage, one gap, stored once"
            gap_start, gap_s = gaps[0]
            assert gap_start <= kill_ns + 300_000_000, "the gap starts at the last data before the kill"
            assert down_s <= gap_s <= down_s + (listening - t_restart) + back + 3.0
            assert inside == 0, "nothing is stored inside the gap (never interpolated)"
            assert conn.get("reconnects", 0) >= 1 and conn.get("dropped") == 0
            assert dead == {}, dead
            assert rc == 0
            # honest health: a disconnected source is degraded (503); ok (200) once data flows again
            assert during and set(during) == {503}, f"/healthz while the source is disconnected: {res['healthz']}"
            assert after and set(after) == {200}, f"/healthz after recovery: {res['healthz']}"
    finally:
        if d.alive():
            d.kill()
        srv.kill()


def test_opcua_server_sigkill_and_restart_data_back_and_gap_flagged(tmp_path: Path) -> None:
    run_opcua_kill(tmp_path, before_s=2.0, down_s=3.0, after_s=2.0, case="opcua_kill")


@pytest.mark.slow
def test_opcua_server_down_30_s(tmp_path: Path) -> None:
    run_opcua_kill(tmp_path, before_s=5.0, down_s=30.0, after_s=5.0, case="opcua_kill_slow")
