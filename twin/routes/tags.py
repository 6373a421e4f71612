"""Tags and their values: ``/api/v1/tags``, ``/api/v1/latest``, ``/api/v1/series/{tag}`` (downsampled)
and ``/api/v1/rolls``. Times are ISO 8601 with an offset in and out; a time without offset is refused
(422), because a plant's clocks and its engineers' browsers rarely share a zone."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from core.samples import now_ns, ns_to_iso
from twin.ports import ApiHost
from twin.routes.common import TIME_MIN_NS, query_time
from twin.state import sample_json


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


def make_router(daemon: ApiHost) -> APIRouter:
    router = APIRouter()

    @router.get("/api/v1/tags", response_model=list[TagItem], summary="Every tag the twin knows")
    async def tags() -> list[dict[str, Any]]:
        return [t.as_dict() for t in daemon.tagmap.tags.values()]

    @router.get("/api/v1/latest", response_model=list[LatestItem], summary="Newest value per tag")
    async def latest(line: str | None = Query(None, description="line id"),
                     tag: list[str] | None = Query(None, description="restrict to these tag ids"),
                     ) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(daemon.store.latest, line, tag)
        return [sample_json(r) for r in rows]

    @router.get("/api/v1/series/{tag}", response_model=SeriesResponse,
             summary="A time range of one tag, downsampled to at most `points` buckets")
    async def series(tag: str,
                     start: str | None = Query(None, description="ISO 8601 with offset; default end - 1 h"),
                     end: str | None = Query(None, description="ISO 8601 with offset; default now"),
                     points: int = Query(500, ge=1, le=10_000, description="maximum number of buckets"),
                     line: str | None = Query(None, description="line id")) -> dict[str, Any]:
        t = daemon.tagmap.tags.get(tag)
        if t is None:
            raise HTTPException(404, detail=f"unknown tag {tag!r}")
        end_ns = query_time("end", end, now_ns())
        start_ns = query_time("start", start, max(TIME_MIN_NS, end_ns - 3600 * 10**9))
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

    @router.get("/api/v1/rolls", summary="Rolls (lots) seen per line and step, newest first")
    async def rolls(line: str | None = Query(None), limit: int = Query(100, ge=1, le=10_000)) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(daemon.store.rolls, line, limit)
        for r in rows:
            r["ts"] = ns_to_iso(r.pop("source_ts_ns"))
        return rows

    return router
