"""Where the twin's CPU goes per OPC-UA change, end to end (issue #23, item 2), against a real server.

    .venv/bin/python -m bench.bench_opcua_path --load 10000 --seconds 10 [--profile] [--fast on|off|both]

The source is the peers benchmark's node-opcua server (bench/peers/source_server.js: N Double variables at
10 Hz, every change reported, 100 ms publishing). The twin runs *in this process* as ``twin run`` builds it
(:class:`twin.daemon.Daemon`: one OPC-UA connector browsing the folder, embedded SQLite store, API on, defaults
otherwise), so the stages can be timed without a profiler: each stage's function is wrapped with a
``time.thread_time`` counter (CPU of the calling thread only; the store write runs in a worker thread and is
timed there). Stages: asyncua's generic decoding of PublishResponses (``struct_from_binary``), the connector's
fast decoder (when on), conversion to readings, tagging, the store write, the line state (latest values, live
stream). What is left of the process CPU is the rest: asyncua's socket and chunk handling, asyncio, the
pipeline's own bookkeeping, the API and the scheduler.

``--fast both`` alternates windows with the connector's fast decoding path off and on in the same process
(``PublishDecoder.enabled`` of the running connector), so their ratio is measured under the same machine load.
``--profile`` adds a cProfile of the event-loop thread over one window (top functions by own time).
Writes bench/results/opcua_path.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import pstats
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import common
from bench.common import percentile
from bench.peers.__main__ import HZ, PERIOD_MS, Source, free_port, var_id

CPU: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


def timed(name: str, fn: Any) -> Any:
    tt = time.thread_time

    def wrapper(*a: Any, **kw: Any) -> Any:
        t = tt()
        try:
            return fn(*a, **kw)
        finally:
            CPU[name] += tt() - t
            CALLS[name] += 1
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def instrument() -> None:
    from asyncua.client import ua_session

    import connectors.opcua.acquisition as acq
    from ontology.validate import Tagger
    from twin.state import LineState

    orig_sfb = ua_session.struct_from_binary

    def sfb(objtype: Any, data: Any) -> Any:
        name = "asyncua decode (PublishResponse)" if objtype.__name__ == "PublishResponse" else "asyncua decode (other)"
        t = time.thread_time()
        try:
            return orig_sfb(objtype, data)
        finally:
            CPU[name] += time.thread_time() - t
            CALLS[name] += 1
    ua_session.struct_from_binary = sfb
    try:  # the connector's own decoder (issue #23), when present
        import connectors.opcua.fastdecode as fd
        fd.decode_publish_response = timed("fast decode (PublishResponse)", fd.decode_publish_response)
        fd.struct_from_binary = sfb  # its fallback to the generic decoder (fast path off)
    except ImportError:
        pass
    acq.AcquisitionMixin._convert = timed("convert to readings", acq.AcquisitionMixin._convert)  # type: ignore[method-assign]
    Tagger.tag_batch = timed("tagging", Tagger.tag_batch)  # type: ignore[method-assign]
    LineState.update = timed("line state + live stream", LineState.update)  # type: ignore[method-assign]


def write_config(workdir: Path, url: str, n: int) -> Path:
    tags = workdir / "tagmap.toml"
    with tags.open("w") as f:
        f.write("version = 1\n")
        for i in range(n):
            f.write(f'[[tags]]\nid = "bench.v{i:05d}"\nstep = "bench"\nkind = "MP"\ncanonical_unit = "dimensionless"\n'
                    f'sources = [{{ opcua = "{var_id(i)}" }}]\n')
    cfg = workdir / "twin.toml"
    cfg.write_text(f'line_id = "bench"\nlog_level = "warning"\ntagmap = "{tags}"\n'
                   f'[store.embedded]\npath = "{workdir / "twin.sqlite"}"\n[api]\nport = {free_port()}\n'
                   f'[[connectors]]\nkind = "opcua"\nname = "src"\nurl = "{url}"\n'
                   f'browse_roots = ["ns=1;s=Bench"]\n[connectors.security]\npolicy = "none"\n'
                   f'[connectors.subscription]\npublishing_interval_ms = {PERIOD_MS}\nqueue_size = 10\n')
    return cfg


def set_fast(connector: Any, on: bool) -> bool:
    dec = getattr(connector, "_decoder", None)
    if dec is None:
        return False
    dec.enabled = on
    return True


async def run(args: argparse.Namespace, workdir: Path, url: str, n: int) -> dict[str, Any]:
    from twin.cli import _load
    from twin.daemon import Daemon

    cfg, tagmap = _load(write_config(workdir, url, n))
    store = None
    d = Daemon(cfg, tagmap=tagmap)
    store = d.store
    store.write = timed("store write (SQLite commit)", store.write)  # type: ignore[method-assign]
    lat: dict[str, list[float]] = {"source_to_received_ms": [], "received_to_committed_ms": []}

    def on_commit(stored: Any) -> None:  # per commit: the oldest sample's two legs (a sample per publish is enough)
        if stored:
            t = time.time_ns()
            for s in (stored[0], stored[-1]):
                lat["source_to_received_ms"].append((s.received_ts_ns - s.source_ts_ns) / 1e6)
                lat["received_to_committed_ms"].append((t - s.received_ts_ns) / 1e6)
    d.pipeline.after_commit.append(on_commit)
    task = asyncio.create_task(d.run(install_signals=False))
    t_end = time.time() + 60
    while d.pipeline.stats.stored < 2 * n and time.time() < t_end:
        await asyncio.sleep(0.1)
    await asyncio.sleep(args.warmup)
    windows = []
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.fast]
    for rep in range(args.reps):
        for fast in (modes if rep % 2 == 0 else modes[::-1]):
            have_fast = set_fast(d.connectors[0], fast)
            await asyncio.sleep(1.0)  # the switch applies to the next publish; let the previous ones drain
            CPU.clear()
            CALLS.clear()
            for v in lat.values():
                v.clear()
            prof = cProfile.Profile() if args.profile and rep == 0 else None
            st0, rc0 = d.pipeline.stats.stored, d.connectors[0].counters.received
            t0, p0 = time.perf_counter(), time.process_time()
            if prof is not None:
                prof.enable()
            await asyncio.sleep(args.seconds)
            if prof is not None:
                prof.disable()
            t1, p1 = time.perf_counter(), time.process_time()
            stored = d.pipeline.stats.stored - st0
            received = d.connectors[0].counters.received - rc0
            cpu = p1 - p0
            stages = {k: {"cpu_ms_per_1000": round(1e6 * v / max(stored, 1), 2), "calls": CALLS[k]}
                      for k, v in sorted(CPU.items(), key=lambda kv: -kv[1])}
            rest = cpu - sum(CPU.values())
            w: dict[str, Any] = {
                "fast_decode": fast if have_fast else "absent", "rep": rep, "seconds": round(t1 - t0, 2),
                "stored": stored, "received": received, "stored_per_s": round(stored / (t1 - t0), 1),
                "cpu_percent": round(100 * cpu / (t1 - t0), 1),
                "cpu_ms_per_1000": round(1e6 * cpu / max(stored, 1), 2),
                "stages_cpu_ms_per_1000": stages,
                "rest_cpu_ms_per_1000": round(1e6 * rest / max(stored, 1), 2),
                "profiled": prof is not None,
                "latency_ms": {k: {"p50": round(percentile(v, 50), 1), "p99": round(percentile(v, 99), 1),
                                   "max": round(max(v), 1)} for k, v in lat.items() if v},
            }
            if prof is not None:
                s = io.StringIO()
                ps = pstats.Stats(prof, stream=s)
                ps.sort_stats("tottime").print_stats(args.top)
                w["profile_top_by_own_time"] = s.getvalue().splitlines()[-args.top - 2:]
            print(json.dumps({k: v for k, v in w.items() if k != "profile_top_by_own_time"}), flush=True)
            if prof is not None:
                print("\n".join(w["profile_top_by_own_time"]))
            windows.append(w)
    assert d.stop_event is not None
    d.request_stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 30)
    return {"windows": windows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--load", type=int, default=10000, help="changes/s (variables x 10 Hz)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measuring window")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--fast", choices=["off", "on", "both"], default="both")
    ap.add_argument("--profile", action="store_true", help="cProfile the event loop thread in the first repetition")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", default="opcua_path")
    args = ap.parse_args()
    n = max(1, round(args.load / HZ))
    instrument()
    with tempfile.TemporaryDirectory(prefix="bench-opcua-path-") as tmp:
        workdir = Path(tmp)
        src = Source(n, workdir)
        la0 = list(common.machine()["load_average"] or [])
        try:
            res = asyncio.run(run(args, workdir, src.url, n))
        finally:
            src.stop()
    cmd = (f".venv/bin/python -m bench.bench_opcua_path --load {args.load} --seconds {args.seconds} "
           f"--reps {args.reps} --fast {args.fast}" + (" --profile" if args.profile else ""))
    common.write_result(args.out, {"command": cmd, "load_per_s": args.load, "variables": n, "hz": HZ,
                                   "publishing_interval_ms": PERIOD_MS, "loadavg_start": la0,
                                   "cpu_time": "process_time (all threads) per window; stages: thread_time",
                                   **res}, common.lib_versions("asyncua"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
