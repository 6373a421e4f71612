"""HTTP API (FastAPI): health, metrics, tags, latest values, downsampled series, dead letters,
and a live stream of committed samples (Server-Sent Events).

Times are ISO 8601 with an offset in and out; a time without offset is refused (422), because a
plant's clocks and its engineers' browsers rarely share a zone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from twin import apidocs
from twin.export import make_router as export_router
from core.samples import now_ns, ns_to_iso, parse_time_ns
from twin.state import sample_json

_log = logging.getLogger("twin.api")


class SeriesPoint(BaseModel):
    start: str = Field(..., description="bucket start, ISO 8601")
    end: str = Field(..., description="bucket end, ISO 8601")
    ts: str = Field(..., description="time of the bucket's mean sample, ISO 8601 (midpoint of first and last)")
    min: float
    mean: float
    max: float
    count: int


class SeriesResponse(BaseModel):
    tag: str
    line_id: str | None
    unit: str
    start: str
    end: str
    points: int
    buckets: list[SeriesPoint]


class LatestItem(BaseModel):
    line_id: str
    tag: str
    value: float
    unit: str
    ts: str
    received: str
    quality: int
    roll_id: str | None
    web_pos_m: float | None


class TagItem(BaseModel):
    id: str
    step: str
    kind: str
    role: str
    unit: str
    range: list[float] | None
    value_type: str
    traceability: str
    online: bool
    parameter: str | None
    description: str
    iri: str | None = None  # the parameter class of the ontology
    equipment: str | None = None
    accuracy: float | None = None


class DeadLetterItem(BaseModel):
    id: int
    received: str
    source: str
    connector: str | None
    address: str | None
    line_id: str | None
    reason_code: str
    reason: str
    payload: str | None


# times the store can hold: int64 nanoseconds since the epoch (1677-09-21 .. 2262-04-11)
TIME_MIN_NS, TIME_MAX_NS = -(2**63) + 1, 2**63 - 1


def _plain_text(value: object, limit: int) -> str:
    """Bounded text that JSON can carry: lone surrogates and control characters escaped."""
    text = value if isinstance(value, str) else str(value)
    text = text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _time(name: str, value: str | None, default_ns: int) -> int:
    if value is None:
        return default_ns
    if len(value) > 64:
        raise HTTPException(422, detail=[{"loc": ["query", name], "msg": f"a time is at most 64 characters, got "
                                          f"{len(value)}", "type": "value_error"}])
    try:
        ns = parse_time_ns(value)
    except (ValueError, OverflowError) as err:
        raise HTTPException(422, detail=[{"loc": ["query", name], "msg": str(err), "type": "value_error"}]) from err
    if not TIME_MIN_NS <= ns <= TIME_MAX_NS:
        raise HTTPException(422, detail=[{"loc": ["query", name], "msg": f"{value!r} is outside the times the store "
                                          "holds (1677-09-21 .. 2262-04-11 UTC)", "type": "value_error"}])
    return ns


class Principal(BaseModel):
    name: str
    scopes: list[str]


def make_auth(daemon: Any) -> Any:
    """A dependency factory: ``Depends(auth("write"))``. Bearer tokens from the config (stored as
    SHA-256). Without configured tokens reads are open and every write is refused (read-only)."""
    import hashlib
    import hmac

    from fastapi import Depends
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    bearer = HTTPBearer(auto_error=False)

    def auth(scope: str) -> Any:
        def check(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
            tokens = daemon.config.api.tokens
            if not tokens:
                if scope == "read":
                    return Principal(name="anonymous", scopes=["read"])
                raise HTTPException(403, detail="this twin is read-only: no API tokens are configured "
                                                "(add [[api.tokens]] with the write scope, see docs/configuration.md)")
            if cred is None:
                raise HTTPException(401, detail="a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
            digest = hashlib.sha256(cred.credentials.encode()).hexdigest()
            for t in tokens:
                if hmac.compare_digest(digest, t.sha256):
                    have = [x.value for x in t.scopes]
                    if scope not in have:
                        raise HTTPException(403, detail=f"token {t.name!r} lacks the {scope!r} scope")
                    return Principal(name=t.name, scopes=have)
            raise HTTPException(401, detail="unknown token", headers={"WWW-Authenticate": "Bearer"})
        return check

    return auth


def create_app(daemon: Any) -> FastAPI:
    """``daemon`` provides: store, tagmap, state, metrics, pipeline, health(), connectors."""
    app = FastAPI(title="Pilot-line twin", version="0.1.0",
                  description="Queries, live stream and health of the pilot-line digital twin.",
                  docs_url=None, redoc_url=None)  # served from installed files: twin/apidocs.py
    app.state.daemon = daemon
    auth = make_auth(daemon)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # only plain, bounded, storable text goes back: an error's `input` may hold NaN, a lone surrogate or
        # megabytes, and its `ctx` a ValueError object, none of which JSON (or the client) can take
        detail = [{"loc": [_plain_text(p, 100) if isinstance(p, str) else p for p in e.get("loc", ())][:20],
                   "msg": _plain_text(e.get("msg", ""), 500), "type": _plain_text(e.get("type", ""), 100)}
                  for e in exc.errors()[:50]]
        msgs = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in detail]
        return JSONResponse(status_code=422, content={"detail": detail, "message": "; ".join(msgs)})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a bug, not a bad request: counted and logged once per kind; the client gets a JSON body
        metrics = getattr(daemon, "metrics", None)
        if metrics is not None and hasattr(metrics, "internal_errors"):
            metrics.internal_errors.labels("api").inc()
        _log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": f"internal error ({type(exc).__name__}); "
                                                                "it was logged and counted"})

    @app.get("/healthz", summary="Component health: 200 when ok, 503 when degraded",
             responses={200: {"description": "ok: every check holds"},
                        503: {"description": "degraded: `problems` says which checks fail"}},
             description="`status` is `ok` or `degraded`; `problems` says why in words. Degraded: a source "
                         "disconnected or failing, a supervised task failing or restarting, store commits "
                         "failing, a scheduled job failing. 503 makes container health checks and load "
                         "balancers treat the twin as unhealthy (docs/reliability.md).")
    async def healthz() -> JSONResponse:
        h = daemon.health()
        h["started"] = ns_to_iso(h["started"])
        return JSONResponse(h, status_code=200 if h["status"] == "ok" else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        await daemon._job_health() if hasattr(daemon, "_job_health") else None
        return PlainTextResponse(generate_latest(daemon.metrics.registry).decode(),
                                 media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/tags", response_model=list[TagItem], summary="Every tag the twin knows")
    async def tags() -> list[dict[str, Any]]:
        return [t.as_dict() for t in daemon.tagmap.tags.values()]

    @app.get("/api/v1/latest", response_model=list[LatestItem], summary="Newest value per tag")
    async def latest(line: str | None = Query(None, description="line id"),
                     tag: list[str] | None = Query(None, description="restrict to these tag ids")) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(daemon.store.latest, line, tag)
        return [sample_json(r) for r in rows]

    @app.get("/api/v1/series/{tag}", response_model=SeriesResponse,
             summary="A time range of one tag, downsampled to at most `points` buckets")
    async def series(tag: str,
                     start: str | None = Query(None, description="ISO 8601 with offset; default end - 1 h"),
                     end: str | None = Query(None, description="ISO 8601 with offset; default now"),
                     points: int = Query(500, ge=1, le=10_000, description="maximum number of buckets"),
                     line: str | None = Query(None, description="line id")) -> dict[str, Any]:
        t = daemon.tagmap.tags.get(tag)
        if t is None:
            raise HTTPException(404, detail=f"unknown tag {tag!r}")
        end_ns = _time("end", end, now_ns())
        start_ns = _time("start", start, max(TIME_MIN_NS, end_ns - 3600 * 10**9))
        if start_ns >= end_ns:
            raise HTTPException(422, detail=[{"loc": ["query", "start"], "msg": "start must be before end",
                                              "type": "value_error"}])
        buckets = await asyncio.to_thread(daemon.store.series, tag, start_ns, end_ns, points, line)
        return {
            "tag": tag, "line_id": line, "unit": t.unit, "start": ns_to_iso(start_ns), "end": ns_to_iso(end_ns),
            "points": len(buckets),
            "buckets": [{"start": ns_to_iso(b.start_ns), "end": ns_to_iso(b.end_ns),
                         "ts": ns_to_iso((b.first_ns + b.last_ns) // 2), "min": b.min, "mean": b.mean,
                         "max": b.max, "count": b.count} for b in buckets],
        }

    @app.get("/api/v1/dead-letters", response_model=list[DeadLetterItem],
             summary="Readings that could not be stored, newest first, with the reason")
    async def dead_letters(limit: int = Query(100, ge=1, le=10_000),
                           before_id: int | None = Query(None, ge=1, le=2**63 - 1,
                                                    description="page: ids below this")) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(daemon.store.dead_letters, limit, before_id)
        for r in rows:
            r["received"] = ns_to_iso(r.pop("received_ts_ns"))
        return rows

    @app.get("/api/v1/rolls", summary="Rolls (lots) seen per line and step, newest first")
    async def rolls(line: str | None = Query(None), limit: int = Query(100, ge=1, le=10_000)) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(daemon.store.rolls, line, limit)
        for r in rows:
            r["ts"] = ns_to_iso(r.pop("source_ts_ns"))
        return rows

    # CSV / Parquet export and the roll's JSON-LD observations, paged (twin/export.py)
    app.include_router(export_router(daemon))

    @app.get("/api/v1/status", summary="Per-source health and why there is no prediction or proposal (dashboard)",
             description="Read-only: `status`/`problems` as in /healthz; per source its state, the age of its "
                         "newest delivery and its gap and reconnect counts; the predictor's newest prediction "
                         "time and the reason of its last skipped round; the feedback service's last decision "
                         "per line with its reasons. The stream sends the same body as `status` events when "
                         "asked with `status_s` (docs/dashboard.md, \"Health\").")
    async def status() -> dict[str, Any]:
        return _status(daemon)

    @app.get("/api/v1/stream", summary="Live stream (Server-Sent Events) of committed samples",
             description="Each event is `data: {\"type\": \"samples\", \"samples\": [...]}`; "
                         "other event types (predictions, proposals) share the stream. With `status_s` a "
                         "`status` event (the body of /api/v1/status) is sent every `status_s` seconds.")
    async def stream(request: Request, tag: list[str] | None = Query(None),
                     status_s: float | None = Query(None, ge=0.5, le=3600,
                                                    description="send a status event this often")) -> StreamingResponse:
        sub = daemon.state.subscribe(tag, daemon.config.pipeline.stream_queue)
        loop = asyncio.get_running_loop()

        async def events() -> Any:
            try:
                yield "retry: 2000\n\n"
                next_status = loop.time()
                last_sent = loop.time()
                while True:
                    if await request.is_disconnected():
                        break
                    if status_s is not None and loop.time() >= next_status:
                        next_status = loop.time() + status_s
                        last_sent = loop.time()
                        yield f"event: status\ndata: {json.dumps({'type': 'status', **_status(daemon)})}\n\n"
                    wait = 15.0 if status_s is None else max(0.01, next_status - loop.time())
                    try:
                        ev = await asyncio.wait_for(sub.queue.get(), timeout=wait)
                    except asyncio.TimeoutError:
                        if loop.time() - last_sent >= 15:
                            last_sent = loop.time()
                            yield ": keep-alive\n\n"
                        continue
                    last_sent = loop.time()
                    yield f"event: {ev.get('type', 'message')}\ndata: {json.dumps(ev)}\n\n"
            finally:
                daemon.state.unsubscribe(sub)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _predictor() -> Any:
        p = getattr(daemon, "extensions", {}).get("predictor")
        if p is None:
            raise HTTPException(404, detail="the surrogate predictor is not enabled ([predictor] enabled = true)")
        return p

    @app.get("/api/v1/models", summary="Surrogate models in the registry, with their cards")
    async def models() -> dict[str, Any]:
        p = getattr(daemon, "extensions", {}).get("predictor")
        from surrogates.runtime import ModelRegistry

        root = p.config.models_dir if p is not None else Path(__file__).resolve().parents[1] / "surrogates" / "models"
        cards = await asyncio.to_thread(lambda: ModelRegistry(root).list())
        return {"loaded": None if p is None or p.model is None else {"family": p.config.model,
                                                                      "version": p.model.version,
                                                                      "card": p.model.card},
                "models": cards}

    @app.post("/api/v1/models/reload", summary="Load the newest model of the family without a restart (write scope)")
    async def reload_model(who: Principal = Depends(auth("write"))) -> dict[str, Any]:
        p = _predictor()
        try:
            version = await asyncio.to_thread(p.reload)
        except LookupError as err:  # no model of the family in the registry; the loaded one stays
            raise HTTPException(404, detail=str(err)) from None
        except Exception as err:  # noqa: BLE001 - unreadable or inconsistent model files (onnxruntime's own errors too)
            kept = None if p.model is None else p.model.version
            raise HTTPException(409, detail=f"cannot load the newest model (still using {kept}): {err}") from None
        return {"loaded": version}

    @app.get("/api/v1/predictions/latest", summary="Newest prediction per line: mean, spread, domain flag, model")
    async def predictions_latest(line: str | None = Query(None)) -> dict[str, Any]:
        p = _predictor()
        preds = [v.as_json() for k, v in sorted(p.latest.items()) if line is None or k == line]
        return {"predictions": preds, "count": p.count, "skipped": p.skipped, "last_skip_reason": p.last_skip_reason}

    # --- feedback: proposals, approval, targets (twin/feedback.py) ---
    from twin.feedback import install_routes as feedback_routes

    feedback_routes(app, daemon, auth)
    # --- end feedback ---

    # --- ontology: steps, parameters, points, downloads, SPARQL (ontology/api.py) ---
    from ontology.api import make_router

    app.include_router(make_router(daemon))
    # --- end ontology ---
    # --- Asset Administration Shell export (twin/aas.py) ---
    from twin.aas_api import make_router as aas_router

    app.include_router(aas_router(daemon))

    web = Path(__file__).parent / "web"
    apidocs.install(app)  # /docs, /redoc and /static/apidocs: before the /static mount
    app.mount("/static/vendor", StaticFiles(directory=_plotly_dir()), name="vendor")
    app.mount("/static", StaticFiles(directory=web), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(web / "index.html")

    return app


def _status(daemon: Any) -> dict[str, Any]:
    """The body of /api/v1/status (and of the stream's `status` events): read-only, from memory."""
    h = daemon.health()
    sources = [{"name": c.get("name"), "kind": c.get("kind"), "state": c.get("state"),
                "last_delivery_age_s": c.get("last_delivery_age_s"), "gaps": c.get("gaps"),
                "reconnects": c.get("reconnects"), "received": c.get("received"),
                "last_error": None if c.get("last_error") is None else str(c.get("last_error"))[:300]}
               for c in h.get("connectors", [])]
    ext = getattr(daemon, "extensions", {})
    pred, fb = ext.get("predictor"), ext.get("feedback")
    predictor = None if pred is None else {
        "count": pred.count, "skipped": sum(pred.skipped.values()), "last_skip_reason": pred.last_skip_reason,
        "latest": {line: ns_to_iso(p.ts_ns) for line, p in sorted(pred.latest.items())}}
    feedback = None if fb is None else {"decisions": {k: v.as_json() for k, v in fb.last_decision.items()}}
    return {"status": h["status"], "problems": h["problems"], "now": ns_to_iso(now_ns()), "sources": sources,
            "predictor": predictor, "feedback": feedback}


def _plotly_dir() -> Path:
    """The plotly.js bundle shipped inside the plotly Python package (served locally, no CDN)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data"
