"""Fault: the source repeats and reorders. The same readings are published twice (a third time for a
tenth of them, some of those with a different value) and in shuffled order, as single-reading and
batch messages, to the daemon as its own process.

Every distinct reading is stored exactly once with its first value, every repeat is counted in
``twin_samples_duplicate`` (exactly), nothing is dead-lettered, and the newest value per tag (by
source timestamp, not by arrival) is what ``/api/v1/latest`` shows.
Results: bench/results/faults_duplicates.json (+ _slow).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from core.samples import parse_time_ns
from tests.conftest import Mosquitto
from tests.faults.procs import (
    LINE,
    DaemonProcess,
    LedgerPublisher,
    base_us,
    daemon_config,
    metric_sum,
    mqtt_connector,
    outcome,
    reading,
    stored_count,
    stored_rows,
    table_row,
    wait_until,
    write_result,
)

pytestmark = pytest.mark.integration


def publish_shuffled(pub: LedgerPublisher, items: list[dict[str, object]], rng: random.Random, batch: int) -> int:
    """Publish items in a shuffled order: runs of single messages and batches of random size."""
    items = items[:]
    rng.shuffle(items)
    i = 0
    msgs = 0
    while i < len(items):
        if rng.random() < 0.3:
            it = items[i]
            pub.publish(str(it["topic"]), json.dumps({k: v for k, v in it.items() if k != "topic"}))
            i += 1
        else:
            k = rng.randint(2, batch)
            pub.publish(f"pilot/{LINE}/batch", json.dumps({"readings": items[i:i + k]}))
            i += k
        msgs += 1
    return msgs


def run_duplicates(tmp_path: Path, broker: Mosquitto, *, n: int, case: str) -> None:
    cfg, api = daemon_config(tmp_path / "daemon", connectors=mqtt_connector(broker.port, "twin-faults-dup"))
    store = tmp_path / "daemon" / "store.sqlite"
    d = DaemonProcess(cfg, api)
    d.start()
    pub: LedgerPublisher | None = None
    rng = random.Random(15)
    try:
        d.wait_connected("mqtt")
        pub = LedgerPublisher(broker.port, "faults-publisher-dup")
        t0 = base_us(n, 1000)
        items, expected = [], {}
        for i in range(n):
            it, key, value = reading(i, t0)
            items.append(it)
            expected[key] = value
        first = publish_shuffled(pub, items, rng, 50)
        pub.wait_all_acked(60)
        # wait for the first copy to be stored, so that "first value" is well defined for the conflicts
        assert wait_until(lambda: stored_count(store) >= n, 60, 0.05) is not None
        second = publish_shuffled(pub, items, rng, 50)  # every reading again, another order
        third_items = rng.sample(items, n // 10)
        conflicting = third_items[: len(third_items) // 2]
        changed = [dict(it, value=float(it["value"]) + 1.0) for it in conflicting]  # type: ignore[arg-type]
        third_items = third_items[len(third_items) // 2:] + changed
        third = publish_shuffled(pub, third_items, rng, 20)
        pub.wait_all_acked(60)
        repeats = n + len(third_items)
        settled = wait_until(lambda: metric_sum(d.metrics(), "twin_samples_duplicate") >= repeats, 60, 0.2)
        time.sleep(0.5)
        m = d.metrics()
        latest = {r["tag"]: (r["ts"], r["value"]) for r in d.get_json(f"/api/v1/latest?line={LINE}")}
        rc = d.stop()
        rows = stored_rows(store)
        got = dict(rows)
        wrong = sum(1 for k, v in expected.items() if k in got and abs(got[k] - v) > 1e-9)
        newest: dict[str, tuple[int, float]] = {}
        for (_line, tag, ts), v in expected.items():
            if tag not in newest or ts > newest[tag][0]:
                newest[tag] = (ts, v)
        latest_ok = all(tag in latest and parse_time_ns(latest[tag][0]) == ts and abs(latest[tag][1] - v) < 1e-9
                        for tag, (ts, v) in newest.items())
        res = {
            "fault": "duplicates and reordering: every reading published twice (a tenth three times, half of "
                     "those with a different value), each copy in a shuffled order",
            "load": {"distinct_readings": n, "messages": first + second + third,
                     "payloads": "single-reading messages and batches of 2-50 readings, shuffled, QoS 1"},
            "sent": 2 * n + len(third_items), "distinct": n, "stored": len(got),
            "duplicate_rows": len(rows) - len(got), "missing": len(set(expected) - set(got)),
            "stored_not_sent": len(set(got) - set(expected)), "first_value_kept": n - wrong,
            "conflicting_resends": len(conflicting),
            "duplicates_counted": metric_sum(m, "twin_samples_duplicate"), "duplicates_expected": repeats,
            "dead_lettered": metric_sum(m, "twin_dead_letters"), "dropped": 0, "dropped_policy": "block (default)",
            "latest_is_newest_by_source_time": latest_ok,
            "settled_s": None if settled is None else round(settled, 3), "daemon_exit_code": rc,
        }
        res["table_row"] = table_row(
            "duplicates and reordering", f"{n:,} distinct readings, each sent 2-3 times, shuffled",
            res["sent"], len(got), res["dead_lettered"], 0, None, None, "-",
            f"{res['duplicates_counted']:.0f} duplicates counted (expected {repeats})")
        path = write_result(case, res)
        with outcome(path):
            assert set(got) == set(expected) and len(rows) == n, "each distinct reading stored exactly once"
            assert wrong == 0, f"{wrong} stored values are not the first one sent"
            assert res["duplicates_counted"] == repeats, "every repeat counted exactly"
            assert res["dead_lettered"] == 0
            assert latest_ok, (latest, newest)
            assert rc == 0
    finally:
        if pub is not None:
            pub.close()
        if d.alive():
            d.kill()


def test_duplicates_and_reordering_stored_once_and_counted(tmp_path: Path, mosquitto: Mosquitto) -> None:
    run_duplicates(tmp_path, mosquitto, n=5_000, case="duplicates")


@pytest.mark.slow
def test_duplicates_and_reordering_100k(tmp_path: Path, mosquitto: Mosquitto) -> None:
    run_duplicates(tmp_path, mosquitto, n=100_000, case="duplicates_slow")
