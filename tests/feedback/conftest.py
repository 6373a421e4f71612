"""A simulated line over OPC-UA (loopback) and a daemon with the predictor and the feedback service."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ontology.tagmap import TagMap
from tests.conftest import free_port
from twin.config import TwinConfig, load_config
from twin.daemon import Daemon
from twin.simline.model import Setpoints, make_scenario
from twin.simline.opcua_server import SimLineServer

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "twin" / "defaults" / "demo.toml"
GAP_NODE = "ns=2;s=Calender.GapSetpoint"
WRITE_TOKEN = "feedback-test-token"


def twin_config(tmp_path: Path, url: str, *, feedback: dict[str, Any], allowed_nodes: list[str] | None = None,
                api: bool = False, time_scale: float = 1.0) -> TwinConfig:
    base = load_config(DEMO)
    raw = base.model_dump(mode="json")
    conn = raw["connectors"][0]
    conn["url"] = url
    conn.setdefault("writes", {})["allowed_nodes"] = [GAP_NODE] if allowed_nodes is None else allowed_nodes
    raw["store"]["embedded"]["path"] = str(tmp_path / "store.sqlite")
    raw["api"] = {"enabled": api, "host": "127.0.0.1", "port": free_port() if api else 0, "tokens": [
        {"name": "engineer", "sha256": hashlib.sha256(WRITE_TOKEN.encode()).hexdigest(), "scopes": ["read", "write"]}]}
    if os.environ.get("PILOTLINE_TEST_MODELS_DIR"):  # a developer's registry instead of the committed one
        raw["predictor"]["models_dir"] = os.environ["PILOTLINE_TEST_MODELS_DIR"]
    raw["predictor"].update({"enabled": True, "interval_s": 1.0, "debounce_ms": 100.0,
                             "stale_after_s": 30.0})
    fb = raw["feedback"]
    fb.update({"enabled": True, "interval_s": 0.25, "line_time_scale": time_scale})
    fb.update(feedback)
    raw["pipeline"]["linger_ms"] = 5
    return TwinConfig.model_validate(raw)


@contextlib.asynccontextmanager
async def line_and_twin(tmp_path: Path, *, scenario: str = "steady", time_scale: float = 1.0, seed: int = 3,
                        feedback: dict[str, Any] | None = None, allowed_nodes: list[str] | None = None,
                        api: bool = False, setpoints: Setpoints | None = None
                        ) -> AsyncIterator[tuple[SimLineServer, Daemon]]:
    srv = SimLineServer(port=free_port(), seed=seed, scenario=make_scenario(scenario), time_scale=time_scale,
                        setpoints=setpoints)
    await srv.start()
    cfg = twin_config(tmp_path, srv.url, feedback=feedback or {}, allowed_nodes=allowed_nodes, api=api,
                      time_scale=time_scale)
    daemon = Daemon(cfg, tagmap=TagMap.load(cfg.tagmap))
    run = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await daemon.connectors[0].wait_connected(20)
        yield srv, daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(run, 30)
        await srv.stop()


async def wait_for(pred: Any, timeout: float, step: float = 0.1) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(step)
    return bool(pred())
