"""The same simulated line over MQTT, into a real mosquitto, parsed by the MQTT connector's parser."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from connectors.mqtt.payload import parse_payload
from core.samples import Quality, now_ns
from twin.simline.model import SIGNALS, LineSimulation, make_scenario
from twin.simline.mqtt_publisher import MqttLinePublisher, payloads

pytestmark = pytest.mark.integration


def test_payload_schema() -> None:
    sim = LineSimulation(seed=1, scenario=make_scenario("roll_change", start_s=0.05))
    out = None
    for _ in range(72):  # the new roll is in the calender (7 m, 70 s), the gauge 0.5 m on still sees the old one
        out = sim.advance(1.0)
    msgs = dict(payloads(out, 1_700_000_000_123_456_000, "pilot", "pilot-1"))
    assert len(msgs) == len(SIGNALS)
    readings = {}
    for topic, body in msgs.items():
        rs, dead = parse_payload(topic, body, now_ns())
        assert dead == [] and len(rs) == 1
        readings[topic] = rs[0]
    r = readings["pilot/pilot-1/calendering/gap_actual"]
    assert r.unit == "um" and r.quality is Quality.GOOD and r.source_ts_ns == 1_700_000_000_123_456_000
    assert r.roll_id == "R-0002" and r.web_pos_m is not None
    assert readings["pilot/pilot-1/calendering/thickness_after"].roll_id == "R-0001"
    assert readings["pilot/pilot-1/calendering/roll_id"].value == "R-0002"
    assert readings["pilot/pilot-1/calendering/porosity_online"].unit == "percent"


def test_publishes_every_signal_to_a_real_broker(mosquitto) -> None:
    got: dict[str, bytes] = {}
    done = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-sub", protocol=mqtt.MQTTv5)

    def on_message(c, u, msg):
        got[msg.topic] = msg.payload
        if len(got) >= len(SIGNALS):
            done.set()

    sub.on_message = on_message
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("pilot/#", qos=1)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    pub = MqttLinePublisher(port=mosquitto.port, line_id="line-7", rate_hz=2.0)
    pub.start()
    try:
        assert pub.wait_connected(10)
        time.sleep(0.3)
        sim = LineSimulation(seed=2)
        t = now_ns()
        assert pub.publish(sim.advance(0.5), t) == len(SIGNALS)
        assert pub.publish(sim.advance(0.1), t + 100_000_000) == 0  # decimated to 2 Hz
        assert done.wait(10)
    finally:
        pub.stop()
        sub.loop_stop()
        sub.disconnect()
    assert "pilot/line-7/calendering/line_load" in got
    rs, dead = parse_payload("pilot/line-7/calendering/line_load", got["pilot/line-7/calendering/line_load"], now_ns())
    assert not dead and rs[0].unit == "N/mm" and rs[0].value > 200
