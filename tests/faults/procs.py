"""Real processes for the process-fault cases: the daemon (``python -m twin.cli run --config``), a
QoS-1 publisher that keeps a ledger of what the broker acknowledged, the simulated line as an OPC-UA
server process, a process that locks the SQLite store, and the writer of the measured results
(``bench/results/faults_<case>.json``, cited by docs/reliability.md).

Everything here starts real programs on free loopback ports in the test's temporary folder; nothing
is mocked. The broker is tests.conftest.Mosquitto, influxd is tests.influx.servers.InfluxD.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.conftest import free_port, mosquitto_binary, wait_port
from twin.testing.publisher import AckingPublisher

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
TAGMAP = ROOT / "twin" / "defaults" / "tagmap.toml"
LINE = "pilot-1"
TAGS = ["gap_actual", "line_load", "roll_speed", "roll_temperature", "thickness_after"]
BASE = {"gap_actual": 65.0, "line_load": 1000.0, "roll_speed": 5.0, "roll_temperature": 60.0,
        "thickness_after": 70.0}

Key = tuple[str, str, int]  # (line, tag id, source timestamp in ns): the store's identity of a sample


# -- the workload ------------------------------------------------------------------------------
def base_us(n: int, step_us: int, behind_s: float = 5.0) -> int:
    """A first source timestamp (us) such that n readings ``step_us`` apart all lie in the recent past
    (valid under any skew window that admits readings a few minutes old)."""
    now_us = time.time_ns() // 1000
    return now_us - n * step_us - int(behind_s * 1e6)


def reading(i: int, t0_us: int, step_us: int = 1000, line: str = LINE) -> tuple[dict[str, Any], Key, float]:
    """The i-th reading: tags cycle, source timestamps ``step_us`` apart (exact in microseconds).
    Returns (batch item with its topic, key, value)."""
    tag = TAGS[i % len(TAGS)]
    ts_us = t0_us + i * step_us
    value = round(BASE[tag] + (i % 1000) * 0.01, 2)
    item = {"topic": f"pilot/{line}/calendering/{tag}", "ts": ts_us / 1e6, "value": value}
    return item, (line, f"calendering.{tag}", ts_us * 1000), value


def single_message(item: dict[str, Any]) -> tuple[str, str]:
    body = {k: v for k, v in item.items() if k != "topic"}
    return item["topic"], json.dumps(body)


def batch_message(items: list[dict[str, Any]], line: str = LINE) -> tuple[str, str]:
    return f"pilot/{line}/batch", json.dumps({"readings": items})


# -- the publisher with a ledger ---------------------------------------------------------------
class LedgerPublisher(AckingPublisher):
    """The shared QoS-1 publisher (twin/testing/publisher.py: persistent session, unlimited local queue,
    its own retries) with a ledger of which keys each message carried and which messages the broker
    acknowledged (PUBACK). A message published while the broker is down waits in paho's queue and goes
    out on reconnect."""

    def __init__(self, port: int, client_id: str) -> None:
        super().__init__(port, client_id, reconnect_delay=(0.05, 0.5))

    def wait_all_acked(self, timeout: float = 120) -> None:
        super().wait_all_acked(timeout)


def produce(pub: LedgerPublisher, messages: list[tuple[str, str, dict[Key, float]]], rate_msgs: float,
            stop: threading.Event | None = None) -> float:
    """Publish ``messages`` at ``rate_msgs`` per second (paced against the start); returns seconds."""
    t0 = time.monotonic()
    for k, (topic, body, keys) in enumerate(messages):
        pub.publish(topic, body, keys)
        delay = t0 + (k + 1) / rate_msgs - time.monotonic()
        if delay > 0:
            if stop is not None:
                if stop.wait(delay):
                    break
            else:
                time.sleep(delay)
    return time.monotonic() - t0


# -- the daemon as a process -------------------------------------------------------------------
def daemon_config(workdir: Path, *, connectors: str = "", store: str = "", extra: str = "",
                  api_port: int | None = None) -> tuple[Path, int]:
    """A config file for a daemon in ``workdir`` (embedded store there unless ``store`` is given).
    Returns (path, API port)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = api_port or free_port()
    store = store or f'[store.embedded]\npath = "{workdir / "store.sqlite"}"\n'
    cfg = workdir / "twin.toml"
    cfg.write_text(f'line_id = "{LINE}"\ntagmap = "{TAGMAP}"\n{extra}\n{store}\n'
                   f'[api]\nport = {port}\n{connectors}\n')
    return cfg, port


def mqtt_connector(port: int, client_id: str, *, overflow: str = "block", max_batches: int | None = None) -> str:
    q = f'queue = {{ overflow = "{overflow}"' + (f", max_batches = {max_batches}" if max_batches else "") + " }\n"
    return ("[[connectors]]\n" 'kind = "mqtt"\nname = "mqtt"\n'
            f'port = {port}\nclient_id = "{client_id}"\ntopics = ["pilot/#"]\n'
            "backoff = { initial_s = 0.1, max_s = 1.0 }\n" + q)


class DaemonProcess:
    """``python -m twin.cli run --config FILE`` with this worktree first on the path; its log goes to
    ``daemon.log`` beside the config (appended across restarts)."""

    def __init__(self, config: Path, api_port: int) -> None:
        self.config = config
        self.port = api_port
        self.log = config.parent / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak_rss_kb = 0  # VmHWM of the last process, read just before it ended

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> float:
        """Start and wait until /healthz answers (any status); returns the seconds that took."""
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env = {k: v for k, v in env.items() if not k.startswith("TWIN_")}
        t0 = time.monotonic()
        with open(self.log, "ab") as log:
            log.write(f"--- start {_dt.datetime.now(_dt.UTC).isoformat()} ---\n".encode())
            self.proc = subprocess.Popen([PY, "-m", "twin.cli", "run", "--config", str(self.config)],
                                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.healthz(timeout=1.0)[0]:
                return time.monotonic() - t0
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"daemon API not answering after {timeout} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _note_rss(self) -> None:
        if self.alive():
            self.peak_rss_kb = max(self.peak_rss_kb, peak_rss_kb(self.pid))

    def kill(self) -> None:
        """SIGKILL: no flush, no acknowledgements, no goodbye."""
        if self.alive():
            assert self.proc is not None
            self._note_rss()
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        rc = 0
        if self.proc is not None:
            if self.proc.poll() is None:
                self._note_rss()
                self.proc.send_signal(signal.SIGTERM)
                try:
                    rc = self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
                    raise
            else:
                rc = self.proc.returncode
        self.proc = None
        return rc

    def _get(self, path: str, timeout: float) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except (OSError, ValueError):
            return 0, b""

    def healthz(self, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
        """(HTTP status or 0 when it did not answer, body)."""
        code, body = self._get("/healthz", timeout)
        try:
            return code, json.loads(body) if body else {}
        except ValueError:
            return code, {}

    def metrics(self, timeout: float = 10.0) -> dict[str, float]:
        """/metrics as {'name{label="x"}': value} (samples of counters/gauges; no help lines)."""
        code, body = self._get("/metrics", timeout)
        if code != 200:
            raise RuntimeError(f"/metrics answered {code}")
        return parse_metrics(body.decode())

    def get_json(self, path: str, timeout: float = 10.0) -> Any:
        code, body = self._get(path, timeout)
        if code != 200:
            raise RuntimeError(f"GET {path} answered {code}: {body[:300]!r}")
        return json.loads(body)

    def connector(self, name: str) -> dict[str, Any]:
        for c in self.healthz()[1].get("connectors", []):
            if c.get("name") == name:
                return c
        return {}

    def wait_connected(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connector(name).get("connected"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"connector {name} not connected after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC.match(line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def metric_sum(metrics: dict[str, float], name: str) -> float:
    """Sum of a metric over its labels (``name`` or ``name_total``; not _created samples)."""
    total = 0.0
    for k, v in metrics.items():
        base = k.split("{", 1)[0]
        if base in (name, name + "_total"):
            total += v
    return total


def peak_rss_kb(pid: int) -> int:
    """VmHWM (the peak resident set size the kernel recorded for the process), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- the embedded store, read from outside ----------------------------------------------------
def _connect(path: Path) -> sqlite3.Connection:
    c = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    c.execute("PRAGMA query_only=1")
    return c


def stored_rows(path: Path, tag_prefix: str = "calendering.") -> list[tuple[Key, float]]:
    """Every sample row in the SQLite store (tags starting with ``tag_prefix``) as ((line, tag, ts), value);
    a key twice in this list would be a duplicate row."""
    c = _connect(path)
    try:
        rows = c.execute("SELECT s.line, s.tag, x.ts, x.value FROM samples x JOIN series s ON s.id = x.series "
                         "WHERE s.tag LIKE ?", (tag_prefix + "%",)).fetchall()
    finally:
        c.close()
    return [((ln, tg, ts), v) for ln, tg, ts, v in rows]


def stored_count(path: Path, tag_prefix: str = "calendering.") -> int:
    try:
        c = _connect(path)
    except sqlite3.Error:
        return 0
    try:
        return c.execute("SELECT count(*) FROM samples x JOIN series s ON s.id = x.series "
                         "WHERE s.tag LIKE ?", (tag_prefix + "%",)).fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        c.close()


def dead_letter_codes(path: Path) -> Counter[str]:
    c = _connect(path)
    try:
        return Counter(dict(c.execute("SELECT reason_code, count(*) FROM dead_letters GROUP BY reason_code")))
    finally:
        c.close()


def dead_letters(path: Path) -> list[dict[str, Any]]:
    c = _connect(path)
    try:
        cur = c.execute("SELECT address, reason_code, reason, payload FROM dead_letters ORDER BY id")
        return [dict(zip(("address", "reason_code", "reason", "payload"), r)) for r in cur]
    finally:
        c.close()


class StoreLock:
    """Another process that takes the SQLite store's write lock (``BEGIN EXCLUSIVE``) and holds it
    for ``seconds``: every commit of the daemon waits (busy timeout) and, held long enough, fails."""

    SCRIPT = ("import sqlite3, sys, time\n"
              "c = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)\n"
              "c.execute('BEGIN EXCLUSIVE')\n"
              "print('locked', flush=True)\n"
              "time.sleep(float(sys.argv[2]))\n"
              "c.execute('ROLLBACK')\n"
              "print('released', flush=True)\n")

    def __init__(self, path: Path, seconds: float) -> None:
        self.path, self.seconds = path, seconds
        self.proc: subprocess.Popen[str] | None = None
        self.locked_at = 0.0
        self.released_at = 0.0

    def acquire(self, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen([PY, "-c", self.SCRIPT, str(self.path), str(self.seconds)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the lock is held
        if line.strip() != "locked":
            raise RuntimeError(f"lock holder said {line!r}")
        self.locked_at = time.monotonic()

    def wait_released(self, timeout: float = 120.0) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.released_at = time.monotonic()
        self.proc.wait(timeout)
        if line.strip() != "released":
            raise RuntimeError(f"lock holder said {line!r}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# -- the simulated line as an OPC-UA server process --------------------------------------------
class SimLineProcess:
    """``python -m twin.simline.opcua_server --port P`` (the simulated line), killable and restartable
    on the same port."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> float:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.monotonic()
        self.proc = subprocess.Popen([PY, "-m", "twin.simline.opcua_server", "--port", str(self.port), *self.args],
                                     cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout)
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


# -- waiting and measuring ---------------------------------------------------------------------
def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> float | None:
    """Seconds until ``pred()`` was true, or None after ``timeout``."""
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)


def wait_settled(count: Callable[[], int], target: int, timeout: float, quiet_s: float = 5.0,
                 interval: float = 0.1) -> tuple[float | None, int]:
    """Wait until ``count()`` reaches ``target`` or stops changing for ``quiet_s`` (what a broker lost never
    arrives: waiting the whole timeout for it proves nothing). Returns (seconds until the target was reached, or
    None, and the last count)."""
    t0 = last_change = time.monotonic()
    last = count()
    while True:
        now = time.monotonic()
        if last >= target:
            return now - t0, last
        if now - last_change > quiet_s or now - t0 > timeout:
            return None, last
        time.sleep(interval)
        c = count()
        if c != last:
            last, last_change = c, time.monotonic()


class HealthProbe:
    """Polls /healthz in a thread and records (seconds since start, status, answer time, body)."""

    def __init__(self, daemon: DaemonProcess, interval: float = 0.25, timeout: float = 5.0) -> None:
        self.daemon, self.interval, self.timeout = daemon, interval, timeout
        self.samples: list[tuple[float, int, float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            code, body = self.daemon.healthz(self.timeout)
            self.samples.append((t - self._t0, code, time.monotonic() - t, body))
            self._stop.wait(self.interval)

    def between(self, t_from: float, t_to: float) -> list[int]:
        """Statuses of probes that started between two monotonic times."""
        return [c for (t, c, _, _) in self.samples if t_from - self._t0 <= t <= t_to - self._t0]

    def statuses(self) -> list[int]:
        return [c for (_, c, _, _) in self.samples]

    def bodies(self) -> list[dict[str, Any]]:
        return [b for (_, _, _, b) in self.samples if b]

    def max_answer_s(self) -> float:
        return max((d for (_, _, d, _) in self.samples), default=0.0)


# -- results ---------------------------------------------------------------------------------
def _run(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def versions() -> dict[str, str]:
    """Versions read from the binaries themselves."""
    m = re.search(r"mosquitto version (\S+)", _run([mosquitto_binary(), "-h"]))
    out = {"mosquitto": m.group(1) if m else "unknown", "python": sys.version.split()[0],
           "sqlite": sqlite3.sqlite_version, "paho_mqtt": _pkg_version("paho-mqtt"),
           "asyncua": _pkg_version("asyncua")}
    try:
        from tests.influx.servers import _binary

        m = re.search(r"InfluxDB v?(\S+)", _run([_binary("influxd", "/usr/bin/influxd"), "version"]))
        out["influxd"] = m.group(1) if m else "unknown"
    except FileNotFoundError:
        out["influxd"] = "not installed"
    return out


def _pkg_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    head = _run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]) or "unknown"
    dirty = _run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return head + ("-dirty" if dirty else "")


def results_dir() -> Path | None:
    """bench/results, or FAULTS_RESULTS_DIR; FAULTS_RESULTS_DIR=off writes nothing."""
    d = os.environ.get("FAULTS_RESULTS_DIR", "")
    if d.lower() == "off":
        return None
    return Path(d) if d else ROOT / "bench" / "results"


def write_result(case: str, result: dict[str, Any]) -> Path | None:
    """bench/results/faults_<case>.json: commit, date, versions, then the case's measured counts.
    Written before the case's assertions, so a failing case still records what it measured."""
    d = results_dir()
    if d is None:
        return None
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"faults_{case}.json"
    doc = {"case": case, "commit": git_commit(),
           "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "versions": versions(), "machine": {"cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]},
           **result, "passed": None}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


@contextlib.contextmanager
def outcome(path: Path | None) -> Iterator[None]:
    """Around a case's assertions: records ``passed`` (true / false) and, when a check fails, its
    message in ``failed_check`` of the results file, then lets the failure through."""
    try:
        yield
    except AssertionError as err:
        _mark(path, False, str(err).splitlines()[0][:500] if str(err) else "assertion failed")
        raise
    _mark(path, True, None)


def _mark(path: Path | None, passed: bool, message: str | None) -> None:
    if path is None:
        return
    doc = json.loads(path.read_text())
    doc["passed"] = passed
    if message is not None:
        doc["failed_check"] = message
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def stream_messages(n: int, t0_us: int, step_us: int = 1000, batch: int = 20,
                    line: str = LINE) -> list[tuple[str, str, dict[Key, float]]]:
    """n readings as MQTT messages: alternately one single-reading message and one batch of ``batch``
    readings, so both payload forms cross the fault. Each message: (topic, body, {key: value})."""
    out: list[tuple[str, str, dict[Key, float]]] = []
    i = 0
    single = True
    while i < n:
        if single:
            item, key, value = reading(i, t0_us, step_us, line)
            out.append((*single_message(item), {key: value}))
            i += 1
        else:
            items, keys = [], {}
            for j in range(i, min(n, i + batch)):
                item, key, value = reading(j, t0_us, step_us, line)
                items.append(item)
                keys[key] = value
            out.append((*batch_message(items, line), keys))
            i += len(items)
        single = not single
    return out


def table_row(fault: str, load: str, sent: int | None, stored: int, dead_lettered: Any, dropped: int | None,
              policy: str | None, recovery_s: float | None, recovery: str, note: str = "") -> dict[str, Any]:
    """The case as one row of docs/reliability.md's table: fault, load, sent, stored, dead-lettered,
    dropped (with the policy that dropped it), recovery time (and what it measures)."""
    return {"fault": fault, "load": load, "sent": sent, "stored": stored, "dead_lettered": dead_lettered,
            "dropped": dropped, "dropped_by_policy": policy, "recovery_s": recovery_s, "recovery": recovery,
            "note": note}
