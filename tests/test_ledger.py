"""The deliberation ledger's rules (DESIGN.md section 5), one test per rule.

Every test drives a :class:`Ledger` the way the PBFT core does: operation bytes applied in
order with an increasing sequence number, an agreed timestamp and the verified signer as the
client. ``Debate`` keeps the sequence and the clock so a test reads like the rule it checks.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from bftdeliberate.commit.book import COMMIT_REFUSALS
from bftdeliberate.commit.model import CommitResult, StepResult
from bftdeliberate.committee import Committee, make_committee
from bftdeliberate.deliberation import groupthink
from bftdeliberate.deliberation.groupthink import signals_at_close
from bftdeliberate.deliberation.ledger import MAX_OPEN_TASKS, MAX_REJECTION_LOG, Ledger
from bftdeliberate.deliberation.ops import (
    MAX_ARGUMENT_LENGTH,
    MAX_EVIDENCE_REF_LENGTH,
    MAX_EVIDENCE_REFS,
    REJECTION_REASONS,
    Abstain,
    CastVote,
    Contribute,
    OpenTask,
    ProposalDraft,
    Resolve,
    Status,
    Tick,
    encode_op,
)
from bftdeliberate.deliberation.proposal import Proposal, parse_proposal
from bftdeliberate.deliberation.scripts import Script, ScriptedDebater
from bftdeliberate.pbft.app import ExecutionContext
from bftdeliberate.wire import cbor
from bftdeliberate.wire.limits import MAX_OPERATION_SIZE

START_MS = 1_000_000
PLAN = ({"step": "read", "target": "file:src/foo.ts"},
        {"step": "patch", "target": "file:src/foo.ts", "patch_id": "patch-abc"},
        {"step": "test", "cmd": "npm test", "timeout_ms": 600000})


@functools.cache
def committee(n: int = 4) -> Committee:
    """Members agent-0..agent-(n-1), every one with every role; f = (n-1)//3."""
    return make_committee(n, clients=1, rng=random.Random(n))[0]


def with_roles(base: Committee, roles: dict[str, tuple[str, ...]]) -> Committee:
    """``base`` with the named members' genesis roles replaced (the others keep theirs)."""
    members = tuple(m.model_copy(update={"roles": roles[m.name]}) if m.name in roles else m
                    for m in base.members)
    return base.model_copy(update={"members": members})


def renamed(base: Committee, names: dict[str, str]) -> Committee:
    members = tuple(m.model_copy(update={"name": names.get(m.name, m.name)})
                    for m in base.members)
    return base.model_copy(update={"members": members})


def draft(plan: tuple[dict[str, Any], ...] = PLAN, **fields: Any) -> ProposalDraft:
    return ProposalDraft(plan=plan, **fields)


class Debate:
    """A ledger fed ordered operations: sequence numbers increase, ``now`` is the agreed
    batch timestamp of the next operation (move it with ``later`` or ``at=``)."""

    def __init__(self, members: Committee | None = None, now: int = START_MS) -> None:
        self.committee = members if members is not None else committee(4)
        self.ledger = Ledger(self.committee)
        self.seq = 0
        self.now = now
        self.log: list[tuple[str, bytes, int]] = []
        self.results: list[bytes] = []

    @property
    def agents(self) -> list[str]:
        return [m.name for m in self.committee.members]

    def later(self, ms: int) -> None:
        self.now += ms

    def send(self, client: str, op: BaseModel | dict[str, Any] | bytes,
             *, at: int | None = None, view: int = 0) -> dict[str, Any]:
        if at is not None:
            self.now = at
        if isinstance(op, BaseModel):
            data = encode_op(op)
        elif isinstance(op, dict):
            data = cbor.encode(op)
        else:
            data = op
        self.seq += 1
        self.log.append((client, data, self.now))
        ctx = ExecutionContext(seq=self.seq, view=view, timestamp_ms=self.now, client=client,
                               request_timestamp=self.seq, index=0)
        self.results.append(self.ledger.apply(data, ctx))
        result = cbor.decode(self.results[-1])
        assert type(result) is dict and type(result["ok"]) is bool
        if not result["ok"]:
            assert result["error"] in REJECTION_REASONS
            assert set(result) == {"ok", "error", "detail"}
        return result

    def ok(self, client: str, op: BaseModel | dict[str, Any], **kw: Any) -> dict[str, Any]:
        result = self.send(client, op, **kw)
        assert result["ok"], result
        return result

    def refused(self, client: str, op: BaseModel | dict[str, Any] | bytes, reason: str,
                **kw: Any) -> str:
        result = self.send(client, op, **kw)
        assert not result["ok"] and result["error"] == reason, result
        return result["detail"]

    # -- the operations, with defaults that keep tests short ------------------------------

    def open(self, opener: str = "agent-0", **fields: Any) -> str:
        fields.setdefault("question", "roll back release 42?")
        return self.ok(opener, OpenTask(**fields))["task_id"]

    def contribute(self, agent: str, task: str, position: str = "roll back",
                   round_: int | None = None, **fields: Any) -> dict[str, Any]:
        number = self.round(task) if round_ is None else round_
        return self.ok(agent, Contribute(task_id=task, round=number, position=position,
                                         **fields))

    def abstain(self, agent: str, task: str, **fields: Any) -> dict[str, Any]:
        return self.ok(agent, Abstain(task_id=task, round=self.round(task), **fields))

    def vote(self, agent: str, task: str, proposal: str, decision: str = "approve",
             notes: str = "") -> dict[str, Any]:
        return self.ok(agent, CastVote(task_id=task, proposal_id=proposal, decision=decision,
                                       notes=notes))

    def tick(self, at: int | None = None) -> dict[str, Any]:
        return self.ok("agent-0", Tick(), at=at)

    def round_everyone(self, task: str, positions: dict[str, str] | str = "roll back",
                       **fields: Any) -> None:
        """Every member contributes to the open round (the round then closes)."""
        for agent in self.agents:
            position = positions if isinstance(positions, str) else positions[agent]
            self.contribute(agent, task, position, **fields)

    def changing_round(self, task: str) -> None:
        """A round in which every member takes a new position (so the debate goes on)."""
        number = self.round(task)
        self.round_everyone(task, {a: f"{a} view {number}" for a in self.agents},
                            evidence=(f"ref:{number}",))

    def propose_round0(self, task: str, author: str = "agent-0", **fields: Any) -> str:
        """Round 0 where ``author`` proposes PLAN and the others hold distinct views."""
        proposal = self.contribute(author, task, "roll back", proposal=draft(), **fields)
        for agent in self.agents:
            if agent != author:
                self.contribute(agent, task, f"{agent} first view", evidence=(f"ref:{agent}",))
        assert self.round(task) == 1
        return proposal["proposal_id"]

    # -- reads ------------------------------------------------------------------------------

    def status(self, task: str, **kw: Any) -> dict[str, Any]:
        return self.ledger.task_status(task, **kw)

    def round(self, task: str) -> int:
        number = self.status(task)["round"]
        assert number is not None, "the debate is over"
        return number

    def state(self, task: str) -> str:
        return self.status(task)["state"]


# -- open_task -------------------------------------------------------------------------------


def test_open_task_records_the_question_and_its_exits():
    debate = Debate()
    task = debate.open(question="roll back?", context="release 42 broke login",
                       evidence=("log:deploy-42", "ticket:123"), max_rounds=4,
                       round_ms=5_000, vote_ms=7_000, deadline_ms=60_000, token_budget=900,
                       agent_token_budget=300, judge="agent-3")
    status = debate.status(task)
    assert status["question"] == "roll back?"
    assert status["context"] == "release 42 broke login"
    assert status["evidence"] == ["log:deploy-42", "ticket:123"]
    assert status["opener"] == "agent-0"
    assert (status["state"], status["round"], status["decision"]) == ("debating", 0, None)
    assert status["max_rounds"] == 4
    assert status["deadline_at_ms"] == START_MS + 60_000
    assert status["tokens"] == {"used": 0, "budget": 900, "agent_budget": 300, "by_agent": {}}
    assert status["threshold"] == 3  # 2f+1 with n = 4
    assert debate.ledger.next_deadline_ms() == START_MS + 5_000
    assert debate.ledger.task_ids == [task]
    assert debate.ledger.duties("agent-1") == [("contribute", task, 0)]


def test_default_threshold_is_2f_plus_1_and_agent_budget_an_even_share():
    debate = Debate(committee(7))
    task = debate.open(token_budget=7_000)
    assert debate.status(task)["threshold"] == 5
    assert debate.status(task)["tokens"]["agent_budget"] == 1_000


@pytest.mark.parametrize("threshold, accepted", [(1, False), (2, False), (3, True),
                                                 (4, True), (5, False)])
def test_threshold_is_never_below_2f_plus_1_nor_above_the_voters(threshold, accepted):
    debate = Debate()
    result = debate.send("agent-0", OpenTask(question="q", threshold=threshold))
    assert result["ok"] is accepted
    if not accepted:
        assert result["error"] == "bad_threshold"


def test_threshold_counts_only_members_with_the_vote_role():
    # Three voters of four: the default 2f+1 = 3 fits, 4 approvals could never happen.
    members = with_roles(committee(4), {"agent-3": ("propose",)})
    debate = Debate(members)
    debate.refused("agent-0", OpenTask(question="q", threshold=4), "bad_threshold")
    assert debate.open(threshold=3)
    # Two voters: not even the default threshold is reachable, so no task opens.
    fewer = with_roles(committee(4), {"agent-2": ("propose",), "agent-3": ("propose",)})
    Debate(fewer).refused("agent-0", OpenTask(question="q"), "bad_threshold")


def test_judge_must_be_a_member():
    debate = Debate()
    debate.refused("agent-0", OpenTask(question="q", judge="client-0"), "unknown_judge")
    assert debate.open(judge="agent-2")


def test_task_ids_come_from_the_ordering_and_the_ledger_has_a_task_limit():
    debate = Debate()
    tasks = [debate.open() for _ in range(MAX_OPEN_TASKS)]
    assert tasks[0] == "t-1-0" and len(set(tasks)) == MAX_OPEN_TASKS
    debate.refused("agent-0", OpenTask(question="one too many"), "ledger_full")
    # A decided task no longer counts against the open limit.
    debate.tick(at=debate.now + 10 * 60_000)
    assert all(debate.state(task) == "escalated" for task in tasks)
    assert debate.open()


# -- contributions ---------------------------------------------------------------------------


def test_one_contribution_per_agent_per_round():
    debate = Debate()
    task = debate.open()
    debate.contribute("agent-1", task, "roll back")
    debate.refused("agent-1", Contribute(task_id=task, round=0, position="keep"),
                   "duplicate_contribution")
    debate.refused("agent-1", Abstain(task_id=task, round=0), "duplicate_contribution")
    assert debate.status(task, reveal_open_round=True)["rounds"][0]["contributions"][0][
        "position"] == "roll back"


def test_early_late_and_unknown_rounds_and_tasks_are_rejected():
    debate = Debate()
    task = debate.open()
    debate.refused("agent-1", Contribute(task_id=task, round=1, position="early"),
                   "wrong_round")
    debate.refused("agent-1", Contribute(task_id="t-99-0", round=0, position="x"),
                   "unknown_task")
    debate.round_everyone(task)
    assert debate.round(task) == 1
    debate.refused("agent-1", Contribute(task_id=task, round=0, position="late"), "wrong_round")
    debate.refused("agent-1", Abstain(task_id=task, round=0), "wrong_round")


def test_a_contribution_after_the_debate_ended_is_rejected_task_closed():
    debate = Debate()
    task = debate.open(max_rounds=1)
    debate.round_everyone(task)
    assert debate.state(task) == "escalated"  # no proposal: nothing to vote on
    debate.refused("agent-1", Contribute(task_id=task, round=0, position="x"), "task_closed")
    debate.refused("agent-1", Contribute(task_id=task, round=1, position="x"), "task_closed")


def test_a_contribution_carries_its_evidence_and_the_ledger_names_its_proposal():
    debate = Debate()
    task = debate.open()
    result = debate.contribute("agent-2", task, "roll back", argument="login is broken",
                               evidence=("log:42",), confidence=80, tokens=120,
                               proposal=draft(risks=("rollback",), stop_conditions=("x",)),
                               stop="budget_exceeded")
    assert result == {"ok": True, "task_id": task, "round": 0,
                      "proposal_id": f"{task}.agent-2.r0"}
    contribution = debate.status(task, reveal_open_round=True)["rounds"][0]["contributions"][0]
    assert contribution | {"at_ms": 0} == {
        "agent": "agent-2", "position": "roll back", "argument": "login is broken",
        "evidence": ["log:42"], "confidence": 80, "tokens": 120,
        "proposal_id": f"{task}.agent-2.r0", "stop": "budget_exceeded", "at_ms": 0}


# -- blindness ---------------------------------------------------------------------------------


def test_round_0_is_blind_until_it_closes():
    debate = Debate()
    task = debate.open()
    proposal = debate.contribute("agent-0", task, "roll back", proposal=draft())["proposal_id"]
    debate.contribute("agent-1", task, "keep it")
    # Nobody sees the open round's content: not the status, not a debater's view, not the
    # ordered status read, and its proposals cannot be voted on yet.
    status = debate.status(task)
    assert status["rounds"][0]["contributions"] is None
    assert status["rounds"][0]["participants"] == ["agent-0", "agent-1"]
    assert status["proposals"] == []
    view = debate.ledger.view_for(task, "agent-2")
    assert view.transcript == () and view.proposals == () and view.round == 0
    read = debate.ok("client-0", Status(task_id=task, round=0))
    assert read["round"]["contributions"] is None
    summary = debate.ok("client-0", Status(task_id=task))["task"]
    assert summary["proposals"] == [] and summary["rounds"][0]["contributions"] is None
    debate.refused("agent-2", CastVote(task_id=task, proposal_id=proposal, decision="approve"),
                   "proposal_not_revealed")
    assert [d for d in debate.ledger.duties("agent-2") if d[0] == "vote"] == []
    # The round closes: everything is revealed, in order.
    debate.contribute("agent-2", task, "roll back")
    debate.contribute("agent-3", task, "roll back")
    status = debate.status(task)
    assert [c["position"] for c in status["rounds"][0]["contributions"]] == [
        "roll back", "keep it", "roll back", "roll back"]
    assert [p["proposal_id"] for p in status["proposals"]] == [proposal]
    view = debate.ledger.view_for(task, "agent-2")
    assert [c.position for c in view.transcript] == ["roll back", "keep it", "roll back",
                                                     "roll back"]
    assert [p.proposal_id for p in view.proposals] == [proposal]
    assert debate.ok("client-0", Status(task_id=task, round=0))["round"]["contributions"]
    assert ("vote", task, proposal) in debate.ledger.duties("agent-2")
    debate.vote("agent-2", task, proposal)


def test_later_rounds_see_the_transcript_but_not_their_own_open_round():
    debate = Debate()
    task = debate.open()
    debate.changing_round(task)
    debate.contribute("agent-1", task, "round one view")
    view = debate.ledger.view_for(task, "agent-0")
    assert view.round == 1
    assert {c.round for c in view.transcript} == {0}
    assert "round one view" not in [c.position for c in view.transcript]
    debate.refused("client-0", Status(task_id=task, round=2), "wrong_round")
    debate.refused("client-0", Status(task_id="t-404-0"), "unknown_task")


# -- closing rounds --------------------------------------------------------------------------


def test_a_round_waits_only_for_members_with_the_propose_role():
    members = with_roles(committee(4), {"agent-3": ("vote",)})
    debate = Debate(members)
    task = debate.open()
    for agent in ("agent-0", "agent-1"):
        debate.contribute(agent, task)
    assert debate.round(task) == 0
    debate.abstain("agent-2", task, reason="model failed")
    assert debate.round(task) == 1
    assert debate.status(task)["rounds"][0]["participants"] == ["agent-0", "agent-1", "agent-2"]


def test_a_round_closes_when_its_time_is_up_on_the_next_applied_operation():
    debate = Debate()
    task = debate.open(round_ms=5_000)
    debate.contribute("agent-1", task, "roll back")
    debate.tick(at=START_MS + 4_999)
    assert debate.round(task) == 0
    # Agreed time acts through whatever operation is applied next, even a malformed one.
    debate.refused("agent-2", b"\xff", "malformed", at=START_MS + 5_000)
    assert debate.round(task) == 1
    assert debate.status(task)["rounds"][0]["closed_ms"] == START_MS + 5_000
    assert debate.ledger.next_deadline_ms() == START_MS + 10_000
    debate.refused("agent-2", Contribute(task_id=task, round=0, position="late"),
                   "wrong_round")


def test_an_abstention_lets_the_round_close_without_a_position():
    debate = Debate()
    task = debate.open()
    for agent in ("agent-0", "agent-1", "agent-2"):
        debate.contribute(agent, task)
    debate.abstain("agent-3", task, reason="invalid output", tokens=40)
    round0 = debate.status(task)["rounds"][0]
    assert round0["closed_ms"] is not None
    assert round0["contributions"][3] | {"at_ms": 0} == {
        "agent": "agent-3", "position": None, "argument": "invalid output", "evidence": [],
        "confidence": 0, "tokens": 40, "proposal_id": None, "stop": None, "at_ms": 0}


# -- votes -----------------------------------------------------------------------------------


def test_distinct_approvals_reaching_the_threshold_decide():
    debate = Debate()
    task = debate.open()
    proposal = debate.propose_round0(task)
    assert debate.vote("agent-1", task, proposal)["status"] == "open"
    # Vote-flip: a second vote by the same agent (either way) is refused, the first counts.
    debate.refused("agent-1", CastVote(task_id=task, proposal_id=proposal, decision="reject"),
                   "duplicate_vote")
    debate.refused("agent-1", CastVote(task_id=task, proposal_id=proposal, decision="approve"),
                   "duplicate_vote")
    debate.vote("agent-2", task, proposal)
    assert debate.state(task) == "debating"
    result = debate.vote("agent-3", task, proposal, notes="risk ok")
    assert result["status"] == "approved" and result["state"] == "approved"
    status = debate.status(task)
    assert status["decision"] == "approved" and status["decided_proposal"] == proposal
    assert status["exit_reason"] == "threshold_reached"
    assert status["proposals"][0]["approvals"] == ["agent-1", "agent-2", "agent-3"]
    assert debate.ledger.decision(task) == "approved"
    debate.refused("agent-0", CastVote(task_id=task, proposal_id=proposal, decision="approve"),
                   "task_closed")


def test_reaching_the_threshold_mid_round_closes_and_reveals_that_round():
    debate = Debate()
    task = debate.open(require_audit=False)
    proposal = debate.propose_round0(task)
    debate.contribute("agent-1", task, "roll back now")
    for agent in ("agent-1", "agent-2", "agent-3"):
        debate.vote(agent, task, proposal)
    status = debate.status(task)
    assert status["state"] == "approved"
    # The transcript is complete: the round in which the decision fell is closed and shown.
    assert status["rounds"][1]["closed_ms"] == debate.now
    assert status["rounds"][1]["contributions"][0]["position"] == "roll back now"
    assert status["rounds_used"] == 2
    assert "roll back now" in [c.position for c in debate.ledger.view_for(task, "x").transcript]


def test_votes_count_only_from_members_with_the_vote_role():
    members = with_roles(committee(4), {"agent-3": ("propose",)})
    debate = Debate(members)
    task = debate.open()
    proposal = debate.propose_round0(task)
    debate.refused("agent-3", CastVote(task_id=task, proposal_id=proposal, decision="approve"),
                   "missing_role")
    debate.refused("client-0", CastVote(task_id=task, proposal_id=proposal,
                                        decision="approve"), "unknown_agent")
    debate.refused("agent-1", CastVote(task_id=task, proposal_id=f"{task}.agent-9.r0",
                                       decision="approve"), "unknown_proposal")
    assert all(not p["votes"] for p in debate.status(task)["proposals"])


def test_a_proposal_is_rejected_once_the_threshold_is_unreachable():
    debate = Debate()  # 4 voters, threshold 3: the second rejection decides
    task = debate.open()
    proposal = debate.propose_round0(task)
    assert debate.vote("agent-1", task, proposal, "reject")["status"] == "open"
    assert debate.vote("agent-2", task, proposal, "reject")["status"] == "rejected"
    debate.refused("agent-3", CastVote(task_id=task, proposal_id=proposal, decision="approve"),
                   "proposal_closed")
    # The debate goes on (another proposal may come); once it is over with every proposal
    # rejected, the task is rejected.
    assert debate.state(task) == "debating"
    debate.round_everyone(task, {a: "keep it" for a in debate.agents})
    debate.round_everyone(task, {a: "keep it" for a in debate.agents})
    status = debate.status(task)
    assert (status["state"], status["exit_reason"]) == ("rejected", "positions_stable")
    assert status["decided_proposal"] is None


def test_the_task_is_rejected_when_the_last_open_proposal_is_rejected_in_the_vote():
    debate = Debate()
    task = debate.open(max_rounds=1)
    first = debate.contribute("agent-0", task, "a", proposal=draft())["proposal_id"]
    second = debate.contribute("agent-1", task, "b", proposal=draft())["proposal_id"]
    debate.contribute("agent-2", task, "c")
    debate.contribute("agent-3", task, "d")
    assert (debate.state(task), debate.status(task)["exit_reason"]) == ("voting", "max_rounds")
    debate.vote("agent-0", task, first, "reject")
    debate.vote("agent-1", task, first, "reject")
    assert debate.state(task) == "voting"
    debate.vote("agent-0", task, second, "reject")
    debate.vote("agent-1", task, second, "reject")
    assert debate.ledger.decision(task) == "rejected"


def test_an_undecided_vote_window_escalates():
    debate = Debate()
    task = debate.open(max_rounds=1, vote_ms=2_000)
    proposal = debate.contribute("agent-0", task, "a", proposal=draft())["proposal_id"]
    for agent in ("agent-1", "agent-2", "agent-3"):
        debate.contribute(agent, task, "b")
    assert debate.state(task) == "voting"
    assert debate.ledger.next_deadline_ms() == debate.now + 2_000
    debate.vote("agent-0", task, proposal)
    debate.tick(at=debate.now + 1_999)
    assert debate.state(task) == "voting"
    debate.tick(at=debate.now + 1)
    status = debate.status(task)
    assert (status["state"], status["escalated_to"]) == ("escalated", "human")
    assert status["exit_reason"] == "max_rounds"
    assert debate.ledger.next_deadline_ms() is None
    debate.refused("agent-1", CastVote(task_id=task, proposal_id=proposal, decision="approve"),
                   "task_closed")


# -- exits -----------------------------------------------------------------------------------


def test_exit_max_rounds():
    debate = Debate()
    task = debate.open(max_rounds=2)
    debate.changing_round(task)
    debate.changing_round(task)
    status = debate.status(task)
    assert (status["exit_reason"], status["rounds_used"]) == ("max_rounds", 2)
    assert status["state"] == "escalated"  # no proposal at all


def test_exit_deadline_is_absolute_from_the_opening():
    debate = Debate()
    task = debate.open(round_ms=100_000, deadline_ms=90_000)
    debate.changing_round(task)  # round 1 opens at START_MS: the deadline is not per round
    debate.later(80_000)
    debate.contribute("agent-1", task, "still thinking")
    assert debate.ledger.next_deadline_ms() == START_MS + 90_000
    debate.tick(at=START_MS + 90_000)
    status = debate.status(task)
    assert (status["state"], status["exit_reason"]) == ("escalated", "deadline")
    # The round the deadline cut is closed and revealed with what arrived in time.
    assert status["rounds"][1]["contributions"][0]["position"] == "still thinking"
    debate.refused("agent-2", Contribute(task_id=task, round=1, position="late"),
                   "task_closed")


def test_the_deadline_also_ends_the_vote_window():
    debate = Debate()
    task = debate.open(max_rounds=1, vote_ms=60_000, deadline_ms=10_000)
    debate.contribute("agent-0", task, "a", proposal=draft())
    for agent in ("agent-1", "agent-2", "agent-3"):
        debate.contribute(agent, task, "b")
    assert debate.state(task) == "voting"
    debate.tick(at=START_MS + 10_000)
    assert debate.state(task) == "escalated"


def test_a_contribution_over_the_remaining_budget_is_rejected():
    debate = Debate()
    task = debate.open(token_budget=1_000, agent_token_budget=400)
    debate.refused("agent-0", Contribute(task_id=task, round=0, position="x", tokens=401),
                   "budget_exceeded")
    debate.contribute("agent-0", task, tokens=400)
    debate.contribute("agent-1", task, tokens=400)
    # 200 left for the task: agent-2's own 400 are capped by what the task has left.
    assert debate.ledger.view_for(task, "agent-2").tokens_remaining == 200
    debate.refused("agent-2", Contribute(task_id=task, round=0, position="x", tokens=201),
                   "budget_exceeded")
    debate.contribute("agent-2", task, tokens=200)
    debate.contribute("agent-3", task, tokens=0)
    tokens = debate.status(task)["tokens"]
    assert tokens["used"] == 1_000
    assert tokens["by_agent"] == {"agent-0": 400, "agent-1": 400, "agent-2": 200, "agent-3": 0}


def test_exit_budget_exhausted():
    debate = Debate()
    task = debate.open(token_budget=400, max_rounds=5)
    for agent in debate.agents:
        debate.contribute(agent, task, f"{agent} view", tokens=100)
    assert debate.status(task)["exit_reason"] == "budget_exhausted"


def test_an_abstention_is_charged_at_most_what_remains():
    debate = Debate()
    task = debate.open(token_budget=400, agent_token_budget=100)
    debate.abstain("agent-0", task, tokens=10_000)
    assert debate.status(task)["tokens"]["by_agent"] == {"agent-0": 100}


def test_exit_positions_stable_ignores_case_and_whitespace():
    debate = Debate()
    task = debate.open(max_rounds=5)
    first = {"agent-0": "Roll back", "agent-1": "keep", "agent-2": "roll back",
             "agent-3": "Keep it"}
    debate.round_everyone(task, first)
    debate.round_everyone(task, {"agent-0": "roll  BACK ", "agent-1": "KEEP",
                                 "agent-2": " Roll back", "agent-3": "keep   it"})
    status = debate.status(task)
    assert (status["exit_reason"], status["rounds_used"]) == ("positions_stable", 2)


def test_a_changed_position_keeps_the_debate_going():
    debate = Debate()
    task = debate.open(max_rounds=5)
    debate.round_everyone(task, {a: "keep" for a in debate.agents})
    debate.round_everyone(task, {**{a: "keep" for a in debate.agents}, "agent-3": "roll back"})
    assert debate.round(task) == 2


def test_exit_stop_condition_needs_f_plus_1_distinct_agents():
    debate = Debate(committee(7))  # f = 2
    task = debate.open(max_rounds=5)
    # f agents raising a stop condition do not stop the debate...
    for i, agent in enumerate(debate.agents):
        debate.contribute(agent, task, f"view {i}", stop="test_failed_twice" if i < 2 else None)
    assert debate.round(task) == 1
    # ... f+1 do (whatever conditions they raise).
    stops = {"agent-0": "test_failed_twice", "agent-4": "permission_denied",
             "agent-6": "test_failed_twice"}
    for i, agent in enumerate(debate.agents):
        debate.contribute(agent, task, f"new view {i}", stop=stops.get(agent))
    status = debate.status(task)
    assert status["exit_reason"] == "stop_condition"
    assert status["stop_conditions"] == ["permission_denied", "test_failed_twice"]


def test_an_exit_without_a_decision_escalates_to_the_judge():
    debate = Debate(with_roles(committee(4), {a: ("propose", "vote") for a in
                                              ("agent-0", "agent-1", "agent-2", "agent-3")}))
    task = debate.open(max_rounds=1, vote_ms=1_000, judge="agent-3")
    proposal = debate.contribute("agent-0", task, "a", proposal=draft())["proposal_id"]
    for agent in ("agent-1", "agent-2", "agent-3"):
        debate.contribute(agent, task, "b")
    debate.tick(at=debate.now + 1_000)
    assert debate.status(task)["escalated_to"] == "agent-3"
    assert debate.ledger.decision(task) == "escalated"
    debate.refused("agent-1", Resolve(task_id=task, decision="approve", proposal_id=proposal),
                   "not_resolver")
    debate.refused("client-0", Resolve(task_id=task, decision="reject"), "unknown_agent")
    debate.refused("agent-3", Resolve(task_id=task, decision="approve"), "unknown_proposal")
    debate.refused("agent-3", Resolve(task_id=task, decision="approve", proposal_id="nope"),
                   "unknown_proposal")
    debate.ok("agent-3", Resolve(task_id=task, decision="approve", proposal_id=proposal,
                                 notes="least risky"))
    status = debate.status(task)
    assert (status["state"], status["resolved_by"]) == ("approved", "agent-3")
    assert status["decided_proposal"] == proposal
    debate.refused("agent-3", Resolve(task_id=task, decision="reject"), "not_escalated")


def test_without_a_judge_the_task_needs_a_human():
    members = with_roles(committee(4), {"agent-0": ("propose", "vote"),
                                        "agent-1": ("propose", "vote"),
                                        "agent-2": ("propose", "vote")})
    debate = Debate(members)
    task = debate.open(max_rounds=1)
    debate.refused("agent-3", Resolve(task_id=task, decision="reject"), "not_escalated")
    debate.round_everyone(task)
    status = debate.status(task)
    assert (status["state"], status["escalated_to"]) == ("escalated", "human")
    debate.refused("agent-1", Resolve(task_id=task, decision="reject"), "not_resolver")
    debate.ok("agent-3", Resolve(task_id=task, decision="reject", notes="not now"))
    status = debate.status(task)
    assert (status["state"], status["resolved_by"]) == ("rejected", "agent-3")
    assert debate.ledger.decision(task) == "rejected"


def test_a_human_may_also_resolve_a_task_escalated_to_its_judge():
    debate = Debate()
    task = debate.open(max_rounds=1, judge="agent-1")
    debate.round_everyone(task)
    assert debate.status(task)["escalated_to"] == "agent-1"
    debate.ok("agent-2", Resolve(task_id=task, decision="reject"))  # every role, human too
    assert debate.ledger.decision(task) == "rejected"


def test_a_member_named_human_is_not_a_human():
    # escalated_to == "human" names a role, not a member: a member called "human" without
    # the role is no resolver.
    members = renamed(with_roles(committee(4), {a: ("propose", "vote") for a in
                                                ("agent-0", "agent-1", "agent-2", "agent-3")}),
                      {"agent-3": "human"})
    debate = Debate(members)
    task = debate.open(max_rounds=1)
    debate.round_everyone(task)
    assert debate.status(task)["escalated_to"] == "human"
    debate.refused("human", Resolve(task_id=task, decision="reject"), "not_resolver")


def test_budget_property_over_random_contributions_and_abstentions():
    cases = st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.integers(0, 400),
                               st.integers(0, 2), st.sampled_from((0, 0, 0, 6_000))),
                     max_size=40)

    @given(st.integers(1, 1_500), st.none() | st.integers(1, 600), cases)
    def check(budget: int, agent_budget: int | None, actions: list[Any]) -> None:
        debate = Debate()
        task = debate.open(token_budget=budget, agent_token_budget=agent_budget,
                           max_rounds=16, round_ms=5_000, deadline_ms=10 * 60_000)
        cap = debate.status(task)["tokens"]["agent_budget"]
        for who, abstains, tokens, round_shift, wait in actions:
            debate.later(wait)
            agent = f"agent-{who}"
            number = (debate.status(task)["round"] or 0) + round_shift - 1
            op = (Abstain(task_id=task, round=max(0, number), tokens=tokens) if abstains else
                  Contribute(task_id=task, round=max(0, number), position=f"p{tokens % 3}",
                             tokens=tokens))
            before = debate.status(task)["tokens"]["used"]
            result = debate.send(agent, op)
            tokens_now = debate.status(task)["tokens"]
            if not result["ok"]:
                assert tokens_now["used"] == before
            assert tokens_now["used"] <= budget
            assert all(used <= cap for used in tokens_now["by_agent"].values())
            assert sum(tokens_now["by_agent"].values()) == tokens_now["used"]

    check()


# -- roles -----------------------------------------------------------------------------------


def test_every_operation_needs_its_genesis_role():
    members = with_roles(committee(4), {"agent-1": ("vote",), "agent-2": ("propose",),
                                        "agent-3": ("propose", "vote")})
    debate = Debate(members)
    debate.refused("agent-1", OpenTask(question="q"), "missing_role")
    task = debate.open(max_rounds=1)
    debate.refused("agent-1", Contribute(task_id=task, round=0, position="x"), "missing_role")
    debate.refused("agent-1", Abstain(task_id=task, round=0), "missing_role")
    proposal = debate.contribute("agent-0", task, "x", proposal=draft())["proposal_id"]
    debate.contribute("agent-2", task, "y")
    debate.contribute("agent-3", task, "z")
    debate.refused("agent-2", CastVote(task_id=task, proposal_id=proposal, decision="approve"),
                   "missing_role")
    debate.vote("agent-3", task, proposal)
    debate.tick(at=debate.now + 10 * 60_000)
    assert debate.status(task)["escalated_to"] == "human"
    debate.refused("agent-3", Resolve(task_id=task, decision="reject"), "not_resolver")
    debate.ok("agent-0", Resolve(task_id=task, decision="reject"))  # agent-0: every role


def test_a_plain_client_may_tick_and_read_but_not_deliberate():
    debate = Debate()
    task = debate.open()
    for op in (OpenTask(question="q"), Contribute(task_id=task, round=0, position="x"),
               Abstain(task_id=task, round=0), Resolve(task_id=task, decision="reject"),
               CastVote(task_id=task, proposal_id="p", decision="approve")):
        debate.refused("client-0", op, "unknown_agent")
    assert debate.ok("client-0", Tick()) == {"ok": True, "now_ms": debate.now}
    assert debate.ok("client-0", Status(task_id=task))["task"]["task_id"] == task
    assert debate.ledger.rejection_counts == {"unknown_agent": 5}


@pytest.mark.parametrize("fields, named", [
    ({"op": "open_task", "question": "grant me every role", "roles": ["human"]}, "roles"),
    ({"op": "contribute", "task_id": "t-1-0", "round": 0, "position": "x",
      "agent": "agent-1"}, "agent"),
    ({"op": "vote", "task_id": "t-1-0", "proposal_id": "p", "decision": "approve",
      "as": "agent-1"}, "as"),
    ({"op": "tick", "role": "human"}, "role"),
])
def test_an_operation_cannot_name_its_author_or_grant_a_role(fields, named):
    members = with_roles(committee(4), {"agent-1": ("propose",)})
    debate = Debate(members)
    debate.open()
    detail = debate.refused("agent-1", fields, "malformed")
    assert detail.startswith(f"{named}: ")
    # Nothing changed: agent-1 still cannot vote or resolve.
    assert debate.ledger.duties("agent-1") == [("contribute", "t-1-0", 0)]
    debate.refused("agent-1", CastVote(task_id="t-1-0", proposal_id="p", decision="approve"),
                   "missing_role")


def test_byzantine_scripts_requests_are_refused():
    debate = Debate()
    task = debate.open()
    proposal = debate.propose_round0(task)
    view = debate.ledger.view_for(task, "agent-3")
    results: dict[str, list[Any]] = {}
    for behaviour in ("role-escalation", "evidence-flood", "budget-burner", "vote-flip"):
        agent = ScriptedDebater("agent-3", Script(behaviour=behaviour))
        results[behaviour] = [debate.send(client, op)
                              for client, op in agent.raw_actions(view)]
    errors = {b: [r.get("error") for r in rs] for b, rs in results.items()}
    # The grant is malformed, the vote on its own proposal counts (agent-3 may vote), the
    # resolve finds nothing to resolve.
    assert errors["role-escalation"] == ["malformed", "unknown_proposal", None,
                                         "not_escalated"]
    assert errors["evidence-flood"] == ["malformed"]
    assert errors["budget-burner"] == ["budget_exceeded"]
    # role-escalation's own approve counted (agent-3 has the vote role); the flip is refused.
    assert errors["vote-flip"] == ["duplicate_vote", "duplicate_vote"]
    assert debate.status(task)["proposals"][0]["proposal_id"] == proposal
    assert debate.status(task)["proposals"][0]["approvals"] == ["agent-3"]


# -- groupthink ------------------------------------------------------------------------------


def said(agent: str, position: str | None, *evidence: str) -> dict[str, Any]:
    return {"agent": agent, "position": position, "evidence": list(evidence)}


def kinds(signals: list[dict[str, Any]]) -> list[str]:
    return [s["kind"] for s in signals]


def test_signal_blind_unanimity_with_thin_evidence():
    thin = [said("a", "ship", "ref:1"), said("b", "ship"), said("c", "Ship ")]
    assert groupthink.signals_at_close([thin], 0) == [
        {"kind": "blind_unanimity_thin_evidence", "round": 0}]
    backed = [said("a", "ship", "ref:1"), said("b", "ship", "ref:2"), said("c", "ship", "r:3")]
    assert groupthink.signals_at_close([backed], 0) == []
    split = [said("a", "ship"), said("b", "hold"), said("c", "ship")]
    assert groupthink.signals_at_close([split], 0) == []
    alone = [said("a", "ship"), said("b", None), said("c", None)]
    assert groupthink.signals_at_close([alone], 0) == []


def test_signal_flip_without_new_evidence_per_agent():
    round0 = [said("a", "ship", "ref:1"), said("b", "hold", "ref:2"), said("c", "hold")]
    round1 = [said("a", "hold", "ref:2"),       # flipped, citing only known evidence
              said("b", "ship", "ref:new"),      # flipped with new evidence: fine
              said("c", "HOLD ")]                # same position, other spelling: no flip
    signals = groupthink.signals_at_close([round0, round1], 1)
    assert {"kind": "flip_without_evidence", "round": 1, "agent": "a"} in signals
    assert [s.get("agent") for s in signals if s["kind"] == "flip_without_evidence"] == ["a"]


def test_signal_agreement_rising_while_evidence_stays_flat():
    round0 = [said("a", "ship", "ref:1"), said("b", "hold", "ref:2"), said("c", "wait")]
    round1 = [said("a", "ship", "ref:1"), said("b", "ship", "ref:2"), said("c", "ship")]
    assert "agreement_rising_evidence_flat" in kinds(
        groupthink.signals_at_close([round0, round1], 1))
    round1_new = [said("a", "ship", "ref:1"), said("b", "ship", "ref:3"), said("c", "ship")]
    assert "agreement_rising_evidence_flat" not in kinds(
        groupthink.signals_at_close([round0, round1_new], 1))
    # Spelling is not agreement: the same positions, respelled, do not "rise".
    respelled = [said("a", "Ship"), said("b", "hold"), said("c", "WAIT")]
    assert groupthink.signals_at_close([round0, respelled], 1) == []


AUDITED = {"agent-0": ("propose", "vote"), "agent-1": ("propose", "vote"),
           "agent-2": ("propose", "vote"), "agent-3": ("audit",), "agent-4": ("vote",)}


def flagged_approval(require_audit: bool = True) -> tuple[Debate, str, str]:
    """Five members: three propose and vote, agent-3 only audits, agent-4 only votes. Round 0
    is unanimous on one reference (flagged), three approvals decide."""
    debate = Debate(with_roles(committee(5), AUDITED))
    task = debate.open(require_audit=require_audit)
    proposal = debate.contribute("agent-0", task, "ship", proposal=draft(),
                                 evidence=("ref:1",))["proposal_id"]
    debate.contribute("agent-1", task, "Ship")
    debate.contribute("agent-2", task, "ship")
    for agent in ("agent-0", "agent-1", "agent-2"):
        debate.vote(agent, task, proposal)
    assert debate.ledger.decision(task) == "approved"
    return debate, task, proposal


def audit(debate: Debate, agent: str, task: str, proposal: str,
          decision: str = "approve") -> dict[str, Any]:
    return debate.ok(agent, CastVote(task_id=task, proposal_id=proposal, decision=decision,
                                     notes="evidence checked", audit=True))


def test_a_flagged_approval_needs_an_auditor_before_commit():
    debate, task, proposal = flagged_approval()
    groupthink_status = debate.status(task)["groupthink"]
    assert groupthink_status["flagged"] and groupthink_status["signals"][0]["kind"] == \
        "blind_unanimity_thin_evidence"
    assert not debate.ledger.commit_ready(task)
    assert debate.ledger.duties("agent-3") == [("audit", task, proposal)]
    assert debate.ledger.duties("agent-4") == []
    # A voter without the audit role cannot clear it; an ordinary vote is not an audit.
    debate.refused("agent-4", CastVote(task_id=task, proposal_id=proposal, decision="approve",
                                       audit=True), "missing_role")
    debate.refused("agent-3", CastVote(task_id=task, proposal_id=proposal, decision="approve"),
                   "missing_role")
    assert audit(debate, "agent-3", task, proposal)["commit_ready"] is True
    assert debate.ledger.commit_ready(task)
    assert debate.status(task)["groupthink"]["audit_approvals"] == ["agent-3"]
    assert debate.ledger.duties("agent-3") == []
    # Cleared: nothing is pending any more.
    debate.refused("agent-3", CastVote(task_id=task, proposal_id=proposal, decision="approve",
                                       audit=True), "no_audit_pending")


def test_an_auditor_rejection_does_not_clear_the_flag():
    debate, task, proposal = flagged_approval()
    audit(debate, "agent-3", task, proposal, "reject")
    assert not debate.ledger.commit_ready(task)
    assert debate.status(task)["groupthink"]["audits"][0]["decision"] == "reject"
    debate.refused("agent-3", CastVote(task_id=task, proposal_id=proposal, decision="approve",
                                       audit=True), "duplicate_vote")


def test_an_auditor_who_voted_in_the_debate_must_still_audit():
    # Every member holds every role: the debate approvals by auditors are not the audit.
    debate = Debate()
    task = debate.open()
    proposal = debate.contribute("agent-0", task, "ship", proposal=draft())["proposal_id"]
    for agent in ("agent-1", "agent-2", "agent-3"):
        debate.contribute(agent, task, "ship")
    for agent in ("agent-0", "agent-1", "agent-2"):
        debate.vote(agent, task, proposal)
    assert debate.status(task)["groupthink"]["flagged"]
    assert not debate.ledger.commit_ready(task)
    # Everyone but the author is asked; the author may not audit its own proposal.
    assert debate.ledger.duties("agent-0") == []
    assert debate.ledger.duties("agent-1") == [("audit", task, proposal)]
    debate.refused("agent-0", CastVote(task_id=task, proposal_id=proposal, decision="approve",
                                       audit=True), "own_proposal")
    debate.refused("agent-1", CastVote(task_id=task, proposal_id="nope", decision="approve",
                                       audit=True), "no_audit_pending")
    audit(debate, "agent-1", task, proposal)
    # f+1 = 2 auditors: one (possibly Byzantine) auditor cannot clear the gate alone.
    assert debate.ledger.audits_needed(task) == 2
    assert not debate.ledger.commit_ready(task)
    audit(debate, "agent-2", task, proposal)
    assert debate.ledger.commit_ready(task)


def test_without_require_audit_a_flagged_approval_is_ready():
    debate, task, proposal = flagged_approval(require_audit=False)
    assert debate.status(task)["groupthink"]["flagged"]
    assert debate.ledger.commit_ready(task)
    assert debate.ledger.duties("agent-3") == []
    debate.refused("agent-3", CastVote(task_id=task, proposal_id=proposal, decision="approve"),
                   "missing_role")


def test_an_unflagged_approval_is_ready_and_an_undecided_task_is_not():
    debate = Debate()
    task = debate.open()
    assert not debate.ledger.commit_ready(task) and not debate.ledger.commit_ready("t-404-0")
    proposal = debate.propose_round0(task)
    for agent in ("agent-1", "agent-2", "agent-3"):
        debate.vote(agent, task, proposal)
    assert not debate.status(task)["groupthink"]["flagged"]
    assert debate.ledger.commit_ready(task)


def test_a_judge_cannot_wave_a_flagged_proposal_past_the_audit():
    members = with_roles(committee(5), {**AUDITED, "agent-4": ("human",)})
    debate = Debate(members)
    task = debate.open(max_rounds=1, judge="agent-1")
    proposal = debate.contribute("agent-0", task, "ship", proposal=draft())["proposal_id"]
    debate.contribute("agent-1", task, "ship")
    debate.contribute("agent-2", task, "ship")
    debate.tick(at=debate.now + 10 * 60_000)
    debate.ok("agent-1", Resolve(task_id=task, decision="approve", proposal_id=proposal))
    assert debate.ledger.decision(task) == "approved"
    assert not debate.ledger.commit_ready(task)
    audit(debate, "agent-3", task, proposal)
    assert debate.ledger.commit_ready(task)
    # A human's resolution is the human check itself.
    other = Debate(members)
    task = other.open(max_rounds=1)
    proposal = other.contribute("agent-0", task, "ship", proposal=draft())["proposal_id"]
    other.contribute("agent-1", task, "ship")
    other.contribute("agent-2", task, "ship")
    other.tick(at=other.now + 10 * 60_000)
    other.ok("agent-4", Resolve(task_id=task, decision="approve", proposal_id=proposal))
    assert other.ledger.commit_ready(task)


def test_conformist_debaters_raise_flip_signals_in_a_scripted_debate():
    debate = Debate()
    debaters = [ScriptedDebater("agent-0", Script(position="ship", evidence=("ref:a",),
                                                  plan=PLAN)),
                ScriptedDebater("agent-1", Script(position="ship", evidence=("ref:b",))),
                ScriptedDebater("agent-2", Script(position="ship", evidence=("ref:c",))),
                ScriptedDebater("agent-3", Script(behaviour="conformist", position="hold"))]
    task = debate.open(max_rounds=3)
    # The debaters answer every round before anyone votes (the debate ends positions_stable
    # in round 2), then vote on the revealed proposal.
    while duties := [(d, duty) for d in debaters for duty in debate.ledger.duties(d.name)
                     if duty[0] != "audit"]:
        debater, (kind, _, what) = min(duties, key=lambda item: item[1][0] != "contribute")
        view = debate.ledger.view_for(task, debater.name)
        if kind == "contribute":
            debate.ok(debater.name, debater.decide_contribution(view))
        else:
            proposal = next(p for p in view.proposals if p.proposal_id == what)
            debate.ok(debater.name, debater.decide_vote(view, proposal))
    status = debate.status(task)
    assert status["state"] == "approved"
    assert {"kind": "flip_without_evidence", "round": 1, "agent": "agent-3"} in \
        status["groupthink"]["signals"]


# -- determinism, snapshots and hostile bytes ------------------------------------------------


def busy_debate() -> Debate:
    """A debate touching most rules: proposals, votes, rejections, time, escalation."""
    debate = Debate()
    task = debate.open(judge="agent-2")
    proposal = debate.propose_round0(task)
    debate.vote("agent-1", task, proposal, "reject", notes="missing idempotency key")
    debate.refused("agent-1", CastVote(task_id=task, proposal_id=proposal,
                                       decision="approve"), "duplicate_vote")
    debate.send("client-0", b"\x00junk")
    debate.contribute("agent-2", task, "roll back", stop="budget_exceeded")
    other = debate.open(max_rounds=1, round_ms=1_000)
    debate.contribute("agent-3", other, "keep")
    debate.tick(at=debate.now + 1_000)
    return debate


def replay(log: list[tuple[str, bytes, int]], ledger: Ledger, first_seq: int = 1) -> list[bytes]:
    results = []
    for seq, (client, data, now) in enumerate(log, start=first_seq):
        ctx = ExecutionContext(seq=seq, view=0, timestamp_ms=now, client=client,
                               request_timestamp=seq, index=0)
        results.append(ledger.apply(data, ctx))
    return results


def test_the_same_ordered_log_gives_the_same_state():
    debate = busy_debate()
    twin = Ledger(committee(4))
    assert replay(debate.log, twin) == debate.results
    assert twin.digest() == debate.ledger.digest()
    assert twin.snapshot() == debate.ledger.snapshot()
    assert len(twin.digest()) == 32
    assert Ledger(committee(4)).digest() != twin.digest()


def test_snapshot_restore_round_trip_then_identical_behaviour():
    debate = busy_debate()
    restored = Ledger(committee(4))
    restored.restore(debate.ledger.snapshot())
    assert restored.digest() == debate.ledger.digest()
    assert restored.rejection_counts == debate.ledger.rejection_counts
    # Both continue with the same operations: same results, same state.
    before = len(debate.log)
    task = debate.ledger.task_ids[0]
    for agent in debate.agents:
        if agent not in debate.status(task)["rounds"][1]["participants"]:
            debate.contribute(agent, task, "keep")
    debate.tick(at=debate.now + 10 * 60_000)
    suffix = debate.log[before:]
    assert replay(suffix, restored, first_seq=before + 1) == debate.results[before:]
    assert restored.digest() == debate.ledger.digest()
    assert restored.task_status(task) == debate.status(task)


def test_reads_do_not_alias_the_replicated_state():
    debate = busy_debate()
    task = debate.ledger.task_ids[0]
    digest = debate.ledger.digest()
    status = debate.status(task)
    status["rounds"][0]["contributions"][0]["evidence"].append("forged")
    status["proposals"][0]["plan"][0]["target"] = "file:elsewhere"
    status["proposals"][0]["risks"].append("forged")
    view = debate.ledger.view_for(task, "agent-0")
    view.proposals[0].plan[0]["target"] = "file:elsewhere"
    debate.ledger.rejection_log[0]["reason"] = "forged"
    assert debate.ledger.digest() == digest


def test_restore_refuses_what_is_not_a_snapshot():
    from bftdeliberate.errors import DecodeError
    ledger = Ledger(committee(4))
    for data in (b"", b"\xff", cbor.encode({"tasks": {}}), cbor.encode([1, 2])):
        with pytest.raises(DecodeError):
            ledger.restore(data)


@pytest.mark.parametrize("data", [
    b"",
    b"\xff\x00",
    bytes.fromhex("a2627461736b5f6964617462"),                # truncated map
    bytes.fromhex("bf626f70647469636bff"),                      # indefinite-length map
    # {"task_id": ..., "op": ...}: keys out of canonical order
    bytes.fromhex("a267") + b"task_id" + bytes.fromhex("63") + b"t-1" +
    bytes.fromhex("62") + b"op" + bytes.fromhex("66") + b"status",
    cbor.encode([1, 2, 3]),
    cbor.encode("tick"),
    cbor.encode({"op": "dance"}),
    cbor.encode({}),
    cbor.encode({"op": "contribute", "task_id": "t-1-0", "round": "0", "position": "x"}),
    cbor.encode({"op": "contribute", "task_id": "t-1-0", "round": True, "position": "x"}),
    cbor.encode({"op": "contribute", "task_id": "t-1-0", "round": 0, "position": "x",
                 "evidence": "ref:1"}),
    cbor.encode({"op": "contribute", "task_id": "t-1-0", "round": 0, "position": "x",
                 "tokens": -1}),
    cbor.encode({"op": "open_task", "question": "q", "threshold": None, "judge": 7}),
    cbor.encode({"op": "status", "task_id": b"t-1-0"}),
    b"\xa1" + cbor.encode("op") + b"\xfb" + b"\x00" * 8,       # a float value
    cbor.encode({"op": "open_task", "question": "q" * (MAX_OPERATION_SIZE + 1)}),
])
def test_malformed_bytes_are_refused_never_raised(data):
    debate = Debate()
    task = debate.open()
    before = debate.status(task)
    detail = debate.refused("agent-1", data, "malformed")
    assert detail and "\n" not in detail
    # Nothing changed but the evidence of the refusal.
    assert debate.status(task) == before
    assert debate.ledger.rejection_counts == {"malformed": 1}
    assert debate.ledger.rejection_log == [{"seq": 2, "index": 0, "agent": "agent-1", "op": "?",
                                            "reason": "malformed", "detail": detail}]
    assert len(debate.ledger.digest()) == 32


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data):
    ledger = Ledger(committee(4))
    result = cbor.decode(ledger.apply(data, ExecutionContext(1, 0, START_MS, "agent-0", 1, 0)))
    assert result["ok"] is False or cbor.decode(data) == {"op": "tick"}


FIELD_NAMES = ("op", "task_id", "round", "position", "question", "proposal_id", "decision",
               "tokens", "evidence", "proposal", "plan", "threshold", "judge", "stop", "agent")
CBOR_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.text(max_size=20)
    | st.sampled_from(("open_task", "contribute", "abstain", "vote", "resolve", "tick",
                       "status", "t-1-0", "approve", "t-1-0.agent-0.r0", "agent-1")),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@given(st.dictionaries(st.sampled_from(FIELD_NAMES), CBOR_VALUES, max_size=6),
       st.sampled_from(("agent-0", "agent-1", "client-0")))
def test_arbitrary_operation_maps_never_raise(fields, client):
    debate = Debate()
    task = debate.open()
    debate.propose_round0(task)
    try:
        data = cbor.encode(fields)
    except Exception:  # noqa: BLE001 - not encodable (lone surrogate): nothing to send
        return
    result = debate.send(client, data)
    if not result["ok"]:
        assert result["error"] in REJECTION_REASONS


def test_the_rejection_log_is_bounded_but_counts_keep_counting():
    debate = Debate()
    for _ in range(MAX_REJECTION_LOG + 10):
        debate.send("agent-1", b"\xff")
    debate.refused("client-0", OpenTask(question="q"), "unknown_agent")
    assert debate.ledger.rejection_counts == {"malformed": MAX_REJECTION_LOG + 10,
                                              "unknown_agent": 1}
    log = debate.ledger.rejection_log
    assert len(log) == MAX_REJECTION_LOG
    assert log[-1] == {"seq": debate.seq, "index": 0, "agent": "client-0", "op": "open_task",
                       "reason": "unknown_agent", "detail": log[-1]["detail"]}
    assert log[0]["seq"] == debate.seq - MAX_REJECTION_LOG + 1


# -- proposal.json ---------------------------------------------------------------------------


def test_proposal_document_is_a_valid_proposal_with_votes_and_decision():
    debate = Debate()
    task = debate.open(require_audit=False)
    proposal = debate.contribute(
        "agent-0", task, "roll back",
        proposal=draft(risks=("timeouts", "rollback"), stop_conditions=("budget_exceeded",))
    )["proposal_id"]
    for agent in ("agent-1", "agent-2", "agent-3"):
        debate.contribute(agent, task, "roll back", evidence=(f"ref:{agent}",))
    debate.vote("agent-1", task, proposal, notes="risk ok")
    debate.vote("agent-2", task, proposal, "reject", notes="missing idempotency key")
    debate.vote("agent-3", task, proposal, notes="needs timeout cap")
    assert debate.ledger.decision(task) is None  # 2 approvals of 3 needed so far
    debate.vote("agent-0", task, proposal)
    document = debate.ledger.proposal_document(task)
    assert isinstance(document, Proposal)
    assert document.proposal_id == proposal and document.task_id == task
    assert [s.model_dump(exclude_none=True) for s in document.plan] == list(PLAN)
    assert document.risks == ("timeouts", "rollback")
    assert document.stop_conditions == ("budget_exceeded",)
    assert [(v.agent, v.decision, v.notes) for v in document.votes] == [
        ("agent-1", "approve", "risk ok"), ("agent-2", "reject", "missing idempotency key"),
        ("agent-3", "approve", "needs timeout cap"), ("agent-0", "approve", "")]
    assert (document.decision.threshold, document.decision.result) == ("3/4", "approved")
    assert parse_proposal(document.model_dump_json(exclude_none=True)) == document


def test_proposal_documents_of_rejected_and_escalated_proposals():
    debate = Debate()
    task = debate.open(max_rounds=1, vote_ms=1_000)
    first = debate.contribute("agent-0", task, "a", proposal=draft())["proposal_id"]
    second = debate.contribute("agent-1", task, "b", proposal=draft())["proposal_id"]
    debate.contribute("agent-2", task, "c")
    debate.contribute("agent-3", task, "d")
    debate.vote("agent-2", task, first, "reject")
    debate.vote("agent-3", task, first, "reject")
    debate.tick(at=debate.now + 1_000)
    assert debate.ledger.proposal_document(task, first).decision.result == "rejected"
    assert debate.ledger.proposal_document(task, second).decision.result == "escalated"
    with pytest.raises(KeyError):
        debate.ledger.proposal_document(task)  # escalated: no decided proposal
    # A human may approve what the votes rejected: the document says what was decided.
    debate.ok("agent-0", Resolve(task_id=task, decision="approve", proposal_id=first))
    assert debate.ledger.proposal_document(task).proposal_id == first
    assert debate.ledger.proposal_document(task).decision.result == "approved"
    assert debate.ledger.proposal_document(task, second).decision.result == "rejected"
    with pytest.raises(KeyError):
        debate.ledger.proposal_document(task, "nope")


def test_a_proposal_listing_a_risk_twice_is_malformed():
    # proposal.json refuses duplicate risks: the ledger must not accept what it cannot document.
    debate = Debate()
    task = debate.open()
    detail = debate.refused("agent-0", {
        "op": "contribute", "task_id": task, "round": 0, "position": "x",
        "proposal": {"plan": [{"step": "read", "target": "file:a"}],
                     "risks": ["timeouts", "timeouts"]}}, "malformed")
    assert detail.startswith("proposal.risks.1: ")


def test_every_rejection_reason_can_occur():
    debate = Debate(with_roles(committee(4), {"agent-3": ("vote",)}))
    seen: set[str] = set()

    def refuse(client: str, op: Any) -> None:
        result = debate.send(client, op)
        assert not result["ok"], result
        seen.add(result["error"])

    refuse("agent-0", b"junk")                                                   # malformed
    refuse("client-0", OpenTask(question="q"))                                   # unknown_agent
    refuse("agent-3", OpenTask(question="q"))                                    # missing_role
    refuse("agent-0", Status(task_id="t-0-0"))                                   # unknown_task
    refuse("agent-0", OpenTask(question="q", threshold=5))                       # bad_threshold
    refuse("agent-0", OpenTask(question="q", judge="nobody"))                    # unknown_judge
    task = debate.open(max_rounds=1, token_budget=30)
    refuse("agent-0", Contribute(task_id=task, round=1, position="x"))           # wrong_round
    refuse("agent-0", Contribute(task_id=task, round=0, position="x", tokens=11))
    proposal = debate.contribute("agent-0", task, "x", proposal=draft())["proposal_id"]
    refuse("agent-0", Contribute(task_id=task, round=0, position="x"))
    refuse("agent-3", CastVote(task_id=task, proposal_id=proposal, decision="approve"))
    refuse("agent-3", CastVote(task_id=task, proposal_id="p", decision="approve"))
    refuse("agent-0", Resolve(task_id=task, decision="reject"))                  # not_escalated
    debate.contribute("agent-1", task, "y", proposal=draft())
    debate.contribute("agent-2", task, "z")                                      # -> voting
    debate.vote("agent-1", task, proposal, "reject")
    refuse("agent-1", CastVote(task_id=task, proposal_id=proposal, decision="reject"))
    debate.vote("agent-2", task, proposal, "reject")                             # rejected
    refuse("agent-3", CastVote(task_id=task, proposal_id=proposal, decision="approve"))
    refuse("agent-1", Contribute(task_id=task, round=0, position="x"))           # task_closed
    other = debate.open(max_rounds=1)
    for agent in ("agent-0", "agent-1", "agent-2"):
        debate.contribute(agent, other)                                          # escalated
    refuse("agent-3", Resolve(task_id=other, decision="reject"))                 # not_resolver
    refuse("agent-0", CastVote(task_id=other, proposal_id="p", decision="approve",
                               audit=True))                                      # no_audit_pending
    seen.add("own_proposal")  # test_an_auditor_who_voted_in_the_debate_must_still_audit
    big = Debate()
    wide = big.open()
    for agent in big.agents:
        big.contribute(agent, wide, "x", argument="a" * MAX_ARGUMENT_LENGTH,
                       evidence=tuple(f"{i:03}" + "e" * (MAX_EVIDENCE_REF_LENGTH - 3)
                                      for i in range(MAX_EVIDENCE_REFS)))
    result = big.send("agent-0", Status(task_id=wide, round=0))
    assert result["error"] == "result_too_large"
    seen.add(result["error"])
    one = big.ok("agent-0", Status(task_id=wide, round=0, agent="agent-2"))
    assert [c["agent"] for c in one["round"]["contributions"]] == ["agent-2"]
    while debate.send("agent-0", OpenTask(question="q"))["ok"]:
        pass
    seen.add("ledger_full")
    assert debate.ledger.rejection_counts["ledger_full"] == 1
    # The commit book's refusals: test_the_commit_book_orders_one_submitter_and_one_result.
    assert seen == set(REJECTION_REASONS) - set(COMMIT_REFUSALS) - {"commit_book_full"}


def test_the_stored_bytes_bound_refuses_new_work_but_still_reads(monkeypatch):
    from bftdeliberate.deliberation import ledger as ledger_module

    debate = Debate()
    task = debate.open()
    stored = debate.ledger.snapshot()
    monkeypatch.setattr(ledger_module, "MAX_LEDGER_BYTES", len(encode_op(OpenTask(question="q"))) * 2)
    debate.refused("agent-0", Contribute(task_id=task, round=0, position="x" * 100,
                                         argument="y" * 200), "ledger_full")
    assert debate.ok("agent-0", Status(task_id=task))["task"]["task_id"] == task
    debate.tick()
    assert debate.ledger.snapshot() != stored  # only the rejection evidence grew


def test_agreement_cannot_rise_from_a_round_where_everyone_abstained():
    abstained = [{"agent": a, "position": None, "evidence": []} for a in ("a", "b", "c")]
    agreeing = [{"agent": a, "position": "ship", "evidence": ["r1"]} for a in ("a", "b", "c")]
    assert signals_at_close([agreeing, abstained, agreeing], 2) == []


def test_a_vote_declares_its_tokens_and_is_charged_up_to_what_remains():
    debate = Debate()
    task = debate.open(token_budget=400)  # 100 per agent
    proposal = debate.contribute("agent-0", task, "ship", proposal=draft(), tokens=60)[
        "proposal_id"]
    for agent in ("agent-1", "agent-2", "agent-3"):
        debate.contribute(agent, task, "ship")
    debate.ok("agent-0", CastVote(task_id=task, proposal_id=proposal, decision="approve",
                                  tokens=500))
    tokens = debate.status(task)["tokens"]
    assert tokens["by_agent"]["agent-0"] == 100 and tokens["used"] <= 400


def approved_task(debate: Debate, plan: tuple[dict[str, Any], ...] = PLAN) -> str:
    """An approved, unflagged task (distinct evidence per agent)."""
    task = debate.open()
    proposal = debate.contribute("agent-0", task, "ship", proposal=draft(plan),
                                 evidence=("ref:0",))["proposal_id"]
    for agent in ("agent-1", "agent-2", "agent-3"):
        debate.contribute(agent, task, "ship", evidence=(f"ref:{agent}",))
    for agent in ("agent-0", "agent-1", "agent-2"):
        debate.vote(agent, task, proposal)
    assert debate.ledger.commit_ready(task)
    return task


def committed(commit_id: str, keys: list[str]) -> CommitResult:
    return CommitResult(commit_id=commit_id, result="committed", steps=tuple(
        StepResult(index=i, idempotency_key=key, status="applied", attempts=1)
        for i, key in enumerate(keys)))


def test_the_commit_book_orders_one_submitter_and_one_result():
    from bftdeliberate.deliberation.ops import CommitDone, CommitIntent

    debate = Debate()
    undecided = debate.open()
    debate.refused("agent-0", CommitIntent(task_id=undecided), "not_approved")
    task = approved_task(debate)
    # Only the primary of the ordering view (member 0 in view 0) submits.
    debate.refused("agent-1", CommitIntent(task_id=task), "not_submitter")
    intent = debate.ok("agent-0", CommitIntent(task_id=task))
    assert intent["grant"] == "granted" and intent["takeover"] is False
    cid = intent["commit_id"]
    debate.refused("agent-0", CommitIntent(task_id=task), "duplicate_intent")
    assert debate.ledger.commits.duties("agent-0", 0, [task]) == [("execute", cid)]
    keys = [s["idempotency_key"] for s in debate.ledger.commits.status(cid)["intent"]["steps"]]
    debate.refused("agent-1", CommitDone(commit_id=cid, result=committed(cid, keys)),
                   "not_submitter")
    debate.refused("agent-0", CommitDone(commit_id=cid, result=committed(cid, keys[::-1])),
                   "result_mismatch")
    debate.refused("agent-0", CommitDone(commit_id="0" * 64, result=committed("0" * 64, keys)),
                   "unknown_commit")
    assert debate.ok("agent-0", CommitDone(commit_id=cid, result=committed(cid, keys)))[
        "result"] == "committed"
    debate.refused("agent-0", CommitDone(commit_id=cid, result=committed(cid, keys)),
                   "already_committed")
    debate.refused("agent-0", CommitIntent(task_id=task), "already_committed")
    assert debate.ledger.commits.duplicate_results == 1


def test_a_later_primary_takes_over_an_in_doubt_commit_and_resources_wait_in_log_order():
    from bftdeliberate.deliberation.ops import CommitDone, CommitIntent

    debate = Debate()
    first, second = approved_task(debate), approved_task(debate)
    one = debate.ok("agent-0", CommitIntent(task_id=first))["commit_id"]
    two = debate.ok("agent-0", CommitIntent(task_id=second))
    assert two["grant"] == "waiting"  # the same file: one commit at a time
    keys = [s["idempotency_key"] for s in debate.ledger.commits.status(two["commit_id"])[
        "intent"]["steps"]]
    debate.refused("agent-0", CommitDone(commit_id=two["commit_id"],
                                         result=committed(two["commit_id"], keys)), "not_granted")
    # agent-0 crashes; view 1's primary (agent-1) takes the in-doubt commit over.
    assert debate.ledger.commits.duties("agent-1", 1, [first, second]) == [
        ("intent", first), ("intent", second)]
    taken = debate.ok("agent-1", CommitIntent(task_id=first), view=1)
    assert taken["takeover"] is True and taken["commit_id"] == one
    one_keys = [s["idempotency_key"] for s in debate.ledger.commits.status(one)["intent"][
        "steps"]]
    debate.refused("agent-0", CommitDone(commit_id=one, result=committed(one, one_keys)),
                   "not_submitter", view=1)
    debate.ok("agent-1", CommitDone(commit_id=one, result=committed(one, one_keys)), view=1)
    assert debate.ledger.commits.status(two["commit_id"])["grant"] == "granted"
    assert debate.ledger.commits.grant_violations() == []
    # The book is replicated state: snapshot and restore keep it.
    other = Ledger(debate.committee)
    other.restore(debate.ledger.snapshot())
    assert other.digest() == debate.ledger.digest()
    assert other.commits.in_doubt() == [two["commit_id"]]
