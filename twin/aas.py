"""Asset Administration Shell (AAS) export, built with basyx-python-sdk's own model classes.

What is exported (docs/aas.md):

* one shell for the **line** (asset ``https://w3id.org/pilotline-twin/plant/<line>``, the line individual of the
  plant graph) with two submodels:

  - **Technical Data** (IDTA 02003-1-2 semantics): ``GeneralInformation`` (the designation; manufacturer fields left
    empty: the twin does not know them) and ``TechnicalProperties`` with one collection per step holding one
    collection per point: its ``Range`` (the tag map's range, canonical unit), ``Unit`` and ``Role``;
  - **Time Series Data** (IDTA 02008-1-1): ``Metadata`` (name, description and a ``Record`` that names the time and
    one variable per point) and ``Segments`` with one ``LinkedSegment`` per point whose ``Endpoint`` is the twin's
    series API (``<base>/api/v1/series/<tag>``) and whose ``Query`` is the query string that returns the stored
    range (``line``, ``start``, ``end``, ``points``), with record count, start, end and state;

* one shell per **equipment** class named in the tag map (asset ``.../plant/<line>/equipment/<Class>``, as in the
  plant graph) with its own Technical Data (the points on that equipment);

* per **roll** (on request) a shell whose asset is the roll of the JSON-LD export (``.../data/roll/<roll>``) with
  one submodel: the stored samples of the roll aggregated per tag (mean, min, max, count, first, last, unit), in
  ``ProcessParameters`` (MP/PP), ``MeasuredStructure`` (SP measured) and ``PredictedStructure`` (the surrogate's
  predicted tags);

* one **ConceptDescription** (IEC 61360 data specification: preferred name, unit, QUDT unit id) per semantic id,
  ``isCaseOf`` the external terms (EMMO, GPO, BVCO) the alignment calls an exact or close match.

Every element that carries a point's value or range has as semantic id the point's ontology term IRI (``Tag.iri``,
an ``ExternalReference`` with one ``GlobalReference`` key); a point without a term (the predicted tags) has the
plant graph's point IRI instead (``.../plant/<line>/point/<tag>``).
"""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlencode

from basyx.aas import model
from basyx.aas.adapter import aasx
from basyx.aas.adapter.json import json_serialization
from rdflib import URIRef

from ontology.plant import NS, PLANT, ROLE_IND, alignment_graph, ontology_index, point_iri, step_class
from ontology.tagmap import ParameterKind, Role, Tag, ValueType
from twin.jsonld import DATA, _slug

# --- semantic ids of the IDTA templates ------------------------------------------------------------------------
TD_SUBMODEL = "https://admin-shell.io/ZVEI/TechnicalData/Submodel/1/2"
TD_GENERAL = "https://admin-shell.io/ZVEI/TechnicalData/GeneralInformation/1/1"
TD_MANUFACTURER_NAME = "0173-1#02-AAO677#002"
TD_PRODUCT_DESIGNATION = "0173-1#02-AAW338#001"
TD_ARTICLE_NUMBER = "0173-1#02-AAO676#003"
TD_ORDER_CODE = "0173-1#02-AAO227#002"
TD_TECHNICAL_PROPERTIES = "https://admin-shell.io/ZVEI/TechnicalData/TechnicalProperties/1/1"

TS = "https://admin-shell.io/idta/TimeSeries/"
TS_SUBMODEL = TS + "1/1"
TS_METADATA = TS + "Metadata/1/1"
TS_METADATA_NAME = TS + "Metadata/Name/1/1"
TS_METADATA_DESCRIPTION = TS + "Metadata/Description/1/1"
TS_RECORD = TS + "Record/1/1"
TS_UTC_TIME = TS + "UtcTime/1/1"
TS_SEGMENTS = TS + "Segments/1/1"
TS_LINKED_SEGMENT = TS + "Segments/LinkedSegment/1/1"
TS_SEGMENT_NAME = TS + "Segment/Name/1/1"
TS_SEGMENT_DESCRIPTION = TS + "Segment/Description/1/1"
TS_RECORD_COUNT = TS + "Segment/RecordCount/1/1"
TS_START_TIME = TS + "Segment/StartTime/1/1"
TS_END_TIME = TS + "Segment/EndTime/1/1"
TS_STATE = TS + "Segment/State/1/1"
TS_LAST_UPDATE = TS + "Segment/LastUpdate/1/1"
TS_ENDPOINT = TS + "Endpoint/1/1"
TS_QUERY = TS + "Query/1/1"

# the IEC 61360 data specification template, in the version basyx-python-sdk 2.2 (AAS 3.1) uses
IEC61360 = "https://admin-shell.io/DataSpecificationTemplates/DataSpecificationIEC61360/3/1"
QUDT_UNIT = "http://qudt.org/schema/qudt/unit"

# --- this project's ids ------------------------------------------------------------------------------------------
ROLL_SUBMODEL = "https://w3id.org/pilotline-twin/aas/RollData/1/0"
SERIES_POINTS = 500  # buckets asked for in a LinkedSegment's query
TIME_FIRST_NS, TIME_LAST_NS = 0, 2**63 - 1  # the range asked of the store for a point's record count and extent

_ID_SHORT_BAD = re.compile(r"[^A-Za-z0-9_-]")


def id_short(text: str) -> str:
    """A valid idShort (AASd-002: a letter first, then letters, digits, ``_`` or ``-``, not ending in ``-``)."""
    s = _ID_SHORT_BAD.sub("_", text)[:127]
    if not s or not s[0].isalpha():
        s = "x" + s
    if len(s) < 2 or s.endswith("-"):
        s += "_"
    return s[:128]


def ref(iri: str) -> model.ExternalReference:
    """The semantic id of a global concept: one ``GlobalReference`` key."""
    return model.ExternalReference((model.Key(model.KeyTypes.GLOBAL_REFERENCE, iri),))


def en(text: str) -> model.MultiLanguageTextType:
    return model.MultiLanguageTextType({"en": text[:1023] or "-"})


def _time(ns: int) -> dt.datetime:
    secs, rem = divmod(ns, 1_000_000_000)
    return dt.datetime.fromtimestamp(secs, tz=dt.UTC).replace(microsecond=rem // 1000)


def _iso(ns: int) -> str:
    return _time(ns).isoformat(timespec="microseconds")


def semantic_iri(tag: Tag, line_id: str) -> str:
    """The ontology IRI of the tag's term; the plant point's IRI for a tag without a term."""
    return tag.iri or point_iri(line_id, tag.id)


def line_asset(line_id: str) -> str:
    return f"{PLANT}{_slug(line_id)}"


def equipment_asset(line_id: str, equipment: str) -> str:
    return f"{PLANT}{_slug(line_id)}/equipment/{_slug(equipment)}"


def roll_asset(roll_id: str) -> str:
    return f"{DATA}roll/{_slug(roll_id)}"


def roll_submodel_id(roll_id: str) -> str:
    return f"{roll_asset(roll_id)}/submodel/RollData"


def numeric_tags(tags: Iterable[Tag]) -> list[Tag]:
    """The tags with numeric values (what a time series, a range or a statistic can describe)."""
    return [t for t in tags if t.value_type is ValueType.NUMBER]


# --- concept descriptions ----------------------------------------------------------------------------------------

SKOS = "http://www.w3.org/2004/02/skos/core#"


@lru_cache(maxsize=1)
def _matches() -> dict[str, tuple[str, ...]]:
    """Term IRI -> the external terms it is an exact or close match of (ontology/alignment.owl)."""
    out: dict[str, list[str]] = {}
    g = alignment_graph()
    for rel in ("exactMatch", "closeMatch"):
        for s, _, o in g.triples((None, URIRef(SKOS + rel), None)):
            out.setdefault(str(s), []).append(str(o))
    return {k: tuple(sorted(set(v))) for k, v in out.items()}


def concept_description(tag: Tag, line_id: str) -> model.ConceptDescription:
    """IEC 61360 description of a tag's semantic id: name, definition, unit (UCUM) and unit id (QUDT)."""
    iri = semantic_iri(tag, line_id)
    term = ontology_index().resolve(tag.parameter) if tag.parameter else None
    name = term.label if term is not None and term.label else tag.id
    unit = (term.ucum if term is not None and term.ucum else tag.unit) or "1"
    qudt = term.qudt_unit if term is not None else None
    definition = (term.comment if term is not None and term.comment else tag.description) or name
    content = model.DataSpecificationIEC61360(
        preferred_name=model.PreferredNameTypeIEC61360({"en": name[:255]}),
        data_type=model.DataTypeIEC61360.REAL_MEASURE,
        definition=model.DefinitionTypeIEC61360({"en": definition[:1023]}),
        unit=unit,
        unit_id=ref(qudt) if qudt else None,
    )
    local = iri.rsplit("#", 1)[-1].rsplit("/", 1)[-1]
    return model.ConceptDescription(
        id_=iri, id_short=id_short(local), is_case_of={ref(m) for m in _matches().get(iri, ())},
        embedded_data_specifications=[model.EmbeddedDataSpecification(ref(IEC61360), content)])


def concept_descriptions(tags: Iterable[Tag], line_id: str) -> list[model.ConceptDescription]:
    seen: dict[str, model.ConceptDescription] = {}
    for t in tags:
        iri = semantic_iri(t, line_id)
        if iri not in seen:
            seen[iri] = concept_description(t, line_id)
    return list(seen.values())


# --- Technical Data (IDTA 02003) -----------------------------------------------------------------------------------

def _unit_property(tag: Tag) -> model.Property:
    term = ontology_index().resolve(tag.parameter) if tag.parameter else None
    qudt = term.qudt_unit if term is not None else None
    return model.Property("Unit", model.datatypes.String, tag.unit, value_id=ref(qudt) if qudt else None,
                          semantic_id=ref(QUDT_UNIT))


def _point_properties(tag: Tag, line_id: str) -> model.SubmodelElementCollection:
    sid = ref(semantic_iri(tag, line_id))
    elems: list[model.SubmodelElement] = []
    if tag.lo > float("-inf") or tag.hi < float("inf"):
        elems.append(model.Range("Range", model.datatypes.Double,
                                 min=tag.lo if tag.lo > float("-inf") else None,
                                 max=tag.hi if tag.hi < float("inf") else None,
                                 semantic_id=sid, category="PARAMETER"))
    elems.append(_unit_property(tag))
    elems.append(model.Property("Role", model.datatypes.String, tag.role.value,
                                value_id=ref(NS + ROLE_IND[tag.role.value]), semantic_id=ref(NS + "hasRole")))
    if tag.accuracy is not None:
        elems.append(model.Property("Accuracy", model.datatypes.Double, tag.accuracy,
                                    semantic_id=ref(NS + "pointAccuracy")))
    desc = f"{tag.id}: {tag.description}" if tag.description else tag.id
    return model.SubmodelElementCollection(id_short(tag.id), elems, semantic_id=sid, description=en(desc))


def technical_data(submodel_id: str, designation: str, groups: Sequence[tuple[str | None, list[Tag]]],
                   line_id: str) -> model.Submodel:
    """Technical Data: GeneralInformation + TechnicalProperties; ``groups`` is (step or None, points)."""
    general = model.SubmodelElementCollection("GeneralInformation", [
        model.Property("ManufacturerName", model.datatypes.String, None, semantic_id=ref(TD_MANUFACTURER_NAME)),
        model.MultiLanguageProperty("ManufacturerProductDesignation", en(designation),
                                    semantic_id=ref(TD_PRODUCT_DESIGNATION)),
        model.Property("ManufacturerArticleNumber", model.datatypes.String, None, semantic_id=ref(TD_ARTICLE_NUMBER)),
        model.Property("ManufacturerOrderCode", model.datatypes.String, None, semantic_id=ref(TD_ORDER_CODE)),
    ], semantic_id=ref(TD_GENERAL))
    props: list[model.SubmodelElement] = []
    for step, tags in groups:
        points = [_point_properties(t, line_id) for t in tags]
        if step is None:
            props.extend(points)
        elif points:
            cls = step_class(step)
            props.append(model.SubmodelElementCollection(
                id_short(cls or step), points, semantic_id=ref(NS + cls) if cls else None,
                description=en(f"points of the step {step!r}")))
    technical = model.SubmodelElementCollection("TechnicalProperties", props, semantic_id=ref(TD_TECHNICAL_PROPERTIES))
    return model.Submodel(submodel_id, [general, technical], id_short="TechnicalData",
                          semantic_id=ref(TD_SUBMODEL), kind=model.ModellingKind.INSTANCE)


# --- Time Series Data (IDTA 02008) ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Extent:
    """What the store holds of one point: record count, first and last source time (ns)."""

    count: int
    first_ns: int | None
    last_ns: int | None


def store_extents(store: Any, tags: Iterable[Tag], line_id: str) -> dict[str, Extent]:
    """Record count and time extent per tag, from the store's own aggregation (one bucket over all time)."""
    out: dict[str, Extent] = {}
    for t in tags:
        buckets = store.series(t.id, TIME_FIRST_NS, TIME_LAST_NS, 1, line_id)
        if buckets:
            out[t.id] = Extent(sum(b.count for b in buckets), min(b.first_ns for b in buckets),
                               max(b.last_ns for b in buckets))
        else:
            out[t.id] = Extent(0, None, None)
    return out


def _linked_segment(tag: Tag, extent: Extent, line_id: str, base_url: str) -> model.SubmodelElementCollection:
    elems: list[model.SubmodelElement] = [
        model.MultiLanguageProperty("Name", en(tag.id), semantic_id=ref(TS_SEGMENT_NAME)),
        model.MultiLanguageProperty("Description", en(f"{tag.description or tag.id} ({tag.role.value}, {tag.unit})"),
                                    semantic_id=ref(TS_SEGMENT_DESCRIPTION)),
        model.Property("RecordCount", model.datatypes.Long, extent.count, semantic_id=ref(TS_RECORD_COUNT)),
    ]
    query: dict[str, Any] = {"line": line_id}
    if extent.first_ns is not None and extent.last_ns is not None:
        end_ns = (extent.last_ns // 1000 + 1) * 1000  # the API's end is exclusive and in microseconds
        elems += [model.Property("StartTime", model.datatypes.DateTime, _time(extent.first_ns),
                                 semantic_id=ref(TS_START_TIME)),
                  model.Property("EndTime", model.datatypes.DateTime, _time(extent.last_ns),
                                 semantic_id=ref(TS_END_TIME)),
                  model.Property("LastUpdate", model.datatypes.DateTime, _time(extent.last_ns),
                                 semantic_id=ref(TS_LAST_UPDATE))]
        query.update(start=_iso(extent.first_ns), end=_iso(end_ns))
    query["points"] = SERIES_POINTS
    elems += [
        model.Property("State", model.datatypes.String, "in progress", semantic_id=ref(TS_STATE)),
        model.Property("Endpoint", model.datatypes.String, f"{base_url.rstrip('/')}/api/v1/series/{quote(tag.id)}",
                       semantic_id=ref(TS_ENDPOINT)),
        model.Property("Query", model.datatypes.String, urlencode(query), semantic_id=ref(TS_QUERY)),
    ]
    return model.SubmodelElementCollection(id_short(tag.id), elems, semantic_id=ref(TS_LINKED_SEGMENT))


def time_series(submodel_id: str, tags: Sequence[Tag], extents: dict[str, Extent], line_id: str,
                base_url: str) -> model.Submodel:
    record = model.SubmodelElementCollection("Record", [
        model.Property("Time", model.datatypes.DateTime, None, semantic_id=ref(TS_UTC_TIME)),
        *[model.Property(id_short(t.id), model.datatypes.Double, None, semantic_id=ref(semantic_iri(t, line_id)),
                         description=en(f"{t.id} [{t.unit}]")) for t in tags],
    ], semantic_id=ref(TS_RECORD))
    metadata = model.SubmodelElementCollection("Metadata", [
        model.MultiLanguageProperty("Name", en(f"line {line_id}: stored time series"),
                                    semantic_id=ref(TS_METADATA_NAME)),
        model.MultiLanguageProperty("Description", en(
            "Every point of the line as stored by the twin, in the canonical unit of its ontology term; each linked "
            "segment's endpoint and query return it downsampled (min, mean, max per bucket)."),
            semantic_id=ref(TS_METADATA_DESCRIPTION)),
        record,
    ], semantic_id=ref(TS_METADATA))
    segments = model.SubmodelElementCollection(
        "Segments", [_linked_segment(t, extents.get(t.id, Extent(0, None, None)), line_id, base_url) for t in tags],
        semantic_id=ref(TS_SEGMENTS))
    return model.Submodel(submodel_id, [metadata, segments], id_short="TimeSeries", semantic_id=ref(TS_SUBMODEL),
                          kind=model.ModellingKind.INSTANCE)


# --- the line and its equipment ------------------------------------------------------------------------------------

def _shell(aas_id: str, asset_id: str, name: str, submodels: Sequence[model.Submodel],
           specific: Sequence[tuple[str, str]] = ()) -> model.AssetAdministrationShell:
    info = model.AssetInformation(
        asset_kind=model.AssetKind.INSTANCE, global_asset_id=asset_id,
        specific_asset_id=[model.SpecificAssetId(k, v) for k, v in specific])
    return model.AssetAdministrationShell(
        info, aas_id, id_short=id_short(name), description=en(name),
        submodel={model.ModelReference.from_referable(s) for s in submodels})


def line_environment(tags: dict[str, Tag], line_id: str, extents: dict[str, Extent],
                     base_url: str) -> model.DictIdentifiableStore:
    """Shells, submodels and concept descriptions of the line and its equipment."""
    points = [t for t in numeric_tags(tags.values()) if t.role is not Role.PREDICTED]
    base = line_asset(line_id)
    order = {s["local_name"]: s["order"] for s in ontology_index().steps}
    steps = sorted({t.step for t in points}, key=lambda s: (order.get(step_class(s) or "", -1), s))
    td = technical_data(f"{base}/submodel/TechnicalData", f"electrode pilot line {line_id}",
                        [(s, [t for t in points if t.step == s]) for s in steps], line_id)
    series_tags = numeric_tags(tags.values())
    ts = time_series(f"{base}/submodel/TimeSeries", series_tags, extents, line_id, base_url)
    objects: list[model.Identifiable] = [td, ts, _shell(f"{base}/aas", base, f"line {line_id}", [td, ts])]
    for eq in sorted({t.equipment for t in points if t.equipment}):
        asset = equipment_asset(line_id, eq)
        sm = technical_data(f"{asset}/submodel/TechnicalData", eq, [(None, [t for t in points if t.equipment == eq])],
                            line_id)
        objects += [sm, _shell(f"{asset}/aas", asset, f"{eq} of line {line_id}", [sm], [("lineId", line_id)])]
    objects += concept_descriptions(series_tags, line_id)
    return model.DictIdentifiableStore(objects)


# --- per roll --------------------------------------------------------------------------------------------------

@dataclass
class _Agg:
    count: int = 0
    total: float = 0.0
    lo: float = float("inf")
    hi: float = float("-inf")
    first_ns: int = 2**63
    last_ns: int = -(2**63)
    bad: int = 0

    def add(self, value: float, ts_ns: int) -> None:
        self.count += 1
        self.total += value
        self.lo, self.hi = min(self.lo, value), max(self.hi, value)
        self.first_ns, self.last_ns = min(self.first_ns, ts_ns), max(self.last_ns, ts_ns)


def aggregate(samples: Iterable[Any]) -> dict[tuple[str, str], _Agg]:
    """(line, tag) -> count, mean, min, max, first, last of the samples; BAD quality ones are counted, not used."""
    out: dict[tuple[str, str], _Agg] = {}
    for s in samples:
        a = out.setdefault((s.line_id, s.tag_id), _Agg())
        if int(s.quality) >= 2:
            a.bad += 1
        else:
            a.add(float(s.value), int(s.source_ts_ns))
    return out


def _aggregate_element(tag: Tag, agg: _Agg, line_id: str) -> model.SubmodelElementCollection:
    sid = ref(semantic_iri(tag, line_id))
    elems: list[model.SubmodelElement] = [
        model.Property("Mean", model.datatypes.Double, agg.total / agg.count, semantic_id=sid),
        model.Property("Min", model.datatypes.Double, agg.lo, semantic_id=sid),
        model.Property("Max", model.datatypes.Double, agg.hi, semantic_id=sid),
        _unit_property(tag),
        model.Property("Count", model.datatypes.Long, agg.count, semantic_id=ref(TS_RECORD_COUNT)),
        model.Property("FirstTime", model.datatypes.DateTime, _time(agg.first_ns), semantic_id=ref(TS_START_TIME)),
        model.Property("LastTime", model.datatypes.DateTime, _time(agg.last_ns), semantic_id=ref(TS_END_TIME)),
    ]
    if agg.bad:
        elems.append(model.Property("BadQualityCount", model.datatypes.Long, agg.bad,
                                    description=en("samples of BAD quality left out of mean, min and max")))
    desc = f"{tag.id} ({tag.role.value}, step {tag.step}): {tag.description}" if tag.description else tag.id
    return model.SubmodelElementCollection(id_short(tag.id), elems, semantic_id=sid, description=en(desc))


def roll_environment(roll_id: str, samples: Sequence[Any], tags: dict[str, Tag],
                     line_id: str) -> model.DictIdentifiableStore:
    """The roll's shell, its RollData submodel and the concept descriptions it refers to.

    ``samples`` are the stored samples of the roll on ``line_id`` (other lines' samples are left out)."""
    aggs = {tag: a for (line, tag), a in aggregate(samples).items() if line == line_id and tag in tags}
    groups: dict[str, list[model.SubmodelElement]] = {"ProcessParameters": [], "MeasuredStructure": [],
                                                      "PredictedStructure": []}
    used: list[Tag] = []
    for tag_id in sorted(aggs):
        t, a = tags[tag_id], aggs[tag_id]
        if t.value_type is not ValueType.NUMBER or t.kind is ParameterKind.TRACE or a.count == 0:
            continue
        group = ("PredictedStructure" if t.role is Role.PREDICTED else
                 "MeasuredStructure" if t.kind is ParameterKind.SP else "ProcessParameters")
        groups[group].append(_aggregate_element(t, a, line_id))
        used.append(t)
    first = min((a.first_ns for a in aggs.values() if a.count), default=None)
    last = max((a.last_ns for a in aggs.values() if a.count), default=None)
    roll_term = ontology_index().resolve("RollId")
    elems: list[model.SubmodelElement] = [
        model.Property("RollId", model.datatypes.String, roll_id,
                       semantic_id=ref(roll_term.iri if roll_term else NS + "RollId")),
        model.Property("LineId", model.datatypes.String, line_id, semantic_id=ref(NS + "inLine"),
                       value_id=ref(line_asset(line_id))),
    ]
    if first is not None and last is not None:
        elems += [model.Property("FirstTime", model.datatypes.DateTime, _time(first), semantic_id=ref(TS_START_TIME)),
                  model.Property("LastTime", model.datatypes.DateTime, _time(last), semantic_id=ref(TS_END_TIME))]
    descriptions = {"ProcessParameters": "machine and process parameters (MP, PP) while the roll was in the line",
                    "MeasuredStructure": "structure parameters (SP) measured on the roll",
                    "PredictedStructure": "structure parameters predicted by the twin's surrogate ensemble"}
    for name, children in groups.items():
        elems.append(model.SubmodelElementCollection(name, children, description=en(descriptions[name])))
    asset = roll_asset(roll_id)
    sm = model.Submodel(roll_submodel_id(roll_id), elems, id_short="RollData", semantic_id=ref(ROLL_SUBMODEL),
                        description=en(f"roll {roll_id} on line {line_id}: stored samples aggregated per point"),
                        kind=model.ModellingKind.INSTANCE)
    shell = _shell(f"{asset}/aas", asset, f"roll {roll_id}", [sm], [("lineId", line_id), ("rollId", roll_id)])
    return model.DictIdentifiableStore([shell, sm, *concept_descriptions(used, line_id)])


# --- serialisation ---------------------------------------------------------------------------------------------------

def to_json(obj: Any) -> Any:
    """A shell, submodel or list of them as JSON-ready data, by the SDK's encoder."""
    import json

    return json.loads(json.dumps(obj, cls=json_serialization.AASToJsonEncoder))


def environment_json(objects: model.AbstractObjectStore) -> str:
    """An AAS environment (assetAdministrationShells, submodels, conceptDescriptions) as JSON text."""
    return json_serialization.object_store_to_json(objects)


def aasx_bytes(objects: model.AbstractObjectStore, *, created: dt.datetime | None = None,
               creator: str = "pilotline-twin") -> bytes:
    """An AASX package (XML part ``/aasx/data.xml``) of every object in ``objects``, by the SDK's writer."""
    import pyecma376_2

    buf = io.BytesIO()
    with aasx.AASXWriter(buf, failsafe=False) as writer:
        writer.write_all_aas_objects("/aasx/data.xml", objects, aasx.DictSupplementaryFileContainer())
        props = pyecma376_2.OPCCoreProperties()
        props.creator = creator
        props.created = created or dt.datetime.now(dt.UTC)
        writer.write_core_properties(props)
    return buf.getvalue()
