"""``/api/v1/status`` (per-source health, why there is no prediction or proposal) and
``/api/v1/stream`` (Server-Sent Events of committed samples, predictions, proposals and status)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from core.samples import now_ns, ns_to_iso
from twin.ports import ApiHost


def status_body(daemon: ApiHost) -> dict[str, Any]:
    """The body of /api/v1/status (and of the stream's `status` events): read-only, from memory."""
    h = daemon.health()
    sources = [{"name": c.get("name"), "kind": c.get("kind"), "state": c.get("state"),
                "last_delivery_age_s": c.get("last_delivery_age_s"), "gaps": c.get("gaps"),
                "reconnects": c.get("reconnects"), "received": c.get("received"),
                "last_error": None if c.get("last_error") is None else str(c.get("last_error"))[:300]}
               for c in h.get("connectors", [])]
    pred, fb = daemon.predictor, daemon.feedback
    predictor = None if pred is None else {
        "count": pred.count, "skipped": sum(pred.skipped.values()), "last_skip_reason": pred.last_skip_reason,
        "latest": {line: ns_to_iso(p.ts_ns) for line, p in sorted(pred.latest.items())}}
    feedback = None if fb is None else {"decisions": {k: v.as_json() for k, v in fb.last_decision.items()}}
    return {"status": h["status"], "problems": h["problems"], "now": ns_to_iso(now_ns()), "sources": sources,
            "predictor": predictor, "feedback": feedback}


def make_router(daemon: ApiHost) -> APIRouter:
    router = APIRouter()

    @router.get("/api/v1/status", summary="Per-source health and why there is no prediction or proposal (dashboard)",
             description="Read-only: `status`/`problems` as in /healthz; per source its state, the age of its "
                         "newest delivery and its gap and reconnect counts; the predictor's newest prediction "
                         "time and the reason of its last skipped round; the feedback service's last decision "
                         "per line with its reasons. The stream sends the same body as `status` events when "
                         "asked with `status_s` (docs/dashboard.md, \"Health\").")
    async def status() -> dict[str, Any]:
        return status_body(daemon)

    @router.get("/api/v1/stream", summary="Live stream (Server-Sent Events) of committed samples",
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
                        yield f"event: status\ndata: {json.dumps({'type': 'status', **status_body(daemon)})}\n\n"
                    wait = 15.0 if status_s is None else max(0.01, next_status - loop.time())
                    try:
                        ev = await asyncio.wait_for(sub.queue.get(), timeout=wait)
                    except TimeoutError:
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

    return router
