"""Configuration of the lab-results service (``[lab]`` in twin.toml): quantities, drift rule, shadow models."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from twin.lab.catalog import Catalog


class LabQuantity(BaseModel):
    """One offline structure parameter the lab reports, tagged against an ontology SP term."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=r"^[a-z][a-z0-9_]{0,63}$",
                      description="the name a lab file / request / MQTT message uses (column 'quantity')")
    parameter: str = Field(..., description="ontology term (local name) of a structure parameter (SP)")
    unit: str = Field(..., description="unit stored: the term's canonical unit (pint spelling)")
    range: tuple[float, float] = Field(..., description="[min, max] in the stored unit; outside: a dead letter")
    method: str = Field("", max_length=200, description="measurement method (seed 004): porosimetry, EIS, peel test...")
    model_output: str | None = Field(None, pattern=r"^[A-Za-z0-9_]{1,64}$",
                                     description="surrogate output it is compared with (None: stored, not compared)")

    @model_validator(mode="after")
    def _check(self) -> LabQuantity:
        if not self.range[0] <= self.range[1]:
            raise ValueError(f"lab quantity {self.name!r}: range {list(self.range)} has min > max")
        return self


def default_quantities() -> list[LabQuantity]:
    """The offline SPs of seed 004 (Tables 6 and 8, section 3.4) that the lab reports per roll segment."""
    q = LabQuantity
    return [
        q(name="porosity_hg", parameter="CalenderedPorosity", unit="percent", range=(5.0, 80.0),
          method="mercury intrusion porosimetry", model_output="porosity"),
        q(name="tortuosity_eis", parameter="TortuosityFactor", unit="dimensionless", range=(1.0, 20.0),
          method="impedance (EIS, blocking electrolyte)", model_output="tortuosity_factor"),
        q(name="thickness", parameter="CalenderedCoatingThickness", unit="um", range=(10.0, 300.0),
          method="micrometer gauge on a punched sample", model_output="thickness_after_um"),
        q(name="adhesion_peel", parameter="CalenderedAdhesion", unit="N/m", range=(0.0, 2000.0),
          method="90 degree peel test"),
        q(name="conductivity", parameter="ElectronicConductivity", unit="S/m", range=(0.0, 10000.0),
          method="four-point probe"),
        q(name="areal_mass", parameter="ArealLoading", unit="mg/cm**2", range=(2.0, 60.0),
          method="punched disc on a balance"),
    ]


class LabMqtt(BaseModel):
    """Lab results over MQTT: a dedicated subscription (connectors/mqtt/lab.py), JSON rows per message."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="subscribe to lab results over MQTT")
    host: str = Field("127.0.0.1", description="broker host")
    port: int = Field(1883, ge=1, le=65535, description="broker port")
    topic: str = Field("pilot/+/lab/results", min_length=1, max_length=512,
                       description="topic filter; a message is one JSON row or a list of rows")
    client_id: str = Field("pilotline-twin-lab", min_length=1, max_length=128, description="MQTT client id")
    username: str | None = Field(None, description="broker user")
    password: str | None = Field(None, description="broker password")
    queue_size: int = Field(1000, ge=1, le=100_000, description="messages held between paho and the service")


class DriftRule(BaseModel):
    """When lab results leave the active model's +/-2 sigma band more often than its calibration says."""

    model_config = ConfigDict(extra="forbid")
    min_n: int = Field(8, ge=3, description="lab results (per output) needed before the test may raise an alert")
    window: int = Field(50, ge=3, description="the newest N matched lab results per output are tested")
    alpha: float = Field(0.01, gt=0, lt=0.5, description=(
        "one-sided binomial test: alert when P(X >= misses | n, 1 - calibrated coverage) < alpha"))
    default_coverage: float = Field(0.9545, gt=0, lt=1, description=(
        "coverage of the +/-2 sigma band when the model card states none (card metrics.test.<output>.coverage_2sigma)"))
    propose_retrain: bool = Field(True, description="a drift alert creates a retrain request (approval-gated)")


class LabConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="accept lab results (API, files, MQTT), compare models, drift alerts")
    path: Path = Field(Path("lab.sqlite"), description="SQLite file of lab results, model predictions and requests")
    step: str = Field("calendering", max_length=100, description=(
        "step whose rolls the lab samples: a row's roll must have a roll event in this step ('': in any step)"))
    quantities: list[LabQuantity] = Field(default_factory=default_quantities, min_length=1,
                                          description="offline SPs accepted (name, ontology term, unit, range)")
    watch_dir: Path | None = Field(None, description=(
        "folder polled for lab CSV files (*.csv); imported files move to done/, unreadable ones to failed/"))
    watch_interval_s: float = Field(30.0, gt=0, description="how often the watched folder is polled")
    max_file_bytes: int = Field(5_000_000, ge=1, description="a larger lab file is refused")
    max_rows: int = Field(20_000, ge=1, description="rows per delivery (file, request, message) at most")
    candidates_dir: Path = Field(Path("lab_models"), description=(
        "registry of candidate (shadow) models: <dir>/<family>/<version>/{model.onnx, card.json, card.md}"))
    shadow: bool = Field(True, description="run the candidate models beside the active one on every prediction")
    min_fit_n: int = Field(5, ge=2, description="lab results per output needed to refit a residual candidate")
    drift: DriftRule = Field(default_factory=DriftRule, description="drift alert rule")
    mqtt: LabMqtt = Field(default_factory=LabMqtt, description="lab results over MQTT")

    @model_validator(mode="after")
    def _unique(self) -> LabConfig:
        names = [q.name for q in self.quantities]
        if len(set(names)) != len(names):
            raise ValueError(f"lab.quantities: names are not unique: {names}")
        if self.enabled:  # each quantity names an SP term in its canonical unit (fails `twin check-config` too)
            Catalog(self.quantities)
        return self
