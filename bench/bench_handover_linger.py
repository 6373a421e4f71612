"""MQTT hand-over with and without the linger (connectors.mqtt.connector.HANDOVER_LINGER_S), single-reading QoS-1
messages through the whole path (paho -> hand-over -> tagging -> SQLite commit -> PUBACK), alternating in one run.

    .venv/bin/python -m bench.bench_handover_linger [--messages 20000] [--reps 3]

Reports this process's CPU per message (the machine is shared: CPU time, not wall time, compares the variants) and
the wall-clock rate; bench/results/mqtt_handover_linger.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

import connectors.mqtt.connector as mqttc
from bench.bench_pipeline_mqtt import BROKER_VERSION, run
from bench.common import versions, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    variants = {"linger_0": 0.0, "linger_1ms": 0.001}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    for _ in range(a.reps):
        for name, linger in variants.items():
            mqttc.HANDOVER_LINGER_S = linger
            runs[name].append(asyncio.run(run(a.messages, 1)))
    summary = {k: {"cpu_us_per_message_median": statistics.median(r["cpu_us_per_message"] for r in v),
                   "messages_per_cpu_s_median": statistics.median(r["messages_per_cpu_s"] for r in v),
                   "wall_messages_per_s_median": statistics.median(r["readings_per_s"] for r in v),
                   "lost": sum(r["lost"] for r in v)} for k, v in runs.items()}
    res = {"runs": runs, "summary": summary,
           "ratio_cpu_per_message_linger_over_none": summary["linger_1ms"]["cpu_us_per_message_median"]
           / summary["linger_0"]["cpu_us_per_message_median"],
           "command": f".venv/bin/python -m bench.bench_handover_linger --messages {a.messages} --reps {a.reps}"}
    write_result("mqtt_handover_linger", res, versions("paho-mqtt", mosquitto=BROKER_VERSION[0]))
    print(summary, res["ratio_cpu_per_message_linger_over_none"])


if __name__ == "__main__":
    main()
