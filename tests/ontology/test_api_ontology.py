"""Ontology API: steps, parameters, points, tags with IRIs, downloads, SPARQL; roll genealogy in JSON-LD."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rdflib
from fastapi.testclient import TestClient

from core.samples import Quality, RawReading, RollEvent, Sample, SourceKind
from ontology.build import NS
from tests.conftest import DEFAULTS, write_config
from twin.api import create_app
from twin.config import load_config
from twin.daemon import Daemon

T0 = 1_790_000_000 * 10**9
S = 10**9
PARENT_TAG = '''
[[tags]]
id = "calendering.parent_roll_id"
step = "calendering"
kind = "TRACE"
role = "actual"
parameter = "ParentRollId"
canonical_unit = "dimensionless"
value_type = "string"
traceability = "parent_roll_id"
description = "coated roll fed into the calender"
sources = [ { mqtt = "pilot/{line}/calendering/parent_roll_id" }, { replay = "parent_roll_id" } ]
'''


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    tm = tmp_path / "tagmap.toml"
    tm.write_text((DEFAULTS / "tagmap.toml").read_text() + PARENT_TAG)
    return Daemon(load_config(write_config(tmp_path, tagmap=tm)))


@pytest.fixture
def client(daemon: Daemon) -> TestClient:
    return TestClient(create_app(daemon))


def test_steps_parameters_points(client: TestClient) -> None:
    steps = client.get("/api/v1/ontology/steps").json()
    assert [s["local_name"] for s in steps][:4] == ["Mixing", "Coating", "Drying", "Calendering"]
    assert steps[3]["predecessor"] == "Drying"
    cal_mp = client.get("/api/v1/ontology/parameters", params={"step": "calendering", "kind": "MP"}).json()
    names = {p["local_name"] for p in cal_mp}
    assert {"CalenderGap", "CalenderPressure", "CalenderingSpeed", "CalenderRollTemperature"} <= names
    assert all(p["kind"] == "MP" and p["step"] == "Calendering" for p in cal_mp)
    gap = next(p for p in cal_mp if p["local_name"] == "CalenderGap")
    assert gap["canonical_unit"] == "um" and gap["qudt_unit"] == "http://qudt.org/vocab/unit/MicroM"
    assert gap["online_offline"] == "online" and gap["seed_table"] == 8
    assert client.get("/api/v1/ontology/parameters", params={"kind": "XX"}).status_code == 422
    assert client.get("/api/v1/ontology/parameters", params={"step": "baking"}).status_code == 404
    pts = client.get("/api/v1/ontology/points").json()
    p = next(x for x in pts if x["tag_id"] == "calendering.roll_temperature")
    assert p["parameter_iri"] == NS + "CalenderRollTemperature" and p["equipment"] == "Calender"
    assert p["iri"].startswith("https://w3id.org/pilotline-twin/plant/pilot-1/point/")


def test_tags_carry_iri_kind_role_unit_online(client: TestClient) -> None:
    tags = {t["id"]: t for t in client.get("/api/v1/tags").json()}
    t = tags["coating.areal_loading"]
    assert (t["iri"], t["kind"], t["role"], t["unit"], t["online"]) == (NS + "ArealLoading", "SP", "measured",
                                                                          "mg/cm**2", True)


def test_downloads_parse(client: TestClient) -> None:
    owl = client.get("/api/v1/ontology.owl")
    assert owl.status_code == 200 and owl.headers["content-type"].startswith("application/rdf+xml")
    g = rdflib.Graph().parse(data=owl.content, format="xml")
    pt = rdflib.URIRef("https://w3id.org/pilotline-twin/plant/pilot-1/point/calendering.gap_actual")
    assert (pt, rdflib.RDF.type, rdflib.URIRef(NS + "CalenderGap")) in g
    srcs = {str(g.value(s, rdflib.URIRef(NS + "address"))): str(g.value(s, rdflib.URIRef(NS + "sourceUnit")))
            for s in g.objects(pt, rdflib.URIRef(NS + "hasSource"))}
    assert srcs == {"ns=2;s=Calender.GapActual": "um", "pilot/{line}/calendering/gap_actual": "um",
                    "calender_gap_actual_um": "um"}
    ttl = client.get("/api/v1/ontology.ttl")
    g2 = rdflib.Graph().parse(data=ttl.text, format="turtle")
    assert len(g2) == len(g)


def test_sparql_select_limit_and_refusals(client: TestClient) -> None:
    q = ("PREFIX plt: <https://w3id.org/pilotline-twin/ontology#> PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#> "
         "SELECT ?c WHERE { ?c rdfs:subClassOf plt:StructureParameter }")
    r = client.get("/api/v1/sparql", params={"query": q})
    assert r.status_code == 200
    rows = r.json()["results"]["bindings"]
    assert {"c": NS + "CalenderedPorosity"} in rows and not r.json()["truncated"]
    r2 = client.get("/api/v1/sparql", params={"query": q, "limit": 3}).json()
    assert len(r2["results"]["bindings"]) == 3 and r2["truncated"]
    for bad in ("INSERT DATA { <a:x> <a:y> <a:z> }", "CONSTRUCT { ?s ?p ?o } WHERE { ?s ?p ?o }",
                "ASK { ?s ?p ?o }", "SELECT ?x WHERE { ?x ?y", "DELETE WHERE { ?s ?p ?o }"):
        assert client.get("/api/v1/sparql", params={"query": bad}).status_code == 400, bad
    slow = "SELECT * WHERE { ?a ?b ?c . ?d ?e ?f } ORDER BY ?c ?f"  # ~10^8 rows to sort
    assert client.get("/api/v1/sparql", params={"query": slow, "timeout_s": 0.2}).status_code == 504


def test_calendered_roll_derives_from_its_coated_roll(daemon: Daemon, client: TestClient) -> None:
    tagger = daemon.tagger
    out = []
    # the calender starts roll C-1 fed from coated roll K-7, then C-2 from K-8
    for i, (topic, value) in enumerate([("roll_id", "C-1"), ("parent_roll_id", "K-7"), ("gap_actual", 60.0),
                                        ("roll_id", "C-2"), ("parent_roll_id", "K-8"), ("gap_actual", 61.0)]):
        out.append(tagger.tag(RawReading(SourceKind.MQTT, f"pilot/pilot-1/calendering/{topic}", value,
                                         T0 + i * S, T0 + i * S + 1)))
    samples = [x for x in out if isinstance(x, Sample)]
    rolls = [x for x in out if isinstance(x, RollEvent)]
    assert [s.roll_id for s in samples] == ["C-1", "C-2"]
    daemon.store.write(samples, [], rolls)
    doc = client.get("/api/v1/rolls/C-1/observations.jsonld").json()
    g = rdflib.Graph().parse(data=json.dumps(doc), format="json-ld")
    prov = rdflib.Namespace("http://www.w3.org/ns/prov#")
    data = "https://w3id.org/pilotline-twin/data/roll/"
    assert set(g.objects(rdflib.URIRef(data + "C-1"), prov.wasDerivedFrom)) == {rdflib.URIRef(data + "K-7")}
    assert (rdflib.URIRef(data + "C-1"), rdflib.URIRef(NS + "seenInStep"), rdflib.URIRef(NS + "Calendering")) in g
    sosa = rdflib.Namespace("http://www.w3.org/ns/sosa/")
    assert len(set(g.subjects(rdflib.RDF.type, sosa.Observation))) == 1  # one stored sample of C-1
    doc2 = client.get("/api/v1/rolls/C-2/observations.jsonld").json()
    g2 = rdflib.Graph().parse(data=json.dumps(doc2), format="json-ld")
    assert set(g2.objects(rdflib.URIRef(data + "C-2"), prov.wasDerivedFrom)) == {rdflib.URIRef(data + "K-8")}
    _ = Quality


def test_genealogy_pairs_roll_and_parent_sharing_a_timestamp() -> None:
    from ontology.tagmap import TagMap
    from twin.jsonld import genealogy

    tm = TagMap.from_dict(__import__("tomllib").loads((DEFAULTS / "tagmap.toml").read_text() + PARENT_TAG))
    rows = [  # as the store returns them: newest first; each pair shares one timestamp (a recorded row)
        {"line_id": "L", "step": "calendering", "roll_id": "K-8", "source_ts_ns": 20, "tag_id": "calendering.parent_roll_id"},
        {"line_id": "L", "step": "calendering", "roll_id": "C-2", "source_ts_ns": 20, "tag_id": "calendering.roll_id"},
        {"line_id": "L", "step": "calendering", "roll_id": "K-7", "source_ts_ns": 10, "tag_id": "calendering.parent_roll_id"},
        {"line_id": "L", "step": "calendering", "roll_id": "C-1", "source_ts_ns": 10, "tag_id": "calendering.roll_id"},
        {"line_id": "M", "step": "calendering", "roll_id": "K-9", "source_ts_ns": 5, "tag_id": "calendering.parent_roll_id"},
    ]
    assert genealogy(rows, tm.tags) == [("L", "calendering", "C-1", "K-7"), ("L", "calendering", "C-2", "K-8")]


COATING_ROLL_TAG = '''
[[tags]]
id = "coating.roll_id"
step = "coating"
kind = "TRACE"
role = "actual"
parameter = "RollId"
canonical_unit = "dimensionless"
value_type = "string"
traceability = "roll_id"
description = "id of the roll being coated"
sources = [ { mqtt = "pilot/{line}/coating/roll_id" } ]
'''


def test_genealogy_by_order_of_rolls_through_steps() -> None:
    from ontology.tagmap import TagMap
    from twin.jsonld import genealogy

    tm = TagMap.from_dict(__import__("tomllib").loads((DEFAULTS / "tagmap.toml").read_text() + COATING_ROLL_TAG))
    ev = [("coating", "K-1", 1), ("coating", "K-2", 5), ("calendering", "C-1", 9), ("coating", "K-3", 10),
          ("calendering", "C-2", 14), ("calendering", "C-3", 20)]
    rows = [{"line_id": "L", "step": st, "roll_id": r, "source_ts_ns": ts, "tag_id": f"{st}.roll_id"}
            for st, r, ts in reversed(ev)]
    assert genealogy(rows, tm.tags) == [("L", "calendering", "C-1", "K-1"), ("L", "calendering", "C-2", "K-2"),
                                        ("L", "calendering", "C-3", "K-3")]
    # an explicit parent-roll tag wins over the order
    tm2 = TagMap.from_dict(__import__("tomllib").loads((DEFAULTS / "tagmap.toml").read_text() + COATING_ROLL_TAG
                                                       + PARENT_TAG))
    rows2 = rows + [{"line_id": "L", "step": "calendering", "roll_id": "K-2", "source_ts_ns": 9,
                     "tag_id": "calendering.parent_roll_id"}]
    assert genealogy(rows2, tm2.tags) == [("L", "calendering", "C-1", "K-2")]
