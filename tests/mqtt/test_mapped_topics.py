"""Plain-number and custom-field JSON topics through a real mosquitto into the store: the mapping's value,
timestamp (format and time zone), unit and list paths decide what is stored; the built-in format on the
other topics is unchanged."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import Mosquitto
from tests.mqtt.conftest import running_twin, values, wait_for

pytestmark = pytest.mark.integration

PAYLOADS = {"payloads": [
    {"topic": "plant/l1/speed", "format": "number", "unit": "m/s"},
    {"topic": "plant/l1/gauge/+", "value": "v", "timestamp": "t", "timezone": "Europe/Berlin", "unit": "mm"},
    {"topic": "plant/l1/calender", "readings": "samples", "address": "n", "value": "v", "timestamp": "ms",
     "timestamp_format": "epoch_ms", "unit_path": "u"},
]}
SOURCES = {
    "calendering.roll_speed": [{"mqtt": "plant/l1/speed", "unit": "m/min"}],
    "calendering.thickness_after": [{"mqtt": "plant/l1/gauge/thickness"}],
    "calendering.line_load": [{"mqtt": "plant/l1/calender/load", "unit": "N/mm"}],
    "calendering.roll_temperature": [{"mqtt": "plant/l1/calender/temp"}],
}


def ns(dt: datetime) -> int:
    return int(dt.timestamp()) * 1_000_000_000


async def test_plain_number_and_custom_json_are_stored_with_the_right_timestamps(tmp_path: Path,
                                                                               mosquitto: Mosquitto) -> None:
    async with running_twin(tmp_path, mosquitto.port, PAYLOADS, SOURCES) as daemon:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="field-gateway")
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        before = time.time_ns()
        pub.publish("plant/l1/speed", "0.1", qos=1).wait_for_publish(5)
        after = time.time_ns()
        pub.publish("plant/l1/gauge/thickness", json.dumps({"v": 0.0712, "t": "2026-12-03 10:00:00"}), qos=1)
        t_ms = 1_796_292_000_250
        pub.publish("plant/l1/calender", json.dumps({"samples": [
            {"n": "load", "v": 1.2, "u": "kN/mm", "ms": t_ms},
            {"n": "temp", "v": 176.0, "u": "degF", "ms": t_ms + 100}]}), qos=1)
        pub.publish("pilot/pilot-1/calendering/gap_actual", json.dumps({"ts": "2026-12-03T09:00:00Z", "value": 61.3}),
                    qos=1)  # the built-in format, unchanged
        pub.publish("plant/l1/gauge/thickness", json.dumps({"v": 0.07, "t": "03.12.2026 10:00"}), qos=1)  # bad time
        assert await wait_for(lambda: daemon.store.count() >= 5 and daemon.store.dead_letter_count() >= 1)
        (ts, v, _), = values(daemon, "calendering.roll_speed")
        assert v == pytest.approx(6.0) and before <= ts <= after + 50_000_000  # m/s -> m/min; receive time
        berlin = ns(datetime(2026, 12, 3, 10, tzinfo=ZoneInfo("Europe/Berlin")))
        assert berlin == ns(datetime(2026, 12, 3, 9, tzinfo=UTC))
        assert values(daemon, "calendering.thickness_after") == [(berlin, pytest.approx(71.2), 0)]
        assert values(daemon, "calendering.line_load") == [(t_ms * 1_000_000, pytest.approx(1200.0), 0)]
        assert values(daemon, "calendering.roll_temperature") == [((t_ms + 100) * 1_000_000, pytest.approx(80.0), 0)]
        assert values(daemon, "calendering.gap_actual") == [(ns(datetime(2026, 12, 3, 9, tzinfo=UTC)),
                                                             pytest.approx(61.3), 0)]
        (dl,) = daemon.store.dead_letters()
        assert dl["reason_code"] == "bad_timestamp" and "03.12.2026 10:00" in dl["payload"]
        pub.disconnect()
        pub.loop_stop()
