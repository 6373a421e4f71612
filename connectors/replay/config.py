"""Configuration of the replay connector (recorded line data through the live path)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from connectors.common import QueueConfig


class ReplaySpeed(str, enum.Enum):
    REALTIME = "realtime"  # the recorded pace
    FACTOR = "factor"  # speed_factor times the recorded pace
    MAX = "max"  # as fast as the pipeline takes it


class ReplayFormat(str, enum.Enum):
    AUTO = "auto"  # by extension: .csv / .csv.gz / .jsonl / .jsonl.gz / .ndjson
    CSV = "csv"
    JSONL = "jsonl"


class TimestampMode(str, enum.Enum):
    ORIGINAL = "original"  # keep the recorded source timestamps (idempotent re-replay)
    SHIFT_TO_NOW = "shift_to_now"  # shift so the first row is 'now' (demo, live dashboards)


class Repeat(str, enum.Enum):
    ONCE = "once"
    FOREVER = "forever"  # loop; with shift_to_now each pass continues the time axis


class ReplayConnectorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["replay"] = "replay"
    name: str = Field("replay", description="name in logs and metrics")
    path: Path = Field(..., description="recorded file (CSV or JSONL, optionally .gz)")
    format: ReplayFormat = Field(ReplayFormat.AUTO, description="auto, csv or jsonl")
    time_column: str = Field("timestamp", description="column / key holding the source timestamp")
    line_id: str | None = Field(None, description="line id of the recording (default: the daemon's)")
    speed: ReplaySpeed = Field(ReplaySpeed.MAX, description="realtime, factor or max")
    speed_factor: float = Field(1.0, gt=0, le=1e6, description="with speed = factor: N times faster")
    timestamps: TimestampMode = Field(TimestampMode.ORIGINAL, description="original or shift_to_now")
    repeat: Repeat = Field(Repeat.ONCE, description="once or forever")
    rows_per_batch: int = Field(200, ge=1, le=100_000, description="rows per delivery at max speed")
    queue: QueueConfig = Field(default_factory=QueueConfig, description="bounded queue")

    @model_validator(mode="after")
    def _check(self) -> ReplayConnectorConfig:
        if self.repeat is Repeat.FOREVER and self.timestamps is TimestampMode.ORIGINAL:
            raise ValueError("repeat = 'forever' needs timestamps = 'shift_to_now' "
                             "(with original timestamps every pass after the first is a duplicate)")
        return self
