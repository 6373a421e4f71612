"""Setpoint write-back over MQTT through the feedback service's approval path (twin/feedback.py `_approve`):
a controller stand-in on a real mosquitto that echoes the value (applied, audited), one that does not (failed,
with the reason), and a Sparkplug B device (pysparkplug) written with a DCMD and confirmed by its DDATA."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pysparkplug as spb
import pytest

from connectors.mqtt.writes import SetpointWriteError
from core.samples import now_ns, ns_to_iso
from tests.conftest import Mosquitto
from tests.mqtt.conftest import running_twin, values, wait_for
from twin.feedback import Proposal, Setting

pytestmark = pytest.mark.integration

SETPOINT = "pilot/{line}/calendering/gap_setpoint"
COMMAND = "ctrl/pilot-1/calender/gap_setpoint/set"
WRITES = {"writes": {"confirm_timeout_s": 1.5, "setpoints": [
    {"address": SETPOINT, "command_topic": "ctrl/{line}/calender/gap_setpoint/set"}]}}


class Controller:
    """A controller stand-in: takes commands on COMMAND and (if it echoes) publishes the value it now holds
    on the setpoint's own topic, the way a PLC gateway reports its setpoints."""

    def __init__(self, port: int, echo: bool) -> None:
        self.echo = echo
        self.commands: list[dict] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"plc-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(COMMAND, 1)
        self.client.loop_start()
        assert self.subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        cmd = json.loads(msg.payload)
        self.commands.append(cmd)
        if self.echo:
            client.publish("pilot/pilot-1/calendering/gap_setpoint",
                           json.dumps({"ts": ns_to_iso(now_ns()), "value": cmd["value"]}), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def propose(daemon, current: float, proposed: float) -> Proposal:
    """A proposal as the feedback service makes it (the optimizer's part is tested in tests/feedback)."""
    svc = daemon.extensions["feedback"]
    p = Proposal(id=uuid.uuid4().hex[:12], line_id="pilot-1", created_ns=now_ns(), model_version="test",
                 settings=[Setting("gap", "calendering.gap_setpoint", current, proposed, "um")], predicted={},
                 predicted_now={}, reasons=["test: porosity above target"], inputs={}, gain={}, raw_now={},
                 raw_new={}, measured_before={})
    svc.proposals[p.id] = p
    svc.order.append(p.id)
    await svc._record(p, "proposed")
    return p


async def test_approved_proposal_is_written_and_confirmed_by_the_echo(tmp_path: Path, mosquitto: Mosquitto) -> None:
    plc = Controller(mosquitto.port, echo=True)
    async with running_twin(tmp_path, mosquitto.port, WRITES, {}, feedback=True) as daemon:
        conn = daemon.connectors[0]
        svc = daemon.extensions["feedback"]
        p = await propose(daemon, 100.0, 104.5)
        p = await svc.approve(p.id, "engineer", "go")
        assert p.state == "applied", p.error
        assert plc.commands and plc.commands[-1]["value"] == 104.5 and set(plc.commands[-1]) == {"value", "ts", "id"}
        w = p.writes[0]
        assert w["ok"] and w["node"] == SETPOINT and w["written"] == 104.5 and w["readback"] == 104.5
        assert len(conn.write_log) == 1 and conn.write_log[0].ok and conn.write_log[0].actor == "engineer"
        kinds = [a["kind"] for a in daemon.store.audit(ref=p.id)]
        assert kinds == ["proposal.applied", "proposal.approved", "proposal.proposed"]
        # the echo is also a reading of the setpoint tag
        assert await wait_for(lambda: [v for _, v, _ in values(daemon, "calendering.gap_setpoint")] == [104.5])
        # a second write reports the echoed value as the previous one
        p2 = await svc.approve((await propose(daemon, 104.5, 108.0)).id, "engineer")
        assert p2.state == "applied" and p2.writes[0]["previous"] == 104.5
        # outside the allow-list: refused before anything is published
        n = len(plc.commands)
        with pytest.raises(SetpointWriteError) as err:
            await conn.write_setpoint("pilot/{line}/calendering/line_load_setpoint", 1.0)
        assert err.value.code == "not_allowed" and len(plc.commands) == n
        with pytest.raises(SetpointWriteError) as err:
            await conn.write_setpoint(SETPOINT, float("nan"))
        assert err.value.code == "type" and len(plc.commands) == n
    plc.close()


async def test_a_controller_that_does_not_echo_fails_the_proposal(tmp_path: Path, mosquitto: Mosquitto) -> None:
    plc = Controller(mosquitto.port, echo=False)
    async with running_twin(tmp_path, mosquitto.port, WRITES, {}, feedback=True) as daemon:
        svc = daemon.extensions["feedback"]
        p = await svc.approve((await propose(daemon, 100.0, 96.0)).id, "engineer")
        assert p.state == "failed"
        assert "did not echo it on pilot/pilot-1/calendering/gap_setpoint within 1.5 s" in (p.error or ""), p.error
        assert plc.commands and plc.commands[-1]["value"] == 96.0  # it was published (and acknowledged by the broker)
        assert p.writes == [{"tag": "calendering.gap_setpoint", "requested": 96.0, "ok": False,
                             "error": p.error.removeprefix("gap: ")}]
        audit = daemon.store.audit(ref=p.id)
        assert audit[0]["kind"] == "proposal.failed" and "did not echo" in audit[0]["body"]["error"]
        assert daemon.connectors[0].counters.extra["write_failures"] == 1
    plc.close()


async def test_sparkplug_setpoint_is_written_with_dcmd(tmp_path: Path, mosquitto: Mosquitto) -> None:
    group, edge, device = "Plant1", "edge1", "calender"
    address = f"{group}/{edge}/{device}/GapSetpoint"
    extra = {"sparkplug": {"enabled": True, "groups": [group]},
             "writes": {"confirm_timeout_s": 3.0, "setpoints": [{"address": address, "sparkplug": True}]}}
    sources = {"calendering.gap_setpoint": [{"mqtt": address, "unit": "um"}]}
    dcmds: list[spb.Message] = []

    def on_dcmd(node: spb.EdgeNode, message: spb.Message) -> None:
        dcmds.append(message)
        for m in message.payload.metrics:
            if m.name == "GapSetpoint":  # the device applies it and reports it in its DDATA
                node.update_device(device, [spb.Metric(timestamp=spb.get_current_timestamp(), name="GapSetpoint",
                                                       datatype=spb.DataType.FLOAT, value=m.value, alias=3)])

    async with running_twin(tmp_path, mosquitto.port, extra, sources, feedback=True) as daemon:
        node = spb.EdgeNode(group, edge, [], client=spb.Client(client_id="edge-w"))
        node.register(spb.Device(device, [spb.Metric(timestamp=spb.get_current_timestamp(), name="GapSetpoint",
                                                     datatype=spb.DataType.FLOAT, value=100.0, alias=3)],
                                 cmd_callback=on_dcmd))
        await asyncio.to_thread(node.connect, "127.0.0.1", port=mosquitto.port)
        assert await wait_for(lambda: values(daemon, "calendering.gap_setpoint"))
        svc = daemon.extensions["feedback"]
        p = await svc.approve((await propose(daemon, 100.0, 103.25)).id, "engineer")
        assert p.state == "applied", p.error
        assert p.writes[0]["node"] == address and p.writes[0]["readback"] == pytest.approx(103.25)
        cmd = dcmds[-1]
        assert str(cmd.topic) == f"spBv1.0/{group}/DCMD/{edge}/{device}"
        assert [(m.name, m.alias, m.datatype, m.value) for m in cmd.payload.metrics] == [
            ("GapSetpoint", 3, spb.DataType.FLOAT, pytest.approx(103.25))]
        assert daemon.connectors[0].write_log[-1].data_type == "FLOAT"
        await asyncio.to_thread(node.disconnect)
