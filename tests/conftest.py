"""Shared fixtures: free loopback ports, a real mosquitto broker, config builders.

The peers themselves live in twin/testing/peers.py (the benchmarks use them too); they are
re-exported here for the tests that import them from ``tests.conftest``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from twin.testing.peers import (  # noqa: F401 - re-exported for the tests
    DEFAULTS,
    PY,
    RECORDED,
    ROOT,
    Mosquitto,
    free_port,
    mosquitto_binary,
    wait_port,
    write_config,
)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    d = tmp_path / "broker"
    d.mkdir()
    m = Mosquitto(d)
    m.start()
    yield m
    m.stop()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("TWIN_"):
            monkeypatch.delenv(k)
