"""HermiT (owlready2, Java) on the real ontology + plant points; a point typed MP and SP is inconsistent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from rdflib import RDF, URIRef

from ontology.build import NS
from ontology.plant import owl_bytes, plant_graph, point_iri
from ontology.tagmap import TagMap
from tests.conftest import DEFAULTS

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="HermiT needs Java (scripts/setup.sh)")


def _consistent(g, tmp_path: Path) -> bool:
    import owlready2

    f = tmp_path / "plant.owl"
    f.write_bytes(owl_bytes(g))
    world = owlready2.World()
    world.get_ontology(f.as_uri()).load()
    try:
        owlready2.sync_reasoner_hermit(world, infer_property_values=False, debug=0)
    except owlready2.OwlReadyInconsistentOntologyError:
        return False
    return True


@pytest.fixture(scope="module")
def tagmap() -> TagMap:
    return TagMap.load(DEFAULTS / "tagmap.toml")


def test_real_ontology_and_plant_are_consistent(tagmap: TagMap, tmp_path: Path) -> None:
    assert _consistent(plant_graph(tagmap, "pilot-1"), tmp_path)


def test_point_typed_machine_and_structure_parameter_is_inconsistent(tagmap: TagMap, tmp_path: Path) -> None:
    g = plant_graph(tagmap, "pilot-1")
    pt = URIRef(point_iri("pilot-1", "calendering.gap_actual"))
    assert (pt, RDF.type, URIRef(NS + "CalenderGap")) in g  # MP
    g.add((pt, RDF.type, URIRef(NS + "CalenderedPorosity")))  # SP as well
    assert not _consistent(g, tmp_path)
