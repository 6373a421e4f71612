"""Pipeline throughput, MQTT -> tag -> store, with batch payloads, against a real mosquitto.

    .venv/bin/python -m bench.bench_pipeline_mqtt [--readings 200000] [--batch 500]

A publisher (its own process) sends QoS-1 batch payloads as fast as the broker takes them; the daemon
(this process) tags and stores them in the embedded store. Sustained rate = readings / (time from the
first publish to the last commit). Loss = readings published and acknowledged minus readings stored.
Also run with single-reading payloads (--batch 1) for the per-message cost. The CPU time of this process
(paho's thread, the event loop, the store's thread; the publisher and the broker are other processes) per
message and per reading is recorded too: on a shared machine the wall-clock rate is the share of a CPU the run got,
``messages_per_cpu_s`` what one worker process sustains with a core to itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import mosquitto_version, versions, write_result
from twin.testing.publisher import AckingPublisher

T0 = 1_790_000_000


def publisher(port: int, n: int, batch: int, ready: mp.synchronize.Event, start: mp.Value) -> None:
    """The load generator (its own process): the shared QoS-1 publisher (twin/testing/publisher.py),
    at most 2000 messages unacknowledged."""
    pub = AckingPublisher(port, "bench-pub", clean_session=True)
    tags = ["gap_actual", "line_load", "roll_speed", "roll_temperature", "thickness_after"]
    ready.wait()
    start.value = time.time()
    for i in range(0, n, batch):
        items = [{"topic": f"pilot/pilot-1/calendering/{tags[j % 5]}", "ts": T0 + j * 0.001,
                  "value": 60.0 + (j % 50) * 0.1} for j in range(i, min(n, i + batch))]
        if batch == 1:
            it = items[0]
            pub.publish(it.pop("topic"), json.dumps(it))
        else:
            pub.publish("pilot/pilot-1/batch", json.dumps({"readings": items}))
        pub.wait_window(2000)
    pub.wait_all_acked(timeout=3600)
    pub.close()


BROKER_VERSION: list[str] = []  # read from the broker of the first run


async def run(readings: int, batch: int) -> dict[str, Any]:
    from twin.config import load_config
    from twin.daemon import Daemon
    from twin.testing.peers import Mosquitto, write_config

    tmp = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    (tmp / "broker").mkdir()
    broker = Mosquitto(tmp / "broker")
    broker.start()
    if not BROKER_VERSION:
        BROKER_VERSION.append(mosquitto_version(broker.port))
    try:
        cfg = load_config(write_config(tmp, connectors=(
            f'[[connectors]]\nkind = "mqtt"\nport = {broker.port}\nclient_id = "bench-twin"\n'
            'topics = ["pilot/#"]\n')))
        cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"enabled": False})})
        d = Daemon(cfg)
        task = asyncio.create_task(d.run(install_signals=False))
        await d.connectors[0].wait_connected(10)  # type: ignore[attr-defined]
        ready = mp.Event()
        start = mp.Value("d", 0.0)
        p = mp.Process(target=publisher, args=(broker.port, readings, batch, ready, start))
        p.start()
        cpu0 = time.process_time()  # this process: paho's thread, the event loop, the store's thread
        ready.set()
        while d.pipeline.stats.stored < readings and (p.is_alive() or d.pipeline.stats.received < readings):
            await asyncio.sleep(0.005)
        end = time.time()
        for _ in range(200):
            if d.pipeline.stats.stored >= readings:
                break
            await asyncio.sleep(0.05)
        end = time.time() if d.pipeline.stats.stored >= readings else end
        cpu = time.process_time() - cpu0
        p.join(60)
        stored = d.store.count()
        d.request_stop()
        await task
        return {"readings": readings, "batch": batch, "stored": stored, "lost": readings - stored,
                "seconds": end - start.value, "readings_per_s": stored / (end - start.value),
                "commits": d.pipeline.stats.commits, "messages": -(-readings // batch),
                "cpu_s": round(cpu, 3), "cpu_us_per_message": round(1e6 * cpu / -(-readings // batch), 2),
                "cpu_us_per_reading": round(1e6 * cpu / readings, 3),
                # what one worker process sustains with a whole core to itself (the machine is shared)
                "messages_per_cpu_s": round(-(-readings // batch) / max(cpu, 1e-9)),
                "readings_per_cpu_s": round(readings / max(cpu, 1e-9))}
    finally:
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--single-readings", type=int, default=20_000)
    ap.add_argument("--out", default="pipeline_mqtt", help="bench/results/<out>.json")
    a = ap.parse_args()
    res: dict[str, Any] = {"batch_payloads": asyncio.run(run(a.readings, a.batch)),
           "single_payloads": asyncio.run(run(a.single_readings, 1))}
    res["ratio_batch_over_single"] = (res["batch_payloads"]["readings_per_s"]
                                      / res["single_payloads"]["readings_per_s"])
    res["command"] = (f".venv/bin/python -m bench.bench_pipeline_mqtt --readings {a.readings} --batch {a.batch} "
                      f"--single-readings {a.single_readings}")
    write_result(a.out, res, versions("paho-mqtt", mosquitto=BROKER_VERSION[0]))


if __name__ == "__main__":
    main()
