"""HTTP routes of the feedback service: proposals, approval, targets, status (an ``APIRouter``).

Mounted by twin.api.create_app: ``app.include_router(make_router(lambda: daemon.feedback, auth))``. Every route
answers 404 while the feedback service is not enabled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from twin.feedback.config import OUTPUTS, TargetSpec
from twin.feedback.lifecycle import STATES, Proposal, ProposalError
from twin.feedback.service import FeedbackService

#: ``auth(scope)`` -> a FastAPI dependency that returns the principal (``.name``) or answers 401/403 (twin.api)
Auth = Callable[[str], Callable[..., Any]]


class TargetsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipe: str | None = Field(None, min_length=1, max_length=200)
    targets: dict[str, TargetSpec] = Field(..., max_length=len(OUTPUTS))


class CommentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str | None = Field(None, max_length=2000)


def make_router(service: Callable[[], FeedbackService | None], auth: Auth) -> APIRouter:
    """Proposal and target endpoints over the service ``service()`` returns (None: 404, not enabled)."""
    router = APIRouter()

    def svc() -> FeedbackService:
        s = service()
        if s is None:
            raise HTTPException(404, detail="the feedback service is not enabled ([feedback] enabled = true)")
        return s

    def one(pid: str) -> Proposal:
        try:
            return svc().get(pid)
        except KeyError:
            raise HTTPException(404, detail=f"no proposal {pid!r}") from None

    @router.get("/api/v1/proposals", summary="Proposals, newest first (state filter optional)")
    async def proposals(state: str | None = Query(None, pattern="^(" + "|".join(STATES) + ")$"),
                        limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        return [p.as_json() for p in svc().newest(state, limit)]

    @router.get("/api/v1/proposals/current", summary="The open proposal (state proposed), or null")
    async def current() -> dict[str, Any] | None:
        p = svc().open_proposal()
        return None if p is None else p.as_json()

    @router.get("/api/v1/proposals/{pid}", summary="One proposal")
    async def get_one(pid: str) -> dict[str, Any]:
        return one(pid).as_json()

    @router.get("/api/v1/proposals/{pid}/audit", summary="Audit trail of one proposal (from the store)")
    async def audit(pid: str) -> list[dict[str, Any]]:
        return await svc().audit_trail(pid, 100)

    async def transition(pid: str, body: CommentBody | None, principal: Any, approve: bool) -> dict[str, Any]:
        p = one(pid)
        try:
            if approve:
                p = await svc().approve(pid, principal.name, body.comment if body else None)
            else:
                p = await svc().reject(pid, principal.name, body.comment if body else None)
        except ProposalError as err:
            raise HTTPException(409, detail=str(err)) from None
        return p.as_json()

    @router.post("/api/v1/proposals/{pid}/approve", summary="Approve and apply a proposal (write scope)")
    async def approve(pid: str, body: CommentBody | None = Body(None),
                      principal: Any = Depends(auth("write"))) -> dict[str, Any]:
        return await transition(pid, body, principal, True)

    @router.post("/api/v1/proposals/{pid}/reject", summary="Reject a proposal (write scope)")
    async def reject(pid: str, body: CommentBody | None = Body(None),
                     principal: Any = Depends(auth("write"))) -> dict[str, Any]:
        return await transition(pid, body, principal, False)

    @router.get("/api/v1/feedback/targets", summary="Targets of the current recipe")
    async def targets() -> dict[str, Any]:
        return svc().targets_json()

    @router.put("/api/v1/feedback/targets", summary="Set the targets (write scope)")
    async def put_targets(body: TargetsBody, principal: Any = Depends(auth("write"))) -> dict[str, Any]:
        try:
            return await svc().set_targets(body.recipe, body.targets, principal.name)
        except ValueError as err:
            raise HTTPException(422, detail=str(err)) from None

    @router.get("/api/v1/feedback/status", summary="Last decision per line, model-correction gains, latency")
    async def status() -> dict[str, Any]:
        return svc().status_json()

    return router
