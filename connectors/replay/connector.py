"""Replay connector: recorded line data through the same path as live data.

Formats (see README.md): wide CSV (a time column plus one column per address), wide JSONL (one
object per row) or long JSONL (``{"ts", "address", "value", "unit"?, "quality"?}`` per line); each
optionally gzip-compressed. A cell that parses as a number is a number, anything else stays a
string (roll ids; a bad number becomes a ``wrong_type`` dead letter at tagging).
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import gzip
import io
import json
import logging
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from connectors.base import Connector
from connectors.replay.config import Repeat, ReplayConnectorConfig, ReplayFormat, ReplaySpeed, TimestampMode
from core.samples import (
    DeadLetter,
    Quality,
    RawBatch,
    RawReading,
    Redelivery,
    SourceKind,
    now_ns,
    parse_time_ns,
    safe_text,
)

log = logging.getLogger("twin.connectors.replay")

Row = tuple[int | None, list[tuple[str, Any, str | None, Quality]], str | None, int]
# (source ts ns or None if unparseable, [(address, value, unit, quality)], error, line number)


MAX_LINE_BYTES = 1 << 20  # a line longer than this (1 MiB) ends the replay: ReplayFileError


class ReplayFileError(Exception):
    """The file cannot be read on from here: truncated or corrupt gzip, a binary file, invalid UTF-8,
    an over-long line, a CSV without its time column. Rows before ``line`` were delivered."""

    def __init__(self, path: Path, line: int, problem: str) -> None:
        super().__init__(f"{path.name}: line {line}: {problem}")
        self.path, self.line, self.problem = path, line, problem


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _lines(path: Path, fh: io.BufferedIOBase, pos: list[int], limit: int) -> Iterator[str]:
    """Decoded lines of the file (with their line ends), each read with a size limit: a line longer
    than ``limit`` bytes is refused without ever holding more than ``limit`` + 1 bytes of it.
    ``pos[0]`` is the number of the line last read (1-based). Raises ReplayFileError."""
    n = 0
    while True:
        line_no = n + 1
        try:
            raw = fh.readline(limit + 1)
        except EOFError as err:  # gzip: the compressed stream ends before its end marker
            raise ReplayFileError(path, line_no, "truncated gzip file: the compressed data ends before its "
                                                 "end-of-stream marker") from err
        except gzip.BadGzipFile as err:
            raise ReplayFileError(path, line_no, f"not a gzip file ({err})") from err
        except zlib.error as err:
            raise ReplayFileError(path, line_no, f"corrupt gzip data ({err})") from err
        except OSError as err:
            raise ReplayFileError(path, line_no, f"cannot read the file ({err})") from err
        if not raw:
            return
        n = pos[0] = line_no
        if len(raw) > limit and not raw.endswith(b"\n"):
            raise ReplayFileError(path, n, f"line longer than {limit} bytes (refused; the limit keeps the "
                                           "replay's memory bounded)")
        if b"\x00" in raw:
            raise ReplayFileError(path, n, "a NUL byte in the line (a binary file, or not UTF-8 text)")
        if n == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[3:]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ReplayFileError(path, n, f"invalid UTF-8 at byte {err.start} of the line (a binary file, or "
                                           "not UTF-8 text)") from err


def _format_of(path: Path, fmt: ReplayFormat) -> ReplayFormat:
    if fmt is not ReplayFormat.AUTO:
        return fmt
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return ReplayFormat.CSV
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return ReplayFormat.JSONL
    raise ValueError(f"cannot tell the format of {path.name}: use .csv, .jsonl (optionally .gz) or set format")


def _cell(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def read_rows(path: Path, fmt: ReplayFormat, time_column: str, *, max_line_bytes: int = MAX_LINE_BYTES,
              pos: list[int] | None = None) -> Iterator[Row]:
    """Yield rows of a recorded file in file order. A bad row (invalid JSON, a bad timestamp, a CSV row
    whose cells do not match the header) is yielded with its error (a dead letter later); a problem that
    stops the file being read on raises :class:`ReplayFileError` naming the line (rows before it were
    yielded). ``pos[0]`` follows the line number being read."""
    fmt = _format_of(path, fmt)
    pos = pos if pos is not None else [0]
    try:
        fh = _open_binary(path)
    except OSError as oerr:
        raise ReplayFileError(path, 0, f"cannot open the file ({oerr})") from oerr
    err: str | None  # the row's problem, if any
    with fh:
        lines = _lines(path, fh, pos, max_line_bytes)
        if fmt is ReplayFormat.CSV:
            reader = csv.reader(lines)
            try:
                header = next(reader, None)
                if header is None:
                    raise ReplayFileError(path, 1, "the file is empty (no CSV header line)")
                if time_column not in header:
                    raise ReplayFileError(path, pos[0], f"no time column {time_column!r} in the CSV header "
                                                        f"({safe_text(', '.join(header[:8]), 200)}...)")
                dupes = sorted({h for h in header if header.count(h) > 1}) if len(header) < 10_000 else []
                if dupes:
                    raise ReplayFileError(path, pos[0], f"duplicate columns in the CSV header: "
                                                        f"{safe_text(', '.join(dupes[:5]), 200)}")
                ti = header.index(time_column)
                cols = [(i, h) for i, h in enumerate(header) if i != ti]
                width = len(header)
                for rec in reader:
                    n = pos[0]
                    if not rec:
                        continue
                    if len(rec) != width:
                        yield None, [("<line>", safe_text(",".join(rec), 4096), None, Quality.GOOD)], \
                            f"line {n}: {len(rec)} cells, the header has {width}", n
                        continue
                    try:
                        cell = rec[ti]
                        ts: int | None = parse_time_ns(_cell(cell) if cell.replace(".", "", 1).isdigit() else cell)
                        err = None
                    except ValueError as e:
                        ts, err = None, f"line {n}: bad {time_column!r}: {e}"
                    vals: list[tuple[str, Any, str | None, Quality]] = [
                        (h, _cell(rec[i]), None, Quality.GOOD) for i, h in cols if rec[i] != ""]
                    yield ts, vals, err, n
            except csv.Error as cerr:  # a NUL byte, a field over the csv module's limit
                raise ReplayFileError(path, pos[0], f"not readable as CSV ({cerr})") from cerr
        else:
            for line in lines:
                n = pos[0]
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError("a line is a JSON object")
                except (ValueError, RecursionError) as e:
                    yield None, [("<line>", line, None, Quality.GOOD)], \
                        f"line {n}: invalid JSON: {safe_text(e, 300)}", n
                    continue
                try:
                    ts = parse_time_ns(obj.get(time_column, obj.get("ts")))
                    err = None
                except ValueError as e:
                    ts, err = None, f"line {n}: bad timestamp: {e}"
                if "address" in obj:
                    q = Quality.GOOD
                    try:
                        q = Quality.parse(obj.get("quality", "good"))
                    except ValueError as e:
                        err = f"line {n}: {safe_text(e, 300)}"
                    address = obj["address"]
                    if not isinstance(address, str):
                        ts, err = None, f"line {n}: address is not a string"
                    yield ts, [(address if isinstance(address, str) else safe_text(address, 200),
                                obj.get("value"), obj.get("unit"), q)], err, n
                else:
                    vals = [(k, v, None, Quality.GOOD) for k, v in obj.items()
                            if k not in (time_column, "ts") and v is not None]
                    yield ts, vals, err, n


class ReplayConnector(Connector):
    kind = "replay"

    def __init__(self, config: ReplayConnectorConfig, *, default_line_id: str = "",
                 ack_log: Path | None = None) -> None:
        super().__init__(config.name, config.queue.max_batches, config.queue.overflow)
        self.config = config
        self.line_id = config.line_id or default_line_id
        self.ack_log = ack_log
        self.rows_sent = 0  # rows handed to the pipeline (all passes)
        self.rows_acked = 0  # rows durably stored (their samples and dead letters), the checkpoint
        self.passes = 0
        self.error: ReplayFileError | None = None  # what stopped the file being read, if anything
        self.counters.extra.update({"rows": 0, "passes": 0, "file_errors": 0})

    def _batch(self, rows: list[Row], offset_ns: int, first_row_index: int) -> RawBatch:
        recv = now_ns()
        readings: list[RawReading] = []
        dead: list[DeadLetter] = []
        for ts, vals, err, n in rows:
            if err is not None or ts is None:
                try:
                    payload = json.dumps({"line": n, "values": {a: v if isinstance(v, (int, float, bool, type(None)))
                                                                else safe_text(v, 4096) for a, v, _, _ in vals}},
                                         default=repr)
                except Exception:  # noqa: BLE001 - a huge int, deep nesting: keep what its text says
                    payload = safe_text(vals, 4096)
                code = "malformed_payload" if err is not None and ("JSON" in err or "cells" in err or
                                                                   "address" in err) else "bad_timestamp"
                dead.append(DeadLetter(SourceKind.REPLAY, f"{self.config.path.name}:{n}", payload,
                                       err or f"line {n}: no timestamp", code, recv, self.name, self.line_id))
                continue
            for address, value, unit, q in vals:
                readings.append(RawReading(SourceKind.REPLAY, address, value, ts + offset_ns, recv, unit, q,
                                           self.line_id, None, None, self.name))
        last_index = first_row_index + len(rows)
        self.counters.received += len(readings) + len(dead)
        self.counters.rejected += len(dead)

        def ack() -> None:
            self.rows_acked = max(self.rows_acked, last_index)
            if self.ack_log is not None:
                with open(self.ack_log, "a") as fh:
                    fh.write(f"{last_index}\n")
                    fh.flush()
                    os.fsync(fh.fileno())

        return RawBatch(tuple(readings), tuple(dead), ack, Redelivery.CHECKPOINT)

    async def _run(self) -> None:
        try:
            await self._replay()
        except ReplayFileError as err:
            self.error = err
            self.counters.extra["file_errors"] += 1
            log.error("replay %s: %s; %d rows before it were delivered, the rest of the file is not read",
                      self.name, err, self.rows_sent)

    async def _replay(self) -> None:
        cfg = self.config
        offset_ns = 0
        next_start_ns: int | None = None
        while True:
            self.passes += 1
            self.counters.extra["passes"] = self.passes
            pos = [0]
            rows = read_rows(cfg.path, cfg.format, cfg.time_column, pos=pos)
            wall0 = time.monotonic()
            first_ts: int | None = None
            last_ts: int | None = None
            pending: list[Row] = []
            index = 0
            try:
                for row in rows:
                    index, pending, first_ts, last_ts, offset_ns = await self._take(
                        row, index, pending, first_ts, last_ts, offset_ns, next_start_ns, wall0)
            except Exception as err:
                # deliver what was read before the problem, then stop: nothing after it is guessed at
                if pending:
                    await self.queue.put(self._batch(pending, offset_ns, index))
                    index += len(pending)
                self.rows_sent += index
                self.counters.extra["rows"] = self.rows_sent
                if isinstance(err, ReplayFileError):
                    raise
                raise ReplayFileError(cfg.path, pos[0], f"{type(err).__name__}: {safe_text(err, 300)}") from err
            if pending:
                await self.queue.put(self._batch(pending, offset_ns, index))
                index += len(pending)
            self.rows_sent += index
            self.counters.extra["rows"] = self.rows_sent
            if index == 0 and self.passes == 1:
                raise ReplayFileError(cfg.path, pos[0], "no rows in the file")
            if cfg.repeat is Repeat.ONCE:
                break
            if first_ts is not None and last_ts is not None:
                step = max(1, (last_ts - first_ts) // max(1, index - 1))
                next_start_ns = last_ts + offset_ns + step
            await asyncio.sleep(0)
        self.finished = True
        log.info("replay %s: finished %d rows in %d pass(es)", self.name, self.rows_sent, self.passes)

    async def _take(self, row: Row, index: int, pending: list[Row], first_ts: int | None, last_ts: int | None,
                    offset_ns: int, next_start_ns: int | None,
                    wall0: float) -> tuple[int, list[Row], int | None, int | None, int]:
        """One row of the file: batch it, pace it (realtime / factor). Returns the loop's state."""
        cfg = self.config
        ts = row[0]
        if ts is not None and first_ts is None:
            first_ts = ts
            if cfg.timestamps is TimestampMode.SHIFT_TO_NOW:
                offset_ns = (next_start_ns if next_start_ns is not None else now_ns()) - ts
        if ts is not None:
            last_ts = ts
        if cfg.speed is not ReplaySpeed.MAX and ts is not None and first_ts is not None:
            factor = 1.0 if cfg.speed is ReplaySpeed.REALTIME else cfg.speed_factor
            due = wall0 + (ts - first_ts) / 1e9 / factor
            delay = due - time.monotonic()
            if delay > 0:
                if pending:
                    await self.queue.put(self._batch(pending, offset_ns, index))
                    index += len(pending)
                    pending = []
                await asyncio.sleep(delay)
        pending.append(row)
        if len(pending) >= cfg.rows_per_batch:
            await self.queue.put(self._batch(pending, offset_ns, index))
            index += len(pending)
            pending = []
        return index, pending, first_ts, last_ts, offset_ns
