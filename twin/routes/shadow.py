"""Model versions in shadow: ``/api/v1/models/shadow``, ``comparison``, ``requests`` (docs/lab.md).

The candidates run beside the active model; the comparison shows each version's errors against the lab results
as they arrive. Promotion, rollback and retraining are requests: created (write scope), approved or rejected by a
named user (write scope), applied and audited (who, when, the metrics). 404 while ``[lab] enabled`` is false.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from twin.feedback.lifecycle import STATES, ProposalError
from twin.lab.service import LabError
from twin.ports import ApiHost
from twin.routes.common import Principal
from twin.routes.lab import lab_or_404


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(..., pattern="^(promote|rollback|retrain)$", description="promote, rollback or retrain")
    version: str | None = Field(None, max_length=200, description="the candidate to promote (promote only)")
    reason: str = Field("", max_length=2000)


class CommentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str | None = Field(None, max_length=2000)


def make_router(daemon: ApiHost, auth: Any) -> APIRouter:
    router = APIRouter()

    @router.get("/api/v1/models/shadow", summary="The active model and the shadow candidates, with their cards")
    async def shadow() -> dict[str, Any]:
        lab = lab_or_404(daemon)
        active = lab.active
        return {"active": None if active is None else {"version": active.version, "path": str(active.path),
                                                        "kind": active.card.get("kind", "ensemble")},
                "candidates": [{"version": v, "path": str(m.path), "kind": m.card.get("kind", "ensemble"),
                                "base": m.card.get("base"), "summary": m.card.get("summary"),
                                "trained_on": m.card.get("trained_on"), "fit": m.card.get("fit")}
                               for v, m in sorted(lab.candidates.items())],
                "counts": lab.counts}

    @router.get("/api/v1/models/comparison", summary="Errors of the active and shadow models against the lab "
                "results (MAE, bias, +/-2 sigma coverage, n per output)")
    async def comparison() -> dict[str, Any]:
        return dict(await lab_or_404(daemon).comparison())

    @router.get("/api/v1/models/requests", summary="Promotion, rollback and retrain requests, newest first")
    async def requests(state: str | None = Query(None, pattern="^(" + "|".join(STATES) + ")$"),
                       limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        lab = lab_or_404(daemon)
        return list(await asyncio.to_thread(lab.store.requests, state, None, limit))

    @router.post("/api/v1/models/requests", summary="Propose a promotion, rollback or retrain (write scope)")
    async def create(body: RequestBody, who: Principal = Depends(auth("write"))) -> dict[str, Any]:
        lab = lab_or_404(daemon)
        try:
            return dict(await lab.create_request(body.kind, body.version, who.name, body.reason))
        except LabError as err:
            raise HTTPException(409, detail=str(err)) from None

    def _one(lab: Any, rid: str) -> dict[str, Any]:
        r = lab.store.request(rid)
        if r is None:
            raise HTTPException(404, detail=f"no request {rid!r}")
        return dict(r)

    @router.get("/api/v1/models/requests/{rid}", summary="One request")
    async def one(rid: str) -> dict[str, Any]:
        return _one(lab_or_404(daemon), rid)

    @router.get("/api/v1/models/requests/{rid}/audit", summary="Audit trail of one request (who, when, metrics)")
    async def audit(rid: str) -> list[dict[str, Any]]:
        lab = lab_or_404(daemon)
        _one(lab, rid)
        return list(await lab.audit_trail(rid, 100))

    async def decide(rid: str, body: CommentBody | None, who: Principal, approve: bool) -> dict[str, Any]:
        lab = lab_or_404(daemon)
        _one(lab, rid)
        try:
            if approve:
                return dict(await lab.approve(rid, who.name, body.comment if body else None))
            return dict(await lab.reject(rid, who.name, body.comment if body else None))
        except ProposalError as err:
            raise HTTPException(409, detail=str(err)) from None

    @router.post("/api/v1/models/requests/{rid}/approve", summary="Approve and apply a request (write scope)")
    async def approve(rid: str, body: CommentBody | None = Body(None),
                      who: Principal = Depends(auth("write"))) -> dict[str, Any]:
        return await decide(rid, body, who, True)

    @router.post("/api/v1/models/requests/{rid}/reject", summary="Reject a request (write scope)")
    async def reject(rid: str, body: CommentBody | None = Body(None),
                     who: Principal = Depends(auth("write"))) -> dict[str, Any]:
        return await decide(rid, body, who, False)

    return router
