"""The store interface every backend implements (embedded SQLite, InfluxDB: BACKENDS below).

Contract (tests/test_store_contract.py runs it against every registered backend):
- ``write`` is durable when it returns: a sample it acknowledged survives ``kill -9`` of the daemon.
- Idempotent on (line, tag, source timestamp): writing the same sample again stores nothing new.
- A row the backend cannot take raises from ``write`` and the whole call is rolled back (nothing of
  it stored): the pipeline splits the batch to find the row (``classify_store_error`` below tells a
  permanent error of the data from a transient one of the store).
- ``latest`` returns the newest sample per (line, tag); ``series`` returns a range downsampled to at
  most N buckets with min / mean / max / count per bucket; ``apply_retention`` deletes old data.
Methods are synchronous and thread-safe; the pipeline calls ``write`` from one worker thread and the
API calls the queries from its threads.
"""

from __future__ import annotations

import abc
import enum
import importlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from core.samples import DeadLetter, RollEvent, Sample
from twin.store.config import StoreBackend, StoreConfig


class StoreErrorKind(str, enum.Enum):
    """What a failed ``write`` means for the data in it (the pipeline acts on it: twin.pipeline)."""

    PERMANENT = "permanent"  # the same rows will fail again: split the batch, the offending rows -> dead letters
    TRANSIENT = "transient"  # the store is unavailable (locked, disk, network): retry with back-off


class StoreError(RuntimeError):
    """A backend's own error with its kind stated (``kind``); others are classified by type."""

    def __init__(self, message: str, kind: StoreErrorKind = StoreErrorKind.TRANSIENT) -> None:
        super().__init__(message)
        self.kind = kind


# errors a row's content causes: binding a value SQLite cannot hold (an int beyond int64: OverflowError;
# an unsupported type: InterfaceError / ProgrammingError "Error binding parameter"), a NOT NULL
# constraint (a NaN value is stored as NULL: IntegrityError), text that UTF-8 cannot encode (lone
# surrogates: UnicodeEncodeError, a ValueError), line protocol a row cannot render
_PERMANENT_TYPES = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, OverflowError,
                    ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError)


def classify_store_error(err: BaseException) -> StoreErrorKind:
    """Permanent (the same data will fail again) or transient (the store is unavailable; retry).

    Permanent: sqlite3.IntegrityError / DataError / InterfaceError, OverflowError, ValueError
    (UnicodeEncodeError included), TypeError, ... and a :class:`StoreError` that says so (an HTTP 400
    from a server). Transient: sqlite3.OperationalError (database locked, disk I/O error, disk full),
    OSError and connection errors, a closed store, and anything not known to depend on the data (an
    unknown error is retried with back-off and shown as a failing store rather than turning
    healthy rows into dead letters)."""
    kind = getattr(err, "kind", None)
    if isinstance(kind, StoreErrorKind):
        return kind
    if isinstance(err, sqlite3.ProgrammingError):
        # "Error binding parameter ..." is the data; "Cannot operate on a closed database" is not
        return StoreErrorKind.TRANSIENT if "closed" in str(err) else StoreErrorKind.PERMANENT
    if isinstance(err, (sqlite3.OperationalError, OSError, ConnectionError, TimeoutError, MemoryError)):
        return StoreErrorKind.TRANSIENT
    if isinstance(err, _PERMANENT_TYPES):
        return StoreErrorKind.PERMANENT
    return StoreErrorKind.TRANSIENT


@dataclass(frozen=True, slots=True)
class Bucket:
    start_ns: int
    end_ns: int
    first_ns: int
    last_ns: int
    min: float
    mean: float
    max: float
    count: int


@dataclass(frozen=True, slots=True)
class StoredSample:
    line_id: str
    tag_id: str
    value: float
    unit: str
    source_ts_ns: int
    received_ts_ns: int
    quality: int
    roll_id: str | None
    web_pos_m: float | None


@dataclass(frozen=True, slots=True)
class WriteResult:
    inserted: int
    duplicates: int
    dead_letters: int


class Store(abc.ABC):
    backend: str = ""

    @abc.abstractmethod
    def write(self, samples: Sequence[Sample], dead_letters: Sequence[DeadLetter] = (),
              rolls: Sequence[RollEvent] = ()) -> WriteResult: ...

    @abc.abstractmethod
    def latest(self, line_id: str | None = None, tags: Sequence[str] | None = None) -> list[StoredSample]: ...

    @abc.abstractmethod
    def series(self, tag_id: str, start_ns: int, end_ns: int, points: int,
               line_id: str | None = None) -> list[Bucket]: ...

    @abc.abstractmethod
    def raw(self, tag_id: str, start_ns: int, end_ns: int, line_id: str | None = None,
            limit: int = 100_000) -> list[StoredSample]: ...

    @abc.abstractmethod
    def samples_of_roll(self, roll_id: str, line_id: str | None = None,
                        limit: int = 1_000_000) -> list[StoredSample]: ...

    @abc.abstractmethod
    def samples_page(self, tags: Sequence[str], start_ns: int, end_ns: int, line_id: str | None = None, *,
                     roll_id: str | None = None, after: tuple[str, str, int] | None = None,
                     limit: int = 10_000) -> list[StoredSample]:
        """Up to ``limit`` samples of ``tags`` with ``start_ns <= ts < end_ns`` (of one line / one roll when
        given), ordered by (line, tag, ts), only those after the key ``after`` = (line, tag, ts). Keyset
        pages: a long export holds no read transaction or cursor between two pages."""

    def iter_samples(self, tags: Sequence[str], start_ns: int, end_ns: int, line_id: str | None = None, *,
                     roll_id: str | None = None, page: int = 10_000) -> Iterator[list[StoredSample]]:
        """Every matching sample as consecutive pages of :meth:`samples_page` (bounded memory)."""
        after: tuple[str, str, int] | None = None
        while True:
            rows = self.samples_page(tags, start_ns, end_ns, line_id, roll_id=roll_id, after=after, limit=page)
            if rows:
                yield rows
            if len(rows) < page:
                return
            last = rows[-1]
            after = (last.line_id, last.tag_id, last.source_ts_ns)

    @abc.abstractmethod
    def dead_letters(self, limit: int = 100, before_id: int | None = None) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def count(self, tag_id: str | None = None, line_id: str | None = None) -> int: ...

    @abc.abstractmethod
    def dead_letter_count(self) -> int: ...

    @abc.abstractmethod
    def rolls(self, line_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def apply_retention(self, samples_before_ns: int, dead_letters_before_ns: int) -> int: ...

    @abc.abstractmethod
    def append_audit(self, kind: str, ref: str, body: dict[str, Any], *, line_id: str | None = None,
                     actor: str | None = None, ts_ns: int | None = None) -> None:
        """Append one record to the audit trail (feedback proposals, approvals, setpoint writes). Durable
        when it returns, like ``write``; records are never updated, only appended."""

    @abc.abstractmethod
    def audit(self, ref: str | None = None, line_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Audit records, newest first: {ts_ns, kind, ref, line_id, actor, body}."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def health(self) -> dict[str, Any]:
        return {"backend": self.backend, "ok": True}


# backend name -> "module:Class"; the contract test requires a fixture for every entry
BACKENDS: dict[str, str] = {
    "embedded": "twin.store.sqlite:SQLiteStore",
    "influxdb": "twin.store.influx:InfluxStore",
}


def open_store(config: StoreConfig, base_dir: Any = None, *, tagmap: Any = None) -> Store:
    """Open the backend the config names (:data:`BACKENDS`: backend name -> "module:class", imported
    when it is opened, so a daemon on the embedded store never loads the InfluxDB client). ``tagmap``
    lets the InfluxDB backend tag samples with their step / parameter kind / role."""
    target = BACKENDS.get(config.backend.value)
    if target is None:
        raise ValueError(f"store backend {config.backend.value!r} is not available in this build")
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if config.backend is StoreBackend.EMBEDDED:
        store: Store = cls(config.embedded.path, durability=config.embedded.durability)
        return store
    store = cls(config.influxdb, tagmap=tagmap)  # StoreBackend.INFLUXDB
    return store
