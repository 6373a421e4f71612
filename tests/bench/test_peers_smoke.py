"""Smoke test of the peer benchmark (bench/peers): the twin against the node-opcua source for a few seconds,
with the exact loss count and the store read back. Needs node-opcua: bench/peers/node_modules (installed by
``python -m bench.peers --setup-only``) or the test suite's tests/init/node (installed by scripts/test.sh)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.peers.__main__ import HERE, SHARED_NODE_OPCUA, Twin, measure


def test_twin_stores_every_change_of_the_node_opcua_source(tmp_path: Path) -> None:
    if shutil.which("node") is None or not ((HERE / "node_modules" / "node-opcua").exists()
                                            or SHARED_NODE_OPCUA.exists()):
        pytest.skip("node-opcua is not installed (python -m bench.peers --setup-only, or scripts/test.sh)")
    row = measure(Twin(), 50, 4.0, tmp_path / "run", restart=False)
    assert "error" not in row, row
    assert row["source_steps"] >= 20  # the source ran at several Hz at least
    assert row["changes_made"] == 50 * row["source_steps"]
    assert row["lost"] == 0, row
    assert row["stored"] == row["changes_made"]
    assert row["cpu_ms_per_1000"] > 0 and row["peak_rss_mb"] > 10
    assert row["latency_samples"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"] < 5000
