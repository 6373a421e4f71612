"""Setpoint write-back over MQTT: the result record, value checks and command payloads (no paho import).

The contract is the OPC-UA connector's (``connectors/opcua/connector.py`` ``write_setpoint``): only
allow-listed setpoints, the value checked before anything is sent, the command published and
confirmed by reading the value back, a :class:`WriteResult` per attempt, failures raised as
:class:`SetpointWriteError` (``code``: not_allowed, not_connected, unknown_node, type, out_of_range,
bad_status, verify_failed), so ``twin/feedback.py`` uses either connector the same way.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

from connectors.opcua.errors import SetpointWriteError  # the one error type the feedback service catches

__all__ = ["SetpointWriteError", "WriteResult", "check_value", "json_command", "matches", "number_command"]


@dataclass(frozen=True)
class WriteResult:
    """The audit record of one setpoint write (the fields of the OPC-UA connector's WriteResult)."""

    node_id: str  # the setpoint's address (tag map source address)
    requested: Any
    written: Any  # the value as published
    previous: Any  # the last value seen on the echo topic before the write (None: none seen)
    readback: Any  # the echoed value
    data_type: str
    ts_ns: int
    ok: bool
    error: str = ""
    actor: str = ""
    reason: str = ""


def check_value(address: str, value: Any, lo: float | None, hi: float | None) -> float | int:
    """The value to publish: a finite number (booleans refused) within [lo, hi]. Raises SetpointWriteError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SetpointWriteError(f"{address}: {value!r} is not a number", "type")
    if isinstance(value, float) and not math.isfinite(value):
        raise SetpointWriteError(f"{address}: {value!r} is not a finite number", "type")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise SetpointWriteError(f"{address}: {value!r} outside the configured limits [{lo}, {hi}]", "out_of_range")
    return value


def coerce_sparkplug(address: str, value: float | int, datatype: Any) -> Any:
    """The value in the metric's Sparkplug data type (from its birth). Raises SetpointWriteError."""
    name = getattr(datatype, "name", str(datatype))
    if name.startswith(("INT", "UINT")):
        if float(value) != int(value):
            raise SetpointWriteError(f"{address} is {name}; {value!r} is not a whole number", "type")
        return int(value)
    if name in ("FLOAT", "DOUBLE"):
        if name == "FLOAT":
            try:
                struct.pack("f", float(value))
            except OverflowError as err:
                raise SetpointWriteError(f"{address} is FLOAT; {value!r} does not fit", "type") from err
        return float(value)
    raise SetpointWriteError(f"{address} is a Sparkplug {name} metric; only numeric setpoints are written", "type")


def json_command(key: str, value: Any, ts_iso: str, request_id: str) -> bytes:
    return json.dumps({key: value, "ts": ts_iso, "id": request_id}).encode()


def number_command(value: Any) -> bytes:
    return repr(value).encode() if isinstance(value, float) else str(value).encode()


def matches(written: Any, echoed: Any, tolerance: float, float32: bool = False) -> bool:
    """Whether an echoed value confirms the written one (numbers within a relative tolerance;
    numeric text is read as a number)."""
    if isinstance(echoed, str):
        try:
            echoed = float(echoed)
        except ValueError:
            return False
    if isinstance(echoed, bool) or not isinstance(echoed, (int, float)):
        return False
    expected = struct.unpack("f", struct.pack("f", float(written)))[0] if float32 else written
    return abs(echoed - expected) <= tolerance * max(1.0, abs(expected))
