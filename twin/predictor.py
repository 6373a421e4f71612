"""Near-real-time structure predictions from the line state (surrogate ensemble on onnxruntime).

On each relevant change of the input tags (debounced) and on a schedule, the predictor maps the
latest line values to the model's inputs, runs the ensemble, and writes the predictions (mean and
ensemble spread) as samples of ``<step>.<output>_predicted`` / ``..._predicted_std`` tags through
the pipeline (same commit path, same live stream). Out-of-domain inputs are flagged: their samples
carry quality UNCERTAIN and the reasons are kept with the prediction.

Mapping from line measurements to the DEM-trained model's inputs (documented in docs/surrogates.md):
- initial porosity  eps0 = 1 - M / (rho_s * h0)   (areal loading M, dry thickness h0, skeletal density rho_s:
  the gauge's total porosity), converted to the model's porosity kind (ontology.definitions: a DEM-trained model
  whose card says ``porosity_kind = "macro"`` takes and returns the macro-porosity; its porosity output is
  converted back to the line's total porosity before it is written or compared with a target)
- compaction degree  Pi  = 1 - gap / h0          (seed 003, eq. 3; gap actual)
- compression speed  v_z = (h0 - gap) * v_web / L, L = sqrt(R * (h0 - gap))   (nip geometry)
- the DEM is a representative volume of fixed thickness: the model runs at the RVE thickness
  (the middle of its training domain) and a predicted thickness scales to the line as
  h_after = h0 * h_after_rve / h0_rve (homogeneous through the thickness).
Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.samples import Quality, Sample, now_ns, ns_to_iso
from core.supervise import RoundFailures, RoundHealth
from ontology.definitions import LINE_RECIPE, Recipe
from surrogates.runtime import ModelRegistry, SurrogateModel
from twin.ports import ErrorMetrics, LatestState, SampleSink, Scheduler, TagCatalog
from twin.roles import bind_predictor_inputs

log = logging.getLogger("twin.predictor")

ROOT = Path(__file__).resolve().parents[1]


_REF = ("; a tag id, or an ontology term and role such as \"{}\" (twin/roles.py); left at the default, a tag "
        "map without this id is searched by the term and role")


class PredictorInputs(BaseModel):
    """Model input -> the line's tag: a tag id or an ontology reference ``"<Term>/<role>"`` (twin/roles.py)."""

    model_config = ConfigDict(extra="forbid")
    dry_thickness: str = Field("coating.dry_thickness", description="incoming dry coating thickness (um)"
                               + _REF.format("DryCoatingThickness/measured"))
    areal_loading: str = Field("coating.areal_loading", description="areal loading (mg/cm^2)"
                               + _REF.format("ArealLoading/measured"))
    gap: str = Field("calendering.gap_actual", description="actual roll gap (um)" + _REF.format("CalenderGap/actual"))
    roll_speed: str = Field("calendering.roll_speed", description="roll speed (m/min)"
                            + _REF.format("CalenderingSpeed/actual"))
    roll_temperature: str = Field("calendering.roll_temperature", description="roll temperature (degC)"
                                  + _REF.format("CalenderRollTemperature/actual"))


SpeedMapping = Literal["quasi_static", "nip_kinematic"]


class PredictorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="run the surrogate predictor in the daemon")
    models_dir: Path = Field(ROOT / "surrogates" / "models", description="model registry folder")
    model: str = Field("calendering", description="model family in the registry")
    step: str = Field("calendering", description="step whose predicted tags are written")
    am_fraction: float = Field(LINE_RECIPE.am_fraction, gt=0, lt=1,
                               description="active-material mass fraction of the recipe (rest: carbon-binder domain)")
    solid_density_g_cm3: float | None = Field(None, gt=0, description=(
        "skeletal density of the dry coating (g/cm3, every pore excluded: the gauge's total porosity); "
        "unset: from the recipe (ontology.definitions.Recipe at am_fraction, NMC / carbon black / PVDF)"))
    model_porosity: Literal["auto", "total", "macro"] = Field("auto", description=(
        "porosity kind the model takes and returns: 'auto' reads the model card's porosity_kind (a card "
        "without one is taken as is, no conversion: the v1 model); 'macro' converts the line's total porosity "
        "with the recipe's apparent and skeletal densities (docs/physics.md, definitions)"))
    roll_radius_mm: float = Field(200.0, gt=0, description="calender roll radius")
    foil_thickness_um: float = Field(15.0, ge=0, description="current collector thickness inside the measured "
                                     "roll gap (the gap gauge measures roll to roll; coating gap = gap - foil)")
    speed_mapping: SpeedMapping = Field("quasi_static", description=(
        "how the line speed enters the model's wall speed: 'quasi_static' puts every real nip (vertical "
        "speeds of mm/s, far below the DEM's mass-scaled 20-100 mm/s) at the slow end of the DEM domain, "
        "where the DEM's speed effect is an inertial artefact (docs/physics.md); 'nip_kinematic' feeds the "
        "kinematic vertical speed in the nip, which the domain check then flags"))
    debounce_ms: float = Field(500.0, ge=0, description="wait after an input change before predicting")
    interval_s: float = Field(10.0, gt=0, description="predict at least this often")
    stale_after_s: float = Field(60.0, gt=0, description="an input older than this blocks the prediction")
    inputs: PredictorInputs = Field(default_factory=PredictorInputs, description="line tags used as inputs")


# model output -> (tag suffix, unit, factor applied to the model value)
OUTPUT_TAGS: dict[str, tuple[str, str, float]] = {
    "porosity": ("porosity_predicted", "percent", 100.0),
    "thickness_after_um": ("thickness_after_predicted", "um", 1.0),
    "tortuosity_factor": ("tortuosity_factor_predicted", "dimensionless", 1.0),
    "d_eff": ("effective_diffusivity_predicted", "dimensionless", 1.0),
    "conductivity_eff": ("conductivity_predicted", "dimensionless", 1.0),
    "springback_pct": ("springback_predicted", "percent", 1.0),
    "sa_pore_am_per_um": ("contact_area_pore_am_predicted", "1/um", 1.0),
    "sa_pore_cbd_per_um": ("contact_area_pore_cbd_predicted", "1/um", 1.0),
    "sa_am_cbd_per_um": ("contact_area_am_cbd_predicted", "1/um", 1.0),
}


def predicted_tag_specs(step: str = "calendering") -> list[dict[str, Any]]:
    """Tag-map entries for the predicted tags (mean and spread), added to the tag map at start-up."""
    specs = []
    for out, (suffix, unit, _) in OUTPUT_TAGS.items():
        for std in (False, True):
            specs.append({"id": f"{step}.{suffix}{'_std' if std else ''}", "step": step, "kind": "SP",
                          "role": "predicted", "canonical_unit": unit, "online": True,
                          "description": (f"surrogate ensemble {'spread (1 sigma)' if std else 'mean'} of {out}"),
                          "sources": []})
    return specs


@dataclass
class Prediction:
    line_id: str
    ts_ns: int
    model_version: str
    inputs: dict[str, float]
    line_inputs: dict[str, float]
    mean: dict[str, float]
    std: dict[str, float]
    ood: bool
    ood_reasons: list[str]
    roll_id: str | None
    web_pos_m: float | None
    latency_ms: float

    def as_json(self) -> dict[str, Any]:
        return {"line_id": self.line_id, "ts": ns_to_iso(self.ts_ns), "model_version": self.model_version,
                "inputs": self.inputs, "line_inputs": self.line_inputs, "mean": self.mean, "std": self.std,
                "out_of_domain": self.ood, "ood_reasons": self.ood_reasons, "roll_id": self.roll_id,
                "web_pos_m": self.web_pos_m, "latency_ms": self.latency_ms}


class InputError(ValueError):
    """The line state cannot feed the model (missing or stale input)."""


def recipe(cfg: PredictorConfig) -> Recipe:
    return Recipe(am_fraction=cfg.am_fraction)


def skeletal_density(cfg: PredictorConfig) -> float:
    return cfg.solid_density_g_cm3 if cfg.solid_density_g_cm3 is not None else recipe(cfg).skeletal_density


def porosity_kind(cfg: PredictorConfig, card: dict[str, Any] | None) -> str:
    """The model's porosity kind: configured, else the card's ``porosity_kind``, else "total" (no conversion)."""
    if cfg.model_porosity != "auto":
        return cfg.model_porosity
    return str((card or {}).get("porosity_kind", "total"))


def porosity_to_line(cfg: PredictorConfig, kind: str) -> float:
    """d eps_total / d eps_model: 1 for a total-porosity model, rho_apparent / rho_skeletal for a macro one
    (eps_total = 1 - (1 - eps_macro) * rho_apparent / rho_skeletal)."""
    if kind != "macro":
        return 1.0
    return recipe(cfg).apparent_density / skeletal_density(cfg)


def outputs_to_line(cfg: PredictorConfig, kind: str, names: Sequence[str], mean: np.ndarray,
                    *spreads: np.ndarray) -> None:
    """Convert the model's porosity column (last axis) to the line's total porosity, in place."""
    a = porosity_to_line(cfg, kind)
    if a == 1.0 or "porosity" not in names:
        return
    k = list(names).index("porosity")
    mean[..., k] = 1.0 - (1.0 - mean[..., k]) * a
    for s in spreads:
        s[..., k] *= a


def line_to_model_inputs(values: dict[str, float], cfg: PredictorConfig, rve_thickness_um: float,
                         wall_speed_domain: tuple[float, float] | None = None,
                         kind: str = "total") -> dict[str, float]:
    """Map line measurements (canonical units) to the model's inputs. Raises InputError.

    The roll gap gauge measures roll to roll, so the coating's gap is ``gap - foil``; the imposed
    compaction degree is ``1 - coating gap / dry thickness`` (the DEM's definition)."""
    h0, m, gap = values["dry_thickness"], values["areal_loading"], values["gap"] - cfg.foil_thickness_um
    v_web, t_roll = values["roll_speed"], values["roll_temperature"]
    if h0 <= 0 or gap <= 0:
        raise InputError(f"dry thickness {h0} um and coating gap {gap} um (gap - foil) must be positive")
    eps0 = 1.0 - 10.0 * m / (skeletal_density(cfg) * h0)
    if kind == "macro":
        eps0 = 1.0 - (1.0 - eps0) / porosity_to_line(cfg, kind)
    pi = 1.0 - gap / h0
    if cfg.speed_mapping == "quasi_static" and wall_speed_domain is not None:
        v_z = float(wall_speed_domain[0])
    else:
        dh_mm = max(h0 - gap, 0.0) * 1e-3
        contact_mm = math.sqrt(cfg.roll_radius_mm * dh_mm) if dh_mm > 0 else 0.0
        v_web_mm_s = v_web * 1000.0 / 60.0
        v_z = dh_mm * v_web_mm_s / contact_mm if contact_mm > 0 else 0.0
    return {"am_fraction": cfg.am_fraction, "initial_porosity": eps0, "initial_thickness_um": rve_thickness_um,
            "compaction_degree": pi, "wall_speed_mm_s": v_z, "roll_temperature_C": t_roll}


JOB_ID = "predictor"  # the periodic prediction round's job on the daemon's scheduler


class Predictor(RoundHealth):
    """Lives in the daemon: ``daemon.extensions['predictor']``; composed in twin/daemon.py.

    What it uses of the twin comes in as narrow interfaces (twin/ports.py): the tag map (to bind its inputs),
    the line state (newest inputs), the pipeline (to submit predicted samples and to hear of committed
    inputs), the scheduler (the periodic round) and the metrics. Without them (``Predictor(config)``: a
    benchmark or a tool) it loads the model and maps values, but ``start`` and the prediction rounds refuse."""

    def __init__(self, config: PredictorConfig, *, tagmap: TagCatalog | None = None,
                 state: LatestState | None = None, pipeline: SampleSink | None = None,
                 scheduler: Scheduler | None = None, metrics: ErrorMetrics | None = None) -> None:
        self.config = config
        self.tagmap = tagmap
        self.state = state
        self.pipeline = pipeline
        self.scheduler = scheduler
        self.metrics = metrics
        self.model: SurrogateModel | None = None
        self.latest: dict[str, Prediction] = {}
        self.count = 0
        self.skipped: dict[str, int] = {}
        self.last_skip_reason: str | None = None
        self.rounds = RoundFailures()
        self._pending: asyncio.Task[None] | None = None
        self.after_predict: list[Callable[[Prediction], None]] = []  # observers of each prediction (twin.lab)
        # fail fast: every model input resolves to a tag (by id or by its role)
        self._inputs = bind_predictor_inputs(config, tagmap) if tagmap is not None else None

    def load(self) -> None:
        reg = ModelRegistry(self.config.models_dir)
        self.model = reg.latest(self.config.model)
        log.info("predictor: model %s %s loaded", self.config.model, self.model.version)

    def reload(self) -> str:
        """Load the newest model of the family without restarting the daemon."""
        self.load()
        return str(self.loaded.version)

    @property
    def loaded(self) -> SurrogateModel:
        """The loaded model; RuntimeError before ``load``."""
        if self.model is None:
            raise RuntimeError("no surrogate model is loaded")
        return self.model

    @property
    def input_tags(self) -> dict[str, str]:
        """Model input name -> tag id (resolved by twin.roles against the daemon's tag map)."""
        return dict(self._inputs) if self._inputs is not None else self.config.inputs.model_dump()

    @property
    def porosity_kind(self) -> str:
        """"total" or "macro": what the loaded model's porosity input and output mean (ontology.definitions)."""
        return porosity_kind(self.config, getattr(self.model, "card", None))

    @property
    def foil_thickness_um(self) -> float:
        """Current collector thickness inside the measured roll gap (the coating's gap is gap - foil)."""
        return self.config.foil_thickness_um

    def rve_thickness(self) -> float:
        lo, hi = self.loaded.domain["initial_thickness_um"]
        return 0.5 * (lo + hi)

    def model_inputs(self, values: dict[str, float]) -> dict[str, float]:
        """Line values (canonical units) -> the loaded model's inputs (line_to_model_inputs). Raises InputError."""
        return line_to_model_inputs(values, self.config, self.rve_thickness(),
                                    self.loaded.domain.get("wall_speed_mm_s"), self.porosity_kind)

    def outputs_to_line(self, names: Sequence[str], mean: np.ndarray, *spreads: np.ndarray) -> None:
        """The model's porosity output column converted to the line's total porosity, in place."""
        outputs_to_line(self.config, self.porosity_kind, names, mean, *spreads)

    def _wired(self) -> tuple[LatestState, SampleSink]:
        if self.state is None or self.pipeline is None:
            raise RuntimeError("the predictor is not wired to the line state and the pipeline (twin/daemon.py)")
        return self.state, self.pipeline

    # -- triggers ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Predict after each committed change of an input (debounced) and every ``interval_s`` (a job on the
        daemon's scheduler)."""
        if self.model is None:
            self.load()
        _, pipeline = self._wired()
        if self.scheduler is None:
            raise RuntimeError("the predictor has no scheduler (twin/daemon.py)")
        watched = set(self.input_tags.values())

        def on_commit(samples: Sequence[Sample]) -> None:
            if any(s.tag_id in watched for s in samples) and (self._pending is None or self._pending.done()):
                self._pending = asyncio.get_running_loop().create_task(self._debounced())

        pipeline.after_commit.append(on_commit)
        self.scheduler.every(JOB_ID, self.config.interval_s, self._guarded, health=self)

    async def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.cancel(JOB_ID)
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()

    async def _debounced(self) -> None:
        await asyncio.sleep(self.config.debounce_ms / 1000.0)
        await self._guarded()

    async def _guarded(self) -> None:
        """One prediction round; a failure is logged (traceback at most once a minute), counted in
        ``twin_internal_errors_total{stage="predictor"}`` and kept in ``last_error``; the rounds go on."""
        try:
            await self.predict_all()
        except Exception as err:  # noqa: BLE001 - one bad round must not end the predictor
            self.rounds.record(err, log, "prediction round")
            if self.metrics is not None:
                self.metrics.internal_errors.labels("predictor").inc()

    # -- prediction --------------------------------------------------------------------------
    def _skip(self, reason: str) -> None:
        self.last_skip_reason = reason
        key = reason.split(":")[0]
        self.skipped[key] = self.skipped.get(key, 0) + 1

    def gather(self, line_id: str, now: int) -> tuple[dict[str, float], Sample]:
        state = self._wired()[0].latest
        values: dict[str, float] = {}
        newest: Sample | None = None
        for name, tag in self.input_tags.items():
            s = state.get((line_id, tag))
            if s is None:
                raise InputError(f"missing input: no value of {tag} yet")
            if (now - s.source_ts_ns) / 1e9 > self.config.stale_after_s:
                raise InputError(f"stale input: {tag} is {(now - s.source_ts_ns) / 1e9:.0f} s old")
            if s.quality != Quality.GOOD:
                raise InputError(f"flagged input: {tag} has quality {Quality(s.quality).name}")
            values[name] = float(s.value)
            if newest is None or s.source_ts_ns > newest.source_ts_ns:
                newest = s
        assert newest is not None
        return values, newest

    async def predict_all(self) -> list[Prediction]:
        gap = self.input_tags["gap"]
        lines = {line for (line, tag) in self._wired()[0].latest if tag == gap}
        out = []
        for line in sorted(lines):
            p = await self.predict_line(line)
            if p is not None:
                out.append(p)
        return out

    def use_model(self, model: SurrogateModel) -> None:
        """Make ``model`` the active one (a promotion or rollback approved through twin.lab); the feedback
        service reads ``model`` on its next round."""
        self.model = model
        log.info("predictor: model %s %s active", self.config.model, model.version)

    def evaluate(self, model: SurrogateModel, values: dict[str, float]
                 ) -> tuple[dict[str, float], dict[str, float], dict[str, float], bool, list[str]]:
        """Line values -> ``model``'s inputs, mean and spread in the line's terms (porosity kind of its card,
        thickness scaled to the line), out-of-domain flag and reasons. The active prediction and the shadow
        candidates (twin.lab) run through this one mapping. Raises InputError."""
        kind = porosity_kind(self.config, model.card)
        lo, hi = model.domain["initial_thickness_um"]
        x = line_to_model_inputs(values, self.config, 0.5 * (lo + hi), model.domain.get("wall_speed_mm_s"), kind)
        arr = np.array([[x[n] for n in model.input_names]], dtype=np.float32)
        res = model.predict(arr)
        names = list(model.output_names)
        m_arr, s_arr = np.array(res.mean[0], dtype=np.float64), np.array(res.std[0], dtype=np.float64)
        outputs_to_line(self.config, kind, names, m_arr, s_arr)
        mean = {n: float(m_arr[i]) for i, n in enumerate(names)}
        std = {n: float(s_arr[i]) for i, n in enumerate(names)}
        scale = values["dry_thickness"] / x["initial_thickness_um"]
        if "thickness_after_um" in mean:
            mean["thickness_after_um"] *= scale
            std["thickness_after_um"] *= scale
        ood = bool(res.ood[0])
        return x, mean, std, ood, (list(res.ood_reasons[0]) if ood else [])

    async def predict_line(self, line_id: str) -> Prediction | None:
        state, pipeline = self._wired()
        model = self.loaded
        now = now_ns()
        try:
            values, newest = self.gather(line_id, now)
            t0 = time.perf_counter()
            x, mean, std, ood, reasons = self.evaluate(model, values)
        except InputError as err:
            self._skip(str(err))
            return None
        latency = (time.perf_counter() - t0) * 1e3
        ts = newest.source_ts_ns
        pred = Prediction(line_id, ts, str(model.version), x, values, mean, std, ood, reasons,
                          newest.roll_id, newest.web_pos_m, latency)
        q = Quality.UNCERTAIN if ood else Quality.GOOD
        samples = []
        for out, (suffix, unit, factor) in OUTPUT_TAGS.items():
            if out not in mean:
                continue
            tag = f"{self.config.step}.{suffix}"
            samples.append(Sample(line_id, tag, mean[out] * factor, unit, ts, now, q, newest.roll_id, newest.web_pos_m))
            samples.append(Sample(line_id, tag + "_std", std[out] * factor, unit, ts, now, q, newest.roll_id,
                                  newest.web_pos_m))
        await pipeline.submit(samples)
        self.latest[line_id] = pred
        self.count += 1
        state.broadcast({"type": "prediction", "prediction": pred.as_json()})
        for hook in self.after_predict:  # twin.lab: record it, run the shadow candidates on the same line values
            try:
                hook(pred)
            except Exception as err:  # noqa: BLE001 - a failing observer must not stop the predictions
                self.rounds.record(err, log, "after-prediction hook")
        return pred
