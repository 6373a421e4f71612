"""Fault: the daemon process is SIGKILLed mid-ingest and started again with the same config.

The broker keeps the daemon's persistent session (QoS 1, manual acknowledgement after the commit):
what the daemon had taken in but not committed is redelivered, what it had committed but not yet
acknowledged is redelivered too and ignored as a duplicate. Every reading the broker acknowledged to
the publisher must be stored exactly once. Recovery time = daemon process started again -> first new
reading stored (its start-up is part of it; reported separately too).
Results: bench/results/faults_daemon_kill.json and faults_daemon_kill_slow.json.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Mosquitto
from tests.faults.procs import (
    DaemonProcess,
    LedgerPublisher,
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

pytestmark = pytest.mark.integration


def run_daemon_kill(tmp_path: Path, broker: Mosquitto, *, n: int, rate_msgs: float, down_s: float,
                    kill_at: float, case: str) -> None:
    cfg, api = daemon_config(tmp_path / "daemon", connectors=mqtt_connector(broker.port, "twin-faults-daemon"))
    store = tmp_path / "daemon" / "store.sqlite"
    d = DaemonProcess(cfg, api)
    d.start()
    pub: LedgerPublisher | None = None
    stop = threading.Event()
    try:
        d.wait_connected("mqtt")
        pub = LedgerPublisher(broker.port, "faults-publisher-daemon")
        msgs = stream_messages(n, base_us(n, 1000))
        producer = threading.Thread(target=produce, args=(pub, msgs, rate_msgs, stop), daemon=True)
        t_load = time.monotonic()
        producer.start()
        assert wait_until(lambda: pub.acked_count() >= kill_at * len(msgs), 60) is not None
        m1 = d.metrics()
        d.kill()  # SIGKILL mid-ingest: no flush, no acknowledgements
        stored_at_kill = stored_count(store)
        received_before = metric_sum(m1, "twin_readings_received")
        time.sleep(down_s)
        t_restart = time.monotonic()
        startup_s = d.start()
        flowing = wait_until(lambda: stored_count(store) > stored_at_kill, 60, 0.02)
        recovery_s = None if flowing is None else time.monotonic() - t_restart  # start-up included
        producer.join(300)
        pub.wait_all_acked(120)
        sent = pub.sent_keys
        acked = pub.acked_keys()
        drained_s = wait_until(lambda: stored_count(store) >= len(sent), 120, 0.1)
        load_s = time.monotonic() - t_load
        m2 = d.metrics()
        conn = d.connector("mqtt")
        rc = d.stop()
        rows = stored_rows(store)
        got = dict(rows)
        missing = acked - set(got)
        extra = set(got) - set(sent)
        wrong = sum(1 for k, v in got.items() if k in sent and abs(sent[k] - v) > 1e-9)
        res = {
            "fault": "daemon SIGKILL mid-ingest, started again with the same config and store",
            "load": {"readings": n, "messages": len(msgs), "rate_msgs_per_s": rate_msgs,
                     "payloads": "alternating single-reading and 20-reading batch messages, QoS 1",
                     "daemon_down_s": down_s},
            "sent": len(sent), "acknowledged": len(acked), "stored": len(got),
            "stored_when_killed": stored_at_kill, "received_by_first_daemon_before_kill": received_before,
            "lost_acknowledged": len(missing), "stored_not_sent": len(extra), "wrong_values": wrong,
            "duplicate_rows": len(rows) - len(got),
            "redeliveries_ignored_as_duplicates": metric_sum(m2, "twin_samples_duplicate"),
            "dead_lettered": metric_sum(m1, "twin_dead_letters") + metric_sum(m2, "twin_dead_letters"),
            "dropped": conn.get("dropped"), "dropped_policy": "block (default)",
            "daemon_startup_s": round(startup_s, 3),
            "recovery_s": None if recovery_s is None else round(recovery_s, 3),
            "recovery_definition": "daemon process started again -> first new reading stored (start-up included)",
            "all_stored_after_last_ack_s": None if drained_s is None else round(drained_s, 3),
            "peak_rss_mb": round(d.peak_rss_kb / 1024, 1), "wall_s": round(load_s, 3), "daemon_exit_code": rc,
        }
        res["table_row"] = table_row(
            "daemon SIGKILL mid-ingest, restart", f"{n:,} readings, {rate_msgs * 10.5:,.0f}/s, QoS 1, "
            f"daemon down {down_s:g} s", len(sent), len(got), res["dead_lettered"], conn.get("dropped"),
            "block (default)", res["recovery_s"], "daemon restarted -> first new reading stored (start-up included)",
            f"{len(acked):,} acknowledged, {len(missing)} lost, {res['duplicate_rows']} duplicate rows")
        path = write_result(case, res)
        with outcome(path):
            assert len(acked) == len(sent) == n
            assert 0 < stored_at_kill < n, "the kill came mid-ingest"
            assert not missing, f"{len(missing)} acknowledged readings lost, e.g. {sorted(missing)[:3]}"
            assert not extra and wrong == 0 and res["duplicate_rows"] == 0
            assert len(got) == n
            assert res["dead_lettered"] == 0 and conn.get("dropped") == 0
            assert recovery_s is not None, "no new data within 60 s of the restart"
            assert rc == 0
    finally:
        stop.set()
        if pub is not None:
            pub.close()
        if d.alive():
            d.kill()


def test_daemon_sigkill_mid_ingest_stores_every_acknowledged_reading_once(tmp_path: Path,
                                                                         mosquitto: Mosquitto) -> None:
    run_daemon_kill(tmp_path, mosquitto, n=8_000, rate_msgs=250, down_s=0.5, kill_at=0.4, case="daemon_kill")


@pytest.mark.slow
def test_daemon_sigkill_mid_ingest_100k(tmp_path: Path, mosquitto: Mosquitto) -> None:
    run_daemon_kill(tmp_path, mosquitto, n=100_000, rate_msgs=500, down_s=5.0, kill_at=0.5,
                    case="daemon_kill_slow")
