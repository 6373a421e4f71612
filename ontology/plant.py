"""The plant description: tag-map entries as ontology points, validated against the ontology.

* :func:`ontology_index` compiles ``pilotline.owl`` (rdflib, once per process) into plain dicts:
  parameter classes with their kind, step, canonical unit and quantity kind; steps; equipment; roles.
* :func:`validate_plant` checks every tag that names a ``parameter``: the term exists, it sits under the
  tag's kind (MP -> MachineParameter, ...), the canonical unit's dimension fits the quantity kind and is
  the term's canonical unit, the step and equipment exist. It returns one message per problem, each
  naming the point; :class:`ontology.tagmap.TagMap` refuses to load when there is any.
* :func:`plant_graph` generates the point individuals (and the line and equipment they belong to)
  as an rdflib graph on top of the ontology, for the API's downloads and the SPARQL endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ontology.build import ALIGNMENT_PATH, NS, OWL_PATH, QUANTITY_KINDS, STEP_ALIASES
from ontology.units import UnitError, affine, parse_unit

if TYPE_CHECKING:  # pragma: no cover
    import rdflib

    from ontology.tagmap import TagMap, TagSpec

PLANT = "https://w3id.org/pilotline-twin/plant/"
KIND_OF_CLASS = {"MachineParameter": "MP", "ProcessParameter": "PP", "StructureParameter": "SP",
                 "TraceQuantity": "TRACE"}
KIND_CLASS = {v: k for k, v in KIND_OF_CLASS.items()}
_QK_BY_QUDT = {v[0]: k for k, v in QUANTITY_KINDS.items() if v[0]}
TRACE_TERM = {"roll_id": "RollId", "parent_roll_id": "ParentRollId", "web_position": "WebPosition",
              "web_speed": "WebSpeed"}
ROLE_IND = {"setpoint": "SetpointRole", "actual": "ActualRole", "measured": "MeasuredRole",
            "predicted": "PredictedRole"}


@dataclass(frozen=True)
class Term:
    """A parameter (or traceability) class of the ontology, compiled to plain values."""

    local: str
    iri: str
    label: str
    kind: str  # MP / PP / SP / TRACE
    step: str | None
    canonical_unit: str
    ucum: str
    qudt_unit: str | None
    quantity_kind: str
    measurability: str
    accuracy: str
    mode: str  # online / offline / online_offline / unspecified
    seed_table: int | None
    criticality: dict[str, str] = field(default_factory=dict)
    comment: str = ""

    @property
    def online(self) -> bool | None:
        return {"online": True, "offline": False}.get(self.mode)

    def as_dict(self) -> dict[str, Any]:
        return {"local_name": self.local, "iri": self.iri, "label": self.label, "kind": self.kind, "step": self.step,
                "canonical_unit": self.canonical_unit, "ucum": self.ucum, "qudt_unit": self.qudt_unit,
                "quantity_kind": self.quantity_kind, "measurability": self.measurability, "accuracy": self.accuracy,
                "online_offline": self.mode, "seed_table": self.seed_table, "criticality": self.criticality,
                "comment": self.comment}


@dataclass(frozen=True)
class OntologyIndex:
    terms: dict[str, Term]  # local name -> term
    steps: list[dict[str, Any]]  # in line order
    equipment: frozenset[str]
    classes: frozenset[str]  # every class local name

    def resolve(self, ref: str) -> Term | None:
        local = ref[len(NS):] if ref.startswith(NS) else (None if "://" in ref else ref)
        return self.terms.get(local) if local is not None else None


def _local(iri: Any) -> str:
    s = str(iri)
    return s[len(NS):] if s.startswith(NS) else s


@lru_cache(maxsize=1)
def ontology_graph() -> rdflib.Graph:
    import rdflib

    g = rdflib.Graph()
    g.parse(OWL_PATH, format="xml")
    return g


@lru_cache(maxsize=1)
def alignment_graph() -> rdflib.Graph:
    import rdflib

    g = rdflib.Graph()
    g.parse(ALIGNMENT_PATH, format="xml")
    return g


@lru_cache(maxsize=1)
def ontology_index() -> OntologyIndex:
    from rdflib import OWL, RDF, RDFS, URIRef

    g = ontology_graph()
    by_s: dict[Any, dict[Any, list[Any]]] = {}  # one pass over the triples: subject -> predicate -> objects
    for s_, p_, o_ in g:
        by_s.setdefault(s_, {}).setdefault(p_, []).append(o_)
    sub = RDFS.subClassOf
    parents: dict[str, list[str]] = {}
    classes = set()
    for c, props in by_s.items():
        if isinstance(c, URIRef) and str(c).startswith(NS) and OWL.Class in props.get(RDF.type, ()):
            classes.add(_local(c))
            parents[_local(c)] = [_local(o) for o in props.get(sub, ()) if isinstance(o, URIRef)]

    def ancestors(name: str) -> list[str]:
        out, todo = [], list(parents.get(name, []))
        while todo:
            n = todo.pop()
            if n not in out:
                out.append(n)
                todo.extend(parents.get(n, []))
        return out

    def one(c: URIRef, prop: str | URIRef) -> Any:
        key = prop if isinstance(prop, URIRef) else URIRef(NS + prop)  # URIRef is a str too: test it first
        vals = by_s.get(c, {}).get(key, ())
        return vals[0] if vals else None

    terms: dict[str, Term] = {}
    for name in sorted(classes):
        anc = ancestors(name)
        kinds = [KIND_OF_CLASS[a] for a in anc if a in KIND_OF_CLASS]
        if not kinds or name in KIND_OF_CLASS:
            continue
        c = URIRef(NS + name)
        qk = one(c, "quantityKind")
        qk_name = _QK_BY_QUDT.get(str(qk).rsplit("/", 1)[-1], str(qk)) if isinstance(qk, URIRef) else str(qk)
        step = one(c, "ofStep")
        table = one(c, "seedTable")
        qudt = one(c, "qudtUnit")
        terms[name] = Term(
            local=name, iri=str(c), label=str(one(c, RDFS.label) or name), kind=kinds[0],
            step=_local(step) if step is not None else None, canonical_unit=str(one(c, "canonicalUnit") or ""),
            ucum=str(one(c, "ucumCode") or ""), qudt_unit=str(qudt) if qudt is not None else None,
            quantity_kind=qk_name, measurability=str(one(c, "measurability") or ""),
            accuracy=str(one(c, "accuracy") or ""), mode=str(one(c, "measurementMode") or "unspecified"),
            seed_table=int(table) if table is not None else None,
            criticality={k: str(one(c, prop) or "") for k, prop in
                         (("empirical", "criticalityEmpirical"), ("continuum", "criticalityContinuum"),
                          ("discrete", "criticalityDiscrete"), ("ml", "criticalityML"))} if table is not None else {},
            comment=str(one(c, RDFS.comment) or ""))
    steps = []
    for name in classes:
        if "ManufacturingStep" not in ancestors(name):
            continue
        c = URIRef(NS + name)
        info: dict[str, Any] = {"local_name": name, "iri": str(c), "label": str(one(c, RDFS.label) or name),
                                "order": int(one(c, "stepOrder") or 0), "predecessor": None, "inputs": [],
                                "outputs": [], "equipment": []}
        for r in by_s[c].get(sub, ()):
            prop, val = one(r, OWL.onProperty), one(r, OWL.someValuesFrom)
            if prop is None or val is None:
                continue
            key = {"hasPredecessor": "predecessor", "hasInput": "inputs", "hasOutput": "outputs",
                   "usesEquipment": "equipment"}.get(_local(prop))
            if key == "predecessor":
                info[key] = _local(val)
            elif key:
                info[key].append(_local(val))
        for k in ("inputs", "outputs", "equipment"):
            info[k].sort()
        steps.append(info)
    steps.sort(key=lambda s: s["order"])
    equipment = frozenset(n for n in classes if "Equipment" in ancestors(n) or n == "Equipment")
    return OntologyIndex(terms, steps, equipment, frozenset(classes))


def step_class(step: str) -> str | None:
    """The step class of a tag-map step name (``calendering`` -> ``Calendering``); ``Line`` for ``line``."""
    if step in STEP_ALIASES:
        return STEP_ALIASES[step]
    idx = ontology_index()
    return step if any(s["local_name"] == step for s in idx.steps) else None


def _dim(unit: str) -> str:
    return str(parse_unit(unit).dimensionality)


def check_tag(t: TagSpec, idx: OntologyIndex | None = None) -> list[str]:
    """Problems of one tag against the ontology (empty: fine)."""
    idx = idx or ontology_index()
    out: list[str] = []
    if t.parameter is None and t.equipment is None:
        return out  # a plain tag: nothing to check against the ontology
    if step_class(t.step) is None:
        out.append(f"step {t.step!r} is not a manufacturing step of the ontology "
                   f"(known: {', '.join(sorted(STEP_ALIASES))})")
    if t.equipment is not None and t.equipment not in idx.equipment:
        out.append(f"equipment {t.equipment!r} is not an Equipment class of the ontology")
    if t.parameter is None:
        return out
    term = idx.resolve(t.parameter)
    if term is None:
        iri = t.parameter if "://" in t.parameter else NS + t.parameter
        out.append(f"parameter {t.parameter!r}: unknown IRI <{iri}> (no such parameter class in the ontology)")
        return out
    kind = t.kind.value
    if kind != term.kind:
        out.append(f"kind {kind} ({KIND_CLASS[kind]}) but parameter {term.local} is a {KIND_CLASS[term.kind]} "
                   f"({term.kind})")
    want = TRACE_TERM.get(t.traceability.value)
    if want is not None and term.local != want:
        out.append(f"traceability {t.traceability.value} needs parameter {want}, not {term.local}")
    if t.role.value == "setpoint" and term.kind != "MP":
        out.append(f"role setpoint needs a MachineParameter, but {term.local} is a {KIND_CLASS[term.kind]}")
    ref = QUANTITY_KINDS.get(term.quantity_kind, ("", None))[1]
    if ref is None:  # categorical: a label or a coded number
        if t.value_type.value != "string" and _dim(t.canonical_unit) != _dim("dimensionless"):
            out.append(f"unit {t.canonical_unit!r} has dimension {_dim(t.canonical_unit)}, but {term.local} is "
                       f"categorical (value_type 'string' or a dimensionless code)")
        return out
    try:
        have, want = _dim(t.canonical_unit), _dim(ref)
    except UnitError as err:  # pragma: no cover - TagSpec already checked the unit
        out.append(str(err))
        return out
    if have != want:
        out.append(f"unit {t.canonical_unit!r} has dimension {have}, but quantity kind {term.quantity_kind} of "
                   f"{term.local} needs {want}")
        return out
    if term.canonical_unit and affine(t.canonical_unit, term.canonical_unit) != (1.0, 0.0):
        out.append(f"canonical_unit {t.canonical_unit!r} is not the canonical unit {term.canonical_unit!r} of "
                   f"{term.local} (values are stored in the term's canonical unit)")
    return out


def validate_plant(tags: list[TagSpec], require_parameters: bool = False) -> list[str]:
    """Every problem of the plant's points, each line naming the point."""
    idx = ontology_index()
    problems: list[str] = []
    for t in tags:
        msgs = check_tag(t, idx)
        if require_parameters and t.parameter is None:
            msgs.append("no parameter: this plant file requires every point to reference its ontology term")
        problems.extend(f"point {t.id!r}: {m}" for m in msgs)
    return problems


def point_iri(line_id: str, tag_id: str) -> str:
    return f"{PLANT}{_slug(line_id)}/point/{_slug(tag_id)}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def plant_graph(tagmap: TagMap, line_id: str, *, with_ontology: bool = True) -> rdflib.Graph:
    """Ontology (+ alignment) + the plant's individuals: line, equipment, one point per tag."""
    import rdflib
    from rdflib import OWL, RDF, RDFS, XSD, Literal, URIRef

    g = rdflib.Graph()
    if with_ontology:
        for t in ontology_graph():
            g.add(t)
        for t in alignment_graph():
            g.add(t)
    g.bind("plt", NS)
    g.bind("plant", PLANT)
    g.bind("skos", "http://www.w3.org/2004/02/skos/core#")
    def p(name: str) -> URIRef:
        return URIRef(NS + name)

    idx = ontology_index()
    line = URIRef(f"{PLANT}{_slug(line_id)}")
    g.add((line, RDF.type, OWL.NamedIndividual))
    g.add((line, RDF.type, p("Line")))
    g.add((line, RDFS.label, Literal(line_id)))
    for tag in tagmap.tags.values():
        pt = URIRef(point_iri(line_id, tag.id))
        g.add((pt, RDF.type, OWL.NamedIndividual))
        g.add((pt, RDF.type, p("Point")))
        g.add((pt, RDFS.label, Literal(tag.id)))
        term = idx.resolve(tag.parameter) if tag.parameter else None
        if term is not None:
            g.add((pt, RDF.type, URIRef(term.iri)))
        g.add((pt, p("hasRole"), p(ROLE_IND[tag.role.value])))
        g.add((pt, p("inLine"), line))
        g.add((pt, p("tagId"), Literal(tag.id)))
        g.add((pt, p("stepName"), Literal(tag.step)))
        g.add((pt, p("pointUnit"), Literal(tag.unit)))
        g.add((pt, p("isOnline"), Literal(tag.online, datatype=XSD.boolean)))
        if tag.lo > float("-inf"):
            g.add((pt, p("rangeMin"), Literal(tag.lo, datatype=XSD.double)))
        if tag.hi < float("inf"):
            g.add((pt, p("rangeMax"), Literal(tag.hi, datatype=XSD.double)))
        if tag.accuracy is not None:
            g.add((pt, p("pointAccuracy"), Literal(tag.accuracy, datatype=XSD.double)))
        if tag.equipment:
            eq = URIRef(f"{PLANT}{_slug(line_id)}/equipment/{_slug(tag.equipment)}")
            g.add((eq, RDF.type, OWL.NamedIndividual))
            g.add((eq, RDF.type, p(tag.equipment)))
            g.add((eq, p("inLine"), line))
            g.add((pt, p("onEquipment"), eq))
        for i, (kind, address, unit) in enumerate(tagmap.sources_of(tag.id)):
            src = URIRef(f"{pt}/source/{i}")
            g.add((src, RDF.type, OWL.NamedIndividual))
            g.add((src, RDF.type, p("SourceAddress")))
            g.add((src, p("addressKind"), Literal(kind)))
            g.add((src, p("address"), Literal(address)))
            g.add((src, p("sourceUnit"), Literal(unit)))
            g.add((pt, p("hasSource"), src))
    return g


def points(tagmap: TagMap, line_id: str) -> list[dict[str, Any]]:
    """The plant's points as plain dicts (API)."""
    idx = ontology_index()
    out = []
    for tag in tagmap.tags.values():
        term = idx.resolve(tag.parameter) if tag.parameter else None
        out.append({"iri": point_iri(line_id, tag.id), "tag_id": tag.id, "step": tag.step,
                    "step_class": step_class(tag.step), "kind": tag.kind.value, "role": tag.role.value,
                    "parameter": term.local if term else tag.parameter, "parameter_iri": term.iri if term else None,
                    "unit": tag.unit, "range": tag.as_dict()["range"], "accuracy": tag.accuracy,
                    "equipment": tag.equipment, "online": tag.online,
                    "sources": [{"kind": k, "address": a, "unit": u} for k, a, u in tagmap.sources_of(tag.id)]})
    return out


def owl_bytes(g: rdflib.Graph) -> bytes:
    return g.serialize(format="xml", encoding="utf-8")


__all__ = ["OntologyIndex", "Term", "ontology_index", "validate_plant", "check_tag", "plant_graph", "points",
           "point_iri", "step_class", "PLANT"]
