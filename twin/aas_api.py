"""AAS endpoints (an APIRouter included by :func:`twin.api.create_app`), serialised by basyx-python-sdk.

``GET /api/v1/aas/shells``: the shells of the line and its equipment (``{"result": [...], "paging_metadata": {}}``
as the AAS HTTP API returns a list); ``GET /api/v1/aas/environment``: shells, submodels and concept descriptions in
one AAS environment document; ``GET /api/v1/aas/submodels/{id}``: one submodel, ``id`` base64url-encoded as the AAS
HTTP API (IDTA 01002) has it, or the plain identifier; ``GET /api/v1/aas/rolls/{roll_id}.aasx``: an AASX package
with the roll's shell, its RollData submodel and the concept descriptions (docs/aas.md).

The documents are built per request from the tag map and the store (nothing is cached: the store grows).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from twin.jsonld import DATA, _slug
from twin.ports import ApiHost

try:
    from twin import aas
except ImportError as err:  # basyx-python-sdk not installed: the twin runs without the AAS endpoints
    aas = None  # type: ignore[assignment]
    _MISSING: ImportError | None = err
else:
    _MISSING = None

_log = logging.getLogger("twin.aas")

AASX_MEDIA_TYPE = "application/asset-administration-shell-package"
_ROLL_PREFIX, _ROLL_SUFFIX = f"{DATA}roll/", "/submodel/RollData"


def _decode_id(text: str) -> list[str]:
    """Candidate identifiers of a path segment: its base64url decoding (padding optional), then the text itself."""
    out = []
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        out.append(raw.decode("utf-8"))
    except (binascii.Error, ValueError):
        pass
    out.append(text)
    return out


def make_router(daemon: ApiHost) -> APIRouter:
    router = APIRouter(tags=["aas"])
    if aas is None:
        _log.warning("AAS export disabled: %s (pip install basyx-python-sdk)", _MISSING)
        return router
    line_id = daemon.config.line_id

    def line_env(base_url: str, extents: bool = True) -> Any:
        tags = daemon.tagmap.tags
        ext = aas.store_extents(daemon.store, aas.numeric_tags(tags.values()), line_id) if extents else {}
        return aas.line_environment(tags, line_id, ext, base_url)

    def roll_env(roll_id: str, line: str) -> Any:
        samples = daemon.store.samples_of_roll(roll_id, line)
        if not any(s.tag_id in daemon.tagmap.tags for s in samples):
            return None
        return aas.roll_environment(roll_id, samples, daemon.tagmap.tags, line)

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    @router.get("/api/v1/aas/shells", summary="Asset Administration Shells of the line and its equipment (JSON)")
    async def shells(request: Request) -> JSONResponse:
        env = await asyncio.to_thread(line_env, base(request), False)  # shells only refer to the submodels
        found = sorted((o for o in env if isinstance(o, aas.model.AssetAdministrationShell)), key=lambda s: s.id)
        return JSONResponse({"paging_metadata": {}, "result": aas.to_json(found)})

    @router.get("/api/v1/aas/environment",
                summary="Shells, submodels and concept descriptions of the line in one AAS environment (JSON)")
    async def environment(request: Request) -> Response:
        env = await asyncio.to_thread(line_env, base(request))
        return Response(aas.environment_json(env), media_type="application/json")

    @router.get("/api/v1/aas/submodels/{submodel_id:path}",
                summary="One submodel by its identifier (base64url-encoded, or plain)")
    async def submodel(request: Request, submodel_id: str,
                       line: str | None = Query(None, max_length=200,
                                                description="line of a roll's submodel")) -> JSONResponse:
        candidates = _decode_id(submodel_id)
        env = await asyncio.to_thread(line_env, base(request))
        for cid in candidates:
            try:
                obj = env.get_item(cid)
            except KeyError:
                continue
            if isinstance(obj, aas.model.Submodel):
                return JSONResponse(aas.to_json(obj))
        for cid in candidates:  # a roll's submodel: .../data/roll/<roll>/submodel/RollData
            if cid.startswith(_ROLL_PREFIX) and cid.endswith(_ROLL_SUFFIX):
                slug = cid[len(_ROLL_PREFIX):-len(_ROLL_SUFFIX)]
                rolls = await asyncio.to_thread(daemon.store.rolls, None, 10_000)
                names = [r["roll_id"] for r in rolls if _slug(r["roll_id"]) == slug] or [slug]
                for roll_id in dict.fromkeys(names):
                    renv = await asyncio.to_thread(roll_env, roll_id, line or line_id)
                    if renv is not None:
                        return JSONResponse(aas.to_json(renv.get_item(aas.roll_submodel_id(roll_id))))
        raise HTTPException(404, detail=f"no submodel {candidates[0]!r}")

    @router.get("/api/v1/aas/rolls/{roll_id}.aasx", response_class=Response,
                responses={200: {"content": {AASX_MEDIA_TYPE: {}}, "description": "an AASX package"}},
                summary="AASX package of one roll: its shell, RollData submodel and concept descriptions")
    async def roll_aasx(roll_id: str,
                        line: str | None = Query(None, max_length=200,
                                                 description="line id (default: the twin's)")) -> Response:
        renv = await asyncio.to_thread(roll_env, roll_id, line or line_id)
        if renv is None:
            raise HTTPException(404, detail=f"no stored observations of roll {roll_id!r} on line {line or line_id!r}")
        data = await asyncio.to_thread(aas.aasx_bytes, renv)
        name = _slug(roll_id)
        return Response(data, media_type=AASX_MEDIA_TYPE,
                        headers={"Content-Disposition": f'attachment; filename="roll-{name}.aasx"'})

    return router
