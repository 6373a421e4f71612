"""The daemon's configuration: one TOML file, validated as a whole before anything connects.

Environment overrides: ``TWIN_<SECTION>__<FIELD>[__<FIELD>...]=value`` (``__`` between levels,
a number selects a list item, values parse as JSON when they can, else as a string), e.g.
``TWIN_API__PORT=8080`` or ``TWIN_CONNECTORS__0__PASSWORD=secret``. Relative paths in the file are
resolved against the file's folder. Errors name the field path and what was expected.
"""

from __future__ import annotations

import enum
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from connectors import registry
from twin.feedback import FeedbackConfig
from twin.predictor import PredictorConfig
from twin.store.sqlite import Durability


class ConfigError(ValueError):
    """The configuration cannot be used; the message lists every problem with its field path."""


class StoreBackend(str, enum.Enum):
    EMBEDDED = "embedded"
    INFLUXDB = "influxdb"


class EmbeddedStoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path = Field(Path("var/twin.sqlite"), description="SQLite database file")
    durability: Durability = Field(Durability.PROCESS_CRASH,
                                   description="process_crash (WAL, synchronous=NORMAL) or power_loss (FULL)")


class InfluxWriteApi(str, enum.Enum):
    V2 = "v2"  # influxdb-client's batching WriteApi -> /api/v2/write (2.x, 3.x, 1.8+ compat, VictoriaMetrics)
    V1 = "v1"  # HTTP POST /write?db=&rp= (every 1.x incl. < 1.8, 3.x v1 compat), with the client's WritesRetry


class InfluxQueryApi(str, enum.Enum):
    INFLUXQL = "influxql"  # GET /query (1.x native, 2.x via DBRP mapping, 3.x v1 compat)


class InfluxPrecision(str, enum.Enum):
    NS = "ns"
    US = "us"
    MS = "ms"
    S = "s"


class RollStorage(str, enum.Enum):
    TAG = "tag"  # roll id is a tag: indexed, groupable in Grafana; one series per (tag, roll)
    FIELD = "field"  # roll id is a string field: no series per roll; a point's identity is (line, tag, ts)


class InfluxRetention(str, enum.Enum):
    SERVER = "server"  # the bucket's / retention policy's own retention; apply_retention does nothing
    DELETE = "delete"  # InfluxQL DELETE ... WHERE time < X (InfluxDB 1.x only)


class InfluxRetryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    interval_ms: int = Field(1000, ge=1, description="first retry delay (the client's WritesRetry doubles it)")
    max_retries: int = Field(5, ge=0, description="retries of one request before the outbox takes over")
    max_delay_ms: int = Field(30_000, ge=1, description="largest delay between two retries")
    max_time_ms: int = Field(180_000, ge=1, description="give one request up after this long in retries")
    exponential_base: float = Field(2.0, ge=1.0, description="growth of the retry delay")


class InfluxStoreConfig(BaseModel):
    """InfluxDB backend: a durable local outbox (SQLite) in front of InfluxDB (docs/influxdb.md)."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field("http://127.0.0.1:8086", description="InfluxDB base URL (https:// for TLS)")
    write_api: InfluxWriteApi = Field(InfluxWriteApi.V2,
                                      description="v2 (/api/v2/write, batching WriteApi) or v1 (/write)")
    query_api: InfluxQueryApi = Field(InfluxQueryApi.INFLUXQL, description="influxql (/query)")
    org: str = Field("", description="organisation (v2 write; InfluxDB 2.x)")
    bucket: str = Field("twin", description="bucket (v2 write; 1.8 compat: 'database/retention_policy')")
    database: str = Field("twin", description="database for InfluxQL queries and v1 writes (2.x: DBRP-mapped name)")
    retention_policy: str = Field("", description="retention policy for v1 writes and queries ('' = default)")
    token: str | None = Field(None, description="API token; pass it as TWIN_STORE__INFLUXDB__TOKEN")
    username: str | None = Field(None, description="user (1.x auth) instead of a token")
    password: str | None = Field(None, description="password; pass it as TWIN_STORE__INFLUXDB__PASSWORD")
    ca_file: Path | None = Field(None, description="CA bundle for an https:// url (None: system CAs)")
    precision: InfluxPrecision = Field(InfluxPrecision.NS, description="write precision: ns, us, ms or s")
    timeout_ms: int = Field(10_000, ge=100, description="HTTP timeout of one request")
    batch_size: int = Field(5000, ge=1, description="points per write request")
    flush_interval_ms: int = Field(1000, ge=1, description="send a partial batch after this long")
    max_in_flight_batches: int = Field(4, ge=1, description="batches handed to the client before it confirms them")
    retry: InfluxRetryConfig = Field(default_factory=InfluxRetryConfig, description="retry with backoff")
    outbox_path: Path = Field(Path("var/twin-outbox.sqlite"), description="local outbox (SQLite file), one per daemon")
    outbox_capacity: int = Field(5_000_000, ge=1,
                                 description="points the outbox holds; beyond, the oldest are dropped (counted)")
    outbox_durability: Durability = Field(Durability.PROCESS_CRASH, description="process_crash or power_loss")
    dedupe_window_s: float = Field(3600.0, ge=0, description="keys of written samples are remembered this long "
                                                               "(exact duplicate counts, first value wins)")
    roll_storage: RollStorage = Field(RollStorage.TAG, description="roll id as a tag or as a field")
    retention: InfluxRetention = Field(InfluxRetention.SERVER, description="server (bucket retention) or delete (1.x)")
    read_barrier_s: float = Field(2.0, ge=0, description="a query waits this long for earlier writes to arrive")
    writer_id: str = Field("", description="tag on dead letters naming this daemon ('' = host name)")

    @model_validator(mode="after")
    def _consistent(self) -> "InfluxStoreConfig":
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https:// (got {self.url!r})")
        if self.token is not None and self.username is not None:
            raise ValueError("give a token or a username/password, not both")
        if self.outbox_capacity < self.batch_size * self.max_in_flight_batches:
            raise ValueError(f"outbox_capacity ({self.outbox_capacity}) must hold the batches in flight "
                             f"(batch_size x max_in_flight_batches = {self.batch_size * self.max_in_flight_batches})")
        if self.write_api is InfluxWriteApi.V2 and not self.bucket:
            raise ValueError("write_api = 'v2' needs a bucket")
        if not self.database:
            raise ValueError("database is needed for InfluxQL queries")
        return self


class StoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: StoreBackend = Field(StoreBackend.EMBEDDED, description="embedded or influxdb")
    embedded: EmbeddedStoreConfig = Field(default_factory=EmbeddedStoreConfig, description="embedded store")
    influxdb: InfluxStoreConfig = Field(default_factory=InfluxStoreConfig, description="InfluxDB store")
    retention_days: float = Field(365.0, gt=0, description="samples older than this are deleted")
    dead_letter_retention_days: float = Field(90.0, gt=0, description="dead letters older than this are deleted")


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(5000, ge=1, le=1_000_000, description="samples per store commit, at most")
    linger_ms: float = Field(10.0, ge=0, le=10_000, description="wait this long for more data before a commit")
    max_pending: int = Field(50_000, ge=1, description="tagged samples waiting for a commit before intake waits")
    flush_interval_s: float = Field(1.0, gt=0, description="periodic flush job (safety net), seconds")
    retention_interval_s: float = Field(3600.0, gt=0, description="how often the retention job runs")
    health_interval_s: float = Field(5.0, gt=0, description="how often the health job refreshes gauges")
    stream_queue: int = Field(1000, ge=1, description="per live-stream client queue; overflow drops oldest, counted")
    max_future_skew_s: float | None = Field(
        300.0, ge=0, le=100 * 365 * 86400.0,
        description="a source timestamp more than this after its receive time is a clock_skew dead letter "
                    "(None: no limit; replayed files are exempt)")
    max_past_age_s: float | None = Field(
        400 * 86400.0, ge=0, le=200 * 365 * 86400.0,
        description="a source timestamp more than this before its receive time is a clock_skew dead letter "
                    "(None: no limit; replayed files are exempt: they are history)")
    commit_retry_initial_s: float = Field(0.05, gt=0, le=60, description="first delay before a failed commit is "
                                                                         "retried (transient store errors)")
    commit_retry_max_s: float = Field(5.0, gt=0, le=600, description="longest delay between commit retries")
    shutdown_commit_attempts: int = Field(3, ge=1, le=100, description="commit attempts at shutdown while the store "
                                                                       "fails, before reporting what was not stored")
    commit_stall_s: float = Field(3.0, gt=0, description="a store commit still in flight after this long makes "
                                                          "/healthz degraded (a locked or unreachable store)")


class Scope(str, enum.Enum):
    READ = "read"
    WRITE = "write"


class ApiToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, description="who holds it (appears in the audit trail)")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$",
                        description="hex SHA-256 of the token (`twin token` prints a new token and its hash)")
    scopes: list[Scope] = Field(default_factory=lambda: [Scope.READ], description="read and/or write")


class ApiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="serve the HTTP API and dashboard")
    tokens: list[ApiToken] = Field(default_factory=list,
                                   description="bearer tokens; none = reads open, writes refused (read-only)")
    host: str = Field("127.0.0.1", description="bind address (loopback by default)")
    port: int = Field(8000, ge=0, le=65535, description="port (0: any free port)")


class LogLevel(str, enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def _connector_union() -> Any:
    models = tuple(registry.config_models())
    return Annotated[Union[models], Field(discriminator="kind")]  # type: ignore[valid-type]


ConnectorConfig = _connector_union()


class TwinConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    line_id: str = Field("pilot-1", min_length=1, description="default line id for readings that name none")
    tagmap: Path = Field(..., description="tag map file (TOML): source addresses -> tags")
    log_level: LogLevel = Field(LogLevel.INFO, description="debug, info, warning or error")
    store: StoreConfig = Field(default_factory=StoreConfig, description="where samples go")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="batching and queues")
    api: ApiConfig = Field(default_factory=ApiConfig, description="HTTP API")
    connectors: list[ConnectorConfig] = Field(default_factory=list, description="data sources")  # type: ignore[valid-type]
    predictor: PredictorConfig = Field(default_factory=PredictorConfig, description="surrogate predictions")
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig, description="calender setting proposals")

    @model_validator(mode="after")
    def _feedback_needs_predictor(self) -> "TwinConfig":
        if self.feedback.enabled and not self.predictor.enabled:
            raise ValueError("feedback.enabled needs predictor.enabled: the proposals come from the surrogate")
        return self


def _apply_env(raw: dict[str, Any], environ: dict[str, str]) -> list[str]:
    applied = []
    for key, text in sorted(environ.items()):
        if not key.startswith("TWIN_"):
            continue
        path = [p.lower() for p in key[len("TWIN_"):].split("__") if p]
        if not path or path[0] not in TwinConfig.model_fields:
            continue  # not ours (e.g. TWIN_HOME)
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        node: Any = raw
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"environment {key}: list index {part!r} does not exist")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
        applied.append(key)
    return applied


def _resolve_paths(model: BaseModel, base: Path) -> None:
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, Path) and not value.is_absolute():
            object.__setattr__(model, name, (base / value).resolve())
        elif isinstance(value, BaseModel):
            _resolve_paths(value, base)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, BaseModel):
                    _resolve_paths(item, base)


def format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"configuration {origin} is invalid ({err.error_count()} problem(s)):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        given = e.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  {loc}: {e['msg']}{shown}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, *, data: dict[str, Any] | None = None,
                environ: dict[str, str] | None = None) -> TwinConfig:
    """Load, apply environment overrides, validate; raise ConfigError naming every bad field."""
    if (path is None) == (data is None):
        raise TypeError("give a path or data")
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text())
        except FileNotFoundError as err:
            raise ConfigError(f"configuration {p}: file not found") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"configuration {p}: invalid TOML: {err}") from err
        base, origin = p.resolve().parent, str(p)
    else:
        raw = json.loads(json.dumps(data))
        base, origin = Path.cwd(), "<data>"
    _apply_env(raw, dict(os.environ if environ is None else environ))
    try:
        cfg = TwinConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from err
    _resolve_paths(cfg, base)
    return cfg


def check_config(path: str | Path) -> tuple[TwinConfig, Any]:
    """Everything start-up checks, without connecting: the config, the tag map it names, and that every
    input role of an enabled predictor / feedback service resolves to a tag (twin/roles.py)."""
    cfg, tagmap, _, _ = check_config_report(path)
    return cfg, tagmap


def check_config_report(path: str | Path) -> tuple[TwinConfig, Any, list[Any], list[str]]:
    """:func:`check_config` with its findings: (config, tag map, role resolutions, warnings).

    Raises ConfigError naming every problem; a role that does not resolve is named with its field
    path, the ontology term and role it needs, and the fix."""
    from ontology.tagmap import TagMap, TagMapError
    from twin.roles import check_roles

    cfg = load_config(path)
    try:
        tagmap = TagMap.load(cfg.tagmap)
    except TagMapError as err:
        raise ConfigError(str(err)) from err
    for c in cfg.connectors:
        if getattr(c, "kind", None) == "replay" and not Path(c.path).exists():
            raise ConfigError(f"connectors.{c.name}.path: recorded file {c.path} does not exist")
    resolutions, errors, warnings = check_roles(cfg, tagmap)
    if errors:
        raise ConfigError(f"configuration {path}: {len(errors)} input role(s) do not resolve to a tag of "
                          f"{cfg.tagmap}:\n  " + "\n  ".join(errors))
    return cfg, tagmap, resolutions, warnings
