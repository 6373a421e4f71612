"""AAS export (twin/aas.py, twin/aas_api.py): built from a real daemon's SQLite store, serialised and read back by
basyx-python-sdk, checked by the SDK's strict deserialiser, by the BaSyx compliance tool and by aas-core3.1's
verification of the AAS 3.1 meta-model constraints; an AASX of a roll written, read and compared."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import aas_core3_1.jsonization as core_json
import aas_core3_1.verification as core_verify
import aas_core3_1.xmlization as core_xml
import pytest
from aas_compliance_tool import compliance_check_aasx, compliance_check_json
from aas_compliance_tool.state_manager import ComplianceToolStateManager, Status
from basyx.aas import model
from basyx.aas.adapter import aasx
from basyx.aas.adapter.json import read_aas_json_file
from basyx.aas.examples.data._helper import AASDataChecker
from fastapi.testclient import TestClient

from core.samples import Quality, Sample
from ontology.plant import NS, point_iri
from tests.conftest import write_config
from twin import aas
from twin.api import create_app
from twin.config import load_config
from twin.daemon import Daemon
from twin.predictor import predicted_tag_specs

T0 = 1_790_000_000 * 10**9
S = 10**9
LINE = "pilot-1"
BASE = "http://twin.example:8000"


def _gap(i: int) -> float:
    return 60.0 + i % 10


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    d = Daemon(load_config(write_config(tmp_path)))
    d.tagmap.add_tags(predicted_tag_specs("calendering"))  # as the daemon does when the predictor is enabled
    rows = []
    for i in range(600):  # roll R-1: 60 s at 10 Hz
        ts = T0 + i * S // 10
        rows.append(Sample(LINE, "calendering.gap_actual", _gap(i), "um", ts, ts + 5, Quality.GOOD, "R-1", i / 10))
        if i % 10 == 0:
            rows += [Sample(LINE, "calendering.gap_setpoint", 65.0, "um", ts, ts + 5, Quality.GOOD, "R-1", i / 10),
                     Sample(LINE, "coating.dry_thickness", 100.0 + i / 60, "um", ts, ts + 5, Quality.GOOD, "R-1"),
                     Sample(LINE, "calendering.porosity_predicted", 30.0 + (i % 20) / 10, "percent", ts, ts + 5,
                            Quality.GOOD, "R-1")]
    t1 = T0 + 100 * S  # roll R-2: one BAD reading that must not count in mean / min / max
    rows += [Sample(LINE, "calendering.gap_actual", 70.0, "um", t1, t1, Quality.GOOD, "R-2"),
             Sample(LINE, "calendering.gap_actual", 72.0, "um", t1 + S, t1 + S, Quality.UNCERTAIN, "R-2"),
             Sample(LINE, "calendering.gap_actual", 9999.0, "um", t1 + 2 * S, t1 + 2 * S, Quality.BAD, "R-2"),
             # the same roll id on another line: not part of this line's export
             Sample("pilot-2", "calendering.gap_actual", 500.0, "um", t1, t1, Quality.GOOD, "R-1")]
    d.store.write(rows)
    return d


def _line_env(d: Daemon) -> model.DictIdentifiableStore:
    tags = d.tagmap.tags
    return aas.line_environment(tags, LINE, aas.store_extents(d.store, aas.numeric_tags(tags.values()), LINE), BASE)


def _roll_env(d: Daemon, roll: str) -> model.DictIdentifiableStore:
    return aas.roll_environment(roll, d.store.samples_of_roll(roll), d.tagmap.tags, LINE)


def _same(got: model.DictIdentifiableStore, expected: model.DictIdentifiableStore) -> None:
    """The SDK's own object comparison (ids, semantic ids, values, data specifications, every element)."""
    checker = AASDataChecker(raise_immediately=False)
    checker.check_identifiable_store(got, expected)
    failed = [str(c) for c in checker.failed_checks]
    assert not failed, "\n".join(failed[:20])
    assert sum(1 for _ in checker.successful_checks) > 100


def _compliance(module: object, path: Path) -> None:
    sm = ComplianceToolStateManager()
    module.check_deserialization(str(path), sm)  # type: ignore[attr-defined]
    report = [(s.name, s.status.name, [r.getMessage() for r in s.log_list]) for s in sm.steps]
    assert sm.steps and all(s.status is Status.SUCCESS for s in sm.steps), report


def _core_errors(env: object) -> list[str]:
    return [f"{e.path}: {e.cause}" for e in core_verify.verify(env)]  # type: ignore[arg-type]


def _walk(elements: object) -> list[model.SubmodelElement]:
    out = []
    for e in elements:  # type: ignore[attr-defined]
        out.append(e)
        if isinstance(e, model.SubmodelElementCollection):
            out.extend(_walk(e.value))
    return out


def _sid(e: model.HasSemantics) -> str | None:
    return e.semantic_id.key[0].value if e.semantic_id is not None else None


# --- validation --------------------------------------------------------------------------------------------

def test_line_environment_passes_the_sdk_checks_and_round_trips(daemon: Daemon, tmp_path: Path) -> None:
    env = _line_env(daemon)
    text = aas.environment_json(env)
    path = tmp_path / "line.json"
    path.write_text(text)
    back = read_aas_json_file(io.StringIO(text), failsafe=False)  # strict: any constraint violation raises
    assert {o.id for o in back} == {o.id for o in env}
    _same(back, env)
    _compliance(compliance_check_json, path)
    assert _core_errors(core_json.environment_from_jsonable(json.loads(text))) == []
    shells = [o for o in back if isinstance(o, model.AssetAdministrationShell)]
    assert {s.asset_information.global_asset_id for s in shells} >= {
        f"https://w3id.org/pilotline-twin/plant/{LINE}",
        f"https://w3id.org/pilotline-twin/plant/{LINE}/equipment/Calender",
        f"https://w3id.org/pilotline-twin/plant/{LINE}/equipment/Dryer"}


def test_the_checks_have_teeth(daemon: Daemon) -> None:
    """A broken document is refused by the same checks (so a pass above means something)."""
    doc = json.loads(aas.environment_json(_line_env(daemon)))
    i = next(i for i, s in enumerate(doc["submodels"]) if s["idShort"] == "TechnicalData")
    doc["submodels"][i]["submodelElements"][0]["idShort"] = "1 not an id"
    with pytest.raises(TypeError, match="AASd-002"):
        read_aas_json_file(io.StringIO(json.dumps(doc)), failsafe=False)
    assert any(e.startswith(f".submodels[{i}].submodel_elements[0].id_short:")
               for e in _core_errors(core_json.environment_from_jsonable(doc)))
    doc = json.loads(aas.environment_json(_line_env(daemon)))
    doc["submodels"][0]["submodelElements"][0]["value"].append(
        dict(doc["submodels"][0]["submodelElements"][0]["value"][0]))  # a duplicate idShort
    with pytest.raises(TypeError, match="AASd-022"):
        read_aas_json_file(io.StringIO(json.dumps(doc)), failsafe=False)


# --- content -------------------------------------------------------------------------------------------------

def test_technical_data_has_ranges_units_and_ontology_semantic_ids(daemon: Daemon) -> None:
    env = _line_env(daemon)
    tags = daemon.tagmap.tags
    td = env.get_item(f"https://w3id.org/pilotline-twin/plant/{LINE}/equipment/Calender/submodel/TechnicalData")
    assert _sid(td) == aas.TD_SUBMODEL
    general, technical = td.get_referable("GeneralInformation"), td.get_referable("TechnicalProperties")
    assert _sid(general) == aas.TD_GENERAL and _sid(technical) == aas.TD_TECHNICAL_PROPERTIES
    gap = technical.get_referable("calendering_gap_actual")
    assert _sid(gap) == tags["calendering.gap_actual"].iri == NS + "CalenderGap"
    rng = gap.get_referable("Range")
    assert (rng.min, rng.max) == (10.0, 400.0) and _sid(rng) == NS + "CalenderGap"
    unit = gap.get_referable("Unit")
    assert unit.value == "um" and unit.value_id.key[0].value == "http://qudt.org/vocab/unit/MicroM"
    # every point on the calender is there, each element carrying a value or range has the tag's ontology IRI
    on_calender = {t.id for t in tags.values() if t.equipment == "Calender" and t.value_type.value == "number"}
    assert {e.id_short for e in technical.value} == {aas.id_short(t) for t in on_calender}
    for point in technical.value:
        tag = next(t for t in on_calender if aas.id_short(t) == point.id_short)
        for e in _walk([point]):
            if isinstance(e, (model.Range, model.SubmodelElementCollection)):
                assert _sid(e) == tags[tag].iri, (tag, e.id_short)
    # the concept description of the term says its unit (UCUM) and QUDT unit
    cd = env.get_item(NS + "CalenderGap")
    iec = cd.embedded_data_specifications[0].data_specification_content
    assert iec.unit == "um" and iec.unit_id.key[0].value == "http://qudt.org/vocab/unit/MicroM"
    # and which external terms it matches (ontology/alignment.owl: exact / close matches)
    porosity = env.get_item(NS + "CalenderedPorosity")
    emmo_porosity = "https://w3id.org/emmo#EMMO_3a6578ac_aee0_43b9_9bc6_1eb208c8c9a9"
    assert {r.key[0].value for r in porosity.is_case_of} == {emmo_porosity}
    # the line's Technical Data groups the points per step, steps as ontology classes
    line_td = env.get_item(f"https://w3id.org/pilotline-twin/plant/{LINE}/submodel/TechnicalData")
    steps = line_td.get_referable("TechnicalProperties").value
    assert _sid(steps.get_object_by_attribute("id_short", "Calendering")) == NS + "Calendering"


def test_time_series_segments_link_to_the_series_api(daemon: Daemon) -> None:
    env = _line_env(daemon)
    ts = env.get_item(f"https://w3id.org/pilotline-twin/plant/{LINE}/submodel/TimeSeries")
    assert _sid(ts) == aas.TS_SUBMODEL
    record = ts.get_referable("Metadata").get_referable("Record")
    assert _sid(record.get_referable("Time")) == aas.TS_UTC_TIME
    assert _sid(record.get_referable("calendering_gap_actual")) == NS + "CalenderGap"
    predicted = record.get_referable("calendering_porosity_predicted")
    assert _sid(predicted) == point_iri(LINE, "calendering.porosity_predicted")
    seg = ts.get_referable("Segments").get_referable("calendering_gap_actual")
    assert _sid(seg) == aas.TS_LINKED_SEGMENT
    count = seg.get_referable("RecordCount").value
    assert count == 600 + 3  # R-1 and R-2 (3 readings) on this line: BAD readings are stored too
    assert seg.get_referable("StartTime").value.timestamp() == T0 / S
    endpoint, query = seg.get_referable("Endpoint").value, seg.get_referable("Query").value
    assert endpoint == f"{BASE}/api/v1/series/calendering.gap_actual"
    # the link works: the API answers the segment's endpoint and query with every record of it
    client = TestClient(create_app(daemon))
    r = client.get(urlsplit(endpoint).path, params=dict(parse_qsl(query)))
    assert r.status_code == 200, r.text
    assert sum(b["count"] for b in r.json()["buckets"]) == count
    empty = ts.get_referable("Segments").get_referable("drying_airflow")
    assert empty.get_referable("RecordCount").value == 0 and "StartTime" not in {e.id_short for e in empty.value}


def test_roll_aasx_round_trips(daemon: Daemon, tmp_path: Path) -> None:
    env = _roll_env(daemon, "R-1")
    path = tmp_path / "R-1.aasx"
    path.write_bytes(aas.aasx_bytes(env))
    back: model.DictIdentifiableStore = model.DictIdentifiableStore()
    with aasx.AASXReader(str(path), failsafe=False) as reader:
        reader.read_into(back, aasx.DictSupplementaryFileContainer())
    assert {o.id for o in back} == {o.id for o in env}
    _same(back, env)
    _compliance(compliance_check_aasx, path)
    with zipfile.ZipFile(path) as z:  # the package's XML part, verified against the 3.1 meta-model
        xml = z.read("aasx/data.xml").decode()
    assert _core_errors(core_xml.environment_from_str(xml)) == []

    sm = back.get_item(aas.roll_submodel_id("R-1"))
    assert sm.get_referable("RollId").value == "R-1" and sm.get_referable("LineId").value == LINE
    gap = sm.get_referable("ProcessParameters").get_referable("calendering_gap_actual")
    values = [_gap(i) for i in range(600)]
    assert _sid(gap) == NS + "CalenderGap"
    assert gap.get_referable("Mean").value == pytest.approx(sum(values) / len(values))
    assert (gap.get_referable("Min").value, gap.get_referable("Max").value) == (60.0, 69.0)  # not pilot-2's 500
    assert gap.get_referable("Count").value == 600 and gap.get_referable("Unit").value == "um"
    assert {_sid(gap.get_referable(k)) for k in ("Mean", "Min", "Max")} == {NS + "CalenderGap"}
    measured = sm.get_referable("MeasuredStructure").get_referable("coating_dry_thickness")
    assert _sid(measured) == NS + "DryCoatingThickness"
    predicted = sm.get_referable("PredictedStructure").get_referable("calendering_porosity_predicted")
    assert _sid(predicted) == point_iri(LINE, "calendering.porosity_predicted")
    assert predicted.get_referable("Unit").value == "percent"
    porosity = [30.0 + (i % 20) / 10 for i in range(0, 600, 10)]
    assert predicted.get_referable("Max").value == max(porosity) and predicted.get_referable("Min").value == 30.0
    assert predicted.get_referable("Mean").value == pytest.approx(sum(porosity) / len(porosity))
    shell = next(o for o in back if isinstance(o, model.AssetAdministrationShell))
    assert shell.asset_information.global_asset_id == "https://w3id.org/pilotline-twin/data/roll/R-1"
    assert {c.id for c in back if isinstance(c, model.ConceptDescription)} == {
        NS + "CalenderGap", NS + "DryCoatingThickness", point_iri(LINE, "calendering.porosity_predicted")}


def test_bad_quality_is_left_out_of_a_rolls_statistics(daemon: Daemon) -> None:
    sm = _roll_env(daemon, "R-2").get_item(aas.roll_submodel_id("R-2"))
    gap = sm.get_referable("ProcessParameters").get_referable("calendering_gap_actual")
    assert gap.get_referable("Max").value == 72.0 and gap.get_referable("Count").value == 2
    assert gap.get_referable("BadQualityCount").value == 1


# --- endpoints -------------------------------------------------------------------------------------------------

def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_endpoints(daemon: Daemon, tmp_path: Path) -> None:
    client = TestClient(create_app(daemon))
    r = client.get("/api/v1/aas/shells")
    assert r.status_code == 200
    ids = {s["id"] for s in r.json()["result"]}
    assert f"https://w3id.org/pilotline-twin/plant/{LINE}/aas" in ids
    assert all(s["modelType"] == "AssetAdministrationShell" for s in r.json()["result"])

    env = client.get("/api/v1/aas/environment")
    assert env.status_code == 200
    back = read_aas_json_file(io.StringIO(env.text), failsafe=False)
    assert {o.id for o in back if isinstance(o, model.AssetAdministrationShell)} == ids

    ts_id = f"https://w3id.org/pilotline-twin/plant/{LINE}/submodel/TimeSeries"
    for key in (_b64(ts_id), ts_id):
        r = client.get(f"/api/v1/aas/submodels/{key}")
        assert r.status_code == 200, (key, r.text)
        assert r.json()["id"] == ts_id and r.json()["modelType"] == "Submodel"
        seg = next(e for e in r.json()["submodelElements"] if e["idShort"] == "Segments")
        ep = next(p for s in seg["value"] if s["idShort"] == "calendering_gap_actual" for p in s["value"]
                  if p["idShort"] == "Endpoint")
        assert ep["value"] == "http://testserver/api/v1/series/calendering.gap_actual"  # the request's own base
    roll_sm = client.get(f"/api/v1/aas/submodels/{_b64(aas.roll_submodel_id('R-1'))}")
    assert roll_sm.status_code == 200 and roll_sm.json()["idShort"] == "RollData"
    assert client.get(f"/api/v1/aas/submodels/{_b64('https://example.org/none')}").status_code == 404
    assert client.get("/api/v1/aas/submodels/not-an-id").status_code == 404

    r = client.get("/api/v1/aas/rolls/R-1.aasx")
    assert r.status_code == 200 and r.headers["content-type"] == "application/asset-administration-shell-package"
    assert 'filename="roll-R-1.aasx"' in r.headers["content-disposition"]
    (tmp_path / "dl.aasx").write_bytes(r.content)
    got: model.DictIdentifiableStore = model.DictIdentifiableStore()
    with aasx.AASXReader(str(tmp_path / "dl.aasx"), failsafe=False) as reader:
        reader.read_into(got, aasx.DictSupplementaryFileContainer())
    assert aas.roll_submodel_id("R-1") in {o.id for o in got}

    missing = client.get("/api/v1/aas/rolls/NO-SUCH-ROLL.aasx")
    assert missing.status_code == 404 and "NO-SUCH-ROLL" in missing.json()["detail"]
    assert client.get("/api/v1/aas/rolls/R-1.aasx", params={"line": "pilot-9"}).status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/v1/aas/shells", "/api/v1/aas/environment", "/api/v1/aas/submodels/{submodel_id}",
            "/api/v1/aas/rolls/{roll_id}.aasx"} <= set(paths)


def test_without_the_sdk_the_twin_serves_no_aas_endpoints(daemon: Daemon, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """basyx-python-sdk missing (an install without it): the API starts, /api/v1/aas is 404, a warning says why."""
    import twin.aas_api as aas_api

    monkeypatch.setattr(aas_api, "aas", None)
    monkeypatch.setattr(aas_api, "_MISSING", ImportError("No module named 'basyx'"))
    with caplog.at_level("WARNING", logger="twin.aas"):
        client = TestClient(create_app(daemon))
    assert "AAS export disabled" in caplog.text and "basyx" in caplog.text
    assert client.get("/api/v1/aas/shells").status_code == 404
    assert client.get("/api/v1/tags").status_code == 200
