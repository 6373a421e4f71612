"""`twin init --security`: client certificate created, the foreign server's certificate trusted, config checked."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.init.conftest import start_foreign_server, stop
from tests.init.test_quickstart_foreign_opcua import ROOT, TWIN, twin

pytestmark = pytest.mark.integration


def test_init_with_a_secure_policy_creates_and_trusts_certificates(tmp_path: Path) -> None:
    srv = start_foreign_server(tmp_path, secure=True)  # Basic256Sha256 / SignAndEncrypt only
    try:
        site = tmp_path / "site"
        site.mkdir()
        args = ["init", "--opcua", srv.url, "--out", "twin.toml", "--yes", "--security", "basic256sha256"]
        # --yes without --trust-server: the server certificate is saved, not trusted, and the command says how
        res = twin(args, site)
        assert res.returncode == 2
        assert "server certificate not trusted" in res.stderr and "twin opcua trust" in res.stderr
        assert (site / "pki" / "own" / "cert.der").exists() and list((site / "pki" / "rejected").iterdir())
        assert not (site / "twin.toml").exists()
        # interactive: the certificate is shown and trusted on "y"; the gap setpoint's write permission is asked,
        # then whether to write the files
        interactive = [a for a in args if a != "--yes"]
        res = subprocess.run(TWIN + interactive, cwd=site, capture_output=True, text=True, timeout=120,
                             input="y\ny\ny\n", env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert res.returncode == 0, res.stderr
        assert "the server presents CN=" in res.stderr and "URI=urn:acme:calender-line" in res.stderr
        assert "trust this server certificate?" in res.stdout + res.stderr
        assert "may the feedback service propose writes to ns=1;i=51002" in res.stdout + res.stderr
        assert "write tagmap.toml and twin.toml?" in res.stdout + res.stderr
        assert len(list((site / "pki" / "trusted").iterdir())) == 1
        sec = tomllib.loads((site / "twin.toml").read_text())["connectors"][0]["security"]
        assert sec["policy"] == "basic256sha256" and sec["mode"] == "sign_and_encrypt"
        assert sec["trust_dir"] == str(site / "pki" / "trusted")
        res = twin(["check-config", "twin.toml", "--connect"], site)  # a session over SignAndEncrypt
        assert res.returncode == 0, res.stderr
        assert "ok connector opcua:plc" in res.stderr
    finally:
        stop(srv.proc)
