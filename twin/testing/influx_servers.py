"""Real time-series servers for the tests and benchmarks, each on free loopback ports in a temporary folder.

- :class:`InfluxD`: Debian's ``influxd`` 1.6.7 (the v1 HTTP API: ``/write``, ``/query`` with InfluxQL,
  ``/ping``; no ``/api/v2``), started from a generated config file (HTTP and RPC bound to loopback,
  meta / data / WAL in the folder, reporting off, its own monitor store off).
- :class:`VictoriaMetrics`: the ``victoria-metrics`` single binary, which accepts influxdb-client's
  ``/api/v2/write`` (and ``/write``) line protocol; read back through ``/api/v1/export`` (JSON lines).

Both can be stopped (SIGTERM, or SIGKILL for a crash) and started again on the same ports and data.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from twin.testing.peers import free_port


def _binary(name: str, *extra: str) -> str:
    for cand in (shutil.which(name), *extra):
        if cand and Path(cand).exists():
            return cand
    raise FileNotFoundError(f"{name} is not installed: scripts/setup.sh installs it (apt-get install "
                            f"{'influxdb' if name == 'influxd' else name})")


def have(name: str) -> bool:
    try:
        _binary(name, f"/usr/bin/{name}")
        return True
    except FileNotFoundError:
        return False


class _Server:
    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _cmd(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self._cmd(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            if self._ready():
                return
            time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise TimeoutError(f"{self.name} not ready on port {self.port} after {timeout} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except OSError:
            return 0, b""


class InfluxD(_Server):
    """influxd 1.x from a generated config; ``database`` is created on first start."""

    name = "influxd"

    def __init__(self, workdir: Path, database: str = "twin") -> None:
        super().__init__(workdir)
        self.rpc_port = free_port()
        self.database = database
        self.conf = workdir / "influxdb.conf"
        self.conf.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{self.rpc_port}"\n'
            f'[meta]\n  dir = "{workdir}/meta"\n  logging-enabled = false\n'
            f'[data]\n  dir = "{workdir}/data"\n  wal-dir = "{workdir}/wal"\n  query-log-enabled = false\n'
            '  wal-fsync-delay = "0s"\n'
            "[monitor]\n  store-enabled = false\n"
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            "  auth-enabled = false\n  max-body-size = 0\n"
            '[logging]\n  level = "warn"\n  suppress-logo = true\n'
            "[continuous_queries]\n  enabled = false\n"
        )

    def _cmd(self) -> list[str]:
        return [_binary("influxd", "/usr/bin/influxd"), "-config", str(self.conf)]

    def _ready(self) -> bool:
        return self._get("/ping")[0] == 204

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)
        self.query(f'CREATE DATABASE "{self.database}"', method="POST")

    def query(self, q: str, *, method: str = "GET", db: str | None = None) -> list[dict[str, Any]]:
        """Run InfluxQL; return the statement results (raises on an error)."""
        params = urllib.parse.urlencode({"q": q, "db": db or self.database, "epoch": "ns"})
        req = urllib.request.Request(f"{self.url}/query?{params}", method=method)
        with urllib.request.urlopen(req, timeout=30) as r:
            body = json.loads(r.read())
        for res in body.get("results", []):
            if "error" in res:
                raise RuntimeError(res["error"])
        return body.get("results", [])

    def count(self, measurement: str = "twin_sample", field: str = "value", where: str = "") -> int:
        return self.count_db(self.database, measurement, field, where)

    def count_db(self, db: str, measurement: str = "twin_sample", field: str = "value", where: str = "") -> int:
        res = self.query(f'SELECT count("{field}") FROM "{measurement}"' + (f" WHERE {where}" if where else ""), db=db)
        series = res[0].get("series") if res else None
        return int(series[0]["values"][0][1]) if series else 0


class VictoriaMetrics(_Server):
    """victoria-metrics single node; data in the folder; read back with :meth:`export`."""

    name = "victoria-metrics"

    def _cmd(self) -> list[str]:
        return [_binary("victoria-metrics", "/usr/bin/victoria-metrics"),
                f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self.workdir / 'data'}",
                "-retentionPeriod=100y", "-search.disableCache", "-loggerLevel=ERROR",
                # one value per series and millisecond, like InfluxDB's point identity (a re-sent point
                # overwrites itself instead of being stored twice)
                "-dedup.minScrapeInterval=1ms"]

    def _ready(self) -> bool:
        return self._get("/health")[0] == 200

    def flush(self) -> None:
        """Make everything ingested so far searchable (VictoriaMetrics buffers for about a second)."""
        self._get("/internal/force_flush", timeout=10)

    def export(self, match: str = '{__name__=~"twin_.*"}') -> list[dict[str, Any]]:
        """Every stored series matching ``match``, as /api/v1/export JSON lines."""
        self.flush()
        params = urllib.parse.urlencode({"match[]": match, "start": "0"})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{params}", timeout=60) as r:
            return [json.loads(line) for line in r.read().splitlines() if line.strip()]
