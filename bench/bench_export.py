"""Export of 1,000,000 stored samples through the real API, with the server's peak memory.

    nice .venv/bin/python -m bench.bench_export [--samples 1000000] [--formats parquet,csv]

1. A real SQLite store (WAL, the embedded default) gets ``--samples`` samples: 10 tags of the default tag
   map on one line at 10 Hz, values and web positions from a seeded random generator (so every float has
   all its digits), quality and a roll id that changes every 10 minutes.
2. The daemon runs as it does on a plant: ``python -m twin.cli run -c <config>`` in a subprocess (no
   connectors, API on a free loopback port), over that store.
3. ``GET /api/v1/export?tags=..(10)..&format=parquet`` of the whole range is streamed to a file by httpx.
   The server's memory: VmHWM (peak resident set) of the daemon process from /proc, reset before each
   export through /proc/<pid>/clear_refs ("5"), and VmRSS sampled every 20 ms. Goal: peak < 200 MB.
4. The file is read back with pandas (pyarrow engine) and every row compared with the generated data:
   line, tag, ts (ns), value (exact float equality), unit, quality, roll id, web position.
   The CSV export is measured the same way (read back with pandas.read_csv).
Writes bench/results/export.json (commit, date, versions, rows, bytes, seconds, peak RSS).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import versions, write_result
from core.samples import Quality, Sample
from twin.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_790_000_000 * 10**9
STEP = 10**8  # 10 Hz
LINE = "pilot-1"
TAGS = ["calendering.gap_actual", "calendering.line_load", "calendering.roll_force", "calendering.roll_speed",
        "calendering.roll_temperature", "calendering.thickness_after", "calendering.porosity_online",
        "coating.gap_actual", "coating.wet_film_thickness", "drying.zone1_temperature"]
UNIT = "1"  # the bench's own: the export copies what the store holds
GOAL_MB = 200.0


def expected(n_per_tag: int) -> dict[str, np.ndarray]:
    """The stored data, in the export's order (line, tag, time): columns as numpy arrays."""
    rng = np.random.default_rng(22)
    tags = sorted(TAGS)
    i = np.tile(np.arange(n_per_tag, dtype=np.int64), len(tags))
    return {
        "tag": np.repeat(np.array(tags, dtype=object), n_per_tag),
        "ts": T0 + i * STEP,
        "value": rng.normal(100.0, 15.0, size=len(i)),
        "quality": np.where(i % 97 == 0, int(Quality.UNCERTAIN), int(Quality.GOOD)).astype(np.int64),
        "roll_id": np.array([f"R-{k:04d}" for k in (i // 6000)], dtype=object),  # 6,000 samples = 10 min
        "web_pos_m": rng.uniform(0.0, 5000.0, size=len(i)),
    }


def fill_store(path: Path, data: dict[str, np.ndarray]) -> float:
    store = SQLiteStore(path)
    t = time.perf_counter()
    n = len(data["ts"])
    for a in range(0, n, 50_000):
        b = min(n, a + 50_000)
        store.write([Sample(LINE, data["tag"][k], float(data["value"][k]), UNIT, int(data["ts"][k]),
                            int(data["ts"][k]) + 1000, Quality(int(data["quality"][k])), data["roll_id"][k],
                            float(data["web_pos_m"][k])) for k in range(a, b)])
    assert store.count() == n, (store.count(), n)
    store.close()
    return time.perf_counter() - t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, MB (1 MB = 2^20 bytes)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) / 1024
    return out


class RssSampler(threading.Thread):
    def __init__(self, pid: int, period_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.period_s, self.max_mb, self.samples = pid, period_s, 0.0, 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.max_mb = max(self.max_mb, proc_status(self.pid)["VmRSS"])
                self.samples += 1
            except (FileNotFoundError, KeyError):
                return
            self._halt.wait(self.period_s)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return self.max_mb


def export_once(base: str, pid: int, fmt: str, out: Path, start: str, end: str) -> dict[str, Any]:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = proc_status(pid)
    sampler = RssSampler(pid)
    sampler.start()
    params = [("tags", t) for t in TAGS] + [("start", start), ("end", end), ("format", fmt)]
    t = time.perf_counter()
    first_byte = None
    n = 0
    with httpx.stream("GET", f"{base}/api/v1/export", params=params, timeout=600) as r, open(out, "wb") as f:
        assert r.status_code == 200, r.read()[:500]
        for chunk in r.iter_bytes():
            if first_byte is None:
                first_byte = time.perf_counter() - t
            f.write(chunk)
            n += len(chunk)
    seconds = time.perf_counter() - t
    sampled_max = sampler.stop()
    after = proc_status(pid)
    return {"format": fmt, "bytes": n, "seconds": round(seconds, 2), "first_byte_s": round(first_byte or 0, 3),
            "server_rss_before_mb": round(before["VmRSS"], 1), "server_peak_rss_mb": round(after["VmHWM"], 1),
            "server_rss_sampled_max_mb": round(sampled_max, 1), "rss_samples": sampler.samples,
            "server_rss_after_mb": round(after["VmRSS"], 1), "goal_peak_rss_mb": GOAL_MB,
            "ok_peak": after["VmHWM"] < GOAL_MB}


def check(path: Path, fmt: str, want: dict[str, np.ndarray]) -> dict[str, Any]:
    """Read back with pandas; every row against the generated data. Returns counts of mismatches."""
    import pandas as pd

    t = time.perf_counter()
    if fmt == "parquet":
        df = pd.read_parquet(path, engine="pyarrow")
        ts = df["ts"].astype("int64").to_numpy()
        assert str(df["ts"].dtype) in ("datetime64[ns, UTC]",), df["ts"].dtype
    else:
        df = pd.read_csv(path, dtype={"roll_id": str, "unit": str, "line_id": str, "tag": str},
                         keep_default_na=False)
        ts = pd.to_datetime(df["ts"], format="ISO8601").astype("int64").to_numpy()
    read_s = time.perf_counter() - t
    n = len(want["ts"])
    res = {"rows_read": len(df), "read_seconds": round(read_s, 2)}
    if len(df) != n:
        return {**res, "round_trip_exact": False, "why": f"{len(df)} rows, expected {n}"}
    mism = {
        "line_id": int((df["line_id"].to_numpy() != LINE).sum()),
        "tag": int((df["tag"].to_numpy(dtype=object) != want["tag"]).sum()),
        "ts": int((ts != want["ts"]).sum()),
        "value": int((df["value"].to_numpy() != want["value"]).sum()),  # exact float equality
        "unit": int((df["unit"].astype(str).to_numpy() != UNIT).sum()),
        "quality": int((df["quality"].to_numpy().astype(np.int64) != want["quality"]).sum()),
        "roll_id": int((df["roll_id"].to_numpy(dtype=object) != want["roll_id"]).sum()),
        "web_pos_m": int((df["web_pos_m"].to_numpy() != want["web_pos_m"]).sum()),
    }
    return {**res, "mismatches": mism, "round_trip_exact": not any(mism.values())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--formats", default="parquet,csv")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--no-write", action="store_true", help="do not write bench/results/export.json")
    args = ap.parse_args()
    per_tag = args.samples // len(TAGS)
    want = expected(per_tag)
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    db = tmp / "store.sqlite"
    fill_s = fill_store(db, want)
    print(f"stored {len(want['ts']):,} samples in {fill_s:.1f} s ({db.stat().st_size / 2**20:.0f} MB)", flush=True)
    port = free_port()
    cfg = tmp / "twin.toml"
    cfg.write_text(f'line_id = "{LINE}"\nlog_level = "warning"\ntagmap = "{ROOT / "twin/defaults/tagmap.toml"}"\n'
                   f'[store.embedded]\npath = "{db}"\n[api]\nport = {port}\n')
    log = open(tmp / "daemon.log", "w")  # noqa: SIM115 - the daemon writes it while it runs; closed at the end
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    daemon = subprocess.Popen([sys.executable, "-m", "twin.cli", "run", "-c", str(cfg)], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    runs = []
    try:
        deadline = time.monotonic() + 60
        while True:
            assert daemon.poll() is None, (tmp / "daemon.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code in (200, 503):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the daemon did not answer within 60 s"
            time.sleep(0.2)
        started = proc_status(daemon.pid)
        print(f"daemon up: RSS {started['VmRSS']:.0f} MB (peak so far {started['VmHWM']:.0f} MB)", flush=True)
        start, end = "2026-01-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"
        for fmt in args.formats.split(","):
            out = tmp / f"export.{fmt}"
            run = export_once(base, daemon.pid, fmt, out, start, end)
            print(f"{fmt}: {run}", flush=True)
            run.update(check(out, fmt, want))
            print(f"{fmt}: read back {run['rows_read']:,} rows, exact: {run['round_trip_exact']}", flush=True)
            run["rows_per_s"] = round(len(want["ts"]) / run["seconds"])
            runs.append(run)
            out.unlink()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
    result = {
        "command": "nice .venv/bin/python -m bench.bench_export" + (f" --samples {args.samples}"
                                                                   if args.samples != 1_000_000 else ""),
        "rows": len(want["ts"]), "tags": len(TAGS), "store_fill_seconds": round(fill_s, 1),
        "store_file_mb": round(db.stat().st_size / 2**20, 1),
        "server": "python -m twin.cli run (no connectors), uvicorn on loopback",
        "server_at_start": {"rss_mb": round(started["VmRSS"], 1), "peak_rss_mb": round(started["VmHWM"], 1)},
        "exports": runs,
        "ok": all(r["ok_peak"] and r["round_trip_exact"] for r in runs),
    }
    if not args.keep:
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        tmp.rmdir()
    if args.no_write:
        print(result)
    else:
        write_result("export", result, versions("pyarrow", "pandas", "fastapi", "uvicorn", "httpx"))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
