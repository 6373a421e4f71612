"""Helpers of the MQTT tests: a daemon on a real mosquitto with an MQTT connector, a tag map with extra
sources, and pysparkplug (the Sparkplug B publisher comes from that library, not from our code)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from ontology.tagmap import TagMap
from twin.config import TwinConfig, load_config
from twin.daemon import Daemon

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "twin" / "defaults" / "demo.toml"
TAGMAP = ROOT / "twin" / "defaults" / "tagmap.toml"

# pysparkplug 0.6.1 (the newest) targets paho-mqtt 1.x: its Client calls message_retry_set, which paho 2
# removed (it was a no-op since paho 1.5). Everything else of it runs on paho 2 (callback API version 1).
if not hasattr(mqtt.Client, "message_retry_set"):
    mqtt.Client.message_retry_set = lambda self, retry: None  # type: ignore[attr-defined]


def tagmap_with(sources: dict[str, list[dict[str, str]]]) -> TagMap:
    raw = tomllib.loads(TAGMAP.read_text())
    for t in raw["tags"]:
        t["sources"] = list(t.get("sources", [])) + sources.get(t["id"], [])
    return TagMap.from_dict(raw, origin="test tag map")


def twin_config(tmp_path: Path, port: int, mqtt_extra: dict[str, Any], *, feedback: bool = False) -> TwinConfig:
    raw = load_config(DEMO).model_dump(mode="json")
    conn = {"kind": "mqtt", "name": "broker", "port": port, "client_id": f"twin-{tmp_path.name[-20:]}",
            "topics": ["pilot/#", "plant/#"], "backoff": {"initial_s": 0.2, "max_s": 1.0}, **mqtt_extra}
    raw["connectors"] = [conn]
    raw["store"]["embedded"]["path"] = str(tmp_path / "store.sqlite")
    raw["api"] = {"enabled": False}
    raw["predictor"]["enabled"] = feedback
    raw["feedback"].update({"enabled": feedback, "interval_s": 3600.0})
    raw["pipeline"]["linger_ms"] = 5
    return TwinConfig.model_validate(raw)


@contextlib.asynccontextmanager
async def running_twin(tmp_path: Path, port: int, mqtt_extra: dict[str, Any],
                       sources: dict[str, list[dict[str, str]]], *, feedback: bool = False) -> AsyncIterator[Daemon]:
    cfg = twin_config(tmp_path, port, mqtt_extra, feedback=feedback)
    daemon = Daemon(cfg, tagmap=tagmap_with(sources))
    run = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await daemon.connectors[0].wait_connected(10)  # type: ignore[attr-defined]
        await asyncio.sleep(0.3)  # the SUBACK: births are QoS 0 and not retained
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(run, 30)


async def wait_for(pred: Any, timeout: float = 10.0, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(step)
    return bool(pred())


def values(daemon: Daemon, tag: str) -> list[tuple[int, float, int]]:
    """(source ts ns, value, quality) of every stored sample of a tag, oldest first."""
    return [(s.source_ts_ns, s.value, int(s.quality)) for s in daemon.store.raw(tag, 0, 2**62, limit=100_000)]


class Watcher:
    """A plain paho client that records what arrives on some topics (retained messages included)."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{time.monotonic_ns()}")
        self.client.on_message = lambda c, u, m: self.got.append((m.topic, m.payload, m.retain))
        self.client.connect("127.0.0.1", port)
        for t in topics:
            self.client.subscribe(t, 1)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
