"""Alignment: every step and every coating / calendering MP and SP maps to BVCO, GPO or EMMO."""

from __future__ import annotations

import csv

import pytest
from rdflib import Graph, Namespace, URIRef

from ontology.build import ALIGNMENT_PATH, CSV_PATH, NS, STEPS

SKOS = Namespace("http://www.w3.org/2004/02/skos/core#")
TARGETS = ("https://gpo.ontology.link/", "https://gitlab.cc-asp.fraunhofer.de/ISC-Public/ISC-Digital/ontology/BVCO#",
           "https://w3id.org/emmo#", "https://w3id.org/emmo/domain/electrochemistry#")


@pytest.fixture(scope="module")
def g() -> Graph:
    graph = Graph()
    graph.parse(ALIGNMENT_PATH, format="xml")
    return graph


def _matches(g: Graph, local: str) -> list[str]:
    s = URIRef(NS + local)
    return [str(o) for p in (SKOS.exactMatch, SKOS.closeMatch, SKOS.broadMatch) for o in g.objects(s, p)
            if str(o).startswith(TARGETS)]


def _coating_calendering_mp_sp() -> list[str]:
    with CSV_PATH.open(newline="", encoding="utf-8") as fh:
        return [r["local_name"] for r in csv.DictReader(fh) if r["table"] in ("6", "8") and r["kind"] in ("MP", "SP")]


@pytest.mark.parametrize("local", [s[0] for s in STEPS])
def test_every_step_has_a_match(g: Graph, local: str) -> None:
    assert _matches(g, local), f"step {local} has no SKOS match to BVCO/GPO/EMMO"


@pytest.mark.parametrize("local", _coating_calendering_mp_sp())
def test_every_coating_and_calendering_mp_and_sp_has_a_match(g: Graph, local: str) -> None:
    assert _matches(g, local), f"{local} has no SKOS match to BVCO/GPO/EMMO"


def test_mapped_subjects_exist_in_the_ontology(g: Graph) -> None:
    from ontology.plant import ontology_graph

    onto = ontology_graph()
    subjects = {s for s in g.subjects() if str(s).startswith(NS)}
    missing = [str(s) for s in subjects if (s, None, None) not in onto]
    assert not missing


def test_key_iris(g: Graph) -> None:
    assert "https://w3id.org/emmo#EMMO_3a6578ac_aee0_43b9_9bc6_1eb208c8c9a9" in _matches(g, "CalenderedPorosity")
    assert ("https://w3id.org/emmo/domain/electrochemistry#electrochemistry_f9e1c862_c510_4b11_9141_bc91045df817"
            in _matches(g, "CalenderedCoatingThickness"))
    assert ("https://w3id.org/emmo/domain/electrochemistry#electrochemistry_c955c089_6ee1_41a2_95fc_d534c5cfd3d5"
            in _matches(g, "ArealLoading"))
    # GPO's Calendering is a coating process (a polymer-film sense): related, not a match
    gpo_cal = URIRef("https://gpo.ontology.link/GPO_f846eaba_e75a_49df_b71a_5f769e6a7e7e")
    assert (URIRef(NS + "Calendering"), SKOS.relatedMatch, gpo_cal) in g
    assert str(gpo_cal) not in _matches(g, "Calendering")
