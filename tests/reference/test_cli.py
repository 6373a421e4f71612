"""The typer sub-app mounted by the lead as ``twin surrogates``."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from surrogates.reference.cli import app


def test_generate_help_lists_options():
    res = CliRunner().invoke(app, ["generate", "--help"])
    assert res.exit_code == 0
    for opt in ("--n-runs", "--out", "--workers", "--resume", "--frames-subset"):
        assert opt in res.output


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "surrogates.reference.cli", "generate", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--n-runs" in out.stdout
