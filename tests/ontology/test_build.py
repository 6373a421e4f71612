"""The authored ontology: committed files equal a fresh build; every seed-004 parameter is a class."""

from __future__ import annotations

import csv

import pytest
from rdflib import OWL, RDF, RDFS, Graph, Literal, URIRef

from ontology.build import ALIGNMENT_PATH, CSV_PATH, NS, OWL_PATH, STEPS, build

KIND = {"MP": "MachineParameter", "PP": "ProcessParameter", "SP": "StructureParameter"}


@pytest.fixture(scope="module")
def g() -> Graph:
    graph = Graph()
    graph.parse(OWL_PATH, format="xml")
    return graph


def test_committed_files_equal_a_fresh_build() -> None:
    owl, alignment = build(write=False)
    assert OWL_PATH.read_bytes() == owl, "ontology/pilotline.owl is stale: run `twin ontology build`"
    assert ALIGNMENT_PATH.read_bytes() == alignment, "ontology/alignment.owl is stale: run `twin ontology build`"


def test_no_imports_and_own_namespace(g: Graph) -> None:
    assert list(g.objects(None, OWL.imports)) == []
    onto = list(g.subjects(RDF.type, OWL.Ontology))
    assert [str(o) for o in onto] == [NS.rstrip("#")]


def _seed_rows() -> list[dict[str, str]]:
    with CSV_PATH.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_seed_table_covers_tables_5_to_12() -> None:
    rows = _seed_rows()
    assert {r["table"] for r in rows} == {str(n) for n in range(5, 13)}
    names = [r["local_name"] for r in rows]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("row", _seed_rows(), ids=lambda r: f"T{r['table']}-{r['local_name']}")
def test_every_seed_parameter_is_a_class_with_kind_unit_measurability_mode(g: Graph, row: dict[str, str]) -> None:
    c = URIRef(NS + row["local_name"])
    assert (c, RDF.type, OWL.Class) in g
    assert (c, RDFS.subClassOf, URIRef(NS + KIND[row["kind"]])) in g
    assert (c, RDFS.label, Literal(row["name"], lang="en")) in g
    assert str(g.value(c, URIRef(NS + "ofStep"))) == NS + row["step"]
    assert str(g.value(c, URIRef(NS + "canonicalUnit"))) == row["canonical_unit"]
    assert str(g.value(c, URIRef(NS + "ucumCode"))) == row["ucum"]
    qudt = g.value(c, URIRef(NS + "qudtUnit"))
    assert (str(qudt) == "http://qudt.org/vocab/unit/" + row["qudt_unit"]) if row["qudt_unit"] else qudt is None
    assert g.value(c, URIRef(NS + "quantityKind")) is not None
    assert str(g.value(c, URIRef(NS + "measurability"))) == row["measurability"]
    assert str(g.value(c, URIRef(NS + "accuracy"))) == row["accuracy"]
    assert str(g.value(c, URIRef(NS + "measurementMode"))) == (row["online_offline"] or "unspecified")
    assert int(g.value(c, URIRef(NS + "seedTable"))) == int(row["table"])
    for col, prop in (("crit_empirical", "criticalityEmpirical"), ("crit_ml", "criticalityML")):
        assert str(g.value(c, URIRef(NS + prop))) == row[col]


def test_kinds_are_pairwise_disjoint(g: Graph) -> None:
    members = None
    for adc in g.subjects(RDF.type, OWL.AllDisjointClasses):
        lst = g.value(adc, OWL.members)
        items = {str(x) for x in g.items(lst)}
        if NS + "MachineParameter" in items:
            members = items
    assert members == {NS + k for k in KIND.values()}


def test_steps_are_chained_by_predecessor_with_products_and_equipment() -> None:
    from ontology.plant import ontology_index

    steps = ontology_index().steps
    assert [s["local_name"] for s in steps] == [s[0] for s in STEPS]
    for prev, s in zip(steps, steps[1:]):
        assert s["predecessor"] == prev["local_name"]
        assert set(prev["outputs"]) & set(s["inputs"]), f"{prev['local_name']} output is not {s['local_name']} input"
    by = {s["local_name"]: s for s in steps}
    assert by["Calendering"]["inputs"] == ["DriedElectrode"] and by["Calendering"]["outputs"] == ["CalenderedElectrode"]
    assert "SlotDieCoater" in by["Coating"]["equipment"] and "Calender" in by["Calendering"]["equipment"]
    assert steps[0]["predecessor"] is None


def test_cli_build_check_passes_on_committed_files() -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "twin.cli", "ontology", "build", "--check"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
