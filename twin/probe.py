"""``twin check-config --connect``: probe each source and the store once, each within a timeout.

Nothing here keeps a connection: an OPC-UA probe opens a session, resolves the configured nodes and
their units and closes it (:meth:`connectors.opcua.connector.OpcUaConnector.check`); an MQTT probe
connects with a clean session under its own client id (``<client_id>-check``: the daemon's
persistent session is never taken over) and disconnects; a replay probe opens the file; the embedded
store opens its SQLite file read-only (or checks that its folder is writable); InfluxDB answers
``/ping``. Each result says what was found or why not, in one line.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ProbeResult:
    what: str  # "connector opcua:plc" / "store embedded"
    ok: bool
    detail: str


async def _opcua(c: Any, tagmap: Any) -> str:
    from connectors.opcua.connector import OpcUaConnector  # lazy: asyncua, only when a source is OPC-UA

    info = await OpcUaConnector(c).check()
    wanted = set(tagmap.addresses("opcua")) if tagmap is not None else set()
    return (f"{info['url']}: {info['nodes']} nodes ({info['with_unit']} with a unit); "
            f"{len(wanted)} OPC-UA addresses in the tag map")


def _mqtt_blocking(c: Any, timeout: float) -> str:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    done = threading.Event()
    result: dict[str, Any] = {}
    v5 = getattr(c.protocol, "value", c.protocol) == "v5"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{c.client_id}-check",
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        result["rc"] = rc
        done.set()

    client.on_connect = on_connect
    if c.username:
        client.username_pw_set(c.username, c.password)
    if c.tls is not None:
        client.tls_set(ca_certs=str(c.tls.ca_file) if c.tls.ca_file else None,
                       certfile=str(c.tls.cert_file) if c.tls.cert_file else None,
                       keyfile=str(c.tls.key_file) if c.tls.key_file else None, cert_reqs=ssl.CERT_REQUIRED)
        if getattr(c.tls.verify, "value", c.tls.verify) == "no_hostname":
            client.tls_insecure_set(True)
    try:
        client.connect(c.host, c.port, keepalive=max(5, int(timeout) + 5))
        client.loop_start()
        if not done.wait(timeout):
            raise TimeoutError(f"no CONNACK from {c.host}:{c.port} within {timeout:g} s")
    finally:
        try:
            client.disconnect()
            client.loop_stop()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
    rc = result.get("rc")
    if rc is not None and getattr(rc, "is_failure", False):
        raise ConnectionError(f"broker {c.host}:{c.port} refused the connection: {rc}")
    return f"{c.host}:{c.port}: connected (clean session, client id {c.client_id}-check); topics {', '.join(c.topics)}"


def _replay(c: Any) -> str:
    p = Path(c.path)
    with p.open("rb") as fh:
        head = fh.read(64)
    return f"{p}: readable ({p.stat().st_size} bytes{', empty' if not head else ''})"


def _embedded(store: Any) -> str:
    p = Path(store.embedded.path)
    if p.exists():
        con = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=1.0)
        try:
            tables = con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        finally:
            con.close()
        return f"{p}: opens ({tables} tables)"
    folder = p.parent
    while not folder.exists():
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{p} does not exist and {folder} is not writable")
    return f"{p}: does not exist yet; {folder} is writable (created on the first start)"


def _influx(store: Any, timeout: float) -> str:
    i = store.influxdb
    req = urllib.request.Request(i.url.rstrip("/") + "/ping")
    if i.token:
        req.add_header("Authorization", f"Token {i.token}")
    ctx = ssl.create_default_context(cafile=str(i.ca_file)) if i.ca_file else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            version = resp.headers.get("X-Influxdb-Version", "?")
            return f"{i.url}: /ping {resp.status} (InfluxDB {version})"
    except urllib.error.HTTPError as err:
        raise ConnectionError(f"{i.url}/ping answered {err.code}") from err


async def probe(cfg: Any, tagmap: Any = None, *, timeout: float = 5.0) -> list[ProbeResult]:
    """Probe every connector and the store; one result each, never raises."""

    async def one(what: str, coro: Any) -> ProbeResult:
        try:
            return ProbeResult(what, True, await asyncio.wait_for(coro, timeout))
        except TimeoutError:
            return ProbeResult(what, False, f"no answer within {timeout:g} s")
        except Exception as err:  # noqa: BLE001 - every failure is a finding to report
            return ProbeResult(what, False, f"{type(err).__name__}: {err}")

    jobs = []
    for c in cfg.connectors:
        what = f"connector {c.kind}:{c.name}"
        if c.kind == "opcua":
            jobs.append(one(what, _opcua(c, tagmap)))
        elif c.kind == "mqtt":
            jobs.append(one(what, asyncio.to_thread(_mqtt_blocking, c, timeout)))
        elif c.kind == "replay":
            jobs.append(one(what, asyncio.to_thread(_replay, c)))
        else:
            jobs.append(one(what, asyncio.sleep(0, result="no probe for this kind")))
    backend = cfg.store.backend.value
    if backend == "embedded":
        jobs.append(one("store embedded", asyncio.to_thread(_embedded, cfg.store)))
    else:
        jobs.append(one(f"store {backend}", asyncio.to_thread(_influx, cfg.store, timeout)))
    return list(await asyncio.gather(*jobs))
