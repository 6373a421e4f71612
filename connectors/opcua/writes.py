"""Verified OPC-UA setpoint writes: only configured nodes, type-checked against the node's DataType
(and EURange when the server declares one), written, read back and verified, and logged (one INFO
line and a :class:`WriteResult` in ``write_log`` per write).

:class:`SetpointWriterMixin` is one of the bases of :class:`connectors.opcua.connector.OpcUaConnector`;
the attributes declared on the mixin are set by the connector.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from asyncua import Client, ua

from connectors.base import ConnectorCounters
from connectors.opcua.browse import parse_node_id, read_engineering_units
from connectors.opcua.client import _status_name, _translate
from connectors.opcua.config import OpcUaConnectorConfig
from connectors.opcua.errors import SetpointWriteError
from connectors.opcua.values import _safe
from core.samples import now_ns

log = logging.getLogger("twin.connectors.opcua")

# builtin DataType ids (namespace 0) that a setpoint write accepts, with their variant types
_INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-2**7, 2**7 - 1), ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-2**15, 2**15 - 1), ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-2**31, 2**31 - 1), ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-2**63, 2**63 - 1), ua.VariantType.UInt64: (0, 2**64 - 1),
}



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


class SetpointWriterMixin:
    """``write_setpoint`` of one OPC-UA connector."""

    # set by OpcUaConnector.__init__ (and Connector.__init__)
    name: str
    config: OpcUaConnectorConfig
    counters: ConnectorCounters
    write_log: deque[WriteResult]
    last_error: str | None
    _client: Client | None
    _ready: asyncio.Event
    _range_cache: dict[str, tuple[float, float] | None]

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
        except (TimeoutError, OSError, ConnectionError, ua.UaError) as err:
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
