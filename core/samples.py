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
from datetime import UTC, datetime
from typing import Any, NamedTuple


class Quality(enum.IntEnum):
    """Quality of a value (OPC-UA StatusCode severity, reduced to three levels)."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2

    @classmethod
    def parse(cls, value: Any) -> Quality:
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
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def ns_to_iso(ns: int) -> str:
    """ISO 8601 with offset and microseconds, e.g. ``2026-11-22T10:00:00.123456+00:00``."""
    secs, rem = divmod(ns, 1_000_000_000)
    dt = datetime.fromtimestamp(secs, tz=UTC).replace(microsecond=rem // 1000)
    return dt.isoformat(timespec="microseconds")


# the store's time range: int64 nanoseconds since the epoch (1677-09-21 .. 2262-04-11), as SQLite's
# INTEGER and InfluxDB's timestamps hold it (InfluxDB reserves the two extreme values)
TS_MIN_NS = -9_223_372_036_854_775_806
TS_MAX_NS = 9_223_372_036_854_775_806
_RANGE_TEXT = "outside the store's range (1677-09-21 .. 2262-04-11 UTC, int64 nanoseconds)"


def in_store_range(ns: int) -> bool:
    """True when ``ns`` (ns since the epoch) fits the store's int64 nanosecond timestamps."""
    return TS_MIN_NS <= ns <= TS_MAX_NS


def parse_time_ns(value: Any) -> int:
    """Parse a timestamp into ns since epoch (UTC).

    Accepts ISO 8601 strings (a naive one is refused: a time without offset is ambiguous on a plant
    that spans time zones), or numbers of seconds since the epoch (int or float). Raises ValueError,
    and only ValueError, for anything else: a time the store cannot hold (outside int64 nanoseconds,
    1677-09-21 .. 2262-04-11), a huge number, a year ``datetime`` does not take.
    """
    if isinstance(value, bool):
        raise ValueError(f"timestamp must be ISO 8601 or epoch seconds, got boolean {value!r}")
    if isinstance(value, int):
        # compare before multiplying: a 10**100000 would first build a huge number
        if not -9_223_372_037 <= value <= 9_223_372_037:
            raise ValueError(f"timestamp {safe_text(value, 40)} s is {_RANGE_TEXT}")
        ns = value * 1_000_000_000
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"timestamp is not finite: {value!r}")
        if not -9.3e9 < value < 9.3e9:  # 1e30 or 1e308 epoch seconds
            raise ValueError(f"timestamp {value!r} s is {_RANGE_TEXT}")
        ns = int(round(value * 1e6)) * 1000
    elif isinstance(value, str):
        if len(value) > 64:
            raise ValueError(f"timestamp {safe_text(value, 40)!r} is not ISO 8601 (longer than 64 characters)")
        text = value.strip()
        if text.endswith("Z") or text.endswith("z"):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except (ValueError, TypeError, OverflowError) as err:
            raise ValueError(f"timestamp {safe_text(value, 64)!r} is not ISO 8601") from err
        if dt.tzinfo is None:
            raise ValueError(f"timestamp {safe_text(value, 64)!r} has no UTC offset (write e.g. '...Z' or '+01:00')")
        try:
            # exact integer arithmetic (dt.timestamp() is a float and overflows near the year 1 / 9999)
            delta = dt - _EPOCH
        except (OverflowError, ValueError) as err:
            raise ValueError(f"timestamp {safe_text(value, 64)!r} is {_RANGE_TEXT}") from err
        ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    else:
        raise ValueError(f"timestamp must be ISO 8601 or epoch seconds, got {type(value).__name__}")
    if not TS_MIN_NS <= ns <= TS_MAX_NS:
        raise ValueError(f"timestamp {safe_text(value, 64)!r} is {_RANGE_TEXT}")
    return ns


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TRUNCATED = "...[truncated, {} chars in all]"


def text_ok(s: object, limit: int) -> bool:
    """True when ``s`` is a str the store takes as it is: at most ``limit`` characters, no NUL, valid
    Unicode (no lone surrogates, which UTF-8 cannot encode)."""
    if type(s) is not str or len(s) > limit or "\x00" in s:
        return False
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_text(s: object, limit: int) -> str:
    """``s`` as text every store takes: valid UTF-8 (lone surrogates and NUL written as escapes) and
    at most ``limit`` characters (longer text is cut, with a marker giving the full length). Never
    raises; the work is bounded by ``limit``, whatever ``s`` is."""
    if type(s) is not str:
        try:
            if isinstance(s, int) and not isinstance(s, bool) and s.bit_length() > 4 * limit + 64:
                s = f"<int of {s.bit_length()} bits>"  # str() of a huge int is slow (and refused past 4300 digits)
            else:
                s = str(s)
        except Exception:  # noqa: BLE001 - a __str__ that raises
            try:
                s = f"<{type(s).__name__}>"
            except Exception:  # noqa: BLE001 - even the type's name can raise (a hostile metaclass)
                s = "<object>"
        if type(s) is not str:  # a str subclass
            s = str.__str__(s)
    n = len(s)
    if n <= limit and s.isascii() and "\x00" not in s:
        return s
    marker = ""
    if n > limit:
        marker = _TRUNCATED.format(n)
        s = s[:max(0, limit - len(marker))]
    s = s.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    if len(s) + len(marker) > limit:  # the escapes made it longer
        s = s[:max(0, limit - len(marker or _TRUNCATED.format(n)))]
        marker = marker or _TRUNCATED.format(n)
    return (s + marker)[:limit] if limit > 0 else ""


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

    def __post_init__(self) -> None:
        # every field is made storable here, whoever builds the dead letter: valid UTF-8, no NUL,
        # bounded (the payload at most DEAD_LETTER_PAYLOAD_CHARS), a receive time in the store's range
        for name, limit in _DEAD_LETTER_LIMITS:
            v = getattr(self, name)
            if not (v is None and name == "line_id") and not text_ok(v, limit):
                object.__setattr__(self, name, safe_text(v, limit))
        t = self.received_ts_ns
        if type(t) is not int or not TS_MIN_NS <= t <= TS_MAX_NS:
            object.__setattr__(self, "received_ts_ns", time.time_ns())


DEAD_LETTER_PAYLOAD_CHARS = 4096
_DEAD_LETTER_LIMITS = (("address", 1024), ("payload", DEAD_LETTER_PAYLOAD_CHARS), ("reason", 2048),
                       ("reason_code", 64), ("connector", 256), ("line_id", 256))


def _noop() -> None:
    return None


class Redelivery(str, enum.Enum):
    """What happens to a delivery the pipeline could not store (the shutdown report says it per source).

    - ``source``: the source keeps an unacknowledged delivery and sends it again (an MQTT message
      received with QoS 1 on a persistent session);
    - ``checkpoint``: nothing is sent again, but the source records how far it was stored (a replayed
      file: its ack log / checkpoint; replaying the file again stores the rest, without duplicates);
    - ``none``: lost when not stored (OPC-UA subscriptions, the API, MQTT QoS 0, the twin's own samples).
    """

    SOURCE = "source"
    CHECKPOINT = "checkpoint"
    NONE = "none"


# what a delivery without a stated ``redelivery`` is taken for, by the source kind of its readings
# (MQTT: the connector subscribes with QoS 1, so a message arrives with QoS 1 unless it was published
# with QoS 0; a connector that knows the message's QoS states it on the batch)
DEFAULT_REDELIVERY = {"mqtt": Redelivery.SOURCE, "replay": Redelivery.CHECKPOINT, "opcua": Redelivery.NONE,
                      "api": Redelivery.NONE, "internal": Redelivery.NONE}


@dataclass(frozen=True, slots=True)
class RawBatch:
    """What a connector hands to the pipeline: readings and dead letters from one delivery.

    ``ack`` is called by the pipeline once everything in the batch is durably stored (samples and
    dead letters alike). An MQTT connector acknowledges the broker only then, so a reading that was
    never stored is redelivered; a replay connector advances its checkpoint. ``redelivery`` says
    what happens to the delivery if it is never acknowledged (None: by its source kind,
    ``DEFAULT_REDELIVERY``).
    """

    readings: tuple[RawReading, ...]
    dead_letters: tuple[DeadLetter, ...] = ()
    ack: Callable[[], None] = field(default=_noop, compare=False)
    redelivery: Redelivery | None = None

    def redelivery_of(self) -> Redelivery:
        if self.redelivery is not None:
            return self.redelivery
        first = self.readings[0] if self.readings else self.dead_letters[0] if self.dead_letters else None
        kind = getattr(getattr(first, "source", None), "value", getattr(first, "source", None))
        return DEFAULT_REDELIVERY.get(kind, Redelivery.NONE)  # type: ignore[arg-type]

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
