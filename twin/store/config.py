"""Configuration of the store backends (composed into the daemon's configuration by twin/config.py).

This module imports nothing of the project: the backends (twin/store/sqlite.py, twin/store/influx*)
and twin/config.py both import it, so neither imports the other.
"""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Durability(str, enum.Enum):
    PROCESS_CRASH = "process_crash"  # synchronous=NORMAL: survives kill -9 of the daemon
    POWER_LOSS = "power_loss"  # synchronous=FULL: survives loss of power / OS crash too


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
    def _consistent(self) -> InfluxStoreConfig:
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
