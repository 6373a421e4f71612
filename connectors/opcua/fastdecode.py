"""A fast decoder for OPC-UA PublishResponses (issue #23): monitored-item values without asyncua objects per change.

asyncua decodes every PublishResponse with its generic ``struct_from_binary``: a Python call per field of every
DataValue, a ``datetime`` per timestamp, a ``Variant`` and a ``StatusCode`` object per change (about 11-16 µs per
change on the pilot-line machine, more than half of the twin's whole cost per stored change). This module reads
the same bytes with :mod:`struct` in one loop and yields, per DataChangeNotification, a :class:`DataChanges`: a
list of ``(client handle, value, status code, source ts ns | None, server ts ns | None)`` tuples, which the
connector turns into readings (:meth:`connectors.opcua.acquisition.AcquisitionMixin._convert`).

What it does not recognise goes to asyncua's generic decoder, so the result is what the connector got before:

- a whole PublishResponse whose framing is not the expected one (another type id, diagnostic infos, an
  unexpected end): :func:`decode_publish_response` raises and :class:`PublishDecoder` decodes the same bytes
  with ``struct_from_binary``;
- a NotificationData entry that is not a binary-encoded DataChangeNotification (StatusChangeNotification,
  EventNotificationList...): asyncua's ``extensionobject_from_binary``;
- a DataChangeNotification with something unusual in it (picoseconds, whose field order asyncua and the
  specification do not agree on; diagnostic infos; a timestamp beyond 9999; bytes that do not add up): that one
  notification through ``extensionobject_from_binary``;
- a value that is not a scalar Boolean or number (strings, arrays, extension objects...): that one Variant
  through asyncua's ``variant_from_binary``, its ``.Value`` kept as the generic path would.

Status codes are read as integers and handled by the connector exactly as before (quality, overflow bit, Bad →
what the tagger does with a Bad reading). Timestamps become ns since 1970 with asyncua's resolution (whole µs,
as its ``datetime`` holds them) and its "no timestamp" rule (before 1971 → None), so readings are identical.

:func:`install` replaces the ``publish`` method of one asyncua session (the connector's own; nothing global):
it sends the PublishRequest as asyncua does and decodes the answer with a :class:`PublishDecoder`, which never
raises anything but asyncua's own ``UaStructParsingError`` (what asyncua raises for a response it cannot parse:
its publish loop skips that response without acknowledging it, and the connector's sequence-number check asks
the server to Republish it).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import extensionobject_from_binary, struct_from_binary, variant_from_binary
from asyncua.ua.uaerrors import UaStructParsingError
from asyncua.ua.uatypes import MAX_OPC_FILETIME, win_epoch_to_datetime

log = logging.getLogger("twin.connectors.opcua")

__all__ = ["DataChanges", "Malformed", "PublishDecoder", "decode_datachanges", "decode_publish_response", "install"]

_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_HEAD = struct.Struct("<IB")  # client handle, DataValue encoding mask

# Variant type id -> struct of a scalar of that type (Boolean, SByte, Byte, Int16..UInt64, Float, Double);
# the values are what asyncua's Primitives unpack for them.
_SCALAR_FMT = {1: "?", 2: "b", 3: "B", 4: "h", 5: "H", 6: "i", 7: "I", 8: "q", 9: "Q", 10: "f", 11: "d"}

# 100 ns ticks since 1601-01-01 (OPC-UA DateTime) -> µs since 1970 as asyncua's datetime holds them
_EPOCH_US = 11_644_473_600 * 1_000_000
_TICKS_1971 = (11_644_473_600 + 365 * 86_400) * 10_000_000  # below: year < 1971, "no timestamp" (values._dt_ns)
_MAX_TICKS = int(MAX_OPC_FILETIME)

# binary encoding ids (ns=0)
_PUBLISH_RESPONSE = ua.ObjectIds.PublishResponse_Encoding_DefaultBinary
_DATA_CHANGE = ua.ObjectIds.DataChangeNotification_Encoding_DefaultBinary


class Malformed(ValueError):
    """Bytes the fast path does not decode (not necessarily invalid OPC-UA): the generic decoder takes them."""


class DataChanges:
    """The monitored-item notifications of one DataChangeNotification, decoded by the fast path:
    ``changes`` = [(client handle, value, status code, source ts ns | None, server ts ns | None)]."""

    __slots__ = ("changes",)

    def __init__(self, changes: list[tuple[int, Any, int, int | None, int | None]]) -> None:
        self.changes = changes

    def __len__(self) -> int:
        return len(self.changes)

    def __repr__(self) -> str:
        head = ", ".join(repr(c) for c in self.changes[:3])
        more = f", ... {len(self.changes) - 3} more" if len(self.changes) > 3 else ""
        return f"DataChanges([{head}{more}])"


def _ticks_ns(t: int) -> int | None:
    if t < _TICKS_1971:
        return None
    if t >= _MAX_TICKS:
        raise Malformed("timestamp beyond 9999")
    return (t // 10 - _EPOCH_US) * 1000


# (mask, variant type) -> (struct of the whole record after the handle, index of value, status, source, server)
# for records without picoseconds; built on first use (at most 16 masks x 12 types).
_Layout = tuple[struct.Struct, int, int, int, int]
_LAYOUTS: dict[tuple[int, int], _Layout | None] = {}


def _layout(mask: int, vt: int) -> _Layout | None:
    key = (mask, vt)
    if key in _LAYOUTS:
        return _LAYOUTS[key]
    lay: _Layout | None = None
    if not mask & ~0x0F and (not mask & 1 or vt in _SCALAR_FMT):
        fmt, i = "<", 0
        iv = ist = isrc = isrv = -1
        if mask & 1:
            fmt += "B" + _SCALAR_FMT[vt]
            iv, i = i + 1, i + 2
        if mask & 2:
            fmt += "I"
            ist, i = i, i + 1
        if mask & 4:
            fmt += "q"
            isrc, i = i, i + 1
        if mask & 8:
            fmt += "q"
            isrv, i = i, i + 1
        lay = (struct.Struct(fmt), iv, ist, isrc, isrv)
    _LAYOUTS[key] = lay
    return lay


def decode_datachanges(buf: bytes, pos: int, end: int) -> DataChanges:
    """Decode the body of a DataChangeNotification in ``buf[pos:end]`` (all of it must be used).
    Raises :class:`Malformed` (or struct.error / IndexError on truncated bytes) for what it does not decode."""
    n = _I32.unpack_from(buf, pos)[0]
    pos += 4
    if n < 0:
        n = 0  # a null array
    if n > (end - pos) // 5:  # every notification takes at least 5 bytes: a count the bytes cannot hold
        raise Malformed(f"{n} notifications in {end - pos} bytes")
    out: list[tuple[int, Any, int, int | None, int | None]] = []
    append = out.append
    ticks_ns = _ticks_ns
    t1971, tmax, epoch = _TICKS_1971, _MAX_TICKS, _EPOCH_US
    layouts = _LAYOUTS
    for _ in range(n):
        handle, mask = _HEAD.unpack_from(buf, pos)
        pos += 5
        vt = buf[pos] if mask & 1 else 0
        lay = layouts.get((mask, vt), 0)
        if lay == 0:
            lay = _layout(mask, vt)
        if lay is not None:
            s, iv, ist, isrc, isrv = lay  # type: ignore[misc]
            f = s.unpack_from(buf, pos)
            pos += s.size
            value = f[iv] if iv >= 0 else None
            status = f[ist] if ist >= 0 else 0
            if isrc >= 0:
                t = f[isrc]
                src = (t // 10 - epoch) * 1000 if t1971 <= t < tmax else ticks_ns(t)
            else:
                src = None
            if isrv >= 0:
                t = f[isrv]
                srv = (t // 10 - epoch) * 1000 if t1971 <= t < tmax else ticks_ns(t)
            else:
                srv = None
            append((handle, value, status, src, srv))
            continue
        # a value that is not a scalar number (asyncua's Variant decoder), or a mask with picoseconds
        if mask & ~0x0F:
            raise Malformed(f"DataValue encoding mask 0x{mask:02x}")
        value = None
        if mask & 1:
            b = Buffer(buf, pos, end - pos)
            value = variant_from_binary(b).Value
            pos = b.cur_pos
        status = 0
        if mask & 2:
            status = _U32.unpack_from(buf, pos)[0]
            pos += 4
        src = srv = None
        if mask & 4:
            src = ticks_ns(_I64.unpack_from(buf, pos)[0])
            pos += 8
        if mask & 8:
            srv = ticks_ns(_I64.unpack_from(buf, pos)[0])
            pos += 8
        append((handle, value, status, src, srv))
    if pos + 4 > end:
        raise Malformed("truncated DataChangeNotification")
    diag = _I32.unpack_from(buf, pos)[0]
    pos += 4
    if diag > 0:
        raise Malformed("diagnostic infos")
    if pos != end:
        raise Malformed(f"DataChangeNotification of {end - pos} bytes more than its notifications")
    return DataChanges(out)


def _nodeid_ns0(buf: bytes, pos: int) -> tuple[int | None, int]:
    """A numeric ns=0 NodeId (two-, four-byte or numeric encoding) -> (identifier, next pos); any other NodeId:
    (None, an undefined pos)."""
    enc = buf[pos]
    if enc == 0:
        return buf[pos + 1], pos + 2
    if enc == 1:
        return (buf[pos + 2] | buf[pos + 3] << 8) if buf[pos + 1] == 0 else None, pos + 4
    if enc == 2:
        nsi = buf[pos + 1] | buf[pos + 2] << 8
        return _U32.unpack_from(buf, pos + 3)[0] if nsi == 0 else None, pos + 7
    return None, pos


def _u32_array(buf: bytes, pos: int) -> tuple[list[int], int]:
    n = _I32.unpack_from(buf, pos)[0]
    pos += 4
    if n <= 0:
        return [], pos
    if pos + 4 * n > len(buf):
        raise Malformed("truncated array")
    return list(struct.unpack_from(f"<{n}I", buf, pos)), pos + 4 * n


def decode_publish_response(data: Buffer) -> ua.PublishResponse:
    """A PublishResponse (``data`` from its type id on, as asyncua hands it to ``struct_from_binary``) with each
    binary DataChangeNotification as a :class:`DataChanges`. Consumes ``data``. Raises (:class:`Malformed`,
    struct.error, IndexError, asyncua's errors) when the bytes are not what it decodes; the caller then decodes
    them with the generic decoder."""
    buf = bytes(data.read(len(data)))
    tid, pos = _nodeid_ns0(buf, 0)
    if tid != _PUBLISH_RESPONSE:
        raise Malformed(f"type id {tid}")
    b = Buffer(buf, pos)
    header = struct_from_binary(ua.ResponseHeader, b)
    pos = b.cur_pos
    sub_id = _U32.unpack_from(buf, pos)[0]
    available, pos = _u32_array(buf, pos + 4)
    more = bool(buf[pos])
    seq = _U32.unpack_from(buf, pos + 1)[0]
    publish_time = win_epoch_to_datetime(_I64.unpack_from(buf, pos + 5)[0])
    pos += 13
    count = _I32.unpack_from(buf, pos)[0]
    pos += 4
    if count > len(buf) - pos:
        raise Malformed(f"{count} notifications in {len(buf) - pos} bytes")
    notifications: list[Any] = []
    for _ in range(max(count, 0)):
        start = pos
        tid, pos = _nodeid_ns0(buf, pos)
        if tid == _DATA_CHANGE and buf[pos] == 1:
            length = _I32.unpack_from(buf, pos + 1)[0]
            body = pos + 5
            if 4 <= length <= len(buf) - body:
                try:
                    notifications.append(decode_datachanges(buf, body, body + length))
                    pos = body + length
                    continue
                except Exception:  # noqa: BLE001 - the fast path's limits or bad bytes
                    pass  # this notification through asyncua's decoder (it raises if the bytes are bad)
        b = Buffer(buf, start)
        notifications.append(extensionobject_from_binary(b))
        pos = b.cur_pos
    results, pos = _u32_array(buf, pos)
    if pos + 4 > len(buf):
        raise Malformed("truncated PublishResponse")
    diag = _I32.unpack_from(buf, pos)[0]
    pos += 4
    if diag > 0 or pos != len(buf):
        raise Malformed("diagnostic infos or trailing bytes")
    msg = ua.NotificationMessage(SequenceNumber=seq, PublishTime=publish_time, NotificationData=notifications)
    params = ua.PublishResult(SubscriptionId=sub_id, AvailableSequenceNumbers=available, MoreNotifications=more,
                              NotificationMessage=msg, Results=[ua.StatusCode(r) for r in results],
                              DiagnosticInfos=[])
    return ua.PublishResponse(ResponseHeader=header, Parameters=params)


class PublishDecoder:
    """Decodes the PublishResponses of one session: the fast path while ``enabled``, the generic one for what the
    fast path does not take (counted in ``fallbacks``, the reason of the last in ``last_fallback``)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.fast = 0  # responses decoded by the fast path
        self.fallbacks = 0  # responses the fast path gave to the generic decoder
        self.failures = 0  # responses neither could decode (skipped by asyncua; Republish asks for them again)
        self.last_fallback: str | None = None

    def decode(self, data: Buffer) -> ua.PublishResponse:
        """Never raises anything but ``UaStructParsingError`` (asyncua's publish loop skips that response)."""
        if self.enabled:
            try:
                resp = decode_publish_response(data.copy())
                self.fast += 1
                return resp
            except Exception as err:  # noqa: BLE001 - whatever the fast path cannot read: the generic path
                self.fallbacks += 1
                self.last_fallback = f"{type(err).__name__}: {err}"[:300]
        try:
            return struct_from_binary(ua.PublishResponse, data)
        except Exception as err:  # as asyncua's own publish: a response it cannot parse
            self.failures += 1
            raise UaStructParsingError(f"PublishResponse not decodable: {type(err).__name__}: {err}") from err


def install(session: Any, decoder: PublishDecoder) -> bool:
    """Let ``session`` (an asyncua ``UaSession``) decode its PublishResponses with ``decoder``. Returns False,
    changing nothing, when the session does not look as this was written for (another asyncua version)."""
    send: Callable[..., Any] | None = getattr(session, "_send_request", None)
    if send is None or not callable(getattr(session, "publish", None)) or not hasattr(session, "_publish_loop"):
        return False

    async def publish(acks: list[ua.SubscriptionAcknowledgement]) -> ua.PublishResponse:
        request = ua.PublishRequest()
        request.Parameters.SubscriptionAcknowledgements = acks if acks else []
        data = await send(request, timeout=0)
        return decoder.decode(data)

    session.publish = publish
    return True
