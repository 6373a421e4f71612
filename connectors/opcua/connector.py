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

asyncua objects never leave this folder.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import math
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from asyncua import Client, ua
from asyncua.crypto import security_policies

from connectors.base import Backoff, Connector, error_text, storable_text
from connectors.opcua import security as pki
from connectors.opcua.browse import parse_node_id, read_engineering_units, walk
from connectors.opcua.config import (
    AcquisitionMode,
    DataChangeTrigger,
    DeadbandType,
    GapMarker,
    OpcUaConnectorConfig,
    PollEmit,
    SecurityMode,
    SecurityPolicy,
    ServerCertificateCheck,
    TimestampFallback,
)
from connectors.opcua.errors import (
    AuthenticationFailed,
    ClientCertificateRejected,
    ConnectionFailed,
    OpcUaError,
    PkiError,
    SecurityPolicyUnavailable,
    SetpointWriteError,
    UntrustedServerCertificate,
)
from core.samples import DeadLetter, Quality, RawBatch, RawReading, SourceKind, now_ns, ns_to_iso

log = logging.getLogger("twin.connectors.opcua")

POLICY_CLASSES: dict[SecurityPolicy, type[security_policies.SecurityPolicy]] = {
    SecurityPolicy.NONE: security_policies.SecurityPolicyNone,
    SecurityPolicy.BASIC256SHA256: security_policies.SecurityPolicyBasic256Sha256,
    SecurityPolicy.AES128_SHA256_RSAOAEP: security_policies.SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicy.AES256_SHA256_RSAPSS: security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MODES = {SecurityMode.SIGN: ua.MessageSecurityMode.Sign,
         SecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt}
_TRIGGERS = {DataChangeTrigger.STATUS: ua.DataChangeTrigger.Status,
             DataChangeTrigger.STATUS_VALUE: ua.DataChangeTrigger.StatusValue,
             DataChangeTrigger.STATUS_VALUE_TIMESTAMP: ua.DataChangeTrigger.StatusValueTimestamp}
_DEADBANDS = {DeadbandType.NONE: 0, DeadbandType.ABSOLUTE: 1, DeadbandType.PERCENT: 2}

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_EPOCH_NAIVE = _dt.datetime(1970, 1, 1)
_OVERFLOW_BITS = 0x0480  # InfoType = DataValue (0x400) | Overflow (0x80), OPC 10000-4 7.39
_SOURCE = SourceKind.OPCUA

_AUTH_CODES = {ua.StatusCodes.BadUserAccessDenied, ua.StatusCodes.BadIdentityTokenInvalid,
               ua.StatusCodes.BadIdentityTokenRejected}
_CERT_CODES = {ua.StatusCodes.BadCertificateUntrusted, ua.StatusCodes.BadCertificateInvalid,
               ua.StatusCodes.BadCertificateTimeInvalid, ua.StatusCodes.BadCertificateUriInvalid,
               ua.StatusCodes.BadCertificateUseNotAllowed, ua.StatusCodes.BadCertificateRevoked,
               ua.StatusCodes.BadSecurityChecksFailed}
_POLICY_CODES = {ua.StatusCodes.BadSecurityPolicyRejected, ua.StatusCodes.BadSecurityModeRejected}

# builtin DataType ids (namespace 0) that a setpoint write accepts, with their variant types
_INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-2**7, 2**7 - 1), ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-2**15, 2**15 - 1), ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-2**31, 2**31 - 1), ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-2**63, 2**63 - 1), ua.VariantType.UInt64: (0, 2**64 - 1),
}


@dataclass(frozen=True)
class Gap:
    """A span without data from this connector: [start_ns, end_ns] (never interpolated)."""

    start_ns: int
    end_ns: int
    reason: str

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True)
class WriteResult:
    """The audit record of one setpoint write."""

    node_id: str
    requested: Any
    written: Any  # the value as sent, in the node's type
    previous: Any
    readback: Any
    data_type: str
    ts_ns: int
    ok: bool
    error: str = ""  # why it failed (empty when ok)
    actor: str = ""  # who asked (e.g. "feedback", a user name)
    reason: str = ""  # why they asked (e.g. a proposal id)


@dataclass
class _Item:
    address: str
    unit: str | None


@dataclass
class _Sub:
    id: int = 0
    last_seq: int | None = None
    items: dict[int, _Item] = field(default_factory=dict)


def _dt_ns(d: _dt.datetime | None, pico: int | None = None) -> int | None:
    if d is None or d.year < 1971:  # OPC-UA MinDateTime means "no timestamp"
        return None
    delta = d - (_EPOCH if d.tzinfo is not None else _EPOCH_NAIVE)
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    if pico:
        ns += pico // 1000
    return ns


class _Unsupported(Exception):
    pass


def _plain(v: Any) -> Any:
    """An OPC-UA value as plain Python (numbers, bool, str, tuples); raises _Unsupported."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, _dt.datetime):
        ns = _dt_ns(v)
        return ns_to_iso(ns) if ns is not None else None
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, ua.LocalizedText):
        return v.Text
    if isinstance(v, ua.QualifiedName):
        return v.Name
    if isinstance(v, ua.NodeId):
        return v.to_string()
    if isinstance(v, ua.StatusCode):
        return int(v.value)
    if isinstance(v, (list, tuple)):
        return tuple(_plain(x) for x in v)
    if hasattr(v, "value") and isinstance(getattr(v, "value"), int):  # IntEnum
        return int(v.value)
    raise _Unsupported(type(v).__name__)


def _quality(code: int) -> Quality:
    sev = code >> 30
    return Quality.GOOD if sev == 0 else Quality.UNCERTAIN if sev == 1 else Quality.BAD


def _status_name(code: int) -> str:
    try:
        return ua.StatusCode(code).name
    except Exception:  # noqa: BLE001
        return f"0x{code:08X}"


def _is_loopback(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


# ------------------------------------------------------------------------------------------------
# connecting (shared with `twin browse`)


async def _fetch_endpoints(url: str, timeout: float) -> list[ua.EndpointDescription]:
    probe = Client(url, timeout=timeout)
    try:
        return await probe.connect_and_get_server_endpoints()
    except (OSError, asyncio.TimeoutError, ConnectionError) as err:
        raise ConnectionFailed(f"cannot reach {url}: {err or type(err).__name__}") from err
    except ua.UaError as err:
        raise ConnectionFailed(f"{url}: GetEndpoints failed: {err}") from err


def _endpoint_list(eps: Sequence[ua.EndpointDescription]) -> str:
    out = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in eps})
    return ", ".join(out) or "none"


def _check_server_certificate(cfg: OpcUaConnectorConfig, der: bytes) -> None:
    sec = cfg.security
    store = pki.TrustStore(sec.trust_dir)
    reason = store.check(der)
    if reason is None:
        return
    cert = pki.x509.load_der_x509_certificate(der)
    if sec.server_certificate_check is ServerCertificateCheck.TRUST_ON_FIRST_USE and reason.startswith("not in"):
        uri = pki.application_uri(cert)
        known = []
        if sec.trust_dir.is_dir():
            for f in sec.trust_dir.iterdir():
                try:
                    known.append(pki.application_uri(pki.load_certificate(f)))
                except PkiError:
                    continue
        if uri not in known:
            path = pki.trust(_write_tmp(der, sec.rejected_dir), sec.trust_dir)
            log.warning("opcua %s: trusting server certificate on first use: %s (stored as %s)", cfg.name,
                        pki.describe(cert), path)
            return
        reason = f"differs from the certificate trusted on first use for {uri}"
    saved = pki.save_rejected(der, sec.rejected_dir)
    hint = f"if you trust it, run: twin opcua trust {saved} --trust-dir {sec.trust_dir}" if saved else \
        f"copy the server's certificate into {sec.trust_dir} if you trust it"
    raise UntrustedServerCertificate(
        f"server certificate of {cfg.url} is not trusted ({reason}): {pki.describe(cert)}; "
        f"the connection was refused before a session was opened; {hint}",
        fingerprint=pki.fingerprint(der), saved_to=saved)


def _write_tmp(der: bytes, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    p = where / f".tofu_{time.time_ns()}.der"
    p.write_bytes(der)
    return p


def _translate(err: BaseException, cfg: OpcUaConnectorConfig) -> OpcUaError:
    """asyncua / socket errors -> the connector's typed errors (once, here)."""
    if isinstance(err, OpcUaError):
        return err
    if isinstance(err, ua.UaStatusCodeError):
        code = err.code
        name = _status_name(code)
        if code in _AUTH_CODES:
            who = f"user {cfg.username!r}" if cfg.username else "an anonymous user"
            return AuthenticationFailed(f"{cfg.url} refused {who} ({name}): wrong user name or password, "
                                        "or the server does not allow this identity")
        if code in _CERT_CODES:
            own = cfg.security.certificate
            fp = ""
            try:
                fp = f" (SHA-256 {pki.fingerprint(pki.cert_der(pki.load_certificate(own)))})"
            except PkiError:
                pass
            return ClientCertificateRejected(f"{cfg.url} refused our application certificate {own}{fp} ({name}): "
                                             "its administrator has to trust it")
        if code in _POLICY_CODES:
            return SecurityPolicyUnavailable(f"{cfg.url} refused security policy {cfg.security.policy.value} "
                                             f"({name})")
        return ConnectionFailed(f"{cfg.url}: {name}")
    if isinstance(err, ua.UaError) and "No matching endpoints" in str(err):
        return SecurityPolicyUnavailable(f"{cfg.url} offers no endpoint with security policy "
                                         f"{cfg.security.policy.value}: {err}")
    if isinstance(err, (OSError, asyncio.TimeoutError, ConnectionError)):
        return ConnectionFailed(f"cannot reach {cfg.url}: {err or type(err).__name__}")
    return ConnectionFailed(f"{cfg.url}: {type(err).__name__}: {err}")


async def open_client(cfg: OpcUaConnectorConfig, *, on_lost: Any = None) -> Client:
    """Connect a session with the configured security and identity; raises the typed errors."""
    sec = cfg.security
    client = Client(cfg.url, timeout=cfg.request_timeout_s, watchdog_intervall=cfg.watchdog_interval_s)
    client.session_timeout = int(cfg.session_timeout_s * 1000)
    client.name = client.description = f"pilotline-twin {cfg.name}"
    client.product_uri = "urn:pilotline-twin"
    client.application_uri = cfg.application_uri or pki.DEFAULT_CLIENT_URI
    if cfg.username is not None:
        client.set_user(cfg.username)
        if cfg.password is not None:
            client.set_password(cfg.password.get_secret_value())
    try:
        if sec.policy is not SecurityPolicy.NONE:
            try:
                own = pki.load_certificate(sec.certificate)
            except PkiError as err:
                raise PkiError(f"{err}; create one with: twin opcua make-cert --out {sec.certificate.parent.parent}") \
                    from err
            if not sec.private_key.exists():
                raise PkiError(f"private key {sec.private_key} not found (it is created with the certificate by "
                               "`twin opcua make-cert`)")
            if cfg.application_uri is None:
                client.application_uri = pki.application_uri(own) or pki.DEFAULT_CLIENT_URI
            eps = await _fetch_endpoints(cfg.url, cfg.request_timeout_s)
            cls, mode = POLICY_CLASSES[sec.policy], MODES[sec.mode]
            match = [e for e in eps if e.SecurityPolicyUri == cls.URI and e.SecurityMode == mode]
            if not match:
                raise SecurityPolicyUnavailable(
                    f"{cfg.url} offers no endpoint with {sec.policy.value}/{sec.mode.value}; it offers: "
                    f"{_endpoint_list(eps)}")
            der = match[0].ServerCertificate
            if not der:
                raise UntrustedServerCertificate(f"{cfg.url} sent no certificate with its secure endpoint",
                                                 fingerprint="", saved_to=None)
            der = _first_cert(der)
            _check_server_certificate(cfg, der)
            await client.set_security(
                cls, str(sec.certificate), str(sec.private_key),
                sec.private_key_password.get_secret_value() if sec.private_key_password else None,
                server_certificate=der, mode=mode)
        if on_lost is not None:
            client.connection_lost_callback = on_lost
        await client.connect()
        return client
    except BaseException as err:
        await close_client(client)
        if isinstance(err, asyncio.CancelledError):
            raise
        typed = _translate(err, cfg)
        if isinstance(typed, SecurityPolicyUnavailable) and sec.policy is SecurityPolicy.NONE:
            try:
                offered = _endpoint_list(await _fetch_endpoints(cfg.url, cfg.request_timeout_s))
                typed = SecurityPolicyUnavailable(f"{cfg.url} does not accept security policy none; it offers: "
                                                  f"{offered}")
            except OpcUaError:
                pass
        raise typed from err


def _first_cert(der: bytes) -> bytes:
    n = int.from_bytes(der[2:4], "big") + 4 if len(der) > 4 and der[1] == 0x82 else len(der)
    return der[:n]


async def close_client(client: Client) -> None:
    """Close a client whether its connection is alive or already dead, without raising."""
    try:
        if client.uaclient.state.name == "CONNECTED":
            await asyncio.wait_for(client.disconnect(), timeout=3.0)
        else:
            await asyncio.wait_for(client.close_session(), timeout=2.0)
    except BaseException:  # noqa: BLE001 - closing must not raise
        pass
    try:
        client.uaclient.request_disconnect()
        client.disconnect_socket()
    except Exception:  # noqa: BLE001
        pass


# ------------------------------------------------------------------------------------------------


class OpcUaConnector(Connector):
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
        self._dtype_cache: dict[str, ua.VariantType] = {}
        self._range_cache: dict[str, tuple[float, float] | None] = {}
        self._warned_units: set[str] = set()

    # -- public --------------------------------------------------------------------------------
    @property
    def nodes(self) -> list[str]:
        """Addresses acquired on the current connection."""
        return sorted(self._items_by_address)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Until the connector is connected and subscribed; TimeoutError names the last error."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
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
            await self._create_subscriptions(client)

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

    def _safe_reading(self, it: _Item, dv: ua.DataValue | None, recv: int) -> RawReading | DeadLetter:
        """:meth:`_reading`, or an ``internal_error`` dead letter if it raises (never raises)."""
        try:
            return self._reading(it, dv, recv)
        except Exception as err:  # noqa: BLE001 - one value must not cost the publish or the subscription
            self._count_internal("opcua_callback", err, f"the value of {it.address} is kept as an internal_error "
                                                        "dead letter")
            return DeadLetter(_SOURCE, storable_text(it.address, 512), storable_text(dv, 4096),
                              "internal error while converting this value: " + error_text(err, 450),
                              "internal_error", recv, self.name, self.line_id)

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
                if isinstance(notif, ua.DataChangeNotification):
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
        self.counters.extra["publishes"] += 1
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
            except asyncio.TimeoutError:
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
            except (OSError, asyncio.TimeoutError, ConnectionError, ua.UaError) as err:
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
            except asyncio.TimeoutError:
                pass

    # -- setpoint writes -----------------------------------------------------------------------------
    async def _node_meta(self, client: Client, nid: ua.NodeId, key: str) -> tuple[ua.VariantType, Any]:
        params = ua.ReadParameters()
        params.NodesToRead = [ua.ReadValueId(NodeId=nid, AttributeId=ua.AttributeIds.DataType),
                              ua.ReadValueId(NodeId=nid, AttributeId=ua.AttributeIds.Value)]
        dt_dv, val_dv = await client.uaclient.read(params)
        if dt_dv.StatusCode is not None and not dt_dv.StatusCode.is_good():
            raise SetpointWriteError(f"{key}: {_status_name(dt_dv.StatusCode.value)}", "unknown_node")
        dtype = dt_dv.Value.Value if dt_dv.Value is not None else None
        if not (isinstance(dtype, ua.NodeId) and dtype.NamespaceIndex == 0 and isinstance(dtype.Identifier, int)
                and 1 <= dtype.Identifier <= 12):
            raise SetpointWriteError(f"{key}: data type {dtype} is not a boolean, integer, float or string "
                                     "type; setpoint writes support those only", "type")
        vtype = ua.VariantType(dtype.Identifier)
        if key not in self._range_cache:
            _, ranges = await read_engineering_units(client, [nid])
            self._range_cache[key] = ranges.get(key)
        prev = val_dv.Value.Value if val_dv.Value is not None else None
        return vtype, prev

    @staticmethod
    def _coerce(key: str, value: Any, vtype: ua.VariantType) -> Any:
        if vtype == ua.VariantType.Boolean:
            if not isinstance(value, bool):
                raise SetpointWriteError(f"{key} is Boolean; got {type(value).__name__} {value!r}", "type")
            return value
        if vtype == ua.VariantType.String:
            if not isinstance(value, str):
                raise SetpointWriteError(f"{key} is String; got {type(value).__name__} {value!r}", "type")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SetpointWriteError(f"{key} is {vtype.name}; got {type(value).__name__} {value!r}", "type")
        if not math.isfinite(value):
            raise SetpointWriteError(f"{key}: {value!r} is not a finite number", "type")
        if vtype in _INT_RANGES:
            if int(value) != value:
                raise SetpointWriteError(f"{key} is {vtype.name}; {value!r} is not a whole number", "type")
            lo, hi = _INT_RANGES[vtype]
            if not lo <= int(value) <= hi:
                raise SetpointWriteError(f"{key} is {vtype.name}; {value!r} does not fit", "type")
            return int(value)
        if vtype == ua.VariantType.Float and abs(value) > 3.4028234663852886e38:
            raise SetpointWriteError(f"{key} is Float; {value!r} does not fit", "type")
        return float(value)

    def _matches(self, written: Any, readback: Any, vtype: ua.VariantType) -> bool:
        if vtype in (ua.VariantType.Float, ua.VariantType.Double):
            if not isinstance(readback, (int, float)) or isinstance(readback, bool):
                return False
            expected = struct.unpack("f", struct.pack("f", written))[0] if vtype == ua.VariantType.Float else written
            tol = self.config.writes.float_tolerance * max(1.0, abs(expected))
            return abs(readback - expected) <= tol
        return bool(readback == written)

    async def write_setpoint(self, node_id: str, value: Any, *, reason: str = "", actor: str = "") -> WriteResult:
        """Write one setpoint, read it back and verify it. Raises SetpointWriteError; every attempt
        (refused, failed or verified) is logged and kept in ``write_log``."""
        try:
            key = parse_node_id(node_id).to_string()
        except ValueError as err:
            raise SetpointWriteError(str(err), "unknown_node") from err
        requested = value
        written: Any = None
        prev: Any = None
        vtype_name = "?"
        try:
            if key not in {parse_node_id(n).to_string() for n in self.config.writes.allowed_nodes}:
                raise SetpointWriteError(f"{key} is not in writes.allowed_nodes of connector {self.name!r}",
                                         "not_allowed")
            client = self._client
            if client is None or not self._ready.is_set():
                raise SetpointWriteError(f"connector {self.name!r} is not connected ({self.last_error})",
                                         "not_connected")
            nid = parse_node_id(key)
            vtype, prev = await self._node_meta(client, nid, key)
            vtype_name = vtype.name
            written = self._coerce(key, value, vtype)
            rng = self._range_cache.get(key)
            if rng is not None and isinstance(written, (int, float)) and not rng[0] <= written <= rng[1]:
                raise SetpointWriteError(f"{key}: {written!r} outside the EURange [{rng[0]:g}, {rng[1]:g}] the "
                                         "server declares", "out_of_range")
            wv = ua.WriteValue()
            wv.NodeId = nid
            wv.AttributeId = ua.AttributeIds.Value
            wv.Value = ua.DataValue(ua.Variant(written, vtype))
            params = ua.WriteParameters()
            params.NodesToWrite = [wv]
            status = (await client.uaclient.write(params))[0]
            if not status.is_good():
                name = _status_name(status.value)
                code = {"BadOutOfRange": "out_of_range", "BadTypeMismatch": "type",
                        "BadUserAccessDenied": "not_allowed", "BadNotWritable": "not_allowed"}.get(name, "bad_status")
                raise SetpointWriteError(f"{key}: the server refused {written!r} ({name})", code)
            deadline = time.monotonic() + self.config.writes.verify_timeout_s
            rb: Any = None
            while True:
                rparams = ua.ReadParameters()
                rparams.NodesToRead = [ua.ReadValueId(NodeId=nid, AttributeId=ua.AttributeIds.Value)]
                dv = (await client.uaclient.read(rparams))[0]
                rb = dv.Value.Value if dv.Value is not None else None
                if self._matches(written, rb, vtype):
                    break
                if time.monotonic() >= deadline:
                    raise SetpointWriteError(f"{key}: wrote {written!r} but read back {rb!r}", "verify_failed")
                await asyncio.sleep(0.05)
        except SetpointWriteError as err:
            res = WriteResult(key, requested, written, _safe(prev), None, vtype_name, now_ns(), False, str(err), actor,
                              reason)
            self.write_log.append(res)
            self.counters.extra["write_failures"] += 1
            log.warning("opcua %s: setpoint write %s = %r refused (%s) by=%s reason=%s", self.name, key, requested,
                        err, actor or "-", reason or "-")
            raise
        except (OSError, asyncio.TimeoutError, ConnectionError, ua.UaError) as err:
            e = SetpointWriteError(f"{key}: write failed: {_translate(err, self.config)}", "bad_status")
            self.write_log.append(WriteResult(key, requested, written, _safe(prev), None, vtype_name, now_ns(), False,
                                              str(e), actor, reason))
            self.counters.extra["write_failures"] += 1
            log.warning("opcua %s: setpoint write %s = %r failed: %s", self.name, key, requested, e)
            raise e from err
        res = WriteResult(key, requested, written, _safe(prev), _safe(rb), vtype_name, now_ns(), True, "", actor,
                          reason)
        self.write_log.append(res)
        self.counters.extra["writes"] += 1
        log.info("opcua %s: setpoint write %s: %r -> %r (%s), read back %r, by=%s reason=%s", self.name, key,
                 res.previous, written, vtype_name, res.readback, actor or "-", reason or "-")
        return res

    # -- shutdown --------------------------------------------------------------------------------------
    async def stop(self) -> None:
        self._closing = True
        await super().stop()

    async def aclose(self) -> None:
        self._closing = True
        await super().aclose()


def _safe(v: Any) -> Any:
    try:
        return _plain(v)
    except _Unsupported:
        return repr(v)
