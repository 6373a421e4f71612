"""What of deploy/ can be validated on this machine (no container runtime runs here):

- every example configuration loads with ``twin check-config`` (also tests/test_config.py);
- the compose file's structure: the services the issue names, every twin worker with its own MQTT
  client id and state volume, every mounted file present, secrets only from the environment;
- the systemd units pass ``systemd-analyze verify`` (with ExecStart pointed at this checkout's twin);
- the Grafana dashboard's InfluxQL (panels and variables) runs against a real influxd holding the
  twin's data, and the provisioning files are well-formed;
- the compose stack's mosquitto.conf starts a real mosquitto.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.samples import DeadLetter, Quality, RollEvent, Sample, SourceKind
from tests.conftest import mosquitto_binary, wait_port
from tests.influx.conftest import v1_config
from tests.influx.servers import InfluxD, free_port
from twin.config import check_config
from twin.store.influx import InfluxStore

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
T0 = 1_790_000_000 * 10**9


def test_example_configs_pass_check_config() -> None:
    for p in sorted((DEPLOY / "config").glob("*.toml")):
        r = subprocess.run([sys.executable, "-m", "twin.cli", "check-config", str(p)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (p, r.stderr)
    cfg, _ = check_config(DEPLOY / "config" / "scaleout-worker.toml")
    assert cfg.connectors[0].topics == ["$share/twin/pilot/#"] and cfg.store.backend.value == "influxdb"


def test_compose_structure() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    assert {"mosquitto", "influxdb", "grafana"} <= set(services)
    twins = {k: v for k, v in services.items() if k.startswith("twin-")}
    assert len(twins) >= 2
    assert services["influxdb"]["image"].startswith("influxdb:2")
    ids, states = set(), set()
    for _name, svc in twins.items():
        env = svc["environment"]
        ids.add(env["TWIN_CONNECTORS__0__CLIENT_ID"])
        assert env["TWIN_STORE__INFLUXDB__TOKEN"].startswith("${INFLUX_TOKEN:?")  # never in the file
        assert svc["build"]["dockerfile"] == "deploy/Containerfile" and svc["stop_grace_period"]
        mounts = dict(v.split(":")[:2][::-1] for v in svc["volumes"])
        states.add(mounts["/var/lib/twin"])
        assert (DEPLOY / mounts["/etc/twin/twin.toml"]).resolve() == DEPLOY / "config" / "compose.toml"
        assert all(p.startswith("127.0.0.1:") for p in svc["ports"])
    assert len(ids) == len(twins) and len(states) == len(twins)  # one session, one outbox per worker
    for svc in services.values():  # every bind-mounted file or folder exists
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), src
    assert (DEPLOY / "Containerfile").exists()
    init = DEPLOY / "influxdb" / "init" / "10-twin-dbrp.sh"
    assert os.access(init, os.X_OK) and "dbrp create" in init.read_text()
    # the compose twin config maps the DBRP database the init script creates
    cfg, _ = check_config(DEPLOY / "config" / "compose.toml")
    assert cfg.store.influxdb.database == "twin" and "--db twin" in init.read_text()
    containerfile = (DEPLOY / "Containerfile").read_text()
    assert re.search(r"^USER twin", containerfile, re.M) and "STOPSIGNAL SIGTERM" in containerfile


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1) not installed")
def test_compose_file_validates_with_docker_compose() -> None:
    env = {**os.environ, "INFLUX_TOKEN": "t", "INFLUX_ADMIN_PASSWORD": "p", "GRAFANA_ADMIN_PASSWORD": "g"}
    r = subprocess.run(["docker-compose", "-f", "compose.yaml", "config", "-q"], cwd=DEPLOY, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    env.pop("INFLUX_TOKEN")
    r = subprocess.run(["docker-compose", "-f", "compose.yaml", "config", "-q"], cwd=DEPLOY, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "INFLUX_TOKEN" in r.stderr  # a missing secret stops the stack


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_verify(tmp_path: Path) -> None:
    twin = Path(sys.executable).parent / "twin"
    for f in (DEPLOY / "systemd").glob("*.[st]*"):
        if f.suffix in (".service", ".target"):
            (tmp_path / f.name).write_text(f.read_text().replace("/opt/pilotline-twin/bin/twin", str(twin)))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", "pilotline-twin.service",
                        "pilotline-twin@1.service", "pilotline-twin-workers.target"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    unit = (DEPLOY / "systemd" / "pilotline-twin@.service").read_text()
    for key in ("DynamicUser=yes", "StateDirectory=pilotline-twin/w%i", "ProtectSystem=strict", "NoNewPrivileges=yes",
                "Environment=TWIN_CONNECTORS__0__CLIENT_ID=twin-w%i", "Restart=always"):
        assert key in unit


def _grafana_queries() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "pilot-line.json").read_text())
    qs = [t["query"] for p in dash["panels"] for t in p["targets"]]
    qs += [v["query"] for v in dash["templating"]["list"]]
    return qs


def test_grafana_queries_run_on_influxdb(influxd: InfluxD, tmp_path: Path) -> None:
    store = InfluxStore(v1_config(influxd, tmp_path),
                        tag_info=lambda t: ("calendering", "SP" if "thickness" in t else "MP", "actual"))
    try:
        store.write([Sample("pilot-1", tag, 60.0 + i, "um", T0 + i * 10**9, T0, Quality.GOOD, "R-1", None)
                     for i in range(100) for tag in ("calendering.gap_actual", "calendering.gap_setpoint",
                                                     "calendering.line_load", "calendering.thickness_after")],
                    [DeadLetter(SourceKind.MQTT, "pilot/x", "{}", "bad", "wrong_type", T0 + 5, "mqtt", "pilot-1")],
                    [RollEvent("pilot-1", "calendering", "R-1", T0, "calendering.roll_id")])
        assert store.flush(30)
        macros = {"$timeFilter": f"time >= {T0} AND time < {T0 + 3600 * 10**9}", "$__interval": "10s",
                  "$line": ".*", "$tag": ".*"}
        for q in _grafana_queries():
            for k, v in macros.items():
                q = q.replace(k, v)
            res = influxd.query(q)  # raises on an InfluxQL error
            assert res[0].get("series"), q  # and every panel / variable finds the twin's data
    finally:
        store.close()
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "influxdb.yaml").read_text())
    d = ds["datasources"][0]
    assert d["jsonData"]["dbName"] == "twin" and d["secureJsonData"]["httpHeaderValue1"] == "Token ${INFLUX_TOKEN}"
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "twin.yaml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_compose_mosquitto_conf_starts_a_real_mosquitto(tmp_path: Path) -> None:
    port = free_port()
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    conf = conf.replace("listener 1883", f"listener {port} 127.0.0.1")
    conf = conf.replace("/mosquitto/data/", f"{tmp_path}/")
    conf = conf.replace("log_dest stdout", f"log_dest file {tmp_path}/m.log")
    (tmp_path / "m.conf").write_text(conf + f"user {getpass.getuser()}\n")
    p = subprocess.Popen([mosquitto_binary(), "-c", str(tmp_path / "m.conf")], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        assert p.poll() is None
    finally:
        p.terminate()
        p.wait(10)
