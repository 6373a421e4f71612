"""Ontology endpoints (an APIRouter included by :func:`twin.api.create_app`).

``/api/v1/ontology/steps``, ``/api/v1/ontology/parameters`` (filter by step / kind),
``/api/v1/ontology/points``, downloads ``/api/v1/ontology.owl`` (RDF/XML) and ``/api/v1/ontology.ttl``
(Turtle) of the ontology + alignment + plant individuals, and ``/api/v1/sparql``: read-only SELECT over
the same graph with a row limit and a timeout.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any, Protocol

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse, Response

from ontology.plant import ontology_index, owl_bytes, plant_graph, points, step_class
from ontology.tagmap import TagMap

SPARQL_MAX_ROWS = 10_000
SPARQL_TIMEOUT_S = 5.0
_UPDATE = re.compile(r"\b(INSERT|DELETE|LOAD|CLEAR|CREATE|DROP|COPY|MOVE|ADD|SERVICE)\b", re.IGNORECASE)


class _Timeout(Exception):
    pass


def _timed(g: Any, deadline: float) -> Any:
    """A view of ``g`` (same store) whose triple lookups stop the query after ``deadline`` (monotonic)."""
    import time

    import rdflib

    class _TimedGraph(rdflib.Graph):
        def triples(self, triple: Any) -> Any:
            if time.monotonic() > deadline:
                raise _Timeout()
            return super().triples(triple)

    return _TimedGraph(store=g.store, identifier=g.identifier, namespace_manager=g.namespace_manager)


class _LineConfig(Protocol):
    line_id: str


class OntologyHost(Protocol):
    """What the ontology's API area reads of the twin: the tag map and the line id (twin.ports.ApiHost has both)."""

    @property
    def tagmap(self) -> TagMap: ...

    @property
    def config(self) -> _LineConfig: ...


def make_router(daemon: OntologyHost) -> APIRouter:
    router = APIRouter(tags=["ontology"])
    cache: dict[str, Any] = {}
    lock = threading.Lock()

    def graph() -> Any:
        with lock:  # built once per daemon (the tag map is fixed after start-up)
            key = len(daemon.tagmap.tags)
            if cache.get("key") != key:
                cache["graph"] = plant_graph(daemon.tagmap, daemon.config.line_id)
                cache["key"] = key
                cache.pop("owl", None)
                cache.pop("ttl", None)
            return cache["graph"]

    @router.get("/api/v1/ontology/steps", summary="Manufacturing steps in line order, with products and equipment")
    async def steps() -> list[dict[str, Any]]:
        return ontology_index().steps

    @router.get("/api/v1/ontology/parameters", summary="Parameter classes (seed 004 Tables 5-12 and project terms)")
    async def parameters(step: str | None = Query(None, description="step class or tag-map step (calendering)"),
                         kind: str | None = Query(None, description="MP, PP, SP or TRACE")) -> list[dict[str, Any]]:
        want_step = step_class(step) if step is not None else None
        if step is not None and want_step is None:
            raise HTTPException(404, detail=f"unknown step {step!r}")
        if kind is not None and kind.upper() not in ("MP", "PP", "SP", "TRACE"):
            raise HTTPException(422, detail=f"kind must be MP, PP, SP or TRACE (got {kind!r})")
        out = []
        for t in ontology_index().terms.values():
            if want_step is not None and t.step != want_step:
                continue
            if kind is not None and t.kind != kind.upper():
                continue
            out.append(t.as_dict())
        return out

    @router.get("/api/v1/ontology/points", summary="The plant's points (one per tag) with their ontology terms")
    async def plant_points() -> list[dict[str, Any]]:
        return points(daemon.tagmap, daemon.config.line_id)

    @router.get("/api/v1/ontology.owl", summary="Ontology + alignment + plant individuals (RDF/XML)")
    async def owl() -> Response:
        if "owl" not in cache:
            g = await asyncio.to_thread(graph)
            cache["owl"] = await asyncio.to_thread(owl_bytes, g)
        return Response(cache["owl"], media_type="application/rdf+xml")

    @router.get("/api/v1/ontology.ttl", summary="Ontology + alignment + plant individuals (Turtle)")
    async def ttl() -> Response:
        if "ttl" not in cache:
            g = await asyncio.to_thread(graph)
            cache["ttl"] = await asyncio.to_thread(lambda: g.serialize(format="turtle", encoding="utf-8"))
        return Response(cache["ttl"], media_type="text/turtle")

    @router.get("/api/v1/sparql", summary="Read-only SPARQL SELECT over ontology + plant (row limit, timeout)")
    async def sparql(query: str = Query(..., description="a SPARQL SELECT query"),
                     limit: int = Query(1000, ge=1, le=SPARQL_MAX_ROWS, description="maximum rows returned"),
                     timeout_s: float = Query(SPARQL_TIMEOUT_S, gt=0, le=30, description="time limit")) -> JSONResponse:
        from rdflib.plugins.sparql import prepareQuery

        body = re.sub(r"#[^\n]*", "", query)
        if _UPDATE.search(body):
            raise HTTPException(400, detail="only SELECT queries are allowed (read-only endpoint)")
        try:
            q = prepareQuery(query)
        except Exception as err:
            raise HTTPException(400, detail=f"SPARQL syntax error: {err}") from err
        if q.algebra.name != "SelectQuery":
            raise HTTPException(400, detail=f"only SELECT queries are allowed (got {q.algebra.name})")
        g = await asyncio.to_thread(graph)
        stop = threading.Event()
        import time

        timed = _timed(g, time.monotonic() + timeout_s)

        def run() -> tuple[list[str], list[list[Any]], bool]:
            res = timed.query(q)
            names = [str(v) for v in res.vars]
            rows: list[list[Any]] = []
            truncated = False
            for row in res:  # evaluated lazily; the timed graph and the stop flag end long queries
                if stop.is_set():
                    raise _Timeout()
                if len(rows) >= limit:
                    truncated = True
                    break
                rows.append([None if v is None else str(v) for v in row])
            return names, rows, truncated

        fut = asyncio.get_running_loop().run_in_executor(None, run)
        # after a timeout the worker stops itself with _Timeout; retrieve it so nothing is logged as lost
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            names, rows, truncated = await asyncio.wait_for(asyncio.shield(fut), timeout=timeout_s)
        except (TimeoutError, _Timeout):
            stop.set()
            raise HTTPException(504, detail=f"query exceeded the {timeout_s:g} s limit") from None
        return JSONResponse({"head": {"vars": names},
                             "results": {"bindings": [{n: v for n, v in zip(names, r) if v is not None}
                                                      for r in rows]},
                             "truncated": truncated})

    return router
