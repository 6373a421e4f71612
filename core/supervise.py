"""Supervised long-running tasks: log, count, restart with back-off, report.

Every long-running coroutine of the daemon (the pipeline's consumer per connector, the predictor's
and the feedback service's loops) runs under a :class:`Supervisor`. When one raises:

- its traceback is logged when it happens (at most one full traceback per task per
  ``traceback_every_s``; repeats in between get one line with the count), and the failure is counted
  (``on_failure`` callback: the daemon feeds ``twin_internal_errors_total{stage}`` and
  ``twin_task_restarts_total{task}``);
- the task is restarted after a back-off drawn with *full jitter* (uniform in ``[0, cap]``, cap doubling
  from ``initial_s`` to ``max_s``; the cap resets once a run has lasted ``reset_after_s``;
  :func:`core.retry.backoff_delay` with ``Jitter.FULL``);
- :meth:`Supervisor.health` reports each task's state, restarts and last error, and
  :meth:`Supervisor.degraded` names the tasks that are failing now or failed recently, which /healthz turns
  into "degraded".

A coroutine that returns normally is finished (a replay's consumer after the file), not restarted.
Cancellation (shutdown) is never treated as a failure.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from core.retry import Jitter, backoff_delay
from core.samples import now_ns

log = logging.getLogger("core.supervise")


class TaskState(str, enum.Enum):
    RUNNING = "running"
    RESTARTING = "restarting"  # failed; waiting for its back-off before the next run
    FINISHED = "finished"  # returned normally (a finite source, drained)
    STOPPED = "stopped"  # cancelled at shutdown


@dataclass
class TaskHealth:
    name: str
    stage: str
    state: TaskState = TaskState.RUNNING
    restarts: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_ns: int | None = None
    started_ns: int = 0
    suppressed_tracebacks: int = 0
    last_traceback_mono: float = -1e18

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "stage": self.stage, "state": self.state.value, "restarts": self.restarts,
                "failures": self.failures, "last_error": self.last_error, "last_error_ns": self.last_error_ns}


class RateLimitedLog:
    """One log line (with the traceback, if any) per key and ``interval_s``; what it held back is counted
    and named in the next line. Used where one cause can repeat per message (the pipeline's events, the
    connectors' callbacks). Safe from a library thread (dict operations under the GIL); keys are bounded:
    past 256 the table starts afresh."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, key: str, level: int, msg: str, *args: object,
            exc: BaseException | bool | None = None) -> bool:
        """Log ``msg`` at ``level`` (``exc``: an exception, or True for the one being handled) unless a
        line for ``key`` was logged within ``interval_s``; returns whether it logged."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        if len(self._last) >= 256:
            self._last.clear()
            self._held.clear()
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            msg += f" ({held} more like it in the last {self.interval_s:.0f} s were not logged)"
        try:
            self.logger.log(level, msg, *args, exc_info=exc)
        except Exception:  # noqa: BLE001 - a report must not raise where it is made (paho's thread)
            pass
        return True

    def error(self, key: str, msg: str, *args: object, exc: BaseException | None = None) -> bool:
        return self.log(key, logging.ERROR, msg, *args, exc=exc)


@dataclass
class RoundFailures:
    """What a periodic service (predictor, feedback) keeps about its failed rounds; /healthz reads
    ``last_error_ns`` (a round failed within the last minute: degraded)."""

    failures: int = 0
    last_error: str | None = None
    last_error_ns: int | None = None
    _last_traceback: float = -1e18

    def record(self, err: BaseException, logger: logging.Logger, what: str) -> None:
        """Count a failed round and log it: the traceback at most once a minute, one line otherwise."""
        self.failures += 1
        self.last_error = f"{type(err).__name__}: {err}"[:500]
        self.last_error_ns = now_ns()
        mono = time.monotonic()
        if mono - self._last_traceback >= 60.0:
            self._last_traceback = mono
            logger.error("%s failed (failure %d)", what, self.failures, exc_info=err)
        else:
            logger.error("%s failed again (failure %d): %s", what, self.failures, self.last_error)


class RoundHealth:
    """The health a periodic service reports (``twin.ports.ServiceHealth``), read from its ``rounds``."""

    rounds: RoundFailures

    @property
    def last_error(self) -> str | None:
        return self.rounds.last_error

    @property
    def last_error_ns(self) -> int | None:
        return self.rounds.last_error_ns

    @property
    def failures(self) -> int:
        return self.rounds.failures


def full_jitter(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Back-off before retry ``attempt`` (0-based): uniform in [0, min(max_s, initial_s * 2**attempt)]
    (:func:`core.retry.backoff_delay` with ``Jitter.FULL``)."""
    return backoff_delay(attempt, initial_s, max_s, rng, jitter=Jitter.FULL)


class Supervisor:
    def __init__(self, *, on_failure: Callable[[TaskHealth, BaseException], None] | None = None,
                 initial_s: float = 0.5, max_s: float = 30.0, reset_after_s: float = 60.0,
                 traceback_every_s: float = 60.0, recent_s: float = 30.0,
                 rng: random.Random | None = None) -> None:
        self.on_failure = on_failure
        self.initial_s = initial_s
        self.max_s = max_s
        self.reset_after_s = reset_after_s
        self.traceback_every_s = traceback_every_s
        self.recent_s = recent_s
        self._rng = rng or random.Random()
        self.tasks: dict[str, TaskHealth] = {}
        self._handles: dict[str, asyncio.Task[None]] = {}

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]], *, stage: str | None = None) -> asyncio.Task[None]:
        """Run ``factory()`` under supervision; a new coroutine is made for every restart."""
        h = TaskHealth(name, stage or name.split(":", 1)[0], started_ns=now_ns())
        self.tasks[name] = h
        task = asyncio.create_task(self._run(h, factory), name=name)
        self._handles[name] = task
        return task

    async def _run(self, h: TaskHealth, factory: Callable[[], Awaitable[None]]) -> None:
        attempt = 0
        while True:
            h.state = TaskState.RUNNING
            t0 = time.monotonic()
            try:
                await factory()
            except asyncio.CancelledError:
                h.state = TaskState.STOPPED
                raise
            except Exception as err:  # noqa: BLE001 - the point of a supervisor: every failure is handled here
                self._failed(h, err)
                if time.monotonic() - t0 >= self.reset_after_s:
                    attempt = 0
                delay = full_jitter(attempt, self.initial_s, self.max_s, self._rng)
                attempt += 1
                h.state = TaskState.RESTARTING
                try:
                    await asyncio.sleep(delay)
                except asyncio.CancelledError:
                    h.state = TaskState.STOPPED
                    raise
                h.restarts += 1
                continue
            h.state = TaskState.FINISHED
            return

    def _failed(self, h: TaskHealth, err: BaseException) -> None:
        h.failures += 1
        h.last_error = f"{type(err).__name__}: {err}"[:500]
        h.last_error_ns = now_ns()
        mono = time.monotonic()
        if mono - h.last_traceback_mono >= self.traceback_every_s:
            extra = f" ({h.suppressed_tracebacks} more failures since the last traceback)" if h.suppressed_tracebacks else ""
            log.error("task %s failed (failure %d)%s; restarting with back-off:\n%s", h.name, h.failures, extra,
                      "".join(traceback.format_exception(err)))
            h.last_traceback_mono = mono
            h.suppressed_tracebacks = 0
        else:
            h.suppressed_tracebacks += 1
            log.error("task %s failed again (failure %d): %s", h.name, h.failures, h.last_error)
        if self.on_failure is not None:
            try:
                self.on_failure(h, err)
            except Exception:
                log.exception("supervisor failure callback raised")

    def degraded(self) -> list[str]:
        """Problems in words: tasks restarting now, or that failed within ``recent_s``."""
        out = []
        now = now_ns()
        for h in self.tasks.values():
            if h.state is TaskState.RESTARTING:
                out.append(f"task {h.name} failed and is restarting: {h.last_error}")
            elif h.last_error_ns is not None and now - h.last_error_ns < self.recent_s * 1e9:
                out.append(f"task {h.name} failed {(now - h.last_error_ns) / 1e9:.0f} s ago: {h.last_error}")
        return out

    def health(self) -> list[dict[str, object]]:
        return [h.as_json() for h in self.tasks.values()]

    async def wait(self, names: list[str], timeout: float | None = None) -> None:
        tasks = [self._handles[n] for n in names if n in self._handles]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def cancel(self, names: list[str] | None = None) -> None:
        tasks = [t for n, t in self._handles.items() if names is None or n in names]
        for t in tasks:
            if not t.done():
                t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping must not raise
                pass
