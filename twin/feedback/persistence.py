"""Persistence of the feedback service in the store's append-only audit trail.

Records (kind, ref):

* ``proposal.<state>``, the proposal id: each lifecycle transition, with the proposal's full body
  (:meth:`Proposal.record_json`: model version, input snapshot, predictions);
* ``targets.set``, ``recipe:<recipe>``: targets set through the API;
* ``feedback.state``, ``feedback:state``: what a restart restores (targets, gains, rate-limit clocks and
  the ids of the newest proposals, whose bodies are their own newest ``proposal.*`` records).
"""

from __future__ import annotations

import asyncio
from typing import Any

from twin.feedback.lifecycle import Proposal
from twin.ports import AuditStore

STATE_KIND = "feedback.state"
STATE_REF = "feedback:state"


class ProposalStore:
    """The proposal and audit store of the feedback service, over the twin's store. The ``*_sync`` methods
    block (start-up, before the loop serves); the others run the store call in a worker thread."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store

    # -- writes ------------------------------------------------------------------------------------
    async def append_transition(self, p: Proposal, kind: str, actor: str | None = None) -> None:
        await asyncio.to_thread(self.store.append_audit, f"proposal.{kind}", p.id, p.record_json(),
                                line_id=p.line_id, actor=actor, ts_ns=p.updated_ns)

    def append_transition_sync(self, p: Proposal, kind: str) -> None:
        self.store.append_audit(f"proposal.{kind}", p.id, p.record_json(), line_id=p.line_id, ts_ns=p.updated_ns)

    async def append_state(self, body: dict[str, Any]) -> None:
        await asyncio.to_thread(self.store.append_audit, STATE_KIND, STATE_REF, body)

    def append_state_sync(self, body: dict[str, Any]) -> None:
        self.store.append_audit(STATE_KIND, STATE_REF, body)

    async def append_targets(self, recipe: str, body: dict[str, Any], actor: str) -> None:
        await asyncio.to_thread(self.store.append_audit, "targets.set", f"recipe:{recipe}", body, actor=actor)

    # -- reads -------------------------------------------------------------------------------------
    def newest_state(self) -> dict[str, Any] | None:
        """The newest ``feedback.state`` body (None: none or not a mapping). Raises what the store raises."""
        recs = self.store.audit(STATE_REF, None, 1)
        if not recs or not isinstance(recs[0].get("body"), dict):
            return None
        return dict(recs[0]["body"])

    def newest_proposal(self, pid: str) -> Proposal | None:
        """A proposal from its newest ``proposal.*`` record (None: no such record). Raises KeyError/TypeError/
        ValueError for a body that is not a proposal, and what the store raises."""
        r = self.store.audit(pid, None, 1)
        if not r or not str(r[0].get("kind", "")).startswith("proposal."):
            return None
        return Proposal.from_record(r[0]["body"])

    async def trail(self, pid: str, limit: int = 100) -> list[dict[str, Any]]:
        """The audit records of one proposal, newest first."""
        return await asyncio.to_thread(self.store.audit, pid, None, limit)
