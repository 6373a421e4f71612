"""Export (twin/export.py): CSV and Parquet of tags over a time range, streamed page by page; the roll's
JSON-LD observations filtered and paged; /docs and /redoc without a CDN. The app is the real one over a
real SQLite store (the benchmark bench/bench_export.py does the 1 M-sample run through uvicorn)."""

from __future__ import annotations

import csv
import io
import json
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rdflib
from fastapi.testclient import TestClient

from core.samples import Quality, Sample
from tests.conftest import write_config
from twin import export
from twin.api import create_app
from twin.config import load_config
from twin.daemon import Daemon
from twin.store.base import StoredSample

T0 = 1_790_000_000 * 10**9 + 123_456_789  # nanoseconds matter: they must survive both formats
S = 10**9
GAP, SPEED, TEMP = "calendering.gap_actual", "coating.speed", "drying.zone1_temperature"
N = 2_000  # per tag and line


def _value(i: int, k: int) -> float:
    return 60.0 + (i * 0.1) + k / 3  # not exact in binary: a sloppy float format loses the last digit


@pytest.fixture
def daemon(tmp_path: Path) -> Any:
    d = Daemon(load_config(write_config(tmp_path)))
    rows = []
    for k, tag in enumerate((GAP, SPEED, TEMP)):
        for line in ("pilot-1", "pilot-2"):
            rows += [Sample(line, tag, _value(i, k), "um", T0 + i * S, T0 + i * S + 7, Quality.GOOD if i % 5 else
                            Quality.UNCERTAIN, f"R-{i // 1000}" if i % 3 else None, i / 4 if i % 2 else None)
                     for i in range(N)]
    d.store.write(rows)
    yield d
    d.store.close()


@pytest.fixture
def client(daemon: Any) -> TestClient:
    return TestClient(create_app(daemon))


def _iso(ns: int) -> str:
    return export.iso_ns(ns)


def _expected(tags: list[str], lines: list[str], i0: int, i1: int) -> list[tuple[Any, ...]]:
    k_of = {GAP: 0, SPEED: 1, TEMP: 2}
    return [(line, tag, T0 + i * S, _value(i, k_of[tag]), "um", int(Quality.GOOD if i % 5 else Quality.UNCERTAIN),
             f"R-{i // 1000}" if i % 3 else None, i / 4 if i % 2 else None)
            for line in sorted(lines) for tag in sorted(tags) for i in range(i0, i1)]


def test_csv_has_every_sample_of_the_range_once_with_exact_values(client: TestClient,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "PAGE", 333)  # many store pages, across series boundaries
    r = client.get("/api/v1/export", params={"tags": [SPEED, GAP], "start": _iso(T0 + 100 * S),
                                             "end": _iso(T0 + 1900 * S)})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith('attachment; filename="twin-export-')
    rows = list(csv.reader(io.StringIO(r.text)))
    assert tuple(rows[0]) == export.COLUMNS
    got = [(ln, tag, ts, float(v), u, int(q), roll or None, float(w) if w else None)
           for ln, tag, ts, v, u, q, roll, w in rows[1:]]
    want = _expected([GAP, SPEED], ["pilot-1", "pilot-2"], 100, 1900)  # end exclusive, TEMP not asked
    assert len(got) == len(want) == 2 * 2 * 1800
    assert [g[:2] + g[3:] for g in got] == [w[:2] + w[3:] for w in want]  # values read back exactly
    assert [g[2] for g in got] == [_iso(w[2]) for w in want]
    from datetime import datetime

    first = datetime.fromtimestamp((T0 + 100 * S) // S, tz=UTC).isoformat()[:19]
    assert rows[1][2] == first + ".123456789+00:00"  # nanoseconds, UTC, offset stated
    one_line = client.get("/api/v1/export", params={"tags": GAP, "line": "pilot-2",
                                                    "start": _iso(T0), "end": _iso(T0 + 10 * S)}).text
    assert one_line.count("\n") == 11 and "pilot-1" not in one_line


def test_parquet_round_trips_with_types_and_row_groups(client: TestClient, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setattr(export, "PAGE", 700)
    monkeypatch.setattr(export, "ROW_GROUP", 2_500)
    r = client.get("/api/v1/export", params={"tags": [TEMP, GAP, SPEED], "format": "parquet", "line": "pilot-1",
                                             "start": _iso(T0 - 3600 * S), "end": "2030-01-01T00:00:00+01:00"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == export.PARQUET_MEDIA_TYPE
    f = tmp_path / "x.parquet"
    f.write_bytes(r.content)
    meta = pq.ParquetFile(f).metadata
    assert meta.num_rows == 3 * N and meta.num_row_groups == 3  # 6,000 rows in groups of >= 2,500
    t = pq.read_table(f)
    assert t.schema.field("ts").type == pa.timestamp("ns", tz="UTC")
    assert t.schema.field("value").type == pa.float64() and t.schema.field("quality").type == pa.int32()
    assert t.column_names == list(export.COLUMNS)
    got = list(zip(*(t.column(c).to_pylist() for c in ("line_id", "tag")),
                   t.column("ts").cast(pa.int64()).to_pylist(),
                   *(t.column(c).to_pylist() for c in ("value", "unit", "quality", "roll_id", "web_pos_m"))))
    assert got == _expected([GAP, SPEED, TEMP], ["pilot-1"], 0, N)


def _pages(n_pages: int, size: int) -> tuple[Any, list[int]]:
    pulled = [0]

    def gen() -> Any:
        for p in range(n_pages):
            pulled[0] += 1
            yield [StoredSample("L", "t", float(p * size + i), "um", p * size + i, 0, 0, None, None)
                   for i in range(size)]
    return gen(), pulled


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_encoders_stream_and_do_not_read_the_whole_range_first(fmt: str) -> None:
    pages, pulled = _pages(50, 1_000)
    chunks = export.csv_chunks(pages) if fmt == "csv" else export.parquet_chunks(pages, pa, pq, row_group=5_000)
    first = next(chunks)
    assert first and pulled[0] <= 5  # the first bytes leave after one row group (5 pages), not after 50
    rest = list(chunks)
    assert pulled[0] == 50 and len(rest) >= (49 if fmt == "csv" else 10)
    data = first + b"".join(rest)
    if fmt == "parquet":
        t = pq.read_table(pa.BufferReader(data))
        assert t.num_rows == 50_000 and t.column("value").to_pylist() == [float(i) for i in range(50_000)]
    else:
        assert data.count(b"\n") == 50_001


def test_parquet_encoder_does_not_pull_pandas_into_the_daemon() -> None:
    """pa.array() imports pandas when it is installed (~50 MB of the daemon's memory); the encoder builds its
    columns from buffers instead. In a fresh interpreter: pandas is importable, yet not imported."""
    import subprocess

    code = ("import sys, pyarrow as pa, pyarrow.parquet as pq, importlib.util\n"
            "from twin.export import parquet_chunks\n"
            "from twin.store.base import StoredSample as S\n"
            "pages = [[S('L', 't', 1.5, 'um', i, 0, 0, None, None) for i in range(100)]]\n"
            "data = b''.join(parquet_chunks(pages, pa, pq))\n"
            "print(importlib.util.find_spec('pandas') is not None, 'pandas' in sys.modules, len(data) > 0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    installed, imported, wrote = out.stdout.split()
    assert (imported, wrote) == ("False", "True"), out.stdout
    if installed == "False":
        pytest.skip("pandas is not installed here: the check would prove nothing")


def test_empty_range_is_a_valid_empty_file(client: TestClient) -> None:
    params = {"tags": GAP, "start": "2001-01-01T00:00:00Z", "end": "2001-01-02T00:00:00Z"}
    assert client.get("/api/v1/export", params=params).text == ",".join(export.COLUMNS) + "\n"
    r = client.get("/api/v1/export", params={**params, "format": "parquet"})
    t = pq.read_table(pa.BufferReader(r.content))
    assert t.num_rows == 0 and t.column_names == list(export.COLUMNS)


@pytest.mark.parametrize(("params", "status", "fragment"), [
    ({"tags": GAP, "start": "2026-11-22T10:00:00"}, 422, "no UTC offset"),
    ({"tags": GAP, "end": "soon"}, 422, "not ISO 8601"),
    ({"tags": GAP, "start": "9999-12-31T23:59:59+00:00"}, 422, "outside the store's range"),
    ({"tags": GAP, "end": "0001-01-01T00:00:00+14:00"}, 422, "outside the store's range"),
    ({"tags": GAP, "start": "1600-01-01T00:00:00Z"}, 422, "outside the store's range"),
    ({"tags": GAP, "start": "2" * 70}, 422, "longer than 64"),
    ({"tags": GAP, "start": "2026-11-22T10:00:00Z", "end": "2026-11-22T10:00:00Z"}, 422, "start must be before end"),
    ({"tags": GAP, "format": "xlsx"}, 422, "csv"),
    ({}, 422, "tags"),
    ({"tags": [f"t{i}" for i in range(export.MAX_TAGS + 1)]}, 422, f"at most {export.MAX_TAGS} tags"),
    ({"tags": [GAP, "no.such"]}, 404, "'no.such'"),
])
def test_bad_requests_are_4xx_with_a_reason_never_500(client: TestClient, params: dict, status: int,
                                                      fragment: str) -> None:
    r = client.get("/api/v1/export", params=params)
    assert r.status_code == status, r.text
    assert fragment in json.dumps(r.json())


def test_parquet_without_pyarrow_is_501_and_csv_still_works(client: TestClient,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    r = client.get("/api/v1/export", params={"tags": GAP, "format": "parquet"})
    assert r.status_code == 501 and "pyarrow" in r.json()["detail"]
    assert client.get("/api/v1/export", params={"tags": GAP}).status_code == 200


def test_a_failing_store_is_503_before_any_byte(daemon: Any, client: TestClient,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    def broken(*a: Any, **k: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")
    monkeypatch.setattr(daemon.store, "samples_page", broken)
    r = client.get("/api/v1/export", params={"tags": GAP})
    assert r.status_code == 503 and "OperationalError" in r.json()["detail"]


# --- roll JSON-LD, filtered and paged ------------------------------------------------------------------
def _observations(doc_text: str) -> set[Any]:
    g = rdflib.Graph().parse(data=doc_text, format="json-ld")
    return set(g.subjects(rdflib.RDF.type, rdflib.URIRef("http://www.w3.org/ns/sosa/Observation")))


def test_roll_jsonld_pages_follow_next_links_to_every_observation_once(daemon: Any, client: TestClient) -> None:
    n_roll = len(daemon.store.samples_of_roll("R-1"))
    assert n_roll == 3 * 2 * sum(1 for i in range(1000, 2000) if i % 3)  # three tags, two lines
    url: str | None = "/api/v1/rolls/R-1/observations.jsonld?limit=1500"
    seen: list[Any] = []
    pages = 0
    while url is not None:
        r = client.get(url)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/ld+json")
        obs = _observations(r.text)
        assert len(obs) <= 1500
        seen += obs
        nxt = r.links.get("next", {}).get("url")
        doc = r.json()
        view = [n for n in doc["@graph"] if n.get("@type") == "hydra:PartialCollectionView"]
        assert (view[0]["hydra:next"]["@id"] if view else None) == nxt  # the same link in the graph
        url = nxt
        pages += 1
    assert pages == 3 and len(seen) == len(set(seen)) == n_roll


def test_roll_jsonld_filters_by_tag_line_and_time(client: TestClient) -> None:
    r = client.get("/api/v1/rolls/R-1/observations.jsonld",
                   params={"tag": GAP, "line": "pilot-2", "start": _iso(T0 + 1000 * S), "end": _iso(T0 + 1100 * S)})
    assert r.status_code == 200 and "next" not in r.links
    doc = r.json()
    obs = [n for n in doc["@graph"] if n.get("@type") == "sosa:Observation"]
    assert len(obs) == sum(1 for i in range(1000, 1100) if i % 3) and {(o["tag"], o["prov:wasAttributedTo"]["@id"].rsplit("/", 1)[1]) for o in obs} == \
        {(GAP, "pilot-2")}
    assert client.get("/api/v1/rolls/R-1/observations.jsonld",
                      params={"start": "2001-01-01T00:00:00Z", "end": "2001-01-02T00:00:00Z"}).status_code == 404
    assert client.get("/api/v1/rolls/NOPE/observations.jsonld").status_code == 404


@pytest.mark.parametrize("params", [{"cursor": "garbage!"}, {"cursor": "W10"}, {"limit": 0},
                                    {"limit": export.JSONLD_LIMIT_MAX + 1}, {"start": "2026-01-01T00:00:00"},
                                    {"end": "9999-01-01T00:00:00Z"}])
def test_roll_jsonld_bad_parameters_are_422(client: TestClient, params: dict) -> None:
    assert client.get("/api/v1/rolls/R-1/observations.jsonld", params=params).status_code == 422


# --- API docs without a CDN (the browser test checks the rendered pages) ---------------------------------
def test_docs_pages_reference_only_files_the_twin_serves(client: TestClient) -> None:
    import re

    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", html)
        assert urls and all(u.startswith("/") for u in urls), (page, urls)
        assert "cdn" not in html and "googleapis" not in html and "tiangolo" not in html
        for u in urls:
            r = client.get(u)
            assert r.status_code == 200 and len(r.content) > 0, (page, u, r.status_code)
    assert '"validatorUrl": null' in client.get("/docs").text
    for page in ("/docs", "/redoc"):  # the browser may fetch from the twin only
        csp = client.get(page).headers["content-security-policy"]
        assert "default-src 'self'" in csp and "img-src 'self' data:" in csp and "https:" not in csp
    assert client.get("/static/apidocs/swagger-ui-bundle.js").headers["content-type"].startswith(
        ("text/javascript", "application/javascript"))
