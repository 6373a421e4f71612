"""Several daemon workers as real processes (``python -m twin.cli run``), one config file, each worker
told apart by environment overrides: its MQTT client id (so the broker keeps its persistent session
under it), its outbox file, its writer id and its API port. Used by tests/scaleout and
bench/bench_scaleout.py (re-exported by tests/scaleout/cluster.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from twin.testing.peers import free_port

ROOT = Path(__file__).resolve().parents[2]  # the repository
TAGMAP = ROOT / "twin" / "defaults" / "tagmap.toml"


def cluster_config(workdir: Path, broker_port: int, influx_url: str, *, group: str = "twin",
                   database: str = "twin", batch_size: int = 5000) -> Path:
    """The one configuration every worker loads (docs/deploy.md, "Scale-out")."""
    path = workdir / "worker.toml"
    path.write_text(
        'line_id = "unknown"\n'
        f'tagmap = "{TAGMAP}"\n'
        'log_level = "warning"\n'
        "[store]\n"
        'backend = "influxdb"\n'
        "[store.influxdb]\n"
        f'url = "{influx_url}"\n'
        'write_api = "v1"\n'
        f'database = "{database}"\n'
        'outbox_path = "outbox.sqlite"          # one per worker: TWIN_STORE__INFLUXDB__OUTBOX_PATH\n'
        f"batch_size = {batch_size}\n"
        "flush_interval_ms = 100\n"
        "max_in_flight_batches = 1\n"
        "[api]\n"
        "port = 0                               # one per worker: TWIN_API__PORT\n"
        "[[connectors]]\n"
        'kind = "mqtt"\n'
        f"port = {broker_port}\n"
        'client_id = "twin-worker"              # one per worker: TWIN_CONNECTORS__0__CLIENT_ID\n'
        f'topics = ["$share/{group}/pilot/#"]   # QoS 1, shared by every worker of the group\n'
        "session_expiry_s = 86400              # persistent session: the broker keeps what is unacknowledged\n"
        "backoff = { initial_s = 0.2, max_s = 2.0 }\n"
    )
    return path


class Worker:
    def __init__(self, k: int, config: Path, workdir: Path, prefix: str = "twin-w") -> None:
        self.k = k
        self.config = config
        self.workdir = workdir
        self.client_id = f"{prefix}{k}"
        self.api_port = free_port()
        self.outbox = workdir / f"outbox-{self.client_id}.sqlite"
        self.log = workdir / f"worker-{self.client_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
        env.update({
            "TWIN_CONNECTORS__0__CLIENT_ID": self.client_id,
            "TWIN_STORE__INFLUXDB__OUTBOX_PATH": str(self.outbox),
            "TWIN_STORE__INFLUXDB__WRITER_ID": self.client_id,
            "TWIN_API__PORT": str(self.api_port),
            "PYTHONPATH": str(ROOT),
        })
        return env

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "twin.cli", "run", "--config", str(self.config)],
                                         cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/healthz", timeout=2) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as err:  # 503 = degraded, still a health document
            return json.loads(err.read())
        except (OSError, ValueError):
            return None

    def wait_connected(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.k} exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            h = self.health()
            if h and all(c.get("connected") for c in h.get("connectors", [])):
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.k} not connected after {timeout} s: {self.log.read_text()[-3000:]}")

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """utime + stime of the worker process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.pid()}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """kill -9: no flush, no PUBACKs for what it holds, its session stays at the broker."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
