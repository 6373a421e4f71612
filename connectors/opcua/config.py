"""Configuration of the OPC-UA connector (pydantic only; importable without asyncua)."""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.common import BackoffConfig, QueueConfig

_NODE_ID = re.compile(r"^(?:ns=\d+;)?(?:i=\d+|s=.+|g=[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}|b=.+)$")


def check_node_id(text: str) -> str:
    """A NodeId string in the OPC-UA text form (ns=2;s=..., i=85, ns=3;g=..., ns=1;b=...)."""
    if not _NODE_ID.match(text.strip()):
        raise ValueError(f"{text!r} is not a NodeId (expected e.g. 'ns=2;s=Calender.GapActual' or 'i=85')")
    return text.strip()


class AcquisitionMode(str, enum.Enum):
    SUBSCRIPTION = "subscription"  # monitored items: the server reports changes (the default)
    POLLING = "polling"  # periodic Read, for servers without subscriptions


class SecurityPolicy(str, enum.Enum):
    NONE = "none"  # no signing, no encryption: only where configured (e.g. the simulator on loopback)
    BASIC256SHA256 = "basic256sha256"
    AES128_SHA256_RSAOAEP = "aes128_sha256_rsaoaep"
    AES256_SHA256_RSAPSS = "aes256_sha256_rsapss"


class SecurityMode(str, enum.Enum):
    SIGN = "sign"
    SIGN_AND_ENCRYPT = "sign_and_encrypt"


class ServerCertificateCheck(str, enum.Enum):
    TRUST_STORE = "trust_store"  # the server certificate must be in trust_dir (or issued by a CA there)
    TRUST_ON_FIRST_USE = "trust_on_first_use"  # first certificate seen is stored and trusted; a change is refused


class TimestampFallback(str, enum.Enum):
    SERVER_THEN_RECEIVE = "server_then_receive"  # SourceTimestamp, else ServerTimestamp, else receive time
    RECEIVE = "receive"  # SourceTimestamp, else receive time
    REJECT = "reject"  # SourceTimestamp only: a value without one becomes a dead letter


class DeadbandType(str, enum.Enum):
    NONE = "none"
    ABSOLUTE = "absolute"  # change must exceed deadband_value in the variable's unit
    PERCENT = "percent"  # change must exceed deadband_value % of the EURange (server must support it)


class DataChangeTrigger(str, enum.Enum):
    STATUS_VALUE = "status_value"  # report value or status changes (the OPC-UA default)
    STATUS_VALUE_TIMESTAMP = "status_value_timestamp"  # also report a new SourceTimestamp with an equal value
    STATUS = "status"  # report status changes only


class PollEmit(str, enum.Enum):
    CHANGES = "changes"  # a polled value is delivered when value, status or source timestamp changed
    ALL = "all"  # every polled value is delivered (the store deduplicates on the source timestamp)


class GapMarker(str, enum.Enum):
    READING = "reading"  # a RawReading on '__connector__/<name>/gap' (value = gap length in s) + counters
    COUNTER_ONLY = "counter_only"  # counters and connector.gaps only


class SecurityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: SecurityPolicy = Field(SecurityPolicy.BASIC256SHA256,
                                   description="none, basic256sha256, aes128_sha256_rsaoaep or aes256_sha256_rsapss; "
                                               "'none' is used only when configured here")
    mode: SecurityMode = Field(SecurityMode.SIGN_AND_ENCRYPT, description="sign or sign_and_encrypt")
    certificate: Path = Field(Path("pki/own/cert.der"),
                              description="client application certificate (DER or PEM; `twin opcua make-cert`)")
    private_key: Path = Field(Path("pki/own/key.pem"), description="private key of the client certificate (PEM)")
    private_key_password: SecretStr | None = Field(None, description="password of an encrypted private key")
    trust_dir: Path = Field(Path("pki/trusted"),
                            description="trusted server certificates (`twin opcua trust CERT` copies one here)")
    rejected_dir: Path = Field(Path("pki/rejected"),
                               description="an untrusted server certificate is saved here for review")
    server_certificate_check: ServerCertificateCheck = Field(
        ServerCertificateCheck.TRUST_STORE, description="trust_store (default) or trust_on_first_use")


class SubscriptionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    publishing_interval_ms: float = Field(100.0, gt=0, le=3_600_000,
                                          description="how often the server sends the collected changes")
    sampling_interval_ms: float = Field(-1.0, ge=-1, le=3_600_000,
                                        description="how often the server samples each value "
                                                    "(-1: the publishing interval, 0: as fast as possible)")
    queue_size: int = Field(10, ge=1, le=100_000,
                            description="changes the server keeps per item between publishes (oldest discarded, "
                                        "counted as overflows)")
    deadband_type: DeadbandType = Field(DeadbandType.NONE, description="none, absolute or percent")
    deadband_value: float = Field(0.0, ge=0, description="deadband size (absolute unit or percent of EURange)")
    trigger: DataChangeTrigger = Field(DataChangeTrigger.STATUS_VALUE,
                                       description="status_value, status_value_timestamp or status")
    keepalive_count: int = Field(20, ge=1, le=10_000,
                                 description="empty publishes the server may skip before a keep-alive")
    lifetime_count: int = Field(600, ge=3, le=1_000_000,
                                description="publishing intervals without a client request before the server "
                                            "drops the subscription (>= 3 x keepalive_count)")
    max_items_per_subscription: int = Field(1000, ge=1, le=100_000,
                                            description="items are split over several subscriptions above this")
    max_notifications_per_publish: int = Field(0, ge=0, description="0: no limit")
    fast_decode: bool = Field(True, description="decode data changes with the connector's own decoder "
                                                "(connectors/opcua/fastdecode.py, about 10x less CPU per change); "
                                                "false: asyncua's generic decoder")

    @model_validator(mode="after")
    def _counts(self) -> SubscriptionConfig:
        if self.lifetime_count < 3 * self.keepalive_count:
            raise ValueError("lifetime_count must be at least 3 x keepalive_count (OPC-UA Part 4, 5.13.2)")
        if self.deadband_type is not DeadbandType.NONE and self.deadband_value <= 0:
            raise ValueError(f"deadband_type = {self.deadband_type.value!r} needs deadband_value > 0")
        return self


class PollingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    interval_ms: float = Field(1000.0, gt=0, le=3_600_000, description="time between two Read requests")
    emit: PollEmit = Field(PollEmit.CHANGES, description="changes or all")
    max_nodes_per_read: int = Field(500, ge=1, le=100_000, description="nodes per Read request")


class WriteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allowed_nodes: list[str] = Field(default_factory=list,
                                     description="NodeIds the twin may write (setpoints); any other write is refused")

    @field_validator("allowed_nodes")
    @classmethod
    def _ids(cls, v: list[str]) -> list[str]:
        return [check_node_id(x) for x in v]
    verify_timeout_s: float = Field(5.0, gt=0, le=600, description="how long to wait for the read-back to match")
    float_tolerance: float = Field(1e-6, ge=0,
                                   description="relative tolerance of the read-back of Float/Double values")


class OpcUaConnectorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["opcua"] = Field("opcua", description="connector kind (selects this model in [[connectors]])")
    name: str = Field("opcua", min_length=1, description="name in logs, metrics and the gap address")
    url: str = Field("opc.tcp://127.0.0.1:4840", description="server endpoint, opc.tcp://HOST:PORT[/path]")
    mode: AcquisitionMode = Field(AcquisitionMode.SUBSCRIPTION, description="subscription or polling")
    nodes: list[str] = Field(default_factory=list,
                             description="NodeIds to acquire, e.g. 'ns=2;s=Calender.GapActual'")
    browse_roots: list[str] = Field(default_factory=list,
                                    description="every variable below these nodes is acquired too "
                                                "(browsed again after each reconnect)")
    browse_max_depth: int = Field(6, ge=1, le=50, description="depth limit below each browse root")
    line_id: str | None = Field(None, description="line id of the readings (default: the daemon's)")
    username: str | None = Field(None, description="user name (None: anonymous)")
    password: SecretStr | None = Field(None,
                                       description="password (prefer the TWIN_CONNECTORS__<i>__PASSWORD env var)")
    security: SecurityConfig = Field(default_factory=SecurityConfig, description="message security and PKI")
    subscription: SubscriptionConfig = Field(default_factory=SubscriptionConfig,
                                             description="subscription settings (mode = subscription)")
    polling: PollingConfig = Field(default_factory=PollingConfig, description="polling settings (mode = polling)")
    timestamp_fallback: TimestampFallback = Field(TimestampFallback.SERVER_THEN_RECEIVE,
                                                  description="server_then_receive, receive or reject")
    gap_marker: GapMarker = Field(GapMarker.READING, description="reading or counter_only")
    writes: WriteConfig = Field(default_factory=WriteConfig, description="setpoint writes (feedback service)")
    request_timeout_s: float = Field(4.0, gt=0, le=600, description="timeout of one OPC-UA request")
    watchdog_interval_s: float = Field(1.0, gt=0, le=600,
                                       description="how often the connection is probed (server status read)")
    session_timeout_s: float = Field(60.0, ge=1, le=86_400, description="requested session timeout")
    application_uri: str | None = Field(None,
                                        description="client application URI (default: the URI in the client "
                                                    "certificate, else urn:pilotline-twin:client)")
    queue: QueueConfig = Field(default_factory=QueueConfig, description="bounded queue")
    backoff: BackoffConfig = Field(default_factory=lambda: BackoffConfig(initial_s=0.5, max_s=5.0),
                                   description="reconnect backoff (capped at 5 s: a rebooted PLC is found fast)")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith("opc.tcp://") or len(v) <= len("opc.tcp://"):
            raise ValueError(f"url must look like opc.tcp://HOST:PORT, got {v!r}")
        return v

    @field_validator("nodes", "browse_roots")
    @classmethod
    def _node_ids(cls, v: list[str]) -> list[str]:
        return [check_node_id(x) for x in v]

    @model_validator(mode="after")
    def _check(self) -> OpcUaConnectorConfig:
        if not self.nodes and not self.browse_roots:
            raise ValueError("list the NodeIds to acquire in 'nodes' and/or a folder in 'browse_roots'")
        if (self.password is not None) and self.username is None:
            raise ValueError("a password needs a username")
        host = (urlparse(self.url).hostname or "").lower()
        loopback = host in ("localhost", "::1") or host.startswith("127.")
        if self.password is not None and self.security.policy is SecurityPolicy.NONE and not loopback:
            raise ValueError("a password over security policy 'none' to a remote server could travel in clear text; "
                             "use a secure policy (or a loopback server)")
        if self.subscription.publishing_interval_ms * self.subscription.keepalive_count > 600_000:
            raise ValueError("publishing_interval_ms x keepalive_count exceeds 10 minutes: a dead server "
                             "would go unnoticed that long")
        return self
