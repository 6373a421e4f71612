"""Replay connector: recorded line data through the same path as live data.

Formats (see README.md): wide CSV (a time column plus one column per address), wide JSONL (one
object per row) or long JSONL (``{"ts", "address", "value", "unit"?, "quality"?}`` per line); each
optionally gzip-compressed. A cell that parses as a number is a number, anything else stays a
string (roll ids; a bad number becomes a ``wrong_type`` dead letter at tagging).
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from connectors.base import Connector
from connectors.replay.config import ReplayConnectorConfig, ReplayFormat, ReplaySpeed, Repeat, TimestampMode
from twin.samples import DeadLetter, Quality, RawBatch, RawReading, SourceKind, now_ns, parse_time_ns

log = logging.getLogger("twin.connectors.replay")

Row = tuple[int | None, list[tuple[str, Any, str | None, Quality]], str | None, int]
# (source ts ns or None if unparseable, [(address, value, unit, quality)], error, line number)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115


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


def read_rows(path: Path, fmt: ReplayFormat, time_column: str) -> Iterator[Row]:
    """Yield rows of a recorded file in file order; never raises on a bad row."""
    fmt = _format_of(path, fmt)
    with _open_text(path) as fh:
        if fmt is ReplayFormat.CSV:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return
            if time_column not in header:
                raise ValueError(f"{path.name}: no time column {time_column!r} in header {header[:8]}...")
            ti = header.index(time_column)
            cols = [(i, h) for i, h in enumerate(header) if i != ti]
            for n, rec in enumerate(reader, start=2):
                if not rec:
                    continue
                try:
                    ts: int | None = parse_time_ns(_cell(rec[ti]) if rec[ti].replace(".", "", 1).isdigit() else rec[ti])
                    err = None
                except (ValueError, IndexError) as e:
                    ts, err = None, f"line {n}: bad {time_column!r}: {e}"
                vals = [(h, _cell(rec[i]), None, Quality.GOOD) for i, h in cols if i < len(rec) and rec[i] != ""]
                yield ts, vals, err, n
        else:
            for n, line in enumerate(fh, start=1):
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError("a line is a JSON object")
                except ValueError as e:
                    yield None, [("<line>", line, None, Quality.GOOD)], f"line {n}: invalid JSON: {e}", n
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
                        err = f"line {n}: {e}"
                    yield ts, [(str(obj["address"]), obj.get("value"), obj.get("unit"), q)], err, n
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
        self.rows_sent = 0
        self.rows_acked = 0
        self.passes = 0
        self.counters.extra.update({"rows": 0, "passes": 0})

    def _batch(self, rows: list[Row], offset_ns: int, first_row_index: int) -> RawBatch:
        recv = now_ns()
        readings: list[RawReading] = []
        dead: list[DeadLetter] = []
        for ts, vals, err, n in rows:
            if err is not None or ts is None:
                payload = json.dumps({"line": n, "values": {a: v for a, v, _, _ in vals}}, default=repr)
                code = "malformed_payload" if "JSON" in (err or "") else "bad_timestamp"
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

        return RawBatch(tuple(readings), tuple(dead), ack)

    async def _run(self) -> None:
        cfg = self.config
        offset_ns = 0
        next_start_ns: int | None = None
        while True:
            self.passes += 1
            self.counters.extra["passes"] = self.passes
            rows = read_rows(cfg.path, cfg.format, cfg.time_column)
            wall0 = time.monotonic()
            first_ts: int | None = None
            last_ts: int | None = None
            pending: list[Row] = []
            index = 0
            for row in rows:
                ts = row[0]
                if ts is not None and first_ts is None:
                    first_ts = ts
                    if cfg.timestamps is TimestampMode.SHIFT_TO_NOW:
                        offset_ns = (next_start_ns if next_start_ns is not None else now_ns()) - ts
                if ts is not None:
                    last_ts = ts
                if cfg.speed is ReplaySpeed.MAX:
                    pending.append(row)
                    if len(pending) >= cfg.rows_per_batch:
                        await self.queue.put(self._batch(pending, offset_ns, index))
                        index += len(pending)
                        pending = []
                    continue
                factor = 1.0 if cfg.speed is ReplaySpeed.REALTIME else cfg.speed_factor
                if ts is not None and first_ts is not None:
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
            if pending:
                await self.queue.put(self._batch(pending, offset_ns, index))
                index += len(pending)
            self.rows_sent += index
            self.counters.extra["rows"] = self.rows_sent
            if cfg.repeat is Repeat.ONCE:
                break
            if first_ts is not None and last_ts is not None:
                step = max(1, (last_ts - first_ts) // max(1, index - 1))
                next_start_ns = last_ts + offset_ns + step
            await asyncio.sleep(0)
        self.finished = True
        log.info("replay %s: finished %d rows in %d pass(es)", self.name, self.rows_sent, self.passes)
