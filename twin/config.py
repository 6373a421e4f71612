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
from typing import TYPE_CHECKING, Annotated, Any, Protocol, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from connectors import registry
from connectors.replay.config import ReplayConnectorConfig
from ontology.tagmap import TagMap, TagMapError
from twin.feedback import FeedbackConfig
from twin.lab.config import LabConfig
from twin.predictor import PredictorConfig
from twin.roles import check_roles
from twin.store.config import (
    Durability,
    EmbeddedStoreConfig,
    InfluxPrecision,
    InfluxQueryApi,
    InfluxRetention,
    InfluxRetryConfig,
    InfluxStoreConfig,
    InfluxWriteApi,
    RollStorage,
    StoreBackend,
    StoreConfig,
)

__all__ = [  # the store's configuration types are defined in twin/store/config.py and composed here
    "ApiConfig", "ApiToken", "ConfigError", "ConnectorConfig", "Durability", "EmbeddedStoreConfig", "InfluxPrecision",
    "InfluxQueryApi", "InfluxRetention", "InfluxRetryConfig", "InfluxStoreConfig", "InfluxWriteApi", "LogLevel",
    "PipelineConfig", "RollStorage", "Scope", "StoreBackend", "StoreConfig", "TwinConfig", "check_config",
    "check_config_report", "format_validation_error", "load_config",
]


class ConfigError(ValueError):
    """The configuration cannot be used; the message lists every problem with its field path."""


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
    # a Union over a tuple of classes built at run time (the registry): there is no `X | Y` spelling for it
    return Annotated[Union[models], Field(discriminator="kind")]  # noqa: UP007


class ConnectorSettings(Protocol):
    """What every registered connector kind's configuration has (the type checker's view of ConnectorConfig)."""

    kind: str
    name: str


if TYPE_CHECKING:
    ConnectorConfig = ConnectorSettings
else:  # the discriminated union of the registered kinds' config models, built from the registry at import
    ConnectorConfig = _connector_union()


class TwinConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    line_id: str = Field("pilot-1", min_length=1, description="default line id for readings that name none")
    tagmap: Path = Field(..., description="tag map file (TOML): source addresses -> tags")
    log_level: LogLevel = Field(LogLevel.INFO, description="debug, info, warning or error")
    store: StoreConfig = Field(default_factory=StoreConfig, description="where samples go")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="batching and queues")
    api: ApiConfig = Field(default_factory=ApiConfig, description="HTTP API")
    connectors: list[ConnectorConfig] = Field(default_factory=list, description="data sources")
    predictor: PredictorConfig = Field(default_factory=PredictorConfig, description="surrogate predictions")
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig, description="calender setting proposals")
    lab: LabConfig = Field(default_factory=LabConfig, description="offline lab results, shadow models, drift")

    @model_validator(mode="after")
    def _feedback_needs_predictor(self) -> TwinConfig:
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
    for name in type(model).model_fields:
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
    cfg = load_config(path)
    try:
        tagmap = TagMap.load(cfg.tagmap)
    except TagMapError as err:
        raise ConfigError(str(err)) from err
    for c in cfg.connectors:
        if isinstance(c, ReplayConnectorConfig) and not Path(c.path).exists():
            raise ConfigError(f"connectors.{c.name}.path: recorded file {c.path} does not exist")
    resolutions, errors, warnings = check_roles(cfg, tagmap)
    if errors:
        raise ConfigError(f"configuration {path}: {len(errors)} input role(s) do not resolve to a tag of "
                          f"{cfg.tagmap}:\n  " + "\n  ".join(errors))
    return cfg, tagmap, resolutions, warnings
