"""The connector's configuration: the sample file, validation, and its place in the daemon config."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest
from pydantic import ValidationError

from connectors.opcua.config import AcquisitionMode, OpcUaConnectorConfig, SecurityPolicy
from connectors.opcua.units import BY_ID, unit_from_eu, unit_id
from tests.conftest import ROOT
from tests.opcua.conftest import SAMPLE, sample_config


def test_sample_config_loads_with_every_field_described() -> None:
    cfg = OpcUaConnectorConfig.model_validate(tomllib.loads(SAMPLE.read_text()))
    assert cfg.kind == "opcua" and cfg.mode is AcquisitionMode.SUBSCRIPTION
    assert cfg.security.policy is SecurityPolicy.NONE
    assert cfg.subscription.publishing_interval_ms == 100
    assert "ns=2;s=Calender.GapSetpoint" in cfg.writes.allowed_nodes

    def walk(model: type) -> None:
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} has no description"
            assert not f.is_required() or name == "kind", f"{model.__name__}.{name} has no default"
            ann = f.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(OpcUaConnectorConfig)


def test_default_policy_is_secure_and_none_only_when_configured() -> None:
    cfg = OpcUaConnectorConfig(nodes=["i=2258"])
    assert cfg.security.policy is SecurityPolicy.BASIC256SHA256
    assert cfg.security.mode.value == "sign_and_encrypt"


@pytest.mark.parametrize("bad, match", [
    ({"url": "http://x:4840"}, "opc.tcp://"),
    ({"nodes": [], "browse_roots": []}, "nodes"),
    ({"nodes": ["Calender.GapActual"]}, "not a NodeId"),
    ({"subscription": {"keepalive_count": 100, "lifetime_count": 200}}, "lifetime_count"),
    ({"subscription": {"deadband_type": "absolute"}}, "deadband_value"),
    ({"password": "x"}, "needs a username"),
    ({"url": "opc.tcp://10.1.2.3:4840", "username": "u", "password": "p", "security": {"policy": "none"}},
     "clear text"),
    ({"mode": "push"}, "subscription"),
    ({"security": {"policy": "basic128rsa15"}}, "basic256sha256"),
    ({"surprise": 1}, "Extra inputs"),
])
def test_invalid_configs_fail_fast(bad: dict, match: str) -> None:
    raw = {"nodes": ["ns=2;s=Calender.GapActual"]} | bad
    with pytest.raises(ValidationError, match=match):
        OpcUaConnectorConfig.model_validate(raw)


def test_daemon_config_accepts_an_opcua_connector(tmp_path) -> None:
    from twin.config import TwinConfig

    tm = tmp_path / "tm.toml"
    tm.write_text("version = 1\ntags = []\n")
    cfg = TwinConfig.model_validate({"tagmap": str(tm), "connectors": [tomllib.loads(SAMPLE.read_text())]})
    assert cfg.connectors[0].kind == "opcua"


def test_config_imports_no_asyncua() -> None:
    code = ("import sys, connectors.opcua.config, connectors.opcua.units, twin.simline.model; "
            "print('asyncua' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unece_unit_ids() -> None:
    assert unit_id("4H") == 13384  # micrometre, as in OPC 10000-8 examples
    assert unit_id("CEL") == 4408652
    assert unit_from_eu("http://www.opcfoundation.org/UA/units/un/cefact", 13384, "µm") == "um"
    assert unit_from_eu(None, -1, "µm") == "um"  # a server that only fills the display name
    assert unit_from_eu("http://www.opcfoundation.org/UA/units/un/cefact", 999999, "furlong") is None
    assert len(BY_ID) == len({u.code for u in BY_ID.values()})


def test_sample_url_override() -> None:
    assert sample_config("opc.tcp://127.0.0.1:5000").url == "opc.tcp://127.0.0.1:5000"
