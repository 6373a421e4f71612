"""Config: validated as a whole before anything connects; errors name the field path."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import DEFAULTS, ROOT, write_config
from twin.config import ConfigError, check_config, load_config


def test_demo_config_and_connector_samples_load() -> None:
    cfg, tagmap = check_config(DEFAULTS / "demo.toml")
    assert cfg.connectors[0].kind == "opcua" and len(tagmap.tags) >= 30
    cfg, _ = check_config(DEFAULTS / "demo_recorded.toml")
    assert cfg.connectors[0].kind == "replay"
    samples = sorted((ROOT / "connectors").glob("*/sample.toml"))
    assert {p.parent.name for p in samples} >= {"mqtt", "replay"}
    for sample in samples:  # each README's sample: one [[connectors]] table
        table = tomllib.loads(sample.read_text())
        cfg = load_config(data={"tagmap": str(DEFAULTS / "tagmap.toml"), "connectors": [table]}, environ={})
        assert cfg.connectors[0].kind == sample.parent.name


def test_errors_name_the_field_path_and_expectation(tmp_path: Path) -> None:
    p = write_config(tmp_path, connectors=(
        '[[connectors]]\nkind = "mqtt"\nport = "eighty"\nqueue = { overflow = "explode" }\n'
        '[[connectors]]\nkind = "teleport"\n'))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "connectors.0.mqtt.port" in msg and "valid integer" in msg and "'eighty'" in msg
    assert "connectors.0.mqtt.queue.overflow" in msg and "block" in msg
    assert "connectors.1" in msg and "teleport" in msg


def test_unknown_keys_and_bad_toml_are_refused(tmp_path: Path) -> None:
    p = write_config(tmp_path, extra="colour = 'blue'")
    with pytest.raises(ConfigError, match="colour"):
        load_config(p)
    bad = tmp_path / "bad.toml"
    bad.write_text("line_id = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml")


def test_environment_overrides(tmp_path: Path) -> None:
    p = write_config(tmp_path, connectors='[[connectors]]\nkind = "mqtt"\n')
    cfg = load_config(p, environ={"TWIN_API__PORT": "9123", "TWIN_CONNECTORS__0__PASSWORD": "s3cret",
                                  "TWIN_LINE_ID": "line-9", "TWIN_HOME": "/ignored"})
    assert cfg.api.port == 9123 and cfg.line_id == "line-9"
    assert cfg.connectors[0].password == "s3cret"
    with pytest.raises(ConfigError, match="api.port"):
        load_config(p, environ={"TWIN_API__PORT": "not-a-port"})


def test_replay_forever_with_original_timestamps_is_refused(tmp_path: Path) -> None:
    p = write_config(tmp_path, connectors='[[connectors]]\nkind = "replay"\npath = "x.csv"\nrepeat = "forever"\n')
    with pytest.raises(ConfigError, match="shift_to_now"):
        load_config(p)


def test_check_config_command(tmp_path: Path) -> None:
    twin = [sys.executable, "-m", "twin.cli"]
    ok = subprocess.run([*twin, "check-config", str(DEFAULTS / "demo.toml")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stderr and "31 tags" in ok.stderr
    broken = write_config(tmp_path, connectors='[[connectors]]\nkind = "mqtt"\nport = 0\n')
    bad = subprocess.run([*twin, "check-config", str(broken)], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "connectors.0.mqtt.port" in bad.stderr and "greater than or equal to 1" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_every_example_config_in_deploy_is_valid() -> None:
    examples = sorted((ROOT / "deploy" / "config").glob("*.toml"))
    assert examples
    for p in examples:
        cfg, _ = check_config(p)
        assert cfg.connectors, p
