"""The committed model in the daemon: a replayed recorded run gives a prediction for every input change;
the API lists models with their cards, reloads a new version without a restart, and shows predictions."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from connectors.replay.config import ReplayConnectorConfig
from connectors.replay.connector import ReplayConnector
from core.samples import Quality
from tests.conftest import RECORDED, write_config
from tests.surrogates.conftest import add_version
from twin.api import create_app
from twin.config import load_config
from twin.daemon import Daemon
from twin.predictor import OUTPUT_TAGS

# recorded timestamps are historical: no staleness limit here; debounce 0 so each change predicts at once
PREDICTOR = "[predictor]\nenabled = true\ndebounce_ms = 0\ninterval_s = 3600\nstale_after_s = 1e12\n"


def _sha(t: str) -> str:
    return hashlib.sha256(t.encode()).hexdigest()


async def replay_and_check(tmp_path: Path, max_rows: int | None) -> None:
    d = Daemon(load_config(write_config(tmp_path, extra=PREDICTOR)))
    p = d.extensions["predictor"]
    await p.start()
    watched = p.input_tags  # model input name -> tag
    conn = ReplayConnector(ReplayConnectorConfig(path=RECORDED, rows_per_batch=1), default_line_id="pilot-1")
    previous: dict[str, float] | None = None
    changes = rows = 0
    try:
        async with conn:
            async for batch in conn.batches():
                await d.pipeline.ingest(batch, "replay")
                await d.pipeline.flush()  # commit: line state updated, after-commit hook fires
                if p._pending is not None:
                    await p._pending  # the debounced prediction this commit triggered
                rows += 1
                state = {name: d.state.latest.get(("pilot-1", tag)) for name, tag in watched.items()}
                if all(s is not None for s in state.values()):
                    now = {name: s.value for name, s in state.items()}
                    if now != previous:
                        changes += 1
                        pred = p.latest["pilot-1"]
                        assert pred.line_inputs == now  # the prediction is of this very input state
                        assert p.count == changes, (rows, changes, p.count, p.skipped)
                        assert all(math.isfinite(v) for v in pred.mean.values())
                        assert all(v >= 0 for v in pred.std.values())
                        assert pred.roll_id is not None and pred.web_pos_m is not None
                        assert pred.model_version == p.model.version
                        assert pred.ood == bool(pred.ood_reasons)
                    previous = now
                if max_rows is not None and rows >= max_rows:
                    break
        await d.pipeline.flush()
        assert changes >= 0.9 * rows  # the recorded line moves on nearly every row
        # predictions went through the same commit path: stored series, mean and spread
        got = d.store.raw("calendering.porosity_predicted", 0, 2**62, limit=10**7)
        std = d.store.raw("calendering.porosity_predicted_std", 0, 2**62, limit=10**7)
        assert len(got) == len(std) == changes
        assert all((s.quality == Quality.UNCERTAIN) == p.latest["pilot-1"].ood for s in got[-1:])
        for sfx, _, _ in OUTPUT_TAGS.values():  # every predicted output, mean and spread
            assert len(d.store.raw(f"calendering.{sfx}_std", 0, 2**62, limit=10**7)) == changes
        body = TestClient(create_app(d)).get("/api/v1/predictions/latest").json()
        (pj,) = body["predictions"]
        assert pj["model_version"] == p.model.version and body["count"] == changes
        assert set(pj["mean"]) == set(pj["std"]) == set(p.model.output_names)
        assert isinstance(pj["out_of_domain"], bool) and isinstance(pj["ood_reasons"], list)
    finally:
        await p.stop()
        d.store.close()


async def test_replayed_run_predicts_on_every_input_change(tmp_path: Path) -> None:
    await replay_and_check(tmp_path, max_rows=400)


@pytest.mark.slow
async def test_whole_replayed_run_predicts_on_every_input_change(tmp_path: Path) -> None:
    await replay_and_check(tmp_path, max_rows=None)


def test_models_listed_and_reloaded_without_restart(tmp_path: Path, registry_copy: Path,
                                                     committed_dir: Path) -> None:
    extra = PREDICTOR + f'models_dir = "{registry_copy}"\n'
    cfg = write_config(tmp_path, extra=extra)
    cfg.write_text(cfg.read_text() + f'[[api.tokens]]\nname = "eng"\nsha256 = "{_sha("w")}"\n'
                   'scopes = ["read", "write"]\n')
    d = Daemon(load_config(cfg))
    try:
        c = TestClient(create_app(d))
        auth = {"Authorization": "Bearer w"}
        r = c.get("/api/v1/models", headers=auth).json()
        assert r["loaded"]["version"] == committed_dir.name and r["loaded"]["card"]["family"] == "calendering"
        assert [m["version"] for m in r["models"]] == [committed_dir.name]
        assert r["models"][0]["card"]["metrics"]["test"]["porosity"]["r2"] > 0
        add_version(registry_copy, committed_dir, "99990101T000000Z")
        r = c.post("/api/v1/models/reload", headers=auth)
        assert r.status_code == 200 and r.json() == {"loaded": "99990101T000000Z"}
        r = c.get("/api/v1/models", headers=auth).json()
        assert r["loaded"]["version"] == "99990101T000000Z" and len(r["models"]) == 2
        # the switch is audited: who, from which version to which, with the new card's test metrics
        rec = d.store.audit("99990101T000000Z")[0]
        assert rec["kind"] == "model.reload" and rec["actor"] == "eng"
        assert rec["body"]["previous"] == committed_dir.name and rec["body"]["loaded"] == "99990101T000000Z"
        assert rec["body"]["test_metrics"]["porosity"]["r2"] > 0
    finally:
        d.store.close()
