"""The OPC-UA connector's fixture for the shared connector contract
(tests/integration/test_connector_contract.py). Register it there with::

    from tests.opcua.contract import opcua_contract
    FACTORIES["opcua"] = opcua_contract
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from connectors.base import Connector
from connectors.opcua.connector import OpcUaConnector
from tests.conftest import free_port
from tests.opcua.conftest import ServerProcess, sample_config


async def opcua_contract(tmp_path: Path, request: pytest.FixtureRequest
                         ) -> tuple[Connector, Callable[[], Awaitable[None]]]:
    """A simulator process on a free loopback port and the sample config pointed at it; the line
    emits on its own (10 Hz), so feed() only waits for the connection."""
    srv = ServerProcess(free_port())
    srv.start()
    request.addfinalizer(srv.kill)
    conn = OpcUaConnector(sample_config(srv.url), default_line_id="L")

    async def feed() -> None:
        await conn.wait_connected(20)

    return conn, feed
