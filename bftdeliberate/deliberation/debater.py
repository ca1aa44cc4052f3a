"""The agent's brain, outside the state machine: what a debater sees and what it answers.

A debater never touches the ledger. The agent loop (``bftdeliberate/agents``) or the simulator
hands it a :class:`TaskView` — the ledger's state as this agent may see it: the question, the
transcript of *closed* rounds only (the open round is hidden, so round 0 is blind), the revealed
proposals and this agent's remaining token budget — and turns its answer into a signed
operation. Whatever a debater returns is validated by the same operation models as any other
input; the ledger trusts none of it.

``Debater`` is asynchronous because real debaters (``agents.llm.OpenAICompatibleDebater``)
call a model over the network. :class:`ScriptedDebater` (``deliberation.scripts``) is pure and
deterministic, and also offers synchronous ``decide_*`` methods for the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import Field

from bftdeliberate.deliberation.ops import (
    MAX_ARGUMENT_LENGTH,
    MAX_NOTES_LENGTH,
    MAX_POSITION_LENGTH,
    Abstain,
    CastVote,
    Confidence,
    Contribute,
    EvidenceList,
    ProposalDraft,
    _Op,
)
from bftdeliberate.deliberation.proposal import Tag


@dataclass(frozen=True, slots=True)
class ContributionView:
    """One revealed contribution (``position`` None: the agent abstained)."""

    agent: str
    round: int
    position: str | None
    argument: str = ""
    evidence: tuple[str, ...] = ()
    confidence: int = 0
    tokens: int = 0
    proposal_id: str | None = None
    stop: str | None = None


@dataclass(frozen=True, slots=True)
class ProposalView:
    """A revealed proposal with its votes so far."""

    proposal_id: str
    author: str
    round: int
    plan: tuple[dict[str, Any], ...]
    risks: tuple[str, ...] = ()
    stop_conditions: tuple[str, ...] = ()
    approvals: tuple[str, ...] = ()
    rejections: tuple[str, ...] = ()
    status: Literal["open", "approved", "rejected"] = "open"


@dataclass(frozen=True, slots=True)
class TaskView:
    """The ledger as one agent may see it when asked for a contribution or a vote."""

    task_id: str
    agent: str
    question: str
    context: str
    evidence: tuple[str, ...]
    state: str
    #: The open round (None when the debate is over).
    round: int | None
    max_rounds: int
    #: Contributions of closed rounds, by round then agent.
    transcript: tuple[ContributionView, ...] = ()
    proposals: tuple[ProposalView, ...] = ()
    #: Tokens this agent may still declare: min(its own remaining, the task's remaining).
    tokens_remaining: int = 0
    #: Proposals this agent already voted on.
    voted: frozenset[str] = field(default_factory=frozenset)

    def last_position(self, agent: str) -> str | None:
        positions = [c.position for c in self.transcript if c.agent == agent and c.position]
        return positions[-1] if positions else None


class ContributionDraft(_Op):
    """What a model must answer for a contribution: the structured-output schema given to
    LLMs. The agent adds task, round and the token usage it measured."""

    position: str = Field(min_length=1, max_length=MAX_POSITION_LENGTH,
                          pattern=r"^[^\x00-\x1f\x7f]+$",
                          description="a short label of the position taken")
    argument: str = Field("", max_length=MAX_ARGUMENT_LENGTH)
    evidence: EvidenceList = ()
    confidence: Confidence = 50
    proposal: ProposalDraft | None = None
    stop: Tag | None = None

    def to_op(self, view: TaskView, tokens: int) -> Contribute:
        assert view.round is not None
        return Contribute(task_id=view.task_id, round=view.round, tokens=tokens,
                          **self.model_dump(exclude_unset=True))


class VoteDraft(_Op):
    """What a model must answer for a vote."""

    decision: Literal["approve", "reject"]
    notes: str = Field("", max_length=MAX_NOTES_LENGTH)

    def to_op(self, view: TaskView, proposal: ProposalView, tokens: int = 0) -> CastVote:
        return CastVote(task_id=view.task_id, proposal_id=proposal.proposal_id,
                        decision=self.decision, notes=self.notes, tokens=tokens)


class Debater(Protocol):
    """An agent's brain. ``contribute`` answers a Contribute or an Abstain for the open round
    of ``view``; ``vote`` answers a CastVote or None (no vote). Must not raise for model
    failures: an agent whose debater fails abstains, so the round still closes."""

    async def contribute(self, view: TaskView) -> Contribute | Abstain: ...

    async def vote(self, view: TaskView, proposal: ProposalView) -> CastVote | None: ...

    # Optional: ``async def audit(view, proposal) -> CastVote | None`` -- the second look an
    # ``audit`` member gives an approved proposal flagged for groupthink. Without it the agent
    # loop asks ``vote`` and marks the answer as an audit.
