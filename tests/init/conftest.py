"""A foreign OPC-UA server (node-opcua from npm, tests/init/foreign_server.js) for the set-up tests."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node" / "node_modules"


@dataclass
class ForeignServer:
    url: str
    port: int
    proc: subprocess.Popen


def start_foreign_server(tmp_path: Path, *, secure: bool = False, timeout: float = 40.0) -> ForeignServer:
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "node-opcua").is_dir():
        pytest.skip("node-opcua is not installed (bash scripts/test.sh installs it into tests/init/node)")
    port = free_port()
    log = (tmp_path / f"foreign-{port}.log").open("w")
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    args = [node, str(HERE / "foreign_server.js"), str(port), str(tmp_path / "foreign-pki")]
    proc = subprocess.Popen(args + (["--secure"] if secure else []), stdout=subprocess.PIPE, stderr=log, env=env,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)  # never block past the deadline
        if not ready:
            if proc.poll() is not None:
                break
            continue
        line = proc.stdout.readline()
        if line.startswith("READY "):
            return ForeignServer(line.split()[1], port, proc)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the foreign server did not start: {(tmp_path / f'foreign-{port}.log').read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def foreign_server(tmp_path: Path) -> Iterator[ForeignServer]:
    srv = start_foreign_server(tmp_path)
    try:
        yield srv
    finally:
        stop(srv.proc)
