"""Configuration of the MQTT connector (pydantic; importable without paho)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connectors.common import BackoffConfig, QueueConfig


class MqttProtocol(str, enum.Enum):
    V311 = "v311"
    V5 = "v5"


class TimestampPolicy(str, enum.Enum):
    REJECT = "reject"  # a reading without "ts" is a dead letter (keeps redelivery idempotent)
    RECEIVE_TIME = "receive_time"  # stamp it with the time it arrived (redeliveries may duplicate)


class TlsVerify(str, enum.Enum):
    VERIFY = "verify"  # check the broker certificate and host name (the default)
    NO_HOSTNAME = "no_hostname"  # check the chain but not the host name (brokers addressed by IP)


class TlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker certificate (None: system CAs)")
    cert_file: Path | None = Field(None, description="client certificate for mutual TLS")
    key_file: Path | None = Field(None, description="client key for mutual TLS")
    verify: TlsVerify = Field(TlsVerify.VERIFY, description="verify or no_hostname")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file are given together or not at all")
        return self


class PayloadFormat(str, enum.Enum):
    JSON = "json"  # a JSON document; the paths below pick its fields
    NUMBER = "number"  # the payload is one plain number ("61.3"); stamped with the receive time


class QualityName(str, enum.Enum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


TIMESTAMP_FORMATS = ("auto", "iso8601", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns")


def _check_path(v: str | None, what: str) -> str | None:
    if v is None or v in (".", "$"):
        return v
    body = v[2:] if v.startswith("$.") else v
    if len(v) > 256 or not body or any(part == "" for part in body.split(".")):
        raise ValueError(f"{what}: {v!r} is not a dotted path (a.b.0.c; '.' = the item itself; '$.' = from the "
                         "message root)")
    return v


class PayloadMapping(BaseModel):
    """One ``[[connectors.payloads]]`` table: how messages on matching topics become readings.

    Paths are dotted (``data.0.v``; a number selects a list item); in ``readings`` mode they are
    relative to each list item, ``$.`` starts at the message root, ``.`` is the item itself."""

    model_config = ConfigDict(extra="forbid")
    topic: str = Field(..., min_length=1, max_length=512,
                       description="topic pattern (+ and # wildcards) this mapping applies to; the first match wins")
    format: PayloadFormat = Field(PayloadFormat.JSON, description="json or number (a plain number)")
    value: str = Field("value", description="path of the value")
    timestamp: str | None = Field("ts", description="path of the source timestamp (None: none in the payload)")
    timestamp_format: str = Field("auto", description=(
        "auto (ISO 8601 text or epoch seconds), iso8601, epoch_s, epoch_ms, epoch_us, epoch_ns, or a strptime "
        "format such as '%Y-%m-%d %H:%M:%S'"))
    timezone: str = Field("UTC", description="IANA zone of timestamps without offset (e.g. Europe/Berlin)")
    quality: str | None = Field(None, description="path of the quality (good/uncertain/bad, 0/1/2, or quality_map)")
    quality_map: dict[str, QualityName] = Field(default_factory=dict,
                                                description="source quality text -> good / uncertain / bad")
    unit: str | None = Field(None, min_length=1, max_length=64, description="fixed unit of every value")
    unit_path: str | None = Field(None, description="path of the unit (overrides unit when present)")
    readings: str | None = Field(None, description="path of a list: one reading per item")
    address: str | None = Field(None, description=(
        "path (in the item) of a name appended to the topic: the reading's address is <topic>/<name>"))
    missing_timestamp: TimestampPolicy | None = Field(None, description=(
        "reject or receive_time for readings without a timestamp (default: the connector's)"))

    @field_validator("value", "timestamp", "quality", "unit_path", "readings", "address")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return _check_path(v, "path")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as 'Europe/Berlin' or 'UTC')") from err
        return v

    @model_validator(mode="after")
    def _check(self) -> PayloadMapping:
        if self.timestamp_format not in TIMESTAMP_FORMATS and "%" not in self.timestamp_format:
            raise ValueError(f"timestamp_format {self.timestamp_format!r}: one of {', '.join(TIMESTAMP_FORMATS)} "
                             "or a strptime format with % directives")
        if self.format is PayloadFormat.NUMBER and (self.readings or self.address or self.quality or self.unit_path):
            raise ValueError("format = 'number' carries only the value: readings, address, quality and unit_path "
                             "need format = 'json'")
        if self.address is not None and self.readings is None:
            raise ValueError("address (a name per list item) needs readings (the list path)")
        return self


class SparkplugConfig(BaseModel):
    """``[connectors.sparkplug]``: Sparkplug B host application (births, aliases, sequence, rebirth, deaths)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="subscribe to spBv1.0 and decode Sparkplug B payloads")
    groups: list[str] = Field(default_factory=lambda: ["+"], min_length=1,
                              description="Sparkplug group ids to subscribe to ('+': all)")
    host_id: str | None = Field(None, min_length=1, max_length=128, description=(
        "host application id: publishes the retained spBv1.0/STATE/<host_id> birth (online) and death (will)"))
    rebirth_min_interval_s: float = Field(5.0, ge=0, description="at most one rebirth request per node this often")
    stale_on_death: bool = Field(True, description=(
        "on NDEATH/DDEATH, repeat each metric's last value with quality bad (the predictor and feedback stop "
        "using it)"))
    max_metrics: int = Field(100_000, ge=1, description="metrics remembered from births, at most")

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        for g in v:
            if g != "+" and (not g or any(c in g for c in "/+#")):
                raise ValueError(f"group id {g!r}: '+' or a name without /, + or #")
        return v


class CommandFormat(str, enum.Enum):
    JSON = "json"  # {"value": v, "ts": "<ISO 8601>", "id": "<request id>"}
    NUMBER = "number"  # the value as plain text


class MqttSetpoint(BaseModel):
    """One writable setpoint (the allow-list: nothing else is ever published as a command)."""

    model_config = ConfigDict(extra="forbid")
    address: str = Field(..., min_length=1, max_length=512, description=(
        "the setpoint tag's MQTT source address in the tag map (a topic or pattern; Sparkplug: "
        "group/edge_node/device/metric)"))
    command_topic: str | None = Field(None, min_length=1, max_length=512, description=(
        "topic the command is published on (QoS 1); {line} is the connector's line id. Not with sparkplug"))
    echo_topic: str | None = Field(None, min_length=1, max_length=512, description=(
        "topic on which the controller confirms the value (default: address); subscribed automatically"))
    format: CommandFormat = Field(CommandFormat.JSON, description="json or number")
    value_key: str = Field("value", min_length=1, max_length=64, description="key of the value in a json command")
    sparkplug: bool = Field(False, description="write with a Sparkplug B DCMD (NCMD for a node metric)")
    min: float | None = Field(None, allow_inf_nan=False, description="refuse values below this")
    max: float | None = Field(None, allow_inf_nan=False, description="refuse values above this")
    retain: bool = Field(False, description="publish the command retained")

    @model_validator(mode="after")
    def _check(self) -> MqttSetpoint:
        if self.sparkplug and self.command_topic is not None:
            raise ValueError(f"setpoint {self.address!r}: a Sparkplug write goes to the DCMD topic; drop command_topic")
        if not self.sparkplug and self.command_topic is None:
            raise ValueError(f"setpoint {self.address!r}: command_topic is required (or sparkplug = true)")
        if self.command_topic and any(c in self.command_topic for c in "+#"):
            raise ValueError(f"command_topic {self.command_topic!r}: no wildcards")
        if self.echo_topic and any(c in self.echo_topic for c in "+#"):
            raise ValueError(f"echo_topic {self.echo_topic!r}: no wildcards")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"setpoint {self.address!r}: min {self.min} above max {self.max}")
        return self


class MqttWriteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    setpoints: list[MqttSetpoint] = Field(default_factory=list,
                                          description="setpoints the twin may write; any other write is refused")
    confirm_timeout_s: float = Field(5.0, gt=0, le=600,
                                     description="how long to wait for the echo of the written value")
    float_tolerance: float = Field(1e-6, ge=0, description="relative tolerance of the echoed value")

    @model_validator(mode="after")
    def _unique(self) -> MqttWriteConfig:
        seen = [s.address for s in self.setpoints]
        if len(set(seen)) != len(seen):
            raise ValueError(f"writes.setpoints: each address once (got {seen})")
        return self


class MqttConnectorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["mqtt"] = "mqtt"
    name: str = Field("mqtt", description="name in logs and metrics")
    host: str = Field("127.0.0.1", description="broker host")
    port: int = Field(1883, ge=1, le=65535, description="broker port (8883 for TLS)")
    client_id: str = Field("pilotline-twin", min_length=1, max_length=128,
                           description="fixed client id: the broker keeps the persistent session under it")
    protocol: MqttProtocol = Field(MqttProtocol.V5, description="v5 or v311")
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0,
                                  description="how long the broker keeps the session (and queues QoS 1) while we are away")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive")
    topics: list[str] = Field(default_factory=lambda: ["pilot/#"], min_length=1,
                              description="subscriptions (QoS 1); the tag map maps each topic to a tag")
    batch_topic_suffix: str = Field("batch", description="a topic ending in /<this> carries a JSON batch")
    username: str | None = Field(None, description="user name")
    password: str | None = Field(None, description="password (prefer the TWIN_CONNECTORS__<i>__PASSWORD env var)")
    tls: TlsConfig | None = Field(None, description="TLS settings; absent = plain TCP")
    missing_timestamp: TimestampPolicy = Field(TimestampPolicy.REJECT,
                                               description="reject or receive_time for readings without ts")
    line_id: str | None = Field(None, description="line id for readings whose topic names none")
    queue: QueueConfig = Field(default_factory=QueueConfig, description="bounded queue")
    backoff: BackoffConfig = Field(default_factory=BackoffConfig, description="reconnect backoff")
    max_payload_bytes: int = Field(4 * 1024 * 1024, ge=64, description="larger payloads become dead letters")
    payloads: list[PayloadMapping] = Field(default_factory=list, description=(
        "field mappings per topic pattern (plain numbers, custom JSON fields); topics no mapping matches use "
        "the built-in format"))
    sparkplug: SparkplugConfig = Field(default_factory=SparkplugConfig, description="Sparkplug B host application")
    writes: MqttWriteConfig = Field(default_factory=MqttWriteConfig, description="setpoint write-back (feedback)")
