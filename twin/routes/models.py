"""Surrogate models: ``/api/v1/models`` (the registry, with cards) and ``/api/v1/models/reload``
(write scope: load the newest model of the family without a restart; audited; refused while the lab service
manages the active model, whose promotions are approval-gated)."""

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
        if getattr(daemon, "lab", None) is not None:
            # the lab service owns the active model: a change goes through its approval-gated promotion
            raise HTTPException(409, detail="the lab service manages the active model ([lab] enabled): request a "
                                            "promotion (POST /api/v1/lab/requests, kind \"promote\") and approve it")
        previous = None if p.model is None else p.model.version
        try:
            version = await asyncio.to_thread(p.reload)
        except LookupError as err:  # no model of the family in the registry; the loaded one stays
            raise HTTPException(404, detail=str(err)) from None
        except Exception as err:  # noqa: BLE001 - unreadable or inconsistent model files (onnxruntime's own errors too)
            kept = None if p.model is None else p.model.version
            raise HTTPException(409, detail=f"cannot load the newest model (still using {kept}): {err}") from None
        card = getattr(p.model, "card", {}) or {}
        # the model that computes every later proposal changed: audited like a promotion (who, from, to, metrics)
        await asyncio.to_thread(daemon.store.append_audit, "model.reload", str(version),
                                {"previous": previous, "loaded": version, "family": p.config.model,
                                 "test_metrics": card.get("metrics", {}).get("test")}, actor=who.name)
        return {"loaded": version}

    return router
