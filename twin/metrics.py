"""Prometheus metrics of one daemon (its own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("twin_readings_received", "Readings delivered by connectors",
                                ["connector"], registry=r)
        self.stored = Counter("twin_samples_stored", "Samples newly stored", registry=r)
        self.duplicates = Counter("twin_samples_duplicate", "Samples already in the store (idempotent writes)",
                                  registry=r)
        self.rejected = Counter("twin_dead_letters", "Readings turned into dead letters", ["reason"], registry=r)
        self.dropped = Gauge("twin_readings_dropped", "Readings dropped by a connector's overflow policy "
                             "(monotonic; a gauge because the connector owns the count)", ["connector"], registry=r)
        self.queue_depth = Gauge("twin_queue_depth_batches", "Deliveries waiting in a connector queue",
                                 ["connector"], registry=r)
        self.pending = Gauge("twin_pending_samples", "Tagged samples waiting for a store commit", registry=r)
        self.lag = Gauge("twin_ingest_lag_seconds", "Receive-to-commit lag of the newest committed sample",
                         registry=r)
        self.source_lag = Gauge("twin_source_lag_seconds",
                                "Source-timestamp-to-commit lag of the newest committed sample", registry=r)
        self.commit_seconds = Histogram("twin_store_commit_seconds", "Duration of a store commit", registry=r,
                                        buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
        self.commit_errors = Counter("twin_store_commit_errors", "Failed store commits (retried)", registry=r)
        self.connected = Gauge("twin_connector_connected", "1 while a connector is connected", ["connector"],
                               registry=r)
        self.internal_errors = Counter("twin_internal_errors", "Unexpected exceptions, per stage (each was "
                                       "logged with its traceback; the reading involved became a dead letter)",
                                       ["stage"], registry=r)
        self.task_restarts = Counter("twin_task_restarts", "Restarts of supervised long-running tasks", ["task"],
                                     registry=r)
        self.degraded = Gauge("twin_health_degraded", "1 while /healthz reports degraded", registry=r)
        self.connector_events = Gauge("twin_connector_events", "Connector event counters (monotonic, owned by "
                                      "the connector): messages, acked, internal_errors, task_restarts, ...",
                                      ["connector", "event"], registry=r)
        self.pipeline_events = Gauge("twin_pipeline_events", "Pipeline event counters (monotonic, owned by the "
                                     "pipeline): store_rejected, unstorable, lost_at_shutdown, internal_errors, ...",
                                     ["event"], registry=r)
        self.source_age = Gauge("twin_source_last_delivery_age_seconds",
                                "Seconds since a connector last delivered readings", ["connector"], registry=r)
        self.stream_dropped = Counter("twin_stream_dropped", "Live-stream events dropped for slow clients",
                                      registry=r)
