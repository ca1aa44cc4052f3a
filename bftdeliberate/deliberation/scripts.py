"""Scripted debaters: deterministic agents for tests, the simulator and the demo.

A :class:`ScriptedDebater` answers from its :class:`Script` (a position, evidence, whether it
proposes a plan) and a named behaviour. Honest behaviours:

* ``honest`` — holds its position; proposes ``plan`` in round 0 if it has one; approves a
  proposal whose author's last position equals its own, rejects otherwise.
* ``conformist`` — an honest but sycophantic model: from round 1 on it adopts the most common
  position of the previous round without citing anything new (what the groupthink signals
  are for), and approves what the majority approves.
* ``garbage`` — a broken model: every answer is invalid, so the agent abstains (the round
  still closes).

Byzantine behaviours (DESIGN.md section 8, deliberation side):

* ``vote-flip`` — votes, then casts the opposite vote on the same proposal (a second vote).
* ``impersonate`` — also sends a contribution and a vote under another agent's name (the
  request carries the victim's client id but this agent's signature).
* ``role-escalation`` — sends operations its genesis roles do not allow, and operations
  carrying role-granting fields.
* ``budget-burner`` — declares more tokens than remain, then exactly all that remain.
* ``evidence-flood`` — cites far more evidence references than a contribution may carry.
* ``colluding-groupthink`` — all colluders push one position with no evidence every round and
  approve each other's plan.
* ``silent`` — never contributes or votes. The simulator sends nothing at all; through the
  async Debater protocol (which must answer) it abstains — run a peer with no debater for a
  member that says nothing.

Besides its answer a debater may return *raw actions* (``raw_actions``): ``(client_id,
operation_bytes)`` pairs the driver signs with the agent's own key and sends as they are —
how Byzantine scripts produce forged, duplicate and unauthorised requests that the operation
models would refuse to build.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bftdeliberate.deliberation.debater import ProposalView, TaskView
from bftdeliberate.deliberation.ops import (
    MAX_EVIDENCE_REFS,
    Abstain,
    CastVote,
    Contribute,
    ProposalDraft,
    encode_op,
)
from bftdeliberate.wire import cbor

HONEST_BEHAVIOURS = ("honest", "conformist", "garbage")
BYZANTINE_BEHAVIOURS = ("vote-flip", "impersonate", "role-escalation", "budget-burner",
                        "evidence-flood", "colluding-groupthink", "silent")
BEHAVIOURS = HONEST_BEHAVIOURS + BYZANTINE_BEHAVIOURS
#: Tokens a scripted answer declares unless its script says otherwise.
DEFAULT_SCRIPTED_TOKENS = 100
#: References an ``evidence-flood`` contribution cites (far over the limit).
FLOOD_EVIDENCE_REFS = 8 * MAX_EVIDENCE_REFS
#: The position colluders push.
COLLUSION_POSITION = "approve as is"

RawAction = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class Script:
    """What one scripted agent believes and does."""

    behaviour: str = "honest"
    position: str = "approve the plan"
    argument: str = ""
    evidence: tuple[str, ...] = ()
    confidence: int = 70
    tokens: int = DEFAULT_SCRIPTED_TOKENS
    #: The plan this agent proposes in round 0 (None: it proposes nothing).
    plan: tuple[dict[str, Any], ...] | None = None
    risks: tuple[str, ...] = ()
    stop_conditions: tuple[str, ...] = ()
    #: Raise this stop condition in every contribution.
    stop: str | None = None
    #: Positions for later rounds (round r uses positions[r-1]; the last one repeats).
    later_positions: tuple[str, ...] = ()
    #: The victim of ``impersonate``.
    victim: str | None = None

    def __post_init__(self) -> None:
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown debater behaviour {self.behaviour!r} (known: "
                             f"{', '.join(BEHAVIOURS)})")


def _majority(view: TaskView, round_: int) -> str | None:
    positions = Counter(c.position for c in view.transcript
                        if c.round == round_ and c.position is not None)
    if not positions:
        return None
    # Most common; ties broken by the text so every replica of the script agrees.
    return min(positions.items(), key=lambda item: (-item[1], item[0]))[0]


@dataclass(slots=True)
class ScriptedDebater:
    """A deterministic debater following one :class:`Script`."""

    name: str
    script: Script = field(default_factory=Script)
    #: Raw actions already produced, so each Byzantine trick is played once per round/proposal.
    _played: set[tuple[Any, ...]] = field(default_factory=set)

    @property
    def behaviour(self) -> str:
        return self.script.behaviour

    # -- the Debater protocol ----------------------------------------------------------------

    async def contribute(self, view: TaskView) -> Contribute | Abstain:
        answer = self.decide_contribution(view)
        if answer is None:
            return Abstain(task_id=view.task_id, round=view.round or 0, reason="silent")
        return answer

    async def vote(self, view: TaskView, proposal: ProposalView) -> CastVote | None:
        return self.decide_vote(view, proposal)

    # -- synchronous decisions (the simulator calls these) -----------------------------------

    def decide_contribution(self, view: TaskView) -> Contribute | Abstain | None:
        """This round's answer; None: say nothing at all (``silent``)."""
        script = self.script
        assert view.round is not None
        if script.behaviour == "silent":
            return None
        if script.behaviour == "garbage":
            return Abstain(task_id=view.task_id, round=view.round,
                           reason="invalid output: not JSON", tokens=min(script.tokens,
                                                                         view.tokens_remaining))
        tokens = min(script.tokens, view.tokens_remaining)
        if script.behaviour == "budget-burner":
            tokens = view.tokens_remaining  # raw actions first try to declare more
        position, evidence = self._position(view), script.evidence
        if script.behaviour == "colluding-groupthink":
            position, evidence = COLLUSION_POSITION, ()
        proposal = None
        if script.plan is not None and view.round == 0:
            proposal = ProposalDraft(plan=script.plan, risks=script.risks,
                                     stop_conditions=script.stop_conditions)
        return Contribute(task_id=view.task_id, round=view.round, position=position,
                          argument=script.argument or f"{self.name} holds: {position}",
                          evidence=evidence, confidence=script.confidence, tokens=tokens,
                          proposal=proposal, stop=script.stop)

    def _position(self, view: TaskView) -> str:
        script = self.script
        assert view.round is not None
        if script.behaviour == "conformist" and view.round >= 1:
            return _majority(view, view.round - 1) or script.position
        if view.round >= 1 and script.later_positions:
            return script.later_positions[min(view.round, len(script.later_positions)) - 1]
        return script.position

    def decide_vote(self, view: TaskView, proposal: ProposalView) -> CastVote | None:
        script = self.script
        if script.behaviour in ("silent", "garbage"):
            return None
        mine = view.last_position(self.name) or script.position
        theirs = view.last_position(proposal.author)
        if script.behaviour == "colluding-groupthink":
            approve = theirs == COLLUSION_POSITION
        elif script.behaviour == "conformist":
            approve = theirs == _majority(view, max(c.round for c in view.transcript)) \
                if view.transcript else True
        else:
            approve = theirs is not None and theirs.casefold() == mine.casefold()
        decision = "approve" if approve else "reject"
        return CastVote(task_id=view.task_id, proposal_id=proposal.proposal_id,
                        decision=decision, notes=f"{self.name}: position {mine!r}")

    def raw_actions(self, view: TaskView) -> list[RawAction]:
        """Extra requests a Byzantine script sends this turn, as (client id, operation)."""
        script, actions = self.script, []
        key = (view.task_id, view.round, len(view.proposals))
        if key in self._played or script.behaviour not in BYZANTINE_BEHAVIOURS:
            return []
        self._played.add(key)
        task_id, round_ = view.task_id, view.round if view.round is not None else 0
        if script.behaviour == "vote-flip":
            for proposal in view.proposals:
                for decision in ("approve", "reject"):
                    actions.append((self.name, encode_op(CastVote(
                        task_id=task_id, proposal_id=proposal.proposal_id, decision=decision,
                        notes="flip"))))
        elif script.behaviour == "impersonate" and script.victim is not None:
            actions.append((script.victim, encode_op(Contribute(
                task_id=task_id, round=round_, position="forged position",
                argument=f"forged by {self.name}"))))
            for proposal in view.proposals:
                actions.append((script.victim, encode_op(CastVote(
                    task_id=task_id, proposal_id=proposal.proposal_id, decision="reject"))))
            # The same lie in the operation body: an "agent" field the ledger refuses.
            actions.append((self.name, cbor.encode({
                "op": "contribute", "task_id": task_id, "round": round_,
                "position": "forged", "agent": script.victim})))
        elif script.behaviour == "role-escalation":
            actions.append((self.name, cbor.encode({
                "op": "open_task", "question": "grant me every role", "roles": ["human"]})))
            actions.append((self.name, encode_op(CastVote(
                task_id=task_id, proposal_id=f"{task_id}.x.r0", decision="approve"))))
            for proposal in view.proposals:
                actions.append((self.name, encode_op(CastVote(
                    task_id=task_id, proposal_id=proposal.proposal_id, decision="approve"))))
            actions.append((self.name, cbor.encode({
                "op": "resolve", "task_id": task_id, "decision": "approve"})))
        elif script.behaviour == "budget-burner" and view.round is not None:
            actions.append((self.name, encode_op(Contribute(
                task_id=task_id, round=round_, position="burn",
                tokens=view.tokens_remaining + 1_000_000))))
        elif script.behaviour == "evidence-flood" and view.round is not None:
            actions.append((self.name, cbor.encode({
                "op": "contribute", "task_id": task_id, "round": round_, "position": "flood",
                "evidence": [f"ref:{i}" for i in range(FLOOD_EVIDENCE_REFS)]})))
        return actions
