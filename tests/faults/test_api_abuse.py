"""Fault injection: API abuse against a REAL daemon process while it ingests (issue #15).

One daemon process (``python -m twin.cli run``) with [[api.tokens]] (a write token and a read-only
token), the predictor and the feedback service enabled (so the write endpoints exist), an MQTT
connector to a real mosquitto. While a publisher thread sends a valid reading every 50 ms and a
sampler polls /healthz every second, the tests send what a hostile or careless client would:

- bad, missing, forged, read-only, over-long tokens on every write endpoint: 401 / 403 (4xx at
  least), and nothing changes (targets, proposals, audit trail);
- far-out and malformed times on /api/v1/series/{tag}: malformed ones (naive, "1e30", garbage,
  invalid UTF-8) are 422 with a message; valid ISO times in year 1 or 9999 are answered
  (422 with a message, or 200 with an empty, well-formed series), never 500;
- huge parameters (points / limit = 10**9 and 10**30, very long tag names and query strings) and
  deep, huge or unstorable JSON bodies on PUT /api/v1/feedback/targets: 4xx, never 5xx;
- the daemon stays healthy and stores every reading sent during the abuse (counted in the store).

Counts go to bench/results/faults_api_abuse.json.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import Mosquitto
from tests.faults.fuzz_payloads import Ledger
from tests.faults.harness import (
    HealthSampler,
    Http,
    MqttPublisher,
    StoreReader,
    TwinProcess,
    daemon_config,
    mark_passed,
    write_results,
)

pytestmark = pytest.mark.integration

WRITE_TOKEN = "abuse-write-token-0123456789"
READ_TOKEN = "abuse-read-token-0123456789"
TAG = "calendering.gap_actual"
SERIES = f"/api/v1/series/{TAG}"


@dataclass
class Abused:
    twin: TwinProcess
    store: StoreReader
    health: HealthSampler
    ledger: Ledger
    pub: MqttPublisher
    stop_ingest: threading.Event
    ingest: threading.Thread
    statuses: Counter[str] = field(default_factory=Counter)  # area:status -> requests
    problems: dict[str, list[str]] = field(default_factory=dict)

    def call(self, area: str, method: str, path: str, *, token: str | None = None, header: str | None = None,
             body: bytes | str | None = None, timeout: float = 30.0) -> Http | None:
        """One request; ``header`` is the raw Authorization value (overrides ``token``). None: the
        server closed the connection without an answer (counted as status "closed")."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if header is not None:
            headers["Authorization"] = header
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            r = self.twin.request(method, path, body=body, headers=headers, timeout=timeout)
        except OSError as err:
            self.statuses[f"{area}:closed"] += 1
            self.problem(area, f"{method} {path[:120]}: no HTTP answer ({err})")
            return None
        self.statuses[f"{area}:{r.status}"] += 1
        if r.status >= 500:
            self.problem(area, f"{method} {path[:120]}: {r.status} {r.body[:200]!r}")
        return r

    def problem(self, area: str, text: str) -> None:
        self.problems.setdefault(area, []).append(text)

    def state(self) -> dict[str, Any]:
        """What a refused write must not change: targets, proposals, the audit trail."""
        t = self.twin.get("/api/v1/feedback/targets")
        p = self.twin.get("/api/v1/proposals")
        return {"targets": (t.status, t.json() if t.status == 200 else None),
                "proposals": (p.status, p.json() if p.status == 200 else None),
                "audit_rows": self.store._q("SELECT COUNT(*) FROM audit")[0][0]}


def _publish_loop(pub: MqttPublisher, ledger: Ledger, stop: threading.Event, lock: threading.Lock) -> None:
    while not stop.is_set():
        with lock:
            topic, payload = ledger.valid_reading()
        pub.publish(topic, payload)
        stop.wait(0.05)


@pytest.fixture(scope="module")
def abused(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Abused]:
    tmp = tmp_path_factory.mktemp("abuse")
    (tmp / "broker").mkdir()
    broker = Mosquitto(tmp / "broker")
    broker.start()
    cfg = daemon_config(tmp / "twin", mqtt_port=broker.port, client_id="twin-abuse",
                        tokens={WRITE_TOKEN: ("read", "write"), READ_TOKEN: ("read",)},
                        extra="[predictor]\nenabled = true\n[feedback]\nenabled = true\n")
    twin = TwinProcess(cfg)
    pub: MqttPublisher | None = None
    try:
        twin.start(90)
        twin.wait_ok(30)
        pub = MqttPublisher(broker.port, "abuse-publisher")
        ledger = Ledger()
        stop = threading.Event()
        ingest = threading.Thread(target=_publish_loop, args=(pub, ledger, stop, threading.Lock()), daemon=True)
        health = HealthSampler(twin, interval_s=1.0, timeout_s=2.0)
        ab = Abused(twin, StoreReader(tmp / "twin" / "store.sqlite"), health, ledger, pub, stop, ingest)
        health.__enter__()
        ingest.start()
        yield ab
        stop.set()
        ingest.join(10)
        health.__exit__(None, None, None)
    finally:
        if pub is not None:
            pub.close()
        twin.stop()
        broker.stop()


def _assert_area(ab: Abused, area: str) -> None:
    probs = ab.problems.get(area, [])
    assert not probs, f"{len(probs)} problems in {area}:\n" + "\n".join(probs[:40])


def _has_message(r: Http) -> bool:
    try:
        body = r.json()
    except ValueError:
        return False
    detail = body.get("message") or body.get("detail") if isinstance(body, dict) else None
    return bool(detail)


# --- tokens -------------------------------------------------------------------------------------
def _targets_body(ab: Abused) -> bytes:
    """A PUT body that WOULD change the targets: the current ones with the first target moved a bit."""
    r = ab.twin.get("/api/v1/feedback/targets")
    assert r.status == 200, f"GET targets: {r.status} {r.body[:300]!r}"
    doc = r.json()
    name = sorted(doc["targets"])[0]
    spec = dict(doc["targets"][name])
    spec["target"] = float(spec["target"]) * 1.01
    return json.dumps({"recipe": doc.get("recipe"), "targets": {**doc["targets"], name: spec}}).encode()


def test_bad_tokens_are_refused_and_change_nothing(abused: Abused) -> None:
    ab = abused
    area = "tokens"
    body = _targets_body(ab)
    writes = [("PUT", "/api/v1/feedback/targets", body), ("POST", "/api/v1/proposals/p-0001/approve", b"{}"),
              ("POST", "/api/v1/proposals/p-0001/reject", b"{}"), ("POST", "/api/v1/models/reload", None)]
    forged_hash = hashlib.sha256(WRITE_TOKEN.encode()).hexdigest()  # the config's hash, used as a token
    headers: list[tuple[str, str | None, set[int]]] = [
        ("missing", None, {401}),
        ("forged", "Bearer " + "A" * 43, {401}),
        ("write token + 1 char", f"Bearer {WRITE_TOKEN}x", {401}),
        ("write token prefix", f"Bearer {WRITE_TOKEN[:-1]}", {401}),
        ("the config's sha256 as token", f"Bearer {forged_hash}", {401}),
        ("read-only token", f"Bearer {READ_TOKEN}", {403}),
        ("empty bearer", "Bearer ", {401, 403}),
        ("scheme only", "Bearer", {401, 403}),
        ("basic auth", "Basic YWRtaW46YWRtaW4=", {401, 403}),
        ("token twice", f"Bearer {READ_TOKEN} {WRITE_TOKEN}", {401, 403}),
        ("latin-1 token", "Bearer ÿþ\u00e9t\u00e9", {401}),
        ("64 KiB token", "Bearer " + "x" * 65_536, set(range(400, 500))),
    ]
    before = ab.state()
    for label, header, allowed in headers:
        for method, path, b in writes:
            r = ab.call(area, method, path, header=header if header is not None else None, body=b)
            if r is not None and r.status not in allowed:
                ab.problem(area, f"{label}: {method} {path} answered {r.status} (expected {sorted(allowed)[:4]}): "
                                 f"{r.body[:160]!r}")
    after = ab.state()
    if after != before:
        ab.problem(area, f"refused writes changed the state: {before} -> {after}")
    # the control: the same PUT with the write token is accepted and changes the targets, so the
    # refusals above were refusals of a write that would have worked
    r = ab.call(area, "PUT", "/api/v1/feedback/targets", token=WRITE_TOKEN, body=body)
    if r is None or r.status != 200:
        ab.problem(area, f"control: PUT targets with the write token answered {r and r.status}: {r and r.body[:300]!r}")
    elif ab.state()["targets"] == before["targets"]:
        ab.problem(area, "control: an accepted PUT did not change the targets")
    _assert_area(ab, area)


# --- series times ----------------------------------------------------------------------------------
MALFORMED_TIMES = [
    "1e30", "-1e30", "1e19", "garbage", "", " ", "2026-12-03T08:00:00", "2026-12-03 08:00:00", "2026-13-45T25:61:61Z",
    "+275760-09-13T00:00:00Z", "9" * 5000, "NaN", "inf", "-infinity", "0x1p70",
    "\u0661\u0669\u0667\u0660-01-01T00:00:00Z",  # Arabic-Indic digits
]
MALFORMED_RAW = ["%ED%A0%80", "%FF%FE", "%00", "2026-12-03T08:00:00%2B99:00"]  # pre-encoded (invalid UTF-8, NUL ...)
FAR_OUT = ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.999999-12:00",
           "1677-09-21T00:12:43Z", "2262-04-11T23:47:17Z", "1000-01-01T00:00:00Z", "3000-01-01T00:00:00Z",
           "2026-12-03T08:00:00Z\x00"]  # (Python's fromisoformat reads the trailing NUL as the end: lenient, not wrong)


def _series(ab: Abused, area: str, query: str) -> Http | None:
    return ab.call(area, "GET", f"{SERIES}?{query}")


def test_series_far_out_and_malformed_times_are_4xx_never_500(abused: Abused) -> None:
    ab = abused
    area = "series_times"
    for t in MALFORMED_TIMES:
        for name in ("start", "end"):
            r = _series(ab, area, f"{name}={quote(t)}")
            if r is not None and (r.status != 422 or not _has_message(r)):
                ab.problem(area, f"{name}={t[:40]!r}: {r.status} {r.body[:160]!r} (expected 422 with a message)")
    for t in MALFORMED_RAW:
        r = _series(ab, area, f"start={t}")
        if r is not None and (r.status != 422 or not _has_message(r)):
            ab.problem(area, f"start={t!r}: {r.status} {r.body[:160]!r} (expected 422 with a message)")
    queries = [f"start={quote(a)}" for a in FAR_OUT] + [f"end={quote(a)}" for a in FAR_OUT] + [
        f"start={quote(FAR_OUT[0])}&end={quote(FAR_OUT[1])}", f"start={quote(FAR_OUT[4])}&end={quote(FAR_OUT[5])}",
        f"start={quote(FAR_OUT[0])}&end={quote(FAR_OUT[1])}&points=10000"]
    for q in queries:
        r = _series(ab, area, q)
        if r is None:
            continue
        if r.status == 422:
            if not _has_message(r):
                ab.problem(area, f"{q}: 422 without a message: {r.body[:160]!r}")
        elif r.status == 200:
            doc = r.json()
            if not isinstance(doc.get("buckets"), list) or doc.get("tag") != TAG:
                ab.problem(area, f"{q}: 200 but not a series: {r.body[:200]!r}")
        else:
            ab.problem(area, f"{q}: {r.status} {r.body[:160]!r} (expected 422 with a message, or 200)")
    _assert_area(ab, area)


# --- huge parameters -------------------------------------------------------------------------------
def test_huge_parameters_are_4xx_never_500(abused: Abused) -> None:
    ab = abused
    area = "huge_parameters"
    expect_4xx = [
        f"{SERIES}?points={10**9}", f"{SERIES}?points={10**30}", f"{SERIES}?points=0", f"{SERIES}?points=-1",
        f"{SERIES}?points=1e3", f"{SERIES}?points=NaN",
        f"/api/v1/dead-letters?limit={10**9}", f"/api/v1/dead-letters?limit={10**30}",
        f"/api/v1/dead-letters?before_id={10**30}", "/api/v1/dead-letters?before_id=-5",
        f"/api/v1/rolls?limit={10**9}", f"/api/v1/sparql?query=SELECT&limit={10**9}",
        f"/api/v1/sparql?query={quote('SELECT * WHERE { ?s ?p ?o }')}&timeout_s=1e30",
        f"/api/v1/sparql?query={quote('((((' * 2000)}",
        "/api/v1/series/" + "x" * 10_000,
        "/api/v1/series/" + quote("\u00e9" * 3000),
        "/api/v1/series/%ED%A0%80",
        f"/api/v1/rolls/{'R' * 10_000}/observations.jsonld",
        "/api/v1/proposals/" + "p" * 10_000,
        "/api/v1/proposals/%00",
    ]
    for path in expect_4xx:
        r = ab.call(area, "GET", path)
        if r is not None and not 400 <= r.status < 500:
            ab.problem(area, f"GET {path[:100]}: {r.status} {r.body[:160]!r} (expected 4xx)")
    # beyond what an HTTP server should parse: a 4xx, or the connection refused without an answer
    # (h11 closes on an over-long request head); never 5xx, and the daemon must not notice
    for path in ["/api/v1/series/" + "x" * 200_000, f"{SERIES}?line=" + "a" * 200_000,
                 f"/api/v1/latest?{'&'.join(['tag=' + TAG] * 20_000)}"]:
        try:
            r2 = ab.twin.request("GET", path, timeout=30)
            ab.statuses[f"{area}:{r2.status}"] += 1
            if not 400 <= r2.status < 500:
                ab.problem(area, f"GET {path[:80]}... ({len(path)} chars): {r2.status} {r2.body[:160]!r}")
        except OSError:
            ab.statuses[f"{area}:closed"] += 1
    # many valid parameters: answered (200) or refused (4xx), never 5xx
    r = ab.call(area, "GET", f"/api/v1/latest?{'&'.join(['tag=' + TAG] * 500)}")
    if r is not None and r.status not in (200,) and not 400 <= r.status < 500:
        ab.problem(area, f"500 repeated tag parameters: {r.status}")
    _assert_area(ab, area)


# --- hostile bodies on PUT /api/v1/feedback/targets --------------------------------------------------
def test_deep_huge_and_unstorable_bodies_are_4xx_and_change_nothing(abused: Abused) -> None:
    ab = abused
    area = "bodies"
    doc = json.loads(_targets_body(ab))
    name = sorted(doc["targets"])[0]
    spec = doc["targets"][name]

    def with_target(value: str) -> bytes:  # JSON fragment for "target" (NaN, 1e400, huge ints ...)
        others = ", ".join(f'"{k}": {json.dumps(v)}' for k, v in spec.items() if k != "target")
        return ('{"targets": {"%s": {"target": %s, %s}}}' % (name, value, others)).encode()

    bodies = {
        "deep list 100k": b'{"targets": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "deep object 100k": b'{"targets": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}",
        "deep recipe 5k": b'{"recipe": ' + b"[" * 5000 + b"]" * 5000 + b', "targets": {}}',
        "not JSON": b"{targets: porosity}",
        "truncated": b'{"targets": {"' + name.encode(),
        "empty": b"",
        "non-UTF-8": b'{"recipe": "\xff\xfe", "targets": {}}',
        "10 MB recipe": json.dumps({"recipe": "r" * 10_000_000, "targets": doc["targets"]}).encode(),
        "NaN target": with_target("NaN"),
        "Infinity target": with_target("Infinity"),
        "1e400 target": with_target("1e400"),
        "5000-digit target": with_target("9" * 5000),
        "string target": with_target('"high"'),
        "unknown output": json.dumps({"targets": {"flux_capacitance": spec}}).encode(),
        "100k unknown outputs": json.dumps({"targets": {f"o{i}": spec for i in range(100_000)}}).encode(),
        "lone surrogate output": json.dumps({"targets": {"\udfff": spec}}).encode(),
        "extra field": json.dumps({"targets": doc["targets"], "admin": True}).encode(),
        "targets a list": json.dumps({"targets": [spec]}).encode(),
    }
    before = ab.state()
    for label, b in bodies.items():
        r = ab.call(area, "PUT", "/api/v1/feedback/targets", token=WRITE_TOKEN, body=b, timeout=60)
        if r is not None and not 400 <= r.status < 500:
            ab.problem(area, f"{label} ({len(b)} bytes): {r.status} {r.body[:200]!r} (expected 4xx)")
    after = ab.state()
    if after != before:
        ab.problem(area, f"refused bodies changed the state: {before} -> {after}")
    # text that JSON can carry but a store cannot hold as is: refused, or accepted and stored
    # safely (the audit trail keeps JSON escapes); never a 5xx, and the targets stay readable
    for label, b in {"lone surrogate recipe": json.dumps({"recipe": "\ud800", "targets": doc["targets"]}).encode(),
                     "NUL recipe": json.dumps({"recipe": "a\u0000b", "targets": doc["targets"]}).encode()}.items():
        r = ab.call(area, "PUT", "/api/v1/feedback/targets", token=WRITE_TOKEN, body=b)
        if r is not None and r.status != 200 and not 400 <= r.status < 500:
            ab.problem(area, f"{label}: {r.status} {r.body[:200]!r} (expected 200 or 4xx)")
        g = ab.call(area, "GET", "/api/v1/feedback/targets")
        if g is not None and g.status != 200:
            ab.problem(area, f"after {label}: GET targets answered {g.status}")
    _assert_area(ab, area)


# --- the daemon through all of it ------------------------------------------------------------------
def test_daemon_stays_healthy_and_keeps_ingesting_during_the_abuse(abused: Abused) -> None:
    """Runs last in this module: stops the publisher, then every reading it sent must be stored."""
    ab = abused
    t_end = time.monotonic() + 3.0  # a few seconds of ingest after the last abuse
    while time.monotonic() < t_end:
        time.sleep(0.2)
    ab.stop_ingest.set()
    ab.ingest.join(10)
    ab.pub.wait_all_acked(30)
    sent = dict(ab.ledger.expected.valid)
    deadline = time.monotonic() + 30
    got: dict[tuple[str, int], float] = {}
    while time.monotonic() < deadline:
        got = ab.store.sample_keys()
        if all(k in got for k in sent):
            break
        time.sleep(0.3)
    missing = [k for k in sent if k not in got]
    wrong = [k for k, v in sent.items() if k in got and not math.isclose(got[k], v, rel_tol=1e-9)]
    health = ab.health
    bad = health.unhealthy()
    code, body = ab.twin.healthz()
    counts = {
        "readings_sent_during_abuse": len(sent), "stored": len(sent) - len(missing), "missing": len(missing),
        "wrong_value": len(wrong), "dead_letters": ab.store.dead_letter_count(),
        "requests_by_area_and_status": dict(sorted(ab.statuses.items())),
        "requests": sum(ab.statuses.values()),
        "health_samples": len(health.samples), "health_not_ok": len(bad),
        "health_max_gap_s": round(health.max_gap_s(), 2), "peak_rss_mib": round(health.peak_rss_kb / 1024, 1),
        "problems_by_area": {k: len(v) for k, v in ab.problems.items()},
    }
    path = write_results("api_abuse", counts, test="tests/faults/test_api_abuse.py",
                         command="pytest tests/faults/test_api_abuse.py",
                         problems={k: v[:20] for k, v in ab.problems.items()})
    problems = []
    if missing or wrong:
        problems.append(f"{len(missing)} of {len(sent)} readings sent during the abuse not stored "
                        f"({len(wrong)} with another value), e.g. {missing[:3]}")
    if not ab.twin.alive():
        problems.append("the daemon died during the abuse")
    if bad or code != 200 or body.get("status") != "ok":
        problems.append(f"/healthz not 200 'ok' in {len(bad)} of {len(health.samples)} samples (first {bad[:3]}); "
                        f"now {code} {body.get('status')}")
    if health.max_gap_s() > 5.0:
        problems.append(f"/healthz did not answer for {health.max_gap_s():.1f} s")
    if ab.store.dead_letter_count() != 0:
        problems.append(f"{ab.store.dead_letter_count()} dead letters from valid readings")
    mark_passed(path, not problems and not ab.problems)
    assert not problems, "\n".join(problems) + f"\n{ab.twin.log_tail(30)}"
