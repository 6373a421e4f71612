"""The suite's QoS-1 publisher (twin/testing/publisher.py) never counts a message paho dropped.

paho holds every unacknowledged QoS-1 message under one of 65,535 message ids; with all ids taken its
``publish`` returns MQTT_ERR_QUEUE_SIZE and drops the message. The 100k fuzz run met this on a loaded
machine: its generator outran paho's network thread, 65,535 messages were dropped in a row, the
publisher counted them as published and waited for acknowledgements that could never come (and the
store missed what the broker never got). Here the broker is paused (SIGSTOP) so nothing is
acknowledged, which makes the limits bite deterministically; then it resumes and every message
published must be acknowledged by it.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest

from tests.conftest import Mosquitto
from twin.testing.publisher import MAX_MESSAGE_IDS, AckingPublisher

pytestmark = pytest.mark.integration


def _paused(broker: Mosquitto, seconds: float) -> threading.Timer:
    """Pause the broker now (no PUBACKs) and resume it after ``seconds``."""
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGSTOP)
    t = threading.Timer(seconds, broker.proc.send_signal, args=(signal.SIGCONT,))
    t.start()
    return t


def _run(broker: Mosquitto, pub: AckingPublisher, n: int, pause_s: float) -> None:
    timer = _paused(broker, pause_s)
    try:
        for i in range(n):
            pub.publish("pilot/pilot-1/flow", str(i))
        pub.wait_all_acked(60)
    finally:
        timer.join()
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGCONT)
        pub.close()
    assert (pub.published, pub.acked) == (n, n)


def test_publish_waits_when_max_outstanding_are_unacknowledged(mosquitto: Mosquitto) -> None:
    pub = AckingPublisher(mosquitto.port, "flow-window", max_outstanding=100, max_inflight=20)
    _run(mosquitto, pub, 300, pause_s=0.5)
    assert pub.flow_waits >= 1, "publish() never waited although the broker acknowledged nothing for 0.5 s"


def test_a_message_paho_refuses_is_published_again_not_counted_as_sent(mosquitto: Mosquitto) -> None:
    # paho's own queue limit gives the same MQTT_ERR_QUEUE_SIZE refusal as exhausted message ids (its
    # setter refuses an open connection, hence the attribute; the publisher itself sets no limit)
    pub = AckingPublisher(mosquitto.port, "flow-refused", max_inflight=20)
    pub.client._max_queued_messages = 100
    _run(mosquitto, pub, 300, pause_s=0.5)
    assert pub.flow_waits >= 1


def test_max_outstanding_stays_below_the_message_ids() -> None:
    with pytest.raises(ValueError, match="max_outstanding"):
        AckingPublisher(1, max_outstanding=MAX_MESSAGE_IDS)


@pytest.mark.slow
def test_more_unacknowledged_messages_than_message_ids(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The real limit: 70,000 messages while the broker acknowledges nothing for 3 s."""
    pub = AckingPublisher(mosquitto.port, "flow-ids")
    _run(mosquitto, pub, MAX_MESSAGE_IDS + 4_465, pause_s=3.0)
