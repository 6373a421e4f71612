"""HTTP API (FastAPI): the one place where the areas are mounted.

Each area is an :class:`fastapi.APIRouter` in its own module (the table in :mod:`twin.routes`):
health and metrics, tags and series, dead letters, status and the live stream, models, predictions,
export, feedback, ontology, AAS, the API docs and the web pages. :func:`create_app` builds the app,
installs the error handlers and includes every router, in the order below.

Times are ISO 8601 with an offset in and out; a time without offset is refused (422), because a
plant's clocks and its engineers' browsers rarely share a zone.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ontology.api import make_router as ontology_router
from twin import apidocs
from twin.aas_api import make_router as aas_router
from twin.export import make_router as export_router
from twin.feedback.routes import make_router as feedback_router
from twin.ports import ApiHost
from twin.routes import cell, dead_letters, health, lab, models, predictions, shadow, status, tags, web
from twin.routes.common import TIME_MAX_NS, TIME_MIN_NS, Principal, make_auth
from twin.routes.common import query_time as _time
from twin.routes.dead_letters import DeadLetterItem
from twin.routes.status import status_body as _status
from twin.routes.tags import LatestItem, SeriesPoint, SeriesResponse, TagItem
from twin.routes.web import plotly_dir as _plotly_dir

__all__ = ["TIME_MAX_NS", "TIME_MIN_NS", "DeadLetterItem", "LatestItem", "Principal", "SeriesPoint", "SeriesResponse",
           "TagItem", "_plotly_dir", "_status", "_time", "create_app", "make_auth"]

_log = logging.getLogger("twin.api")


def _plain_text(value: object, limit: int) -> str:
    """Bounded text that JSON can carry: lone surrogates and control characters escaped."""
    text = value if isinstance(value, str) else str(value)
    text = text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def create_app(daemon: ApiHost) -> FastAPI:
    """``daemon``: what the API reads of the composed twin (:class:`twin.ports.ApiHost`)."""
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

    app.include_router(health.make_router(daemon))
    app.include_router(tags.make_router(daemon))
    app.include_router(dead_letters.make_router(daemon))
    app.include_router(export_router(daemon))  # CSV / Parquet export, a roll's JSON-LD observations (twin/export.py)
    app.include_router(status.make_router(daemon))
    app.include_router(models.make_router(daemon, auth))
    app.include_router(predictions.make_router(daemon))
    app.include_router(cell.make_router(daemon))  # the cell consequence of a setting (PyBaMM)
    app.include_router(lab.make_router(daemon, auth))  # lab results in (twin/lab, docs/lab.md)
    app.include_router(shadow.make_router(daemon, auth))  # shadow models, comparison, promotion requests

    # proposals, approval, targets (twin/feedback/routes.py) over the daemon's feedback service (None: 404)
    app.include_router(feedback_router(lambda: daemon.feedback, auth))

    app.include_router(ontology_router(daemon))  # steps, parameters, points, downloads, SPARQL (ontology/api.py)
    app.include_router(aas_router(daemon))  # Asset Administration Shell export (twin/aas.py)

    app.include_router(apidocs.make_router())  # /docs, /redoc
    apidocs.mount_static(app)  # /static/apidocs: before the /static mount
    web.mount_static(app)
    app.include_router(web.make_router())
    return app
