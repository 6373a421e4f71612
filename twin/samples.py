"""Core boundary types of the twin.

Everything that crosses a stage boundary is one of these frozen types. Connectors turn library
objects (asyncua, paho) into :class:`RawReading` / :class:`DeadLetter` on arrival and group them in a
:class:`RawBatch`; the tagger turns a RawReading into a :class:`Sample` (canonical unit) or a
:class:`DeadLetter` (with a precise reason). Nothing past ``connectors/`` sees a library object.

Times are integers in nanoseconds since the Unix epoch, UTC (``*_ns``): exact, hashable, and the
store's idempotency key (line, tag, source_ts_ns) compares them without float rounding.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple


class Quality(enum.IntEnum):
    """Quality of a value (OPC-UA StatusCode severity, reduced to three levels)."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2

    @classmethod
    def parse(cls, value: Any) -> "Quality":
        """Accept 'good'/'uncertain'/'bad' (any case), 0/1/2, or a Quality."""
        if isinstance(value, Quality):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError as err:
                raise ValueError(f"unknown quality {value!r}: expected good, uncertain or bad") from err
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value)
        raise ValueError(f"unknown quality {value!r}: expected good, uncertain or bad")


class SourceKind(str, enum.Enum):
    MQTT = "mqtt"
    OPCUA = "opcua"
    REPLAY = "replay"
    API = "api"
    INTERNAL = "internal"


def now_ns() -> int:
    return time.time_ns()


def ns_to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


def ns_to_iso(ns: int) -> str:
    """ISO 8601 with offset and microseconds, e.g. ``2026-11-22T10:00:00.123456+00:00``."""
    secs, rem = divmod(ns, 1_000_000_000)
    dt = datetime.fromtimestamp(secs, tz=timezone.utc).replace(microsecond=rem // 1000)
    return dt.isoformat(timespec="microseconds")


def parse_time_ns(value: Any) -> int:
    """Parse a timestamp into ns since epoch (UTC).

    Accepts ISO 8601 strings (a naive one is refused: a time without offset is ambiguous on a plant
    that spans time zones), or numbers of seconds since the epoch (int or float). Raises ValueError.
    """
    if isinstance(value, bool):
        raise ValueError(f"timestamp must be ISO 8601 or epoch seconds, got boolean {value!r}")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"timestamp is not finite: {value!r}")
        if isinstance(value, int):
            return value * 1_000_000_000
        return int(round(value * 1e6)) * 1000
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z") or text.endswith("z"):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError as err:
            raise ValueError(f"timestamp {value!r} is not ISO 8601") from err
        if dt.tzinfo is None:
            raise ValueError(f"timestamp {value!r} has no UTC offset (write e.g. '...Z' or '+01:00')")
        whole = int(dt.timestamp())
        return whole * 1_000_000_000 + dt.microsecond * 1000
    raise ValueError(f"timestamp must be ISO 8601 or epoch seconds, got {type(value).__name__}")


class RawReading(NamedTuple):
    """One value as a source delivered it, before tagging (immutable; a NamedTuple because one is
    made per value on the hot path and builds 4x faster than a frozen dataclass).

    ``address`` is what the tag map matches: an MQTT topic, a replay column, an OPC-UA NodeId string.
    ``unit`` is the unit the source states for this reading (None: the tag map's source unit).
    """

    source: SourceKind
    address: str
    value: Any
    source_ts_ns: int | None
    received_ts_ns: int
    unit: str | None = None
    quality: Quality = Quality.GOOD
    line_id: str | None = None
    roll_id: str | None = None
    web_pos_m: float | None = None
    connector: str = ""


class Sample(NamedTuple):
    """A validated value in the canonical unit of its tag (immutable NamedTuple, see RawReading)."""

    line_id: str
    tag_id: str
    value: float
    unit: str
    source_ts_ns: int
    received_ts_ns: int
    quality: Quality = Quality.GOOD
    roll_id: str | None = None
    web_pos_m: float | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A reading that could not become a sample, kept with its raw payload and the reason."""

    source: SourceKind
    address: str
    payload: str
    reason: str
    reason_code: str
    received_ts_ns: int
    connector: str = ""
    line_id: str | None = None


def _noop() -> None:
    return None


@dataclass(frozen=True, slots=True)
class RawBatch:
    """What a connector hands to the pipeline: readings and dead letters from one delivery.

    ``ack`` is called by the pipeline once everything in the batch is durably stored (samples and
    dead letters alike). An MQTT connector acknowledges the broker only then, so a reading that was
    never stored is redelivered; a replay connector advances its checkpoint.
    """

    readings: tuple[RawReading, ...]
    dead_letters: tuple[DeadLetter, ...] = ()
    ack: Callable[[], None] = field(default=_noop, compare=False)

    def __len__(self) -> int:
        return len(self.readings) + len(self.dead_letters)


@dataclass(frozen=True, slots=True)
class RollEvent:
    """A roll (lot) entered a step on a line: from a roll-id tag. Stored for genealogy."""

    line_id: str
    step: str
    roll_id: str
    source_ts_ns: int
    tag_id: str = ""
