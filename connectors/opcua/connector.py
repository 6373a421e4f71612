"""OPC-UA client connector on asyncua.

Acquisition
    ``subscription`` (default): monitored items in one or more subscriptions with the configured
    publishing interval, sampling interval, queue size, deadband and trigger. Each PublishResponse
    becomes one RawBatch, converted on arrival (address = NodeId string, value, SourceTimestamp with
    the configured fallback, StatusCode -> quality, unit from EUInformation). The publish loop waits
    for the bounded queue (``block``): back-pressure reaches the server, whose item queues then
    discard the oldest values and say so (overflow bit, counted in ``overflows``).
    ``polling``: a batched Read every interval, for servers without subscriptions.

Reconnects
    The connector owns the connection: asyncua's own auto-reconnect stays off. A lost transport,
    a failed watchdog probe, a subscription status change (BadTimeout, BadShutdown) or publish
    silence longer than 3 keep-alive periods ends the session; the connector then reconnects with
    jittered exponential backoff (capped at 5 s by default), browses again, and re-creates every
    subscription by itself. The time without data is flagged as a gap: appended to ``gaps``,
    counted in ``counters.extra['gaps']`` and, unless ``gap_marker = 'counter_only'``, delivered as a
    RawReading on ``__connector__/<name>/gap`` whose value is the gap length in seconds and whose
    source timestamp is the start of the gap. Nothing is interpolated: after a gap, the next values
    are the server's current values with their own timestamps. Missing publish sequence numbers
    inside a live subscription are fetched with Republish; what cannot be fetched is a gap too.

Security
    Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss with Sign or SignAndEncrypt, or None
    where configured. The server certificate offered in the endpoint list is checked against the
    trust store before any session is opened; an untrusted one is saved to ``rejected_dir`` and
    refused with the command that trusts it.

Writes
    :meth:`OpcUaConnector.write_setpoint`: only configured nodes, type-checked against the node's
    DataType (and EURange when the server declares one), written, read back and verified, and
    logged (one INFO line and a :class:`WriteResult` in ``write_log`` per write).

Faults
    An exception while converting one monitored item's value makes that value an ``internal_error``
    dead letter; the rest of the publish is converted and delivered, the sequence number still
    advances, the subscription lives on. Each such exception is counted in
    ``counters.extra["internal_errors"]`` (``counters.last_error``) and its traceback logged,
    rate-limited. An unexpected exception in the connection's supervision or polling loop ends that
    session like a lost connection (closed, reconnected with backoff, the time flagged as a gap).

Modules
    :mod:`connectors.opcua.client` (session, security, certificates, error translation),
    :mod:`connectors.opcua.acquisition` (subscriptions, data changes, polling, gaps),
    :mod:`connectors.opcua.writes` (verified setpoint writes), :mod:`connectors.opcua.values`
    (OPC-UA values as plain Python). This module owns the connection loop and re-exports the
    public names of the others.

asyncua objects never leave this folder.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from asyncua import Client

from connectors.base import Backoff, Connector
from connectors.opcua.acquisition import AcquisitionMixin, Gap, _Item, _Sub
from connectors.opcua.browse import parse_node_id, read_engineering_units
from connectors.opcua.client import MODES, POLICY_CLASSES, _translate, close_client, open_client
from connectors.opcua.config import AcquisitionMode, OpcUaConnectorConfig
from connectors.opcua.errors import ConnectionFailed, OpcUaError
from connectors.opcua.fastdecode import PublishDecoder
from connectors.opcua.writes import SetpointWriterMixin, WriteResult
from core.samples import now_ns

__all__ = ["MODES", "POLICY_CLASSES", "Gap", "OpcUaConnector", "WriteResult", "close_client", "open_client"]

log = logging.getLogger("twin.connectors.opcua")


class OpcUaConnector(AcquisitionMixin, SetpointWriterMixin, Connector):
    kind = "opcua"

    def __init__(self, config: OpcUaConnectorConfig, *, default_line_id: str = "") -> None:
        super().__init__(config.name, config.queue.max_batches, config.queue.overflow)
        self.config = config
        self.line_id = config.line_id or default_line_id or None
        self.gap_address = f"__connector__/{config.name}/gap"
        self.gaps: deque[Gap] = deque(maxlen=1000)
        self.write_log: deque[WriteResult] = deque(maxlen=1000)
        self.last_error: str | None = None
        self.last_exception: OpcUaError | None = None
        self.counters.extra.update({
            "gaps": 0, "publishes": 0, "keepalives": 0, "overflows": 0, "republished": 0, "bad_nodes": 0,
            "unknown_units": 0, "subscriptions": 0, "monitored_items": 0, "polls": 0, "writes": 0,
            "write_failures": 0})
        self._client: Client | None = None
        self._ready = asyncio.Event()
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._last_alive_ns: int | None = None
        self._subs: list[_Sub] = []
        self._items_by_address: dict[str, _Item] = {}
        self._keepalive_s = 0.0
        self._closing = False
        self._range_cache: dict[str, tuple[float, float] | None] = {}
        self._warned_units: set[str] = set()
        self._decoder: PublishDecoder | None = None

    # -- public --------------------------------------------------------------------------------
    @property
    def nodes(self) -> list[str]:
        """Addresses acquired on the current connection."""
        return sorted(self._items_by_address)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Until the connector is connected and subscribed; TimeoutError names the last error."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"opcua {self.name}: not connected after {timeout} s "
                               f"({self.last_error or 'no error reported'})") from None

    async def check(self) -> dict[str, Any]:
        """One connection attempt outside the acquisition loop: connects, resolves the nodes and
        their units, disconnects. Raises the typed errors (for `check-config` and tests)."""
        client = await open_client(self.config)
        try:
            nodes = await self._resolve_nodes(client)
            units, _ = await read_engineering_units(client, [parse_node_id(n) for n in nodes])
            return {"url": self.config.url, "nodes": len(nodes),
                    "with_unit": sum(1 for n in nodes if units.get(n, (None, None))[0])}
        finally:
            await close_client(client)

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d.update({"url": self.config.url, "last_error": self.last_error or self.counters.last_error,
                  "nodes": len(self._items_by_address)})
        return d

    # -- the connection loop ---------------------------------------------------------------------
    async def _run(self) -> None:
        cfg = self.config
        backoff = Backoff(cfg.backoff.initial_s, cfg.backoff.max_s)
        gap_start: int | None = None
        gap_reason = ""
        while not self._closing:
            client: Client | None = None
            try:
                self._lost = asyncio.Event()
                self._lost_reason = ""
                client = await open_client(cfg, on_lost=self._on_connection_lost)
                self._client = client
                await self._setup(client)
            except asyncio.CancelledError:
                if client is not None:
                    await close_client(client)
                self._close_open_gap(gap_start, gap_reason)
                raise
            except Exception as err:  # noqa: BLE001 - every failure: report, back off, retry
                e = _translate(err, cfg) if not isinstance(err, (OpcUaError, ValueError)) else err
                self._report(e)
                if client is not None:
                    await close_client(client)
                self._client = None
                try:
                    await asyncio.sleep(backoff.next_delay())
                except asyncio.CancelledError:
                    self._close_open_gap(gap_start, gap_reason)
                    raise
                continue
            self.counters.connected = True
            self.last_error, self.last_exception = None, None
            if gap_start is not None:
                await self._flag_gap(gap_start, now_ns(), gap_reason)
                gap_start = None
            backoff.reset()
            self._ready.set()
            log.info("opcua %s: connected to %s (%s/%s), %d nodes, %s", self.name, cfg.url,
                     cfg.security.policy.value, cfg.security.mode.value, len(self._items_by_address), cfg.mode.value)
            try:
                if cfg.mode is AcquisitionMode.POLLING:
                    reason = await self._poll_loop(client)
                else:
                    reason = await self._supervise(client)
            except asyncio.CancelledError:
                self._ready.clear()
                self.counters.connected = False
                await close_client(client)
                self._client = None
                raise
            except Exception as err:  # noqa: BLE001 - a fault in our own loop: end this session, reconnect
                self._count_internal("opcua_loop", err, "the session is closed and opened again")
                reason = f"internal error: {type(err).__name__}"
            self._ready.clear()
            self.counters.connected = False
            self._client = None
            gap_start = self._last_alive_ns or now_ns()
            gap_reason = reason
            await close_client(client)
            if self._closing:
                break
            self.counters.reconnects += 1
            self.last_error = f"connection lost: {reason}"
            delay = backoff.next_delay()
            log.warning("opcua %s: %s; reconnecting in %.1f s", self.name, self.last_error, delay)
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                self._close_open_gap(gap_start, gap_reason)
                raise

    def _close_open_gap(self, start_ns: int | None, reason: str) -> None:
        """Stopped while disconnected: the gap is kept on the connector (the queue is closing)."""
        if start_ns is None:
            return
        gap = Gap(start_ns, now_ns(), f"{reason}; still open when the connector stopped")
        self.gaps.append(gap)
        self.counters.extra["gaps"] += 1
        log.warning("opcua %s: stopped during a data gap of %.2f s (%s)", self.name, gap.duration_s, gap.reason)

    def _report(self, err: BaseException) -> None:
        msg = str(err)
        if msg != self.last_error:  # log events, not every retry
            level = logging.WARNING if isinstance(err, ConnectionFailed) else logging.ERROR
            log.log(level, "opcua %s: %s", self.name, msg)
        self.last_error = msg
        self.last_exception = err if isinstance(err, OpcUaError) else None

    async def _on_connection_lost(self, exc: Exception) -> None:
        self._lost_reason = self._lost_reason or f"transport lost ({exc or type(exc).__name__})"
        self._lost.set()

    # -- shutdown --------------------------------------------------------------------------------------
    async def stop(self) -> None:
        self._closing = True
        await super().stop()

    async def aclose(self) -> None:
        self._closing = True
        await super().aclose()
