"""Plant points against the ontology: deliberate errors refuse start-up naming the point; HermiT."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ontology.plant import ontology_index, points, validate_plant
from ontology.tagmap import TagMap, TagMapError
from tests.conftest import DEFAULTS

GOOD = {"id": "calendering.gap_actual", "step": "calendering", "kind": "MP", "role": "actual",
        "parameter": "CalenderGap", "equipment": "Calender", "canonical_unit": "um", "range": [10, 400],
        "sources": [{"mqtt": "pilot/{line}/calendering/gap_actual", "unit": "um"}]}


def _load(**change: object) -> TagMap:
    return TagMap.from_dict({"tags": [{**GOOD, **change}]}, origin="plant.toml")


def test_good_point_loads_with_its_iri() -> None:
    tm = _load()
    assert tm.tags["calendering.gap_actual"].iri == "https://w3id.org/pilotline-twin/ontology#CalenderGap"


@pytest.mark.parametrize(("change", "fragment"), [
    ({"parameter": "CalenderGapp"}, "unknown IRI <https://w3id.org/pilotline-twin/ontology#CalenderGapp>"),
    ({"parameter": "https://example.org/onto#Gap"}, "unknown IRI <https://example.org/onto#Gap>"),
    ({"kind": "SP", "role": "measured"}, "kind SP (StructureParameter) but parameter CalenderGap is a MachineParameter"),
    ({"parameter": "CalenderedPorosity"}, "kind MP (MachineParameter) but parameter CalenderedPorosity is a "
                                          "StructureParameter"),
    ({"canonical_unit": "kg", "sources": [{"replay": "gap"}], "range": [0, 1]},
     "unit 'kg' has dimension [mass], but quantity kind Length of CalenderGap needs [length]"),
    ({"canonical_unit": "mm", "range": [0.01, 0.4], "sources": [{"replay": "gap", "unit": "mm"}]},
     "canonical_unit 'mm' is not the canonical unit 'um' of CalenderGap"),
    ({"range": ["0.01 mm", "0.4 mm"]}, "range bound '0.01 mm' is in 'millimeter', not in the canonical unit 'um'"),
    ({"equipment": "Toaster"}, "equipment 'Toaster' is not an Equipment class"),
    ({"kind": "TRACE", "parameter": "WebPosition", "traceability": "web_speed", "canonical_unit": "m/min",
      "range": [0, 100], "sources": [{"replay": "v"}]}, "traceability web_speed needs parameter WebSpeed"),
    ({"kind": "TRACE", "parameter": "RollId"}, "unit 'um' has dimension [length], but RollId is categorical"),
    ({"kind": "TRACE", "parameter": "CalenderGap"}, "kind TRACE (TraceQuantity) but parameter CalenderGap is a "
                                                    "MachineParameter"),
    ({"kind": "TRACE", "parameter": "WebSpeed", "traceability": "web_position", "canonical_unit": "m/min",
      "range": [0, 100], "sources": [{"replay": "v"}]}, "traceability web_position needs parameter WebPosition"),
    ({"step": "baking"}, "step 'baking' is not a manufacturing step"),
])
def test_deliberate_errors_name_the_point(change: dict, fragment: str) -> None:
    with pytest.raises(TagMapError) as exc:
        _load(**change)
    msg = str(exc.value)
    assert "calendering.gap_actual" in msg and fragment in msg, msg


def test_range_with_canonical_unit_strings_is_accepted() -> None:
    tm = _load(range=["10 um", "400 um"])
    assert (tm.tags["calendering.gap_actual"].lo, tm.tags["calendering.gap_actual"].hi) == (10.0, 400.0)


def test_require_parameters_refuses_a_bare_point() -> None:
    bare = {k: v for k, v in GOOD.items() if k not in ("parameter", "equipment")}
    TagMap.from_dict({"tags": [bare]})  # fine without the plant switch
    with pytest.raises(TagMapError, match="point 'calendering.gap_actual': no parameter"):
        TagMap.from_dict({"plant": {"require_parameters": True}, "tags": [bare]})


def test_every_default_tag_references_a_parameter_of_its_kind() -> None:
    raw = tomllib.loads((DEFAULTS / "tagmap.toml").read_text())
    assert raw["plant"]["require_parameters"] is True
    tm = TagMap.load(DEFAULTS / "tagmap.toml")
    idx = ontology_index()
    for tag in tm.tags.values():
        term = idx.resolve(tag.parameter)
        assert term is not None and term.kind == tag.kind.value and tag.iri == term.iri, tag.id
    assert validate_plant([]) == []
    pts = {p["tag_id"]: p for p in points(tm, "pilot-1")}
    assert pts["calendering.line_load"]["parameter"] == "CalenderPressure"
    assert pts["calendering.line_load"]["equipment"] == "Calender"


def test_check_config_refuses_a_broken_plant_file(tmp_path: Path) -> None:
    text = (DEFAULTS / "tagmap.toml").read_text().replace('parameter = "CalenderGap"', 'parameter = "CalenderGapp"', 1)
    (tmp_path / "tagmap.toml").write_text(text)
    cfg = (DEFAULTS / "demo_recorded.toml").read_text()
    from twin.config import ConfigError, check_config

    conf = tmp_path / "c.toml"
    raw = tomllib.loads(cfg)
    raw["tagmap"] = str(tmp_path / "tagmap.toml")
    for conn in raw.get("connectors", []):
        if "path" in conn:
            conn["path"] = str((DEFAULTS / conn["path"]).resolve()) if not os.path.isabs(conn["path"]) else conn["path"]
    conf.write_text(_dump(raw))
    with pytest.raises(ConfigError, match=r"point 'calendering.gap_\w+': parameter 'CalenderGapp': unknown IRI"):
        check_config(conf)
    r = subprocess.run([sys.executable, "-m", "twin.cli", "check-config", str(conf)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "CalenderGapp" in r.stderr


def _dump(d: dict, prefix: str = "") -> str:
    """A tiny TOML writer for the test's config (tables, arrays of tables, scalars, lists)."""
    import json

    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict) or isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    out = "\n".join(lines) + "\n"
    for k, v in tables:
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out += f"\n[{name}]\n" + _dump(v, name + ".")
        else:
            for item in v:
                out += f"\n[[{name}]]\n" + _dump(item, name + ".")
    return out
