"""``/healthz`` (component health, 200 or 503) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.samples import ns_to_iso
from twin.ports import ApiHost


def make_router(daemon: ApiHost) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", summary="Component health: 200 when ok, 503 when degraded",
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

    @router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        await daemon.refresh_metrics()
        return PlainTextResponse(generate_latest(daemon.metrics.registry).decode(),
                                 media_type=CONTENT_TYPE_LATEST)

    return router
