"""Fixtures of the OPC-UA tests: a real simulator on a free loopback port (in-process or as a
subprocess), PKI folders, and the sample connector config pointed at the simulator."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator

import pytest

from connectors.opcua.config import OpcUaConnectorConfig
from tests.conftest import ROOT, free_port, wait_port

SAMPLE = ROOT / "connectors" / "opcua" / "sample.toml"

logging.getLogger("asyncua").setLevel(logging.ERROR)


def sample_config(url: str, **update: object) -> OpcUaConnectorConfig:
    """The shipped sample.toml, pointed at ``url``; ``update`` replaces top-level fields."""
    raw = tomllib.loads(SAMPLE.read_text())
    raw["url"] = url
    raw.update(update)
    return OpcUaConnectorConfig.model_validate(raw)


@pytest.fixture
async def simline() -> AsyncIterator[object]:
    from twin.simline.opcua_server import SimLineServer

    srv = SimLineServer(port=free_port(), seed=1)
    await srv.start()
    yield srv
    await srv.stop()


class ServerProcess:
    """The simulator as a separate process (python -m twin.simline.opcua_server), killable."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "twin.simline.opcua_server", "--port", str(self.port),
                                      *self.args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def server_process() -> Iterator[type[ServerProcess]]:
    started: list[ServerProcess] = []

    class _P(ServerProcess):
        def start(self, timeout: float = 20.0) -> None:
            super().start(timeout)
            started.append(self)

    yield _P
    for p in started:
        p.kill()


async def collect(connector: object, seconds: float, until: object = None) -> list:
    """Readings from connector.batches() for ``seconds`` (or until ``until(readings)`` is true)."""
    out: list = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    it = connector.batches().__aiter__()  # type: ignore[attr-defined]
    while loop.time() < end:
        try:
            batch = await asyncio.wait_for(it.__anext__(), timeout=max(0.01, end - loop.time()))
        except (TimeoutError, StopAsyncIteration):
            break
        out.extend(batch.readings)
        batch.ack()
        if until is not None and until(out):  # type: ignore[operator]
            break
    return out
