"""`twin mqtt discover` against a real mosquitto: retained topics in several payload shapes and a Sparkplug B
edge node (pysparkplug) that is asked for a rebirth; the proposed TOML validates as the connector's
configuration and its mappings parse the payloads that were seen into the right values and timestamps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pysparkplug as spb
import pytest

from connectors.mqtt.config import MqttConnectorConfig
from connectors.mqtt.discover import classify, guess_timestamp
from connectors.mqtt.mapping import PayloadMapper
from tests.conftest import Mosquitto
from tests.mqtt.conftest import ROOT

pytestmark = pytest.mark.integration

RETAINED = {
    "plant/l1/speed": b"12.5",
    "plant/l1/gauge/thickness": b'{"v": 0.0712, "t": "2026-12-03 10:00:00"}',
    "plant/l1/gauge/width": b'{"v": 300.1, "t": "2026-12-03 10:00:01"}',
    "plant/l1/calender": b'{"ts": 1796292000250, "samples": [{"n": "load", "v": 1.2}, {"n": "temp", "v": 80.5}]}',
    "pilot/pilot-1/calendering/gap_actual": b'{"ts": "2026-12-03T09:00:00Z", "value": 61.3}',
    "plant/l1/blob": b"\x00\x01\xfe",
}


class ChattyEdgeNode:
    """A pysparkplug edge node that publishes DDATA every 0.1 s and rebirths (reconnects) when asked."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.rebirths = 0
        self.node = spb.EdgeNode("Plant1", "edge9", [], client=spb.Client(client_id="edge9"), cmd_callback=self._cmd)
        self.node.register(spb.Device("gauge", [spb.Metric(timestamp=spb.get_current_timestamp(), name="Thickness",
                                                           datatype=spb.DataType.DOUBLE, value=80.0, alias=5)]))
        self.node.connect("127.0.0.1", port=port)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _cmd(self, node: spb.EdgeNode, message: spb.Message) -> None:
        threading.Thread(target=self._rebirth, daemon=True).start()  # not on paho's own thread

    def _rebirth(self) -> None:
        with self.lock:
            self.node.disconnect()
            self.node.connect("127.0.0.1", port=self.port)
            self.rebirths += 1

    def _loop(self) -> None:
        while not self.stop.wait(0.1):
            with self.lock:
                self.node.update_device("gauge", [spb.Metric(timestamp=spb.get_current_timestamp(), name="Thickness",
                                                             datatype=spb.DataType.DOUBLE, value=80.5, alias=5)])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        with self.lock:
            self.node.disconnect()


def test_discover_proposes_a_mapping_that_parses_what_it_saw(tmp_path: Path, mosquitto: Mosquitto) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="retainer")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    for topic, body in RETAINED.items():
        pub.publish(topic, body, qos=1, retain=True).wait_for_publish(5)
    edge = ChattyEdgeNode(mosquitto.port)
    out = tmp_path / "proposal.toml"
    try:
        r = subprocess.run([sys.executable, "-m", "twin.cli", "mqtt", "discover", "--port", str(mosquitto.port),
                            "--seconds", "3", "--rebirth", "--output", str(out)], capture_output=True, text=True,
                           timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        edge.close()
        pub.disconnect()
        pub.loop_stop()
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    conf = MqttConnectorConfig.model_validate(tomllib.loads('[[connectors]]\nkind = "mqtt"\n' + text)["connectors"][0])
    by_topic = {m.topic: m for m in conf.payloads}
    assert set(by_topic) == {"plant/l1/speed", "plant/l1/gauge/+", "plant/l1/calender"}, text
    assert by_topic["plant/l1/speed"].format.value == "number"
    g = by_topic["plant/l1/gauge/+"]
    assert (g.value, g.timestamp, g.timestamp_format, g.timezone) == ("v", "t", "auto", "UTC")
    assert "set the zone the source writes them in" in text
    c = by_topic["plant/l1/calender"]
    assert (c.readings, c.address, c.value, c.timestamp, c.timestamp_format) == ("samples", "n", "v", "$.ts", "epoch_ms")
    assert "#   pilot/pilot-1/calendering/gap_actual" in text and "not mapped: plant/l1/blob" in text
    # Sparkplug: the node was asked for a rebirth, its births name the metric and its alias
    assert conf.sparkplug.enabled and conf.sparkplug.groups == ["Plant1"]
    assert edge.rebirths >= 1
    assert '{ mqtt = "Plant1/edge9/gauge/Thickness", unit = "..." }   # DOUBLE, alias 5' in text
    # the proposal parses what was seen
    mapper = PayloadMapper(conf.payloads, conf.missing_timestamp)
    got = {}
    for topic in ("plant/l1/speed", "plant/l1/gauge/thickness", "plant/l1/calender"):
        rs, dead = mapper.parse(mapper.match(topic.encode()), topic.encode(), RETAINED[topic], 123)  # type: ignore[arg-type]
        assert dead == []
        got.update({x.address: (x.value, x.source_ts_ns) for x in rs})
    t10 = int(datetime(2026, 12, 3, 10, tzinfo=UTC).timestamp()) * 10**9
    assert got == {"plant/l1/speed": (12.5, 123), "plant/l1/gauge/thickness": (0.0712, t10),
                   "plant/l1/calender/load": (1.2, 1796292000250 * 10**6),
                   "plant/l1/calender/temp": (80.5, 1796292000250 * 10**6)}


def test_classification_guesses() -> None:
    assert guess_timestamp(1796292000) == ("epoch_s", False)
    assert guess_timestamp(1796292000123) == ("epoch_ms", False)
    assert guess_timestamp("2026-12-03T10:00:00+01:00") == ("auto", False)
    assert guess_timestamp("03.12.2026 10:00:00") == ("%d.%m.%Y %H:%M:%S", True)
    assert guess_timestamp("soon") is None
    assert classify("a/b", b'{"value": 1, "ts": 1796292000}', "batch")[0] == "builtin"
    assert classify("a/batch", json.dumps({"readings": []}).encode(), "batch")[0] == "batch"
    kind, fields, _ = classify("a/b", b'{"temperature": 21.5, "time": "03.12.2026 10:00:00", "status": "good"}')
    assert kind == "json" and fields["value"] == "temperature" and fields["timestamp_format"] == "%d.%m.%Y %H:%M:%S"
    assert fields["quality"] == "status"
    assert classify("a/b", b'{"a": 1, "b": 2}')[0] == "unknown"  # two numbers, no name that says value
    assert classify("a/b", b"[1, 2]")[0] == "unknown"


def test_discover_without_a_broker_exits_2_with_the_reason(tmp_path: Path) -> None:
    from tests.conftest import free_port

    r = subprocess.run([sys.executable, "-m", "twin.cli", "mqtt", "discover", "--port", str(free_port()),
                        "--seconds", "1"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "cannot listen to 127.0.0.1" in r.stderr and r.stdout == ""
