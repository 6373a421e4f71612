"""Peer benchmark: the twin against the tools a pilot line would otherwise pick, side by side.

    .venv/bin/python -m bench.peers --loads 1000,5000,10000,20000 --seconds 20 [--reps 2] [--setup-only]

One command: it installs the contenders from the registries into git-ignored folders (``npm install`` of
bench/peers/package.json into bench/peers/node_modules; ``pip install thingsboard-gateway==...`` into
bench/peers/.venv-tb), then, per load N changes/s (N Double variables at 10 Hz, 100 ms publishing), runs each
contender alternately against the same source, a node-opcua server none of them wrote
(bench/peers/source_server.js): every value is the step number, so a stored (variable, value) pair names
exactly one change and the lost ones are counted exactly from the store.

Per contender and repetition: changes stored per second, lost (exact, over the measuring window), CPU
seconds per 1,000 stored changes (utime+stime of the contender's process tree from /proc), peak RSS (sum over
the tree, sampled), p50/p99 of source timestamp -> visible in the store (a watcher polls a few probe variables
every 20 ms with an indexed query, so the figure carries up to +20 ms of polling delay for every contender
alike), and, at the first load, a restart of the source server. Results: bench/results/peers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import percentile

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED_NODE_OPCUA = ROOT / "tests" / "init" / "node" / "node_modules" / "node-opcua"
RESULTS = ROOT / "bench" / "results"
TB_VERSION = "3.8.5"
TB_ASYNCUA = "1.1.5"  # what the gateway's OPC-UA connector pip-installs at its first start; installed up front
HZ = 10.0
PERIOD_MS = 1000.0 / HZ
PROBES = 16
POLL_S = 0.02


# ----------------------------------------------------------------------------------------------- set-up
def setup(names: list[str] | None = None) -> None:
    """Install the contenders named (default: all) that are not installed yet; the twin needs nothing."""
    names = names if names is not None else list(CONTENDERS)
    if any(n.startswith("node-red") for n in names) and \
            not (HERE / "node_modules" / "node-red" / "package.json").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=HERE, check=True)
    if "thingsboard-gateway" not in names:
        return
    venv = HERE / ".venv-tb"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    have = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m;"
                           "print(m.version('thingsboard-gateway'))"], capture_output=True, text=True).stdout.strip()
    if have != TB_VERSION:
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"thingsboard-gateway=={TB_VERSION}",
                        f"asyncua=={TB_ASYNCUA}"], check=True)


def npm_version(pkg: str) -> str | None:
    p = HERE / "node_modules" / pkg / "package.json"
    return json.loads(p.read_text())["version"] if p.exists() else None


def versions() -> dict[str, Any]:
    def out(cmd: list[str]) -> str | None:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=HERE)
            return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr).strip() else None
        except (OSError, subprocess.TimeoutExpired):
            return None

    tb = HERE / ".venv-tb" / "bin" / "python"
    import asyncua
    return {
        "twin": out(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
        "python": sys.version.split()[0], "asyncua": asyncua.__version__ if hasattr(asyncua, "__version__") else
        out([sys.executable, "-c", "import importlib.metadata as m; print(m.version('asyncua'))"]),
        "node": out(["node", "--version"]),
        **{pkg: npm_version(pkg) for pkg in ("node-red", "node-red-contrib-opcua", "node-red-node-sqlite",
                                             "node-opcua", "sqlite3")},
        "sqlite3 (node binding, SQLite)": out(["node", "-e", "const s=require('sqlite3');"
                                               "new s.Database(':memory:').get('select sqlite_version() v',"
                                               "(e,r)=>console.log(r.v))"]) if npm_version("sqlite3") else None,
        "sqlite (python)": sqlite3.sqlite_version,
        "thingsboard-gateway": out([str(tb), "-c", "import importlib.metadata as m;"
                                    "print(m.version('thingsboard-gateway'))"]) if tb.exists() else None,
        "asyncua (thingsboard-gateway venv)": out([str(tb), "-c", "import importlib.metadata as m;"
                                                    "print(m.version('asyncua'))"]) if tb.exists() else None,
        "mosquitto": out(["mosquitto", "-h"]),
    }


def source_build_info(workdir: Path) -> str:
    """The node-opcua source's ServerStatus.BuildInfo, read over OPC-UA from a running source (one variable)."""
    import asyncio

    from bench.common import opcua_build_info

    workdir.mkdir(parents=True, exist_ok=True)
    src = Source(1, workdir)
    try:
        return asyncio.run(opcua_build_info(src.url))
    finally:
        src.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------- /proc
def tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    t = 0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            t += int(f[11]) + int(f[12])
        except (OSError, IndexError):
            pass
    return t / os.sysconf("SC_CLK_TCK")


def rss_mb(pids: list[int]) -> float:
    t = 0.0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    t += int(line.split()[1]) / 1024
        except OSError:
            pass
    return t


# ----------------------------------------------------------------------------------------------- source
class Source:
    """The node-opcua server (bench/peers/source_server.js) in its own process."""

    def __init__(self, n: int, workdir: Path) -> None:
        self.n, self.port = n, free_port()
        self.steplog = workdir / "steps.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = dict(os.environ)
        if not (HERE / "node_modules" / "node-opcua").exists() and SHARED_NODE_OPCUA.exists():
            # the test suite's node-opcua (scripts/test.sh installs it for tests/init) serves the source too
            env["NODE_PATH"] = str(SHARED_NODE_OPCUA.parent)
        self.proc = subprocess.Popen(["node", str(HERE / "source_server.js"), str(self.port), str(self.n), str(HZ),
                                      str(self.steplog)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        assert self.proc.stdout is not None
        seen = []
        while True:  # node-opcua prints warnings on stdout before READY
            line = self.proc.stdout.readline().decode()
            if line.startswith("READY"):
                break
            seen.append(line)
            if not line or len(seen) > 50:
                raise RuntimeError(f"source server did not start: {''.join(seen)[-1000:]!r}")
        self.ready_at = time.time()
        out = self.proc.stdout
        threading.Thread(target=lambda: [None for _ in out], daemon=True).start()  # keep the pipe drained

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def steps(self) -> list[tuple[int, int]]:
        out = []
        for line in self.steplog.read_text().splitlines():
            k, t = line.split()
            out.append((int(k), int(t)))
        return out


def var_id(i: int) -> str:
    return f"ns=1;s=Bench.V{i:05d}"


def probe_indices(n: int) -> list[int]:
    return sorted({int(j * n / PROBES) for j in range(PROBES)} | {n - 1})


# ----------------------------------------------------------------------------------------------- contenders
class Contender:
    name = ""
    proc: subprocess.Popen[bytes] | None = None

    def start(self, src: Source, workdir: Path) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        return tree(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                for p in self.pids():
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
                self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # the store, read back
    def connect(self) -> sqlite3.Connection | None:
        if not self.db.exists():
            return None
        c = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        c.execute("PRAGMA busy_timeout=5000")
        return c

    def total(self, c: sqlite3.Connection) -> int:
        raise NotImplementedError

    def probe(self, c: sqlite3.Connection, after_k: dict[int, int]) -> list[tuple[int, int]]:
        """[(probe index, step k)] stored with k > after_k[probe]."""
        raise NotImplementedError

    def distinct_in(self, c: sqlite3.Connection, k0: int, k1: int) -> int:
        """distinct (variable, step) stored with k0 <= step < k1."""
        raise NotImplementedError


class Twin(Contender):
    """``twin run`` from this checkout, or (``root``) from a tree of another commit (``--twin-ref``)."""

    name = "twin"

    def __init__(self, root: Path = ROOT, name: str = "twin") -> None:
        self.root, self.name = root, name

    def start(self, src: Source, workdir: Path) -> None:
        self.n = src.n
        self.db = workdir / "twin.sqlite"
        tags = workdir / "tagmap.toml"
        with tags.open("w") as f:
            f.write("version = 1\n")
            for i in range(src.n):
                f.write(f'[[tags]]\nid = "bench.v{i:05d}"\nstep = "bench"\nkind = "MP"\ncanonical_unit = "dimensionless"\n'
                        f'sources = [{{ opcua = "{var_id(i)}" }}]\n')
        cfg = workdir / "twin.toml"
        cfg.write_text(f'line_id = "bench"\nlog_level = "warning"\ntagmap = "{tags}"\n'
                       f'[store.embedded]\npath = "{self.db}"\n[api]\nport = {free_port()}\n'
                       f'[[connectors]]\nkind = "opcua"\nname = "src"\nurl = "{src.url}"\n'
                       f'browse_roots = ["ns=1;s=Bench"]\n[connectors.security]\npolicy = "none"\n'
                       f'[connectors.subscription]\npublishing_interval_ms = {PERIOD_MS}\nqueue_size = 10\n')
        self.log = open(workdir / "twin.log", "w")  # noqa: SIM115 - the peer writes it while it runs; closed on stop
        self.proc = subprocess.Popen([sys.executable, "-m", "twin.cli", "run", "-c", str(cfg)], cwd=self.root,
                                     env={**os.environ, "PYTHONPATH": str(self.root)}, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.series: dict[int, int] = {}

    def _series(self, c: sqlite3.Connection) -> None:
        if len(self.series) < len(probe_indices(self.n)):
            want = {f"bench.v{i:05d}": i for i in probe_indices(self.n)}
            for sid, tag in c.execute("SELECT id, tag FROM series"):
                if tag in want:
                    self.series[sid] = want[tag]

    def total(self, c: sqlite3.Connection) -> int:
        return c.execute("SELECT COUNT(*) FROM samples").fetchone()[0]

    def probe(self, c: sqlite3.Connection, after_k: dict[int, int]) -> list[tuple[int, int]]:
        self._series(c)
        out = []
        for sid, i in self.series.items():
            lo = int(after_k.get(i, 0) * PERIOD_MS * 1e6)
            for (ts,) in c.execute("SELECT ts FROM samples WHERE series = ? AND ts > ?", (sid, lo)):
                out.append((i, round(ts / (PERIOD_MS * 1e6))))
        return out

    def distinct_in(self, c: sqlite3.Connection, k0: int, k1: int) -> int:
        # value == step and ts == the step's instant: count only exact pairs
        return c.execute("SELECT COUNT(*) FROM samples s JOIN series r ON r.id = s.series WHERE r.tag LIKE 'bench.v%' "
                         "AND s.value >= ? AND s.value < ? AND s.ts = CAST(s.value AS INTEGER) * ?",
                         (k0, k1, int(PERIOD_MS * 1e6))).fetchone()[0]


SCHEMA = ("PRAGMA journal_mode=WAL;"
          "CREATE TABLE IF NOT EXISTS samples (node TEXT NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL);"
          "CREATE INDEX IF NOT EXISTS samples_node_ts ON samples(node, ts);")


class SqliteTable(Contender):
    """Contenders that write rows (node, ts ms, value) into a SQLite table we read back the same way."""

    def prepare_db(self, path: Path) -> None:
        self.db = path
        c = sqlite3.connect(path)
        c.executescript(SCHEMA)
        c.close()

    def total(self, c: sqlite3.Connection) -> int:
        return c.execute("SELECT MAX(rowid) FROM samples").fetchone()[0] or 0

    def probe(self, c: sqlite3.Connection, after_k: dict[int, int]) -> list[tuple[int, int]]:
        out = []
        for i in probe_indices(self.n):
            lo = int(after_k.get(i, 0) * PERIOD_MS)
            for (ts,) in c.execute("SELECT ts FROM samples WHERE node = ? AND ts > ?", (var_id(i), lo)):
                out.append((i, round(ts / PERIOD_MS)))
        return out

    def distinct_in(self, c: sqlite3.Connection, k0: int, k1: int) -> int:
        return c.execute("SELECT COUNT(*) FROM (SELECT DISTINCT node, value FROM samples WHERE value >= ? AND value < ? "
                         "AND ts = CAST(value AS INTEGER) * ?)", (k0, k1, int(PERIOD_MS))).fetchone()[0]


class NodeRed(SqliteTable):
    """Node-RED with node-red-contrib-opcua (OpcUa-Client, action subscribe, every variable in one subscription)
    and node-red-node-sqlite: one INSERT per message, or rows gathered in a function node and written as one
    multi-row INSERT per 100 ms / 1,000 rows."""

    def __init__(self, batched: bool) -> None:
        self.batched = batched
        self.name = "node-red-batched" if batched else "node-red-per-message"

    def start(self, src: Source, workdir: Path) -> None:
        self.n = src.n
        self.prepare_db(workdir / "nodered.sqlite")
        userdir = workdir / "nodered"
        userdir.mkdir()
        flows = make_flows(src.url, [var_id(i) for i in range(src.n)], self.db, self.batched)
        (userdir / "flows.json").write_text(json.dumps(flows, indent=1))
        port = free_port()
        (userdir / "settings.js").write_text(
            "module.exports = { uiPort: %d, uiHost: '127.0.0.1', flowFile: 'flows.json', credentialSecret: false,"
            " logging: { console: { level: 'warn' } }, editorTheme: { tours: false } };\n" % port)
        self.log = open(workdir / "nodered.log", "w")  # noqa: SIM115 - the peer writes it while it runs; closed on stop
        self.proc = subprocess.Popen(["node", str(HERE / "node_modules" / "node-red" / "red.js"), "--userDir",
                                      str(userdir), "--settings", str(userdir / "settings.js")], cwd=HERE,
                                     stdout=self.log, stderr=subprocess.STDOUT)


def make_flows(url: str, nodes: list[str], db: Path, batched: bool) -> list[dict[str, Any]]:
    from bench.peers.flows import flows
    return flows(url, nodes, str(db), batched, PERIOD_MS)


class ThingsBoardGateway(SqliteTable):
    """ThingsBoard IoT gateway (PyPI thingsboard-gateway): its OPC-UA connector (subscriptions, one device with
    every variable as a time series, timestamp = the source timestamp), SQLite local storage, MQTT to a local
    mosquitto standing in for the ThingsBoard platform; tb_subscriber.py stores what arrives there. CPU and RSS
    are the sum of the gateway, mosquitto and the subscriber (the gateway alone in cpu_gateway_s)."""

    name = "thingsboard-gateway"

    def start(self, src: Source, workdir: Path) -> None:
        self.n = src.n
        self.prepare_db(workdir / "tb-platform.sqlite")
        cfg = workdir / "tb" / "config"
        cfg.mkdir(parents=True)
        (workdir / "tb" / "logs").mkdir()
        (workdir / "tb" / "data").mkdir()
        port = free_port()
        self.broker = subprocess.Popen(["mosquitto", "-p", str(port)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.sub = subprocess.Popen([sys.executable, str(HERE / "tb_subscriber.py"), str(port), str(self.db)],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.sub.stdout is not None
        self.sub.stdout.readline()
        (cfg / "tb_gateway.json").write_text(json.dumps({
            "thingsboard": {"host": "127.0.0.1", "port": port, "remoteShell": False, "remoteConfiguration": False,
                            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600},
                            "security": {"type": "accessToken", "accessToken": "bench"}, "qos": 1,
                            "reportStrategy": {"type": "ON_RECEIVED"}, "checkConnectorsConfigurationInSeconds": 3600,
                            "minPackSendDelayMS": 50, "minPackSizeToSend": 500, "maxPayloadSizeBytes": 8196},
            "storage": {"type": "sqlite", "data_file_path": str(workdir / "tb" / "data" / "data.db"),
                        "messages_ttl_check_in_hours": 1, "messages_ttl_in_days": 7},
            "grpc": {"enabled": False},
            "connectors": [{"type": "opcua", "name": "OPC-UA", "configuration": "opcua.json"}],
        }, indent=1))
        (cfg / "opcua.json").write_text(json.dumps({
            "server": {"url": src.url, "timeoutInMillis": 5000, "scanPeriodInMillis": 3600000, "pollPeriodInMillis": 5000,
                       "enableSubscriptions": True, "subCheckPeriodInMillis": 100, "subDataMaxBatchSize": 1000,
                       "subDataMinBatchCreationTimeMs": 200, "subscriptionProcessBatchSize": 2000,
                       "sessionTimeoutInMillis": 120000, "showMap": False, "security": "None",
                       "identity": {"type": "anonymous"}},
            "mapping": [{"deviceNodeSource": "path", "deviceNodePattern": "Root\\.Objects\\.Bench",
                         "deviceInfo": {"deviceNameExpression": "bench", "deviceNameExpressionSource": "constant",
                                        "deviceProfileExpression": "default",
                                        "deviceProfileExpressionSource": "constant"},
                         "attributes": [], "rpc_methods": [], "attributes_updates": [],
                         "timeseries": [{"key": f"V{i:05d}", "type": "identifier", "value": "${%s}" % var_id(i),
                                         "timestampLocation": "sourceTimestamp"} for i in range(src.n)]}],
        }, indent=1))
        (cfg / "logs.json").write_text(json.dumps({
            "version": 1, "disable_existing_loggers": False,
            "formatters": {"f": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "formatter": "f",
                                  "filename": str(workdir / "tb.log")}},
            "root": {"level": "WARNING", "handlers": ["file"]},
        }))
        self.log = open(workdir / "tb.out", "w")  # noqa: SIM115 - the peer writes it while it runs; closed on stop
        self.proc = subprocess.Popen([str(HERE / ".venv-tb" / "bin" / "python"), "-c",
                                      "from thingsboard_gateway.tb_gateway import daemon; daemon()"],
                                     cwd=workdir / "tb", env={**os.environ, "TB_GW_CONFIG_DIR": str(cfg)},
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def pids(self) -> list[int]:
        own = super().pids()
        extra = [p.pid for p in (getattr(self, "broker", None), getattr(self, "sub", None)) if p and p.poll() is None]
        return own + extra if own else []

    def stop(self) -> None:
        super().stop()
        for p in (self.sub, self.broker):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


# ----------------------------------------------------------------------------------------------- one run
class Watcher(threading.Thread):
    """Polls the probe variables every POLL_S and records when each change became visible in the store."""

    def __init__(self, c: Contender) -> None:
        super().__init__(daemon=True)
        self.c, self.stop_ev = c, threading.Event()
        self.after: dict[int, int] = {}
        self.seen: list[tuple[int, int, float]] = []  # (probe, k, seen at epoch s)
        self.rss_peak = 0.0
        self.errors = 0

    def run(self) -> None:
        conn = None
        last_rss = 0.0
        while not self.stop_ev.is_set():
            t = time.time()
            try:
                if conn is None:
                    conn = self.c.connect()
                if conn is not None:
                    for i, k in self.c.probe(conn, self.after):
                        if k > self.after.get(i, 0):
                            self.after[i] = k
                        self.seen.append((i, k, t))
            except sqlite3.Error:
                self.errors += 1
            if t - last_rss > 0.25:
                self.rss_peak = max(self.rss_peak, rss_mb(self.c.pids()))
                last_rss = t
            self.stop_ev.wait(max(0.0, POLL_S - (time.time() - t)))


def wait_storing(c: Contender, seconds: float) -> bool:
    deadline = time.time() + seconds
    first = None
    while time.time() < deadline:
        if not c.alive():
            return False
        try:
            conn = c.connect()
            if conn is not None:
                n = c.total(conn)
                conn.close()
                if n > 0 and first is None:
                    first = (n, time.time())
                elif first is not None and n > first[0] and time.time() - first[1] > 1.0:
                    return True
        except sqlite3.Error:
            pass
        time.sleep(0.2)
    return False


def measure(c: Contender, n: int, seconds: float, workdir: Path, restart: bool,
            after_restart_s: float = 15.0) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    src = Source(n, workdir)
    row: dict[str, Any] = {"contender": c.name, "offered_per_s": round(n * HZ), "variables": n}
    try:
        c.start(src, workdir)
        if not wait_storing(c, 60):
            row["error"] = f"not storing after 60 s; log tail: {tail(workdir)}"
            return row
        time.sleep(2.0)  # warm-up
        w = Watcher(c)
        w.start()
        conn = c.connect()
        assert conn is not None
        pids = c.pids()
        t0, cpu0, tot0 = time.time(), cpu_seconds(pids), c.total(conn)
        if restart:
            time.sleep(seconds / 2)
            t_kill = time.time()
            src.kill()
            time.sleep(2.0)
            src.start()
            time.sleep(after_restart_s)
        else:
            time.sleep(seconds)
        pids = list(set(pids) | set(c.pids()))
        t1, cpu1, tot1 = time.time(), cpu_seconds(pids), c.total(conn)
        alive = c.alive()
        # drain: let the contender store what it has (up to 10 s), then count the window exactly
        steps = [(k, t) for k, t in src.steps() if t0 * 1000 <= t < t1 * 1000]
        k0, k1 = steps[0][0], steps[-1][0] + 1
        expected = n * len(steps)
        stored, stable_since, deadline = -1, time.time(), time.time() + 10
        while time.time() < deadline:
            s = c.distinct_in(conn, k0, k1)
            if s == expected or (s == stored and time.time() - stable_since > 1.5):
                stored = s
                break
            if s != stored:
                stored, stable_since = s, time.time()
            time.sleep(0.3)
        w.stop_ev.set()
        w.join()
        conn.close()
        lat = [(seen - k * PERIOD_MS / 1000) * 1000 for i, k, seen in w.seen if k0 <= k < k1]
        row.update({
            "seconds": round(t1 - t0, 2), "source_steps": len(steps), "source_step_hz": round(len(steps) / (t1 - t0), 2),
            "changes_made": expected, "stored": stored, "lost": expected - stored,
            "lost_percent": round(100 * (expected - stored) / max(expected, 1), 2),
            "stored_per_s_during_window": round((tot1 - tot0) / (t1 - t0), 1),
            "cpu_s": round(cpu1 - cpu0, 2), "cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
            "cpu_ms_per_1000": round(1e6 * (cpu1 - cpu0) / max(tot1 - tot0, 1), 1),
            "peak_rss_mb": round(w.rss_peak, 1), "alive_at_end": alive, "watch_errors": w.errors,
            "latency_samples": len(lat),
            "p50_ms": round(percentile(lat, 50), 1) if lat else None,
            "p99_ms": round(percentile(lat, 99), 1) if lat else None,
            "max_ms": round(max(lat), 1) if lat else None,
        })
        if restart:
            row["restart"] = restart_report(c, src, t_kill, w.seen, n, t1)
        return row
    finally:
        c.stop()
        src.stop()


def restart_report(c: Contender, src: Source, t_kill: float, seen: list[tuple[int, int, float]], n: int,
                   t1: float) -> dict:
    """After the source is killed and restarted: when did the first change made after the restart become visible,
    and how many changes the server made while it was up were never stored (around the restart)."""
    after = [(seen_t, k) for _, k, seen_t in seen if k * PERIOD_MS / 1000 >= src.ready_at]
    steps = [k for k, t in src.steps() if t_kill * 1000 - 3000 <= t < src.ready_at * 1000 + 5000]
    conn = c.connect()
    assert conn is not None
    lost = n * len(steps) - c.distinct_in(conn, min(steps), max(steps) + 1) if steps else None
    later = [k for k, t in src.steps() if src.ready_at * 1000 <= t < t1 * 1000]
    lost_later = n * len(later) - c.distinct_in(conn, min(later), max(later) + 1) if later else None
    conn.close()
    return {"down_s": round(src.ready_at - t_kill, 2),
            "first_new_change_visible_after_restart_s": round(min(after)[0] - src.ready_at, 2) if after else None,
            "lost_in_3s_before_kill_to_5s_after_restart": lost,
            "made_after_restart": n * len(later), "lost_after_restart": lost_later}


def tail(workdir: Path) -> str:
    for name in ("twin.log", "nodered.log", "tb.log", "tb.out"):
        p = workdir / name
        if p.exists():
            return p.read_text()[-1500:]
    return ""


CONTENDERS = {
    "twin": lambda: Twin(),
    "node-red-batched": lambda: NodeRed(batched=True),
    "node-red-per-message": lambda: NodeRed(batched=False),
    "thingsboard-gateway": lambda: ThingsBoardGateway(),
}


def checkout(ref: str, where: Path) -> tuple[str, Path]:
    """The tracked tree of commit ``ref`` (without data/) extracted into ``where``: (full commit id, folder).
    Nothing in the repository changes (git archive)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], capture_output=True, text=True,
                            check=True).stdout.strip()
    folder = where / f"twin-{commit[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit, "--", ".", ":(exclude)data"],
                               stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(folder)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {ref} failed")
    return commit, folder


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loads", default="1000,5000,10000,20000", help="changes/s (variables x 10 Hz)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring window per run")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--restart-load", type=int, default=None, help="load with a source restart (default: first)")
    ap.add_argument("--after-restart-s", type=float, default=15.0, help="window after the restarted server listens")
    ap.add_argument("--restart-only", action="store_true", help="only the restart runs -> peers_restart.json")
    ap.add_argument("--setup-only", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    ap.add_argument("--twin-ref", default=None, help="also run the twin of this commit (e.g. the branch's base), "
                    "as contender twin@<commit>, alternating with this checkout's: a before/after ratio in one run")
    args = ap.parse_args()
    names = args.contenders.split(",")
    setup(names)
    if args.restart_only and args.out == RESULTS / "peers.json":
        args.out = RESULTS / "peers_restart.json"
    if args.setup_only:
        print(json.dumps(versions(), indent=2))
        return 0
    loads = [int(x) for x in args.loads.split(",")]
    restart_load = args.restart_load if args.restart_load is not None else loads[0]
    import tempfile
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-peers-"))
    base.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    la0 = loadavg()
    source_build = source_build_info(base / "buildinfo")
    contenders = dict(CONTENDERS)
    ref_commit = None
    if args.twin_ref:
        ref_commit, ref_root = checkout(args.twin_ref, base)
        ref_name = f"twin@{ref_commit[:7]}"
        contenders[ref_name] = lambda: Twin(ref_root, ref_name)
        names = [*names, ref_name]
    runs = []
    try:
        for load in loads:
            n = max(1, round(load / HZ))
            for rep in range(args.reps):
                order = names if rep % 2 == 0 else names[::-1]  # alternate, and swap the order per repetition
                for name in ([] if args.restart_only else order):
                    row = measure(contenders[name](), n, args.seconds, base / f"{load}-{rep}-{name}",
                                  restart=False)
                    row.update(rep=rep, loadavg_after=loadavg())
                    print(json.dumps(row), flush=True)
                    runs.append(row)
            if load == restart_load:
                for name in names:
                    row = measure(contenders[name](), n, max(args.seconds, 10.0), base / f"{load}-restart-{name}",
                                  restart=True, after_restart_s=args.after_restart_s)
                    row.update(rep="restart", loadavg_after=loadavg())
                    print(json.dumps(row), flush=True)
                    runs.append(row)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    result = {
        "benchmark": "peers",
        "command": " ".join([".venv/bin/python -m bench.peers", *sys.argv[1:]]),
        "commit": common.git_commit(), "twin_ref": ref_commit, "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**common.machine(), "loadavg_start": la0, "loadavg_end": loadavg(),
                    "note": "source, contender and watcher on the same host; other jobs running"},
        "versions": {**versions(), "source server BuildInfo (read over OPC-UA)": source_build},
        "method": {"after_restart_s": args.after_restart_s, "hz": HZ, "publishing_interval_ms": PERIOD_MS, "probes": PROBES, "poll_ms": POLL_S * 1000},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
