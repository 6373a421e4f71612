"""The connector against a real asyncua server (the simulator) on a free loopback port."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from asyncua import ua

from connectors import registry
from connectors.opcua.config import DeadbandType, OpcUaConnectorConfig
from connectors.opcua.connector import OpcUaConnector
from core.samples import Quality, SourceKind, now_ns
from tests.conftest import free_port
from tests.opcua.conftest import collect, sample_config
from twin.simline.model import SIGNALS
from twin.simline.opcua_server import SimLineServer

pytestmark = pytest.mark.integration


def test_registry_knows_opcua() -> None:
    assert "opcua" in registry.kinds()
    assert registry.connector_class("opcua") is OpcUaConnector
    assert OpcUaConnectorConfig in registry.config_models()


async def test_200_tags_at_10_hz_every_change_exactly_once() -> None:
    srv = SimLineServer(port=free_port(), extra_tags=200, rate_hz=10.0)
    await srv.start()
    try:
        cfg = sample_config(srv.url, browse_roots=["ns=2;s=Synthetic"])
        conn = OpcUaConnector(cfg, default_line_id="pilot-1")
        async with conn:
            await conn.wait_connected(15)
            assert len(conn.nodes) == 200
            task = asyncio.create_task(collect(conn, 30.0))
            await asyncio.sleep(5.0)
            srv.pause()  # the server stops changing values; wait for the last publish, then compare
            await asyncio.sleep(1.0)
            final = srv.extra_seq
            await conn.stop()
            readings = await task
    finally:
        await srv.stop()
    by_tag: dict[str, list[int]] = defaultdict(list)
    for r in readings:
        assert r.source is SourceKind.OPCUA and r.quality is Quality.GOOD and r.line_id == "pilot-1"
        by_tag[r.address].append(r.value)
    assert len(by_tag) == 200
    assert final >= 40  # ~10 Hz for ~5 s
    for addr, vals in by_tag.items():
        # the initial value, then every change the server made, each exactly once, in order
        assert vals == list(range(vals[0], final + 1)), addr
        assert vals[0] <= 3
    assert conn.counters.dropped == 0 and conn.counters.extra["overflows"] == 0
    assert conn.counters.received == len(readings)


async def test_line_values_carry_units_quality_and_source_timestamps(simline: SimLineServer) -> None:
    cfg = sample_config(simline.url)
    async with OpcUaConnector(cfg, default_line_id="pilot-1") as conn:
        await conn.wait_connected(15)
        t0 = now_ns()
        readings = await collect(conn, 3.0)
    latest = {r.address: r for r in readings}
    for sig in SIGNALS:
        r = latest[simline.node_id(sig.id)]
        assert r.unit == sig.unit, sig.id
        assert r.quality is Quality.GOOD
        assert r.source_ts_ns is not None and abs(r.source_ts_ns - t0) < 10e9
    assert isinstance(latest[simline.node_id("calendering.roll_id")].value, str)
    assert isinstance(latest[simline.node_id("calendering.control_mode")].value, int)
    assert 60 < latest[simline.node_id("calendering.thickness_after")].value < 100


async def test_status_code_maps_to_quality_and_timestamp_fallbacks(simline: SimLineServer) -> None:
    nid = ua.NodeId("Calender.RollForce", simline.idx)
    addr = nid.to_string()
    server_ts = datetime.now(UTC) - timedelta(seconds=30)

    async def inject(status: int, with_source_ts: bool) -> None:
        simline.pause()
        await asyncio.sleep(0.3)
        dv = ua.DataValue(ua.Variant(123.0, ua.VariantType.Double), StatusCode=ua.StatusCode(status),
                          SourceTimestamp=server_ts if with_source_ts else None, ServerTimestamp=server_ts)
        await simline.server.iserver.aspace.write_attribute_value(nid, ua.AttributeIds.Value, dv)

    async with OpcUaConnector(sample_config(simline.url, nodes=[addr], browse_roots=[]), default_line_id="x") as c:
        await c.wait_connected(15)
        await collect(c, 0.5)
        await inject(ua.StatusCodes.UncertainLastUsableValue, True)
        got = [r for r in await collect(c, 2.0, lambda rs: any(r.value == 123.0 for r in rs)) if r.value == 123.0]
        assert got and got[-1].quality is Quality.UNCERTAIN
        assert got[-1].source_ts_ns == int(server_ts.timestamp() * 1e6) * 1000
        simline.resume()
        await collect(c, 0.5)
        await inject(ua.StatusCodes.BadSensorFailure, False)
        got = [r for r in await collect(c, 2.0, lambda rs: any(r.quality is Quality.BAD for r in rs))
               if r.quality is Quality.BAD]
        assert got and got[-1].value is None  # a Bad value is null (OPC 10000-4 7.7.1)
        # no SourceTimestamp: server_then_receive falls back to the ServerTimestamp
        assert got[-1].source_ts_ns == int(server_ts.timestamp() * 1e6) * 1000
    simline.resume()
    await asyncio.sleep(0.3)
    cfg = sample_config(simline.url, nodes=[addr], browse_roots=[], timestamp_fallback="receive")
    async with OpcUaConnector(cfg, default_line_id="x") as c:
        await c.wait_connected(15)
        await collect(c, 0.5)
        await inject(ua.StatusCodes.Good, False)
        got = [r for r in await collect(c, 2.0, lambda rs: any(r.value == 123.0 for r in rs)) if r.value == 123.0]
        assert got and got[-1].source_ts_ns == got[-1].received_ts_ns
    simline.resume()


async def test_absolute_deadband_reaches_the_server() -> None:
    """The synthetic tags step by 1. asyncua's server compares each sample with the previous sample
    (not with the last reported one), so a deadband above 1 suppresses every step and one below 1
    none: enough to show the filter is sent and applied."""
    srv = SimLineServer(port=free_port(), extra_tags=3, rate_hz=20.0)
    await srv.start()
    counts = {}
    try:
        for band in (0.5, 1.5):
            cfg = sample_config(srv.url, browse_roots=["ns=2;s=Synthetic"])
            cfg = cfg.model_copy(update={"subscription": cfg.subscription.model_copy(
                update={"deadband_type": DeadbandType.ABSOLUTE, "deadband_value": band})})
            async with OpcUaConnector(cfg, default_line_id="x") as c:
                await c.wait_connected(15)
                readings = await collect(c, 1.5)
            counts[band] = len({r.value for r in readings if r.address.endswith("Tag000")})
    finally:
        await srv.stop()
    assert counts[0.5] >= 20  # 20 Hz for 1.5 s
    assert counts[1.5] == 1  # the initial value only


async def test_polling_mode_delivers_changes_only() -> None:
    srv = SimLineServer(port=free_port(), extra_tags=10, rate_hz=5.0)
    await srv.start()
    try:
        cfg = sample_config(srv.url, browse_roots=["ns=2;s=Synthetic"], mode="polling",
                            polling={"interval_ms": 100, "emit": "changes"})
        async with OpcUaConnector(cfg, default_line_id="x") as c:
            await c.wait_connected(15)
            live = await collect(c, 2.0)
            srv.pause()
            await asyncio.sleep(0.5)
            await collect(c, 0.3)
            frozen = await collect(c, 1.0)
            polls = c.counters.extra["polls"]
    finally:
        await srv.stop()
    per_tag = defaultdict(list)
    for r in live:
        per_tag[r.address].append(r.value)
    assert len(per_tag) == 10
    for vals in per_tag.values():
        assert len(vals) >= 6 and vals == sorted(set(vals))  # 5 Hz changes polled at 10 Hz: each once
    assert frozen == []  # nothing changes, nothing is delivered
    assert polls >= 25


async def test_unknown_node_is_reported_and_the_rest_acquired(simline: SimLineServer) -> None:
    cfg = sample_config(simline.url, nodes=["ns=2;s=Calender.GapActual", "ns=2;s=NoSuch.Node"], browse_roots=[])
    async with OpcUaConnector(cfg, default_line_id="x") as c:
        await c.wait_connected(15)
        readings = await collect(c, 1.0)
    assert c.counters.extra["bad_nodes"] == 1
    assert {r.address for r in readings} == {"ns=2;s=Calender.GapActual"}


async def test_connect_refused_is_retried_with_a_clear_error() -> None:
    port = free_port()
    cfg = sample_config(f"opc.tcp://127.0.0.1:{port}")
    async with OpcUaConnector(cfg, default_line_id="x") as c:
        with pytest.raises(TimeoutError) as ei:
            await c.wait_connected(1.5)
        assert "cannot reach" in str(ei.value)
        srv = SimLineServer(port=port)
        await srv.start()
        try:
            await c.wait_connected(15)  # found by itself once the server is up
            assert c.counters.extra["gaps"] == 0  # nothing was acquired before: no gap
        finally:
            await c.aclose()
            await srv.stop()
