"""`twin init --mqtt`: listen to a real mosquitto, map the topics, write and check the config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import free_port
from tests.init.test_quickstart_foreign_opcua import ROOT, TWIN, get, twin, wait_for

pytestmark = pytest.mark.integration

TOPICS = {  # a foreign plant's own topics and units, in the payload format the MQTT connector reads
    "acme/l1/Calender/RollGapActual": (0.085, "mm"),
    "acme/l1/Calender/RollTemp": (122.0, "°F"),
    "acme/l1/Calender/LineSpeed": (19.685, "ft/min"),
    "acme/l1/QCS/CoatThicknessIn": (100.0, "µm"),
    "acme/l1/QCS/CoatWeight": (228.0, "g/m²"),
    "acme/l1/QCS/Porosity": (30.9, "%"),
}


class Publisher(threading.Thread):
    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.halt = threading.Event()

    def run(self) -> None:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="acme-plc")
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        while not self.halt.is_set():
            for topic, (value, unit) in TOPICS.items():
                c.publish(topic, json.dumps({"value": value, "unit": unit}), qos=1)
            c.publish("acme/l1/Misc/Counter", "17", qos=1)  # a plain number: mapped with format = "number"
            c.publish("acme/l1/Misc/Blob", b"\x00\x01\xfe", qos=1)  # binary: nothing reads it
            time.sleep(0.2)
        c.loop_stop()
        c.disconnect()


def test_init_listens_and_maps_mqtt_topics(mosquitto, tmp_path: Path) -> None:
    pub = Publisher(mosquitto.port)
    pub.start()
    try:
        res = twin(["init", "--mqtt", f"mqtt://127.0.0.1:{mosquitto.port}", "--listen", "2", "--out", "twin.toml",
                    "--yes", "--no-feedback", "--port", str(free_port())], tmp_path)
        assert res.returncode == 0, res.stderr
        assert "1 topics with other payloads" in res.stderr  # acme/l1/Misc/Blob, reported, not mapped
        tm = tomllib.loads((tmp_path / "tagmap.toml").read_text())
        by_topic = {t["sources"][0]["mqtt"]: t for t in tm["tags"]}
        assert set(by_topic) == set(TOPICS) | {"acme/l1/Misc/Counter"}
        temp = by_topic["acme/l1/Calender/RollTemp"]
        assert (temp["parameter"], temp["canonical_unit"], temp["sources"][0]["unit"]) == \
            ("CalenderRollTemperature", "degC", "degF")
        assert by_topic["acme/l1/Calender/RollGapActual"]["id"] == "calendering.gap_actual"
        cfg = tomllib.loads((tmp_path / "twin.toml").read_text())
        conn = cfg["connectors"][0]
        assert conn["kind"] == "mqtt" and conn["topics"] == ["acme/#"] and conn["missing_timestamp"] == "receive_time"
        assert conn["payloads"] == [{"topic": "acme/l1/Misc/Counter", "format": "number"}]
        assert cfg["predictor"]["enabled"] and not cfg["feedback"]["enabled"]
        res = twin(["check-config", "twin.toml", "--connect"], tmp_path)
        assert res.returncode == 0, res.stderr
        assert "ok connector mqtt:broker" in res.stderr
    finally:
        pub.halt.set()
        pub.join(5)


@pytest.mark.slow
def test_twin_runs_on_the_mqtt_config_init_wrote(mosquitto, tmp_path: Path) -> None:
    pub = Publisher(mosquitto.port)
    pub.start()
    api_port = free_port()
    try:
        res = twin(["init", "--mqtt", f"mqtt://127.0.0.1:{mosquitto.port}", "--listen", "2", "--out", "twin.toml",
                    "--yes", "--no-feedback", "--port", str(api_port)], tmp_path)
        assert res.returncode == 0, res.stderr
        proc = subprocess.Popen(TWIN + ["run", "--config", "twin.toml"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=(tmp_path / "twin.log").open("w"), env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            def latest() -> dict | None:
                rows = {r["tag"]: r for r in get(api_port, "/api/v1/latest")}
                return rows if {"calendering.roll_temperature", "calendering.gap_actual"} <= set(rows) else None

            rows = wait_for("stored values", latest, 60, proc)
            assert rows["calendering.roll_temperature"]["value"] == pytest.approx(50.0, abs=0.01)
            assert rows["calendering.gap_actual"]["value"] == pytest.approx(85.0, abs=0.01)
            preds = wait_for("a prediction", lambda: get(api_port, "/api/v1/predictions/latest")["predictions"], 60,
                             proc)
            assert preds[0]["line_inputs"]["roll_speed"] == pytest.approx(6.0, abs=0.01)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    finally:
        pub.halt.set()
        pub.join(5)
