"""OPC-UA acquisition: resolving (and browsing) the nodes, creating subscriptions and monitored
items, converting publish responses into RawBatches (data-change handling, Republish of missing
sequence numbers, status changes), supervising a live session, polling, and flagging gaps.

:class:`AcquisitionMixin` is one of the bases of :class:`connectors.opcua.connector.OpcUaConnector`,
which owns the connection loop; the attributes declared on the mixin are set by the connector.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from asyncua import Client, ua

from connectors.base import BoundedBatchQueue, ConnectorCounters, error_text, storable_text
from connectors.opcua.browse import parse_node_id, read_engineering_units, walk
from connectors.opcua.client import _status_name, _translate
from connectors.opcua.config import (
    AcquisitionMode,
    DataChangeTrigger,
    DeadbandType,
    GapMarker,
    OpcUaConnectorConfig,
    PollEmit,
    TimestampFallback,
)
from connectors.opcua.errors import ConnectionFailed
from connectors.opcua.fastdecode import DataChanges, PublishDecoder, install
from connectors.opcua.values import _dt_ns, _plain, _quality, _Unsupported
from core.samples import DeadLetter, Quality, RawBatch, RawReading, SourceKind, now_ns, ns_to_iso
from core.supervise import RateLimitedLog

log = logging.getLogger("twin.connectors.opcua")

_TRIGGERS = {DataChangeTrigger.STATUS: ua.DataChangeTrigger.Status,
             DataChangeTrigger.STATUS_VALUE: ua.DataChangeTrigger.StatusValue,
             DataChangeTrigger.STATUS_VALUE_TIMESTAMP: ua.DataChangeTrigger.StatusValueTimestamp}
_DEADBANDS = {DeadbandType.NONE: 0, DeadbandType.ABSOLUTE: 1, DeadbandType.PERCENT: 2}

_OVERFLOW_BITS = 0x0480  # InfoType = DataValue (0x400) | Overflow (0x80), OPC 10000-4 7.39
_SOURCE = SourceKind.OPCUA
_PLAIN_NUMBERS = frozenset((float, int, bool))  # values the fast conversion passes on as they are (_plain's identity)


@dataclass(frozen=True)
class Gap:
    """A span without data from this connector: [start_ns, end_ns] (never interpolated)."""

    start_ns: int
    end_ns: int
    reason: str

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass
class _Item:
    address: str
    unit: str | None


@dataclass
class _Sub:
    id: int = 0
    last_seq: int | None = None
    items: dict[int, _Item] = field(default_factory=dict)


class AcquisitionMixin:
    """Subscriptions, publish handling, polling and gaps of one OPC-UA connector."""

    # set by OpcUaConnector.__init__ (and Connector.__init__)
    name: str
    config: OpcUaConnectorConfig
    counters: ConnectorCounters
    queue: BoundedBatchQueue
    errors_log: RateLimitedLog
    line_id: str | None
    gap_address: str
    gaps: deque[Gap]
    _client: Client | None
    _lost: asyncio.Event
    _lost_reason: str
    _last_alive_ns: int | None
    _subs: list[_Sub]
    _items_by_address: dict[str, _Item]
    _keepalive_s: float
    _warned_units: set[str]
    _decoder: PublishDecoder | None

    async def _flag_gap(self, start_ns: int, end_ns: int, reason: str) -> None:
        gap = Gap(start_ns, end_ns, reason)
        self.gaps.append(gap)
        self.counters.extra["gaps"] += 1
        log.warning("opcua %s: data gap of %.2f s from %s to %s (%s); flagged, nothing interpolated", self.name,
                    gap.duration_s, ns_to_iso(start_ns), ns_to_iso(end_ns), reason)
        if self.config.gap_marker is GapMarker.READING:
            r = RawReading(_SOURCE, self.gap_address, round(gap.duration_s, 6), start_ns, end_ns, "s", Quality.GOOD,
                           self.line_id, None, None, self.name)
            self.counters.received += 1
            await self.queue.put(RawBatch((r,)))

    # -- setup -------------------------------------------------------------------------------------
    async def _resolve_nodes(self, client: Client) -> list[str]:
        cfg = self.config
        nodes: dict[str, None] = {}
        for n in cfg.nodes:
            nodes[parse_node_id(n).to_string()] = None
        if cfg.browse_roots:
            for nid, _, _, _ in await walk(client, cfg.browse_roots, max_depth=cfg.browse_max_depth):
                nodes[nid.to_string()] = None
        return list(nodes)

    async def _setup(self, client: Client) -> None:
        cfg = self.config
        addresses = await self._resolve_nodes(client)
        units, _ = await read_engineering_units(client, [parse_node_id(a) for a in addresses])
        self._items_by_address = {}
        for a in addresses:
            unit, disp = units.get(a, (None, None))
            if unit is None and disp and a not in self._warned_units:
                self._warned_units.add(a)
                self.counters.extra["unknown_units"] += 1
                log.warning("opcua %s: %s states unit %r that has no known UNECE code here; the tag map's "
                            "source unit applies", self.name, a, disp)
            self._items_by_address[a] = _Item(a, unit)
        self._last_alive_ns = now_ns()
        self._subs = []
        if cfg.mode is AcquisitionMode.SUBSCRIPTION:
            self._install_decoder(client)
            await self._create_subscriptions(client)

    def _install_decoder(self, client: Client) -> None:
        """The fast PublishResponse decoder on this session (connectors.opcua.fastdecode), before the publish loop
        starts; ``subscription.fast_decode = false`` or an asyncua it does not fit leave asyncua's own decoding."""
        if not self.config.subscription.fast_decode:
            self.counters.extra["fast_decode"] = 0
            return
        if self._decoder is None:  # one per connector: its counts add up over reconnects
            self._decoder = PublishDecoder()
        self.counters.extra["fast_decode"] = int(install(client.uaclient.session, self._decoder))

    def _item_filter(self) -> ua.DataChangeFilter | None:
        s = self.config.subscription
        if s.trigger is DataChangeTrigger.STATUS_VALUE and s.deadband_type is DeadbandType.NONE:
            return None
        return ua.DataChangeFilter(Trigger=_TRIGGERS[s.trigger], DeadbandType=_DEADBANDS[s.deadband_type],
                                   DeadbandValue=float(s.deadband_value))

    async def _create_subscriptions(self, client: Client) -> None:
        s = self.config.subscription
        items = list(self._items_by_address.values())
        flt = self._item_filter()
        sampling = s.publishing_interval_ms if s.sampling_interval_ms < 0 else s.sampling_interval_ms
        handle = 1
        n_ok = 0
        revised_keepalive = 0.0
        for start in range(0, len(items), s.max_items_per_subscription):
            group = items[start:start + s.max_items_per_subscription]
            sub = _Sub()
            params = ua.CreateSubscriptionParameters()
            params.RequestedPublishingInterval = s.publishing_interval_ms
            params.RequestedLifetimeCount = s.lifetime_count
            params.RequestedMaxKeepAliveCount = s.keepalive_count
            params.MaxNotificationsPerPublish = s.max_notifications_per_publish
            params.PublishingEnabled = True
            params.Priority = 0

            async def callback(result: ua.PublishResult, _sub: _Sub = sub) -> None:
                await self._on_publish(_sub, result)

            res = await client.uaclient.create_subscription(params, callback)
            sub.id = res.SubscriptionId
            revised_keepalive = max(revised_keepalive,
                                    res.RevisedPublishingInterval * max(res.RevisedMaxKeepAliveCount, 1) / 1000.0)
            self._subs.append(sub)
            self.counters.extra["subscriptions"] += 1
            for cstart in range(0, len(group), 500):
                chunk = group[cstart:cstart + 500]
                reqs = []
                for it in chunk:
                    mp = ua.MonitoringParameters()
                    mp.ClientHandle = handle
                    mp.SamplingInterval = sampling
                    mp.QueueSize = s.queue_size
                    mp.DiscardOldest = True
                    if flt is not None:
                        mp.Filter = flt
                    req = ua.MonitoredItemCreateRequest()
                    req.ItemToMonitor = ua.ReadValueId(NodeId=parse_node_id(it.address),
                                                       AttributeId=ua.AttributeIds.Value)
                    req.MonitoringMode = ua.MonitoringMode.Reporting
                    req.RequestedParameters = mp
                    reqs.append(req)
                    sub.items[handle] = it  # registered before the request: notifications may come first
                    handle += 1
                mparams = ua.CreateMonitoredItemsParameters()
                mparams.SubscriptionId = sub.id
                mparams.TimestampsToReturn = ua.TimestampsToReturn.Both
                mparams.ItemsToCreate = reqs
                results = await client.uaclient.create_monitored_items(mparams)
                for req, r in zip(reqs, results):
                    if r.StatusCode.is_good():
                        n_ok += 1
                        continue
                    it = sub.items.pop(req.RequestedParameters.ClientHandle)
                    self.counters.extra["bad_nodes"] += 1
                    log.error("opcua %s: cannot monitor %s: %s", self.name, it.address,
                              _status_name(r.StatusCode.value))
        self._keepalive_s = revised_keepalive
        self.counters.extra["monitored_items"] = n_ok
        if items and n_ok == 0:
            raise ConnectionFailed(f"{self.config.url}: none of the {len(items)} nodes could be monitored")

    # -- notifications -------------------------------------------------------------------------------
    def _count_internal(self, stage: str, err: BaseException, what: str) -> None:
        self.counters.extra["internal_errors"] = self.counters.extra.get("internal_errors", 0) + 1
        self.counters.last_error = f"{stage}: {error_text(err)}"
        self.errors_log.error(f"{stage}:{type(err).__name__}", "opcua %s: unexpected %s; %s", self.name,
                              error_text(err, 200), what, exc=err)

    def _internal_dead_letter(self, it: _Item, raw: object, err: Exception, recv: int) -> DeadLetter:
        """A value whose conversion raised: counted once, kept as an ``internal_error`` dead letter."""
        self._count_internal("opcua_callback", err, f"the value of {it.address} is kept as an internal_error "
                                                    "dead letter")
        return DeadLetter(_SOURCE, storable_text(it.address, 512), storable_text(raw, 4096),
                          "internal error while converting this value: " + error_text(err, 450),
                          "internal_error", recv, self.name, self.line_id)

    def _safe_reading(self, it: _Item, dv: ua.DataValue | None, recv: int) -> RawReading | DeadLetter:
        """:meth:`_reading`, or an ``internal_error`` dead letter if it raises (never raises)."""
        try:
            return self._reading(it, dv, recv)
        except Exception as err:  # noqa: BLE001 - one value must not cost the publish or the subscription
            return self._internal_dead_letter(it, dv, err, recv)

    def _reading(self, it: _Item, dv: ua.DataValue | None, recv: int) -> RawReading | DeadLetter:
        st = dv.StatusCode if dv is not None else None
        code = st.value if st is not None else 0
        if code & _OVERFLOW_BITS == _OVERFLOW_BITS:
            self.counters.extra["overflows"] += 1
        ts = _dt_ns(dv.SourceTimestamp, dv.SourcePicoseconds) if dv is not None else None
        if ts is None:
            fb = self.config.timestamp_fallback
            if fb is TimestampFallback.SERVER_THEN_RECEIVE:
                ts = (_dt_ns(dv.ServerTimestamp, dv.ServerPicoseconds) if dv is not None else None) or recv
            elif fb is TimestampFallback.RECEIVE:
                ts = recv
        raw = dv.Value.Value if dv is not None and dv.Value is not None else None
        try:
            value = _plain(raw)
        except _Unsupported as err:
            return DeadLetter(_SOURCE, it.address, repr(raw)[:1000], f"unsupported OPC-UA value type {err}",
                              "wrong_type", recv, self.name, self.line_id)
        return RawReading(_SOURCE, it.address, value, ts, recv, it.unit, _quality(code), self.line_id, None, None,
                          self.name)

    def _convert(self, sub: _Sub, data: Sequence[Any], recv: int) -> tuple[list[RawReading], list[DeadLetter], str]:
        readings: list[RawReading] = []
        dead: list[DeadLetter] = []
        status = ""
        items = sub.items
        for notif in data:
            try:
                if type(notif) is DataChanges:
                    self._convert_changes(items, notif, recv, readings, dead)
                elif isinstance(notif, ua.DataChangeNotification):
                    for mi in notif.MonitoredItems:
                        it = items.get(mi.ClientHandle)
                        if it is None:
                            continue
                        r = self._safe_reading(it, mi.Value, recv)
                        (readings if type(r) is RawReading else dead).append(r)  # type: ignore[arg-type]
                elif isinstance(notif, ua.StatusChangeNotification):
                    st = notif.Status
                    if st is not None and not st.is_good():
                        status = _status_name(st.value)
            except Exception as err:  # noqa: BLE001 - a malformed notification: a dead letter, the rest goes on
                self._count_internal("opcua_callback", err, "the notification is kept as an internal_error dead letter")
                dead.append(DeadLetter(_SOURCE, f"subscription {sub.id}", storable_text(notif, 4096),
                                       "internal error while converting a notification: " + error_text(err, 450),
                                       "internal_error", recv, self.name, self.line_id))
        return readings, dead, status

    def _convert_changes(self, items: dict[int, _Item], dc: DataChanges, recv: int, readings: list[RawReading],
                         dead: list[DeadLetter]) -> None:
        """The fast decoder's changes -> readings: a Good plain number with a source timestamp in one step; any
        other change through :meth:`_change_reading` (the same rules as :meth:`_reading`)."""
        new, raw_reading, source, good = tuple.__new__, RawReading, _SOURCE, Quality.GOOD
        plain = _PLAIN_NUMBERS
        line, name = self.line_id, self.name
        append = readings.append
        for ch in dc.changes:
            it = items.get(ch[0])
            if it is None:
                continue
            _, v, code, ts, _s = ch
            if code or ts is None or type(v) not in plain:
                r = self._safe_change(it, ch, recv)
                (readings if type(r) is RawReading else dead).append(r)  # type: ignore[arg-type]
                continue
            append(new(raw_reading, (source, it.address, v, ts, recv, it.unit, good, line, None, None, name)))

    def _safe_change(self, it: _Item, ch: tuple[int, Any, int, int | None, int | None],
                     recv: int) -> RawReading | DeadLetter:
        """:meth:`_change_reading`, or an ``internal_error`` dead letter if it raises (never raises)."""
        try:
            return self._change_reading(it, ch, recv)
        except Exception as err:  # noqa: BLE001 - one value must not cost the publish or the subscription
            return self._internal_dead_letter(it, ch, err, recv)

    def _change_reading(self, it: _Item, ch: tuple[int, Any, int, int | None, int | None],
                        recv: int) -> RawReading | DeadLetter:
        """:meth:`_reading` for a change of the fast decoder (status code int, timestamps in ns or None)."""
        _, raw, code, ts, server_ts = ch
        if code & _OVERFLOW_BITS == _OVERFLOW_BITS:
            self.counters.extra["overflows"] += 1
        if ts is None:
            fb = self.config.timestamp_fallback
            if fb is TimestampFallback.SERVER_THEN_RECEIVE:
                ts = server_ts or recv
            elif fb is TimestampFallback.RECEIVE:
                ts = recv
        try:
            value = _plain(raw)
        except _Unsupported as err:
            return DeadLetter(_SOURCE, it.address, repr(raw)[:1000], f"unsupported OPC-UA value type {err}",
                              "wrong_type", recv, self.name, self.line_id)
        return RawReading(_SOURCE, it.address, value, ts, recv, it.unit, _quality(code), self.line_id, None, None,
                          self.name)

    async def _on_publish(self, sub: _Sub, result: ua.PublishResult) -> None:
        """asyncua's publish callback. Never raises: what cannot be converted becomes a dead letter,
        the rest is delivered (asyncua would log the exception and the publish would be lost)."""
        try:
            await self._on_publish_inner(sub, result)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - last line of defence
            self._count_internal("opcua_callback", err, "a publish response could not be handled")

    async def _on_publish_inner(self, sub: _Sub, result: ua.PublishResult) -> None:
        recv = now_ns()
        msg = result.NotificationMessage
        data = msg.NotificationData
        if not data:
            self._last_alive_ns = recv
            self.counters.extra["keepalives"] += 1
            return
        readings, dead, status = self._convert(sub, data, recv)  # never raises
        if status:
            # BadTimeout: the server dropped the subscription; BadShutdown: asyncua saw the link die
            self._lost_reason = self._lost_reason or f"subscription {sub.id} status {status}"
            self._lost.set()
            if not readings and not dead:
                return
        self._last_alive_ns = recv
        extra = self.counters.extra
        extra["publishes"] += 1
        dec = self._decoder
        if dec is not None and dec.fallbacks + dec.failures != extra.get("fast_decode_fallbacks", 0) + \
                extra.get("publish_decode_failures", 0):
            self._decoder_event(dec)
        try:
            seq = int(msg.SequenceNumber)
            if sub.last_seq is not None and seq > sub.last_seq + 1:
                await self._republish(sub, sub.last_seq + 1, seq)
            if sub.last_seq is None or seq > sub.last_seq:
                sub.last_seq = seq
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - the values of this publish are still delivered
            self._count_internal("opcua_callback", err, "sequence bookkeeping failed; the values are delivered")
        await self._deliver(readings, dead)

    def _decoder_event(self, dec: PublishDecoder) -> None:
        """The fast decoder gave responses to the generic one (or neither could decode one): counted, logged at
        most once a minute per kind."""
        extra = self.counters.extra
        if dec.fallbacks != extra.get("fast_decode_fallbacks", 0):
            extra["fast_decode_fallbacks"] = dec.fallbacks
            self.errors_log.log("fast_decode_fallback", logging.INFO, "opcua %s: a publish response was decoded by "
                                "asyncua's generic decoder (%s); %d so far", self.name, dec.last_fallback,
                                dec.fallbacks)
        if dec.failures != extra.get("publish_decode_failures", 0):
            extra["publish_decode_failures"] = dec.failures
            self.errors_log.log("publish_decode_failure", logging.WARNING, "opcua %s: a publish response could not "
                                "be decoded; it is asked for again by Republish (%d so far)", self.name, dec.failures)

    async def _deliver(self, readings: list[RawReading], dead: list[DeadLetter]) -> None:
        if not readings and not dead:
            return
        self.counters.received += len(readings) + len(dead)
        self.counters.rejected += len(dead)
        await self.queue.put(RawBatch(tuple(readings), tuple(dead)))

    async def _republish(self, sub: _Sub, first: int, stop: int) -> None:
        client = self._client
        missing_from = None
        for seq in range(first, stop):
            try:
                if client is None:
                    raise ConnectionError("not connected")
                nm = await client.uaclient.session.republish(sub.id, seq)
                readings, dead, _ = self._convert(sub, nm.NotificationData or [], now_ns())
                self.counters.extra["republished"] += 1
                await self._deliver(readings, dead)
            except Exception:  # noqa: BLE001 - not retransmittable: a gap
                if missing_from is None:
                    missing_from = seq
        if missing_from is not None:
            t = now_ns()
            await self._flag_gap(self._last_alive_ns or t, t,
                                 f"publish messages {missing_from}..{stop - 1} of subscription {sub.id} were lost")

    async def _supervise(self, client: Client) -> str:
        stale_s = max(3.0 * self._keepalive_s, 5.0)
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), timeout=0.25)
                return self._lost_reason or "connection lost"
            except TimeoutError:
                pass
            if client.uaclient.state.name not in ("CONNECTED",):
                return f"client state {client.uaclient.state.value}"
            silent = (now_ns() - (self._last_alive_ns or now_ns())) / 1e9
            if self._subs and silent > stale_s:
                return f"no publish response for {silent:.1f} s"

    # -- polling -------------------------------------------------------------------------------------
    async def _poll_loop(self, client: Client) -> str:
        cfg = self.config.polling
        items = list(self._items_by_address.values())
        ids = [ua.ReadValueId(NodeId=parse_node_id(it.address), AttributeId=ua.AttributeIds.Value) for it in items]
        prev: dict[str, tuple[Any, int, int | None]] = {}
        interval = cfg.interval_ms / 1000.0
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            if self._lost.is_set():
                return self._lost_reason or "connection lost"
            readings: list[RawReading] = []
            dead: list[DeadLetter] = []
            try:
                for start in range(0, len(ids), cfg.max_nodes_per_read):
                    params = ua.ReadParameters()
                    params.TimestampsToReturn = ua.TimestampsToReturn.Both
                    params.NodesToRead = ids[start:start + cfg.max_nodes_per_read]
                    dvs = await client.uaclient.read(params)
                    recv = now_ns()
                    for it, dv in zip(items[start:start + cfg.max_nodes_per_read], dvs):
                        r = self._safe_reading(it, dv, recv)
                        if type(r) is RawReading and cfg.emit is PollEmit.CHANGES:
                            key = (r.value, int(r.quality), r.source_ts_ns)
                            if prev.get(it.address) == key:
                                continue
                            prev[it.address] = key
                        (readings if type(r) is RawReading else dead).append(r)  # type: ignore[arg-type]
            except (TimeoutError, OSError, ConnectionError, ua.UaError) as err:
                return f"read failed: {_translate(err, self.config)}"
            self._last_alive_ns = now_ns()
            self.counters.extra["polls"] += 1
            await self._deliver(readings, dead)
            next_t += interval
            delay = next_t - loop.time()
            if delay < 0:
                next_t = loop.time()
                delay = 0
            try:
                await asyncio.wait_for(self._lost.wait(), timeout=delay)
            except TimeoutError:
                pass
