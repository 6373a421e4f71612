"""The one connector contract.

A connector is an async context manager whose ``batches()`` is an async iterator of
:class:`twin.samples.RawBatch`::

    async with connector:                 # connects (and reconnects by itself, inside)
        async for batch in connector.batches():
            ...                           # the pipeline stores the batch, then calls batch.ack()

Inside, each connector owns a :class:`BoundedBatchQueue` with a named :class:`OverflowPolicy` and
:class:`ConnectorCounters` (received, rejected, dropped). Reconnects use :class:`Backoff` (jittered
exponential). Library objects (asyncua, paho) never leave the connector's folder.

Adding a source kind = adding one folder with a connector, its pydantic config (with a literal
``kind`` field) and a ``register()`` call in ``connectors/registry.py``.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import random
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from twin.samples import RawBatch


class OverflowPolicy(str, enum.Enum):
    """What a full connector queue does with a new batch.

    - ``block``: the producer waits (back-pressure to the source; MQTT stops reading its socket, so
      the broker keeps the messages; replay simply waits). Nothing is dropped. The default.
    - ``drop_oldest``: the oldest queued batch is discarded and counted as dropped (not acknowledged,
      so an MQTT broker redelivers it after a reconnect).
    - ``drop_newest``: the new batch is discarded and counted as dropped (likewise unacknowledged).
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
                old = self._items.popleft()
                self.counters.dropped += len(old.readings)
            else:
                self.counters.dropped += len(batch.readings)
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


class Backoff:
    """Jittered exponential backoff ("full jitter", as in the AWS architecture blog and aiomqtt)."""

    def __init__(self, initial_s: float = 0.5, maximum_s: float = 30.0, factor: float = 2.0,
                 rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.factor = factor
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        cap = min(self.maximum_s, self.initial_s * (self.factor ** self.attempt))
        self.attempt += 1
        return self._rng.uniform(cap / 2, cap)

    def reset(self) -> None:
        self.attempt = 0


class Connector(abc.ABC):
    """Base class: subclasses implement ``_run`` (connect, read, reconnect) and put batches."""

    kind: str = ""

    def __init__(self, name: str, max_batches: int = 1000,
                 overflow: OverflowPolicy = OverflowPolicy.BLOCK) -> None:
        self.name = name
        self.counters = ConnectorCounters()
        self.queue = BoundedBatchQueue(max_batches, overflow, self.counters)
        self._task: asyncio.Task[None] | None = None
        self.finished = False  # True when a finite source (replay) has delivered everything

    async def __aenter__(self) -> "Connector":
        self.queue.bind_loop()
        self._task = asyncio.create_task(self._runner(), name=f"connector:{self.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _runner(self) -> None:
        try:
            await self._run()
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
                "queue_batches": self.queue.qsize(), "finished": self.finished, **c.extra}

    async def batches(self) -> AsyncIterator[RawBatch]:
        while True:
            batch = await self.queue.get()
            if batch is None:
                return
            yield batch

    @abc.abstractmethod
    async def _run(self) -> None:
        """Connect, deliver batches into ``self.queue``, reconnect with Backoff on failure."""
