"""Lab results: ``/api/v1/lab/...`` (offline structure parameters per roll segment; docs/lab.md).

``POST /api/v1/lab/results`` (JSON rows) and ``POST /api/v1/lab/results/csv`` (a CSV file as the body; Excel
exports with ``;`` and decimal commas too) need the write scope; they answer the delivery's report (stored,
duplicates, dead letters with reasons). Every route answers 404 while ``[lab] enabled`` is false.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from core.samples import now_ns
from ontology.tagmap import Role, ValueType
from twin.lab.service import SEGMENT_PAD_M, roll_window, segment_process
from twin.ports import ApiHost
from twin.routes.common import Principal

MAX_BODY = 5_000_000
MAX_ID = 2**63 - 1  # SQLite's INTEGER


class LabRowBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    roll_id: str = Field(..., min_length=1, max_length=256, description="the roll (lot) id")
    start_m: float | None = Field(None, ge=0, description="start of the sampled range along the web (m)")
    end_m: float | None = Field(None, ge=0, description="end of the sampled range along the web (m)")
    position_m: float | None = Field(None, ge=0, description="one position (instead of start_m / end_m)")
    quantity: str = Field(..., min_length=1, max_length=256,
                          description="lab quantity name or ontology SP term (GET /api/v1/lab/quantities)")
    value: float = Field(..., description="the measured value, in unit")
    unit: str | None = Field(None, max_length=64, description="unit of value (pint / UCUM spelling)")
    line_id: str | None = Field(None, min_length=1, max_length=256)
    method: str | None = Field(None, max_length=256)
    sample_id: str | None = Field(None, max_length=256)
    measured_at: str | None = Field(None, max_length=64, description="ISO 8601 with offset")


class LabRowsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[LabRowBody] = Field(..., min_length=1, max_length=20_000)
    origin: str | None = Field(None, max_length=200, description="where the rows come from (shown in dead letters)")


def lab_or_404(daemon: ApiHost) -> Any:
    lab = getattr(daemon, "lab", None)
    if lab is None:
        raise HTTPException(404, detail="the lab service is not enabled ([lab] enabled = true)")
    return lab


def make_router(daemon: ApiHost, auth: Any) -> APIRouter:
    router = APIRouter()

    @router.get("/api/v1/lab/quantities", summary="Lab quantities: ontology SP term, unit, range, compared output")
    async def quantities() -> list[dict[str, Any]]:
        lab = lab_or_404(daemon)
        return [q.as_json() for q in lab.catalog.by_name.values()]

    @router.post("/api/v1/lab/results", summary="Store lab results (JSON rows; write scope)")
    async def post_rows(body: LabRowsBody, who: Principal = Depends(auth("write"))) -> dict[str, Any]:
        lab = lab_or_404(daemon)
        rows = [r.model_dump(exclude_none=True) for r in body.rows]
        return dict(await lab.ingest_rows(rows, origin=body.origin or f"api:{who.name}"))

    @router.post("/api/v1/lab/results/csv", summary="Store lab results from a CSV file in the body (write scope)",
                 openapi_extra={"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}},
                                                "required": True}})
    async def post_csv(request: Request, name: str | None = Query(None, max_length=200),
                       who: Principal = Depends(auth("write"))) -> dict[str, Any]:
        lab = lab_or_404(daemon)
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BODY:
                raise HTTPException(413, detail=f"a lab file is at most {MAX_BODY} bytes")
        return dict(await lab.ingest_csv(bytes(data), origin=f"file:{name or 'upload'}:{who.name}"))

    @router.get("/api/v1/lab/results", summary="Lab results, newest first")
    async def results(roll: str | None = Query(None, max_length=256), quantity: str | None = Query(None, max_length=64),
                      line: str | None = Query(None, max_length=256), limit: int = Query(100, ge=1, le=10_000),
                      before_id: int | None = Query(None, ge=0, le=MAX_ID)) -> list[dict[str, Any]]:
        lab = lab_or_404(daemon)
        return await asyncio.to_thread(lab.store.results, line, roll, quantity, limit, before_id)

    @router.get("/api/v1/lab/results/{rid}", summary="One lab result with the predictions and process inputs of its "
                "web segment")
    async def result(rid: int = Path(..., ge=0, le=MAX_ID)) -> dict[str, Any]:
        lab = lab_or_404(daemon)
        r = await asyncio.to_thread(lab.store.result, rid)
        if r is None:
            raise HTTPException(404, detail=f"no lab result {rid}")
        preds = await asyncio.to_thread(lab.store.segment_predictions, r["line_id"], r["roll_id"],
                                        r["start_m"] - SEGMENT_PAD_M, r["end_m"] + SEGMENT_PAD_M)
        by_version: dict[str, dict[str, Any]] = {}
        for p in preds:
            v = by_version.setdefault(p["version"], {"role": p["role"], "n": 0, "first_ts_ns": p["ts_ns"],
                                                     "last_ts_ns": p["ts_ns"], "mean": {}, "std": {}})
            v["n"] += 1
            v["last_ts_ns"] = p["ts_ns"]
            for k, x in p["mean"].items():
                v["mean"][k] = v["mean"].get(k, 0.0) + x
            for k, x in p["std"].items():
                v["std"][k] = v["std"].get(k, 0.0) + x
        for v in by_version.values():
            v["mean"] = {k: x / v["n"] for k, x in v["mean"].items()}
            v["std"] = {k: x / v["n"] for k, x in v["std"].items()}
        process = [p["inputs"] for p in preds if p["inputs"]]
        inputs = {k: sum(d[k] for d in process) / len(process) for k in process[0]} if process else {}
        # the process data of the segment from the twin's store: by roll id and web position (traceability), in the
        # time span of the segment's predictions, else of the roll
        if preds:
            t0, t1 = preds[0]["ts_ns"], preds[-1]["ts_ns"] + 1
        else:
            win = roll_window(await asyncio.to_thread(daemon.store.rolls, r["line_id"], 1_000_000), r["roll_id"])
            t0, t1 = (win[0], win[1] if win[1] is not None else now_ns()) if win is not None else (0, 0)
        tags = [t.id for t in daemon.tagmap.tags.values()
                if t.value_type is ValueType.NUMBER and t.role is not Role.PREDICTED]
        samples = await asyncio.to_thread(daemon.store.samples_page, tags, t0, t1, r["line_id"],
                                          roll_id=r["roll_id"], limit=100_000) if t1 > t0 else []
        return {"result": r, "segment": {"roll_id": r["roll_id"], "start_m": r["start_m"], "end_m": r["end_m"],
                                         "first_ts_ns": preds[0]["ts_ns"] if preds else None,
                                         "last_ts_ns": preds[-1]["ts_ns"] if preds else None},
                "predictions": by_version, "process_inputs": {"n": len(process), "mean": inputs},
                "process": segment_process(samples, r["start_m"] - SEGMENT_PAD_M, r["end_m"] + SEGMENT_PAD_M)}

    @router.get("/api/v1/lab/drift", summary="Drift test of the active model against the lab results, per output")
    async def drift() -> dict[str, Any]:
        lab = lab_or_404(daemon)
        return dict(lab.status_json())

    return router

