"""Acceptance: docs/quickstart-real-line.md's MQTT steps against a line that speaks Sparkplug B, plain
numbers and custom JSON fields on a real mosquitto.

The Sparkplug B edge node is pysparkplug's EdgeNode (the library's encoder and birth sequence, not our
code), with its own metric names and units stated in each metric's description (RollGap [mm], RollTemp
[degF], LineLoad [N/mm], ThicknessIn [µm], a porosity gauge in %); beside it a plain paho client publishes
plain numbers (the web speed) and custom JSON fields (``{"v": 228, "t": "2026-12-03 10:00:00", "u":
"g/m²"}``, a time without offset). The test runs the quickstart's commands as written (each is checked
to appear in the document; the broker's address, the API port and a shorter listen are put in), edits
no file, and reads stored values in canonical units, predictions and the feedback service's status
through the API. While the twin runs, the edge node skips a sequence number: the twin asks it for a
rebirth (NCMD Node Control/Rebirth, seen by the edge node and counted in /healthz), the node rebirths,
and the twin keeps storing its values.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import tomllib
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

import tests.mqtt.conftest  # noqa: F401 - the paho-2 shim for pysparkplug's Client
from tests.conftest import Mosquitto, free_port
from tests.init.test_quickstart_foreign_opcua import ROOT, TWIN, get, step, twin, wait_for

spb = pytest.importorskip("pysparkplug")

pytestmark = pytest.mark.integration

GROUP, EDGE = "Plant7", "line2"


def _metric(name: str, value: float, alias: int, desc: str) -> Any:
    return spb.Metric(timestamp=spb.get_current_timestamp(), name=name, datatype=spb.DataType.DOUBLE, value=value,
                      alias=alias, metadata=spb.Metadata(description=desc))


# device -> metric -> (alias, value, description with the unit in brackets)
SPARKPLUG = {
    "calender": {"RollGap": (10, 0.085, "roll gap, actual [mm]"), "RollGapSP": (11, 0.085, "roll gap setpoint [mm]"),
                 "RollTemp": (12, 122.0, "roll surface temperature [degF]"),
                 "LineLoad": (13, 1300.0, "line load [N/mm]")},
    "qcs": {"ThicknessIn": (20, 100.0, "thickness gauge, incoming web [µm]"),
            "Porosity": (21, 30.9, "online porosity gauge after the calender [%]")},
}
PLAIN = {"acme/l2/calender/WebSpeed": "6.0", "acme/l2/calender/RollForce": "12.5"}  # plain numbers


def _json_topics() -> dict[str, bytes]:
    t = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")  # no offset: the plant writes UTC
    return {"acme/l2/coater/CoatWeight": json.dumps({"v": 228.0, "t": t, "u": "g/m²"}).encode(),
            "acme/l2/qcs/ThkOut": json.dumps({"v": 71.0, "t": t}).encode()}


class Line:
    """The plant: a pysparkplug edge node with two devices (DDATA every 0.3 s, rebirth on NCMD) and a paho
    client publishing plain numbers and custom JSON."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.rebirths = 0
        self.rebirth_requests = 0
        self.node = spb.EdgeNode(GROUP, EDGE, [], client=spb.Client(client_id="line2-edge"), cmd_callback=self._cmd)
        for dev, metrics in SPARKPLUG.items():
            self.node.register(spb.Device(dev, [_metric(n, v, a, d) for n, (a, v, d) in metrics.items()]))
        self.node.connect("127.0.0.1", port=port)
        self.plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="acme-l2-plc")
        self.plain.connect("127.0.0.1", port)
        self.plain.loop_start()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _cmd(self, node: Any, message: Any) -> None:
        if any(m.name == "Node Control/Rebirth" and m.value for m in message.payload.metrics):
            self.rebirth_requests += 1
            threading.Thread(target=self._rebirth, daemon=True).start()  # not on paho's own thread

    def _rebirth(self) -> None:
        with self.lock:
            self.node.disconnect()
            self.node.connect("127.0.0.1", port=self.port)
            self.rebirths += 1

    def skip_sequence_number(self) -> None:
        with self.lock:
            _ = self.node._seq  # the number of a message that was "lost"

    def _loop(self) -> None:
        while not self.halt.wait(0.3):
            with self.lock:
                for dev, metrics in SPARKPLUG.items():
                    self.node.update_device(dev, [_metric(n, v, a, d) for n, (a, v, d) in metrics.items()])
            for topic, body in {**PLAIN, **_json_topics()}.items():
                self.plain.publish(topic, body, qos=1)

    def close(self) -> None:
        self.halt.set()
        self.thread.join(5)
        with self.lock:
            self.node.disconnect()
        self.plain.disconnect()
        self.plain.loop_stop()


def health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:  # 503 while degraded: the body is the same report
        return json.loads(err.read())


def sparkplug_status(port: int) -> dict[str, Any]:
    return next(c for c in health(port)["connectors"] if c.get("sparkplug"))["sparkplug"]


def test_quickstart_against_a_sparkplug_b_line_with_plain_and_json_topics(mosquitto: Mosquitto,
                                                                          tmp_path: Path) -> None:
    work = tmp_path / "site"
    work.mkdir()
    api_port = free_port()
    line = Line(mosquitto.port)
    try:
        # step 3 (MQTT): listen, map, write; the edge node was born before init listened: init asks it to rebirth
        cmd = step('twin init --mqtt "$BROKER" --listen 10 --out twin.toml --yes --limit gap=0.04:0.2mm --port 8000')
        args = cmd.split()[1:]
        args[args.index('"$BROKER"')] = f"mqtt://127.0.0.1:{mosquitto.port}"
        args[args.index("8000")] = str(api_port)
        args[args.index("10")] = "4"
        res = twin(args, work)
        assert res.returncode == 0, res.stderr
        assert line.rebirths >= 1  # discovery asked for the births it had not seen
        assert f"run --config {work / 'twin.toml'}" in res.stdout
        cfg = tomllib.loads((work / "twin.toml").read_text())
        tm = tomllib.loads((work / "tagmap.toml").read_text())
        by_src = {t["sources"][0]["mqtt"]: t for t in tm["tags"]}
        spb_prefix = f"{GROUP}/{EDGE}"
        gap = by_src[f"{spb_prefix}/calender/RollGap"]
        assert (gap["id"], gap["parameter"], gap["role"], gap["canonical_unit"], gap["sources"][0]["unit"]) == \
            ("calendering.gap_actual", "CalenderGap", "actual", "um", "mm")
        temp = by_src[f"{spb_prefix}/calender/RollTemp"]
        assert (temp["parameter"], temp["canonical_unit"], temp["sources"][0]["unit"]) == \
            ("CalenderRollTemperature", "degC", "degF")
        assert by_src[f"{spb_prefix}/calender/RollGapSP"]["role"] == "setpoint"
        assert by_src[f"{spb_prefix}/calender/LineLoad"]["parameter"] == "CalenderPressure"
        assert by_src[f"{spb_prefix}/qcs/ThicknessIn"]["parameter"] == "DryCoatingThickness"
        assert by_src[f"{spb_prefix}/qcs/Porosity"]["id"] == "calendering.porosity_online"
        assert by_src["acme/l2/calender/WebSpeed"]["parameter"] == "CalenderingSpeed"
        assert by_src["acme/l2/coater/CoatWeight"]["parameter"] == "ArealLoading"
        assert by_src["acme/l2/qcs/ThkOut"]["parameter"] == "CalenderedCoatingThickness"
        # the connector: Sparkplug host, payload mappings for the plain numbers and the custom JSON, DCMD writes
        conn = cfg["connectors"][0]
        assert conn["kind"] == "mqtt" and conn["topics"] == ["acme/#"]
        assert conn["sparkplug"]["enabled"] and conn["sparkplug"]["groups"] == [GROUP]
        maps = {p["topic"]: p for p in conn["payloads"]}
        assert maps["acme/l2/calender/+"]["format"] == "number"
        assert (maps["acme/l2/coater/CoatWeight"]["value"], maps["acme/l2/coater/CoatWeight"]["timestamp"],
                maps["acme/l2/coater/CoatWeight"]["unit_path"], maps["acme/l2/coater/CoatWeight"]["timezone"]) == \
            ("v", "t", "u", "UTC")
        assert conn["writes"]["setpoints"] == [{"address": f"{spb_prefix}/calender/RollGapSP", "sparkplug": True,
                                                "min": 0.04, "max": 0.2}]
        assert cfg["predictor"]["enabled"] and cfg["feedback"]["enabled"]
        assert cfg["predictor"]["inputs"]["gap"] == "CalenderGap/actual"

        # step 4: check it, with the connections
        res = twin(step("twin check-config twin.toml --connect").split()[1:], work)
        assert res.returncode == 0, res.stderr
        assert "ok connector mqtt:broker" in res.stderr

        # step 5: run the twin
        t_started = time.monotonic()
        proc = subprocess.Popen(TWIN + step("twin run --config twin.toml").split()[1:], cwd=work,
                                stdout=subprocess.DEVNULL, stderr=(tmp_path / "twin.log").open("w"),
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            def latest() -> dict[str, Any] | None:
                rows = {r["tag"]: r for r in get(api_port, "/api/v1/latest")}
                need = ("calendering.gap_actual", "calendering.roll_temperature", "calendering.roll_speed",
                        "coating.areal_loading", "coating.dry_thickness", "calendering.line_load",
                        "calendering.porosity_online", "calendering.thickness_after", "calendering.roll_force")
                return rows if all(k in rows for k in need) else None

            rows = wait_for("stored values", latest, 60, proc)
            # canonical units: 0.085 mm -> 85 um; 122 degF -> 50 degC; 228 g/m² -> 22.8 mg/cm²
            assert (rows["calendering.gap_actual"]["unit"], rows["calendering.gap_actual"]["value"]) == \
                ("um", pytest.approx(85.0))
            assert rows["calendering.roll_temperature"]["value"] == pytest.approx(50.0)
            assert rows["coating.areal_loading"]["value"] == pytest.approx(22.8)
            assert rows["calendering.roll_speed"]["value"] == pytest.approx(6.0)
            assert rows["calendering.line_load"]["value"] == pytest.approx(1300.0)
            assert rows["calendering.thickness_after"]["value"] == pytest.approx(71.0)
            assert rows["calendering.roll_force"]["value"] == pytest.approx(12.5)  # the second plain number
            # the custom JSON's own timestamp ("t", whole seconds, UTC), not the receive time
            t_json = datetime.fromisoformat(rows["coating.areal_loading"]["ts"].replace("Z", "+00:00"))
            assert t_json.microsecond == 0 and abs((datetime.now(UTC) - t_json).total_seconds()) < 30
            # nothing the mappings read became a dead letter (data before the twin's first birth may)
            codes = {d["reason_code"] for d in get(api_port, "/api/v1/dead-letters?limit=1000")}
            assert codes <= {"sparkplug_no_birth"}, codes

            step("curl -s http://127.0.0.1:8000/api/v1/predictions/latest")
            preds = wait_for("a prediction", lambda: get(api_port, "/api/v1/predictions/latest")["predictions"], 60,
                             proc)
            pred = next(p for p in preds if p["line_id"] == "pilot-1")
            assert pred["line_inputs"]["gap"] == pytest.approx(85.0)
            assert pred["line_inputs"]["roll_temperature"] == pytest.approx(50.0)
            assert 0.0 < pred["mean"]["porosity"] < 1.0

            step("curl -s http://127.0.0.1:8000/api/v1/feedback/status")
            status = wait_for("a feedback decision", lambda: get(api_port, "/api/v1/feedback/status")["decisions"],
                              60, proc)
            assert "pilot-1" in status and status["pilot-1"]["reasons"] is not None
            assert get(api_port, "/api/v1/feedback/status")["limits"]["gap"] == [40.0, 200.0]

            # a lost Sparkplug message: the twin asks for a rebirth and keeps storing after it
            step("curl -s http://127.0.0.1:8000/healthz")
            before = sparkplug_status(api_port)
            asked, reborn = line.rebirth_requests, line.rebirths
            # the twin asked for a rebirth at start-up (data before a birth); requests are at most one per
            # rebirth_min_interval_s (5 s) per node
            time.sleep(max(0.0, 6.0 - (time.monotonic() - t_started)))
            line.skip_sequence_number()
            wait_for("the twin's rebirth request", lambda: line.rebirth_requests > asked and line.rebirths > reborn,
                     20, proc)
            after = sparkplug_status(api_port)
            assert after["sparkplug_seq_gaps"] == before["sparkplug_seq_gaps"] + 1
            assert after["sparkplug_rebirth_requests"] == before["sparkplug_rebirth_requests"] + 1
            t_reborn = datetime.now(UTC)
            wait_for("values stored after the rebirth", lambda: datetime.fromisoformat(
                get(api_port, "/api/v1/latest?tag=calendering.gap_actual")[0]["ts"].replace("Z", "+00:00"))
                > t_reborn, 20, proc)
            final = sparkplug_status(api_port)
            assert final["sparkplug_births"] >= before["sparkplug_births"] + 3  # NBIRTH and both DBIRTHs again
            assert not final["nodes"][spb_prefix]["awaiting_rebirth"]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait(5)
        assert rc == 0, (tmp_path / "twin.log").read_text()[-3000:]
    finally:
        line.close()
