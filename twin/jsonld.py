"""Export the observations of one roll (lot) as JSON-LD: SOSA/SSN observations with PROV provenance
(seed 004, section 4.2: trace and track).

Each stored sample of the roll becomes one ``sosa:Observation``: the roll is its feature of
interest (a ``prov:Entity``), the tag's ontology term its observed property, the value its
``sosa:hasSimpleResult`` with the QUDT/UCUM unit, the source timestamp its ``sosa:resultTime``; the
observation ``prov:wasAttributedTo`` the line and carries the tag, role, quality and web position.

Genealogy: a step may have a parent-roll tag (``traceability = "parent_roll_id"``: the upstream roll the
step's current roll is made from, e.g. the coated roll fed into the calender). Its values are stored as
roll events; :func:`genealogy` pairs each with the roll that was current in the same line and step at that
moment (the newest event of the step's roll-id tag at or before it), and the roll's node gets
``prov:wasDerivedFrom`` its parent roll. A step without a parent-roll tag falls back to the order of rolls
through the steps: its n-th roll is made from the n-th roll of the nearest upstream step with a roll-id tag.
"""

from __future__ import annotations

from typing import Any

from core.samples import ns_to_iso
from ontology.plant import ontology_index, step_class

NS = "https://w3id.org/pilotline-twin/ontology#"
DATA = "https://w3id.org/pilotline-twin/data/"

CONTEXT = {
    "sosa": "http://www.w3.org/ns/sosa/",
    "ssn": "http://www.w3.org/ns/ssn/",
    "prov": "http://www.w3.org/ns/prov#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "plt": NS,
    "data": DATA,
    "resultTime": {"@id": "sosa:resultTime", "@type": "xsd:dateTime"},
    "hasSimpleResult": {"@id": "sosa:hasSimpleResult", "@type": "xsd:double"},
    "webPosition_m": {"@id": "plt:webPosition_m", "@type": "xsd:double"},
    "quality": {"@id": "plt:quality", "@type": "xsd:integer"},
    "unit": {"@id": "plt:unit"},
    "tag": {"@id": "plt:tag"},
    "role": {"@id": "plt:role"},
}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _trace(tags: dict[str, Any], tag_id: str | None) -> str:
    t = tags.get(tag_id) if tag_id is not None else None
    return getattr(getattr(t, "traceability", None), "value", "") if t is not None else ""


def genealogy(rolls: list[dict[str, Any]], tags: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(line, step, child roll, parent roll) from the rolls table (rows as :meth:`Store.rolls` returns them)."""
    # a roll id and its parent arrive together in one recorded row (same timestamp): the roll id first
    rows = sorted(rolls, key=lambda r: (r["source_ts_ns"], _trace(tags, r.get("tag_id")) != "roll_id"))
    current: dict[tuple[str, str], str] = {}
    out: list[tuple[str, str, str, str]] = []
    for r in rows:
        kind = _trace(tags, r.get("tag_id"))
        key = (r["line_id"], r["step"])
        if kind == "roll_id":
            current[key] = r["roll_id"]
        elif kind == "parent_roll_id" and key in current:
            out.append((r["line_id"], r["step"], current[key], r["roll_id"]))
    return out + _by_order(rows, tags, {(line, step) for line, step, _, _ in out})


def _by_order(rows: list[dict[str, Any]], tags: dict[str, Any],
              explicit: set[tuple[str, str]]) -> list[tuple[str, str, str, str]]:
    """Without a parent-roll tag: rolls pass the steps in order, so the n-th roll to enter a step is made
    from the n-th roll that entered the nearest upstream step with a roll-id tag (same line)."""
    order = {s["local_name"]: s["order"] for s in ontology_index().steps}
    seq: dict[tuple[str, str], list[str]] = {}
    for r in rows:  # already in time order
        if _trace(tags, r.get("tag_id")) == "roll_id":
            seq.setdefault((r["line_id"], r["step"]), []).append(r["roll_id"])
    out: list[tuple[str, str, str, str]] = []
    for (line, step), rolls in seq.items():
        pos = order.get(step_class(step) or "")
        if pos is None or (line, step) in explicit:
            continue
        ups = [(order[step_class(s2) or ""], s2) for (l2, s2) in seq
               if l2 == line and order.get(step_class(s2) or "", pos) < pos]
        if not ups:
            continue
        upstream = seq[(line, max(ups)[1])]
        out.extend((line, step, child, parent) for child, parent in zip(rolls, upstream) if child != parent)
    return out


def _step_iri(step: str) -> str:
    return f"{NS}{step_class(step) or _slug(step)}"


def roll_document(roll_id: str, samples: list[Any], tags: dict[str, Any], rolls: list[dict[str, Any]]) -> dict[str, Any]:
    roll_iri = f"{DATA}roll/{_slug(roll_id)}"
    lines = sorted({s.line_id for s in samples})
    roll_node: dict[str, Any] = {"@id": roll_iri, "@type": ["prov:Entity", "plt:Roll"], "rdfs:label": roll_id}
    steps = sorted({r["step"] for r in rolls if r["roll_id"] == roll_id and _trace(tags, r.get("tag_id")) != "parent_roll_id"})
    if steps:
        roll_node["plt:seenInStep"] = [{"@id": _step_iri(s)} for s in steps]
    graph: list[dict[str, Any]] = [roll_node]
    links = genealogy(rolls, tags)
    parents = sorted({(p, st) for _, st, child, p in links if child == roll_id})
    if parents:
        roll_node["prov:wasDerivedFrom"] = [{"@id": f"{DATA}roll/{_slug(p)}"} for p, _ in parents]
        for p, st in parents:
            up = [r["step"] for r in rolls if r["roll_id"] == p and _trace(tags, r.get("tag_id")) == "roll_id"]
            node: dict[str, Any] = {"@id": f"{DATA}roll/{_slug(p)}", "@type": ["prov:Entity", "plt:Roll"],
                                    "rdfs:label": p, "plt:fedInto": {"@id": _step_iri(st)}}
            if up:
                node["plt:seenInStep"] = [{"@id": _step_iri(s)} for s in sorted(set(up))]
            graph.append(node)
    children = sorted({c for _, _, c, p in links if p == roll_id})
    if children:
        roll_node["plt:derivedInto"] = [{"@id": f"{DATA}roll/{_slug(c)}"} for c in children]
    for line in lines:
        graph.append({"@id": f"{DATA}line/{_slug(line)}", "@type": ["prov:Agent", "plt:Line"], "rdfs:label": line})
    for s in samples:
        t = tags.get(s.tag_id)
        prop = (t.parameter if t is not None and t.parameter else s.tag_id)
        prop_iri = prop if prop.startswith("http") else f"{NS}{_slug(prop)}"
        graph.append({
            "@id": f"{DATA}obs/{_slug(s.line_id)}/{_slug(s.tag_id)}/{s.source_ts_ns}",
            "@type": "sosa:Observation",
            "sosa:hasFeatureOfInterest": {"@id": roll_iri},
            "sosa:observedProperty": {"@id": prop_iri},
            "hasSimpleResult": s.value,
            "unit": s.unit,
            "resultTime": ns_to_iso(s.source_ts_ns),
            "prov:wasAttributedTo": {"@id": f"{DATA}line/{_slug(s.line_id)}"},
            "prov:generatedAtTime": {"@value": ns_to_iso(s.received_ts_ns), "@type": "xsd:dateTime"},
            "tag": s.tag_id,
            "role": t.role.value if t is not None else None,
            "quality": int(s.quality),
            **({"webPosition_m": s.web_pos_m} if s.web_pos_m is not None else {}),
        })
    return {"@context": CONTEXT, "@graph": graph}
