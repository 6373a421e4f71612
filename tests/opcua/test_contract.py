"""The shared connector contract, run here with the OPC-UA fixture (tests/opcua/contract.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration import test_connector_contract as contract
from tests.opcua.contract import opcua_contract

pytestmark = pytest.mark.integration


async def test_opcua_meets_the_connector_contract(tmp_path: Path, request: pytest.FixtureRequest,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(contract.FACTORIES, "opcua", opcua_contract)
    await contract.test_connector_contract("opcua", tmp_path, request)
