"""The connector's fast PublishResponse decoder (connectors/opcua/fastdecode.py, issue #23).

- Readings are identical with and without it: PublishResponses as asyncua encodes them (hypothesis: every scalar
  type, strings, arrays, status codes, missing / pre-1971 / picosecond timestamps, status-change notifications)
  converted by the connector from the fast and from the generic decoding; and against real servers, an asyncua
  server on loopback and the node-opcua source of the peers benchmark, with two connectors (fast on / off)
  subscribed to the same values at the same time, tagged into the same samples and dead letters (Bad → dead
  letter as before).
- Malformed or truncated bytes (hypothesis) never raise anything but asyncua's ``UaStructParsingError``
  (its publish loop skips that response; the connector's Republish asks for it again).
- A fault while converting a change of the fast path is an internal_error dead letter; the rest flows.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import Server, ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary
from asyncua.ua.uaerrors import UaStructParsingError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.opcua.acquisition import _Item, _Sub
from connectors.opcua.connector import OpcUaConnector
from connectors.opcua.fastdecode import DataChanges, PublishDecoder, decode_publish_response
from core.samples import DeadLetter, Quality, RawReading
from ontology.tagmap import TagMap
from ontology.validate import Tagger
from tests.conftest import ROOT, free_port
from tests.opcua.conftest import sample_config

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
VT = ua.VariantType


# ------------------------------------------------------------------------------------------ encoded responses
def _scalar(draw: Any) -> ua.Variant:
    kind = draw(st.sampled_from(["Double", "Float", "Int32", "Int64", "UInt16", "UInt64", "Byte", "SByte",
                                 "Boolean", "String", "DoubleArray", "Int32Array", "Null", "LocalizedText"]))
    if kind == "Double":
        return ua.Variant(draw(st.floats(allow_nan=False)), VT.Double)
    if kind == "Float":
        return ua.Variant(draw(st.floats(width=32, allow_nan=False)), VT.Float)
    if kind == "Int32":
        return ua.Variant(draw(st.integers(-2**31, 2**31 - 1)), VT.Int32)
    if kind == "Int64":
        return ua.Variant(draw(st.integers(-2**63, 2**63 - 1)), VT.Int64)
    if kind == "UInt16":
        return ua.Variant(draw(st.integers(0, 2**16 - 1)), VT.UInt16)
    if kind == "UInt64":
        return ua.Variant(draw(st.integers(0, 2**64 - 1)), VT.UInt64)
    if kind == "Byte":
        return ua.Variant(draw(st.integers(0, 255)), VT.Byte)
    if kind == "SByte":
        return ua.Variant(draw(st.integers(-128, 127)), VT.SByte)
    if kind == "Boolean":
        return ua.Variant(draw(st.booleans()), VT.Boolean)
    if kind == "String":
        return ua.Variant(draw(st.text(max_size=20)), VT.String)
    if kind == "DoubleArray":
        return ua.Variant(draw(st.lists(st.floats(allow_nan=False), max_size=4)), VT.Double, is_array=True)
    if kind == "Int32Array":
        return ua.Variant(draw(st.lists(st.integers(-2**31, 2**31 - 1), max_size=4)), VT.Int32, is_array=True)
    if kind == "LocalizedText":
        return ua.Variant(ua.LocalizedText(draw(st.text(max_size=8))), VT.LocalizedText)
    return ua.Variant(None, VT.Null)


_STATUS = [ua.StatusCodes.Good, ua.StatusCodes.UncertainLastUsableValue, ua.StatusCodes.BadSensorFailure,
           ua.StatusCodes.Good | 0x0480, ua.StatusCodes.BadCommunicationError]
_TS = st.one_of(st.none(), st.datetimes(datetime(1971, 1, 1), datetime(2200, 1, 1)).map(lambda d: d.replace(tzinfo=UTC)),
                st.datetimes(datetime(1601, 1, 2), datetime(1970, 12, 31)).map(lambda d: d.replace(tzinfo=UTC)))


@st.composite
def data_values(draw: Any) -> ua.DataValue:
    with_value = draw(st.integers(0, 5)) > 0
    status = draw(st.sampled_from(_STATUS))
    dv = ua.DataValue(_scalar(draw) if with_value else None, StatusCode=ua.StatusCode(status),
                      SourceTimestamp=draw(_TS), ServerTimestamp=draw(_TS))
    if draw(st.integers(0, 9)) == 0:  # picoseconds: the fast path leaves this notification to asyncua
        dv.SourcePicoseconds = draw(st.integers(1, 9999))
    return dv


def encode(items: list[tuple[int, ua.DataValue]], *, status_change: bool = False, seq: int = 7) -> bytes:
    notes: list[Any] = [ua.DataChangeNotification(MonitoredItems=[
        ua.MonitoredItemNotification(ClientHandle=h, Value=dv) for h, dv in items])]
    if status_change:
        notes.append(ua.StatusChangeNotification(Status=ua.StatusCode(ua.StatusCodes.BadTimeout)))
    resp = ua.PublishResponse()
    resp.Parameters.SubscriptionId = 3
    resp.Parameters.AvailableSequenceNumbers = [seq - 1, seq]
    resp.Parameters.NotificationMessage.SequenceNumber = seq
    resp.Parameters.NotificationMessage.PublishTime = T0
    resp.Parameters.NotificationMessage.NotificationData = notes
    return struct_to_binary(resp)


def connector(**kw: Any) -> OpcUaConnector:
    return OpcUaConnector(sample_config("opc.tcp://127.0.0.1:1", **kw), default_line_id="pilot-1")


def convert(conn: OpcUaConnector, resp: ua.PublishResponse, handles: list[int]) -> tuple[list, list, str]:
    sub = _Sub(id=3, items={h: _Item(f"ns=2;s=V{h}", "C") for h in handles})
    return conn._convert(sub, resp.Parameters.NotificationMessage.NotificationData, 1_800_000_000_000_000_000)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(data_values(), min_size=0, max_size=12), st.booleans(), st.sampled_from(
    ["server_then_receive", "receive", "reject"]))
def test_fast_and_generic_decoding_give_identical_readings(dvs: list[ua.DataValue], status_change: bool,
                                                           fallback: str) -> None:
    handles = list(range(1, len(dvs) + 1))
    raw = encode(list(zip(handles, dvs)), status_change=status_change)
    generic = struct_from_binary(ua.PublishResponse, Buffer(raw))
    dec = PublishDecoder()
    fast = dec.decode(Buffer(raw))
    assert dec.fast == 1 and dec.fallbacks == 0
    kinds = [type(n) for n in fast.Parameters.NotificationMessage.NotificationData]
    pico = any(dv.SourcePicoseconds for dv in dvs)
    assert kinds[0] is (ua.DataChangeNotification if pico else DataChanges)
    if status_change:
        assert kinds[1] is ua.StatusChangeNotification
    for name in ("SubscriptionId", "AvailableSequenceNumbers", "MoreNotifications"):
        assert getattr(fast.Parameters, name) == getattr(generic.Parameters, name)
    for name in ("SequenceNumber", "PublishTime"):
        assert getattr(fast.Parameters.NotificationMessage, name) == \
            getattr(generic.Parameters.NotificationMessage, name)
    assert fast.ResponseHeader == generic.ResponseHeader
    a, b = connector(timestamp_fallback=fallback), connector(timestamp_fallback=fallback)
    ra, da, sa = convert(a, fast, handles)
    rb, db, sb = convert(b, generic, handles)
    assert ra == rb and sa == sb
    assert [(d.address, d.reason_code, d.reason, d.payload) for d in da] == \
        [(d.address, d.reason_code, d.reason, d.payload) for d in db]
    assert a.counters.extra["overflows"] == b.counters.extra["overflows"]
    assert a.counters.extra.get("internal_errors", 0) == b.counters.extra.get("internal_errors", 0) == 0


def test_a_typical_publish_is_decoded_on_the_fast_path() -> None:
    dvs = [(h, ua.DataValue(ua.Variant(float(h), VT.Double), SourceTimestamp=T0 + timedelta(milliseconds=h),
                            ServerTimestamp=T0)) for h in range(1, 501)]
    raw = encode(dvs)
    resp = decode_publish_response(Buffer(raw))
    (dc,) = resp.Parameters.NotificationMessage.NotificationData
    assert isinstance(dc, DataChanges) and len(dc) == 500
    t0_ns = int(T0.timestamp()) * 1_000_000_000
    assert dc.changes[9] == (10, 10.0, 0, t0_ns + 10_000_000, t0_ns)
    readings, dead, status = convert(connector(), resp, list(range(1, 501)))
    assert not dead and not status and len(readings) == 500
    assert readings[0] == RawReading(readings[0].source, "ns=2;s=V1", 1.0, t0_ns + 1_000_000,
                                     1_800_000_000_000_000_000, "C", Quality.GOOD, "pilot-1", None, None, "simline")


# ------------------------------------------------------------------------------------------ malformed bytes
@st.composite
def mangled(draw: Any) -> bytes:
    dvs = draw(st.lists(data_values(), min_size=1, max_size=6))
    raw = bytearray(encode(list(zip(range(1, len(dvs) + 1), dvs)), status_change=draw(st.booleans())))
    how = draw(st.sampled_from(["truncate", "flip", "splice", "random", "counts"]))
    if how == "truncate":
        return bytes(raw[:draw(st.integers(0, len(raw) - 1))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] = draw(st.integers(0, 255))
        return bytes(raw)
    if how == "splice":
        i = draw(st.integers(0, len(raw)))
        return bytes(raw[:i]) + draw(st.binary(max_size=40)) + bytes(raw[i:])
    if how == "counts":  # an array count or a length somewhere set to something huge or negative
        i = draw(st.integers(0, len(raw) - 4))
        raw[i:i + 4] = struct.pack("<i", draw(st.sampled_from([-2, -1, 2**31 - 1, 100_000, 7])))
        return bytes(raw)
    return draw(st.binary(max_size=400))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mangled())
def test_malformed_bytes_fall_back_or_raise_asyncuas_parsing_error(raw: bytes) -> None:
    dec = PublishDecoder()
    try:
        resp = dec.decode(Buffer(raw))
    except UaStructParsingError:
        assert dec.failures == 1
        return
    # decoded (by one path or the other): the connector converts it without raising
    readings, dead, _ = convert(connector(), resp, list(range(1, 7)))
    assert all(type(r) is RawReading for r in readings) and all(type(d) is DeadLetter for d in dead)


def test_a_dcn_the_fast_path_cannot_finish_goes_to_asyncua() -> None:
    dv = ua.DataValue(ua.Variant(1.5, VT.Double), SourceTimestamp=T0)
    raw = bytearray(encode([(1, dv), (2, dv)]))
    # the DiagnosticInfos count of the DataChangeNotification (just before the response's own two arrays)
    i = len(raw) - 4 - 4 - 4
    assert struct.unpack_from("<i", raw, i)[0] in (-1, 0)
    raw[i:i + 4] = struct.pack("<i", 0)
    resp = PublishDecoder().decode(Buffer(bytes(raw)))
    assert type(resp.Parameters.NotificationMessage.NotificationData[0]) is DataChanges
    dv2 = ua.DataValue(ua.Variant(1.5, VT.Double), SourceTimestamp=datetime.max.replace(tzinfo=UTC))
    resp = PublishDecoder().decode(Buffer(encode([(1, dv2)])))
    assert type(resp.Parameters.NotificationMessage.NotificationData[0]) is ua.DataChangeNotification


# ------------------------------------------------------------------------------------------ real servers
def _tagger(addresses: list[str]) -> Tagger:
    tags = [{"id": f"t.v{i}", "step": "bench", "kind": "MP", "canonical_unit": "dimensionless",
             "sources": [{"opcua": a}]} for i, a in enumerate(addresses)]
    return Tagger(TagMap.from_dict({"version": 1, "tags": tags}), "pilot-1")


async def _run_pair(url: str, cfg_kw: dict[str, Any], act: Any, settle: float) -> tuple[list, list, list, list, Any]:
    """Two connectors (fast decoding on, off) on the same server while ``act()`` runs; their readings/dead."""
    on = OpcUaConnector(sample_config(url, **cfg_kw), default_line_id="pilot-1")
    off_cfg = sample_config(url, **cfg_kw)
    off = OpcUaConnector(off_cfg.model_copy(update={"subscription": off_cfg.subscription.model_copy(
        update={"fast_decode": False})}), default_line_id="pilot-1")
    got: dict[str, tuple[list, list]] = {"on": ([], []), "off": ([], [])}

    async def consume(name: str, c: OpcUaConnector) -> None:
        async for b in c.batches():
            got[name][0].extend(b.readings)
            got[name][1].extend(b.dead_letters)
            b.ack()

    async with on, off:
        await asyncio.gather(on.wait_connected(20), off.wait_connected(20))
        tasks = [asyncio.create_task(consume("on", on)), asyncio.create_task(consume("off", off))]
        await asyncio.sleep(0.5)
        await act()
        await asyncio.sleep(settle)
        await on.stop()
        await off.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert on.counters.extra["fast_decode"] == 1 and off.counters.extra["fast_decode"] == 0
    assert on._decoder is not None and on._decoder.fast > 0 and on._decoder.fallbacks == 0
    assert on.counters.reconnects == off.counters.reconnects == 0
    return got["on"][0], got["on"][1], got["off"][0], got["off"][1], on


def _key(r: RawReading) -> tuple:
    return (r.address, repr(r.value), r.source_ts_ns, r.quality, r.unit, r.line_id)


@pytest.mark.integration
async def test_identical_readings_from_an_asyncua_server() -> None:
    port = free_port()
    srv = Server()
    await srv.init()
    srv.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    srv.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await srv.register_namespace("urn:test:fastdecode")
    folder = await srv.nodes.objects.add_folder(ua.NodeId("T", idx), "T")
    kinds = {"D": (0.0, VT.Double), "F": (0.0, VT.Float), "I": (0, VT.Int32), "L": (0, VT.Int64),
             "B": (False, VT.Boolean), "S": ("", VT.String), "A": ([0.0, 0.0], VT.Double), "U": (0.0, VT.Double)}
    nodes = {k: await folder.add_variable(ua.NodeId(f"T.{k}", idx), k, ua.Variant(v, t)) for k, (v, t) in kinds.items()}
    await srv.start()
    base = datetime.now(UTC).replace(microsecond=123456) - timedelta(seconds=5)

    async def act() -> None:
        aspace = srv.iserver.aspace
        for k in range(1, 8):
            src = base + timedelta(milliseconds=100 * k, microseconds=7)
            values = {"D": (k + 0.5, VT.Double), "F": (k / 4, VT.Float), "I": (-k, VT.Int32), "L": (2**40 + k, VT.Int64),
                      "B": (bool(k % 2), VT.Boolean), "S": (f"s{k}", VT.String), "A": ([k, k + 0.25], VT.Double)}
            for name, (v, t) in values.items():
                await aspace.write_attribute_value(nodes[name].nodeid, ua.AttributeIds.Value,
                                                   ua.DataValue(ua.Variant(v, t), SourceTimestamp=src, ServerTimestamp=src))
            status, value, s_ts = ua.StatusCodes.Good, ua.Variant(float(k), VT.Double), src
            if k == 2:
                status = ua.StatusCodes.UncertainLastUsableValue
            elif k == 3:  # Bad without a value or a source timestamp: dead letter after tagging
                status, value, s_ts = ua.StatusCodes.BadSensorFailure, ua.Variant(), None
            elif k == 4:  # no source timestamp: the server's
                s_ts = None
            elif k == 5:  # before 1971: "no timestamp"
                s_ts = datetime(1970, 6, 1, tzinfo=UTC)
            elif k == 6:  # an overflow of the server's queue
                status = ua.StatusCodes.Good | 0x0480
            await aspace.write_attribute_value(nodes["U"].nodeid, ua.AttributeIds.Value, ua.DataValue(
                value, StatusCode=ua.StatusCode(status), SourceTimestamp=s_ts, ServerTimestamp=src))
            await asyncio.sleep(0.15)

    try:
        r_on, d_on, r_off, d_off, on = await _run_pair(srv.endpoint.geturl(), {"browse_roots": [f"ns={idx};s=T"],
                                                                                "nodes": []}, act, 1.0)
    finally:
        await srv.stop()
    assert not d_on and not d_off
    assert Counter(map(_key, r_on)) == Counter(map(_key, r_off))
    u = f"ns={idx};s=T.U"
    mine = [r for r in r_on if r.address == u]
    assert [r.quality for r in mine].count(Quality.BAD) == 1 and [r.quality for r in mine].count(Quality.UNCERTAIN) == 1
    assert on.counters.extra["overflows"] == 1
    assert {r.value for r in r_on if r.address == f"ns={idx};s=T.A"} >= {(k, k + 0.25) for k in range(1, 8)}
    assert {r.value for r in r_on if r.address == f"ns={idx};s=T.S"} >= {f"s{k}" for k in range(1, 8)}
    # tagged: the same samples and dead letters (Bad without a value -> bad_quality, as before)
    tagger = _tagger([u])
    out_on = tagger.tag_batch([r for r in r_on if r.address == u])
    out_off = tagger.tag_batch([r for r in r_off if r.address == u])
    norm = [(type(x).__name__, getattr(x, "reason_code", None), getattr(x, "value", None),
             getattr(x, "source_ts_ns", None)) for x in out_on]
    assert norm == [(type(x).__name__, getattr(x, "reason_code", None), getattr(x, "value", None),
                     getattr(x, "source_ts_ns", None)) for x in out_off]
    assert [n[1] for n in norm].count("bad_quality") == 1


def _node_opcua() -> Path | None:
    for p in (ROOT / "bench" / "peers" / "node_modules", ROOT / "tests" / "init" / "node" / "node_modules"):
        if (p / "node-opcua").exists():
            return p
    return None


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("node") is None or _node_opcua() is None, reason="node / node-opcua not installed")
async def test_identical_readings_from_the_node_opcua_source(tmp_path: Path) -> None:
    from bench.peers.__main__ import Source  # lazy: the peers benchmark's node-opcua source server

    src = await asyncio.to_thread(Source, 50, tmp_path)  # finds node-opcua in either folder by itself
    try:
        async def act() -> None:
            await asyncio.sleep(2.0)
        r_on, d_on, r_off, d_off, _ = await _run_pair(src.url, {"browse_roots": ["ns=1;s=Bench"], "nodes": []}, act,
                                                      0.3)
    finally:
        await asyncio.to_thread(src.stop)
    assert not d_on and not d_off
    steps = {round(r.source_ts_ns / 100e6) for r in r_on} & {round(r.source_ts_ns / 100e6) for r in r_off}
    assert len(steps) >= 15
    on = Counter(_key(r) for r in r_on if round(r.source_ts_ns / 100e6) in steps)
    off = Counter(_key(r) for r in r_off if round(r.source_ts_ns / 100e6) in steps)
    # both connectors see every step of every variable except possibly at the edges of their windows
    inner = sorted(steps)[2:-2]
    assert {k: v for k, v in on.items() if round(k[2] / 100e6) in inner} == \
        {k: v for k, v in off.items() if round(k[2] / 100e6) in inner}
    assert len([k for k in on if round(k[2] / 100e6) in inner]) == 50 * len(inner)
    assert all(isinstance(r.value, float) and r.value == round(r.source_ts_ns / 100e6) for r in r_on)


# ------------------------------------------------------------------------------------------ a conversion fault
class _Faulty(OpcUaConnector):
    """Raises while converting every Uncertain change (the fast path's per-change route)."""

    injected = 0

    def _change_reading(self, it: Any, ch: Any, recv: int) -> RawReading | DeadLetter:
        if ch[2] >> 30 == 1:
            self.injected += 1
            raise OverflowError("injected fault")
        return super()._change_reading(it, ch, recv)


def test_a_fault_converting_one_change_is_a_dead_letter_and_the_rest_flows() -> None:
    dvs = [(h, ua.DataValue(ua.Variant(float(h), VT.Double), SourceTimestamp=T0, StatusCode=ua.StatusCode(
        ua.StatusCodes.UncertainLastUsableValue if h % 4 == 0 else ua.StatusCodes.Good))) for h in range(1, 21)]
    resp = PublishDecoder().decode(Buffer(encode(dvs)))
    c = _Faulty(sample_config("opc.tcp://127.0.0.1:1"), default_line_id="pilot-1")
    readings, dead, _ = convert(c, resp, list(range(1, 21)))
    assert c.injected == 5 and len(readings) == 15 and len(dead) == 5
    assert all(d.reason_code == "internal_error" and "OverflowError: injected fault" in d.reason for d in dead)
    assert sorted(r.value for r in readings) == [float(h) for h in range(1, 21) if h % 4]
    assert c.counters.extra["internal_errors"] == 5
