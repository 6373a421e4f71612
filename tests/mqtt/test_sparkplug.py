"""Sparkplug B over a real mosquitto: an edge node from pysparkplug (EdgeNode, Device, Client: the library's
encoder, not ours) publishes NBIRTH/DBIRTH/DDATA; the twin stores the values in canonical units, decodes
alias-only data with the births, requests a rebirth on a sequence gap and consumes the node's rebirth,
marks the metrics stale on NDEATH, and announces itself with a retained STATE."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pysparkplug as spb
import pytest

from tests.conftest import Mosquitto
from tests.mqtt.conftest import Watcher, running_twin, values, wait_for

pytestmark = pytest.mark.integration

GROUP, EDGE, DEVICE = "Plant1", "edge1", "calender"
SOURCES = {
    "calendering.gap_actual": [{"mqtt": f"{GROUP}/{EDGE}/{DEVICE}/GapActual", "unit": "mm"}],
    "calendering.roll_temperature": [{"mqtt": f"{GROUP}/{EDGE}/{DEVICE}/RollTemp", "unit": "degF"}],
    "calendering.roll_speed": [{"mqtt": f"{GROUP}/{EDGE}/LineSpeed", "unit": "m/s"}],
}
SPARKPLUG = {"sparkplug": {"enabled": True, "groups": [GROUP], "host_id": "twin-host", "rebirth_min_interval_s": 0.0}}


def metric(name: str, value: float, alias: int, dtype: spb.DataType = spb.DataType.DOUBLE,
           ts: int | None = None) -> spb.Metric:
    return spb.Metric(timestamp=ts or spb.get_current_timestamp(), name=name, datatype=dtype, value=value,
                      alias=alias)


class EdgeNodeStandIn:
    """pysparkplug's EdgeNode with one device; rebirths by reconnecting (the library's birth sequence)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.commands: list[spb.Message] = []
        self.rebirth_asked = threading.Event()
        self.client = spb.Client(client_id="edge1-client")
        self.node = spb.EdgeNode(GROUP, EDGE, [metric("LineSpeed", 0.05, 1, spb.DataType.FLOAT)], client=self.client,
                                 cmd_callback=self._on_cmd)
        self.node.register(spb.Device(DEVICE, [metric("GapActual", 0.0612, 10), metric("RollTemp", 140.0, 11)]))

    def _on_cmd(self, node: spb.EdgeNode, message: spb.Message) -> None:
        self.commands.append(message)
        if any(m.name == "Node Control/Rebirth" and m.value for m in message.payload.metrics):
            self.rebirth_asked.set()

    def connect(self) -> None:
        self.node.connect("127.0.0.1", port=self.port)

    def rebirth(self) -> None:
        self.node.disconnect()
        self.connect()


async def test_sparkplug_edge_node_births_data_rebirth_and_death(tmp_path: Path, mosquitto: Mosquitto) -> None:
    state = Watcher(mosquitto.port, ["spBv1.0/STATE/#"])
    async with running_twin(tmp_path, mosquitto.port, SPARKPLUG, SOURCES) as daemon:
        conn = daemon.connectors[0]
        edge = EdgeNodeStandIn(mosquitto.port)
        await asyncio.to_thread(edge.connect)
        # births: values in canonical units (mm -> um, degF -> degC, m/s -> m/min) at the metrics' timestamps
        assert await wait_for(lambda: values(daemon, "calendering.gap_actual") and
                              values(daemon, "calendering.roll_speed") and values(daemon, "calendering.roll_temperature"))
        birth_ts = edge.node.devices[DEVICE].metrics["GapActual"].timestamp
        assert values(daemon, "calendering.gap_actual") == [(birth_ts * 1_000_000, pytest.approx(61.2), 0)]
        assert values(daemon, "calendering.roll_temperature")[0][1] == pytest.approx(60.0)
        assert values(daemon, "calendering.roll_speed")[0][1] == pytest.approx(3.0, rel=1e-6)  # a FLOAT metric

        # DDATA by name and by alias only (no name, no datatype: decoded with the DBIRTH)
        edge.node.update_device(DEVICE, [metric("GapActual", 0.0625, 10)])
        t_alias = spb.get_current_timestamp() + 5
        edge.client.publish(spb.Message(
            spb.Topic(message_type=spb.MessageType.DDATA, group_id=GROUP, edge_node_id=EDGE, device_id=DEVICE),
            spb.DData(timestamp=t_alias, seq=edge.node._seq,  # the node's own sequence counter
                      metrics=(spb.Metric(timestamp=t_alias, name=None, datatype=spb.DataType.DOUBLE, value=0.063,
                                          alias=10),)), spb.QoS.AT_MOST_ONCE, False))
        assert await wait_for(lambda: [v for _, v, _ in values(daemon, "calendering.gap_actual")]
                              == pytest.approx([61.2, 62.5, 63.0]))
        assert values(daemon, "calendering.gap_actual")[-1][0] == t_alias * 1_000_000
        snap = conn.describe()["sparkplug"]
        assert snap["sparkplug_seq_gaps"] == 0 and snap["sparkplug_rebirth_requests"] == 0
        assert snap["nodes"][f"{GROUP}/{EDGE}"]["online"] and snap["nodes"][f"{GROUP}/{EDGE}"]["devices"] == [DEVICE]

        # the host application's STATE: retained, online
        assert await wait_for(lambda: any(t == "spBv1.0/STATE/twin-host" for t, _, _ in state.got))
        topic, body, _ = [g for g in state.got if g[0] == "spBv1.0/STATE/twin-host"][-1]
        assert json.loads(body)["online"] is True

        # a lost message: the next DDATA's seq skips one -> the twin asks for a rebirth (NCMD)
        _ = edge.node._seq  # the number of the message that was "lost"
        edge.node.update_device(DEVICE, [metric("GapActual", 0.064, 10)])
        assert await asyncio.to_thread(edge.rebirth_asked.wait, 10), "no rebirth request"
        assert conn.describe()["sparkplug"]["sparkplug_seq_gaps"] == 1
        assert conn.describe()["sparkplug"]["sparkplug_rebirth_requests"] == 1
        # the node rebirths (NDEATH, NBIRTH with seq 0, DBIRTH); data after it decode and are stored
        await asyncio.to_thread(edge.rebirth)
        assert await wait_for(lambda: conn.describe()["sparkplug"]["sparkplug_births"] == 4)
        edge.node.update_device(DEVICE, [metric("GapActual", 0.066, 10)])
        assert await wait_for(lambda: values(daemon, "calendering.gap_actual")[-1][1] == pytest.approx(66.0))
        good = [v for _, v, q in values(daemon, "calendering.gap_actual") if q == 0]
        assert good == pytest.approx([61.2, 62.5, 63.0, 64.0, 66.0])
        snap = conn.describe()["sparkplug"]
        assert snap["sparkplug_seq_gaps"] == 1 and snap["sparkplug_rebirth_requests"] == 1
        assert not snap["nodes"][f"{GROUP}/{EDGE}"]["awaiting_rebirth"]

        # NDEATH: every metric of the node repeated once with quality bad (stale); the node is offline
        await asyncio.to_thread(edge.node.disconnect)
        assert await wait_for(lambda: values(daemon, "calendering.gap_actual")[-1][2] == 2)
        assert values(daemon, "calendering.gap_actual")[-1][1] == pytest.approx(66.0)
        assert values(daemon, "calendering.roll_speed")[-1][2] == 2
        assert not conn.describe()["sparkplug"]["nodes"][f"{GROUP}/{EDGE}"]["online"]
        assert daemon.store.dead_letter_count() == 0
    # a graceful host shutdown leaves the retained STATE offline
    assert await wait_for(lambda: json.loads([g for g in state.got if g[0] == "spBv1.0/STATE/twin-host"][-1][1])
                          ["online"] is False)
    state.close()


async def test_data_before_birth_is_a_dead_letter_and_asks_for_a_rebirth(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with running_twin(tmp_path, mosquitto.port, SPARKPLUG, SOURCES) as daemon:
        client = spb.Client(client_id="late-joiner")
        asked = threading.Event()
        client.subscribe(spb.Topic(message_type=spb.MessageType.NCMD, group_id=GROUP, edge_node_id=EDGE),
                         spb.QoS.AT_LEAST_ONCE, lambda c, m: asked.set())
        await asyncio.to_thread(client.connect, "127.0.0.1", port=mosquitto.port)
        await asyncio.sleep(0.3)
        t = spb.get_current_timestamp()
        client.publish(spb.Message(
            spb.Topic(message_type=spb.MessageType.DDATA, group_id=GROUP, edge_node_id=EDGE, device_id=DEVICE),
            spb.DData(timestamp=t, seq=7, metrics=(spb.Metric(timestamp=t, name=None, datatype=spb.DataType.DOUBLE,
                                                              value=0.06, alias=10),)), spb.QoS.AT_MOST_ONCE, False))
        client.publish(spb.Message(spb.Topic(message_type=spb.MessageType.NDATA, group_id=GROUP, edge_node_id=EDGE),
                                   spb.NData(timestamp=t, seq=8, metrics=()), spb.QoS.AT_MOST_ONCE, False))
        assert await asyncio.to_thread(asked.wait, 10)
        assert await wait_for(lambda: daemon.store.dead_letter_count() >= 2)
        codes = {d["reason_code"] for d in daemon.store.dead_letters()}
        assert codes == {"sparkplug_no_birth"}
        # garbage on a Sparkplug topic is a dead letter too, and the connector keeps going
        client._client.publish(f"spBv1.0/{GROUP}/DDATA/{EDGE}/{DEVICE}", b"\x08\xff\xff", qos=1)
        assert await wait_for(lambda: daemon.store.dead_letter_count() >= 3)
        assert values(daemon, "calendering.gap_actual") == []
        await asyncio.to_thread(client.disconnect)
