"""Exports (an APIRouter included by :func:`twin.api.create_app`; docs/dashboard.md, "Export").

``GET /api/v1/export``: the stored samples of a set of tags over a time range as CSV or Parquet,
streamed as the store pages through them (:meth:`twin.store.base.Store.iter_samples`: keyset pages of
``PAGE`` rows), so the server holds one page and, for Parquet, one row group at a time whatever the
range. Rows are ordered by (line, tag, time). Columns: line_id, tag, ts, value, unit, quality,
roll_id, web_pos_m; in CSV ``ts`` is ISO 8601 UTC with nanoseconds and floats are written so that they
read back exactly; in Parquet ``ts`` is ``timestamp[ns, UTC]``.

``GET /api/v1/rolls/{roll_id}/observations.jsonld``: the observations of one roll as JSON-LD
(twin.jsonld), filtered by tag, line and time, in pages of ``limit`` observations; the next page is
named by an opaque ``cursor`` in a ``Link: <...>; rel="next"`` header and, inside the graph, by a
``hydra:PartialCollectionView`` node with ``hydra:next``.

Nothing here runs on the event loop but the request's validation: store pages and their encoding run
on a pool of ``EXPORT_THREADS`` threads of its own, one step (page) at a time as the client reads, so a
slow client slows the export instead of filling the server's memory.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import enum
import io
import json
import logging
from collections.abc import AsyncIterator, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from core.samples import TS_MAX_NS, TS_MIN_NS, now_ns, parse_time_ns
from twin.jsonld import CONTEXT, roll_document
from twin.ports import ApiHost
from twin.store.base import StoredSample

_log = logging.getLogger("twin.export")

MAX_TAGS = 100  # tags per export request
PAGE = 10_000  # rows per store page
ROW_GROUP = 50_000  # rows per Parquet row group (at most this many rows are held as Arrow arrays)
EXPORT_THREADS = 2  # exports stream concurrently, their steps share this many threads
COLUMNS = ("line_id", "tag", "ts", "value", "unit", "quality", "roll_id", "web_pos_m")
JSONLD_LIMIT_DEFAULT, JSONLD_LIMIT_MAX = 10_000, 100_000
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ExportFormat(str, enum.Enum):
    CSV = "csv"
    PARQUET = "parquet"


def _bad(name: str, msg: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["query", name], "msg": msg, "type": "value_error"}])


def _time(name: str, value: str | None, default_ns: int) -> int:
    if value is None:
        return default_ns
    try:
        return parse_time_ns(value)  # refuses no offset, > 64 characters, outside the store's int64 range
    except (ValueError, OverflowError) as err:
        raise _bad(name, str(err)) from err


def _range(start: str | None, end: str | None, default_span_ns: int | None) -> tuple[int, int]:
    """(start, end) in ns; end defaults to now, start to end - span (or the store's first instant)."""
    end_ns = _time("end", end, now_ns() if default_span_ns is not None else TS_MAX_NS)
    start_ns = _time("start", start, TS_MIN_NS if default_span_ns is None else max(TS_MIN_NS, end_ns - default_span_ns))
    if start_ns >= end_ns:
        raise _bad("start", "start must be before end")
    return start_ns, end_ns


def _tag_list(name: str, tags: list[str] | None) -> list[str]:
    out = list(dict.fromkeys(tags or ()))  # repeated ones once, in the order given
    if len(out) > MAX_TAGS:
        raise _bad(name, f"at most {MAX_TAGS} tags per request, got {len(out)}")
    return out


def iso_ns(ns: int) -> str:
    """ISO 8601 UTC with nanoseconds, e.g. ``2026-11-22T10:00:00.123456789+00:00`` (exact for int64 ns)."""
    secs, rem = divmod(ns, 1_000_000_000)
    return f"{_EPOCH + timedelta(seconds=secs):%Y-%m-%dT%H:%M:%S}.{rem:09d}+00:00"


# --- encoders: an iterable of store pages in, an iterator of byte chunks out --------------------------
def csv_chunks(pages: Iterable[list[StoredSample]]) -> Generator[bytes, None, None]:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for rows in pages:
        # repr() of a float reads back as the same float; None -> empty field
        w.writerows((s.line_id, s.tag_id, iso_ns(s.source_ts_ns), repr(s.value), s.unit, s.quality,
                     s.roll_id, None if s.web_pos_m is None else repr(s.web_pos_m)) for s in rows)
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
    tail = buf.getvalue()  # the header of an empty export
    if tail:
        yield tail.encode()


class _Sink(io.RawIOBase):
    """A write-only file for pyarrow's ParquetWriter whose written bytes are taken out as they come."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._parts.append(data)
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def parquet_schema(pa: Any) -> Any:
    return pa.schema([("line_id", pa.string()), ("tag", pa.string()), ("ts", pa.timestamp("ns", tz="UTC")),
                      ("value", pa.float64()), ("unit", pa.string()), ("quality", pa.int32()),
                      ("roll_id", pa.string()), ("web_pos_m", pa.float64())])


def _validity(pa: Any, valid: np.ndarray) -> tuple[Any, int]:
    """(validity bitmap buffer or None, null count) from a boolean mask."""
    nulls = int(len(valid) - np.count_nonzero(valid))
    return (pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None), nulls


def _strings(pa: Any, values: list[str | None]) -> Any:
    n = len(values)
    valid = np.fromiter((v is not None for v in values), bool, n)
    enc = [v.encode() if v is not None else b"" for v in values]
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(np.fromiter(map(len, enc), np.int32, n), out=offsets[1:])
    bitmap, nulls = _validity(pa, valid)
    return pa.Array.from_buffers(pa.string(), n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(b"".join(enc))], nulls)


def _numbers(pa: Any, typ: Any, dtype: Any, values: Iterable[Any], n: int, nullable: bool = False) -> Any:
    if not nullable:
        return pa.Array.from_buffers(typ, n, [None, pa.py_buffer(np.fromiter(values, dtype, n))])
    vals = list(values)
    valid = np.fromiter((v is not None for v in vals), bool, n)
    data = np.fromiter((0 if v is None else v for v in vals), dtype, n)
    bitmap, nulls = _validity(pa, valid)
    return pa.Array.from_buffers(typ, n, [bitmap, pa.py_buffer(data)], nulls)


def _record_batch(rows: list[StoredSample], schema: Any, pa: Any) -> Any:
    """Arrow columns straight from buffers (numpy): ``pa.array`` would import pandas when it is installed
    (pyarrow asks whether a list is a pandas object), ~50 MB more in the daemon for nothing."""
    n = len(rows)
    return pa.RecordBatch.from_arrays([
        _strings(pa, [s.line_id for s in rows]),
        _strings(pa, [s.tag_id for s in rows]),
        _numbers(pa, schema.field("ts").type, np.int64, (s.source_ts_ns for s in rows), n),
        _numbers(pa, pa.float64(), np.float64, (s.value for s in rows), n),
        _strings(pa, [s.unit for s in rows]),
        _numbers(pa, pa.int32(), np.int32, (s.quality for s in rows), n),
        _strings(pa, [s.roll_id for s in rows]),
        _numbers(pa, pa.float64(), np.float64, (s.web_pos_m for s in rows), n, nullable=True),
    ], schema=schema)


def parquet_chunks(pages: Iterable[list[StoredSample]], pa: Any, pq: Any,
                   row_group: int | None = None) -> Generator[bytes, None, None]:
    """Parquet (zstd) written one row group at a time; each row group's bytes are yielded once written."""
    row_group = row_group or ROW_GROUP
    schema = parquet_schema(pa)
    sink = _Sink()
    writer = pq.ParquetWriter(sink, schema, compression="zstd", use_dictionary=["line_id", "tag", "unit", "roll_id"])
    batches: list[Any] = []
    held = 0

    def flush(final: bool = False) -> bytes:
        # row groups of exactly `row_group` rows (the last one shorter); the remainder waits for more pages
        nonlocal held
        table = pa.Table.from_batches(batches, schema=schema)
        while table.num_rows >= row_group or (final and table.num_rows):
            writer.write_table(table.slice(0, row_group), row_group_size=row_group)
            table = table.slice(row_group)
        batches[:] = table.to_batches()
        held = table.num_rows
        return sink.take()

    try:
        for rows in pages:
            batches.append(_record_batch(rows, schema, pa))
            held += len(rows)
            if held >= row_group:
                yield flush()
        if held:
            yield flush(final=True)
    finally:
        writer.close()
    yield sink.take()  # the footer (and the magic bytes of an empty file)


def _pyarrow() -> tuple[Any, Any]:
    """pyarrow is a base dependency (pyproject.toml); a broken install gets a 501 that says so. Imported
    on the first Parquet export, not at start-up: it costs the daemon ~60 MB and a second otherwise."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise HTTPException(501, detail=f"Parquet export needs pyarrow, which is not installed here ({err}); "
                                        "install it (pip install 'pyarrow>=15') or ask for format=csv") from None
    return pa, pq


def _cursor_encode(key: tuple[str, str, int]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _cursor_decode(text: str) -> tuple[str, str, int]:
    try:
        if len(text) > 4096:
            raise ValueError("too long")
        line, tag, ts = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if not (isinstance(line, str) and isinstance(tag, str) and type(ts) is int and TS_MIN_NS <= ts <= TS_MAX_NS):
            raise ValueError("not a cursor")
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise _bad("cursor", "not a cursor of this endpoint: pass the one from the previous page's next link") from err
    return line, tag, ts


def make_router(daemon: ApiHost) -> APIRouter:
    """``daemon`` provides ``store`` and ``tagmap``."""
    router = APIRouter()
    # Exports run on their own small pool, not on the shared one of asyncio.to_thread / Starlette: the
    # embedded store keeps one SQLite connection (and page cache, up to 32 MB) per thread that reads, so
    # an export hopping over the default pool's threads would warm a cache in each of them.
    pool = ThreadPoolExecutor(max_workers=EXPORT_THREADS, thread_name_prefix="twin-export")

    @router.get(
        "/api/v1/export", summary="Stored samples of tags over a time range as CSV or Parquet (streamed)",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/csv": {}, PARQUET_MEDIA_TYPE: {}},
                         "description": "columns line_id, tag, ts, value, unit, quality, roll_id, web_pos_m; "
                                        "rows ordered by line, tag, time"},
                   404: {"description": "an unknown tag"}, 501: {"description": "pyarrow missing (Parquet)"},
                   503: {"description": "the store could not be read (before any byte of the file)"}},
        description=f"Streams as the store pages through the range (bounded server memory). At most {MAX_TAGS} "
                    "tags; times ISO 8601 with offset; `end` defaults to now and `start` to `end` - 1 h. "
                    "Parquet: `ts` is timestamp[ns, UTC], zstd, row groups of "
                    f"{ROW_GROUP:,} rows. CSV: `ts` ISO 8601 UTC with nanoseconds.")
    async def export(tags: list[str] = Query(..., description=f"tag ids (repeat: tags=a&tags=b), 1 to {MAX_TAGS}"),
                     start: str | None = Query(None, description="ISO 8601 with offset; default end - 1 h"),
                     end: str | None = Query(None, description="ISO 8601 with offset; default now"),
                     format: ExportFormat = Query(ExportFormat.CSV, description="csv or parquet"),
                     line: str | None = Query(None, description="line id (default: every line)")) -> StreamingResponse:
        wanted = _tag_list("tags", tags)
        unknown = [t for t in wanted if t not in daemon.tagmap.tags]
        if unknown:
            shown = ", ".join(repr(t[:100]) for t in unknown[:10])
            raise HTTPException(404, detail=f"unknown tag(s): {shown}" + (" ..." if len(unknown) > 10 else ""))
        start_ns, end_ns = _range(start, end, 3600 * 10**9)
        pa_pq = _pyarrow() if format is ExportFormat.PARQUET else None
        pages = daemon.store.iter_samples(wanted, start_ns, end_ns, line, page=PAGE)
        # the first page before the answer: a failing store is a 503, not a truncated file
        try:
            first = await asyncio.get_running_loop().run_in_executor(pool, next, pages, None)
        except Exception as err:  # noqa: BLE001 - the backend's own errors (sqlite3, InfluxError, OSError)
            _log.warning("export: store query failed: %s", err, exc_info=err)
            raise HTTPException(503, detail=f"the store could not be read: {type(err).__name__}") from None

        def all_pages() -> Iterator[list[StoredSample]]:
            if first is not None:
                yield first
                yield from pages

        async def streamed(chunks: Generator[bytes, None, None]) -> AsyncIterator[bytes]:
            # each step (store page + encoding) on the export pool, one step at a time: the client's pace
            # sets the server's (back-pressure), and an export uses the pool threads' store connections
            loop = asyncio.get_running_loop()
            try:
                while (chunk := await loop.run_in_executor(pool, next, chunks, None)) is not None:
                    yield chunk
            except Exception:  # headers are sent: the client sees a cut-off body (Parquet: no footer)
                _log.exception("export: failed while streaming; the response is cut off")
                raise
            finally:
                try:
                    chunks.close()  # a client that went away: release the writer (its footer is not sent)
                except ValueError:  # still running in the pool (cancelled meanwhile): closed when collected
                    pass

        stamp = f"{iso_ns(start_ns)[:19]}_{iso_ns(end_ns)[:19]}".replace(":", "")
        if pa_pq is None:
            body, media, ext = csv_chunks(all_pages()), "text/csv; charset=utf-8", "csv"
        else:
            body, media, ext = parquet_chunks(all_pages(), *pa_pq), PARQUET_MEDIA_TYPE, "parquet"
        return StreamingResponse(streamed(body), media_type=media,
                                 headers={"Content-Disposition": f'attachment; filename="twin-export-{stamp}.{ext}"',
                                          "Cache-Control": "no-store"})

    @router.get(
        "/api/v1/rolls/{roll_id}/observations.jsonld",
        summary="Observations of one roll as JSON-LD (SOSA/SSN + PROV), filtered and paged",
        description="One page of at most `limit` observations, ordered by line, tag, time. When there are more, "
                    "the response has a `Link: <url>; rel=\"next\"` header and a `hydra:PartialCollectionView` "
                    "node with `hydra:next` in the graph; the url repeats the filters with a `cursor`. "
                    "404 when the roll has no stored observation (matching the filters).")
    async def roll_jsonld(request: Request, roll_id: str,
                          line: str | None = Query(None, description="line id"),
                          tag: list[str] | None = Query(None, description="restrict to these tag ids (repeat)"),
                          start: str | None = Query(None, description="ISO 8601 with offset (inclusive)"),
                          end: str | None = Query(None, description="ISO 8601 with offset (exclusive)"),
                          limit: int = Query(JSONLD_LIMIT_DEFAULT, ge=1, le=JSONLD_LIMIT_MAX,
                                             description="observations per page"),
                          cursor: str | None = Query(None, description="from the previous page's next link")
                          ) -> JSONResponse:
        wanted = _tag_list("tag", tag)
        start_ns, end_ns = _range(start, end, None)
        after = _cursor_decode(cursor) if cursor is not None else None
        store = daemon.store

        def page() -> tuple[list[StoredSample], list[dict[str, Any]]]:
            tags = wanted or sorted({s.tag_id for s in store.latest(line)})
            rows = store.samples_page(tags, start_ns, end_ns, line, roll_id=roll_id, after=after, limit=limit + 1)
            return rows, (store.rolls(line, 10_000) if rows else [])

        rows, rolls = await asyncio.to_thread(page)
        if not rows and after is None:
            raise HTTPException(404, detail=f"no stored observations of roll {roll_id[:200]!r}"
                                            + (" matching the filters" if wanted or start or end else ""))
        more = len(rows) > limit
        rows = rows[:limit]
        if rows:
            doc = await asyncio.to_thread(roll_document, roll_id, rows, daemon.tagmap.tags, rolls)
        else:  # the page after an exactly full one
            doc = {"@context": CONTEXT, "@graph": []}
        headers = {}
        if more:
            last = rows[-1]
            nxt = str(request.url.include_query_params(cursor=_cursor_encode((last.line_id, last.tag_id,
                                                                               last.source_ts_ns))))
            headers["Link"] = f'<{nxt}>; rel="next"'
            doc["@context"] = {**doc["@context"], "hydra": "http://www.w3.org/ns/hydra/core#"}
            doc["@graph"].append({"@id": str(request.url), "@type": "hydra:PartialCollectionView",
                                  "hydra:next": {"@id": nxt}})
        return JSONResponse(doc, media_type="application/ld+json", headers=headers)

    return router
