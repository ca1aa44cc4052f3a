"""The commit book: the replicated part of the commit layer (sans-IO, DESIGN.md section 6).

The deliberation ledger delegates two ordered operations here, so every honest replica agrees
on every commit's status (no state tearing):

* ``commit_intent(task_id)`` — before anything executes. Only the **single submitter** may
  send it: a member with the ``submit`` role that is the primary of the view in which the
  operation is ordered (``ctx.view``). The task must be approved and ``commit_ready`` (audit
  gate cleared). The book derives the :class:`ExecutionIntent` itself from the decided
  ``proposal.json`` (validated again by the proposal model at this commit point), so nothing
  the submitter claims about steps, keys or resources is trusted. The commit then asks for its
  resources in log order (:class:`ResourceGrants`, default one commit per resource): granted
  at once, or waiting until an earlier commit's result releases them.
  A commit with an intent and no result may be taken over by the primary of a *later* view
  (the old submitter crashed or was voted out): its intent is recorded too, and that new
  submitter first asks the handlers which idempotency keys were applied, then finishes.
* ``commit_result(commit_id, result)`` — after executing, from the submitter of the latest
  intent, for a granted commit without a result. The result's step keys must be the
  intent's. A second result is refused (``already_committed``) and counted: a Byzantine
  submitter cannot record two outcomes.

Refusals raise :class:`CommitRefused` with a reason from :data:`COMMIT_REFUSALS`; the ledger
turns them into its ordinary ``{"ok": False}`` results.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from bftdeliberate.commit.executor import ResourceGrants
from bftdeliberate.commit.model import CommitResult, ExecutionIntent, commit_id
from bftdeliberate.committee import Committee
from bftdeliberate.deliberation.proposal import Proposal, describe

#: Commits kept in all (bounded state; the ledger's own task limit bounds them too).
MAX_COMMITS = 4096
#: Intents one commit may collect through takeovers (each needs a later view).
MAX_INTENTS_PER_COMMIT = 64

COMMIT_REFUSALS = (
    "not_submitter",      # not the primary of this view, or not the submitter of the intent
    "not_approved",       # the task is not approved, or its audit gate is not cleared
    "already_committed",  # the commit has its result
    "duplicate_intent",   # an intent of this view (or a later one) exists
    "unknown_commit",
    "not_granted",        # a result for a commit still waiting for its resources
    "result_mismatch",    # the result's steps are not the intent's
    "commit_book_full",
)


class CommitRefused(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class CommitBook:
    """Every commit's intents, result and resource grant, in log order."""

    def __init__(self, committee: Committee, *, resource_limits: dict[str, int] | None = None
                 ) -> None:
        self.committee = committee
        self._commits: dict[str, dict[str, Any]] = {}
        self._by_task: dict[str, str] = {}
        self._grants = ResourceGrants(resource_limits, policy="queue")
        self.duplicate_results = 0

    # -- ordered operations ------------------------------------------------------------------

    def intent(self, *, task_id: str, proposal: Proposal, signer: str, view: int,
               now: int) -> dict[str, Any]:
        member = self.committee.member_named(signer)
        if member is None or "submit" not in member.roles:
            raise CommitRefused("not_submitter", f"{signer} lacks the 'submit' role")
        if self.committee.primary(view) != member.id:
            raise CommitRefused("not_submitter", f"{signer} is not the primary of view {view}")
        try:  # the commit point validates the plan again, whatever the ledger held
            proposal = Proposal.model_validate_json(proposal.to_json())
        except ValidationError as error:
            raise CommitRefused("not_approved", f"proposal: {describe(error)}") from None
        intent = ExecutionIntent.from_proposal(proposal, committee_digest=self.committee.digest,
                                               submitter=signer, view=view)
        record = self._commits.get(intent.commit_id)
        if record is not None:
            if record["result"] is not None:
                raise CommitRefused("already_committed", f"commit {intent.commit_id[:16]} "
                                    f"ended {record['result']['result']}")
            latest = record["intents"][-1]
            if view <= latest["view"]:
                raise CommitRefused("duplicate_intent", f"commit {intent.commit_id[:16]} has "
                                    f"an intent of view {latest['view']}")
            if len(record["intents"]) >= MAX_INTENTS_PER_COMMIT:
                raise CommitRefused("commit_book_full", "too many takeovers of one commit")
            record["intents"].append({"submitter": signer, "view": view, "at_ms": now})
            return {"commit_id": intent.commit_id, "grant": record["grant"], "takeover": True}
        if len(self._commits) >= MAX_COMMITS:
            raise CommitRefused("commit_book_full", f"{MAX_COMMITS} commits")
        grant = self._grants.request(intent.commit_id, intent.resource_targets)
        self._commits[intent.commit_id] = {
            "task_id": task_id, "intent": intent.to_data(), "grant": grant,
            "intents": [{"submitter": signer, "view": view, "at_ms": now}], "result": None}
        self._by_task[task_id] = intent.commit_id
        return {"commit_id": intent.commit_id, "grant": grant, "takeover": False}

    def result(self, *, commit_id: str, result: dict[str, Any], signer: str,
               now: int) -> dict[str, Any]:
        record = self._commits.get(commit_id)
        if record is None:
            raise CommitRefused("unknown_commit", f"no commit {commit_id[:16]!r}")
        if record["result"] is not None:
            self.duplicate_results += 1
            raise CommitRefused("already_committed", f"commit {commit_id[:16]} already ended "
                                f"{record['result']['result']}")
        if record["intents"][-1]["submitter"] != signer:
            raise CommitRefused("not_submitter", f"{signer} did not send the latest intent")
        if record["grant"] != "granted":
            raise CommitRefused("not_granted", f"commit {commit_id[:16]} is {record['grant']}")
        try:
            outcome = CommitResult.model_validate(result, strict=False)
        except ValidationError as error:
            raise CommitRefused("result_mismatch", describe(error)) from None
        intent_keys = [step["idempotency_key"] for step in record["intent"]["steps"]]
        if outcome.commit_id != commit_id or any(
                step.idempotency_key != intent_keys[step.index]
                if step.index < len(intent_keys) else True for step in outcome.steps):
            raise CommitRefused("result_mismatch", "the result's steps are not the intent's")
        record["result"] = outcome.to_data()
        record["result_at_ms"] = now
        for granted in self._grants.release(commit_id):
            self._commits[granted]["grant"] = "granted"
        return {"commit_id": commit_id, "result": outcome.result}

    # -- reads -------------------------------------------------------------------------------

    def commit_of(self, task_id: str) -> str | None:
        return self._by_task.get(task_id)

    def status(self, commit_id: str) -> dict[str, Any]:
        """The commit's intent, its submitters by view, grant and result (a copy)."""
        record = self._commits[commit_id]
        return {"commit_id": commit_id, "task_id": record["task_id"],
                "intent": record["intent"], "intents": [dict(i) for i in record["intents"]],
                "grant": record["grant"], "result": record["result"]}

    @property
    def commit_ids(self) -> list[str]:
        return list(self._commits)

    def in_doubt(self) -> list[str]:
        """Commits with an intent and no result, in log order."""
        return [cid for cid, record in self._commits.items() if record["result"] is None]

    def duties(self, member: str, view: int, ready_tasks: list[str]) -> list[tuple[str, str]]:
        """What ``member`` must do as the submitter of ``view`` (nothing unless it is that
        view's primary with the ``submit`` role): ``("intent", task_id)`` for a ready task
        without a commit or whose in-doubt commit an earlier view's submitter left, and
        ``("execute", commit_id)`` for a granted commit whose latest intent is its own in
        this view."""
        entry = self.committee.member_named(member)
        if entry is None or "submit" not in entry.roles or self.committee.primary(view) != \
                entry.id:
            return []
        owed: list[tuple[str, str]] = []
        for task_id in ready_tasks:
            cid = self._by_task.get(task_id)
            if cid is None:
                owed.append(("intent", task_id))
                continue
            record = self._commits[cid]
            if record["result"] is not None:
                continue
            latest = record["intents"][-1]
            if latest["view"] < view:
                owed.append(("intent", task_id))
            elif latest["submitter"] == member and record["grant"] == "granted":
                owed.append(("execute", cid))
        return owed

    def expected_commit_id(self, proposal_id: str) -> str:
        return commit_id(self.committee.digest, proposal_id)

    @property
    def conflicts(self) -> int:
        """Commits that had to wait for a resource held by another commit."""
        return self._grants.waits + self._grants.conflicts

    def grant_violations(self) -> list[str]:
        return self._grants.check()

    # -- state -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"commits": self._commits, "order": list(self._commits),
                "grants": self._grants.snapshot(), "duplicate_results": self.duplicate_results}

    def restore(self, data: dict[str, Any]) -> None:
        # Canonical CBOR sorts map keys: the log order of commits travels as a list.
        self._commits = {cid: data["commits"][cid] for cid in data["order"]}
        self._by_task = {record["task_id"]: cid for cid, record in self._commits.items()}
        self._grants = ResourceGrants.restore(data["grants"])
        self.duplicate_results = data["duplicate_results"]
