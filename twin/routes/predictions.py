"""``/api/v1/predictions/latest``: the newest prediction per line (mean, spread, domain flag, model)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from twin.ports import ApiHost
from twin.routes.common import predictor_or_404


def make_router(daemon: ApiHost) -> APIRouter:
    router = APIRouter()

    @router.get("/api/v1/predictions/latest", summary="Newest prediction per line: mean, spread, domain flag, model")
    async def predictions_latest(line: str | None = Query(None)) -> dict[str, Any]:
        p = predictor_or_404(daemon)
        preds = [v.as_json() for k, v in sorted(p.latest.items()) if line is None or k == line]
        return {"predictions": preds, "count": p.count, "skipped": p.skipped, "last_skip_reason": p.last_skip_reason}

    return router
