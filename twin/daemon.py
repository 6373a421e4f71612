"""The long-running daemon: wires config -> store, tag map, connectors, pipeline, scheduler, API.

Shutdown (SIGTERM / SIGINT): connectors stop taking data, what they already delivered is tagged,
committed and acknowledged, then connections close and the store is closed. A second signal
during shutdown is ignored (the flush is short and bounded by the store's retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from connectors import registry
from connectors.base import Connector
from ontology.tagmap import TagMap
from ontology.validate import Tagger
from twin.config import TwinConfig
from twin.metrics import Metrics
from twin.pipeline import Pipeline
from twin.samples import now_ns
from twin.state import LineState
from twin.store.base import Store, open_store

log = logging.getLogger("twin.daemon")


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
        self.scheduler: AsyncIOScheduler | None = None
        self.api_port: int | None = None
        self.extensions: dict[str, Any] = {}  # predictor, feedback, ... register here
        if config.predictor.enabled:
            from twin.predictor import Predictor, predicted_tag_specs

            self.tagmap.add_tags(predicted_tag_specs(config.predictor.step))
            predictor = Predictor(config.predictor, self)
            predictor.load()  # fails fast: a configured model that cannot load refuses start-up
            self.extensions["predictor"] = predictor
        if config.feedback.enabled:
            if not config.predictor.enabled:
                raise ValueError("[feedback] enabled needs [predictor] enabled: the proposals come from the surrogate")
            from twin.feedback import FeedbackService

            self.extensions["feedback"] = FeedbackService(config.feedback, self)

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

    async def _job_health(self) -> None:
        for c in self.connectors:
            self.metrics.queue_depth.labels(c.name).set(c.queue.qsize())
            self.metrics.dropped.labels(c.name).set(c.counters.dropped)
            self.metrics.connected.labels(c.name).set(1 if c.counters.connected else 0)
        self.metrics.pending.set(self.pipeline.pending)

    def health(self) -> dict[str, Any]:
        store = self.store.health()
        return {
            "status": "ok" if store.get("ok") else "degraded",
            "started": self.started_ns,
            "store": store,
            "connectors": [c.describe() for c in self.connectors],
            "pipeline": vars(self.pipeline.stats).copy() | {"pending": self.pipeline.pending},
        }

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

    async def _serve_api(self) -> tuple[Any, asyncio.Task[None]] | None:
        if not self.config.api.enabled:
            return None
        import uvicorn

        from twin.api import create_app

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
        self.scheduler = AsyncIOScheduler()
        self.scheduler.add_job(self._job_flush, "interval", seconds=p.flush_interval_s, id="flush",
                               max_instances=1, coalesce=True)
        self.scheduler.add_job(self._job_retention, "interval", seconds=p.retention_interval_s, id="retention",
                               max_instances=1, coalesce=True)
        self.scheduler.add_job(self._job_health, "interval", seconds=p.health_interval_s, id="health",
                               max_instances=1, coalesce=True)
        self.scheduler.start()
        api = await self._serve_api()
        for ext in self.extensions.values():
            start = getattr(ext, "start", None)
            if start is not None:
                await start()
        consumers = []
        for c in self.connectors:
            await c.__aenter__()
            consumers.append(asyncio.create_task(self.pipeline.consume(c.name, c.batches()),
                                                 name=f"consume:{c.name}"))
        waiter = asyncio.create_task(self.stop_event.wait())
        try:
            if self.exit_when_finished and consumers:
                done, _ = await asyncio.wait([waiter, asyncio.gather(*consumers)],
                                             return_when=asyncio.FIRST_COMPLETED)
            else:
                await waiter
        finally:
            # 1. stop intake; 2. drain what connectors already delivered; 3. commit + ack; 4. close
            for c in self.connectors:
                await c.stop()
            if consumers:
                await asyncio.wait(consumers, timeout=30)
            await self.pipeline.close()
            for c in self.connectors:
                await c.aclose()
            for ext in self.extensions.values():
                stop = getattr(ext, "stop", None)
                if stop is not None:
                    await stop()
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
