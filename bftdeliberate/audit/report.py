"""``bftd audit report``: figures computed from audit events (DESIGN.md section 7).

:func:`audit_report` returns JSON-ready data:

* ``events``, ``by_layer``: how many events, per layer.
* ``commits``: distinct commit ids seen in the commit layer; ``commit_outcomes``: outcome
  events (``committed``, ``rolled_back``, ``failed``, ``permission_denied``, ``conflict``).
* ``failure_reasons``: ``error_code`` counts over failed outcomes (every outcome but
  ``committed``; a failure without a code counts as ``unknown``).
* ``rollback``: ``{"commits": K, "frequency": K / commits}``, K = commits with a rollback
  (a ``rolled_back`` outcome, a ``rollback_*`` event or a compensation call).
* ``conflicts``: ``{"count": C, "attempts": A, "rate": C / A}``: ``conflict`` outcomes over
  outcome events (each is one attempt to commit).
* ``duplicate_commits``: idempotency keys with more than one successful apply (``applied``,
  or a plain ``ok`` written by ``AuditEvent.from_attempt`` without a tag) -- computed from
  the events, never assumed; ``already_applied`` (the handler had the key, nothing was done
  again) is not a second apply. ``duplicate_keys`` lists them with their apply counts.
* ``failures_by_layer``: failure events per layer (:func:`is_failure`).
* ``attribution``: per commit, the chain proposer -> approvers (signed ``approve`` votes)
  -> submitter(s) -> auditors, joined on ``proposal_id`` with the discussion events.

Sans-IO: events in, data out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from bftdeliberate.commit.model import AuditEvent

__all__ = ["COMMIT_OUTCOMES", "FAILURE_RESULTS", "LAYERS", "audit_report", "is_failure"]

LAYERS = ("discussion", "commit", "consensus")
COMMIT_OUTCOMES = frozenset({"committed", "rolled_back", "failed", "permission_denied",
                             "conflict"})
#: ``result`` tags that are failures whatever their ``error_code``.
FAILURE_RESULTS = frozenset({
    "error", "failed", "rolled_back", "permission_denied", "conflict", "compensation_error",
    "query_error", "rollback_failed", "escalated", "view_change", "timeout"})
#: Results that mean an effect was applied (a second one for a key is a duplicate commit).
APPLY_RESULTS = frozenset({"applied", "ok"})
ROLLBACK_RESULTS = frozenset({"rolled_back", "rollback_compensated", "rollback_failed",
                              "compensated", "compensation_error"})


def is_failure(event: AuditEvent) -> bool:
    """A failure: an event with an ``error_code``, or a result of :data:`FAILURE_RESULTS`."""
    return event.error_code is not None or event.result in FAILURE_RESULTS


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def _unique(values: Iterable[str | None]) -> list[str]:
    return [v for v in dict.fromkeys(values) if v is not None]


def audit_report(events: Iterable[AuditEvent]) -> dict[str, Any]:
    """The report of ``events`` (module docstring)."""
    events = list(events)
    commit = [e for e in events if e.layer == "commit"]
    commits = _unique(e.commit_id for e in commit)
    outcomes = [e for e in commit if e.result in COMMIT_OUTCOMES]
    failed = [e for e in outcomes if e.result != "committed"]
    reasons = Counter(e.error_code or "unknown" for e in failed)
    rolled_back = _unique(e.commit_id for e in commit if e.result in ROLLBACK_RESULTS)
    conflicts = sum(e.result == "conflict" for e in outcomes)
    applies = Counter(e.idempotency_key for e in commit
                      if e.result in APPLY_RESULTS and e.idempotency_key is not None)
    duplicates = {key: count for key, count in sorted(applies.items()) if count > 1}
    return {
        "events": len(events),
        "by_layer": {layer: sum(e.layer == layer for e in events) for layer in LAYERS},
        "commits": len(commits),
        "commit_outcomes": len(outcomes),
        "failed_commits": len(failed),
        "failure_reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "rollback": {"commits": len(rolled_back), "frequency": _ratio(len(rolled_back),
                                                                      len(commits))},
        "conflicts": {"count": conflicts, "attempts": len(outcomes),
                      "rate": _ratio(conflicts, len(outcomes))},
        "duplicate_commits": len(duplicates),
        "duplicate_keys": [{"idempotency_key": k, "applies": n} for k, n in duplicates.items()],
        "failures_by_layer": {layer: sum(e.layer == layer and is_failure(e) for e in events)
                              for layer in LAYERS},
        "attribution": [_attribution(cid, events) for cid in commits],
    }


def _attribution(commit_id: str | None, events: list[AuditEvent]) -> dict[str, Any]:
    own = [e for e in events if e.layer == "commit" and e.commit_id == commit_id]
    proposal_id = next((e.proposal_id for e in own if e.proposal_id is not None), None)
    task_id = next((e.task_id for e in own if e.task_id is not None), None)
    talk = [e for e in events if e.layer == "discussion" and proposal_id is not None
            and e.proposal_id == proposal_id]
    outcome = next((e for e in reversed(own) if e.result in COMMIT_OUTCOMES), None)
    submitters = _unique(e.agent_id for e in own if e.role == "submitter")
    return {
        "commit_id": commit_id, "task_id": task_id, "proposal_id": proposal_id,
        "proposer": next((e.agent_id for e in talk if e.role == "proposer"), None),
        "approvers": _unique(e.agent_id for e in talk
                             if e.role == "voter" and e.result == "approve"),
        "submitter": (outcome.agent_id if outcome is not None
                      else submitters[-1] if submitters else None),
        "submitters": submitters,
        "auditors": [{"agent_id": e.agent_id, "decision": e.result}
                     for e in talk if e.role == "auditor"],
        "result": outcome.result if outcome is not None else "pending",
    }
