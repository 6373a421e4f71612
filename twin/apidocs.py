"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) from installed files, never from a CDN.

FastAPI's own pages load swagger-ui and redoc from cdn.jsdelivr.net, a favicon from
fastapi.tiangolo.com and ReDoc's fonts from Google: on a plant network without internet they stay
blank. The ``fastapi-offline`` package (a base dependency) ships swagger-ui-bundle.js, swagger-ui.css
and redoc.standalone.js; they are served under ``/static/apidocs/`` and FastAPI's page builders are
pointed at them. Swagger UI's online spec validator (validator.swagger.io) is switched off, ReDoc's
Google fonts are not loaded, and both pages carry a Content-Security-Policy that lets the browser fetch
from the twin only (ReDoc's sidebar would otherwise load its logo from cdn.redoc.ly). tests/browser/test_offline_docs.py checks that no request leaves the host.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_URL = "/static/apidocs"
# the browser may fetch nothing from elsewhere, whatever the bundles ask for: ReDoc's sidebar, for one,
# shows a logo from cdn.redoc.ly (found by tests/browser/test_offline_docs.py)
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'")
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"


def static_dir() -> Path:
    """The folder of the installed fastapi-offline package that holds the Swagger UI and ReDoc bundles."""
    return Path(fastapi_offline.__file__).parent / "static"


def mount_static(app: FastAPI) -> None:
    """Mount the bundles under ``/static/apidocs``. Call this before a mount of ``/static`` (a mount
    matches by prefix, so ``/static`` mounted first would answer ``/static/apidocs/...`` with 404)."""
    app.mount(STATIC_URL, StaticFiles(directory=static_dir()), name="apidocs")


def make_router() -> APIRouter:
    """``/docs``, ``/docs/oauth2-redirect`` and ``/redoc`` (not in the schema). Create the app with
    ``docs_url=None, redoc_url=None`` and call :func:`mount_static` too."""
    router = APIRouter()

    @router.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        app = request.app
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None})
        page.headers["Content-Security-Policy"] = CSP
        return page

    @router.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        app = request.app
        root = request.scope.get("root_path", "")
        page = get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png", with_google_fonts=False)
        page.headers["Content-Security-Policy"] = CSP
        return page

    return router
