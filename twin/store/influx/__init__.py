"""InfluxDB store backend: a durable local outbox in front of InfluxDB (docs/influxdb.md).

Write path. ``write()`` turns samples, dead letters and roll events into line protocol and commits
them to the local outbox (:mod:`twin.store.outbox`, one SQLite file) in one transaction; when it
returns they are **durable in the outbox**, which is what the store contract's "durable when it
returns" means for this backend (the pipeline then acknowledges the source). A sender thread moves
the outbox to InfluxDB in batches, with one of two write APIs:

- ``write_api = "v2"``: influxdb-client's batching ``WriteApi`` (``batch_size``, ``flush_interval``,
  retries with exponential backoff through the client's ``WritesRetry``) posting to ``/api/v2/write``:
  InfluxDB 2.x, 3.x, 1.8+ (compatibility endpoint) and VictoriaMetrics. Its success / error callbacks
  tell which points arrived; only those leave the outbox.
- ``write_api = "v1"``: ``POST /write?db=&rp=&precision=`` with the same line protocol and the client's
  ``WritesRetry``: every InfluxDB 1.x (1.6 / 1.7 have no ``/api/v2/write``) and 3.x's v1 compatibility.

When a request is given up (the server is down longer than the retries last) the points stay in
the outbox and are sent again, oldest first, after a jittered backoff; an outage loses nothing
within the outbox capacity, and beyond it the oldest are dropped and counted exactly.

Modules: :mod:`~twin.store.influx.lineprotocol` (encoding), :mod:`~twin.store.influx.influxql` (HTTP
and the InfluxQL statements), :mod:`~twin.store.influx.sender` (the sender thread in front of the
outbox, :mod:`twin.store.outbox`), :mod:`~twin.store.influx.store` (:class:`InfluxStore`, the
store API). The names below are re-exported here.

Query path: InfluxQL on ``/query`` (1.x; 2.x through a DBRP mapping and v1 auth; 3.x through its v1
compatibility API). A query first waits (at most ``read_barrier_s``) until what was written before
it has left the outbox, so a caller reads its own writes while the server is up.

Schema (one measurement per kind of record; tags sorted by key as InfluxDB prefers):

- ``twin_sample`` tags ``kind, line, role, [roll], step, tag, unit``; fields ``value`` (float),
  ``quality`` (int 0/1/2), ``received_ns`` (int), ``web_pos_m`` (float, when known),
  [``roll`` (string) with ``roll_storage = "field"``]; time = source timestamp.
- ``twin_dead_letter`` tags ``connector, [line], [n], reason_code, source, writer``; fields
  ``address``, ``reason``, ``payload`` (strings, JSON-escaped), ``received_ns``; time = receive time
  (``n`` numbers dead letters received in the same nanosecond by one writer).
- ``twin_roll`` tags ``line, roll, step``; field ``tag_id``; time = first seen (the earliest point wins).
"""

from twin.store.influx.influxql import InfluxError, _q
from twin.store.influx.lineprotocol import (
    AUDIT,
    DEAD_LETTERS,
    ROLLS,
    SAMPLES,
    LineProtocol,
    TagInfo,
    _str_field,
    _tag,
    _unstr,
    tag_info_from_tagmap,
)
from twin.store.influx.sender import OutboxSender
from twin.store.influx.store import InfluxStore

__all__ = ["AUDIT", "DEAD_LETTERS", "ROLLS", "SAMPLES", "InfluxError", "InfluxStore", "LineProtocol", "OutboxSender",
           "TagInfo", "_q", "_str_field", "_tag", "_unstr", "tag_info_from_tagmap"]
