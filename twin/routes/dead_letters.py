"""``/api/v1/dead-letters``: readings that could not be stored, newest first, with the reason."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from core.samples import ns_to_iso
from twin.ports import ApiHost


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


def make_router(daemon: ApiHost) -> APIRouter:
    router = APIRouter()

    @router.get("/api/v1/dead-letters", response_model=list[DeadLetterItem],
             summary="Readings that could not be stored, newest first, with the reason")
    async def dead_letters(limit: int = Query(100, ge=1, le=10_000),
                           before_id: int | None = Query(None, ge=1, le=2**63 - 1,
                                                    description="page: ids below this")) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(daemon.store.dead_letters, limit, before_id)
        for r in rows:
            r["received"] = ns_to_iso(r.pop("received_ts_ns"))
        return rows

    return router
