"""How mosquitto (2.0.11 here) treats a shared subscription when a member dies: the facts the
scale-out design rests on (docs/deploy.md), pinned with plain MQTT clients and no twin.

Three subscribers of ``$share/g/pilot/#`` (MQTT 5, QoS 1, manual acknowledgement); one of them never
acknowledges and is killed with SIGKILL; more messages follow; then it comes back under its client id.
- With a persistent session (session expiry 300 s), the dead member's unacknowledged messages, and its
  round-robin share of what was published while it was away, stay in its session: the other members
  do not get them. The returning member does, so nothing is lost.
- With session expiry 0 (the session ends with the connection), its unacknowledged messages are
  discarded: they are lost, not re-routed to the other members (MQTT 5 says a server SHOULD re-route;
  mosquitto does not).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import Mosquitto

pytestmark = pytest.mark.integration

SUB = r"""
import sys, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, cid, expiry, ack = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "ack"
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5, manual_ack=True)
def on_connect(cl, u, f, rc, p):
    print("CONNECTED", flush=True)
    cl.subscribe("$share/g/pilot/#", qos=1)
def on_subscribe(cl, u, mid, rcs, p):
    print("SUBSCRIBED", flush=True)
def on_message(cl, u, m):
    print("MSG", m.topic, m.payload.decode(), flush=True)
    if ack:
        cl.ack(m.mid, m.qos)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
props = Properties(PacketTypes.CONNECT)
props.SessionExpiryInterval = expiry
c.connect("127.0.0.1", port, 30, clean_start=False, properties=props)
c.loop_forever()
"""


class Sub:
    def __init__(self, port: int, cid: str, expiry: int, ack: bool, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen([sys.executable, "-c", SUB, str(port), cid, str(expiry), "ack" if ack else "no"],
                                     stdout=open(out, "w"))  # noqa: SIM115 - the child owns it
        deadline = time.monotonic() + 20
        while "SUBSCRIBED" not in out.read_text():
            assert time.monotonic() < deadline, "subscriber did not subscribe"
            time.sleep(0.05)

    def got(self) -> list[int]:
        return [int(line.split()[2]) for line in self.out.read_text().splitlines() if line.startswith("MSG")]

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def publish(port: int, first: int, n: int) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{first}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    for i in range(first, first + n):
        c.publish(f"pilot/line-{i % 5}/batch", str(i), qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def settle(subs: list[Sub], total: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sum(len(s.got()) for s in subs) < total:
        time.sleep(0.05)
    time.sleep(0.5)


@pytest.mark.parametrize("expiry", [300, 0])
def test_a_dead_members_messages_stay_with_its_session(expiry: int, tmp_path: Path, mosquitto: Mosquitto) -> None:
    subs = [Sub(mosquitto.port, "w1", 300, True, tmp_path / "w1"),
            Sub(mosquitto.port, "w2", 300, True, tmp_path / "w2"),
            Sub(mosquitto.port, "w3", expiry, False, tmp_path / "w3")]
    back = None
    try:
        publish(mosquitto.port, 0, 30)
        settle(subs, 30)
        held = subs[2].got()
        assert len(held) == 10  # round-robin: one message in three, never acknowledged
        subs[2].kill()
        time.sleep(1.0)
        publish(mosquitto.port, 30, 30)
        settle(subs[:2], 50)
        others = set(subs[0].got()) | set(subs[1].got())
        assert not others & set(held)  # never re-routed to the live members
        back = Sub(mosquitto.port, "w3", 300, True, tmp_path / "w3-back")
        time.sleep(1.5)
        returned = set(back.got())
        if expiry:
            assert set(held) <= returned  # the session kept them: redelivered on return
            assert others | returned == set(range(60))  # nothing lost
            assert len(others) < 50  # its share of the later messages waited for it too
        else:
            assert not set(held) & (others | returned)  # discarded with the session: lost
            assert others | returned == set(range(60)) - set(held)
    finally:
        for s in [*subs, back]:
            if s is not None and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait(10)
