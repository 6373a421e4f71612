"""The proposal lifecycle is an explicit state machine (twin/feedback/lifecycle.py): the allowed moves are a
table, every other move raises and leaves the proposal as it was."""

from __future__ import annotations

import json

import pytest

from twin.feedback import STATES, TRANSITIONS, Proposal, ProposalError, ProposalState, Setting

ALLOWED = {("proposed", "approved"), ("proposed", "rejected"), ("proposed", "expired"),
           ("approved", "applied"), ("approved", "failed"), ("applied", "evaluated")}


def proposal(state: str = "proposed") -> Proposal:
    return Proposal("p1", "pilot-1", 1, "v1", [Setting("gap", "calendering.gap_setpoint", 100.0, 104.0, "um")],
                    {}, {}, [], {}, {}, {}, {}, {}, state=ProposalState(state))


def test_the_table_is_the_documented_lifecycle() -> None:
    assert set(STATES) == {s.value for s in ProposalState} == {s.value for s in TRANSITIONS}
    assert {(a.value, b.value) for a, tos in TRANSITIONS.items() for b in tos} == ALLOWED


@pytest.mark.parametrize("src", STATES)
@pytest.mark.parametrize("dst", STATES)
def test_every_move_outside_the_table_raises_and_changes_nothing(src: str, dst: str) -> None:
    p = proposal(src)
    if (src, dst) in ALLOWED:
        p.move_to(ProposalState(dst))
        assert p.state == dst
    else:
        with pytest.raises(ProposalError, match=f"proposal p1 is {src}; it cannot become {dst}"):
            p.move_to(ProposalState(dst))
        assert p.state == src


def test_states_read_and_serialise_as_their_names() -> None:
    p = proposal("applied")
    assert p.state == "applied" and f"{p.state}" == "applied"
    body = json.loads(json.dumps(p.record_json()))
    assert body["state"] == "applied"
    assert Proposal.from_record(body).state is ProposalState.APPLIED
    with pytest.raises(ValueError, match="unknown state 'done'"):
        Proposal.from_record({**body, "state": "done"})
