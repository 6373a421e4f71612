"""Lab results over MQTT: a real mosquitto, a QoS-1 publisher, the lab service's own subscription. Good rows are
stored once (a redelivered message counts as duplicates), bad ones become dead letters with reasons."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.conftest import Mosquitto
from tests.lab.conftest import lab_daemon, replay
from twin.testing.publisher import AckingPublisher


async def test_lab_results_over_mqtt(tmp_path: Path, mosquitto: Mosquitto) -> None:
    d = lab_daemon(tmp_path, predictor=False, lab=f"[lab.mqtt]\nenabled = true\nport = {mosquitto.port}\n")
    await replay(d, keep=lambda i: i < 200, rows_per_batch=100)
    lab = d.lab
    assert lab is not None
    await lab.start()
    pub = AckingPublisher(mosquitto.port, "lims")
    try:
        for _ in range(200):
            if lab.mqtt.connected:
                break
            await asyncio.sleep(0.05)
        assert lab.mqtt.connected
        good = [{"roll_id": "R-0001", "start_m": 0, "end_m": 8, "quantity": "porosity_hg", "value": 31.5, "unit": "%"},
                {"roll_id": "R-0001", "start_m": 0, "end_m": 8, "quantity": "adhesion_peel", "value": 0.021,
                 "unit": "N/mm"}]
        pub.publish("pilot/pilot-1/lab/results", json.dumps(good))
        pub.publish("pilot/pilot-1/lab/results", json.dumps(good))  # sent again: duplicates, nothing new stored
        pub.publish("pilot/pilot-1/lab/results", json.dumps({"roll_id": "R-7777", "position_m": 3,
                                                             "quantity": "porosity_hg", "value": 30, "unit": "%"}))
        pub.publish("pilot/pilot-1/lab/results", b"{not json")
        pub.wait_all_acked(20)
        for _ in range(400):
            if lab.mqtt.counters["acked"] >= 4:
                break
            await asyncio.sleep(0.05)
        assert lab.mqtt.counters["acked"] == 4 and lab.mqtt.counters["handler_errors"] == 0
        rows = lab.store.results()
        assert sorted((r["quantity"], r["value"], r["unit"], r["line_id"]) for r in rows) == [
            ("adhesion_peel", 21.0, "N/m", "pilot-1"), ("porosity_hg", 31.5, "percent", "pilot-1")]
        assert {r["source"] for r in rows} == {"lab-mqtt"}
        assert lab.counts["duplicates"] == 2
        dead = [x for x in d.store.dead_letters(50) if x["connector"] == "lab-mqtt"]
        assert sorted(x["reason_code"] for x in dead) == ["malformed_payload", "unknown_roll"]
        assert all(x["source"] == "mqtt" and "mqtt:pilot/pilot-1/lab/results" in x["reason"] for x in dead)
    finally:
        pub.close()
        await lab.stop()
        d.store.close()
