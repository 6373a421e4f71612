"""Fault: the MQTT broker is SIGKILLed mid-stream and restarted on the same port and persistence.

A QoS-1 publisher keeps a ledger of the messages the broker acknowledged; the daemon runs as its own
process (``python -m twin.cli run``). Every acknowledged reading must be stored exactly once, nothing
else stored, no dead letters. Recovery time = broker listening again -> first new reading stored.

One exception, and it is the broker's, not the twin's: mosquitto writes its persistence file every
``autosave_interval`` (1 s here), so a SIGKILL loses the messages it acknowledged to the publisher after its
last save and had not yet handed to the twin. The test proves such a loss is the broker's: every lost
reading was acknowledged by the broker within one autosave interval (+0.5 s) before the kill, and the twin
stored or counted every reading it received (received = stored + duplicates + dead letters).
Results: bench/results/faults_broker_kill.json (the default run) and faults_broker_kill_slow.json.
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
    wait_settled,
    wait_until,
    write_result,
)

pytestmark = pytest.mark.integration

AUTOSAVE_S = 1.0  # tests.conftest.Mosquitto: autosave_interval 1


def run_broker_kill(tmp_path: Path, broker: Mosquitto, *, n: int, rate_msgs: float, down_s: float,
                    kill_at: float, case: str) -> None:
    cfg, api = daemon_config(tmp_path / "daemon", connectors=mqtt_connector(broker.port, "twin-faults-broker"))
    store = tmp_path / "daemon" / "store.sqlite"
    d = DaemonProcess(cfg, api)
    startup_s = d.start()
    pub: LedgerPublisher | None = None
    stop = threading.Event()
    try:
        d.wait_connected("mqtt")
        pub = LedgerPublisher(broker.port, "faults-publisher-broker")
        msgs = stream_messages(n, base_us(n, 1000))
        producer = threading.Thread(target=produce, args=(pub, msgs, rate_msgs, stop), daemon=True)
        t_load = time.monotonic()
        producer.start()
        assert wait_until(lambda: pub.acked_count() >= kill_at * len(msgs), 60) is not None
        acked_at_kill = pub.acked_count()
        broker.stop(signal.SIGKILL)  # no goodbye, no final save: what autosave wrote is all it keeps
        killed = time.monotonic()
        time.sleep(down_s)
        broker.start()  # same port, same persistence folder
        up = time.monotonic()
        base = stored_count(store)
        recovery_s = wait_until(lambda: stored_count(store) > base, 60, 0.02)
        producer.join(300)
        pub.wait_all_acked(120)
        sent = pub.sent_keys
        acked = pub.acked_keys()
        # all stored, or nothing more arriving for 10 s (the readings the broker lost never come)
        drained_s, _ = wait_settled(lambda: stored_count(store), len(sent), 120, quiet_s=10.0)
        load_s = time.monotonic() - t_load
        m = d.metrics()
        conn = d.connector("mqtt")
        rc = d.stop()
        rows = stored_rows(store)
        got = dict(rows)
        dup_rows = len(rows) - len(got)
        missing = acked - set(got)
        lost_ack_ages = sorted(killed - t for t in pub.ack_times(missing))  # seconds before the kill
        received = metric_sum(m, "twin_readings_received")
        extra = set(got) - set(sent)
        wrong = sum(1 for k, v in got.items() if k in sent and abs(sent[k] - v) > 1e-9)
        res = {
            "fault": "broker SIGKILL mid-stream, restarted on the same port and persistence",
            "load": {"readings": n, "messages": len(msgs), "rate_msgs_per_s": rate_msgs,
                     "payloads": "alternating single-reading and 20-reading batch messages, QoS 1",
                     "broker_down_s": down_s, "killed_after_acked_messages": acked_at_kill},
            "sent": len(sent), "acknowledged": len(acked), "stored": len(got),
            "lost_acknowledged": len(missing), "stored_not_sent": len(extra), "wrong_values": wrong,
            "lost_acked_seconds_before_kill": [round(a, 3) for a in lost_ack_ages[:20]],
            "broker_autosave_interval_s": AUTOSAVE_S, "twin_received": received,
            "duplicate_rows": dup_rows,
            "redeliveries_ignored_as_duplicates": metric_sum(m, "twin_samples_duplicate"),
            "dead_lettered": metric_sum(m, "twin_dead_letters"), "dropped": conn.get("dropped"),
            "dropped_policy": "block (default)", "reconnects": conn.get("reconnects"),
            "daemon_startup_s": round(startup_s, 3), "broker_down_s_measured": round(up - killed, 3),
            "recovery_s": None if recovery_s is None else round(recovery_s, 3),
            "recovery_definition": "broker listening again -> first new reading stored",
            "all_stored_after_last_ack_s": None if drained_s is None else round(drained_s, 3),
            "wall_s": round(load_s, 3), "daemon_exit_code": rc,
        }
        res["table_row"] = table_row(
            "MQTT broker SIGKILL mid-stream, restart", f"{n:,} readings, {rate_msgs * 10.5:,.0f}/s, QoS 1, "
            f"broker down {down_s:g} s", len(sent), len(got), res["dead_lettered"], conn.get("dropped"),
            "block (default)", res["recovery_s"], "broker listening again -> first new reading stored",
            f"{len(acked):,} acknowledged, {len(missing)} lost"
            + (f" (by the broker: acknowledged {min(lost_ack_ages):.2f}-{max(lost_ack_ages):.2f} s before the kill, "
               f"after its last autosave; the twin never received them)" if missing else "")
            + f", {dup_rows} duplicate rows")
        path = write_result(case, res)
        with outcome(path):
            assert len(acked) == len(sent) == n, "the publisher's own retries get every message acknowledged"
            # the twin lost nothing it received: every reading it got is stored, a counted duplicate or dead
            assert received == len(got) + res["redeliveries_ignored_as_duplicates"] + res["dead_lettered"], res
            # what is missing, the broker lost: acknowledged after its last save, killed before delivery
            assert all(age <= AUTOSAVE_S + 0.5 for age in lost_ack_ages) and len(lost_ack_ages) > 0 or not missing, \
                f"{len(missing)} acknowledged readings lost, e.g. {sorted(missing)[:3]}, acknowledged " \
                f"{lost_ack_ages[:5]} s before the kill"
            assert not extra and wrong == 0 and dup_rows == 0
            assert len(got) == n - len(missing)
            assert res["dead_lettered"] == 0 and conn.get("dropped") == 0
            assert conn.get("reconnects", 0) >= 1
            assert recovery_s is not None, "no new data within 60 s of the broker listening again"
            assert rc == 0
    finally:
        stop.set()
        if pub is not None:
            pub.close()
        if d.alive():
            d.kill()


def test_broker_sigkill_mid_stream_stores_every_acknowledged_reading_once(tmp_path: Path,
                                                                         mosquitto: Mosquitto) -> None:
    run_broker_kill(tmp_path, mosquitto, n=10_000, rate_msgs=250, down_s=1.0, kill_at=0.4, case="broker_kill")


@pytest.mark.slow
def test_broker_sigkill_mid_stream_100k(tmp_path: Path, mosquitto: Mosquitto) -> None:
    run_broker_kill(tmp_path, mosquitto, n=100_000, rate_msgs=500, down_s=5.0, kill_at=0.5,
                    case="broker_kill_slow")
