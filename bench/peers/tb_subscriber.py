"""The "platform" end of the ThingsBoard gateway contender: subscribes to the gateway API topic on the local
mosquitto (v1/gateway/telemetry, QoS 1), answers its getSessionLimits call (no limits) and stores every reading into SQLite (node, ts, value), one commit per
100 ms, so the benchmark reads the gateway's output back like every other contender's store.

    python bench/peers/tb_subscriber.py PORT DB
"""

import json
import sqlite3
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

port, path = int(sys.argv[1]), sys.argv[2]
db = sqlite3.connect(path, check_same_thread=False)
db.execute("PRAGMA synchronous=NORMAL")
rows: list[tuple[str, int, float]] = []
lock = threading.Lock()
bad = [0]


LIMITS = json.dumps({"rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
                     "maxInflightMessages": 100, "maxPayloadSize": 65536})


def on_message(cl, _u, m) -> None:
    if m.topic.startswith("v1/devices/me/rpc/request/"):
        # the platform's answer to the gateway's getSessionLimits call: no rate limits
        cl.publish("v1/devices/me/rpc/response/" + m.topic.rsplit("/", 1)[1], LIMITS, qos=1)
        return
    try:
        body = json.loads(m.payload)
        out = []
        for _device, entries in body.items():
            for e in entries:
                ts = int(round(float(e["ts"])))
                for key, v in e["values"].items():
                    out.append((f"ns=1;s=Bench.{key}", ts, float(v)))
    except (ValueError, KeyError, TypeError, AttributeError):
        bad[0] += 1
        return
    with lock:
        rows.extend(out)


c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-tb-platform")
c.on_message = on_message
c.on_connect = lambda cl, *_: cl.subscribe([("v1/gateway/telemetry", 1), ("v1/devices/me/rpc/request/+", 1)])
c.connect("127.0.0.1", port)
c.loop_start()
print("READY", flush=True)
while True:
    time.sleep(0.1)
    with lock:
        batch, rows[:] = rows[:], []
    if batch:
        db.executemany("INSERT INTO samples(node, ts, value) VALUES (?, ?, ?)", batch)
        db.commit()
