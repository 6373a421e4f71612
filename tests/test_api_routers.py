"""One way to add an HTTP area: an APIRouter in its own module, mounted by twin.api.create_app.

create_app itself defines no endpoint; each area module builds a router with routes; the static mounts
come after the API docs' own (a mount matches by prefix). The feedback area is twin/feedback/routes.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute, Mount

from tests.conftest import write_config
from twin import apidocs
from twin.api import create_app
from twin.config import load_config
from twin.daemon import Daemon
from twin.routes import dead_letters, health, models, predictions, status, tags, web
from twin.routes.common import make_auth


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    return Daemon(load_config(write_config(tmp_path)))


@pytest.fixture
def app(daemon: Daemon) -> FastAPI:
    return create_app(daemon)


def test_every_area_module_builds_a_router_with_routes(daemon: Daemon) -> None:
    auth = make_auth(daemon)
    routers = {"health": health.make_router(daemon), "tags": tags.make_router(daemon),
               "dead_letters": dead_letters.make_router(daemon), "status": status.make_router(daemon),
               "models": models.make_router(daemon, auth), "predictions": predictions.make_router(daemon),
               "web": web.make_router(), "apidocs": apidocs.make_router()}
    for name, router in routers.items():
        assert isinstance(router, APIRouter), name
        paths = [r.path for r in router.routes if isinstance(r, APIRoute)]
        assert paths, f"{name} has no routes"
    all_paths = [r.path for router in routers.values() for r in router.routes if isinstance(r, APIRoute)]
    assert len(all_paths) == len(set(all_paths)), "two areas serve the same path"


def test_create_app_defines_no_endpoint_of_its_own(app: FastAPI) -> None:
    direct = [r for r in app.router.routes if isinstance(r, APIRoute)]
    strays = sorted(f"{r.path} ({r.endpoint.__module__})" for r in direct
                    if not r.endpoint.__module__.startswith(
                        ("twin.routes.", "twin.export", "twin.aas_api", "twin.apidocs", "ontology.api",
                         "twin.feedback.routes")))
    assert not strays, f"routes added to the app directly instead of through an APIRouter: {strays}"
    assert not any(r.endpoint.__module__ == "twin.api" for r in direct)


def test_the_static_mounts_come_after_the_api_docs_bundles(app: FastAPI) -> None:
    mounts = [r.path for r in app.router.routes if isinstance(r, Mount)]
    assert mounts == ["/static/apidocs", "/static/vendor", "/static"]


def test_the_areas_answer_through_the_app(app: FastAPI) -> None:
    from fastapi.testclient import TestClient

    c = TestClient(app)
    assert c.get("/healthz").status_code in (200, 503)
    assert c.get("/api/v1/tags").status_code == 200
    assert c.get("/api/v1/dead-letters").json() == []
    assert c.get("/api/v1/predictions/latest").status_code == 404  # no predictor in this config
    assert c.get("/").headers["content-type"].startswith("text/html")
    assert c.get("/static/apidocs/swagger-ui.css").status_code == 200
    spec = c.get("/openapi.json").json()
    assert {"/healthz", "/api/v1/series/{tag}", "/api/v1/stream", "/api/v1/models/reload"} <= set(spec["paths"])
