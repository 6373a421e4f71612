"""Mapping line measurements to the surrogate's inputs (pure physics of the nip, no model needed)."""

from __future__ import annotations

import math

import pytest

from twin.predictor import InputError, PredictorConfig, line_to_model_inputs, predicted_tag_specs
from twin.state import LineState


def test_line_to_model_inputs() -> None:
    cfg = PredictorConfig(solid_density_g_cm3=4.4, roll_radius_mm=200.0, am_fraction=0.95, foil_thickness_um=12.0,
                          speed_mapping="nip_kinematic")
    x = line_to_model_inputs({"dry_thickness": 90.0, "areal_loading": 22.0, "gap": 67.5 + 12.0, "roll_speed": 6.0,
                              "roll_temperature": 70.0}, cfg, rve_thickness_um=48.0)
    assert x["initial_porosity"] == pytest.approx(1 - 22.0 / (4.4 * 9.0))  # M / (rho h0), units mg/cm2, um
    assert x["compaction_degree"] == pytest.approx(0.25)
    dh = 0.0225  # mm
    assert x["wall_speed_mm_s"] == pytest.approx(dh * 100.0 / math.sqrt(200.0 * dh))
    assert x["initial_thickness_um"] == 48.0 and x["roll_temperature_C"] == 70.0 and x["am_fraction"] == 0.95
    # quasi-static mapping: every real nip sits at the slow end of the DEM's wall-speed domain
    q = line_to_model_inputs({"dry_thickness": 90.0, "areal_loading": 22.0, "gap": 79.5, "roll_speed": 30.0,
                              "roll_temperature": 70.0}, PredictorConfig(foil_thickness_um=12.0), 48.0, (20.0, 100.0))
    assert q["wall_speed_mm_s"] == 20.0 and q["compaction_degree"] == pytest.approx(0.25)
    with pytest.raises(InputError):  # a gap that is all foil
        line_to_model_inputs({"dry_thickness": 90.0, "areal_loading": 22.0, "gap": 12.0, "roll_speed": 6.0,
                              "roll_temperature": 70.0}, PredictorConfig(foil_thickness_um=12.0), 48.0)
    with pytest.raises(InputError):
        line_to_model_inputs({"dry_thickness": 0.0, "areal_loading": 22.0, "gap": 60.0, "roll_speed": 6.0,
                              "roll_temperature": 70.0}, cfg, 48.0)


def test_predicted_tags_have_mean_and_spread() -> None:
    ids = {s["id"] for s in predicted_tag_specs()}
    assert {"calendering.porosity_predicted", "calendering.porosity_predicted_std",
            "calendering.tortuosity_factor_predicted", "calendering.effective_diffusivity_predicted"} <= ids


def test_slow_stream_clients_lose_oldest_events_counted() -> None:
    import asyncio

    async def run() -> None:
        drops: list[int] = []
        st = LineState(on_drop=drops.append)
        sub = st.subscribe(maxsize=2)
        for i in range(5):
            st.broadcast({"type": "x", "i": i})
        assert sub.dropped == 3 and sum(drops) == 3
        assert [sub.queue.get_nowait()["i"] for _ in range(2)] == [3, 4]

    asyncio.run(run())


def test_dead_letters_reach_the_live_stream(tmp_path) -> None:
    """A commit with dead letters broadcasts a `dead_letters` event (count, reasons) to stream clients."""
    import asyncio

    from core.samples import RawBatch, RawReading, SourceKind
    from ontology.tagmap import TagMap
    from ontology.validate import Tagger
    from twin.config import PipelineConfig
    from twin.metrics import Metrics
    from twin.pipeline import Pipeline
    from twin.store.sqlite import SQLiteStore

    async def run() -> list[dict]:
        tm = TagMap.from_dict({"tags": [{"id": "calendering.gap_actual", "step": "calendering", "kind": "MP",
                                         "canonical_unit": "um", "range": [0, 400],
                                         "sources": [{"mqtt": "pilot/{line}/calendering/gap_actual"}]}]})
        st = LineState()
        sub = st.subscribe(maxsize=10)
        store = SQLiteStore(tmp_path / "s.sqlite")
        pipe = Pipeline(PipelineConfig(linger_ms=1), store, Tagger(tm, "L1"), Metrics(), st)
        t = 1_790_000_000 * 10**9
        readings = [RawReading(SourceKind.MQTT, "pilot/L1/calendering/gap_actual", v, t + i, t + i, "um",
                               connector="c")
                    for i, v in enumerate([80.0, 9999.0, 81.0])]
        await pipe.ingest(RawBatch(readings, [], lambda: None), "c")
        await pipe.flush()
        store.close()
        events = []
        while not sub.queue.empty():
            events.append(sub.queue.get_nowait())
        return events

    events = asyncio.run(run())
    dl = [e for e in events if e["type"] == "dead_letters"]
    assert len(dl) == 1 and dl[0]["count"] == 1, dl
    assert dl[0]["dead_letters"][0]["reason_code"] == "out_of_range"
