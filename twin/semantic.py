"""Semantic mapping: which ontology parameter a plant point is, from what the point says about itself.

A point (an OPC-UA variable, an MQTT topic) comes with a name, a folder or path, sometimes a
description, a unit and a range. :func:`suggest` scores every parameter of the ontology
(``ontology/pilotline.owl``) against that evidence and returns the best term with a confidence and
the alternatives, each with the reasons that made it:

* **words**: the name, folder, path and description are split into words (``RollGapActual`` ->
  roll, gap, actual; ``CoatThk_In`` -> coat, thickness, in) and matched against each term's keywords
  (its label and local name, plus the synonyms plants use: nip for gap, line load for the calender's
  pressure, coat weight for the areal loading...). Words of the name count more than the folder's.
* **step**: folder and path words name the machine (Calender, Kalander, Coater, Dryer, Oven...);
  a term of that step gains, a term of another step loses.
* **quantity kind**: the unit's dimension must be the term's (a length is never a temperature); a
  point without a unit only matches dimensionless and categorical terms without a penalty.
* **range**: the range converted to the term's canonical unit (pint) is compared with the values
  the term takes on electrode lines (a gap of 0.02-0.3 mm is 20-300 um: plausible; 20-300 mm is not).

The unit itself: a known UNECE code gives the pint spelling (``connectors/opcua/units.py``); an
unknown code falls back to pint's parsing of the display name (``°F`` -> degF, ``N/mm``, ``ft/min``,
``g/m²``), so a foreign server's units still convert to the canonical one, offsets included
(°F -> °C: the value and the range).

The role follows from the words (setpoint / actual / measured) and the access (a writable machine
parameter is a setpoint), and the tag id from the term and role: the ids the predictor, the
feedback service and the dashboard expect by default (:func:`twin.roles.canonical_ids`) where the
term has one, else ``<step>.<name>``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ontology.build import QUANTITY_KINDS, STEP_ALIASES
from ontology.plant import ontology_index
from ontology.units import UnitError, affine, normalise, parse_unit
from twin.roles import canonical_ids

# words plants use -> the word the keywords use
SYNONYMS = {
    "temp": "temperature", "tmp": "temperature", "temperatur": "temperature",
    "spd": "speed", "velocity": "speed", "vel": "speed", "geschwindigkeit": "speed",
    "thk": "thickness", "thick": "thickness", "dicke": "thickness",
    "poro": "porosity", "porositaet": "porosity",
    "spalt": "gap", "nip": "gap",
    "linienlast": "lineload", "linear": "line", "lineforce": "lineload",
    "kalander": "calender", "calendar": "calender", "cal": "calender", "calendering": "calender",
    "coat": "coating", "slotdie": "coater", "beschichtung": "coater", "die": "coater",
    "dryer": "drying", "oven": "drying", "trockner": "drying", "drier": "drying",
    "mixer": "mixing",
    "sp": "setpoint", "set": "setpoint", "target": "setpoint", "soll": "setpoint", "sv": "setpoint",
    "ref": "setpoint", "cmd": "setpoint", "setpt": "setpoint",
    "act": "actual", "pv": "actual", "ist": "actual", "fb": "actual", "feedback": "actual",
    "meas": "measured", "measurement": "measured", "gauge": "measured", "sensor": "measured",
    "qcs": "measured", "qms": "measured",
    "weight": "loading", "basisweight": "loading", "coatweight": "loading", "mass": "loading",
    "load": "load", "lot": "roll", "batch": "roll", "no": "id", "nr": "id", "number": "id",
    "pos": "position", "length": "position", "meter": "position", "counter": "position",
    "in": "before", "inlet": "before", "incoming": "before", "upstream": "before", "pre": "before",
    "out": "after", "outlet": "after", "outgoing": "after", "downstream": "after", "post": "after",
    "exit": "after", "final": "after",
    "airflow": "air", "flow": "air", "fan": "air",
}
STEP_WORDS = {"calender": "Calendering", "coater": "Coating", "drying": "Drying", "mixing": "Mixing",
              "slitting": "SlittingAndPostDrying"}
ROLE_WORDS = {"setpoint": "setpoint", "actual": "actual", "measured": "measured"}

# term -> (strong keywords, weak keywords). Strong ones name the quantity, weak ones qualify it.
KEYWORDS: dict[str, tuple[set[str], set[str]]] = {
    "CalenderGap": ({"gap"}, {"roll", "calender"}),
    "CalenderPressure": ({"lineload", "pressure"}, {"line", "load", "roll", "calender"}),
    "CalenderRollForce": ({"force"}, {"roll", "total", "calender"}),
    "CalenderRollTemperature": ({"temperature"}, {"roll", "surface", "calender"}),
    "CalenderingSpeed": ({"speed"}, {"roll", "line", "web", "calender"}),
    "CalenderThickness": ({"thickness"}, {"target", "calender"}),
    "CalenderedCoatingThickness": ({"thickness"}, {"after", "calendered", "coating", "calender"}),
    "CalenderedPorosity": ({"porosity"}, {"online", "calendered", "after", "calender"}),
    "CompactionDegree": ({"compaction"}, {"degree"}),
    "CalenderControlMode": ({"mode"}, {"control"}),
    "DryCoatingThickness": ({"thickness"}, {"before", "dry", "coating", "drying"}),
    "ArealLoading": ({"loading"}, {"areal", "coating", "before", "beta"}),
    "DriedCoatingWeight": ({"loading"}, {"dried", "drying"}),
    "CoatingGap": ({"gap"}, {"coating", "coater", "blade"}),
    "CoatingSpeed": ({"speed"}, {"coating", "coater", "line", "web"}),
    "WetFilmThickness": ({"wet"}, {"film", "thickness", "coating", "coater"}),
    "DryingTemperature": ({"temperature"}, {"zone", "drying", "air"}),
    "DryingAirflow": ({"air"}, {"drying", "zone"}),
    "DryingLineSpeed": ({"speed"}, {"line", "drying", "web"}),
    "RollId": ({"id"}, {"roll"}),
    "ParentRollId": ({"parent"}, {"roll", "id", "before"}),
    "DataGap": ({"datagap"}, set()),
    "WebPosition": ({"position"}, {"web", "roll"}),
    "WebSpeed": ({"speed"}, {"web"}),
}
# values the term takes on electrode lines (canonical unit): a range far outside is implausible
TYPICAL: dict[str, tuple[float, float]] = {
    "CalenderGap": (5.0, 1000.0), "CoatingGap": (20.0, 2000.0), "CalenderPressure": (10.0, 10000.0),
    "CalenderRollForce": (0.1, 5000.0), "CalenderRollTemperature": (0.0, 250.0), "CalenderingSpeed": (0.05, 200.0),
    "CalenderedCoatingThickness": (5.0, 500.0), "DryCoatingThickness": (5.0, 600.0),
    "WetFilmThickness": (10.0, 2000.0), "ArealLoading": (0.5, 100.0), "DriedCoatingWeight": (0.5, 100.0),
    "CalenderedPorosity": (0.0, 100.0), "CompactionDegree": (0.0, 100.0), "DryingTemperature": (0.0, 300.0),
    "DryingLineSpeed": (0.05, 200.0), "CoatingSpeed": (0.05, 200.0), "DryingAirflow": (0.0, 100000.0),
    "WebPosition": (0.0, 1e6), "WebSpeed": (0.05, 200.0),
}
# the canonical unit of a point without a term, per quantity kind (otherwise the source's own unit)
PLAIN_CANONICAL = {"Temperature": "degC"}


@dataclass(frozen=True)
class Point:
    """A plant point as a source describes it (plain data; an OPC-UA BrowsedNode or an MQTT topic)."""

    address: str  # NodeId or topic
    name: str  # browse / display name, or the topic's last level
    folder: str = ""  # parent browse name
    path: str = ""  # browse path or topic
    description: str = ""
    unit: str | None = None  # pint spelling from a known UNECE code (or the payload)
    unit_display: str | None = None  # the source's display name of the unit
    eu_range: tuple[float, float] | None = None  # in the source's unit
    writable: bool = False
    data_type: str | None = None
    source: str = "opcua"  # opcua / mqtt


@dataclass(frozen=True)
class Candidate:
    term: str
    confidence: float
    score: float
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"term": self.term, "confidence": self.confidence, "reasons": list(self.reasons)}


@dataclass
class Suggestion:
    point: Point
    unit: str | None  # the source unit (pint spelling) or None (dimensionless / unknown)
    unit_how: str  # "UNECE code", "display name (pint)", "none", "unknown: <display>"
    term: str | None  # best term (None: nothing plausible)
    iri: str | None
    confidence: float
    role: str
    kind: str
    step: str
    tag_id: str
    canonical_unit: str
    range: tuple[float, float] | None  # in the canonical unit
    alternatives: list[Candidate] = field(default_factory=list)
    reasons: tuple[str, ...] = ()
    value_type: str = "number"
    traceability: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"address": self.point.address, "name": self.point.name, "unit": self.unit, "unit_how": self.unit_how,
                "term": self.term, "iri": self.iri, "confidence": self.confidence, "role": self.role,
                "kind": self.kind, "step": self.step, "tag_id": self.tag_id, "canonical_unit": self.canonical_unit,
                "range": list(self.range) if self.range else None,
                "alternatives": [a.as_dict() for a in self.alternatives], "reasons": list(self.reasons)}


def words(text: str) -> list[str]:
    """``RollGapActual`` -> [roll, gap, actual]; ``T_Roll_degF`` -> [t, roll, degf]; synonyms applied."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])",
               " ", text or "")
    out = []
    for w in re.split(r"[^A-Za-z0-9]+", s):
        w = w.lower()
        if not w or w.isdigit():
            continue
        out.append(SYNONYMS.get(w, w))
    # two-word synonyms
    joined = " ".join(out)
    for a, b in (("line load", "lineload"), ("coat weight", "loading"), ("areal weight", "loading"),
                 ("basis weight", "loading"), ("mass loading", "loading")):
        if a in joined:
            out.append(b)
    return out


def resolve_unit(unit: str | None, display: str | None) -> tuple[str | None, str]:
    """The source unit as a pint spelling, and how it was found."""
    if unit:
        return unit, "UNECE code"
    if display and display.strip():
        d = display.strip()
        try:
            parse_unit(d)
        except UnitError:
            return None, f"unknown: {d!r}"
        return normalise(d), "display name (pint)"
    return None, "none"


def _dim(unit: str) -> str:
    return str(parse_unit(unit).dimensionality)


_QK_DIM: dict[str, str] = {}


def quantity_kind(unit: str | None) -> str | None:
    """The ontology's quantity kind of a unit (None: unknown / no unit)."""
    if unit is None:
        return None
    if not _QK_DIM:
        for name, (_, ref) in QUANTITY_KINDS.items():
            if ref is not None:
                _QK_DIM.setdefault(_dim(ref), name)
    try:
        return _QK_DIM.get(_dim(unit))
    except UnitError:
        return None


def _step_of(tokens: Sequence[str]) -> str | None:
    for w in tokens:
        if w in STEP_WORDS:
            return STEP_WORDS[w]
    return None


def _conv(rng: tuple[float, float], src: str, dst: str) -> tuple[float, float] | None:
    try:
        a, b = affine(src, dst)
    except UnitError:
        return None
    lo, hi = sorted((a * rng[0] + b, a * rng[1] + b))
    return (_round(lo), _round(hi))


def _round(x: float) -> float:
    if not math.isfinite(x):
        return x
    x = round(x, 6)
    return 0.0 if x == 0 else float(f"{x:.10g}")


@lru_cache(maxsize=4096)
def _keywords(local: str) -> tuple[frozenset[str], frozenset[str]]:
    """(strong, weak) keywords of a term: the table's, else the head noun of the local name (strong) and its
    other words (weak)."""
    if local in KEYWORDS:
        strong, weak = KEYWORDS[local]
        return frozenset(strong), frozenset(weak)
    w = words(local)
    return (frozenset(w[-1:]), frozenset(w[:-1]))


def _score(term: Any, p: Point, name_w: list[str], ctx_w: list[str], step: str | None, unit: str | None,
           qk: str | None, is_string: bool, prior_step: str | None = None) -> tuple[float, list[str]] | None:
    strong, weak = _keywords(term.local)
    reasons: list[str] = []
    s = 0.0
    hit_strong = [w for w in strong if w in name_w]
    if not hit_strong:
        hit_ctx = [w for w in strong if w in ctx_w]
        if not hit_ctx:
            return None  # the point's words never name this quantity
        s += 1.0
        reasons.append(f"{'/'.join(hit_ctx)} in the folder or description")
    else:
        s += 3.0 * len(hit_strong)
        reasons.append(f"name says {'/'.join(hit_strong)}")
    hit_weak = sorted({w for w in weak if w in name_w})
    hit_weak_ctx = sorted({w for w in weak if w in ctx_w and w not in name_w})
    s += 1.0 * len(hit_weak) + 0.5 * len(hit_weak_ctx)
    if hit_weak or hit_weak_ctx:
        reasons.append(f"qualified by {'/'.join(hit_weak + hit_weak_ctx)}")
    for here, there in (("before", "after"), ("after", "before")):  # upstream / downstream of the step
        if here in name_w:
            if here in weak:
                s += 2.0
            elif there in weak:
                s -= 3.0
    if term.kind != "TRACE" and term.step is not None:
        if step is not None:
            if term.step == step:
                s += 1.5
                reasons.append(f"step {step}")
            else:
                s -= 1.5
        elif prior_step is not None and term.step == prior_step:
            s += 0.75
            reasons.append(f"most points of this source are {prior_step}")
    if term.mode in ("online", "online_offline"):
        s += 0.25 if p.source in ("opcua", "mqtt") else 0.0
    tqk = term.quantity_kind
    if is_string:
        if tqk != "Categorical":
            return None
        s += 2.0  # text fits a categorical term as a unit fits its quantity kind
    elif qk is not None:
        if tqk == "Categorical":
            if qk != "DimensionlessRatio":
                return None
        elif tqk != qk:
            return None  # a length is never a temperature
        else:
            s += 2.0
            reasons.append(f"{unit} is a {qk}")
    elif unit is None and tqk not in ("DimensionlessRatio", "Categorical"):
        s -= 1.0  # no unit: weak evidence for a dimensioned term
    typ = TYPICAL.get(term.local)
    if typ is not None and p.eu_range is not None and unit is not None and term.canonical_unit:
        r = _conv(p.eu_range, unit, term.canonical_unit)
        if r is not None:
            mid = 0.5 * (r[0] + r[1])
            span = typ[1] - typ[0]
            if typ[0] - 0.1 * span <= mid <= typ[1] + 0.1 * span:
                s += 1.0
                reasons.append(f"range {r[0]:g}..{r[1]:g} {term.canonical_unit} is plausible")
            else:
                s -= 2.0
                reasons.append(f"range {r[0]:g}..{r[1]:g} {term.canonical_unit} is unusual")
    return s, reasons


def _role(term: Any | None, name_w: list[str], writable: bool) -> str:
    said = [ROLE_WORDS[w] for w in name_w if w in ROLE_WORDS]
    if term is not None and term.kind == "SP":
        return "measured"
    if term is not None and term.kind == "TRACE":
        return "actual"
    if "setpoint" in said:
        return "setpoint"
    if "actual" in said or "measured" in said:
        return "actual"
    return "setpoint" if writable else "actual"


def _tag_step(term: Any | None, step: str | None) -> str:
    cls = (term.step if term is not None and term.step else None) or step
    rev = {v: k for k, v in STEP_ALIASES.items() if k in ("mixing", "coating", "drying", "calendering", "slitting",
                                                        "cell_assembly", "electrolyte_filling", "formation")}
    return rev.get(cls, "line") if cls else "line"


def _snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower() or "value"


def point_step(p: Point) -> str | None:
    """The step a point's own words name (None: they name none)."""
    return _step_of(words(p.name)) or _step_of(words(p.folder) + words(p.path) + words(p.description))


def suggest(p: Point, *, top: int = 3, prior_step: str | None = None) -> Suggestion:
    """The best ontology term for a point, with confidence, alternatives, role, id, unit and range."""
    idx = ontology_index()
    unit, how = resolve_unit(p.unit, p.unit_display)
    qk = quantity_kind(unit)
    is_string = (p.data_type or "") in ("String", "LocalizedText", "ByteString")
    name_w = words(p.name)
    ctx_w = words(p.folder) + words(p.path) + words(p.description)
    step = _step_of(name_w) or _step_of(ctx_w)
    scored: list[tuple[float, str, list[str]]] = []
    for term in idx.terms.values():
        r = _score(term, p, name_w, ctx_w, step, unit, qk, is_string, prior_step)
        if r is not None and r[0] > 0:
            scored.append((r[0], term.local, r[1]))
    scored.sort(key=lambda x: (-x[0], x[1]))
    cands: list[Candidate] = []
    if scored:
        z = sum(math.exp(s - scored[0][0]) for s, _, _ in scored)
        for s, local, reasons in scored[: top + 1]:
            share = math.exp(s - scored[0][0]) / z
            conf = round(share * min(1.0, s / 8.0), 2)  # ~8: name, qualifier, step, quantity kind and range agree
            cands.append(Candidate(local, conf, s, tuple(reasons)))
    best = cands[0] if cands and cands[0].confidence > 0 else None
    best_term = idx.terms[best.term] if best is not None else None
    role = _role(best_term, name_w, p.writable)
    if best_term is not None and role == "setpoint" and best_term.kind != "MP":
        role = "measured"
    kind = best_term.kind if best_term is not None else ("TRACE" if is_string else "MP")
    tstep = _tag_step(best_term, step)
    ids = canonical_ids()
    if best_term is not None and (best_term.local, role) in ids:
        tag_id = ids[(best_term.local, role)]
        tstep = tag_id.split(".", 1)[0]
    elif best_term is not None and best_term.kind == "TRACE":
        tag_id = f"{tstep}.{_snake(best_term.local)}"
    else:
        tag_id = f"{tstep}.{_snake(p.name)}"
    if best_term is not None and best_term.canonical_unit:
        canonical = best_term.canonical_unit
    elif unit is not None:
        canonical = PLAIN_CANONICAL.get(qk or "", unit)
    else:
        canonical = "dimensionless"
    if is_string:
        canonical = "dimensionless"
    rng = None
    if p.eu_range is not None and not is_string:
        rng = _conv(p.eu_range, unit, canonical) if unit is not None else (p.eu_range if canonical == "dimensionless"
                                                                           else None)
    trace = None
    if best_term is not None and best_term.kind == "TRACE":
        trace = {"RollId": "roll_id", "ParentRollId": "parent_roll_id", "WebPosition": "web_position",
                 "WebSpeed": "web_speed"}.get(best_term.local)
    return Suggestion(p, unit, how, best_term.local if best_term else None, best_term.iri if best_term else None,
                      best.confidence if best else 0.0, role, kind, tstep, tag_id, canonical, rng,
                      cands[1:], best.reasons if best else (), "string" if is_string else "number", trace)


def suggest_all(points: Sequence[Point]) -> list[Suggestion]:
    """Suggestions for every point, with unique tag ids (a second point of the same term and role gets a
    suffix and keeps its term)."""
    steps = [st for st in (point_step(p) for p in points) if st is not None]
    prior = max(set(steps), key=steps.count) if steps else None
    out = [suggest(p, prior_step=prior) for p in points]
    # the strongest claim keeps the canonical id
    order = sorted(range(len(out)), key=lambda i: -out[i].confidence)
    used: set[str] = set()
    for i in order:
        s = out[i]
        tid, k = s.tag_id, 2
        while tid in used:
            tid, k = f"{s.tag_id}_{k}", k + 1
        s.tag_id = tid
        used.add(tid)
    return out


def point_from_browsed(n: Any) -> Point:
    """A :class:`Point` from a ``connectors.opcua.browse.BrowsedNode``."""
    return Point(address=n.node_id, name=n.display_name, folder=n.folder, path=n.browse_path,
                 description=n.description, unit=n.unit, unit_display=n.unit_display, eu_range=n.eu_range,
                 writable=n.writable, data_type=n.data_type, source="opcua")
