"""Browsing the simulator into a tag map, and the CLI commands the twin app mounts."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from connectors.opcua import security as pki
from connectors.opcua.browse import browse_variables, tagmap_skeleton
from connectors.opcua.config import OpcUaConnectorConfig
from connectors.opcua.connector import close_client, open_client
from ontology.tagmap import TagMap
from tests.conftest import free_port
from twin.simline.cli import register
from twin.simline.model import SIGNALS
from twin.simline.opcua_server import SimLineServer

pytestmark = pytest.mark.integration


def app() -> typer.Typer:
    a = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(a)
    return a


async def test_browse_lists_every_calender_node_with_its_unit(simline: SimLineServer) -> None:
    cfg = OpcUaConnectorConfig(url=simline.url, browse_roots=["i=85"], security={"policy": "none"})
    client = await open_client(cfg)
    try:
        nodes = await browse_variables(client)
    finally:
        await close_client(client)
    by_id = {n.node_id: n for n in nodes}
    assert len(nodes) == len(SIGNALS)  # namespace 0 (the Server object) is skipped
    calender = [s for s in SIGNALS if s.folder == "Calender"]
    assert len(calender) == 11
    for s in calender:
        n = by_id[f"ns=2;s={s.node}"]
        assert n.unit == s.unit, s.id  # None only for the control mode (enumeration) and the roll id (text)
        assert n.browse_path == f"/Objects/2:PilotLine/2:Calender/2:{s.node.split('.', 1)[1]}"
        assert n.writable == bool(s.setpoint) and n.readable
        assert n.description == s.description
    assert by_id["ns=2;s=Calender.GapSetpoint"].eu_range == (20.0, 300.0)
    assert by_id["ns=2;s=Calender.GapActual"].data_type == "Double"
    assert by_id["ns=2;s=Calender.RollId"].data_type == "String"
    assert by_id["ns=2;s=Calender.ControlMode"].data_type == "Int32"
    # the skeleton is a valid tag map that maps every variable by its NodeId
    tm = TagMap.from_dict(tomllib.loads(tagmap_skeleton(nodes, source_url=simline.url)))
    assert sorted(tm.addresses("opcua")) == sorted(by_id)
    b = tm.resolve("opcua", "ns=2;s=Calender.GapActual")
    assert b is not None and b.tag.id == "calendering.gap_actual" and b.source_unit == "um"
    assert tm.resolve("opcua", "ns=2;s=Calender.GapSetpoint").tag.role.value == "setpoint"
    assert tm.resolve("opcua", "ns=2;s=Calender.RollId").tag.traceability.value == "roll_id"


def test_cli_browse_writes_a_tagmap(server_process, tmp_path: Path) -> None:
    srv = server_process(free_port())
    srv.start()
    out = tmp_path / "plant" / "tagmap.toml"
    res = CliRunner().invoke(app(), ["browse", srv.url, "--write-tagmap", str(out)])
    assert res.exit_code == 0, res.output
    assert "ns=2;s=Calender.GapActual" in res.stdout and "N/mm" in res.stdout
    res = CliRunner().invoke(app(), ["browse", srv.url, "--plain", "--root", "ns=2;s=Calender"])
    assert res.exit_code == 0, res.output
    rows = [line.split("\t") for line in res.stdout.splitlines()[1:]]
    assert len(rows) == 11 and ["ns=2;s=Calender.LineLoad", "/ns=2;s=Calender/2:LineLoad", "Double", "N/mm",
                                "0 .. 3500", "r"] in rows
    tm = TagMap.load(out)
    assert len(tm.addresses("opcua")) == len(SIGNALS)
    res = CliRunner().invoke(app(), ["browse", "opc.tcp://127.0.0.1:1"])
    assert res.exit_code == 2 and "cannot reach" in res.output


def test_cli_make_cert_and_trust(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app(), ["opcua", "make-cert", "--out", str(tmp_path / "pki"), "--uri", "urn:x:client"])
    assert res.exit_code == 0, res.output
    cert = pki.load_certificate(tmp_path / "pki" / "own" / "cert.der")
    assert pki.application_uri(cert) == "urn:x:client"
    assert (tmp_path / "pki" / "trusted").is_dir() and (tmp_path / "pki" / "rejected").is_dir()
    res = runner.invoke(app(), ["opcua", "make-cert", "--out", str(tmp_path / "pki")])
    assert res.exit_code == 2 and "exists" in res.output
    other = pki.make_certificate(tmp_path / "server", server=True)
    res = runner.invoke(app(), ["opcua", "trust", str(other.cert_pem), "--pki", str(tmp_path / "pki")])
    assert res.exit_code == 0, res.output
    assert pki.TrustStore(tmp_path / "pki" / "trusted").check(other.cert_der.read_bytes()) is None
    res = runner.invoke(app(), ["opcua", "trust", str(tmp_path / "missing.der"), "--pki", str(tmp_path / "pki")])
    assert res.exit_code == 2 and "cannot read" in res.output


def test_cli_simulate_line_csv(tmp_path: Path) -> None:
    out = tmp_path / "run.csv"
    res = CliRunner().invoke(app(), ["simulate-line", "--csv", str(out), "--duration", "20", "--rate-hz", "1",
                                     "--scenario", "roll_change", "--scenario-start-s", "1"])
    assert res.exit_code == 0, res.output
    lines = out.read_text().splitlines()
    assert len(lines) == 21 and lines[0].startswith("timestamp,")
    res = CliRunner().invoke(app(), ["simulate-line", "--scenario", "nope"])
    assert res.exit_code == 2 and "steady" in res.output
