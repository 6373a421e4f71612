"""The long-running daemon: wires config -> store, tag map, connectors, pipeline, scheduler, API.

This is the one place that composes the services: the predictor and the feedback service receive the
narrow interfaces of twin/ports.py (line state, store, tag map, pipeline, scheduler, setpoint writers,
metrics), which the daemon's parts satisfy; no service holds the daemon. Periodic work, the daemon's own
(flush, retention, health) and the services' (``predictor``, ``feedback``), runs on one apscheduler
scheduler; /healthz ``jobs`` shows each job's runs, errors and last error.

Shutdown (SIGTERM / SIGINT): connectors stop taking data, what they already delivered is tagged,
committed and acknowledged, then connections close and the store is closed. A second signal
during shutdown is ignored (the flush is short and bounded by the store's retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
    JobExecutionEvent,
)
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from connectors import registry
from connectors.base import Connector
from core.samples import RawBatch, now_ns
from core.supervise import Supervisor, TaskHealth
from ontology.tagmap import TagMap
from ontology.validate import Tagger
from twin.api import create_app
from twin.config import TwinConfig
from twin.feedback import FeedbackService
from twin.feedback.writers import setpoint_writers
from twin.lab.service import LabService
from twin.lab.store import LabStore
from twin.metrics import Metrics
from twin.pipeline import Pipeline
from twin.ports import Service, ServiceHealth
from twin.predictor import Predictor, predicted_tag_specs
from twin.state import LineState
from twin.store.base import Store, open_store

log = logging.getLogger("twin.daemon")

#: /healthz says degraded while a connector's overflow policy dropped a delivery within this many seconds
DROP_DEGRADED_S = 60.0
# connector counters (counters.extra) that are faults -> stage of twin_internal_errors_total
_CONNECTOR_STAGES = {"internal_errors": "{kind}_callback", "task_restarts": "connector_task",
                     "loop_errors": "{kind}_loop"}


class Daemon:
    def __init__(self, config: TwinConfig, *, tagmap: TagMap | None = None,
                 store: Store | None = None, ack_log: Path | None = None,
                 exit_when_finished: bool = False) -> None:
        self.config = config
        self.tagmap = tagmap or TagMap.load(config.tagmap)
        self.metrics = Metrics()
        self.state = LineState()
        self.state.on_drop = lambda n: self.metrics.stream_dropped.inc(n)
        self.store = store or open_store(config.store, tagmap=self.tagmap)
        self.tagger = Tagger(self.tagmap, config.line_id)
        self.pipeline = Pipeline(config.pipeline, self.store, self.tagger, self.metrics, self.state)
        self.connectors: list[Connector] = []
        for c in config.connectors:
            cls = registry.connector_class(c.kind)
            kwargs: dict[str, Any] = {"default_line_id": config.line_id}
            if c.kind == "replay" and ack_log is not None:
                kwargs["ack_log"] = ack_log
            self.connectors.append(cls(c, **kwargs))
        self.exit_when_finished = exit_when_finished
        self.stop_event: asyncio.Event | None = None
        self.started_ns = now_ns()
        # one scheduler for the daemon's jobs and the services' periodic rounds (started by run, or by the first
        # service job registered while the daemon does not run: a service started on its own, as tests do)
        self.scheduler = AsyncIOScheduler()
        self.scheduler.add_listener(self._job_event, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED
                                    | EVENT_JOB_MAX_INSTANCES)
        self._job_owners: dict[str, ServiceHealth] = {}  # service job -> the service that records its failures
        self.api_port: int | None = None
        self.extensions: dict[str, Service] = {}  # the services composed below, by name (predictor, feedback)
        self.supervisor = Supervisor(on_failure=self._task_failed)
        self.last_delivery_ns: dict[str, int] = {}  # connector -> receive time of its newest delivery
        self._stopping = False
        self._exported: dict[tuple[str, str], int] = {}  # connector fault counts already in /metrics
        self.job_health: dict[str, dict[str, Any]] = {}  # scheduler job -> last run, last error
        self.predictor: Predictor | None = None
        self.feedback: FeedbackService | None = None
        self.lab: LabService | None = None
        self._compose_services()

    def _compose_services(self) -> None:
        """The predictor and the feedback service, each given the interfaces it uses (twin/ports.py)."""
        config = self.config
        if config.feedback.enabled and not config.predictor.enabled:
            raise ValueError("[feedback] enabled needs [predictor] enabled: the proposals come from the surrogate")
        if config.predictor.enabled:
            self.tagmap.add_tags(predicted_tag_specs(config.predictor.step))
            self.predictor = Predictor(config.predictor, tagmap=self.tagmap, state=self.state, pipeline=self.pipeline,
                                       scheduler=self, metrics=self.metrics)
            self.predictor.load()  # fails fast: a configured model that cannot load refuses start-up
            self.extensions["predictor"] = self.predictor
        if config.lab.enabled:  # lab results, shadow models, drift (twin/lab); composed before the feedback service:
            # a promoted model is restored before that service reads it
            self.lab = LabService(config.lab, line_id=config.line_id, store=LabStore(config.lab.path), rolls=self.store,
                                  sink=self.store, audit=self.store, predictor=self.predictor, scheduler=self,
                                  metrics=self.metrics)
            self.extensions["lab"] = self.lab
        if config.feedback.enabled and self.predictor is not None:
            self.feedback = FeedbackService(config.feedback, tagmap=self.tagmap, store=self.store, state=self.state,
                                            commits=self.pipeline, predictor=self.predictor,
                                            writers=setpoint_writers(self.connectors), scheduler=self,
                                            metrics=self.metrics)
            self.extensions["feedback"] = self.feedback

    # -- the scheduler (twin.ports.Scheduler) --------------------------------------------------
    def every(self, job_id: str, seconds: float, fn: Callable[[], Awaitable[Any]], *,
              health: ServiceHealth | None = None) -> None:
        """Run ``fn`` every ``seconds`` on the daemon's scheduler (one instance at a time, late runs run late
        rather than being dropped, several due at once run once). ``health``: the service that catches and records
        the job's failures; /healthz ``jobs`` shows its failure count and last error with the job."""
        if health is not None:
            self._job_owners[job_id] = health
        self.scheduler.add_job(fn, "interval", seconds=seconds, id=job_id, max_instances=1, coalesce=True,
                               misfire_grace_time=None, replace_existing=True)
        if not self.scheduler.running:  # a service started while the daemon does not run (tests, tools)
            self.scheduler.start()

    def cancel(self, job_id: str) -> None:
        """Remove a job (no error when it is not scheduled)."""
        with contextlib.suppress(JobLookupError):
            self.scheduler.remove_job(job_id)

    # -- periodic jobs -----------------------------------------------------------------------
    async def _job_flush(self) -> None:
        await self.pipeline.flush()

    async def _job_retention(self) -> None:
        s = self.config.store
        now = now_ns()
        n = await asyncio.to_thread(self.store.apply_retention, now - int(s.retention_days * 86400e9),
                                    now - int(s.dead_letter_retention_days * 86400e9))
        if n:
            log.info("retention removed %d rows", n)

    async def refresh_metrics(self) -> None:
        """Bring the gauges of /metrics up to date (the ``health`` job; /metrics calls it before answering)."""
        m = self.metrics
        now = now_ns()
        for c in self.connectors:
            m.queue_depth.labels(c.name).set(c.queue.qsize())
            m.dropped.labels(c.name).set(c.counters.dropped)
            m.connected.labels(c.name).set(1 if c.counters.connected else 0)
            for k, v in c.counters.extra.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    m.connector_events.labels(c.name, k).set(v)
                    stage = _CONNECTOR_STAGES.get(k)
                    if stage is not None:  # fold the connector's own fault counts into twin_internal_errors_total
                        seen = self._exported.get((c.name, k), 0)
                        if v > seen:
                            m.internal_errors.labels(stage.format(kind=c.kind)).inc(v - seen)
                            self._exported[(c.name, k)] = int(v)
            last = self.last_delivery_ns.get(c.name)
            if last is not None:
                m.source_age.labels(c.name).set((now - last) / 1e9)
        for k, v in vars(self.pipeline.stats).items():
            if isinstance(v, int) and not isinstance(v, bool) and not k.endswith("_ns"):
                m.pipeline_events.labels(k).set(v)
        m.pending.set(self.pipeline.pending)
        m.degraded.set(1 if self.problems() else 0)


    def _task_failed(self, h: TaskHealth, err: BaseException) -> None:
        self.metrics.internal_errors.labels(h.stage).inc()
        self.metrics.task_restarts.labels(h.name).inc()

    def _job_event(self, event: JobEvent) -> None:
        j = self.job_health.setdefault(event.job_id, {"runs": 0, "errors": 0, "missed": 0, "last_error": None,
                                                      "last_error_ns": None, "last_run_ns": None})
        if event.code == EVENT_JOB_MISSED:
            j["missed"] += 1
            return
        if event.code == EVENT_JOB_MAX_INSTANCES:  # the previous run still going: this one skipped
            j["skipped"] = j.get("skipped", 0) + 1
            return
        j["runs"] += 1
        j["last_run_ns"] = now_ns()
        owner = self._job_owners.get(event.job_id)
        if owner is not None:  # a service's round: the service caught, counted and logged its failures
            j["errors"] = owner.failures
            j["last_error"], j["last_error_ns"] = owner.last_error, owner.last_error_ns
            j["failing"] = False  # problems() names a service that failed within the last minute
        elif event.code == EVENT_JOB_ERROR and isinstance(event, JobExecutionEvent):
            # apscheduler logged the traceback; count it and show it
            j["errors"] += 1
            j["last_error"] = f"{type(event.exception).__name__}: {event.exception}"[:500]
            j["last_error_ns"] = j["last_run_ns"]
            j["failing"] = True
            self.metrics.internal_errors.labels(f"job:{event.job_id}").inc()
        else:
            j["failing"] = False

    def source_state(self, c: Connector) -> str:
        """connected | disconnected | finished (a finite source that delivered everything) | failed"""
        h = self.supervisor.tasks.get(f"consume:{c.name}")
        if h is not None and (h.state.value == "restarting"
                              or (h.state.value == "finished" and c.kind != "replay" and not self._stopping)):
            return "failed"  # a live source's consumer must never finish while the daemon runs
        if c.finished or c.kind == "replay":
            return "finished" if c.finished else "reading"
        return "connected" if c.counters.connected else "disconnected"

    def problems(self) -> list[str]:
        """Why the twin is degraded, in words (empty: healthy). /healthz answers 503 while any holds."""
        out: list[str] = []
        store = self.store.health()
        if not store.get("ok"):
            out.append(f"store {store.get('backend', '')} unhealthy: {store.get('error') or store.get('last_error') or ''}".rstrip(": "))
        st = self.pipeline.stats
        started = self.pipeline.commit_started_ns
        if started and now_ns() - started > self.config.pipeline.commit_stall_s * 1e9:
            out.append(f"store commit in flight for {(now_ns() - started) / 1e9:.0f} s (the store is not answering: "
                       "locked, full or unreachable)")
        if not self.pipeline.store_ok:
            out.append(f"store commits failing for {(now_ns() - st.store_failing_since_ns) / 1e9:.0f} s "
                       f"({st.store_consecutive_failures} attempts): {st.store_last_error or ''}".rstrip(": "))
        for c in self.connectors:
            state = self.source_state(c)
            if state in ("disconnected", "failed"):
                err = getattr(c, "last_error", None) or c.counters.extra.get("last_error")
                out.append(f"source {c.name} ({c.kind}) {state}" + (f": {err}" if err else ""))
            last_drop = c.counters.last_drop_ns
            if last_drop and time.time_ns() - last_drop < DROP_DEGRADED_S * 1e9:
                out.append(f"source {c.name} ({c.kind}) shedding load: {c.counters.dropped} readings dropped by its "
                           f"{c.queue.policy.value} policy so far, the last {(time.time_ns() - last_drop) / 1e9:.0f} s ago")
        out.extend(self.supervisor.degraded())
        for name, ext in self.extensions.items():  # predictor, feedback: a round failed recently
            t = ext.last_error_ns
            if t is not None and now_ns() - t < 60e9:
                out.append(f"{name} failed {(now_ns() - t) / 1e9:.0f} s ago: {ext.last_error or ''}")
        for job, j in self.job_health.items():
            if j.get("failing"):
                out.append(f"scheduled job {job} failing: {j['last_error']}")
        return out

    def health(self) -> dict[str, Any]:
        now = now_ns()
        problems = self.problems()
        sources = []
        for c in self.connectors:
            d = c.describe()
            last = self.last_delivery_ns.get(c.name)
            d["state"] = self.source_state(c)
            d["last_delivery_age_s"] = None if last is None else round((now - last) / 1e9, 3)
            sources.append(d)
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "started": self.started_ns,
            "store": self.store.health(),
            "connectors": sources,
            "tasks": self.supervisor.health(),
            "jobs": self.job_health,
            "pipeline": vars(self.pipeline.stats).copy() | {"pending": self.pipeline.pending},
        } | ({"lab": self.lab.status_json()} if self.lab is not None else {})

    # -- run ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _signals(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def request_stop(self, sig: Any = None) -> None:
        if self.stop_event is not None and not self.stop_event.is_set():
            log.info("stopping (%s): flushing what was taken in", getattr(sig, "name", sig or "request"))
            self.stop_event.set()

    async def run(self, *, install_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        ctx = self._signals(loop) if install_signals else contextlib.nullcontext()
        with ctx:
            await self._run()

    def _consumer(self, c: Connector) -> Any:
        """The consumer coroutine factory of one connector (the supervisor makes a new one per restart)."""
        async def tapped() -> AsyncIterator[RawBatch]:
            async for batch in c.batches():
                self.last_delivery_ns[c.name] = now_ns()
                yield batch

        def factory() -> Any:
            return self.pipeline.consume(c.name, tapped())
        return factory

    async def _serve_api(self) -> tuple[Any, asyncio.Task[None]] | None:
        if not self.config.api.enabled:
            return None
        import uvicorn

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:  # the daemon owns the signals
                yield

        app = create_app(self)
        server = _Server(uvicorn.Config(app, host=self.config.api.host, port=self.config.api.port,
                                        log_level="warning", lifespan="off", access_log=False))
        task = asyncio.create_task(server.serve(), name="api")
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done():
            exc = task.exception()
            raise RuntimeError(f"API could not start on {self.config.api.host}:{self.config.api.port}: {exc}")
        if server.servers:
            self.api_port = server.servers[0].sockets[0].getsockname()[1]
        log.info("API on http://%s:%s", self.config.api.host, self.api_port)
        return server, task

    async def _run(self) -> None:
        assert self.stop_event is not None
        p = self.config.pipeline
        self.scheduler.add_job(self._job_flush, "interval", seconds=p.flush_interval_s, id="flush",
                               max_instances=1, coalesce=True, replace_existing=True)
        self.scheduler.add_job(self._job_retention, "interval", seconds=p.retention_interval_s, id="retention",
                               max_instances=1, coalesce=True, replace_existing=True)
        self.scheduler.add_job(self.refresh_metrics, "interval", seconds=p.health_interval_s, id="health",
                               max_instances=1, coalesce=True, replace_existing=True)
        if not self.scheduler.running:
            self.scheduler.start()
        api = await self._serve_api()
        for ext in self.extensions.values():
            await ext.start()
        consumers = []
        for c in self.connectors:
            await c.__aenter__()
            consumers.append(self.supervisor.spawn(f"consume:{c.name}", self._consumer(c), stage="consumer"))
        waiter = asyncio.create_task(self.stop_event.wait())
        try:
            if self.exit_when_finished and consumers:
                either: list[asyncio.Future[Any]] = [waiter, asyncio.gather(*consumers)]
                done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            else:
                await waiter
        finally:
            # 1. stop intake; 2. drain what connectors already delivered; 3. commit + ack; 4. close
            self._stopping = True
            for c in self.connectors:
                await c.stop()
            if consumers:
                await asyncio.wait(consumers, timeout=30)
                await self.supervisor.cancel()  # a consumer still restarting after a failure
            await self.pipeline.close()
            for c in self.connectors:
                await c.aclose()
            for ext in self.extensions.values():
                await ext.stop()
            self.scheduler.shutdown(wait=False)
            if api is not None:
                server, task = api
                server.should_exit = True
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout=5)
            waiter.cancel()
            await asyncio.to_thread(self.store.close)
            log.info("stopped: %d stored, %d dead letters, %d duplicates ignored",
                     self.pipeline.stats.stored, self.pipeline.stats.rejected, self.pipeline.stats.duplicates)
