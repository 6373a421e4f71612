"""The Sparkplug B host's decoding state (connectors/mqtt/sparkplug.py) without a broker: payloads encoded by
pysparkplug, commands captured instead of published."""

from __future__ import annotations

import random

import pysparkplug as spb
import pytest
from pysparkplug import _protobuf as pb

from connectors.mqtt.config import SparkplugConfig
from connectors.mqtt.sparkplug import SparkplugHost
from core.samples import Quality

RECV = 1_796_000_000_000_000_000
T = 1_796_000_000_000  # ms


def host(**cfg: object) -> tuple[SparkplugHost, list[tuple[str, bytes]]]:
    sent: list[tuple[str, bytes]] = []
    h = SparkplugHost(SparkplugConfig(enabled=True, **cfg), "t", lambda t, p, q, r: sent.append((t, p)))
    return h, sent


def m(name: str | None, value: object, alias: int, dt: spb.DataType = spb.DataType.DOUBLE) -> spb.Metric:
    return spb.Metric(timestamp=T, name=name, datatype=dt, value=value, alias=alias)


def nbirth(seq: int = 0, bd: int = 0) -> bytes:
    return spb.NBirth(timestamp=T, seq=seq, metrics=(m("Speed", 1.5, 1), m("bdSeq", bd, 99, spb.DataType.INT64),
                                                     m("Node Control/Rebirth", False, 98, spb.DataType.BOOLEAN))).encode()


def ddata(seq: int, value: float, alias: int = 10) -> bytes:
    return spb.DData(timestamp=T + seq, seq=seq, metrics=(m(None, value, alias),)).encode()


def feed(h: SparkplugHost, topic: str, payload: bytes):
    return h.handle(topic.encode(), payload, RECV)


def test_sequence_wraps_at_255_without_a_gap_and_a_gap_asks_once_per_interval() -> None:
    h, sent = host(rebirth_min_interval_s=60)
    feed(h, "spBv1.0/G/NBIRTH/E", nbirth(seq=254))
    r, d = feed(h, "spBv1.0/G/DBIRTH/E/D", spb.DBirth(timestamp=T, seq=255, metrics=(m("Gap", 1.0, 10),)).encode())
    assert d == [] and [x.address for x in r] == ["G/E/D/Gap"]
    r, d = feed(h, "spBv1.0/G/DDATA/E/D", ddata(0, 2.0))  # 255 -> 0: no gap
    assert d == [] and r[0].value == 2.0 and r[0].source_ts_ns == T * 1_000_000 and sent == []
    r, _ = feed(h, "spBv1.0/G/DDATA/E/D", ddata(2, 3.0))  # 1 is missing
    assert r[0].value == 3.0  # its values still count
    assert h.counters["sparkplug_seq_gaps"] == 1 and [t for t, _ in sent] == ["spBv1.0/G/NCMD/E"]
    cmd = spb.NCmd.decode(sent[0][1])
    assert [(x.name, x.value) for x in cmd.metrics] == [("Node Control/Rebirth", True)]
    feed(h, "spBv1.0/G/DDATA/E/D", ddata(9, 4.0))  # awaiting the rebirth: no second request
    assert len(sent) == 1
    feed(h, "spBv1.0/G/NBIRTH/E", nbirth(seq=0))
    assert not h.snapshot()["nodes"]["G/E"]["awaiting_rebirth"]


def test_unknown_alias_and_data_before_birth_are_dead_letters_with_a_rebirth_request() -> None:
    h, sent = host(rebirth_min_interval_s=0)
    r, d = feed(h, "spBv1.0/G/DDATA/E/D", ddata(3, 1.0))
    assert r == [] and d[0].reason_code == "sparkplug_no_birth" and len(sent) == 1
    feed(h, "spBv1.0/G/NBIRTH/E", nbirth())
    feed(h, "spBv1.0/G/DBIRTH/E/D", spb.DBirth(timestamp=T, seq=1, metrics=(m("Gap", 1.0, 10),)).encode())
    r, d = feed(h, "spBv1.0/G/DDATA/E/D", ddata(2, 1.0, alias=77))
    assert r == [] and d[0].reason_code == "sparkplug_unknown_alias" and len(sent) == 2


def test_unsupported_metric_types_are_dropped_and_the_rest_counts() -> None:
    h, _ = host()
    feed(h, "spBv1.0/G/NBIRTH/E", nbirth())
    birth = pb.Payload.FromString(spb.DBirth(timestamp=T, seq=1, metrics=(m("Gap", 1.0, 10),)).encode())
    ds = birth.metrics.add()
    ds.name, ds.alias, ds.datatype, ds.timestamp = "Recipe", 20, 16, T  # a DataSet
    ds.dataset_value.num_of_columns = 1
    r, d = feed(h, "spBv1.0/G/DBIRTH/E/D", birth.SerializeToString())
    assert d == [] and [x.address for x in r] == ["G/E/D/Gap"] and h.counters["sparkplug_unsupported_metrics"] == 1
    data = pb.Payload.FromString(ddata(2, 5.0))
    x = data.metrics.add()
    x.alias = 20  # the DataSet again, by alias only
    x.dataset_value.num_of_columns = 1
    r, d = feed(h, "spBv1.0/G/DDATA/E/D", data.SerializeToString())
    assert d == [] and [v.value for v in r] == [5.0] and h.counters["sparkplug_unknown_alias"] == 0


def test_death_marks_stale_once_and_a_late_will_of_an_earlier_session_is_ignored() -> None:
    h, _ = host()
    feed(h, "spBv1.0/G/NBIRTH/E", nbirth(bd=5))
    feed(h, "spBv1.0/G/DBIRTH/E/D", spb.DBirth(timestamp=T, seq=1, metrics=(m("Gap", 1.0, 10),)).encode())
    late = spb.NDeath(timestamp=T, bd_seq_metric=m("bdSeq", 4, 99, spb.DataType.INT64)).encode()
    assert feed(h, "spBv1.0/G/NDEATH/E", late) == ([], [])
    assert h.counters["sparkplug_stale_deaths_ignored"] == 1 and h.snapshot()["nodes"]["G/E"]["online"]
    r, d = feed(h, "spBv1.0/G/DDEATH/E/D", spb.DDeath(timestamp=T, seq=2).encode())
    assert [(x.address, x.value, x.quality, x.source_ts_ns) for x in r] == [("G/E/D/Gap", 1.0, Quality.BAD, RECV)]
    death = spb.NDeath(timestamp=T, bd_seq_metric=m("bdSeq", 5, 99, spb.DataType.INT64)).encode()
    r, _ = feed(h, "spBv1.0/G/NDEATH/E", death)
    assert sorted(x.address for x in r) == ["G/E/D/Gap", "G/E/Speed"] and all(x.quality == Quality.BAD for x in r)
    assert not h.snapshot()["nodes"]["G/E"]["online"]


def test_hostile_input_never_raises() -> None:
    h, _ = host()
    rng = random.Random(7)
    feed(h, "spBv1.0/G/NBIRTH/E", nbirth())
    topics = ["spBv1.0/G/NBIRTH/E", "spBv1.0/G/DBIRTH/E/D", "spBv1.0/G/DDATA/E/D", "spBv1.0/G/NDATA/E",
              "spBv1.0/G/NDEATH/E", "spBv1.0/G/DDEATH/E/D", "spBv1.0/G/XXX/E", "spBv1.0/G", "spBv1.0/G/NDATA/E/D",
              "spBv1.0/STATE/other"]
    seen = set()
    for i in range(3000):
        raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 60)))
        r, d = feed(h, topics[i % len(topics)], raw)
        seen |= {x.reason_code for x in d}
    r, d = h.handle(b"spBv1.0/G/NDATA/E", b"x" * 100, RECV, max_bytes=64)
    assert d[0].reason_code == "malformed_payload" and "max_payload_bytes" in d[0].reason
    r, d = h.handle(b"spBv1.0/G/\xff/E", b"", RECV)
    assert d[0].reason_code == "bad_text"
    assert "malformed_payload" in seen


@pytest.mark.parametrize("dtype,value", [(spb.DataType.BYTES, b"\x00\x01"), (spb.DataType.DOUBLE_ARRAY, (1.0, 2.0))])
def test_non_scalar_metrics_are_wrong_type_dead_letters(dtype: spb.DataType, value: object) -> None:
    h, _ = host()
    r, d = feed(h, "spBv1.0/G/NBIRTH/E", spb.NBirth(timestamp=T, seq=0, metrics=(m("Blob", value, 3, dtype),
                                                                                m("Ok", 2.0, 4))).encode())
    assert [x.address for x in r] == ["G/E/Ok"] and [x.reason_code for x in d] == ["wrong_type"]
