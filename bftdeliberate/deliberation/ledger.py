"""The deliberation ledger: a deterministic ``StateMachine`` for the PBFT core (DESIGN.md 5).

Every debate contribution and vote is a signed client request from an agent (a member's agent
signs under the member's name), ordered by PBFT, and applied here. Every rule is a pure
function of the ordered log and the agreed batch timestamps (``ctx.timestamp_ms``, assigned by
the primary and checked by backups within a skew bound), so every honest replica holds the
same transcript, decision and exit reason.

Task life cycle::

    open_task ─► debating ──(exit)──► voting ──(votes)──► approved | rejected
                    │ rounds 0..max-1     │ vote window up / deadline
                    └─(threshold)─► approved      └─► escalated ─(resolve)─► approved | rejected

* Round r is open until every member with the ``propose`` role contributed or abstained, or
  ``round_ms`` passed. Contributions of the open round are *held in the ledger*: the status and
  agent views reveal a round only once it closed, so round 0 is blind. (Against honest agents
  this is the whole point: they cannot anchor on each other. A Byzantine member can read its
  own replica, but it can always choose any position anyway, so hiding text from it buys no
  safety; commit-reveal would double round 0's latency for nothing.)
* A contribution may carry a proposal; it is revealed — and may be voted on — when its round
  closes. A proposal is approved with ``threshold`` distinct approvals from ``vote`` members,
  rejected once its rejections make that unreachable. Votes count as soon as they are ordered,
  also during the debate (convergence: ``threshold_reached``; the open round then closes, so
  the transcript is complete).
* The debate ends (exit reasons, checked in this order when a round closes):
  ``stop_condition`` (f+1 distinct agents raised one: at least one honest), ``positions_stable``
  (the same positions in two consecutive rounds), ``max_rounds``, ``budget_exhausted``; and at
  any time ``deadline``. Then open proposals go to a vote window of ``vote_ms``; no decision
  in it (or no proposal at all, or the deadline) escalates to the judge if configured, else to
  a human (``needs_human``), resolved by ``resolve``.
* Budget: a contribution declaring more tokens than the task's or the agent's remaining
  budget is rejected, so the budget is never overshot; an abstention's tokens are charged up
  to what remains (the tokens were spent; the agent still gets to leave the round).
* Roles come only from the genesis committee: ``open_task`` and ``contribute`` need
  ``propose``, ``vote`` needs ``vote``, ``resolve`` needs ``human`` (or being the task's judge).
* Groupthink (``groupthink.py``): an approved task with signals and ``require_audit`` is not
  ``commit_ready`` until f+1 members with the ``audit`` role (all eligible ones if genesis
  named fewer; never the author) approve the decided proposal in separate audit votes (an
  auditor needs no ``vote`` role for that vote); a resolution by a ``human`` member clears it,
  one by a judge without that role does not.

A rejected operation is a deterministic result ``{"ok": False, "error": REASON, "detail":
...}``, counted per reason and kept (bounded) as evidence in the replicated state.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from typing import Any

from bftdeliberate.commit.book import CommitBook, CommitRefused
from bftdeliberate.committee import Committee
from bftdeliberate.deliberation.debater import ContributionView, ProposalView, TaskView
from bftdeliberate.deliberation.groupthink import normal_position, signals_at_close
from bftdeliberate.deliberation.ops import (
    Abstain,
    CastVote,
    CommitDone,
    CommitIntent,
    Contribute,
    MalformedOperation,
    OpenTask,
    Resolve,
    Status,
    Tick,
    decode_op,
)
from bftdeliberate.deliberation.proposal import Proposal
from bftdeliberate.errors import DecodeError
from bftdeliberate.pbft.app import ExecutionContext
from bftdeliberate.wire import cbor
from bftdeliberate.wire.limits import MAX_RESULT_SIZE

#: Tasks not yet decided at once; a full ledger refuses new tasks (bounded state and work).
MAX_OPEN_TASKS = 64
#: Tasks kept in all (decided ones stay for audit and the commit layer).
MAX_TASKS = 4096
#: Accepted operation bytes the ledger stores in all: bounds the replicated state (and so
#: checkpoints and state transfer, which carry all of it) whatever the agents send. Decided
#: tasks are kept, not archived: a full ledger refuses new work until a new genesis.
MAX_LEDGER_BYTES = 64 * 1024 * 1024
#: Rejected operations kept as evidence (oldest dropped first); counts are never dropped.
MAX_REJECTION_LOG = 256
#: Characters of a rejected operation's detail kept in the evidence log.
MAX_DETAIL_LENGTH = 200

OPEN_STATES = frozenset({"debating", "voting"})
FINAL_STATES = frozenset({"approved", "rejected"})
#: Exit reasons of a debate.
EXIT_REASONS = ("threshold_reached", "stop_condition", "positions_stable", "max_rounds",
                "budget_exhausted", "deadline", "all_rejected")


class Rejected(Exception):
    """An operation refused by a ledger rule; becomes the ``{"ok": False}`` result."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _normal_position(position: str) -> str:
    # Positions compare case- and whitespace-insensitively ("Roll back" == "roll  back"); the
    # groupthink signals use the same rule (one definition, in groupthink).
    return normal_position(position)


def _result(**fields: Any) -> bytes:
    return cbor.encode({"ok": True, **fields})


class Ledger:
    """The replicated deliberation state of one committee."""

    def __init__(self, committee: Committee, *,
                 resource_limits: dict[str, int] | None = None) -> None:
        """``resource_limits``: commits allowed at once per resource (default 1 each); part
        of the replicated configuration, so equal at every member."""
        self.committee = committee
        members = committee.members
        self._roles = {m.name: frozenset(m.roles) for m in members}
        #: Members whose contributions a round waits for, and those whose votes count.
        self.contributors = tuple(sorted(m.name for m in members if "propose" in m.roles))
        self.voters = tuple(sorted(m.name for m in members if "vote" in m.roles))
        self._tasks: dict[str, dict[str, Any]] = {}
        self._open: list[str] = []  # undecided task ids, in opening order
        self._rejection_counts: Counter[str] = Counter()
        self._stored_bytes = 0
        #: The commit layer's replicated part: intents, results, resource grants.
        self.commits = CommitBook(committee, resource_limits=resource_limits)
        self._rejection_log: list[dict[str, Any]] = []

    # -- StateMachine ----------------------------------------------------------------------

    def apply(self, operation: bytes, ctx: ExecutionContext) -> bytes:
        now = ctx.timestamp_ms
        self._advance(now)
        try:
            op = decode_op(operation)
        except MalformedOperation as error:
            return self._reject(ctx, "?", Rejected("malformed", str(error)))
        stored = not isinstance(op, (Tick, Status))
        try:
            if stored and self._stored_bytes + len(operation) > MAX_LEDGER_BYTES:
                raise Rejected("ledger_full", f"the ledger holds {self._stored_bytes} bytes of "
                               f"operations (limit {MAX_LEDGER_BYTES})")
            result = self._dispatch(op, ctx.client, now, ctx)
        except Rejected as rejection:
            return self._reject(ctx, op.op, rejection)  # type: ignore[attr-defined]
        if stored:
            self._stored_bytes += len(operation)
        return result

    def snapshot(self) -> bytes:
        return cbor.encode({
            "tasks": self._tasks, "open": self._open,
            "rejection_counts": dict(self._rejection_counts),
            "rejection_log": self._rejection_log, "stored_bytes": self._stored_bytes,
            "commits": self.commits.snapshot(),
        })

    def restore(self, snapshot: bytes) -> None:
        data = cbor.decode(snapshot, max_size=len(snapshot))
        if type(data) is not dict or set(data) != {"tasks", "open", "rejection_counts",
                                                   "rejection_log", "stored_bytes",
                                                   "commits"}:
            raise DecodeError("not a deliberation ledger snapshot")
        self._tasks = data["tasks"]
        self._open = data["open"]
        self._rejection_counts = Counter(data["rejection_counts"])
        self._rejection_log = data["rejection_log"]
        self._stored_bytes = data["stored_bytes"]
        self.commits.restore(data["commits"])

    def digest(self) -> bytes:
        return hashlib.sha256(self.snapshot()).digest()

    # -- dispatch ----------------------------------------------------------------------------

    def _dispatch(self, op: Any, agent: str, now: int, ctx: ExecutionContext) -> bytes:
        if isinstance(op, Tick):
            return _result(now_ms=now)
        if isinstance(op, Status):
            return self._status_result(op)
        if agent not in self._roles:
            raise Rejected("unknown_agent", f"{agent!r} is not a committee member")
        if isinstance(op, OpenTask):
            return self._open_task(op, agent, now, f"t-{ctx.seq}-{ctx.index}")
        if isinstance(op, Contribute):
            return self._contribute(op, agent, now)
        if isinstance(op, Abstain):
            return self._abstain(op, agent, now)
        if isinstance(op, CastVote):
            return self._vote(op, agent, now)
        if isinstance(op, CommitIntent):
            return self._commit_intent(op, agent, now, ctx.view)
        if isinstance(op, CommitDone):
            try:
                return _result(**self.commits.result(commit_id=op.commit_id,
                                                     result=op.result.to_data(), signer=agent,
                                                     now=now))
            except CommitRefused as refused:
                raise Rejected(refused.reason, refused.detail) from None
        assert isinstance(op, Resolve)
        return self._resolve(op, agent, now)

    def _commit_intent(self, op: CommitIntent, agent: str, now: int, view: int) -> bytes:
        task = self._task(op.task_id)
        if not self.commit_ready(op.task_id):
            raise Rejected("not_approved", f"task {op.task_id} is {task['state']} and not "
                           "ready to commit")
        try:
            return _result(**self.commits.intent(
                task_id=op.task_id, proposal=self.proposal_document(op.task_id), signer=agent,
                view=view, now=now))
        except CommitRefused as refused:
            raise Rejected(refused.reason, refused.detail) from None

    def _reject(self, ctx: ExecutionContext, op_name: str, rejection: Rejected) -> bytes:
        self._rejection_counts[rejection.reason] += 1
        self._rejection_log.append({
            "seq": ctx.seq, "index": ctx.index, "agent": ctx.client, "op": op_name,
            "reason": rejection.reason, "detail": rejection.detail[:MAX_DETAIL_LENGTH]})
        del self._rejection_log[:-MAX_REJECTION_LOG]
        return cbor.encode({"ok": False, "error": rejection.reason,
                            "detail": rejection.detail[:MAX_DETAIL_LENGTH]})

    def _need_role(self, agent: str, role: str) -> None:
        if role not in self._roles[agent]:
            raise Rejected("missing_role", f"{agent} lacks the {role!r} role in the genesis "
                                           "committee")

    def _task(self, task_id: str) -> dict[str, Any]:
        task = self._tasks.get(task_id)
        if task is None:
            raise Rejected("unknown_task", f"no task {task_id!r}")
        return task

    # -- operations --------------------------------------------------------------------------

    def _open_task(self, op: OpenTask, agent: str, now: int, task_id: str) -> bytes:
        self._need_role(agent, "propose")
        minimum = self.committee.quorum
        threshold = minimum if op.threshold is None else op.threshold
        if not minimum <= threshold <= len(self.voters):
            raise Rejected("bad_threshold", f"threshold {threshold} is not in {minimum}..."
                           f"{len(self.voters)} (2f+1 .. voters)")
        if op.judge is not None and op.judge not in self._roles:
            raise Rejected("unknown_judge", f"judge {op.judge!r} is not a committee member")
        if len(self._open) >= MAX_OPEN_TASKS or len(self._tasks) >= MAX_TASKS:
            raise Rejected("ledger_full", f"{len(self._open)} open and {len(self._tasks)} "
                           f"tasks (limits {MAX_OPEN_TASKS} and {MAX_TASKS})")
        agent_budget = op.agent_token_budget
        if agent_budget is None:
            agent_budget = max(1, op.token_budget // max(1, len(self.contributors)))
        self._tasks[task_id] = {
            "task_id": task_id, "opener": agent, "opened_ms": now,
            "question": op.question, "context": op.context, "evidence": list(op.evidence),
            "max_rounds": op.max_rounds, "round_ms": op.round_ms, "vote_ms": op.vote_ms,
            "deadline_at_ms": now + op.deadline_ms, "token_budget": op.token_budget,
            "agent_token_budget": agent_budget, "threshold": threshold, "judge": op.judge,
            "require_audit": op.require_audit,
            "state": "debating", "round": 0, "round_started_ms": now,
            "rounds": [{"opened_ms": now, "closed_ms": None, "contributions": []}],
            "voting_started_ms": None, "proposals": [],
            "tokens_used": 0, "agent_tokens": {},
            "exit_reason": None, "escalated_to": None, "decided_proposal": None,
            "resolved_by": None, "resolution_notes": None, "closed_ms": None,
            "signals": [], "stop_conditions": [], "audits": [],
        }
        self._open.append(task_id)
        return _result(task_id=task_id)

    def _open_round(self, task: dict[str, Any], number: int) -> dict[str, Any]:
        if task["state"] != "debating":
            raise Rejected("task_closed", f"task {task['task_id']} is {task['state']}")
        if number != task["round"]:
            raise Rejected("wrong_round", f"round {number} is not the open round "
                           f"{task['round']}")
        return task["rounds"][number]

    def _joinable_round(self, task_id: str, number: int,
                        agent: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The task and its open round ``number``, which ``agent`` has not yet taken part in."""
        self._need_role(agent, "propose")
        task = self._task(task_id)
        round_ = self._open_round(task, number)
        if any(c["agent"] == agent for c in round_["contributions"]):
            raise Rejected("duplicate_contribution", f"{agent} already took part in round "
                           f"{number}")
        return task, round_

    def _contribute(self, op: Contribute, agent: str, now: int) -> bytes:
        task, round_ = self._joinable_round(op.task_id, op.round, agent)
        remaining = self._remaining(task, agent)
        if op.tokens > remaining:
            raise Rejected("budget_exceeded", f"declares {op.tokens} tokens; {remaining} remain")
        proposal_id = None
        if op.proposal is not None:
            proposal_id = f"{task['task_id']}.{agent}.r{op.round}"
            task["proposals"].append({
                "proposal_id": proposal_id, "author": agent, "round": op.round,
                "plan": [step.model_dump(exclude_none=True) for step in op.proposal.plan],
                "risks": list(op.proposal.risks),
                "stop_conditions": list(op.proposal.stop_conditions),
                "votes": [], "status": "open"})
        self._charge(task, agent, op.tokens)
        round_["contributions"].append({
            "agent": agent, "position": op.position, "argument": op.argument,
            "evidence": list(op.evidence), "confidence": op.confidence, "tokens": op.tokens,
            "proposal_id": proposal_id, "stop": op.stop, "at_ms": now})
        self._close_if_complete(task, now)
        return _result(task_id=task["task_id"], round=op.round, proposal_id=proposal_id)

    def _abstain(self, op: Abstain, agent: str, now: int) -> bytes:
        task, round_ = self._joinable_round(op.task_id, op.round, agent)
        charged = min(op.tokens, self._remaining(task, agent))
        self._charge(task, agent, charged)
        round_["contributions"].append({
            "agent": agent, "position": None, "argument": op.reason, "evidence": [],
            "confidence": 0, "tokens": charged, "proposal_id": None, "stop": None,
            "at_ms": now})
        self._close_if_complete(task, now)
        return _result(task_id=task["task_id"], round=op.round)

    def _vote(self, op: CastVote, agent: str, now: int) -> bytes:
        if op.audit:
            return self._audit(op, agent, now)
        self._need_role(agent, "vote")
        task = self._task(op.task_id)
        proposal = self._proposal(task, op.proposal_id)
        if any(v["agent"] == agent for v in proposal["votes"]):
            raise Rejected("duplicate_vote", f"{agent} already voted on {op.proposal_id}")
        if task["state"] not in OPEN_STATES:
            raise Rejected("task_closed", f"task {task['task_id']} is {task['state']}")
        if proposal["status"] != "open":
            raise Rejected("proposal_closed", f"{op.proposal_id} is {proposal['status']}")
        self._charge(task, agent, min(op.tokens, self._remaining(task, agent)))
        proposal["votes"].append({"agent": agent, "decision": op.decision, "notes": op.notes,
                                  "at_ms": now})
        self._count_votes(task, proposal, now)
        return _result(task_id=task["task_id"], proposal_id=op.proposal_id,
                       status=proposal["status"], state=task["state"])

    def _audit(self, op: CastVote, agent: str, now: int) -> bytes:
        # Audits are separate from debate votes: an auditor who also voted in the debate
        # looks again once the flags are known, and that second look is what clears the gate.
        self._need_role(agent, "audit")
        task = self._task(op.task_id)
        if not self._audit_pending(task) or op.proposal_id != task["decided_proposal"]:
            raise Rejected("no_audit_pending", f"task {task['task_id']} has no approved, "
                           f"flagged proposal {op.proposal_id!r} awaiting audit")
        if any(a["agent"] == agent for a in task["audits"]):
            raise Rejected("duplicate_vote", f"{agent} already audited {op.proposal_id}")
        if self._author(task, op.proposal_id) == agent:
            raise Rejected("own_proposal", f"{agent} wrote {op.proposal_id}; another auditor "
                           "must review it")
        self._charge(task, agent, min(op.tokens, self._remaining(task, agent)))
        task["audits"].append({"agent": agent, "decision": op.decision, "notes": op.notes,
                               "at_ms": now})
        return _result(task_id=task["task_id"], proposal_id=op.proposal_id,
                       commit_ready=self.commit_ready(task["task_id"]))

    def _proposal(self, task: dict[str, Any], proposal_id: str) -> dict[str, Any]:
        for proposal in task["proposals"]:
            if proposal["proposal_id"] == proposal_id:
                if task["rounds"][proposal["round"]]["closed_ms"] is None:
                    raise Rejected("proposal_not_revealed", f"{proposal_id}'s round is still "
                                   "open")
                return proposal
        raise Rejected("unknown_proposal", f"no proposal {proposal_id!r} in {task['task_id']}")

    def _count_votes(self, task: dict[str, Any], proposal: dict[str, Any], now: int) -> None:
        approvals = sum(v["decision"] == "approve" for v in proposal["votes"])
        rejections = len(proposal["votes"]) - approvals
        if approvals >= task["threshold"]:
            proposal["status"] = "approved"
            if task["state"] == "debating":
                task["exit_reason"] = "threshold_reached"
                # The debate ends mid-round: close that round (as the deadline does), or its
                # contributions would stay hidden from the transcript for ever.
                self._close_round(task, now, check_exits=False)
            self._decide(task, "approved", proposal["proposal_id"], now)
        elif rejections > len(self.voters) - task["threshold"]:
            proposal["status"] = "rejected"
            if task["state"] == "voting" and not self._open_proposals(task):
                self._decide(task, "rejected", None, now)

    def _resolve(self, op: Resolve, agent: str, now: int) -> bytes:
        task = self._task(op.task_id)
        if task["state"] != "escalated":
            raise Rejected("not_escalated", f"task {task['task_id']} is {task['state']}")
        # The judge by name; "human" in escalated_to names the role, never a member called so.
        if "human" not in self._roles[agent] and agent != task["judge"]:
            raise Rejected("not_resolver", f"{agent} is neither the judge nor a 'human' member")
        proposal_id = None
        if op.decision == "approve":
            if op.proposal_id is None:
                raise Rejected("unknown_proposal", "approve names the proposal_id it approves")
            proposal_id = self._proposal(task, op.proposal_id)["proposal_id"]
        task["resolved_by"] = agent
        task["resolution_notes"] = op.notes
        self._decide(task, "approved" if op.decision == "approve" else "rejected",
                     proposal_id, now)
        return _result(task_id=task["task_id"], state=task["state"])

    # -- time and exits ----------------------------------------------------------------------

    def _advance(self, now: int) -> None:
        """Apply every time rule due by agreed time ``now``, in opening order."""
        for task_id in list(self._open):
            task = self._tasks[task_id]
            if task["state"] in OPEN_STATES and now >= task["deadline_at_ms"]:
                if task["state"] == "debating":
                    self._close_round(task, now, check_exits=False)
                    task["exit_reason"] = "deadline"
                self._escalate(task, now)
                continue
            if (task["state"] == "debating"
                    and now >= task["round_started_ms"] + task["round_ms"]):
                self._close_round(task, now)
            if (task["state"] == "voting"
                    and now >= task["voting_started_ms"] + task["vote_ms"]):
                self._escalate(task, now)

    def next_deadline_ms(self) -> int | None:
        """Agreed time at which the next time rule fires (a ``tick`` then makes it happen)."""
        deadlines: list[int] = []
        for task_id in self._open:
            task = self._tasks[task_id]
            if task["state"] == "debating":
                deadlines.append(min(task["deadline_at_ms"],
                                     task["round_started_ms"] + task["round_ms"]))
            elif task["state"] == "voting":
                deadlines.append(min(task["deadline_at_ms"],
                                     task["voting_started_ms"] + task["vote_ms"]))
        return min(deadlines) if deadlines else None

    def _close_if_complete(self, task: dict[str, Any], now: int) -> None:
        round_ = task["rounds"][task["round"]]
        present = {c["agent"] for c in round_["contributions"]}
        if present >= set(self.contributors):
            self._close_round(task, now)

    def _close_round(self, task: dict[str, Any], now: int, *, check_exits: bool = True) -> None:
        number = task["round"]
        round_ = task["rounds"][number]
        round_["closed_ms"] = now
        rounds = [r["contributions"] for r in task["rounds"][: number + 1]]
        task["signals"].extend(signals_at_close(rounds, number))
        if not check_exits:
            return
        contributions = round_["contributions"]
        stops = sorted({c["stop"] for c in contributions if c["stop"] is not None})
        stoppers = {c["agent"] for c in contributions if c["stop"] is not None}
        reason = None
        if len(stoppers) >= self.committee.f + 1:
            task["stop_conditions"] = stops
            reason = "stop_condition"
        elif number >= 1 and self._positions(task, number) and (
                self._positions(task, number) == self._positions(task, number - 1)):
            reason = "positions_stable"
        elif number + 1 >= task["max_rounds"]:
            reason = "max_rounds"
        elif self._budget_exhausted(task):
            reason = "budget_exhausted"
        if reason is None:
            task["round"] = number + 1
            task["round_started_ms"] = now
            task["rounds"].append({"opened_ms": now, "closed_ms": None, "contributions": []})
        else:
            self._end_debate(task, reason, now)

    def _positions(self, task: dict[str, Any], number: int) -> dict[str, str]:
        return {c["agent"]: _normal_position(c["position"])
                for c in task["rounds"][number]["contributions"] if c["position"] is not None}

    def _end_debate(self, task: dict[str, Any], reason: str, now: int) -> None:
        task["exit_reason"] = reason
        if self._open_proposals(task):
            task["state"] = "voting"
            task["voting_started_ms"] = now
        elif task["proposals"]:
            self._decide(task, "rejected", None, now)
        else:
            self._escalate(task, now)

    def _open_proposals(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        return [p for p in task["proposals"] if p["status"] == "open"]

    def _escalate(self, task: dict[str, Any], now: int) -> None:
        task["state"] = "escalated"
        task["escalated_to"] = task["judge"] if task["judge"] is not None else "human"
        if task["task_id"] in self._open:
            self._open.remove(task["task_id"])

    def _decide(self, task: dict[str, Any], outcome: str, proposal_id: str | None,
                now: int) -> None:
        task["state"] = outcome
        task["decided_proposal"] = proposal_id
        task["closed_ms"] = now
        if task["task_id"] in self._open:
            self._open.remove(task["task_id"])

    # -- budget ------------------------------------------------------------------------------

    def _remaining(self, task: dict[str, Any], agent: str) -> int:
        own = task["agent_token_budget"] - task["agent_tokens"].get(agent, 0)
        return max(0, min(own, task["token_budget"] - task["tokens_used"]))

    def _charge(self, task: dict[str, Any], agent: str, tokens: int) -> None:
        task["tokens_used"] += tokens
        task["agent_tokens"][agent] = task["agent_tokens"].get(agent, 0) + tokens

    def _budget_exhausted(self, task: dict[str, Any]) -> bool:
        return all(self._remaining(task, agent) == 0 for agent in self.contributors)

    # -- audit gate --------------------------------------------------------------------------

    def _audit_pending(self, task: dict[str, Any]) -> bool:
        # A human's resolution is itself the human check; a judge is an agent (chosen by the
        # opener), so its approval of a flagged task still needs an auditor.
        human_resolved = (task["resolved_by"] is not None
                          and "human" in self._roles[task["resolved_by"]])
        return (task["state"] == "approved" and task["require_audit"] and bool(task["signals"])
                and not human_resolved
                and len(self._audit_approvals(task)) < self.audits_needed(task["task_id"]))

    def audits_needed(self, task_id: str) -> int:
        """Audit approvals that clear a flagged approval: f+1, so at least one comes from an
        honest auditor -- or every eligible auditor (``audit`` role, not the proposal's
        author) when genesis named fewer: that trust is then the committee's choice."""
        task = self._tasks[task_id]
        author = self._author(task, task["decided_proposal"])
        eligible = sum("audit" in roles and name != author for name, roles in self._roles.items())
        return max(1, min(self.committee.f + 1, eligible))

    @staticmethod
    def _author(task: dict[str, Any], proposal_id: str | None) -> str | None:
        return next((p["author"] for p in task["proposals"]
                     if p["proposal_id"] == proposal_id), None)

    def _audit_approvals(self, task: dict[str, Any]) -> list[str]:
        return sorted(a["agent"] for a in task["audits"] if a["decision"] == "approve")

    def commit_ready(self, task_id: str) -> bool:
        """An approved task whose groupthink flags (if any) an auditor cleared: it may enter
        the commit layer."""
        task = self._tasks.get(task_id)
        return task is not None and task["state"] == "approved" and not self._audit_pending(task)

    def ready_without_commit(self) -> list[tuple[str, int]]:
        """Commit-ready tasks no intent was ordered for yet, with the agreed time they were
        decided (the submitter watchdog's input)."""
        return [(task_id, task["closed_ms"] or task["opened_ms"])
                for task_id, task in self._tasks.items()
                if self.commits.commit_of(task_id) is None and self.commit_ready(task_id)]

    def commit_duties(self, member: str, view: int) -> list[tuple[str, str]]:
        """What ``member`` owes as the single submitter of ``view`` (``CommitBook.duties``
        over the commit-ready tasks, in log order)."""
        ready = [task_id for task_id in self._tasks if self.commit_ready(task_id)]
        return self.commits.duties(member, view, ready)

    # -- reads -------------------------------------------------------------------------------

    @property
    def task_ids(self) -> list[str]:
        return sorted(self._tasks)

    @property
    def rejection_counts(self) -> dict[str, int]:
        return dict(self._rejection_counts)

    @property
    def rejection_log(self) -> list[dict[str, Any]]:
        return [dict(entry) for entry in self._rejection_log]  # copies: reads never alias state

    def decision(self, task_id: str) -> str | None:
        """``approved``, ``rejected``, ``escalated``, or None while the debate runs."""
        task = self._tasks.get(task_id)
        if task is None or task["state"] in OPEN_STATES:
            return None
        return task["state"]

    def task_status(self, task_id: str, *, reveal_open_round: bool = False) -> dict[str, Any]:
        """The whole task as JSON-ready data: transcript by round (the open round's content
        hidden unless ``reveal_open_round``), proposals with signed votes, decision, exit
        reason, tokens and groupthink flags. KeyError for an unknown task."""
        task = self._tasks[task_id]
        rounds = []
        for number, round_ in enumerate(task["rounds"]):
            revealed = round_["closed_ms"] is not None or reveal_open_round
            rounds.append({
                "round": number, "opened_ms": round_["opened_ms"],
                "closed_ms": round_["closed_ms"],
                "participants": [c["agent"] for c in round_["contributions"]],
                "contributions": (copy.deepcopy(round_["contributions"]) if revealed
                                  else None)})
        # Deep copies: a caller editing the returned data must not edit the replicated state.
        proposals = [
            {**copy.deepcopy({k: v for k, v in p.items() if k != "votes"}),
             "votes": [dict(v) for v in p["votes"]],
             "approvals": sorted(v["agent"] for v in p["votes"] if v["decision"] == "approve"),
             "rejections": sorted(v["agent"] for v in p["votes"] if v["decision"] == "reject")}
            for p in task["proposals"]
            if task["rounds"][p["round"]]["closed_ms"] is not None or reveal_open_round]
        decision = None if task["state"] in OPEN_STATES else task["state"]
        return {
            "task_id": task_id, "opener": task["opener"], "question": task["question"],
            "context": task["context"], "evidence": list(task["evidence"]),
            "state": task["state"], "decision": decision, "exit_reason": task["exit_reason"],
            "escalated_to": task["escalated_to"], "resolved_by": task["resolved_by"],
            "decided_proposal": task["decided_proposal"],
            "threshold": task["threshold"], "voters": len(self.voters),
            "round": task["round"] if task["state"] == "debating" else None,
            "rounds_used": sum(r["closed_ms"] is not None for r in task["rounds"]),
            "max_rounds": task["max_rounds"], "opened_ms": task["opened_ms"],
            "deadline_at_ms": task["deadline_at_ms"], "closed_ms": task["closed_ms"],
            "tokens": {"used": task["tokens_used"], "budget": task["token_budget"],
                       "agent_budget": task["agent_token_budget"],
                       "by_agent": dict(sorted(task["agent_tokens"].items()))},
            "groupthink": {"flagged": bool(task["signals"]),
                           "signals": [dict(s) for s in task["signals"]],
                           "require_audit": task["require_audit"],
                           "audit_approvals": self._audit_approvals(task),
                           "audits_needed": self.audits_needed(task_id),
                           "audits": [dict(a) for a in task["audits"]],
                           "commit_ready": self.commit_ready(task_id)},
            "stop_conditions": list(task["stop_conditions"]),
            "rounds": rounds, "proposals": proposals,
            "commit": self._commit_summary(task_id),
        }

    def _commit_summary(self, task_id: str) -> dict[str, Any] | None:
        """The task's commit in brief: who submitted in which view, the grant and the
        result with each step's status (None before an intent)."""
        commit_id = self.commits.commit_of(task_id)
        if commit_id is None:
            return None
        status = self.commits.status(commit_id)
        result = status["result"]
        return {"commit_id": commit_id, "grant": status["grant"],
                "submitters": [{"submitter": i["submitter"], "view": i["view"]}
                               for i in status["intents"]],
                "resource_targets": list(status["intent"]["resource_targets"]),
                "result": None if result is None else result["result"],
                "error_code": None if result is None else result.get("error_code"),
                "steps": None if result is None else [
                    {"index": step["index"], "status": step["status"],
                     "attempts": step["attempts"]} for step in result["steps"]]}

    def _status_result(self, op: Status) -> bytes:
        if op.task_id not in self._tasks:
            raise Rejected("unknown_task", f"no task {op.task_id!r}")
        status = self.task_status(op.task_id)
        if op.round is None:
            if op.agent is not None:
                raise Rejected("wrong_round", "a status read of one agent names its round")
            for round_ in status["rounds"]:
                round_["contributions"] = None  # fetched one round at a time
            body = {"task": status}
        else:
            if op.round >= len(status["rounds"]):
                raise Rejected("wrong_round", f"task {op.task_id} has no round {op.round}")
            round_ = status["rounds"][op.round]
            if op.agent is not None and round_["contributions"] is not None:
                round_["contributions"] = [c for c in round_["contributions"]
                                           if c["agent"] == op.agent]
            body = {"round": round_}
        data = _result(**body)
        if len(data) > MAX_RESULT_SIZE:
            raise Rejected("result_too_large", f"status is {len(data)} bytes (limit "
                           f"{MAX_RESULT_SIZE}); ask for one round, then one agent")
        return data

    def proposal_document(self, task_id: str, proposal_id: str | None = None) -> Proposal:
        """The ``proposal.json`` of a proposal (default: the decided one) with its signed votes
        and the decision, validated by the proposal model."""
        task = self._tasks[task_id]
        wanted = proposal_id or task["decided_proposal"]
        proposal = next((p for p in task["proposals"] if p["proposal_id"] == wanted), None)
        if proposal is None:
            raise KeyError(f"task {task_id} has no proposal {wanted!r}" if wanted is not None
                           else f"task {task_id} has no decided proposal")
        state = task["state"]
        if wanted == task["decided_proposal"] and state == "approved":
            # Checked first: a resolver may approve a proposal the votes had rejected.
            result = "approved"
        elif proposal["status"] in ("approved", "rejected"):
            result = proposal["status"]
        else:
            # Still open: not chosen in a decided task (rejected), undecided otherwise.
            result = "rejected" if state in FINAL_STATES else "escalated"
        return Proposal.model_validate_json(json.dumps(
            {"proposal_id": proposal["proposal_id"], "task_id": task_id,
             "plan": proposal["plan"], "risks": proposal["risks"],
             "stop_conditions": proposal["stop_conditions"],
             "votes": [{"agent": v["agent"], "decision": v["decision"], "notes": v["notes"]}
                       for v in proposal["votes"]],
             "decision": {"threshold": f"{task['threshold']}/{len(self.voters)}",
                          "result": result}}))

    def view_for(self, task_id: str, agent: str) -> TaskView:
        """What ``agent``'s debater may see of a task (closed rounds only)."""
        task = self._tasks[task_id]
        transcript = tuple(
            ContributionView(agent=c["agent"], round=number, position=c["position"],
                             argument=c["argument"], evidence=tuple(c["evidence"]),
                             confidence=c["confidence"], tokens=c["tokens"],
                             proposal_id=c["proposal_id"], stop=c["stop"])
            for number, round_ in enumerate(task["rounds"]) if round_["closed_ms"] is not None
            for c in round_["contributions"])
        proposals = tuple(
            ProposalView(proposal_id=p["proposal_id"], author=p["author"], round=p["round"],
                         plan=tuple(dict(step) for step in p["plan"]),  # copies
                         risks=tuple(p["risks"]),
                         stop_conditions=tuple(p["stop_conditions"]),
                         approvals=tuple(v["agent"] for v in p["votes"]
                                         if v["decision"] == "approve"),
                         rejections=tuple(v["agent"] for v in p["votes"]
                                          if v["decision"] == "reject"),
                         status=p["status"])
            for p in task["proposals"] if task["rounds"][p["round"]]["closed_ms"] is not None)
        voted = frozenset(p["proposal_id"] for p in task["proposals"]
                          if any(v["agent"] == agent for v in p["votes"]))
        return TaskView(
            task_id=task_id, agent=agent, question=task["question"], context=task["context"],
            evidence=tuple(task["evidence"]), state=task["state"],
            round=task["round"] if task["state"] == "debating" else None,
            max_rounds=task["max_rounds"], transcript=transcript, proposals=proposals,
            tokens_remaining=self._remaining(task, agent) if agent in self._roles else 0,
            voted=voted)

    def duties(self, agent: str) -> list[tuple[str, str, Any]]:
        """What ``agent`` still owes, in task order: ``("contribute", task_id, round)`` and
        ``("vote", task_id, proposal_id)``; the agent loop asks its debater for each."""
        roles = self._roles.get(agent, frozenset())
        owed: list[tuple[str, str, Any]] = []
        for task_id in self._open:
            task = self._tasks[task_id]
            if task["state"] == "debating" and "propose" in roles:
                round_ = task["rounds"][task["round"]]
                if all(c["agent"] != agent for c in round_["contributions"]):
                    owed.append(("contribute", task_id, task["round"]))
            if "vote" in roles:
                for proposal in task["proposals"]:
                    if (proposal["status"] == "open"
                            and task["rounds"][proposal["round"]]["closed_ms"] is not None
                            and all(v["agent"] != agent for v in proposal["votes"])):
                        owed.append(("vote", task_id, proposal["proposal_id"]))
        for task_id in sorted(self._tasks):
            task = self._tasks[task_id]
            if ("audit" in roles and self._audit_pending(task)
                    and all(a["agent"] != agent for a in task["audits"])
                    and self._author(task, task["decided_proposal"]) != agent):
                owed.append(("audit", task_id, task["decided_proposal"]))
        return owed


