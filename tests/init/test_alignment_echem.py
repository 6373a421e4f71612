"""The alignment carries the EMMO electrochemistry domain's manufacturing steps and calendering properties."""

from __future__ import annotations

from rdflib import Graph, Namespace, URIRef

from ontology.build import ALIGNMENT_PATH, NS

SKOS = Namespace("http://www.w3.org/2004/02/skos/core#")
E = "https://w3id.org/emmo/domain/electrochemistry#electrochemistry_"


def test_emmo_electrochemistry_terms_in_the_alignment() -> None:
    g = Graph()
    g.parse(ALIGNMENT_PATH, format="xml")
    expect = [  # IRIs as emmo-repo/domain-electrochemistry 0.37.2 defines them (prefLabel in the comment)
        ("Coating", SKOS.closeMatch, "cfcf6ca6_70e9_4369_9314_7f20b3efbf21"),  # ElectrodeCoatingProcess
        ("Drying", SKOS.closeMatch, "36c2e19c_cb1a_41e9_bcd5_baf9dfd21905"),  # ElectrodeDrying
        ("Calendering", SKOS.closeMatch, "38a2b407_3be9_4b66_86cf_b961cdffb4c9"),  # ElectrodeCalendering
        ("CalenderedCoatingThickness", SKOS.exactMatch, "f9e1c862_c510_4b11_9141_bc91045df817"),
        ("CalenderedDensity", SKOS.exactMatch, "520995f8_ec9c_4b3c_bb64_2cd691947379"),
        ("CalenderedPorosity", SKOS.narrowMatch, "7481c4c9_c247_4248_a045_a1077230acba"),  # PositiveElectrode...
    ]
    for local, rel, iri in expect:
        assert (URIRef(NS + local), rel, URIRef(E + iri)) in g, local


def test_calendered_density_is_a_parameter_the_tag_map_can_use() -> None:
    from ontology.plant import ontology_index

    t = ontology_index().terms["CalenderedDensity"]
    assert (t.kind, t.step, t.canonical_unit, t.quantity_kind) == ("SP", "Calendering", "g/cm**3", "Density")
