"""Shared helpers of the fault-injection suite: a REAL daemon process and what can be read from it.

The daemon under test is ``python -m twin.cli run --config FILE`` in its own process (so a fault
that kills, freezes or bloats it is seen as a real operator would see it), on the embedded SQLite
store, with a real mosquitto (``tests.conftest.Mosquitto``). Everything here reads the daemon from
outside: its HTTP API (/healthz, /metrics), its SQLite file (read-only connection, WAL lets it read
while the daemon writes) and /proc/PID/status (RSS).

API (small on purpose; engineer ``faults`` imports it too):

- :func:`daemon_config` writes a config file (MQTT connector, embedded store, API port, tokens).
- :class:`TwinProcess` starts / stops / kills the daemon, :meth:`TwinProcess.healthz`,
  :meth:`TwinProcess.metrics`, :meth:`TwinProcess.rss_kb` / :meth:`TwinProcess.peak_rss_kb`.
- :class:`HealthSampler` polls /healthz every ``interval_s`` in a thread and records every answer
  and the peak RSS, for "the daemon stays healthy throughout".
- :class:`StoreReader`: counts and keys of samples and dead letters in the store file.
- :class:`MqttPublisher`: the shared QoS 1 publisher (twin/testing/publisher.py) that counts the broker's acknowledgements.
- :func:`write_results` writes ``bench/results/faults_<case>.json`` (commit, date, versions of
  mosquitto and Python read from the binaries, and the counts).
"""

from __future__ import annotations

import hashlib
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import DEFAULTS, ROOT, free_port, mosquitto_binary
from twin.testing.publisher import AckingPublisher

PY = sys.executable
RESULTS = ROOT / "bench" / "results"


# --- configuration -----------------------------------------------------------------------------
def token_entry(name: str, token: str, scopes: tuple[str, ...] = ("read", "write")) -> str:
    """One ``[[api.tokens]]`` table for ``token`` (stored as its SHA-256, as `twin token` prints)."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    return f'[[api.tokens]]\nname = "{name}"\nsha256 = "{digest}"\nscopes = {json.dumps(list(scopes))}\n'


def daemon_config(workdir: Path, *, mqtt_port: int | None = None, client_id: str = "twin-faults",
                  topics: tuple[str, ...] = ("pilot/#",), api_port: int | None = None,
                  tokens: dict[str, tuple[str, ...]] | None = None, extra: str = "",
                  connectors: str = "", store_path: Path | None = None,
                  log_level: str = "info") -> Path:
    """Write ``workdir/twin.toml``: embedded store at ``store_path`` (default workdir/store.sqlite),
    the API on ``api_port`` (default a free one), an MQTT connector to ``mqtt_port`` when given,
    ``tokens`` ({token: scopes}) as [[api.tokens]], ``extra`` top-level TOML (tables such as
    ``[pipeline]`` go here), ``connectors`` more [[connectors]] tables. The API port is in the
    returned file; :class:`TwinProcess` reads it from there."""
    workdir.mkdir(parents=True, exist_ok=True)
    store_path = store_path or workdir / "store.sqlite"
    api_port = api_port or free_port()
    parts = [
        'line_id = "pilot-1"',
        f'tagmap = "{DEFAULTS / "tagmap.toml"}"',
        f'log_level = "{log_level}"',
        extra,
        f'[store.embedded]\npath = "{store_path}"',
        f"[api]\nhost = \"127.0.0.1\"\nport = {api_port}",
    ]
    for i, (tok, scopes) in enumerate((tokens or {}).items()):
        parts.append(token_entry(f"holder-{i}", tok, scopes))
    if mqtt_port is not None:
        parts.append(
            "[[connectors]]\n"
            'kind = "mqtt"\nname = "mqtt"\nhost = "127.0.0.1"\n'
            f"port = {mqtt_port}\n"
            f'client_id = "{client_id}"\n'
            f"topics = {json.dumps(list(topics))}\n"
            "backoff = { initial_s = 0.2, max_s = 2.0 }\n")
    parts.append(connectors)
    cfg = workdir / "twin.toml"
    cfg.write_text("\n".join(p for p in parts if p) + "\n")
    return cfg


def api_port_of(config: Path) -> int:
    import tomllib

    return int(tomllib.loads(config.read_text())["api"]["port"])


# --- the daemon process ------------------------------------------------------------------------
@dataclass
class Http:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, *, body: bytes | str | None = None, headers: dict[str, str] | None = None,
         timeout: float = 5.0) -> Http:
    """One HTTP request; an HTTP error status is returned, not raised (a connection error raises)."""
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Http(r.status, r.read(), dict(r.headers))
    except urllib.error.HTTPError as err:
        return Http(err.code, err.read(), dict(err.headers or {}))


def proc_status_kb(pid: int, field_name: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM, ...); None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{label="v",...}': value} (samples as exposed, labels sorted)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``labels`` (e.g. all reasons)."""
    total = 0.0
    for key, v in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{val}"' in rest for k, val in labels.items()):
            total += v
    return total


class TwinProcess:
    """``python -m twin.cli run --config FILE`` as a child process, its output in ``log``.

    The worktree is first on PYTHONPATH, so the code under test is this checkout's."""

    def __init__(self, config: Path, log: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = log or config.with_name("twin.log")
        self.api_port = api_port_of(config)
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_fh: Any = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None, "daemon not started"
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until /healthz answers at all (any status). Returns seconds it took."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(self.env)
        self._log_fh = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self._log_fh.write(f"--- start {self.starts + 1} ---\n".encode())
        self._log_fh.flush()
        t0 = time.monotonic()
        self.proc = subprocess.Popen([PY, "-m", "twin.cli", "run", "--config", str(self.config)],
                                     cwd=str(ROOT), env=env, stdout=self._log_fh, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode} at start-up:\n{self.log_tail()}")
            try:
                self.healthz(timeout=1.0)
                return time.monotonic() - t0
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"daemon API not up after {timeout} s:\n{self.log_tail()}")

    def wait_ok(self, timeout: float = 30.0) -> float:
        """Wait until /healthz says 200 and status "ok"; returns the seconds waited."""
        t0 = time.monotonic()
        last: Any = None
        while time.monotonic() - t0 < timeout:
            try:
                code, body = self.healthz(timeout=1.0)
                last = (code, body)
                if code == 200 and body.get("status") == "ok":
                    return time.monotonic() - t0
            except OSError as err:
                last = err
            time.sleep(0.1)
        raise TimeoutError(f"daemon not healthy after {timeout} s: {last}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Send ``sig`` and wait; returns the exit code, None if it had to be SIGKILLed after ``timeout``."""
        if self.proc is None:
            return None
        rc: int | None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                rc = None
        else:
            rc = self.proc.returncode
        self.proc = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        return rc

    def kill(self) -> None:
        self.stop(signal.SIGKILL, 10)

    def get(self, path: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> Http:
        return http("GET", self.base + path, timeout=timeout, headers=headers)

    def request(self, method: str, path: str, **kw: Any) -> Http:
        return http(method, self.base + path, **kw)

    def healthz(self, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of /healthz; raises OSError if it does not answer."""
        r = self.get("/healthz", timeout=timeout)
        try:
            body = r.json()
        except ValueError:
            body = {"raw": r.body[:500].decode("utf-8", "replace")}
        return r.status, body

    def metrics(self, timeout: float = 5.0) -> dict[str, float]:
        r = self.get("/metrics", timeout=timeout)
        if r.status != 200:
            raise AssertionError(f"/metrics answered {r.status}: {r.body[:300]!r}")
        return parse_metrics(r.body.decode())

    def rss_kb(self) -> int | None:
        return proc_status_kb(self.pid, "VmRSS")

    def peak_rss_kb(self) -> int | None:
        """VmHWM: the peak resident set of the process since it started (kernel-tracked)."""
        return proc_status_kb(self.pid, "VmHWM")

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class HealthSampler:
    """Poll /healthz every ``interval_s`` (a thread) while a fault case runs.

    ``samples`` holds (seconds since start, HTTP status or None when it did not answer within
    ``timeout_s``, "status" field or the error); ``peak_rss_kb`` the highest VmHWM seen."""

    def __init__(self, twin: TwinProcess, interval_s: float = 1.0, timeout_s: float = 2.0) -> None:
        self.twin = twin
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.samples: list[tuple[float, int | None, str]] = []
        self.peak_rss_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-sampler", daemon=True)
        self._t0 = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                code, body = self.twin.healthz(timeout=self.timeout_s)
                self.samples.append((t - self._t0, code, str(body.get("status"))))
            except OSError as err:
                self.samples.append((t - self._t0, None, f"no answer: {err}"))
            proc = self.twin.proc  # read once: stop() may set it to None meanwhile
            hwm = proc_status_kb(proc.pid, "VmHWM") if proc is not None and proc.poll() is None else None
            if hwm:
                self.peak_rss_kb = max(self.peak_rss_kb, hwm)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - t)))

    def __enter__(self) -> HealthSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def unhealthy(self) -> list[tuple[float, int | None, str]]:
        """Samples that were not 200 "ok"."""
        return [s for s in self.samples if s[1] != 200 or s[2] != "ok"]

    def max_gap_s(self) -> float:
        """Longest time between two answered samples (a frozen loop shows here)."""
        times = [t for t, code, _ in self.samples if code is not None]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


# --- a publisher: the shared one (twin/testing/publisher.py) ----------------------------------
MqttPublisher = AckingPublisher  # a QoS 1 publisher that counts PUBACKs (message ids wrap, so counts)


# --- the store ---------------------------------------------------------------------------------
class StoreReader:
    """Read-only view of the daemon's SQLite file (a fresh connection per call: WAL snapshot)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        c = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30.0)
        try:
            c.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
            return c.execute(sql, args).fetchall()
        finally:
            c.close()

    def sample_count(self, tag: str | None = None) -> int:
        if tag is None:
            return self._q("SELECT COUNT(*) FROM samples")[0][0]
        return self._q("SELECT COUNT(*) FROM samples x JOIN series s ON s.id = x.series WHERE s.tag = ?",
                       (tag,))[0][0]

    def sample_keys(self) -> dict[tuple[str, int], float]:
        """{(tag id, source ts in ns): value} of every stored sample (the key is unique per line)."""
        return {(tag, ts): v for tag, ts, v in self._q(
            "SELECT s.tag, x.ts, x.value FROM samples x JOIN series s ON s.id = x.series")}

    def sample_key_multiset(self) -> dict[tuple[str, str, int], int]:
        """{(line, tag, ts): rows}: more than 1 would be a duplicate (the primary key forbids it)."""
        return {(line, tag, ts): n for line, tag, ts, n in self._q(
            "SELECT s.line, s.tag, x.ts, COUNT(*) FROM samples x JOIN series s ON s.id = x.series "
            "GROUP BY s.line, s.tag, x.ts")}

    def dead_letter_count(self) -> int:
        return self._q("SELECT COUNT(*) FROM dead_letters")[0][0]

    def dead_letters_by_code(self) -> dict[str, int]:
        return dict(self._q("SELECT reason_code, COUNT(*) FROM dead_letters GROUP BY reason_code"))

    def dead_letters(self, limit: int = 1_000_000) -> list[dict[str, Any]]:
        keys = ("id", "recv", "source", "connector", "address", "line", "reason_code", "reason", "payload")
        return [dict(zip(keys, r)) for r in self._q(
            "SELECT id, recv, source, connector, address, line, reason_code, reason, payload FROM dead_letters "
            "ORDER BY id LIMIT ?", (limit,))]

    def wait_counts(self, samples: int, dead_letters: int, timeout: float = 60.0,
                    settle_s: float = 1.0) -> tuple[int, int]:
        """Wait until at least these counts are stored (or ``timeout``), then ``settle_s`` more so
        that an excess shows too; returns the counts then."""
        deadline = time.monotonic() + timeout
        n = d = 0
        while time.monotonic() < deadline:
            try:
                n, d = self.sample_count(), self.dead_letter_count()
            except sqlite3.OperationalError:  # the daemon has not created the file yet
                n = d = 0
            if n >= samples and d >= dead_letters:
                break
            time.sleep(0.2)
        time.sleep(settle_s)
        return self.sample_count(), self.dead_letter_count()


# --- results -----------------------------------------------------------------------------------
def _version(cmd: list[str], pattern: str) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({err})"
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


def versions() -> dict[str, str]:
    """Versions read from the binaries the suite runs (not from the packages' metadata)."""
    return {
        "mosquitto": _version([mosquitto_binary(), "-h"], r"mosquitto version (\S+)"),
        "python": _version([PY, "--version"], r"Python (\S+)"),
    }


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty else "")


def write_results(case: str, counts: dict[str, Any], **extra: Any) -> Path:
    """Write ``bench/results/faults_<case>.json``: commit, date, versions, machine, the counts.

    Written by the test before its assertions, so a failing run leaves its numbers too (the
    ``passed`` field says whether the case's checks held; the test sets it with :func:`mark_passed`)."""
    import platform

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"faults_{case}.json"
    doc = {
        "case": case,
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "counts": counts,
        **extra,
        "passed": None,
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def mark_passed(path: Path, passed: bool = True) -> None:
    doc = json.loads(path.read_text())
    doc["passed"] = passed
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
