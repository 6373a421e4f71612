"""Configuration of the MQTT connector (pydantic; importable without paho)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    def _pair(self) -> "TlsConfig":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file are given together or not at all")
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
