"""The narrow interfaces (``typing.Protocol``) the services receive instead of the daemon.

A service states here what it uses of the rest of the twin; :mod:`twin.daemon` is the one place that
composes them (the daemon's pipeline, line state, store, tag map, connectors and scheduler satisfy
them structurally, nothing inherits from these classes). A test or a benchmark can hand a service a
small object of its own that has just these members.

==========================  ==========================================  ===========================
port                         what                                        used by
==========================  ==========================================  ===========================
:class:`LatestState`         newest committed sample per (line, tag),     predictor, feedback
                             events to the dashboard stream
:class:`CommitFeed`          hooks called with each committed batch       predictor, feedback
:class:`SampleSink`          submit derived samples (predicted tags)      predictor
:class:`AuditStore`          append to / read the store's audit trail     feedback
:class:`TagCatalog`          tag specs (unit, range), source addresses    predictor, feedback
:class:`SetpointWriter`      a connector that writes a setpoint           feedback
:class:`Scheduler`           periodic jobs on the daemon's scheduler      predictor, feedback
:class:`ErrorMetrics`        ``twin_internal_errors_total`` + registry    predictor, feedback
:class:`Predictions`         the predictor as the feedback service uses   feedback
                             it (model, input gathering, conversions)
:class:`RollCatalog`         rolls the twin has seen (roll events)        lab
:class:`DeadLetterSink`      the store's write, for dead letters          lab
:class:`ModelHost`           the predictor as the lab service uses it     lab
                             (active model, evaluation, hooks)
:class:`ApiHost`             what the HTTP API reads of the composed      twin.api, twin.routes.*,
                             twin (config, tag map, store, line state,    twin.export, twin.aas_api
                             metrics, health, predictor, feedback)
==========================  ==========================================  ===========================
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter

from core.samples import DeadLetter, Sample
from ontology.tagmap import Tag
from surrogates.runtime import SurrogateModel

if TYPE_CHECKING:  # the concrete types the API reads; importing them here at run time would be a cycle
    from ontology.tagmap import TagMap
    from twin.config import TwinConfig
    from twin.feedback.service import FeedbackService
    from twin.lab.service import LabService
    from twin.metrics import Metrics
    from twin.predictor import Predictor
    from twin.state import LineState
    from twin.store.base import Store

CommitHook = Callable[[Sequence[Sample]], None]


class LatestState(Protocol):
    """The line state: the newest committed sample per (line, tag) and the dashboard's event stream."""

    @property
    def latest(self) -> Mapping[tuple[str, str], Sample]: ...

    def broadcast(self, event: dict[str, Any]) -> None: ...


class CommitFeed(Protocol):
    """Hooks the pipeline calls (on the event loop) with every committed batch of samples."""

    @property
    def after_commit(self) -> list[CommitHook]: ...


class SampleSink(CommitFeed, Protocol):
    """Where a service submits samples it derives (tagged, committed and broadcast like any reading)."""

    async def submit(self, samples: Sequence[Sample]) -> None: ...


class AuditStore(Protocol):
    """The store's append-only audit trail (proposals, approvals, writes, feedback state)."""

    def append_audit(self, kind: str, ref: str, body: dict[str, Any], *, line_id: str | None = None,
                     actor: str | None = None, ts_ns: int | None = None) -> None: ...

    def audit(self, ref: str | None = None, line_id: str | None = None,
              limit: int = 100) -> list[dict[str, Any]]: ...


class TagCatalog(Protocol):
    """The tag map as services read it: specs by id and the source addresses of a tag."""

    @property
    def tags(self) -> Mapping[str, Tag]: ...

    def sources_of(self, tag_id: str) -> list[tuple[str, str, str]]: ...


class WriteReceipt(Protocol):
    """What a verified setpoint write returns (connectors.*.WriteResult)."""

    written: Any
    previous: Any
    readback: Any
    ts_ns: int


@runtime_checkable
class SetpointWriter(Protocol):
    """A connector that writes setpoints to the line (OPC-UA verified write, MQTT command + echo). Raises
    ``connectors.opcua.errors.SetpointWriteError`` (the one type both connectors raise)."""

    name: str
    kind: str

    async def write_setpoint(self, address: str, value: Any, *, reason: str = "",
                             actor: str = "") -> Any: ...


@runtime_checkable
class OwnsSetpoints(Protocol):
    """A writer that declares which addresses it writes (MQTT: ``writes.setpoints``); a writer without
    this method is asked for every address of its kind and refuses those it does not allow."""

    def owns_setpoint(self, address: str) -> bool: ...


class Scheduler(Protocol):
    """The daemon's scheduler (apscheduler). A job registered here runs every ``seconds`` (at most one
    instance at a time, missed runs coalesced) and its health (runs, errors, last error) is shown with the
    daemon's own jobs in /healthz ``jobs``. ``health`` (optional) is the service whose ``rounds`` the job
    records its failures in: the job catches them itself, so the scheduler only sees them through it."""

    def every(self, job_id: str, seconds: float, fn: Callable[[], Awaitable[Any]], *,
              health: ServiceHealth | None = None) -> None: ...

    def cancel(self, job_id: str) -> None: ...


class ErrorMetrics(Protocol):
    """The daemon's Prometheus metrics a service uses: the internal-errors counter and the registry its own
    metrics are added to."""

    internal_errors: Counter
    registry: CollectorRegistry


class ServiceHealth(Protocol):
    """What /healthz reads of a service (predictor, feedback): its newest failed round."""

    @property
    def last_error(self) -> str | None: ...

    @property
    def last_error_ns(self) -> int | None: ...

    @property
    def failures(self) -> int: ...


class Service(ServiceHealth, Protocol):
    """A service the daemon starts after the scheduler and the API and stops before the pipeline closes."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Predictions(Protocol):
    """The predictor as the feedback service uses it: the loaded model, the line inputs and the mapping of
    line values to model inputs (twin.predictor)."""

    model: SurrogateModel | None

    @property
    def foil_thickness_um(self) -> float: ...

    def rve_thickness(self) -> float: ...

    def gather(self, line_id: str, now: int) -> tuple[dict[str, float], Sample]: ...

    def model_inputs(self, values: dict[str, float]) -> dict[str, float]: ...

    def outputs_to_line(self, names: Sequence[str], mean: Any, *spreads: Any) -> None: ...


class RollCatalog(Protocol):
    """The rolls the twin has seen (the store's roll events): {line_id, step, roll_id, source_ts_ns, tag_id}."""

    def rolls(self, line_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]: ...


class DeadLetterSink(Protocol):
    """The store's ``write``: the lab service stores its dead letters through it (durable when it returns)."""

    def write(self, samples: Sequence[Sample], dead_letters: Sequence[DeadLetter] = (),
              rolls: Sequence[Any] = ()) -> Any: ...


class ModelHost(Protocol):
    """The predictor as the lab service uses it: the active model, the model family and the line-to-model
    mapping (``config``), the mapping run on any model (``evaluate``), switching the active model, and the
    observers called with each prediction."""

    model: SurrogateModel | None

    @property
    def config(self) -> Any: ...

    @property
    def after_predict(self) -> list[Callable[[Any], None]]: ...

    def evaluate(self, model: SurrogateModel, values: dict[str, float]) -> tuple[
        dict[str, float], dict[str, float], dict[str, float], bool, list[str]]: ...

    def use_model(self, model: SurrogateModel) -> None: ...


class ApiHost(Protocol):
    """What the HTTP API (``twin.api.create_app`` and the routers it mounts) reads of the composed twin.

    :class:`twin.daemon.Daemon` satisfies it; the API gets this, not the daemon's other members."""

    @property
    def config(self) -> TwinConfig: ...

    @property
    def tagmap(self) -> TagMap: ...

    @property
    def store(self) -> Store: ...

    @property
    def state(self) -> LineState: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def predictor(self) -> Predictor | None: ...

    @property
    def feedback(self) -> FeedbackService | None: ...

    @property
    def lab(self) -> LabService | None: ...

    def health(self) -> dict[str, Any]: ...

    async def refresh_metrics(self) -> None: ...
