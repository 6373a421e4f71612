"""The MQTT connector's hand-over from paho's thread to the event loop, before and after issue #23, in one process.

    .venv/bin/python -m bench.bench_mqtt_handover [--single 15000] [--batched 100000] [--reps 2]

Runs bench/bench_pipeline_mqtt.py's scenario (a publisher process, a real mosquitto, the daemon with QoS 1 and
acknowledgement after commit) alternately with the connector's staged hand-over (``MqttConnector._stage``: a lock,
a list, the loop woken once per group) and with the hand-over it replaced (``BoundedBatchQueue.put_threadsafe``
per message: a blocking cross-thread round trip), for single-reading and for 500-reading payloads. The measure
is the CPU time of the daemon's process per message (single) and per reading (batched): on this shared machine the
wall-clock rate is the share of a core the run got; the ratio within the run is what to read.
Writes bench/results/mqtt_handover.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from typing import Any

from bench import bench_pipeline_mqtt as pm
from bench.common import versions, write_result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--single", type=int, default=15_000, help="single-reading messages per run")
    ap.add_argument("--batched", type=int, default=100_000, help="readings per run in 500-reading messages")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    import connectors.mqtt.connector as mc

    staged = mc.MqttConnector._stage

    def per_message(self: Any, batch: Any) -> None:  # the hand-over before issue #23
        self.queue.put_threadsafe(batch)

    runs: list[dict[str, Any]] = []
    for n, size in ((a.single, 1), (a.batched, 500)):
        for rep in range(a.reps):
            for mode in (("per_message", "staged") if rep % 2 == 0 else ("staged", "per_message")):
                mc.MqttConnector._stage = per_message if mode == "per_message" else staged  # type: ignore[method-assign]
                r: dict[str, Any] = asyncio.run(pm.run(n, size))
                r.update(handover=mode, rep=rep, loadavg_after=list(os.getloadavg()))
                print(r, flush=True)
                runs.append(r)
    mc.MqttConnector._stage = staged  # type: ignore[method-assign]

    def med(size: int, mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["batch"] == size and r["handover"] == mode)

    summary: dict[str, Any] = {
        "single_cpu_us_per_message": {m: med(1, m, "cpu_us_per_message") for m in ("per_message", "staged")},
        "batched_cpu_us_per_reading": {m: med(500, m, "cpu_us_per_reading") for m in ("per_message", "staged")},
    }
    summary["single_ratio_staged_over_per_message"] = round(
        summary["single_cpu_us_per_message"]["staged"] / summary["single_cpu_us_per_message"]["per_message"], 3)
    summary["batched_ratio_staged_over_per_message"] = round(
        summary["batched_cpu_us_per_reading"]["staged"] / summary["batched_cpu_us_per_reading"]["per_message"], 3)
    write_result("mqtt_handover", {
        "command": f".venv/bin/python -m bench.bench_mqtt_handover --single {a.single} --batched {a.batched} "
                   f"--reps {a.reps}",
        "cpu_time": "process_time of the daemon's process (paho thread, event loop, store thread)",
        "summary": summary, "runs": runs}, versions("paho-mqtt", mosquitto=pm.BROKER_VERSION[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
