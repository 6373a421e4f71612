"""Config fields every connector shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from connectors.base import OverflowPolicy


class QueueConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_batches: int = Field(1000, ge=1, le=1_000_000,
                             description="bounded queue between the connector and the pipeline, in deliveries")
    overflow: OverflowPolicy = Field(OverflowPolicy.BLOCK,
                                     description="block (back-pressure into the source; nothing dropped), drop_oldest or drop_newest "
                                                 "(shed load: drops are counted, and an MQTT delivery dropped is "
                                                 "acknowledged, so the broker does not send it again)")


class BackoffConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    initial_s: float = Field(0.5, gt=0, description="first reconnect delay (before jitter)")
    max_s: float = Field(30.0, gt=0, description="cap on the reconnect delay")
