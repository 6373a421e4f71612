"""Surrogate models: ``/api/v1/models`` (the registry, with cards) and ``/api/v1/models/reload``
(write scope: load the newest model of the family without a restart)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from twin.ports import ApiHost
from twin.routes.common import Principal, predictor_or_404

MODELS_DIR = Path(__file__).resolve().parents[2] / "surrogates" / "models"  # without a predictor: the shipped ones


def make_router(daemon: ApiHost, auth: Any) -> APIRouter:
    """``auth`` is :func:`twin.routes.common.make_auth` of the daemon."""
    router = APIRouter()

    @router.get("/api/v1/models", summary="Surrogate models in the registry, with their cards")
    async def models() -> dict[str, Any]:
        p = daemon.predictor
        from surrogates.runtime import ModelRegistry  # lazy: loads onnxruntime, only when the registry is asked

        root = p.config.models_dir if p is not None else MODELS_DIR
        cards = await asyncio.to_thread(lambda: ModelRegistry(root).list())
        return {"loaded": None if p is None or p.model is None else {"family": p.config.model,
                                                                      "version": p.model.version,
                                                                      "card": p.model.card},
                "models": cards}

    @router.post("/api/v1/models/reload", summary="Load the newest model of the family without a restart (write scope)")
    async def reload_model(who: Principal = Depends(auth("write"))) -> dict[str, Any]:
        p = predictor_or_404(daemon)
        try:
            version = await asyncio.to_thread(p.reload)
        except LookupError as err:  # no model of the family in the registry; the loaded one stays
            raise HTTPException(404, detail=str(err)) from None
        except Exception as err:  # noqa: BLE001 - unreadable or inconsistent model files (onnxruntime's own errors too)
            kept = None if p.model is None else p.model.version
            raise HTTPException(409, detail=f"cannot load the newest model (still using {kept}): {err}") from None
        return {"loaded": version}

    return router
