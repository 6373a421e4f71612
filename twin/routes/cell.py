"""``/api/v1/cell``: what a calender setting means for the cell (issue #18, item 4).

``GET /api/v1/cell/discharge`` (a computation, no write: query parameters) runs PyBaMM's DFN (surrogates/cell.py) for a given calendered cathode;
``GET /api/v1/cell/proposals/{id}`` compares the cell of the current setting with that of a proposal, from the
model's own outputs at both (porosity, D_eff/D_0, thickness: ``raw_now`` / ``raw_new`` of the proposal).

A DFN solve costs 0.1–1.6 s of CPU (docs/performance.md), so it runs in a worker thread, one at a time; at most
``MAX_WAITING`` requests wait for it and any further one is answered 503 at once (no unbounded queue). The model
is built on the first request (PyBaMM is imported then); without PyBaMM installed (the ``[physics]`` extra) the
endpoints answer 503 and say so.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from surrogates.cell import CathodeState, CellInputError, CellModel
from twin.ports import ApiHost

MAX_WAITING = 4


class DischargeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    porosity: float = Field(..., ge=0.05, le=0.7, description="total (electrolyte-filled) porosity of the cathode")
    d_eff: float | None = Field(None, gt=0, lt=1, description="D_eff/D_0 of the pore network")
    porosity_macro: float | None = Field(None, gt=0, lt=1, description="macro-porosity (with tortuosity_factor)")
    tortuosity_factor: float | None = Field(None, ge=1, le=50, description="tortuosity factor of the macro pores")
    thickness_um: float = Field(..., ge=10, le=300, description="cathode coating thickness, um")
    loading_mg_cm2: float | None = Field(None, gt=0, description="areal loading (checked against the others)")
    c_rates: list[float] = Field([0.5, 2.0], min_length=1, max_length=4,
                                 description="discharge C-rates, each 0.05-10")

    @model_validator(mode="after")
    def _transport(self) -> DischargeRequest:
        if self.d_eff is None and (self.porosity_macro is None or self.tortuosity_factor is None):
            raise ValueError("give d_eff, or porosity_macro and tortuosity_factor")
        if any(not 0.05 <= c <= 10.0 for c in self.c_rates):
            raise ValueError("C-rates must lie in 0.05-10")
        return self

    def state(self) -> CathodeState:
        if self.d_eff is not None:
            return CathodeState(self.porosity, self.d_eff, self.thickness_um, self.loading_mg_cm2)
        assert self.porosity_macro is not None and self.tortuosity_factor is not None
        return CathodeState.from_tortuosity(self.porosity, self.porosity_macro, self.tortuosity_factor,
                                            self.thickness_um, self.loading_mg_cm2)


class _Runner:
    """One DFN evaluation at a time in a worker thread, a bounded number waiting."""

    def __init__(self) -> None:
        self.models: dict[tuple[float, ...], CellModel] = {}
        self.lock = asyncio.Lock()
        self.waiting = 0

    async def run(self, c_rates: tuple[float, ...], fn_name: str, *states: CathodeState) -> dict[str, Any]:
        if importlib.util.find_spec("pybamm") is None:
            raise HTTPException(503, detail="the cell model needs PyBaMM (install the [physics] extra)")
        if self.waiting >= MAX_WAITING:
            raise HTTPException(503, detail=f"{self.waiting} cell evaluations waiting; try again in a few seconds")
        self.waiting += 1
        try:
            async with self.lock:
                model = self.models.get(c_rates)
                if model is None:
                    model = self.models[c_rates] = CellModel(c_rates=c_rates)
                    while len(self.models) > 4:
                        self.models.pop(next(iter(self.models)))
                if fn_name == "evaluate":
                    out = (await asyncio.to_thread(model.evaluate, states[0])).as_json()
                else:
                    out = await asyncio.to_thread(model.compare, states[0], states[1])
                try:  # a solver that gave up part-way can leave NaN or inf: not JSON, and no answer
                    json.dumps(out, allow_nan=False)
                except ValueError:
                    raise HTTPException(422, detail="the cell model gave no finite answer for this cathode "
                                                    "(the solver failed part-way)") from None
                return out
        except CellInputError as err:
            raise HTTPException(422, detail=str(err)) from None
        except HTTPException:
            raise
        except Exception as err:  # noqa: BLE001 - PyBaMM's own errors for a cathode it cannot solve
            # (model or solver set-up failing for these inputs): the request's cathode, not the server
            raise HTTPException(422, detail=f"the cell model cannot solve this cathode: {type(err).__name__}: "
                                            f"{str(err)[:300]}") from None
        finally:
            self.waiting -= 1


def _state_from_outputs(out: dict[str, float], which: str) -> CathodeState:
    missing = [k for k in ("porosity", "d_eff", "thickness_after_um") if k not in out]
    if missing:
        raise HTTPException(409, detail=f"the proposal's model outputs lack {missing} at the {which} setting")
    return CathodeState(float(out["porosity"]), float(out["d_eff"]), float(out["thickness_after_um"]))


def make_router(daemon: ApiHost) -> APIRouter:
    router = APIRouter()
    runner = _Runner()

    @router.get("/api/v1/cell/discharge",
                 summary="Discharge curves and capacities of a calendered cathode (PyBaMM DFN, Chen2020 cell)",
                 description="Total porosity, transport (D_eff/D_0, or macro-porosity and tortuosity factor) and "
                             "thickness of the cathode; the active material per area follows from porosity and "
                             "thickness (ontology.definitions). 422: inconsistent or unphysical inputs; 503: "
                             "PyBaMM missing or too many evaluations waiting.")
    async def discharge(req: Annotated[DischargeRequest, Query()]) -> dict[str, Any]:
        return await runner.run(tuple(req.c_rates), "evaluate", req.state())

    @router.get("/api/v1/cell/proposals/{pid}",
                summary="The cell at the current setting and with a proposal: capacity per C-rate and the difference",
                description="From the surrogate's own outputs at both settings (the proposal's raw_now / raw_new: "
                            "porosity, D_eff/D_0, thickness). 404: unknown proposal or feedback not enabled.")
    async def proposal_cell(pid: str) -> dict[str, Any]:
        fb = daemon.feedback
        if fb is None:
            raise HTTPException(404, detail="feedback is not enabled on this twin")
        try:
            p = fb.get(pid)
        except KeyError:
            raise HTTPException(404, detail=f"no proposal {pid}") from None
        now, new = _state_from_outputs(p.raw_now, "current"), _state_from_outputs(p.raw_new, "proposed")
        out = await runner.run((0.5, 2.0), "compare", now, new)
        return {"proposal": pid, "model_version": p.model_version, "current": out["a"], "proposed": out["b"],
                "difference": out["difference_b_minus_a"]}

    return router
