"""The tag map: source addresses -> tags, loaded from a human-edited TOML file.

A tag is what the twin stores: an id, its manufacturing step, its parameter kind (MP / PP / SP),
role (setpoint / actual), canonical unit and allowed range (in the canonical unit). Each tag lists
its sources: an MQTT topic pattern (``+``/``#`` wildcards, or ``{line}`` to capture the line id
from the topic), a replay column, or an OPC-UA NodeId, each with the unit the source speaks.

The file is validated as a whole at start-up (pydantic + pint), then every point that names a
``parameter`` is checked against the ontology (:mod:`ontology.plant`: the term exists, sits under the
tag's kind, its quantity kind fits the unit, the unit is the term's canonical unit); any problem
refuses start-up with a message naming the point. :class:`TagMap` is what the rest of the twin sees;
each :class:`Tag` carries its parameter's IRI, resolved once here (see docs/ontology.md).

Example::

    [[tags]]
    id = "calender.gap_actual"
    step = "calendering"
    kind = "MP"
    role = "actual"
    parameter = "CalenderGap"
    equipment = "Calender"
    canonical_unit = "um"
    range = [10, 400]
    sources = [
      { mqtt = "pilot/{line}/calendering/gap_actual", unit = "um" },
      { replay = "calender_gap_actual_um", unit = "um" },
    ]
"""

from __future__ import annotations

import enum
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ontology.plant import ontology_index, validate_plant
from ontology.units import Q_, UnitError, affine, parse_unit


class ParameterKind(str, enum.Enum):
    MP = "MP"  # machine parameter: externally controlled
    PP = "PP"  # process parameter: a result of MPs
    SP = "SP"  # structure parameter: an output of the step
    TRACE = "TRACE"  # traceability (roll id, web position)


class Role(str, enum.Enum):
    SETPOINT = "setpoint"
    ACTUAL = "actual"
    MEASURED = "measured"  # an SP measured by a gauge or in the lab
    PREDICTED = "predicted"  # written by the twin's surrogates


class Traceability(str, enum.Enum):
    NONE = "none"
    ROLL_ID = "roll_id"  # string values: the roll (lot) now in the step
    WEB_POSITION = "web_position"  # metres of web since the roll started
    WEB_SPEED = "web_speed"  # m/min: the web position is integrated from it when no position tag exists
    PARENT_ROLL_ID = "parent_roll_id"  # string values: the upstream roll the step's current roll is made from


class ValueType(str, enum.Enum):
    NUMBER = "number"
    STRING = "string"


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mqtt: str | None = Field(None, description="MQTT topic pattern: +, # wildcards or {line}")
    replay: str | None = Field(None, description="column name in a recorded file")
    opcua: str | None = Field(None, description="OPC-UA NodeId string, e.g. ns=2;s=Calender.Gap")
    unit: str | None = Field(None, description="unit the source speaks (default: canonical unit)")

    @model_validator(mode="after")
    def _one_address(self) -> SourceSpec:
        given = [k for k in ("mqtt", "replay", "opcua") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"a source names exactly one of mqtt / replay / opcua (got {given or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("mqtt", "replay", "opcua") if getattr(self, k))

    @property
    def address(self) -> str:
        return getattr(self, self.kind)


class TagSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$",
                    description="dotted id: <step>.<parameter>[_setpoint|_actual]")
    step: str = Field(..., description="manufacturing step (coating, drying, calendering, ...)")
    kind: ParameterKind = Field(..., description="MP, PP, SP or TRACE")
    role: Role = Field(Role.ACTUAL, description="setpoint, actual, measured or predicted")
    parameter: str | None = Field(None, description="ontology term (local name or IRI)")
    equipment: str | None = Field(None, description="equipment class of the ontology (Calender, Dryer, ...)")
    canonical_unit: str = Field("dimensionless", description="unit stored (pint/UCUM spelling)")
    range: tuple[float, float] | None = Field(None, description="[min, max] in the canonical unit; numbers, "
                                              "or quantity strings such as '10 um' that must use the canonical unit")
    accuracy: float | None = Field(None, ge=0, description="+/- accuracy of the source in the canonical unit")
    value_type: ValueType = Field(ValueType.NUMBER, description="number or string")
    traceability: Traceability = Field(Traceability.NONE, description="roll_id / web_position / web_speed")
    online: bool = Field(True, description="measured online (True) or in the lab (False)")
    description: str = ""
    sources: list[SourceSpec] = Field(default_factory=list)

    @field_validator("canonical_unit")
    @classmethod
    def _unit_known(cls, v: str) -> str:
        try:
            parse_unit(v)
        except UnitError as err:
            raise ValueError(str(err)) from err
        return v

    @model_validator(mode="before")
    @classmethod
    def _range_units(cls, data: Any) -> Any:
        """Range bounds may be written with their unit ('10 um'); that unit must be the canonical unit."""
        if not isinstance(data, dict) or not isinstance(data.get("range"), (list, tuple)):
            return data
        bounds = list(data["range"])
        if not any(isinstance(b, str) for b in bounds):
            return data
        canonical = str(data.get("canonical_unit", "dimensionless"))
        out = []
        for b in bounds:
            if not isinstance(b, str):
                out.append(b)
                continue
            try:
                q: Any = Q_(b)
            except Exception as err:
                raise ValueError(f"range bound {b!r} is not a quantity") from err
            mag, unit = float(getattr(q, "magnitude", q)), str(getattr(q, "units", "dimensionless"))
            try:
                a, c = affine(unit, canonical)
            except UnitError as err:
                raise ValueError(f"range bound {b!r}: {err}") from err
            if (a, c) != (1.0, 0.0):
                raise ValueError(f"range bound {b!r} is in {unit!r}, not in the canonical unit {canonical!r} "
                                 f"(it would be {a * mag + c:g} {canonical}); ranges are given in the canonical unit")
            out.append(mag)
        return {**data, "range": out}

    @model_validator(mode="after")
    def _check(self) -> TagSpec:
        if self.range is not None and not self.range[0] <= self.range[1]:
            raise ValueError(f"range {list(self.range)} has min > max")
        if self.traceability in (Traceability.ROLL_ID, Traceability.PARENT_ROLL_ID) \
                and self.value_type is not ValueType.STRING:
            raise ValueError(f"a {self.traceability.value} tag has value_type = 'string'")
        for s in self.sources:
            if s.unit is not None:
                try:
                    affine(s.unit, self.canonical_unit)
                except UnitError as err:
                    raise ValueError(f"source {s.address!r}: {err}") from err
        return self


class PlantSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("", description="plant / line name (documentation)")
    require_parameters: bool = Field(False, description="refuse points without an ontology parameter")


class TagMapFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(1, description="file format version")
    plant: PlantSection = Field(default_factory=PlantSection, description="plant-wide settings")
    tags: list[TagSpec]

    @model_validator(mode="after")
    def _unique(self) -> TagMapFile:
        seen: dict[str, int] = {}
        for t in self.tags:
            if t.id in seen:
                raise ValueError(f"tag id {t.id!r} defined twice")
            seen[t.id] = 1
        addr: dict[tuple[str, str], str] = {}
        for t in self.tags:
            for s in t.sources:
                key = (s.kind, s.address)
                if key in addr:
                    raise ValueError(f"{s.kind} address {s.address!r} mapped to both {addr[key]!r} and {t.id!r}")
                addr[key] = t.id
        return self


class TagMapError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Tag:
    id: str
    step: str
    kind: ParameterKind
    role: Role
    unit: str
    lo: float
    hi: float
    value_type: ValueType
    traceability: Traceability
    online: bool
    parameter: str | None
    description: str
    iri: str | None = None  # the parameter class IRI (compiled from the ontology at start-up)
    equipment: str | None = None
    accuracy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "step": self.step, "kind": self.kind.value, "role": self.role.value,
            "unit": self.unit, "range": [self.lo, self.hi] if self.lo > float("-inf") or self.hi < float("inf") else None,
            "value_type": self.value_type.value, "traceability": self.traceability.value,
            "online": self.online, "parameter": self.parameter, "description": self.description,
            "iri": self.iri, "equipment": self.equipment, "accuracy": self.accuracy,
        }


@dataclass(frozen=True, slots=True)
class Binding:
    """The result of resolving an address: which tag, the source's unit and the line it names."""

    tag: Tag
    source_unit: str
    line_id: str | None


def _compile_tag(t: TagSpec) -> Tag:
    """A tag spec -> the plain, frozen Tag the hot path reads (the parameter IRI resolved once)."""
    lo, hi = t.range if t.range is not None else (float("-inf"), float("inf"))
    iri = None
    if t.parameter is not None:
        term = ontology_index().resolve(t.parameter)
        iri = term.iri if term is not None else None
    return Tag(t.id, t.step, t.kind, t.role, t.canonical_unit, float(lo), float(hi), t.value_type, t.traceability,
               t.online, t.parameter, t.description, iri, t.equipment, t.accuracy)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for _i, level in enumerate(pattern.split("/")):
        if level == "#":
            parts.append("(?:.*)")
            break
        if level == "+":
            parts.append("[^/]+")
        elif level == "{line}":
            parts.append("(?P<line>[^/]+)")
        else:
            parts.append(re.escape(level))
    return re.compile("^" + "/".join(parts) + "$")


class TagMap:
    """Compiled tag map: exact addresses in dicts, patterns as regexes, results cached."""

    def __init__(self, spec: TagMapFile) -> None:
        self.tags: dict[str, Tag] = {}
        self.plant = spec.plant
        self._exact: dict[tuple[str, str], Binding] = {}
        self._patterns: list[tuple[str, re.Pattern[str], Tag, str]] = []
        self._cache: dict[tuple[str, str], Binding | None] = {}
        self._sources: dict[str, list[tuple[str, str, str]]] = {}
        for t in spec.tags:
            tag = _compile_tag(t)
            self.tags[t.id] = tag
            self._sources[t.id] = [(s.kind, s.address, s.unit or t.canonical_unit) for s in t.sources]
            for s in t.sources:
                unit = s.unit or t.canonical_unit
                if s.kind == "mqtt" and any(c in s.address for c in "+#{"):
                    self._patterns.append(("mqtt", _pattern_regex(s.address), tag, unit))
                else:
                    self._exact[(s.kind, s.address)] = Binding(tag, unit, None)

    def add_tags(self, specs: list[dict[str, Any]]) -> None:
        """Add tags the twin writes itself (predictions); validated like the file's tags."""
        for raw in specs:
            t = TagSpec.model_validate(raw)
            if t.id in self.tags:
                continue
            if t.parameter is not None:
                problems = validate_plant([t])
                if problems:
                    raise TagMapError("added tag is invalid:\n" + "\n".join(f"  {p}" for p in problems))
            self.tags[t.id] = _compile_tag(t)
            self._sources[t.id] = []

    def sources_of(self, tag_id: str) -> list[tuple[str, str, str]]:
        """(source kind, address, unit the source speaks) of one tag."""
        return list(self._sources.get(tag_id, []))

    @classmethod
    def load(cls, path: str | Path) -> TagMap:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError as err:
            raise TagMapError(f"tag map {path}: file not found") from err
        except tomllib.TOMLDecodeError as err:
            raise TagMapError(f"tag map {path}: invalid TOML: {err}") from err
        return cls.from_dict(raw, origin=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], origin: str = "<dict>") -> TagMap:
        try:
            spec = TagMapFile.model_validate(raw)
        except ValidationError as err:
            lines = []
            for e in err.errors():
                loc = list(e["loc"])
                where = ".".join(str(p) for p in loc)
                if len(loc) >= 2 and loc[0] == "tags" and isinstance(loc[1], int):
                    tid = raw.get("tags", [{}])[loc[1]].get("id", "?") if isinstance(raw.get("tags"), list) else "?"
                    where = f"tag {tid!r} ({where})"
                lines.append(f"  {where}: {e['msg']}")
            raise TagMapError(f"tag map {origin} is invalid:\n" + "\n".join(lines)) from err
        problems = validate_plant(spec.tags, require_parameters=spec.plant.require_parameters)
        if problems:
            raise TagMapError(f"tag map {origin} does not fit the ontology:\n"
                              + "\n".join(f"  {p}" for p in problems))
        return cls(spec)

    def resolve(self, source: str, address: str) -> Binding | None:
        key = (source, address)
        hit = self._exact.get(key)
        if hit is not None:
            return hit
        if key in self._cache:
            return self._cache[key]
        found: Binding | None = None
        for kind, rx, tag, unit in self._patterns:
            if kind != source:
                continue
            m = rx.match(address)
            if m:
                found = Binding(tag, unit, m.groupdict().get("line"))
                break
        if len(self._cache) < 100_000:
            self._cache[key] = found
        return found

    def mqtt_patterns(self) -> list[str]:
        return [rx.pattern for kind, rx, _, _ in self._patterns if kind == "mqtt"]

    def addresses(self, source: str) -> list[str]:
        return [a for (k, a) in self._exact if k == source]
