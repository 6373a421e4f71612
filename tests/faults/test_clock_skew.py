"""Fault: the source's clock is wrong. MQTT readings whose source timestamps lie far ahead of or
behind their receive time, interleaved with valid readings, against the daemon as its own process.

Shared decisions (issue #15): a source timestamp outside the skew window of its receive time is a
``clock_skew`` dead letter (PipelineConfig ``max_future_skew_s``, default 300 s); a timestamp the
store cannot represent (int64 ns: before 1677-09-21 or after 2262-04-11) is ``bad_timestamp``.
Valid readings, including ones hours old (lab results arrive late) and one a minute ahead, are
stored exactly once; the pipeline keeps going. Results: bench/results/faults_clock_skew.json.

Assumption to check against branch ``ingest``: with the default config a reading 10 years (or 56
years) behind its receive time is ``clock_skew`` (a past window exists by default), one 2 hours
behind is valid.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Mosquitto
from tests.faults.procs import (
    BASE,
    LINE,
    TAGS,
    DaemonProcess,
    Key,
    LedgerPublisher,
    daemon_config,
    dead_letter_codes,
    metric_sum,
    mqtt_connector,
    outcome,
    stored_count,
    stored_rows,
    table_row,
    wait_until,
    write_result,
)

pytestmark = pytest.mark.integration

DAY = 86_400
# offset of the source timestamp from now, in seconds -> expected outcome
VALID_OFFSETS = [-2 * 3600.0, -600.0, -10.0, 0.0, 60.0, 240.0]
SKEW_OFFSETS = [360.0, 3600.0, DAY, 365 * DAY, -10 * 365 * DAY]
# timestamps given literally (not relative to now) -> expected reason code
LITERAL = [
    ("1970-01-01T00:00:01Z", "clock_skew"),  # a PLC clock reset to the epoch: representable, far behind
    (1.0, "clock_skew"),
    ("9999-12-31T23:59:59Z", "bad_timestamp"),  # beyond int64 ns (2262-04-11)
    ("2262-04-12T00:00:00Z", "bad_timestamp"),
    ("1600-01-01T00:00:00Z", "bad_timestamp"),  # before 1677-09-21
    (1e30, "bad_timestamp"),
    (-1e12, "bad_timestamp"),
    (2**70, "bad_timestamp"),
]


def item(i: int, ts: object) -> tuple[dict[str, object], str]:
    tag = TAGS[i % len(TAGS)]
    return ({"topic": f"pilot/{LINE}/calendering/{tag}", "ts": ts, "value": BASE[tag] + (i % 7) * 0.1},
            f"calendering.{tag}")


def run_clock_skew(tmp_path: Path, broker: Mosquitto, *, rounds: int, case: str) -> None:
    cfg, api = daemon_config(tmp_path / "daemon", connectors=mqtt_connector(broker.port, "twin-faults-skew"))
    store = tmp_path / "daemon" / "store.sqlite"
    d = DaemonProcess(cfg, api)
    d.start()
    pub: LedgerPublisher | None = None
    try:
        d.wait_connected("mqtt")
        pub = LedgerPublisher(broker.port, "faults-publisher-skew")
        valid: dict[Key, float] = {}
        expected_dead: Counter[str] = Counter()
        i = 0
        now_us = time.time_ns() // 1000
        for r in range(rounds):
            batch = []
            for k, off in enumerate(VALID_OFFSETS):
                ts_us = now_us + int(off * 1e6) + r * 1000 + k  # unique per reading
                it, tag = item(i, ts_us / 1e6)
                i += 1
                valid[(LINE, tag, ts_us * 1000)] = it["value"]  # type: ignore[assignment]
                if k % 2:
                    batch.append(it)
                else:
                    body = {x: y for x, y in it.items() if x != "topic"}
                    pub.publish(str(it["topic"]), json.dumps(body))
            for off in SKEW_OFFSETS:
                it, _ = item(i, (now_us + int(off * 1e6) + r * 1000) / 1e6)
                i += 1
                expected_dead["clock_skew"] += 1
                batch.append(it)
            for ts, code in LITERAL:
                it, _ = item(i, ts)
                i += 1
                expected_dead[code] += 1
                if i % 2:
                    batch.append(it)
                else:
                    body = {x: y for x, y in it.items() if x != "topic"}
                    pub.publish(str(it["topic"]), json.dumps(body))
            pub.publish(f"pilot/{LINE}/batch", json.dumps({"readings": batch}))
        pub.wait_all_acked(60)
        n_dead = sum(expected_dead.values())
        settled = wait_until(lambda: stored_count(store) >= len(valid)
                             and sum(dead_letter_codes(store).values()) >= n_dead, 20, 0.1)
        time.sleep(0.5)  # anything more (a wrong extra row) would show now
        m = d.metrics()
        h_code = d.healthz()[0]
        rc = d.stop(60)
        rows = stored_rows(store)
        got = dict(rows)
        codes = dead_letter_codes(store)
        missing = set(valid) - set(got)
        extra = set(got) - set(valid)
        res = {
            "fault": "source clock skew: MQTT readings far ahead of / behind their receive time and beyond the "
                     "store's time range, interleaved with valid readings",
            "load": {"rounds": rounds, "valid_offsets_s": VALID_OFFSETS, "skewed_offsets_s": SKEW_OFFSETS,
                     "literal_timestamps": [[repr(ts), c] for ts, c in LITERAL],
                     "payloads": "single-reading and batch messages, QoS 1"},
            "sent": len(valid) + n_dead, "sent_valid": len(valid), "sent_invalid": n_dead,
            "stored": len(got), "valid_not_stored": len(missing), "stored_invalid": len(extra),
            "duplicate_rows": len(rows) - len(got),
            "dead_lettered": dict(codes), "dead_lettered_expected": dict(expected_dead),
            "dead_letters_metric": {c: metric_sum({k: v for k, v in m.items() if f'reason="{c}"' in k},
                                                  "twin_dead_letters") for c in expected_dead},
            "dropped": 0, "dropped_policy": "block (default)",
            "settled_s": None if settled is None else round(settled, 3), "healthz_after": h_code,
            "daemon_exit_code": rc,
        }
        res["table_row"] = table_row(
            "source clock skew", f"{rounds} rounds of {len(VALID_OFFSETS)} valid, {len(SKEW_OFFSETS)} skewed, "
            f"{len(LITERAL)} unrepresentable timestamps", len(valid) + n_dead, len(got), dict(codes), 0,
            None, None, "-", f"{len(valid)} valid sent, {len(missing)} of them not stored")
        path = write_result(case, res)
        with outcome(path):
            assert not missing, (f"{len(missing)} valid readings not stored (ingestion blocked?), "
                                 f"e.g. {sorted(missing)[:3]}")
            assert not extra, f"{len(extra)} readings with a skewed timestamp were stored, e.g. {sorted(extra)[:3]}"
            assert len(rows) == len(got) == len(valid)
            assert dict(codes) == dict(expected_dead), (dict(codes), dict(expected_dead))
            assert res["dead_letters_metric"] == {c: float(v) for c, v in expected_dead.items()}
            assert rc == 0
    finally:
        if pub is not None:
            pub.close()
        if d.alive():
            d.kill()


def test_clock_skew_readings_are_dead_letters_and_valid_ones_stored(tmp_path: Path, mosquitto: Mosquitto) -> None:
    run_clock_skew(tmp_path, mosquitto, rounds=20, case="clock_skew")


@pytest.mark.slow
def test_clock_skew_2000_rounds(tmp_path: Path, mosquitto: Mosquitto) -> None:
    run_clock_skew(tmp_path, mosquitto, rounds=2000, case="clock_skew_slow")
