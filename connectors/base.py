"""The one connector contract.

A connector is an async context manager whose ``batches()`` is an async iterator of
:class:`core.samples.RawBatch`::

    async with connector:                 # connects (and reconnects by itself, inside)
        async for batch in connector.batches():
            ...                           # the pipeline stores the batch, then calls batch.ack()

Inside, each connector owns a :class:`BoundedBatchQueue` with a named :class:`OverflowPolicy` and
:class:`ConnectorCounters` (received, rejected, dropped). Reconnects use :class:`core.retry.Backoff`
(exponential, equal jitter: uniform in [cap/2, cap]; re-exported here as ``connectors.base.Backoff``). Library objects (asyncua, paho) never leave the
connector's folder.

Supervision: the connector's task runs ``_run`` under :meth:`Connector._runner`. If ``_run`` raises
unexpectedly, the traceback is logged (rate-limited), the restart is counted in
``counters.extra["task_restarts"]`` with the error in ``counters.last_error``, and ``_run`` starts
again after an exponential delay with equal jitter (:attr:`Connector.RESTART_INITIAL_S` ..
:attr:`Connector.RESTART_MAX_S`). A ``_run`` that returns (a finite source such as replay that
delivered everything, or a connector that is closing) is not restarted.

Unexpected exceptions while handling one delivery (a paho callback, an OPC-UA publish) are counted
in ``counters.extra["internal_errors"]`` by the connector; the delivery becomes an
``internal_error`` dead letter (text made storable by :func:`storable_text`).

Adding a source kind = adding one folder with a connector, its pydantic config (with a literal
``kind`` field) and a ``register()`` call in ``connectors/registry.py``.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from core.retry import Backoff
from core.samples import RawBatch, safe_text
from core.supervise import RateLimitedLog

log = logging.getLogger("twin.connectors")

__all__ = ["Backoff", "BoundedBatchQueue", "Connector", "ConnectorCounters", "OverflowPolicy", "error_text",
           "storable_text"]


def storable_text(value: object, limit: int) -> str:
    """Text that every store accepts (:func:`core.samples.safe_text`), with ``repr`` for non-strings
    (a payload object reads better as its repr). Never raises."""
    if not isinstance(value, str):
        try:
            value = repr(value)
        except Exception:  # noqa: BLE001 - repr of a hostile object (deep nesting, huge int)
            value = f"<unprintable {type(value).__name__}>"
    return safe_text(value, limit)


def error_text(err: BaseException, limit: int = 500) -> str:
    """``"Type: message"`` of an exception, storable and bounded; never raises (str() of an
    exception can: a huge int in its arguments, a broken __str__)."""
    try:
        text = f"{type(err).__name__}: {err}"
    except Exception:  # noqa: BLE001 - str() of an exception can raise anything; this must not
        text = type(err).__name__
    return storable_text(text, limit)


class OverflowPolicy(str, enum.Enum):
    """What a full connector queue does with a new batch.

    - ``block``: the producer waits (back-pressure to the source; MQTT stops reading its socket, so
      the broker keeps the messages; replay simply waits). Nothing is dropped. The default.
    - ``drop_oldest``: the oldest queued batch is discarded and counted as dropped, and handed to the queue's
      ``on_drop`` (the MQTT connector acknowledges it: unacknowledged drops fill the broker's in-flight window
      and stop delivery; docs/reliability.md).
    - ``drop_newest``: the new batch is discarded, counted and handed to ``on_drop`` likewise.
    Either drop makes /healthz say degraded for a minute (``twin.daemon.DROP_DEGRADED_S``).
    """

    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"


@dataclass
class ConnectorCounters:
    received: int = 0  # readings delivered by the source (incl. those that became dead letters here)
    rejected: int = 0  # readings refused at the connector (unparseable payloads -> dead letters)
    dropped: int = 0  # readings discarded by the overflow policy
    reconnects: int = 0
    connected: bool = False
    extra: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None  # the last unexpected exception (task or delivery), one line
    last_drop_ns: int = 0  # wall-clock time of the last delivery the overflow policy dropped (0: never)


class BoundedBatchQueue:
    """An asyncio queue of RawBatch bounded in readings, with a named overflow policy.

    Thread-safe entry for library threads (paho) is :meth:`put_threadsafe`; it applies the policy on
    the event loop. ``block`` from a foreign thread waits for space (back-pressure on that thread).
    """

    def __init__(self, max_batches: int, policy: OverflowPolicy, counters: ConnectorCounters) -> None:
        if max_batches < 1:
            raise ValueError("max_batches must be >= 1")
        self.max_batches = max_batches
        self.policy = policy
        self.counters = counters
        self._items: deque[RawBatch] = deque()
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # called with each batch a drop policy discards (after counting it); MQTT acknowledges it there: a
        # delivery held unacknowledged fills the broker's in-flight window and stops all delivery (see
        # connectors.mqtt.connector)
        self.on_drop: Callable[[RawBatch], None] | None = None

    def _dropped(self, batch: RawBatch) -> None:
        self.counters.dropped += len(batch.readings)
        self.counters.last_drop_ns = time.time_ns()
        if self.on_drop is not None:
            self.on_drop(batch)

    def bind_loop(self) -> None:
        self._loop = asyncio.get_running_loop()

    def qsize(self) -> int:
        return len(self._items)

    @property
    def depth_readings(self) -> int:
        return sum(len(b) for b in self._items)

    async def put(self, batch: RawBatch) -> None:
        while len(self._items) >= self.max_batches and not self._closed:
            if self.policy is OverflowPolicy.BLOCK:
                self._not_full.clear()
                await self._not_full.wait()
            elif self.policy is OverflowPolicy.DROP_OLDEST:
                self._dropped(self._items.popleft())
            else:
                self._dropped(batch)
                return
        self._items.append(batch)
        self._not_empty.set()

    def put_threadsafe(self, batch: RawBatch, timeout: float | None = None) -> None:
        """Put from a non-asyncio thread; blocks that thread while the policy is ``block``."""
        assert self._loop is not None, "bind_loop() first"
        fut = asyncio.run_coroutine_threadsafe(self.put(batch), self._loop)
        fut.result(timeout)

    def close(self) -> None:
        self._closed = True
        self._not_empty.set()
        self._not_full.set()

    async def get(self) -> RawBatch | None:
        """Next batch, or None once closed and drained."""
        while not self._items:
            if self._closed:
                return None
            self._not_empty.clear()
            await self._not_empty.wait()
        batch = self._items.popleft()
        self._not_full.set()
        return batch


class Connector(abc.ABC):
    """Base class: subclasses implement ``_run`` (connect, read, reconnect) and put batches."""

    kind: str = ""
    RESTART_INITIAL_S = 0.5  # first delay before a failed _run is started again
    RESTART_MAX_S = 30.0  # longest delay between restarts
    RESTART_STABLE_S = 60.0  # a _run that ran this long before failing restarts from the first delay

    def __init__(self, name: str, max_batches: int = 1000,
                 overflow: OverflowPolicy = OverflowPolicy.BLOCK) -> None:
        self.name = name
        self.counters = ConnectorCounters()
        self.counters.extra.update({"task_restarts": 0, "internal_errors": 0})
        self.queue = BoundedBatchQueue(max_batches, overflow, self.counters)
        self._task: asyncio.Task[None] | None = None
        self.finished = False  # True when a finite source (replay) has delivered everything
        self.errors_log = RateLimitedLog(logging.getLogger(f"twin.connectors.{self.kind or 'connector'}"))

    async def __aenter__(self) -> Connector:
        self.queue.bind_loop()
        self._task = asyncio.create_task(self._runner(), name=f"connector:{self.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _runner(self) -> None:
        """Run ``_run``; restart it with backoff when it raises (it is not restarted when it returns)."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.RESTART_INITIAL_S, self.RESTART_MAX_S)
        try:
            while True:
                started = loop.time()
                try:
                    await self._run()
                    return
                except Exception as err:  # noqa: BLE001 - supervision: every failure restarts the task
                    if loop.time() - started >= self.RESTART_STABLE_S:
                        backoff.reset()
                    delay = backoff.next_delay()
                    self.counters.extra["task_restarts"] = self.counters.extra.get("task_restarts", 0) + 1
                    self.counters.last_error = error_text(err)
                    self.counters.connected = False
                    self.errors_log.error(
                        f"task:{type(err).__name__}", "%s connector %s: its task failed (%s); restart %d in %.1f s",
                        self.kind, self.name, self.counters.last_error, self.counters.extra["task_restarts"], delay,
                        exc=err)
                    await asyncio.sleep(delay)
        finally:
            self.queue.close()

    async def stop(self) -> None:
        """Stop taking new data; what is already queued can still be drained by batches()."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stop must not raise
                pass
        self.queue.close()

    async def aclose(self) -> None:
        """Release the connection; called after the pipeline has stored and acknowledged the
        last batch (an MQTT connector sends its last PUBACKs before it disconnects)."""
        await self.stop()

    def describe(self) -> dict[str, object]:
        c = self.counters
        return {"name": self.name, "kind": self.kind, "connected": c.connected, "received": c.received,
                "rejected": c.rejected, "dropped": c.dropped, "reconnects": c.reconnects,
                "queue_batches": self.queue.qsize(), "finished": self.finished, "last_error": c.last_error,
                **c.extra}

    async def batches(self) -> AsyncIterator[RawBatch]:
        while True:
            batch = await self.queue.get()
            if batch is None:
                return
            yield batch

    @abc.abstractmethod
    async def _run(self) -> None:
        """Connect, deliver batches into ``self.queue``, reconnect with Backoff on failure."""
