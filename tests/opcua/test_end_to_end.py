"""Simulator -> OPC-UA connector -> the daemon's pipeline -> the embedded store: a tag map written by
browsing the simulator, a server restart whose gap is stored as a marker, and 200 tags at 10 Hz stored
without loss."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest

from connectors.opcua.browse import browse_variables, tagmap_skeleton
from connectors.opcua.config import OpcUaConnectorConfig
from connectors.opcua.connector import OpcUaConnector, close_client, open_client
from ontology.tagmap import TagMap
from ontology.validate import Tagger
from tests.conftest import free_port
from tests.opcua.conftest import SAMPLE, sample_config
from twin.config import PipelineConfig, TwinConfig
from twin.daemon import Daemon
from twin.metrics import Metrics
from twin.pipeline import Pipeline
from twin.simline.opcua_server import SimLineServer
from twin.store.sqlite import SQLiteStore

pytestmark = pytest.mark.integration

GAP_TAG = """
[[tags]]
id = "connector.simline_gap"
step = "line"
kind = "TRACE"
role = "actual"
canonical_unit = "s"
range = [0, 1e9]
description = "data gap of the OPC-UA connector (value = seconds without data from the source timestamp on)"
sources = [ { opcua = "__connector__/simline/gap", unit = "s" } ]
"""


async def test_simulator_to_store_with_a_gap(tmp_path: Path) -> None:
    port = free_port()
    srv = SimLineServer(port=port, seed=5)
    await srv.start()
    client = await open_client(OpcUaConnectorConfig(url=srv.url, browse_roots=["i=85"], security={"policy": "none"}))
    try:
        nodes = await browse_variables(client)
    finally:
        await close_client(client)
    tagmap_file = tmp_path / "tagmap.toml"
    tagmap_file.write_text(tagmap_skeleton(nodes) + GAP_TAG)
    connector = tomllib.loads(SAMPLE.read_text()) | {"url": srv.url}
    cfg = TwinConfig.model_validate({
        "line_id": "pilot-1", "tagmap": str(tagmap_file), "api": {"enabled": False},
        "store": {"embedded": {"path": str(tmp_path / "store.sqlite")}},
        "pipeline": {"linger_ms": 5}, "connectors": [connector]})
    daemon = Daemon(cfg, tagmap=TagMap.load(tagmap_file))
    run = asyncio.create_task(daemon.run(install_signals=False))
    try:
        conn = daemon.connectors[0]
        await conn.wait_connected(15)
        await asyncio.sleep(2.0)
        await srv.stop()
        await asyncio.sleep(1.0)
        srv = SimLineServer(port=port, seed=6)
        await srv.start()
        for _ in range(200):
            if conn.counters.extra["gaps"]:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(run, 30)
        await srv.stop()
    assert conn.counters.extra["gaps"] == 1
    store = SQLiteStore(tmp_path / "store.sqlite")
    try:
        assert store.dead_letter_count() == 0
        assert store.count("calendering.gap_actual") >= 30  # 10 Hz, ~3.5 s connected
        latest = {s.tag_id: s for s in store.latest("pilot-1")}
        assert latest["calendering.line_load"].unit == "N/mm"
        # seed 003: hundreds to ~2,000 N/mm; the line calenders with the v2 reference's law (~490 N/mm at the default gap)
        assert 200 < latest["calendering.line_load"].value < 2500
        gap = latest["connector.simline_gap"]
        assert gap.source_ts_ns == conn.gaps[0].start_ns and 1.0 <= gap.value <= 10.0
        assert store.count("connector.simline_gap") == 1
    finally:
        store.close()


async def test_200_tags_at_10_hz_stored_without_loss(tmp_path: Path) -> None:
    """Acceptance: 200 tags at 10 Hz through connector, tagging and the embedded store: every value
    the server set is stored exactly once."""
    srv = SimLineServer(port=free_port(), extra_tags=200, rate_hz=10.0)
    await srv.start()
    tagmap = TagMap.from_dict({"tags": [
        {"id": f"synthetic.tag{i:03d}", "step": "synthetic", "kind": "MP", "canonical_unit": "dimensionless",
         "sources": [{"opcua": f"ns=2;s=Synthetic.Tag{i:03d}"}]} for i in range(200)]})
    store = SQLiteStore(tmp_path / "store.sqlite")
    pipe = Pipeline(PipelineConfig(linger_ms=5), store, Tagger(tagmap, "pilot-1"), Metrics())
    try:
        conn = OpcUaConnector(sample_config(srv.url, browse_roots=["ns=2;s=Synthetic"]), default_line_id="pilot-1")
        async with conn:
            await conn.wait_connected(15)
            consume = asyncio.create_task(pipe.consume(conn.name, conn.batches()))
            await asyncio.sleep(5.0)
            srv.pause()
            await asyncio.sleep(1.0)
            final = srv.extra_seq
            await conn.stop()
            await consume
            await pipe.close()
        assert final >= 40 and pipe.stats.rejected == 0
        for i in range(200):
            vals = [int(s.value) for s in store.raw(f"synthetic.tag{i:03d}", 0, 2**63 - 1)]
            assert vals == list(range(vals[0], final + 1)), i  # every change, once, in source-time order
            assert vals[0] <= 3
        assert pipe.stats.duplicates == 0
    finally:
        store.close()
        await srv.stop()
