"""OPC-UA values as plain Python: timestamps to ns, variants to numbers / bool / str / tuples,
StatusCode to quality. Used by acquisition (readings) and verified writes (the audit record)."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from asyncua import ua

from core.samples import Quality, ns_to_iso

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_EPOCH_NAIVE = _dt.datetime(1970, 1, 1)


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
    if hasattr(v, "value") and isinstance(v.value, int):  # IntEnum
        return int(v.value)
    raise _Unsupported(type(v).__name__)


def _quality(code: int) -> Quality:
    sev = code >> 30
    return Quality.GOOD if sev == 0 else Quality.UNCERTAIN if sev == 1 else Quality.BAD


def _safe(v: Any) -> Any:
    """:func:`_plain`, or the value's repr when it has no plain form (never raises _Unsupported)."""
    try:
        return _plain(v)
    except _Unsupported:
        return repr(v)
