"""A daemon with the predictor and the lab service on the embedded store, fed by the recorded run (replay)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from connectors.replay.config import ReplayConnectorConfig
from connectors.replay.connector import ReplayConnector
from core.samples import parse_time_ns
from tests.conftest import RECORDED, ROOT, write_config
from twin.api import create_app
from twin.config import load_config
from twin.daemon import Daemon

WRITER = "lab-writer-token"
LEAD = "lab-lead-token"


def _sha(t: str) -> str:
    return hashlib.sha256(t.encode()).hexdigest()


def lab_daemon(tmp_path: Path, *, predictor: bool = True, lab: str = "", feedback: bool = False) -> Daemon:
    extra = "[feedback]\nenabled = true\n" if feedback else ""
    if predictor:  # recorded timestamps are historical: no staleness limit; debounce 0: one prediction per commit
        # the recorded run was made by the simulated line before its recalibration on the v2 reference (its dried
        # coating at 0.48 total porosity is at the v2 model's domain edge): the lab tests run the model of that
        # line, the v1 model, from a registry that holds only it
        v1 = ROOT / "surrogates" / "models" / "calendering" / "20261202T134314Z"
        reg = tmp_path / "models"
        if not reg.exists():
            shutil.copytree(v1, reg / "calendering" / v1.name)
        extra += ("[predictor]\nenabled = true\ndebounce_ms = 0\ninterval_s = 3600\nstale_after_s = 1e12\n"
                  f'models_dir = "{reg}"\n')
    extra += (f'[lab]\nenabled = true\npath = "{tmp_path / "lab.sqlite"}"\n'
              f'candidates_dir = "{tmp_path / "lab_models"}"\n{lab}\n')
    cfg = write_config(tmp_path, extra=extra)
    cfg.write_text(cfg.read_text()
                   + f'[[api.tokens]]\nname = "engineer"\nsha256 = "{_sha(WRITER)}"\nscopes = ["read", "write"]\n'
                   + f'[[api.tokens]]\nname = "lab-lead"\nsha256 = "{_sha(LEAD)}"\nscopes = ["read", "write"]\n')
    return Daemon(load_config(cfg))


def client(d: Daemon, token: str | None = WRITER) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(d)), base_url="http://twin",
                             headers=headers, timeout=60)


async def replay(d: Daemon, *, keep: Callable[[int], bool], rows_per_batch: int = 25) -> int:
    """Replay the recorded run's rows whose index ``keep`` accepts through the pipeline, committing each batch (the
    predictor predicts on each commit). Returns the number of batches committed."""
    p = d.predictor
    conn = ReplayConnector(ReplayConnectorConfig(path=RECORDED, rows_per_batch=rows_per_batch),
                           default_line_id="pilot-1")
    n = seen = 0
    async with conn:
        async for batch in conn.batches():
            first = seen
            seen += len({r.source_ts_ns for r in batch.readings}) or 1
            if not keep(first):
                continue
            await d.pipeline.ingest(batch, "replay")
            await d.pipeline.flush()
            if p is not None and p._pending is not None:
                await p._pending
            n += 1
    if d.lab is not None:
        await d.lab.flush()
    return n


def recorded_segments(roll: str, length_m: float) -> list[dict[str, Any]]:
    """The recorded run's porosity and calendered thickness, averaged over web segments of one roll: what the lab
    reports for samples cut from those segments (hours after the segment ran)."""
    acc: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
    with gzip.open(RECORDED, "rt", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["roll_id"] != roll or not r["calender_porosity_online_pct"]:
                continue
            pos = float(r["web_position_m"])
            acc[int(pos // length_m)].append((parse_time_ns(r["timestamp"]), float(r["calender_porosity_online_pct"]),
                                              float(r["calender_thickness_after_um"])))
    out = []
    for k, rows in sorted(acc.items()):
        if len(rows) < 20:
            continue
        out.append({"roll_id": roll, "start_m": k * length_m, "end_m": (k + 1) * length_m,
                    "porosity_pct": sum(r[1] for r in rows) / len(rows),
                    "thickness_um": sum(r[2] for r in rows) / len(rows), "last_ns": max(r[0] for r in rows)})
    return out
