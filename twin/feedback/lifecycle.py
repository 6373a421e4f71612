"""The proposal lifecycle as an explicit state machine, and the records a decision round produces.

::

    proposed --approve--> approved --writes ok--> applied --settled, measured--> evaluated
        |                     '--a write fails--> failed
        |--reject--> rejected
        '--time-to-live--> expired

:class:`ProposalState` names the states, :data:`TRANSITIONS` the allowed moves; :meth:`Proposal.move_to`
is the one way a proposal changes state and raises :class:`ProposalError` (HTTP 409) on any other move.
A restart moves an open proposal that outlived its time-to-live to ``expired`` and one that was being
applied to ``failed`` (writes are never retried); both are moves of the table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from core.samples import ns_to_iso


class ProposalState(enum.StrEnum):
    """A proposal's state; a ``str`` (``ProposalState.APPLIED == "applied"``), as the API and audit show it."""

    PROPOSED = "proposed"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    APPLIED = "applied"
    FAILED = "failed"
    EVALUATED = "evaluated"


#: state -> the states it may move to (terminal states: none)
TRANSITIONS: dict[ProposalState, frozenset[ProposalState]] = {
    ProposalState.PROPOSED: frozenset({ProposalState.APPROVED, ProposalState.REJECTED, ProposalState.EXPIRED}),
    ProposalState.APPROVED: frozenset({ProposalState.APPLIED, ProposalState.FAILED}),
    ProposalState.APPLIED: frozenset({ProposalState.EVALUATED}),
    ProposalState.REJECTED: frozenset(),
    ProposalState.EXPIRED: frozenset(),
    ProposalState.FAILED: frozenset(),
    ProposalState.EVALUATED: frozenset(),
}

STATES = tuple(s.value for s in ProposalState)  # in lifecycle order (the API's state filter)


class ProposalError(RuntimeError):
    """A transition the proposal's state does not allow (HTTP 409)."""


def can_move(state: str, to: ProposalState) -> bool:
    return to in TRANSITIONS[ProposalState(state)]


@dataclass
class Setting:
    parameter: str
    tag: str
    current: float
    proposed: float
    unit: str
    clipped: bool = False
    limit_note: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"parameter": self.parameter, "tag": self.tag, "current": self.current, "proposed": self.proposed,
                "unit": self.unit, "clipped": self.clipped, "limit_note": self.limit_note}

    @property
    def changes(self) -> bool:
        return abs(self.proposed - self.current) > 1e-9


@dataclass
class Proposal:
    id: str
    line_id: str
    created_ns: int
    model_version: str
    settings: list[Setting]
    predicted: dict[str, dict[str, Any]]  # output -> mean, std, target, tolerance, unit
    predicted_now: dict[str, dict[str, Any]]
    reasons: list[str]
    inputs: dict[str, Any]
    gain: dict[str, float]
    raw_now: dict[str, float]  # uncorrected model outputs at the current settings
    raw_new: dict[str, float]  # uncorrected model outputs at the proposed settings
    measured_before: dict[str, float]
    state: ProposalState = ProposalState.PROPOSED
    updated_ns: int = 0
    approved_by: str | None = None
    error: str | None = None
    applied_ns: int | None = None
    realised: dict[str, Any] | None = None
    writes: list[dict[str, Any]] = field(default_factory=list)
    auto: bool = False

    def move_to(self, to: ProposalState) -> None:
        """The one way a proposal changes state. Raises ProposalError for a move :data:`TRANSITIONS` does not
        allow (the caller has checked the business rule and says it in its own words first)."""
        if not can_move(self.state, to):
            raise ProposalError(f"proposal {self.id} is {self.state}; it cannot become {to}")
        self.state = to

    def is_open(self, line: str | None = None) -> bool:
        """Proposed (waiting for an answer), on ``line`` when given."""
        return self.state == ProposalState.PROPOSED and (line is None or self.line_id == line)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "line_id": self.line_id, "state": str(self.state),
                "created": ns_to_iso(self.created_ns),
                "updated": ns_to_iso(self.updated_ns or self.created_ns), "model_version": self.model_version,
                "settings": [s.as_json() for s in self.settings], "predicted": self.predicted,
                "predicted_now": self.predicted_now, "reasons": self.reasons, "approved_by": self.approved_by,
                "error": self.error, "realised": self.realised, "inputs": self.inputs, "gain": self.gain,
                "measured_before": self.measured_before, "writes": self.writes, "auto": self.auto,
                "applied": ns_to_iso(self.applied_ns) if self.applied_ns else None}

    def record_json(self) -> dict[str, Any]:
        """The audit body: the API's view plus what a restart needs to restore the proposal exactly."""
        return {**self.as_json(), "created_ns": self.created_ns, "updated_ns": self.updated_ns,
                "applied_ns": self.applied_ns, "raw_now": self.raw_now, "raw_new": self.raw_new}

    @classmethod
    def from_record(cls, b: dict[str, Any]) -> Proposal:
        """A proposal from its newest audit body (``record_json``). Raises KeyError/TypeError/ValueError."""
        settings = [Setting(s["parameter"], s["tag"], float(s["current"]), float(s["proposed"]), s["unit"],
                            bool(s.get("clipped")), s.get("limit_note")) for s in b["settings"]]
        state = str(b["state"])
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        return cls(id=str(b["id"]), line_id=str(b["line_id"]), created_ns=int(b["created_ns"]),
                   model_version=str(b["model_version"]), settings=settings, predicted=dict(b["predicted"]),
                   predicted_now=dict(b["predicted_now"]), reasons=list(b["reasons"]), inputs=dict(b["inputs"]),
                   gain=dict(b["gain"]), raw_now=dict(b["raw_now"]), raw_new=dict(b["raw_new"]),
                   measured_before=dict(b["measured_before"]), state=ProposalState(state),
                   updated_ns=int(b.get("updated_ns") or 0),
                   approved_by=b.get("approved_by"), error=b.get("error"),
                   applied_ns=int(b["applied_ns"]) if b.get("applied_ns") is not None else None,
                   realised=b.get("realised"), writes=list(b.get("writes") or []), auto=bool(b.get("auto")))


@dataclass
class Decision:
    """The outcome of one decision round: a proposal, or the reasons there is none."""

    ts_ns: int
    line_id: str
    proposal_id: str | None
    reasons: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"ts": ns_to_iso(self.ts_ns), "line_id": self.line_id, "proposal_id": self.proposal_id,
                "reasons": self.reasons}
