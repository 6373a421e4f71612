"""Scale-out: aggregate ingest rate of 1, 2 and 3 daemon workers sharing one MQTT shared subscription.

    .venv/bin/python -m bench.bench_scaleout [--readings 200000] [--batch 100] [--repeats 2]

Everything is real and on this machine: mosquitto, influxd 1.6.7 (the shared store, v1 write), N
worker processes (``python -m twin.cli run``, ``$share/bench<N>/pilot/#``, QoS 1, persistent
sessions) and a publisher process that sends QoS-1 batch messages (5 lines, ``--batch`` readings per
message) as fast as the broker acknowledges them. Rate = readings / (first publish -> the last
reading counted in InfluxDB). CPU seconds of every process are read from /proc, so the cost per
reading of a worker, mosquitto and influxd can be scaled to other machines (docs/deploy.md).
Results: bench/results/scaleout.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import influxd_version, mosquitto_version, versions, write_result


def publisher(port: int, payloads: list[tuple[str, str]], ready: Any, go: Any, start: Any, cpu: Any) -> None:
    """The load generator (its own process): the shared QoS-1 publisher (twin/testing/publisher.py),
    at most 2000 messages unacknowledged."""
    from twin.testing.publisher import AckingPublisher

    pub = AckingPublisher(port, "bench-scaleout-pub", clean_session=True)
    ready.set()
    go.wait()
    start.value = time.time()
    cpu0 = time.process_time()
    for topic, body in payloads:
        pub.publish(topic, body)
        pub.wait_window(2000)
    pub.wait_all_acked(timeout=3600)
    cpu.value = time.process_time() - cpu0
    pub.close()


def run(n_workers: int, readings: int, batch: int, rep: int, tmp: Path, broker: Any, influx: Any) -> dict[str, Any]:
    from twin.testing.scaleout_cluster import Worker, cluster_config, proc_cpu_seconds
    from twin.testing.scaleout_workload import messages

    name = f"bench{n_workers}r{rep}"
    influx.query(f'CREATE DATABASE "{name}"', method="POST", db=name)
    wdir = tmp / name
    wdir.mkdir()
    cfg = cluster_config(wdir, broker.port, influx.url, group=name, database=name)
    workers = [Worker(k, cfg, wdir, prefix=f"{name}-w") for k in range(1, n_workers + 1)]
    per_line = readings // 5
    payloads = [(t, json.dumps(p)) for t, p, _ in messages(5, per_line, batch)]
    total = 5 * per_line
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_connected(120)
        time.sleep(1.0)  # let start-up settle (imports, first health job)
        ready, go, start, pub_cpu = mp.Event(), mp.Event(), mp.Value("d", 0.0), mp.Value("d", 0.0)
        p = mp.Process(target=publisher, args=(broker.port, payloads, ready, go, start, pub_cpu))
        p.start()
        ready.wait(60)
        cpu0 = {w.k: w.cpu_seconds() for w in workers}
        b0, i0 = proc_cpu_seconds(broker.proc.pid), proc_cpu_seconds(influx.proc.pid)
        go.set()
        deadline = time.time() + 600
        n = 0
        while time.time() < deadline:
            n = influx.count_db(name)
            if n >= total:
                break
            time.sleep(0.05)
        end = time.time()
        p.join(60)
        seconds = end - start.value
        cpu = {w.k: w.cpu_seconds() - cpu0[w.k] for w in workers}
        b1, i1 = proc_cpu_seconds(broker.proc.pid), proc_cpu_seconds(influx.proc.pid)
        health = [w.health() or {} for w in workers]
        shares = [h.get("pipeline", {}).get("stored", 0) for h in health]
        dropped = sum(h.get("store", {}).get("outbox", {}).get("dropped", 0) for h in health)
        return {"workers": n_workers, "repeat": rep, "readings": total, "stored": n, "lost": total - n,
                "dropped": dropped, "seconds": round(seconds, 3), "readings_per_s": round(n / seconds),
                "per_worker_stored": shares,
                "cpu_s": {"workers": round(sum(cpu.values()), 2), "mosquitto": round(b1 - b0, 2),
                          "influxd": round(i1 - i0, 2), "publisher": round(pub_cpu.value, 2)},
                "cpu_us_per_reading": {"worker": round(sum(cpu.values()) / n * 1e6, 1),
                                       "mosquitto": round((b1 - b0) / n * 1e6, 1),
                                       "influxd": round((i1 - i0) / n * 1e6, 1),
                                       "publisher": round(pub_cpu.value / n * 1e6, 1)}}
    finally:
        for w in workers:
            w.stop(60)


def outbox_bench(tmp: Path, n: int = 200_000) -> dict[str, Any]:
    """The InfluxDB backend's write() alone (the sender off): the cost of durability in the outbox."""
    import os

    from core.samples import Quality, Sample
    from ontology.tagmap import TagMap
    from twin.config import InfluxStoreConfig
    from twin.store.influx import InfluxStore
    from twin.testing.scaleout_cluster import TAGMAP

    cfg = InfluxStoreConfig(url="http://127.0.0.1:9", write_api="v1", outbox_path=tmp / "outbox-bench.sqlite")
    st = InfluxStore(cfg, tagmap=TagMap.load(TAGMAP), start_sender=False)
    t0 = 1_790_000_000 * 10**9
    tags = ["calendering.gap_actual", "calendering.line_load", "calendering.roll_speed",
            "calendering.roll_temperature", "calendering.thickness_after"]
    data = [Sample("line-1", tags[i % 5], 60.0 + (i % 1000) * 0.01, "um", t0 + i * 10**6, t0 + i * 10**6 + 5000,
                   Quality.GOOD, "R-0042", i * 0.01) for i in range(n)]
    t = time.perf_counter()
    for i in range(0, n, 5000):
        st.write(data[i:i + 5000])
    ins = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, n, 5000):
        st.write(data[i:i + 5000])
    dup = time.perf_counter() - t
    st.outbox._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = os.path.getsize(cfg.outbox_path)
    st.close(drain_timeout=0)
    return {"samples": n, "commit_samples": 5000, "insert_samples_per_s": round(n / ins),
            "us_per_sample": round(ins / n * 1e6, 2), "duplicate_samples_per_s": round(n / dup),
            "bytes_per_point_on_disk": round(size / n)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    a = ap.parse_args()

    from twin.testing.influx_servers import InfluxD
    from twin.testing.peers import Mosquitto

    tmp = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    outbox = outbox_bench(tmp)
    print(json.dumps({"outbox": outbox}), flush=True)
    (tmp / "broker").mkdir()
    broker = Mosquitto(tmp / "broker")
    broker.start()
    influx = InfluxD(tmp / "influxd")
    influx.start()
    vers = versions("paho-mqtt", mosquitto=mosquitto_version(broker.port), influxd=influxd_version(influx.url))
    runs = []
    try:
        for rep in range(1, a.repeats + 1):
            for n in a.workers:
                r = run(n, a.readings, a.batch, rep, tmp, broker, influx)
                print(json.dumps(r), flush=True)
                runs.append(r)
    finally:
        influx.stop()
        broker.stop()
    summary = {}
    for n in a.workers:
        rates = [r["readings_per_s"] for r in runs if r["workers"] == n]
        summary[str(n)] = {"median_readings_per_s": round(statistics.median(rates)), "runs": rates}
    base = summary[str(a.workers[0])]["median_readings_per_s"]
    for n in a.workers:
        summary[str(n)]["ratio_to_1_worker"] = round(summary[str(n)]["median_readings_per_s"] / base, 2)
    write_result("scaleout", {"setup": {"readings": a.readings, "lines": 5, "batch_readings_per_message": a.batch,
                                        "store": "influxd (v1 /write), shared", "broker": "mosquitto",
                                        "subscription": "$share/<group>/pilot/#, QoS 1, persistent sessions"},
                              "summary": summary, "outbox": outbox, "runs": runs}, vers)


if __name__ == "__main__":
    main()
