"""OPC-UA connector benchmark -> bench/results/opcua.json.

1. Throughput: the simulator runs in its own process with N synthetic Int64 tags that all change at
   R Hz (each value is the step number, so every change is accounted for). The connector in this
   process subscribes (100 ms publishing interval, queue size 10) and counts what arrives. Reported
   per load: changes the server made, changes received (unique), lost, the server's achieved step
   rate, and the connector's CPU time per datachange (process time of this process / changes).
2. Latency: 103 tags x 9.7 Hz = 999 samples/s through the connector and the daemon's real pipeline
   (tagging + embedded SQLite store, durable commits). Latency of a sample = time its commit returned
   (``Pipeline.after_commit``) - its SourceTimestamp; also to the connector (receive time). The step
   rate is deliberately not a divisor of the 100 ms publishing interval, so the changes fall at every
   phase of it (a 10 Hz producer would lock to one phase and report one arbitrary latency).

Usage::

    .venv/bin/python bench/bench_opcua.py                 # full run (~2 min)
    .venv/bin/python bench/bench_opcua.py --quick         # shorter runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connectors.opcua.config import OpcUaConnectorConfig  # noqa: E402
from connectors.opcua.connector import OpcUaConnector  # noqa: E402
from core.samples import now_ns  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "opcua.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tags: int, rate_hz: float) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "twin.simline.opcua_server", "--port", str(self.port), "--extra-tags", str(tags),
             "--rate-hz", str(rate_hz)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("simulator did not start")

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def connector_config(url: str, **kw: object) -> OpcUaConnectorConfig:
    return OpcUaConnectorConfig.model_validate({
        "name": "bench", "url": url, "browse_roots": ["ns=2;s=Synthetic"], "security": {"policy": "none"},
        "subscription": {"publishing_interval_ms": 100, "queue_size": 10}, **kw})


async def throughput(tags: int, rate_hz: float, seconds: float) -> dict[str, object]:
    srv = Server(tags, rate_hz)
    try:
        conn = OpcUaConnector(connector_config(srv.url), default_line_id="bench")
        seen: dict[str, set[int]] = defaultdict(set)
        window = [0, 0]  # counting window in ns (receive time)
        n = 0

        async def consume() -> None:
            nonlocal n
            async for batch in conn.batches():
                for r in batch.readings:
                    if window[0] <= r.received_ts_ns <= window[1]:
                        seen[r.address].add(r.value)
                        n += 1

        async with conn:
            await conn.wait_connected(30)
            task = asyncio.create_task(consume())
            await asyncio.sleep(1.0)  # initial values and warm-up, consumed and not counted
            t0, c0 = time.perf_counter(), time.process_time()
            window[:] = [now_ns(), now_ns() + int(seconds * 1e9)]
            await asyncio.sleep(seconds)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            overflows = conn.counters.extra["overflows"]
            await conn.stop()
            await task
    finally:
        srv.stop()
    # the server's step counter tells how many changes it made in the window (per tag)
    made = 0
    unique = 0
    steps = []
    for vals in seen.values():
        lo, hi = min(vals), max(vals)
        made += hi - lo + 1
        unique += len(vals)
        steps.append(hi - lo + 1)
    server_hz = (sum(steps) / len(steps)) / elapsed if steps else 0.0
    return {"tags": tags, "rate_hz": rate_hz, "offered_per_s": tags * rate_hz, "seconds": round(elapsed, 2),
            "server_step_hz": round(server_hz, 2), "changes_made": made, "received": n, "received_unique": unique,
            "lost": made - unique, "overflows": overflows, "received_per_s": round(n / elapsed, 1),
            "connector_cpu_us_per_change": round(cpu / max(n, 1) * 1e6, 2),
            "connector_capacity_per_core_per_s": round(n / cpu, 0) if cpu > 0 else None}


async def latency(tags: int, rate_hz: float, seconds: float) -> dict[str, object]:
    from ontology.tagmap import TagMap
    from ontology.validate import Tagger
    from twin.config import PipelineConfig
    from twin.metrics import Metrics
    from twin.pipeline import Pipeline
    from twin.store.sqlite import SQLiteStore

    width = max(3, len(str(tags - 1)))
    tagmap = TagMap.from_dict({"tags": [
        {"id": f"bench.tag{i:0{width}d}", "step": "bench", "kind": "MP", "canonical_unit": "dimensionless",
         "sources": [{"opcua": f"ns=2;s=Synthetic.Tag{i:0{width}d}"}]} for i in range(tags)]})
    srv = Server(tags, rate_hz)
    lat: list[int] = []
    to_conn: list[int] = []
    tmp = tempfile.TemporaryDirectory()
    store = SQLiteStore(Path(tmp.name) / "bench.sqlite")
    try:
        pipe = Pipeline(PipelineConfig(), store, Tagger(tagmap, "bench"), Metrics())
        recording = False

        def on_commit(samples: list) -> None:
            if recording:
                t = now_ns()
                lat.extend(t - s.source_ts_ns for s in samples)
                to_conn.extend(s.received_ts_ns - s.source_ts_ns for s in samples)

        pipe.after_commit.append(on_commit)
        conn = OpcUaConnector(connector_config(srv.url), default_line_id="bench")
        async with conn:
            await conn.wait_connected(30)
            consume = asyncio.create_task(pipe.consume(conn.name, conn.batches()))
            await asyncio.sleep(2.0)
            recording = True
            c0 = time.process_time()
            await asyncio.sleep(seconds)
            recording = False
            cpu = time.process_time() - c0
            await conn.stop()
            await consume
            await pipe.close()
        stored = pipe.stats.stored
    finally:
        srv.stop()
        store.close()
        tmp.cleanup()
    lat.sort()
    to_conn.sort()

    def pct(p: float, xs: list[int] = lat) -> float:
        return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))] / 1e6, 1)

    return {"tags": tags, "rate_hz": rate_hz, "samples_per_s": round(tags * rate_hz, 1), "publishing_interval_ms": 100,
            "seconds": seconds, "samples": len(lat), "stored_total": stored,
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": round(lat[-1] / 1e6, 1),
            "goal_p99_ms": 150, "meets_goal": pct(99) <= 150,
            "to_connector_p50_ms": pct(50, to_conn), "to_connector_p99_ms": pct(99, to_conn),
            "process_cpu_percent": round(cpu / seconds * 100, 1)}


async def main(args: argparse.Namespace) -> dict[str, object]:
    from bench.common import machine, opcua_build_info, versions

    logging.getLogger("asyncua").setLevel(logging.ERROR)
    srv = Server(1, 1.0)  # the simulator as the runs start it; its BuildInfo read over OPC-UA
    try:
        server_build = await opcua_build_info(srv.url)
    finally:
        srv.stop()
    secs = 5.0 if args.quick else 10.0
    loads = [(200, 10), (500, 10), (1000, 10), (1000, 20), (2000, 20)]
    rows = []
    for tags, hz in loads:
        r = await throughput(tags, hz, secs)
        print(json.dumps(r), flush=True)
        rows.append(r)
    lat = await latency(103, 9.7, 10.0 if args.quick else 30.0)
    print(json.dumps(lat), flush=True)
    lossless = [r for r in rows if r["lost"] == 0]
    return {
        "benchmark": "opcua",
        "command": ".venv/bin/python bench/bench_opcua.py" + (" --quick" if args.quick else ""),
        "machine": {**machine(), "note": "server (simulator) and connector on the same host, separate processes"},
        "versions": versions("asyncua", opcua_server_build_info=server_build),
        "throughput": rows,
        "max_lossless_received_per_s": max((r["received_per_s"] for r in lossless), default=0),
        "connector_capacity_per_core_per_s": max((r["connector_capacity_per_core_per_s"] or 0) for r in rows),
        "latency_1000_per_s": lat,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    result = asyncio.run(main(a))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
