"""The dashboard: ``/`` (twin/web/index.html) and the static files under ``/static`` (the pages'
scripts, and the plotly.js bundle from the installed plotly package under ``/static/vendor``: no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parents[1] / "web"


def plotly_dir() -> Path:
    """The plotly.js bundle shipped inside the plotly Python package (served locally, no CDN)."""
    import plotly  # a large package: imported when the app is built, not with the module

    return Path(plotly.__file__).parent / "package_data"


def mount_static(app: FastAPI) -> None:
    """``/static/vendor`` and ``/static`` (a router cannot carry mounts). Mount after the API docs'
    ``/static/apidocs``: a mount matches by prefix."""
    app.mount("/static/vendor", StaticFiles(directory=plotly_dir()), name="vendor")
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")


def make_router() -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    return router
