"""Registry of connector kinds: kind -> (pydantic config model, connector class).

Each source kind is one folder: ``connectors/<kind>/config.py`` (pydantic only, importable without
the protocol library) and ``connectors/<kind>/connector.py`` (the Connector subclass). The config
tree imports only the config models, so ``twin check-config`` never imports asyncua or paho.

The shared contract test (tests/test_connector_contract.py) runs against every kind listed here; a
new kind without a contract fixture fails the suite.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class KindEntry:
    kind: str
    config: str  # "module:ClassName" of the pydantic config model
    connector: str  # "module:ClassName" of the Connector subclass


KINDS: dict[str, KindEntry] = {
    "mqtt": KindEntry("mqtt", "connectors.mqtt.config:MqttConnectorConfig",
                      "connectors.mqtt.connector:MqttConnector"),
    "replay": KindEntry("replay", "connectors.replay.config:ReplayConnectorConfig",
                        "connectors.replay.connector:ReplayConnector"),
}

_OPTIONAL = {
    "opcua": KindEntry("opcua", "connectors.opcua.config:OpcUaConnectorConfig",
                       "connectors.opcua.connector:OpcUaConnector"),
}


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _discover() -> None:
    for kind, entry in _OPTIONAL.items():
        if kind in KINDS:
            continue
        module = entry.config.partition(":")[0]
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name and module.startswith(err.name):
                continue  # folder not there (yet)
            raise
        KINDS[kind] = entry


def config_models() -> list[type[BaseModel]]:
    _discover()
    return [_load(e.config) for e in KINDS.values()]


def connector_class(kind: str) -> Any:
    _discover()
    if kind not in KINDS:
        raise KeyError(f"unknown connector kind {kind!r}; known: {sorted(KINDS)}")
    return _load(KINDS[kind].connector)


def kinds() -> list[str]:
    _discover()
    return sorted(KINDS)
