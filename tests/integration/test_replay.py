"""Replay: recorded files through the live path; kill -9 mid-replay loses no acknowledged sample and
a second replay adds no duplicates."""

from __future__ import annotations

import csv
import gzip
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connectors.replay.config import ReplayConnectorConfig, ReplaySpeed
from connectors.replay.connector import ReplayConnector
from core.samples import parse_time_ns
from tests.conftest import RECORDED, write_config
from twin.config import load_config
from twin.daemon import Daemon
from twin.store.sqlite import SQLiteStore

pytestmark = pytest.mark.integration

COLUMN_TAG = {
    "coating_dry_thickness_um": "coating.dry_thickness", "coating_areal_loading_mg_cm2": "coating.areal_loading",
    "calender_gap_setpoint_um": "calendering.gap_setpoint", "calender_gap_actual_um": "calendering.gap_actual",
    "calender_line_load_N_mm": "calendering.line_load", "calender_roll_speed_m_min": "calendering.roll_speed",
    "calender_roll_temperature_C": "calendering.roll_temperature",
    "calender_thickness_after_um": "calendering.thickness_after",
    "calender_porosity_online_pct": "calendering.porosity_online", "web_position_m": "calendering.web_position",
}


def expected_keys(rows: int | None = None) -> dict[tuple[str, int], float]:
    out = {}
    with gzip.open(RECORDED, "rt", newline="") as fh:
        for i, rec in enumerate(csv.DictReader(fh)):
            if rows is not None and i >= rows:
                break
            ts = parse_time_ns(rec["timestamp"])
            for col, tag in COLUMN_TAG.items():
                if rec[col] != "":
                    out[(tag, ts)] = float(rec[col])
    return out


def stored(db: Path) -> dict[tuple[str, int], float]:
    s = SQLiteStore(db)
    try:
        return {(x.tag_id, x.source_ts_ns): x.value
                for tag in COLUMN_TAG.values() for x in s.raw(tag, 0, 2**62, limit=10**7)}
    finally:
        s.close()


def test_kill_9_during_replay_then_replay_again(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    db = tmp_path / "store.sqlite"
    ack_log = tmp_path / "acks.log"
    cmd = [sys.executable, "-m", "twin.cli", "replay", str(RECORDED), "--config", str(cfg), "--speed", "max",
           "--ack-log", str(ack_log)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ack_log.exists() and len(ack_log.read_text().split()) >= 5:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    acked_rows = int(ack_log.read_text().split()[-1])
    assert 0 < acked_rows < 10_800, "kill -9 must land mid-replay"
    must_have = expected_keys(acked_rows)
    got = stored(db)
    missing = set(must_have) - set(got)
    assert not missing, f"{len(missing)} acknowledged samples lost after kill -9"
    assert all(got[k] == pytest.approx(v) for k, v in must_have.items())

    done = subprocess.run(cmd[:-2], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    everything = expected_keys()
    got = stored(db)
    assert set(got) == set(everything)  # complete, and (primary key) each exactly once
    s = SQLiteStore(db)
    assert s.count() == len(everything)
    assert s.dead_letter_count() == 0
    with gzip.open(RECORDED, "rt", newline="") as fh:
        rolls = {rec["roll_id"] for rec in csv.DictReader(fh)}
    assert len(rolls) >= 3
    assert {r["roll_id"] for r in s.rolls()} == rolls
    s.close()
    # a third replay adds nothing
    again = subprocess.run(cmd[:-2], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    s = SQLiteStore(db)
    assert s.count() == len(everything)
    s.close()


def test_sigterm_flushes_everything_taken_in(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    ack_log = tmp_path / "acks.log"
    p = subprocess.Popen([sys.executable, "-m", "twin.cli", "replay", str(RECORDED), "--config", str(cfg),
                          "--speed", "2000", "--ack-log", str(ack_log)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (ack_log.exists() and ack_log.read_text().strip()):
        time.sleep(0.05)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err[-2000:]
    assert "stopping (SIGTERM)" in err
    acked_rows = int(ack_log.read_text().split()[-1])
    got = stored(tmp_path / "store.sqlite")
    assert set(expected_keys(acked_rows)) <= set(got)
    # everything committed was acknowledged: nothing stored beyond the last acknowledged row
    assert set(got) <= set(expected_keys(acked_rows))


def _write_jsonl(path: Path) -> None:
    lines = [
        {"ts": "2026-11-02T06:00:00Z", "calender_gap_actual_um": 66.0, "roll_id": "R-1"},
        {"ts": "2026-11-02T06:00:01Z", "address": "calender_gap_actual_um", "value": 0.0671, "unit": "mm"},
        {"ts": "2026-11-02T06:00:02Z", "address": "calender_roll_temperature_C", "value": 140.0, "unit": "degF"},
        "this is not json",
        {"ts": "not a time", "calender_gap_actual_um": 66.0},
        {"ts": "2026-11-02T06:00:03Z", "calender_gap_actual_um": "n/a"},
    ]
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")


async def test_jsonl_wide_and_long_with_bad_lines(tmp_path: Path) -> None:
    f = tmp_path / "run.jsonl"
    _write_jsonl(f)
    cfg = load_config(write_config(tmp_path))
    cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"enabled": False}),
                                 "connectors": [ReplayConnectorConfig(path=f, time_column="ts")]})
    d = Daemon(cfg, exit_when_finished=True)
    await d.run(install_signals=False)
    s = SQLiteStore(tmp_path / "store.sqlite")
    gap = [x.value for x in s.raw("calendering.gap_actual", 0, 2**62)]
    temp = [x.value for x in s.raw("calendering.roll_temperature", 0, 2**62)]
    assert gap == pytest.approx([66.0, 67.1])
    assert temp == pytest.approx([60.0])
    codes = sorted(r["reason_code"] for r in s.dead_letters())
    assert codes == ["bad_timestamp", "malformed_payload", "wrong_type"]
    assert [x.roll_id for x in s.raw("calendering.gap_actual", 0, 2**62)] == ["R-1", "R-1"]
    s.close()


async def test_factor_speed_paces_the_replay(tmp_path: Path) -> None:
    f = tmp_path / "run.csv"
    f.write_text("timestamp,calender_gap_actual_um\n" + "".join(
        f"2026-11-02T06:00:{i:02d}Z,{60 + i}\n" for i in range(0, 21)))
    c = ReplayConnector(ReplayConnectorConfig(path=f, speed=ReplaySpeed.FACTOR, speed_factor=20.0,
                                              rows_per_batch=1), default_line_id="L")
    t0 = time.monotonic()
    rows = 0
    async with c:
        async for b in c.batches():
            rows += len(b.readings)
    elapsed = time.monotonic() - t0
    assert rows == 21
    assert elapsed >= 0.95  # 20 s of line time at 20x cannot finish sooner than 1 s
    c2 = ReplayConnector(ReplayConnectorConfig(path=f, speed=ReplaySpeed.MAX), default_line_id="L")
    t1 = time.monotonic()
    async with c2:
        n = sum([len(b.readings) async for b in c2.batches()])
    assert n == 21 and time.monotonic() - t1 < elapsed


async def test_replayed_roll_exports_as_json_ld(tmp_path: Path) -> None:
    import rdflib
    from fastapi.testclient import TestClient

    from twin.api import create_app

    cfg = load_config(write_config(tmp_path))
    cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"enabled": False}),
                                 "connectors": [ReplayConnectorConfig(path=RECORDED)]})
    d = Daemon(cfg, exit_when_finished=True)
    await d.run(install_signals=False)
    d2 = Daemon(load_config(write_config(tmp_path)))
    n_roll = len(d2.store.samples_of_roll("R-0002"))
    assert n_roll > 1000
    # the export is paged (10,000 observations a page by default): follow the next links
    client = TestClient(create_app(d2))
    g = rdflib.Graph()
    url: str | None = "/api/v1/rolls/R-0002/observations.jsonld"
    pages = 0
    while url is not None:
        r = client.get(url)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/ld+json")
        g.parse(data=r.text, format="json-ld")
        url = r.links.get("next", {}).get("url")
        pages += 1
    sosa = rdflib.Namespace("http://www.w3.org/ns/sosa/")
    observations = set(g.subjects(rdflib.RDF.type, sosa.Observation))
    assert len(observations) == n_roll  # one observation per stored sample of that roll
    assert pages == -(-n_roll // 10_000)
    roll = rdflib.URIRef("https://w3id.org/pilotline-twin/data/roll/R-0002")
    assert all((o, sosa.hasFeatureOfInterest, roll) in g for o in list(observations)[:100])
    assert TestClient(create_app(d2)).get("/api/v1/rolls/NOPE/observations.jsonld").status_code == 404
    d2.store.close()


# -- bad files through the real CLI: one summary line, rows before the error stored, exit status ----------
def _replay_cli(file: Path, cfg: Path, *extra: str) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, "-m", "twin.cli", "replay", str(file), "--config", str(cfg), *extra],
                       capture_output=True, text=True, timeout=300)
    summary = [x for x in p.stderr.splitlines() if x.startswith("twin replay:")]
    assert len(summary) == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    return p.returncode, summary[0], p.stderr


def _counts(line: str) -> tuple[int, int, int]:
    import re

    m = re.search(r"(\d+) rows read, (\d+) stored, (\d+) not stored", line)
    assert m, line
    return int(m[1]), int(m[2]), int(m[3])


def _bad_files(d: Path) -> dict[str, tuple[Path, str, int | None]]:
    """name -> (file, problem text the line names, line number of the problem or None)."""
    raw = gzip.decompress(RECORDED.read_bytes())
    head = b"\n".join(raw.split(b"\n")[:1001]) + b"\n"  # header + 1000 rows
    out: dict[str, tuple[Path, str, int | None]] = {}
    f = d / "truncated.csv.gz"
    f.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 3])
    out["truncated_gzip"] = (f, "truncated gzip file", None)
    f = d / "binary.csv"
    f.write_bytes(bytes(range(256)) * 64)
    out["binary"] = (f, "a binary file", 1)
    f = d / "no_time_column.csv"
    f.write_bytes(head.replace(b"timestamp,", b"time,", 1))
    out["missing_time_column"] = (f, "no time column 'timestamp'", 1)
    f = d / "long_line.csv"
    f.write_bytes(head + b"2026-11-02T09:00:00Z," + b"9" * (2 << 20) + b"\n")
    out["over_long_line"] = (f, "line longer than 1048576 bytes", 1002)
    f = d / "bad_utf8.csv"
    f.write_bytes(head + b"2026-11-02T09:00:00Z,R-\xff\xfe\n")
    out["invalid_utf8"] = (f, "invalid UTF-8", 1002)
    return out


@pytest.mark.parametrize("case", ["truncated_gzip", "binary", "missing_time_column", "over_long_line",
                                  "invalid_utf8"])
def test_a_bad_file_stores_what_came_before_and_exits_non_zero_with_one_line(tmp_path: Path, case: str) -> None:
    file, problem, line_no = _bad_files(tmp_path)[case]
    rc, line, _ = _replay_cli(file, write_config(tmp_path))
    assert rc == 1, line
    assert str(file) in line and problem in line, line
    if line_no is not None:
        assert f": line {line_no}: " in line, line
    assert "redeliver" not in line
    read, stored_rows, not_stored = _counts(line)
    assert stored_rows == read and not_stored == 0
    if case in ("over_long_line", "invalid_utf8"):
        assert read == 1000
    if case == "truncated_gzip":
        assert 100 < read < 10_800
    got = stored(tmp_path / "store.sqlite")
    assert set(got) == set(expected_keys(read))  # every row before the problem, nothing after it


def test_a_file_read_to_its_end_with_bad_rows_exits_0_and_counts_them(tmp_path: Path) -> None:
    f = tmp_path / "run.jsonl"
    _write_jsonl(f)
    with f.open("a") as fh:
        fh.write(json.dumps({"ts": "9999-12-31T23:59:59Z", "calender_gap_actual_um": 66.0}) + "\n")
        fh.write(json.dumps({"ts": 1e30, "calender_gap_actual_um": 66.0}) + "\n")
        fh.write("[" * 50_000 + "\n")  # nesting deeper than the JSON decoder's recursion limit
        fh.write(json.dumps({"ts": "2026-11-02T06:00:09Z", "roll_id": "R-\ud800"}) + "\n")
    rc, line, _ = _replay_cli(f, write_config(tmp_path))  # time column "timestamp", or "ts" (the file's)
    assert rc == 0, line
    assert line.startswith(f"twin replay: {f}: done: 10 rows read, 10 stored, 0 not stored"), line
    s = SQLiteStore(tmp_path / "store.sqlite")
    try:
        codes = sorted(r["reason_code"] for r in s.dead_letters())
        assert codes == ["bad_text", "bad_timestamp", "bad_timestamp", "bad_timestamp", "malformed_payload",
                         "malformed_payload", "wrong_type"]
        assert "7 dead letters" in line
        assert [x.value for x in s.raw("calendering.gap_actual", 0, 2**62)] == pytest.approx([66.0, 67.1])
    finally:
        s.close()
