"""What a dedicated decoder for OPC-UA data changes would save (issue #23, item 2), measured without a profiler.

    .venv/bin/python -m bench.peers.decode_bench [--items 1000] [--repeat 200]

Builds the body of a PublishResponse as a server sends it (one DataChangeNotification with N monitored-item
notifications: client handle + DataValue with a Double, status Good omitted, source and server timestamps), then
times (1) asyncua's generic decoder (``struct_from_binary(ua.PublishResponse, ...)``, what the twin's connector
uses today) and (2) a prototype fast path that reads the DataChangeNotification with ``struct.unpack_from`` in one
loop and falls back to asyncua for any variant that is not a scalar Double/Float/Int/Boolean. Both must yield the
same (handle, value, status, source ts) tuples. Prints µs per change and writes bench/results/decode.json.
"""

from __future__ import annotations

import argparse
import struct
import time
from datetime import UTC, datetime, timedelta

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary, variant_from_binary

_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_U16 = struct.Struct("<H")
_F64 = struct.Struct("<d")
_SCALARS = {11: _F64, 10: struct.Struct("<f"), 6: _I32, 7: _U32, 8: _I64, 4: struct.Struct("<h"),
            5: _U16, 1: struct.Struct("<?"), 2: struct.Struct("<b"), 3: struct.Struct("<B")}
EPOCH_DELTA_100NS = 116444736000000000  # 1601 -> 1970 in 100 ns ticks


def fast_datachanges(buf: bytes, pos: int) -> tuple[list[tuple[int, object, int, int | None]], int]:
    """Decode a DataChangeNotification body at ``pos``: [(client handle, value, status code, source ts ns)]."""
    n = _I32.unpack_from(buf, pos)[0]
    pos += 4
    out = []
    append = out.append
    for _ in range(max(n, 0)):
        handle = _U32.unpack_from(buf, pos)[0]
        mask = buf[pos + 4]
        pos += 5
        value: object = None
        if mask & 1:
            vt = buf[pos]
            s = _SCALARS.get(vt)
            if s is not None:
                value = s.unpack_from(buf, pos + 1)[0]
                pos += 1 + s.size
            else:  # anything else (strings, arrays, extension objects): asyncua's decoder
                b = Buffer(memoryview(buf)[pos:])
                before = len(b)
                value = variant_from_binary(b).Value
                pos += before - len(b)
        status = 0
        if mask & 2:
            status = _U32.unpack_from(buf, pos)[0]
            pos += 4
        src = None
        if mask & 4:
            src = (_I64.unpack_from(buf, pos)[0] - EPOCH_DELTA_100NS) * 100
            pos += 8
        if mask & 16:
            src = (src or 0) + _U16.unpack_from(buf, pos)[0] // 1000
            pos += 2
        if mask & 8:
            pos += 8
        if mask & 32:
            pos += 2
        append((handle, value, status, src))
    # DiagnosticInfos array (normally empty: length -1 or 0)
    pos += 4
    return out, pos


def sample(items: int) -> tuple[bytes, bytes]:
    t0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    mins = []
    for i in range(items):
        dv = ua.DataValue(ua.Variant(float(17962987450 + i), ua.VariantType.Double), SourceTimestamp=t0 + timedelta(
            milliseconds=100 * i), ServerTimestamp=t0 + timedelta(milliseconds=100 * i + 3))
        mins.append(ua.MonitoredItemNotification(ClientHandle=i + 1, Value=dv))
    dcn = ua.DataChangeNotification(MonitoredItems=mins)
    resp = ua.PublishResponse()
    resp.Parameters.SubscriptionId = 1
    resp.Parameters.NotificationMessage.SequenceNumber = 7
    resp.Parameters.NotificationMessage.PublishTime = t0
    resp.Parameters.NotificationMessage.NotificationData = [dcn]
    return struct_to_binary(resp), struct_to_binary(dcn)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=100)
    a = ap.parse_args()
    whole, body = sample(a.items)

    t = time.process_time()
    for _ in range(a.repeat):
        resp = struct_from_binary(ua.PublishResponse, Buffer(whole))
    generic = (time.process_time() - t) / (a.repeat * a.items) * 1e6
    ref = [(m.ClientHandle, m.Value.Value.Value, m.Value.StatusCode_.value if hasattr(m.Value, "StatusCode_") else
            m.Value.StatusCode.value,
            int((m.Value.SourceTimestamp.replace(tzinfo=UTC).timestamp()) * 1e6) * 1000)
           for m in resp.Parameters.NotificationMessage.NotificationData[0].MonitoredItems]

    t = time.process_time()
    for _ in range(a.repeat):
        got, end = fast_datachanges(body, 0)
    fast = (time.process_time() - t) / (a.repeat * a.items) * 1e6
    assert end == len(body), (end, len(body))
    same = [(h, v, s, ts) for h, v, s, ts in got] == ref
    print(f"{a.items} changes per publish: asyncua generic decode {generic:.2f} µs/change, "
          f"fast path {fast:.2f} µs/change ({generic / fast:.1f}× less), identical result: {same}")
    from bench.common import versions, write_result

    write_result("decode", {"command": f".venv/bin/python -m bench.peers.decode_bench --items {a.items} --repeat {a.repeat}",
                            "cpu_time": "process_time", "items_per_publish": a.items, "repeat": a.repeat,
                            "asyncua_generic_us_per_change": round(generic, 2), "fast_path_us_per_change": round(fast, 2),
                            "identical_result": same}, versions("asyncua"))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
