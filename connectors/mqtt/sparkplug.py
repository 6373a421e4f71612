"""Sparkplug B host application inside the MQTT connector (payload codec: pysparkplug).

Topics ``spBv1.0/<group>/<type>/<edge node>[/<device>]``:

- **NBIRTH / DBIRTH**: the metric names, aliases and data types of a node / device are remembered
  (they decode the aliases of later data messages); the birth's values are readings too.
- **NDATA / DDATA**: decoded with the birth (alias -> name, datatype); each metric is a reading.
- **Sequence numbers** (``seq``, 0..255, wrapping): every message of an edge node after its NBIRTH
  carries the next number. A gap, a data message before any birth, or an unknown alias makes the
  host send ``spBv1.0/<group>/NCMD/<edge node>`` with ``Node Control/Rebirth = true`` (at most once
  per ``rebirth_min_interval_s`` per node; a request held back by that interval goes out with the
  node's next message after it, and a node that did not answer is asked again at its next gap); the
  node answers with a new NBIRTH and DBIRTHs.
- **NDEATH / DDEATH**: the node (with its devices) or the device is offline; with ``stale_on_death``
  each of its metrics' last value is repeated once with quality ``bad`` at the time of the death, so
  the predictor and the feedback service stop using it. An NDEATH whose ``bdSeq`` is behind the one
  of the node's current birth (the late will of an earlier session) is ignored; an equal or later
  one is accepted (some edge-node libraries, pysparkplug 0.6 among them, send the next session's
  bdSeq in a graceful NDEATH).
- **STATE**: the host's own ``spBv1.0/STATE/<host_id>`` (retained, QoS 1, JSON ``{"online": ..,
  "timestamp": ..}``) is published by the connector (:func:`state_payload`); STATE messages of
  other hosts are ignored.

A reading's address is ``<group>/<edge node>/<device>/<metric name>`` (a node's own metric:
``<group>/<edge node>/<metric name>``), source timestamps are the metric's (else the payload's) epoch
milliseconds. Protocol metrics (``bdSeq``, ``Node Control/...``) are not readings.

:meth:`SparkplugHost.handle` never raises: a payload that does not decode, a data message that
cannot be decoded without a birth, or a metric of a type the twin does not store becomes a dead
letter (``malformed_payload``, ``sparkplug_no_birth``, ``sparkplug_unknown_alias``, ``wrong_type``).
Metrics of the types pysparkplug 0.6 does not decode (DataSet, Template, PropertySet) are dropped
from the message (counted in ``sparkplug_unsupported_metrics``, their aliases remembered), so the
rest of a birth or data message still counts. It runs on paho's network thread only;
:meth:`snapshot` may be read from any thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.base import error_text, storable_text
from connectors.mqtt.config import SparkplugConfig
from connectors.mqtt.payload import MAX_ADDRESS, MAX_PAYLOAD_TEXT, MAX_TEXT, _dead, text_problem
from core.samples import DeadLetter, Quality, RawReading, SourceKind

log = logging.getLogger("twin.connectors.mqtt.sparkplug")

NAMESPACE = "spBv1.0"
PREFIX = NAMESPACE + "/"
PREFIX_B = PREFIX.encode()
REBIRTH = "Node Control/Rebirth"
_SOURCE = SourceKind.MQTT
_MS = 1_000_000
_TS_LIMIT_MS = 9_223_372_036_000  # int64 ns


def _spb() -> Any:
    import pysparkplug  # imported when Sparkplug is enabled (protobuf is not loaded otherwise)

    return pysparkplug


def state_payload(online: bool, timestamp_ms: int) -> bytes:
    """The host application's STATE payload (Sparkplug B 3.0: JSON)."""
    return json.dumps({"online": online, "timestamp": timestamp_ms}).encode()


def rebirth_command(timestamp_ms: int) -> bytes:
    """NCMD payload that asks an edge node to publish its births again."""
    spb = _spb()
    metric = spb.Metric(timestamp=timestamp_ms, name=REBIRTH, datatype=spb.DataType.BOOLEAN, value=True)
    return spb.NCmd(timestamp=timestamp_ms, metrics=(metric,)).encode(include_dtypes=True)


_UNSUPPORTED_TYPES = frozenset({16, 19, 20, 21})  # DataSet, Template, PropertySet(List): pysparkplug 0.6 cannot


def strip_unsupported(raw: bytes, drop_aliases: set[int]) -> tuple[bytes, set[int], int]:
    """The payload without the metrics pysparkplug cannot decode (DataSet, Template, PropertySet types,
    and data metrics whose alias belongs to one of those): (payload, their aliases, how many dropped).
    Raises what protobuf raises for a payload that does not parse."""
    from pysparkplug import _protobuf as pb  # the library's generated Sparkplug B protobuf classes

    payload = pb.Payload.FromString(raw)
    keep, aliases, dropped = [], set(), 0
    for m in payload.metrics:
        has_alias = m.HasField("alias")
        if m.datatype in _UNSUPPORTED_TYPES or (has_alias and m.alias in drop_aliases):
            dropped += 1
            if has_alias:
                aliases.add(m.alias)
            continue
        keep.append(m)
    del payload.metrics[:]
    payload.metrics.extend(keep)
    return payload.SerializeToString(), aliases, dropped


@dataclass
class MetricInfo:
    group: str
    edge: str
    device: str | None
    name: str
    alias: int | None
    datatype: Any  # pysparkplug DataType


@dataclass
class _Node:
    seq: int | None = None  # last sequence number seen (None: no birth yet)
    bd_seq: int | None = None
    online: bool = False
    births: dict[str | None, Any] = field(default_factory=dict)  # device (None: the node) -> Birth
    last: dict[str, tuple[Any, str | None]] = field(default_factory=dict)  # address -> (value, device)
    awaiting_rebirth: bool = False
    rebirth_held: bool = False  # a request held back by rebirth_min_interval_s: sent with the next message after it
    last_rebirth_req: float = -1e18
    stale_devices: set[str] = field(default_factory=set)
    unsupported: set[int] = field(default_factory=set)  # aliases of metrics of types that are not decoded


def _address(group: str, edge: str, device: str | None, name: str) -> str:
    return f"{group}/{edge}/{device}/{name}" if device is not None else f"{group}/{edge}/{name}"


class SparkplugHost:
    """Decoding state of all edge nodes seen (per (group, edge node)); one per connector."""

    def __init__(self, config: SparkplugConfig, connector: str,
                 publish: Callable[[str, bytes, int, bool], None], counters: dict[str, int] | None = None) -> None:
        self.config = config
        self.connector = connector
        self._publish = publish
        self._spb = _spb()
        self.nodes: dict[tuple[str, str], _Node] = {}
        self.metrics: dict[str, MetricInfo] = {}  # address -> what a write needs (name, alias, datatype)
        self._lock = threading.Lock()  # snapshot() and metric() from other threads
        self.counters: dict[str, int] = counters if counters is not None else {}  # the connector's (-> /metrics)
        self.counters.update({
            "sparkplug_births": 0, "sparkplug_data": 0, "sparkplug_deaths": 0, "sparkplug_seq_gaps": 0,
            "sparkplug_rebirth_requests": 0, "sparkplug_unknown_alias": 0, "sparkplug_stale_deaths_ignored": 0,
            "sparkplug_unsupported_metrics": 0, "sparkplug_other": 0})
        self._names = tuple(k for k in self.counters if k.startswith("sparkplug_"))

    # -- entry ---------------------------------------------------------------------------------
    def handle(self, topic_b: bytes, payload: bytes, recv: int,
               max_bytes: int = 4 * 1024 * 1024) -> tuple[list[RawReading], list[DeadLetter]]:
        try:
            topic = topic_b.decode("utf-8")
        except UnicodeDecodeError:
            return [], [_dead(topic_b[:MAX_ADDRESS].decode("utf-8", "backslashreplace"), payload[:1024].hex(),
                              "bad_text", "topic is not valid UTF-8", recv, self.connector)]
        why = text_problem(topic, MAX_ADDRESS)
        if why is not None:
            return [], [_dead(topic, payload[:1024].hex(), "bad_text", f"topic: {why}", recv, self.connector)]
        if len(payload) > max_bytes:
            return [], [self._bad(topic, payload[:1024], "malformed_payload",
                                  f"payload of {len(payload)} bytes exceeds max_payload_bytes={max_bytes}", recv)]
        parts = topic.split("/")
        if len(parts) >= 2 and parts[1] == "STATE":
            self.counters["sparkplug_other"] += 1  # a host application's state (ours or another's)
            return [], []
        if len(parts) not in (4, 5) or not all(parts):
            return [], [self._bad(topic, payload, "malformed_payload",
                                  "not a Sparkplug B topic (spBv1.0/<group>/<type>/<edge node>[/<device>])", recv)]
        group, mtype, edge = parts[1], parts[2], parts[3]
        device = parts[4] if len(parts) == 5 else None
        if mtype in ("NCMD", "DCMD"):
            self.counters["sparkplug_other"] += 1  # commands (ours included) are not data
            return [], []
        handler = self._HANDLERS.get(mtype)
        if handler is None or (device is None) != (mtype[0] == "N"):
            return [], [self._bad(topic, payload, "malformed_payload", f"unknown Sparkplug message type {mtype!r}"
                                  + (" for this topic" if handler else ""), recv)]
        node = self.nodes.get((group, edge))
        if node is None:
            if len(self.nodes) >= 10_000:
                return [], [self._bad(topic, payload, "malformed_payload", "more than 10000 edge nodes", recv)]
            node = self.nodes[(group, edge)] = _Node()
        return handler(self, topic, group, edge, device, node, payload, recv)

    # -- helpers ---------------------------------------------------------------------------------
    def _bad(self, topic: str, payload: bytes, code: str, reason: str, recv: int) -> DeadLetter:
        return _dead(topic, payload[:MAX_PAYLOAD_TEXT // 2].hex(), code, reason, recv, self.connector)

    def _request_rebirth(self, group: str, edge: str, node: _Node, why: str) -> None:
        now = time.monotonic()
        node.awaiting_rebirth = True
        if now - node.last_rebirth_req < self.config.rebirth_min_interval_s:
            node.rebirth_held = True
            return
        node.last_rebirth_req = now
        node.rebirth_held = False
        self.counters["sparkplug_rebirth_requests"] += 1
        log.info("sparkplug %s: rebirth request to %s/%s (%s)", self.connector, group, edge, why)
        try:
            self._publish(f"{PREFIX}{group}/NCMD/{edge}", rebirth_command(int(time.time() * 1000)), 0, False)
        except Exception as err:  # noqa: BLE001 - a lost connection: the next gap asks again
            log.warning("sparkplug %s: rebirth request to %s/%s failed: %s", self.connector, group, edge,
                        error_text(err, 200))

    def _check_seq(self, group: str, edge: str, node: _Node, seq: int | None) -> None:
        if seq is None:
            return
        last = node.seq
        gap = last is not None and seq != (last + 1) % 256
        if gap or node.rebirth_held:  # (in sequence, nothing held back: no clock read)
            due = time.monotonic() - node.last_rebirth_req >= self.config.rebirth_min_interval_s
            if gap and (not node.awaiting_rebirth or due):  # awaiting a rebirth that did not come: ask again
                self.counters["sparkplug_seq_gaps"] += 1
                self._request_rebirth(group, edge, node, f"sequence gap: expected {((last or 0) + 1) % 256}, got {seq}")
            elif node.rebirth_held and due:
                self._request_rebirth(group, edge, node, "a request held back by rebirth_min_interval_s")
        node.seq = seq

    def _readings(self, topic: str, group: str, edge: str, device: str | None, node: _Node, payload: Any,
                  recv: int, quality: Quality = Quality.GOOD) -> tuple[list[RawReading], list[DeadLetter]]:
        out: list[RawReading] = []
        dead: list[DeadLetter] = []
        base_ms = payload.timestamp
        for m in payload.metrics:
            name = m.name
            if not name or name == "bdSeq" or name.startswith("Node Control/"):
                continue
            address = _address(group, edge, device, name)
            why = text_problem(address, MAX_ADDRESS)
            if why is not None:
                dead.append(self._bad(topic, b"", "bad_text", f"metric {storable_text(name, 80)!r}: address {why}",
                                      recv))
                continue
            if m.is_null or m.value is None:
                continue  # no value (Sparkplug's null): nothing to store
            value = m.value
            if isinstance(value, str):
                why = text_problem(value, MAX_TEXT)
                if why is not None:
                    dead.append(self._bad(topic, b"", "bad_text", f"metric {name!r}: string value {why}", recv))
                    continue
            elif not isinstance(value, (int, float)):  # bytes, arrays, datasets, dates: not a process value
                dead.append(_dead(address, storable_text(value, 200), "wrong_type",
                                  f"Sparkplug metric of type {m.datatype.name} is not stored (numbers, booleans and "
                                  "strings are)", recv, self.connector))
                continue
            ts_ms = m.timestamp if m.timestamp is not None else base_ms
            ts = ts_ms * _MS if 0 <= ts_ms <= _TS_LIMIT_MS else None
            if ts is None:
                dead.append(_dead(address, storable_text(value, 200), "bad_timestamp",
                                  f"timestamp {ts_ms} ms is outside what the store holds", recv, self.connector))
                continue
            if len(node.last) < self.config.max_metrics or address in node.last:
                node.last[address] = (value, device)
            out.append(RawReading(_SOURCE, address, value, ts, recv, None, quality, None, None, None,
                                  self.connector))
        return out, dead

    def _remember(self, group: str, edge: str, device: str | None, birth: Any) -> None:
        with self._lock:
            for m in birth.metrics:
                if not m.name or m.name == "bdSeq" or m.name.startswith("Node Control/"):
                    continue
                if len(self.metrics) >= self.config.max_metrics:
                    break
                self.metrics[_address(group, edge, device, m.name)] = MetricInfo(group, edge, device, m.name, m.alias,
                                                                                m.datatype)

    def _stale(self, topic: str, group: str, edge: str, node: _Node, device: str | None | type,
               recv: int) -> list[RawReading]:
        """Each last value of the node (``device is _ALL``) or one device again, with quality bad."""
        if not self.config.stale_on_death:
            return []
        out = []
        for address, (value, dev) in node.last.items():
            if device is _ALL or dev == device:
                out.append(RawReading(_SOURCE, address, value, recv, recv, None, Quality.BAD, None, None, None,
                                      self.connector))
        return out

    # -- message types ---------------------------------------------------------------------------
    def _birth(self, topic: str, group: str, edge: str, device: str | None, node: _Node, payload: bytes,
               recv: int) -> tuple[list[RawReading], list[DeadLetter]]:
        cls = self._spb.DBirth if device is not None else self._spb.NBirth
        unsupported: set[int] = set()
        try:
            try:
                birth = cls.decode(payload)
            except NotImplementedError:  # a DataSet / Template metric: the others still count
                raw, unsupported, n = strip_unsupported(payload, set())
                self.counters["sparkplug_unsupported_metrics"] += n
                birth = cls.decode(raw)
        except Exception as err:  # noqa: BLE001 - protobuf DecodeError, ValueError, KeyError...: a bad payload
            return [], [self._bad(topic, payload, "malformed_payload", f"undecodable {cls.__name__}: "
                                  f"{error_text(err, 300)}", recv)]
        self.counters["sparkplug_births"] += 1
        if device is None:
            node.births.clear()  # an NBIRTH starts a new session: every device is born again after it
            node.unsupported.clear()
            node.seq = birth.seq
            node.awaiting_rebirth = node.rebirth_held = False
            node.online = True
            node.stale_devices.clear()
            node.bd_seq = next((int(m.value) for m in birth.metrics if m.name == "bdSeq" and m.value is not None),
                               None)
        else:
            if None not in node.births:  # a device birth without its node's birth: we joined mid-session
                self._request_rebirth(group, edge, node, "device birth before the node birth")
            self._check_seq(group, edge, node, birth.seq)
            node.stale_devices.discard(device)
        node.births[device] = birth
        node.unsupported |= unsupported
        self._remember(group, edge, device, birth)
        return self._readings(topic, group, edge, device, node, birth, recv)

    def _data(self, topic: str, group: str, edge: str, device: str | None, node: _Node, payload: bytes,
              recv: int) -> tuple[list[RawReading], list[DeadLetter]]:
        self.counters["sparkplug_data"] += 1
        birth = node.births.get(device)
        cls = self._spb.DData if device is not None else self._spb.NData
        if birth is None:
            self._request_rebirth(group, edge, node, "data before a birth")
            return [], [self._bad(topic, payload, "sparkplug_no_birth",
                                  f"{cls.__name__} from {group}/{edge}{'/' + device if device else ''} before its "
                                  "birth certificate: aliases and data types unknown; rebirth requested", recv)]
        try:
            try:
                data = cls.decode(payload, birth=birth)
            except (NotImplementedError, KeyError) as first:  # a DataSet / Template metric, or its alias?
                raw, _, n = strip_unsupported(payload, node.unsupported)
                if not n:
                    raise first from None
                self.counters["sparkplug_unsupported_metrics"] += n
                data = cls.decode(raw, birth=birth)
        except KeyError as err:
            self.counters["sparkplug_unknown_alias"] += 1
            self._request_rebirth(group, edge, node, f"unknown alias {err}")
            return [], [self._bad(topic, payload, "sparkplug_unknown_alias",
                                  f"{cls.__name__}: alias or metric {storable_text(str(err), 80)} is not in the birth; "
                                  "rebirth requested", recv)]
        except Exception as err:  # noqa: BLE001 - any decoding failure is this payload's fault
            return [], [self._bad(topic, payload, "malformed_payload", f"undecodable {cls.__name__}: "
                                  f"{error_text(err, 300)}", recv)]
        self._check_seq(group, edge, node, data.seq)
        return self._readings(topic, group, edge, device, node, data, recv)

    def _death(self, topic: str, group: str, edge: str, device: str | None, node: _Node, payload: bytes,
               recv: int) -> tuple[list[RawReading], list[DeadLetter]]:
        cls = self._spb.DDeath if device is not None else self._spb.NDeath
        try:
            death = cls.decode(payload)
        except Exception as err:  # noqa: BLE001 - any decoding failure is this payload's fault
            return [], [self._bad(topic, payload, "malformed_payload", f"undecodable {cls.__name__}: "
                                  f"{error_text(err, 300)}", recv)]
        if device is None:
            bd = getattr(getattr(death, "bd_seq_metric", None), "value", None)
            if bd is not None and node.bd_seq is not None and 0 < (node.bd_seq - int(bd)) % 256 < 128:
                self.counters["sparkplug_stale_deaths_ignored"] += 1  # the will of an earlier session
                return [], []
            self.counters["sparkplug_deaths"] += 1
            stale = self._stale(topic, group, edge, node, _ALL, recv) if node.online else []
            node.online = False
            node.births.clear()
            node.seq = None
            node.awaiting_rebirth = node.rebirth_held = False
            return stale, []
        self.counters["sparkplug_deaths"] += 1
        self._check_seq(group, edge, node, getattr(death, "seq", None))
        stale = self._stale(topic, group, edge, node, device, recv) if device not in node.stale_devices else []
        node.stale_devices.add(device)
        node.births.pop(device, None)
        return stale, []

    _HANDLERS: dict[str, Callable[..., tuple[list[RawReading], list[DeadLetter]]]] = {
        "NBIRTH": _birth, "DBIRTH": _birth, "NDATA": _data, "DDATA": _data, "NDEATH": _death, "DDEATH": _death}

    # -- for writes and status (any thread) ------------------------------------------------------
    def metric(self, address: str) -> MetricInfo | None:
        with self._lock:
            return self.metrics.get(address)

    def command(self, info: MetricInfo, value: Any, timestamp_ms: int) -> tuple[str, bytes]:
        """(topic, payload) of the DCMD (NCMD for a node metric) that sets one metric."""
        spb = self._spb
        metric = spb.Metric(timestamp=timestamp_ms, name=info.name, datatype=info.datatype, value=value,
                            alias=info.alias)
        if info.device is not None:
            return (f"{PREFIX}{info.group}/DCMD/{info.edge}/{info.device}",
                    spb.DCmd(timestamp=timestamp_ms, metrics=(metric,)).encode(include_dtypes=True))
        return (f"{PREFIX}{info.group}/NCMD/{info.edge}",
                spb.NCmd(timestamp=timestamp_ms, metrics=(metric,)).encode(include_dtypes=True))

    def snapshot(self) -> dict[str, Any]:
        nodes = {f"{g}/{e}": {"online": n.online, "seq": n.seq, "awaiting_rebirth": n.awaiting_rebirth,
                              "stale_devices": sorted(n.stale_devices),
                              "devices": sorted(d for d in n.births if d is not None)}
                 for (g, e), n in list(self.nodes.items())}
        return {"nodes": nodes, **{k: self.counters[k] for k in self._names}}


_ALL = object  # sentinel: every device of a node (and the node's own metrics)
