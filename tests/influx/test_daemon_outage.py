"""The whole path against real servers: MQTT (mosquitto) -> daemon -> outbox -> InfluxDB (influxd
1.6.7, v1 write, InfluxQL), with InfluxDB killed during ingest and restarted after an outage.

Acceptance (issue #9): InfluxDB stopped for 60 s during ingest and restarted: every reading arrives,
the counters show zero dropped. The 60 s run is marked slow (``-m slow``); the default suite runs
the same test with a 5 s outage.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest

from ontology.tagmap import TagMap
from tests.conftest import DEFAULTS, Mosquitto, write_config
from tests.influx.servers import InfluxD
from tests.integration.test_mqtt import Publisher
from tests.scaleout.workload import Key, messages
from twin.config import load_config
from twin.daemon import Daemon
from twin.store.influx import InfluxStore

pytestmark = pytest.mark.integration


def influx_config(tmp_path: Path, broker: Mosquitto, server: InfluxD) -> Path:
    return write_config(tmp_path, extra=(
        '[store]\nbackend = "influxdb"\n'
        "[store.influxdb]\n"
        f'url = "{server.url}"\nwrite_api = "v1"\ndatabase = "{server.database}"\n'
        f'outbox_path = "{tmp_path / "outbox.sqlite"}"\n'
        "batch_size = 2000\nflush_interval_ms = 100\nmax_in_flight_batches = 1\n"
        "retry = { interval_ms = 500, max_retries = 4, max_delay_ms = 4000, max_time_ms = 15000 }\n"
    ), connectors=(
        f'[[connectors]]\nkind = "mqtt"\nport = {broker.port}\nclient_id = "twin-outage"\n'
        'topics = ["pilot/#"]\nbackoff = { initial_s = 0.2, max_s = 2.0 }\n'))


async def run_outage(tmp_path: Path, broker: Mosquitto, server: InfluxD, outage_s: float, total_s: float) -> None:
    cfg = load_config(influx_config(tmp_path, broker, server))
    cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"enabled": False})})
    tagmap = TagMap.load(DEFAULTS / "tagmap.toml")
    store = InfluxStore(cfg.store.influxdb, tagmap=tagmap)
    d = Daemon(cfg, tagmap=tagmap, store=store)
    task = asyncio.create_task(d.run(install_signals=False))
    await d.connectors[0].wait_connected(10)  # type: ignore[attr-defined]
    pub = Publisher(broker.port, client_id="outage-publisher")
    expected: dict[Key, float] = {}
    # 5 lines x 20 readings per message, 10 messages/s per line = 1,000 readings/s for total_s
    msgs = list(messages(5, int(total_s * 200), 20))
    stop = threading.Event()

    def produce() -> None:
        t0 = time.monotonic()
        for k, (topic, payload, keys) in enumerate(msgs):
            pub.publish(topic, payload, list(keys))
            expected.update(keys)
            delay = t0 + (k + 1) / 50 - time.monotonic()  # 50 messages/s
            if delay > 0 and stop.wait(delay):
                return

    producer = asyncio.create_task(asyncio.to_thread(produce))
    try:
        await asyncio.sleep(3.0)
        await asyncio.to_thread(server.stop, signal.SIGKILL)  # InfluxDB crashes mid-ingest
        down_at = time.monotonic()
        await asyncio.sleep(outage_s)
        stats_down = store.outbox_stats()
        assert stats_down["pending"] > 0 and store.server_ok is False  # the outbox holds the backlog
        await asyncio.to_thread(server.start)
        up_after = time.monotonic() - down_at
        await producer
        await asyncio.to_thread(pub.wait_all_acked, 120)
        n = len(expected)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and d.pipeline.stats.stored < n:
            await asyncio.sleep(0.2)
        assert await asyncio.to_thread(store.flush, 120), store.outbox_stats()
        st = store.outbox_stats()
        assert st["dropped"] == 0 and st["rejected"] == 0 and st["pending"] == 0, st
        assert st["written"] == st["delivered"] == n
        assert d.pipeline.stats.stored == n and d.pipeline.stats.rejected == 0
        # every reading is in InfluxDB, with its value, exactly once (InfluxQL over /query)
        got: dict[Key, float] = {}
        for line in {k[0] for k in expected}:
            for tag in {k[1] for k in expected}:
                for s in await asyncio.to_thread(store.raw, tag, 0, 2**62, line, 10**7):
                    got[(s.line_id, s.tag_id, s.source_ts_ns)] = s.value
        assert got == expected
        assert server.count() == n
        assert stats_down["pending"] < n and up_after >= outage_s
    finally:
        stop.set()
        pub.close()
        d.request_stop()
        await asyncio.wait_for(task, 60)


async def test_influxdb_outage_during_ingest_loses_nothing(tmp_path: Path, mosquitto: Mosquitto,
                                                           influxd: InfluxD) -> None:
    await run_outage(tmp_path, mosquitto, influxd, outage_s=5, total_s=15)


@pytest.mark.slow
async def test_influxdb_stopped_60_s_during_ingest_loses_nothing(tmp_path: Path, mosquitto: Mosquitto,
                                                                 influxd: InfluxD) -> None:
    await run_outage(tmp_path, mosquitto, influxd, outage_s=60, total_s=80)
