"""Feedback service: corrected calender settings to hit target structure metrics, approval-gated.

What it does every ``interval_s`` (docs/feedback.md):

1. **Line reality.** The online structure parameters (porosity from thickness and loading, thickness
   after the calender) are averaged over material that passed the calender *after* the line settled
   from the last setpoint change: a reading at the gauge is attributed to the material that was in the
   nip one transport lag (gauge distance / web speed) earlier.
2. **Model correction (digital-real exchange, seed 004 Fig. 1).** The surrogate ensemble is anchored
   at the measured value (the bias is the measured minus predicted value at the current settings) and
   its local sensitivity is scaled by a gain estimated from the line's response to earlier changes
   (``gain``: realised change / predicted change, a log-space exponentially weighted estimate, bounded).
   Corrected prediction for candidate settings u: ``y(u) = y_measured + gain * (f(u) - f(u_now))``,
   spread ``gain * sd(u)``.
3. **Optimizer.** A vectorised grid over the manipulable setpoints (one ONNX batch), within the machine
   limits and the maximum step per proposal, then a finer grid around the best point. Cost: weighted
   squared deviation from target in tolerances + a penalty on the predicted spread + a cost of change.
   Candidates the model flags out of domain are refused. A wider grid up to the machine limits tells
   whether the step limit or a machine limit clipped the proposal.
4. **Decision rules.** No proposal on missing, stale or flagged inputs, out-of-domain current state,
   while the line settles, within the dead band, or without a significant predicted improvement; a
   proposal's predicted band must fit the tolerance unless it is a clipped step towards the target
   (then it says a further step will follow). Every decision carries its reasons in words.
5. **Lifecycle.** proposed -> approved / rejected / expired -> applied (verified OPC-UA write) or
   failed -> evaluated (realised vs predicted after settling): an enum of states and a table of allowed
   moves (:mod:`twin.feedback.lifecycle`). Approval through the API with a write token; auto-apply only
   for manipulables configured so, bounded by limits and a rate limit. Every transition is appended to
   the store's audit trail with the model version, input snapshot and predictions.
6. **Units and persistence.** Targets and tolerances are converted by pint to the output's canonical unit
   (porosity: a fraction) and refused outside the physical range, the measuring gauge's range and the model
   card's output ranges; manipulable limits are converted to the setpoint tag's unit and checked against
   its range. Targets, gains and the newest proposals are restored from the audit trail at start-up
   (``feedback.state`` records); proposals that expired meanwhile become ``expired``.


The package, one concern per module:

- :mod:`twin.feedback.config`: ``[feedback]`` configuration (pydantic), output units and physical ranges;
- :mod:`twin.feedback.optimizer`: the vectorised search with the line correction;
- :mod:`twin.feedback.rules`: the decision rules, one function each, in the order a round applies them;
- :mod:`twin.feedback.lifecycle`: proposal states and allowed transitions, proposals and decisions;
- :mod:`twin.feedback.persistence`: the proposal / audit store over the twin's store;
- :mod:`twin.feedback.writers`: which connector writes a setpoint, in which unit;
- :mod:`twin.feedback.history`: recent values of the watched tags;
- :mod:`twin.feedback.service`: the service (decision rounds on the daemon's scheduler, approval, targets);
- :mod:`twin.feedback.routes`: the HTTP routes (an ``APIRouter``).
"""

from twin.feedback.config import (
                                  OUTPUTS,
                                  FeedbackConfig,
                                  Manipulable,
                                  ManipulableSpec,
                                  MeasuredSpec,
                                  OutputPhysics,
                                  TargetSpec,
                                  canonical_target,
                                  unit_suffix,
)
from twin.feedback.history import History
from twin.feedback.lifecycle import STATES, TRANSITIONS, Decision, Proposal, ProposalError, ProposalState, Setting
from twin.feedback.optimizer import Candidates, Correction, Optimizer, OptimResult
from twin.feedback.persistence import ProposalStore
from twin.feedback.routes import CommentBody, TargetsBody, make_router
from twin.feedback.service import FeedbackService

__all__ = ["OUTPUTS", "STATES", "TRANSITIONS", "Candidates", "CommentBody", "Correction", "Decision",
           "FeedbackConfig", "FeedbackService", "History", "Manipulable", "ManipulableSpec", "MeasuredSpec",
           "OptimResult", "Optimizer", "OutputPhysics", "Proposal", "ProposalError", "ProposalState",
           "ProposalStore", "Setting", "TargetSpec", "TargetsBody", "canonical_target",
           "make_router", "unit_suffix"]
