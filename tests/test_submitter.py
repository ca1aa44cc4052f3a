"""The single submitter's sans-IO core (commit/submitter.py) against the real ledger: who
submits, what it asks for, the all-steps permission check, takeover after a crash, and
results that must reach the log. The ledger is fed ordered operations directly (test_ledger's
``Debate``); handler answers are given by hand, so every step reads like the protocol."""

from __future__ import annotations

import random

from test_ledger import START_MS, Debate, approved_task

from bftdeliberate.commit.executor import Compensate, QueryApplied, RunStep
from bftdeliberate.commit.handlers.base import denied
from bftdeliberate.commit.submitter import (
    BeginCommit,
    CallHandler,
    EndCommit,
    LogAttempt,
    OrderOp,
    Submitter,
    wal_progress,
)
from bftdeliberate.commit.types import StepOutcome
from bftdeliberate.deliberation.ops import CommitDone, CommitIntent, Tick

NOW = START_MS + 1_000  # the debates below run at agreed time START_MS
OK = StepOutcome(ok=True)
PLAN = ({"step": "read", "target": "file:src/foo.ts"},
        {"step": "patch", "target": "file:src/foo.ts", "patch_id": "patch-abc"},
        {"step": "patch", "target": "kv:flags/pool", "patch_id": "flag-off"})


def submitter(name: str, **kw) -> Submitter:
    return Submitter(name, rng=random.Random(7), **kw)


def kinds(effects) -> list[str]:
    return [type(e).__name__ for e in effects]


def order(debate: Debate, name: str, effect: OrderOp, view: int = 0) -> dict:
    return debate.send(name, effect.op, view=view)


def run_to_end(core: Submitter, effects, answer=lambda call: OK, now: int = NOW):
    """Answer every handler call with ``answer(call)`` until the commit ends; all effects."""
    seen = list(effects)
    pending = [e for e in effects if isinstance(e, CallHandler)]
    while pending:
        call = pending.pop(0)
        more = core.call_done(call.commit_id, call.call.call.index, call.call.attempt,
                              answer(call.call), now, call_id=call.call.call_id)
        seen += more
        pending += [e for e in more if isinstance(e, CallHandler)]
    return seen


def test_only_the_primary_with_the_submit_role_asks_once_per_view_then_executes_in_order():
    debate = Debate()
    task = approved_task(debate, PLAN)
    assert submitter("agent-1").poll(debate.ledger, 0, NOW) == []  # not the primary
    core = submitter("agent-0")
    first = core.poll(debate.ledger, 0, NOW)
    assert kinds(first) == ["OrderOp"] and first[0].op == CommitIntent(task_id=task)
    assert core.poll(debate.ledger, 0, NOW) == []  # asked once in this view
    intent = order(debate, "agent-0", first[0])
    assert intent["grant"] == "granted"
    core.op_settled(first[0].key, ordered=True)
    started = core.poll(debate.ledger, 0, NOW)
    assert kinds(started) == ["BeginCommit", "CallHandler"]
    assert started[0].intent.submitter == "agent-0" and not started[0].resumed
    assert isinstance(started[1].call, RunStep) and started[1].call.call.index == 0
    effects = run_to_end(core, started)
    calls = [e.call.call.index for e in effects if isinstance(e, CallHandler)]
    assert calls == [0, 1, 2]  # one call at a time, in plan order
    end = next(e for e in effects if isinstance(e, EndCommit))
    assert end.result.result == "committed"
    done = effects[-1]
    assert isinstance(done, OrderOp) and isinstance(done.op, CommitDone)
    assert not core.settled(debate.ledger)
    assert order(debate, "agent-0", done)["result"] == "committed"
    core.op_settled(done.key, ordered=True)
    assert core.settled(debate.ledger) and core.poll(debate.ledger, 0, NOW) == []


def test_a_step_outside_the_allow_list_stops_the_commit_before_anything_runs():
    debate = Debate()
    approved_task(debate, PLAN)
    core = submitter("agent-0", check=lambda call: denied("kv table 'flags' not allowed")
                     if call.resource.startswith("kv:") else None)
    intent = core.poll(debate.ledger, 0, NOW)[0]
    order(debate, "agent-0", intent)
    effects = core.poll(debate.ledger, 0, NOW)
    assert not any(isinstance(e, CallHandler) for e in effects)  # nothing executes
    check = next(e for e in effects if isinstance(e, LogAttempt)).attempt
    assert (check.action, check.index, check.error_code) == ("check", 2, "permission_denied")
    result = next(e for e in effects if isinstance(e, EndCommit)).result
    assert (result.result, result.failed_step) == ("permission_denied", 2)
    assert [s.status for s in result.steps] == ["not_run", "not_run", "failed"]
    assert order(debate, "agent-0", effects[-1])["result"] == "permission_denied"


def test_the_next_primary_takes_over_asks_what_was_applied_and_never_applies_twice():
    debate = Debate()
    task = approved_task(debate, PLAN)
    old = submitter("agent-0")
    order(debate, "agent-0", old.poll(debate.ledger, 0, NOW)[0])
    started = old.poll(debate.ledger, 0, NOW)
    # agent-0 applies steps 0 and 1; the effect of step 1 is in place when it crashes.
    step0 = old.call_done(started[1].commit_id, 0, 1, OK, NOW)
    assert isinstance(step0[-1], CallHandler) and step0[-1].call.call.index == 1
    applied = {step0[-1].call.call.idempotency_key}
    # View 1: agent-1 is the primary. It orders its own intent for the in-doubt commit.
    new = submitter("agent-1")
    asked = new.poll(debate.ledger, 1, NOW)
    assert kinds(asked) == ["OrderOp"] and asked[0].op.task_id == task
    assert order(debate, "agent-1", asked[0], view=1)["takeover"] is True
    resumed = new.poll(debate.ledger, 1, NOW)
    assert kinds(resumed) == ["BeginCommit", "CallHandler"] and resumed[0].resumed
    assert isinstance(resumed[1].call, QueryApplied)

    def handler(call):
        if isinstance(call, QueryApplied):
            return StepOutcome(ok=True, already_applied=call.call.idempotency_key in applied)
        assert isinstance(call, RunStep)
        assert call.call.idempotency_key not in applied, "a second effect"
        applied.add(call.call.idempotency_key)
        return OK
    effects = run_to_end(new, resumed, handler)
    result = next(e for e in effects if isinstance(e, EndCommit)).result
    assert result.result == "committed"
    assert [s.status for s in result.steps] == ["applied", "already_applied", "applied"]
    # The old submitter, back, abandons the commit: no further call for it; its result (had
    # it one) would be refused -- only the latest intent's submitter records the outcome.
    assert old.poll(debate.ledger, 1, NOW) == [] and old.stats["abandoned"] == 1
    assert old.call_done(started[1].commit_id, 1, 1, OK, NOW) == []
    assert order(debate, "agent-1", effects[-1], view=1)["result"] == "committed"
    stale = CommitDone(commit_id=result.commit_id, result=result)
    assert debate.send("agent-0", stale)["error"] == "already_committed"


def test_an_intent_that_was_not_ordered_is_asked_again_and_a_result_until_the_log_holds_it():
    debate = Debate()
    approved_task(debate, PLAN)
    core = submitter("agent-0")
    intent = core.poll(debate.ledger, 0, NOW)[0]
    core.op_settled(intent.key, ordered=False)  # the call timed out
    again = core.poll(debate.ledger, 0, NOW)
    assert kinds(again) == ["OrderOp"] and again[0].op == intent.op
    order(debate, "agent-0", again[0])
    core.op_settled(again[0].key, ordered=True)
    effects = run_to_end(core, core.poll(debate.ledger, 0, NOW))
    done = effects[-1]
    core.op_settled(done.key, ordered=False)
    resent = core.poll(debate.ledger, 0, NOW)
    assert resent == [OrderOp(done.key, done.op)]
    order(debate, "agent-0", resent[0])
    core.op_settled(done.key, ordered=True)
    assert core.poll(debate.ledger, 0, NOW) == [] and core.settled(debate.ledger)


def test_a_timed_out_call_is_retried_and_its_late_answer_ignored():
    debate = Debate()
    approved_task(debate, PLAN)
    core = submitter("agent-0")
    order(debate, "agent-0", core.poll(debate.ledger, 0, NOW)[0])
    started = core.poll(debate.ledger, 0, NOW)
    deadline = core.next_deadline_ms()
    assert deadline == NOW + started[0].intent.steps[0].timeout_ms
    timed_out = core.handle_timer(deadline)
    attempt = next(e for e in timed_out if isinstance(e, LogAttempt)).attempt
    assert (attempt.error_code, attempt.retry_reason) == ("timeout", "timeout")
    retry_at = core.next_deadline_ms()
    retry = core.handle_timer(retry_at)
    assert isinstance(retry[-1].call, RunStep) and retry[-1].call.attempt == 2
    # The first attempt's answer arrives now: ignored (attempt 1 is over).
    assert core.call_done(started[1].commit_id, 0, 1, OK, retry_at) == []


def test_a_restarted_submitter_resumes_from_what_its_wal_shows():
    debate = Debate()
    approved_task(debate, PLAN)
    first = submitter("agent-0")
    order(debate, "agent-0", first.poll(debate.ledger, 0, NOW)[0])
    records: list = []

    class Record:
        def __init__(self, type_, commit_id, fields):
            self.type, self.commit_id, self.fields = type_, commit_id, fields
    started = first.poll(debate.ledger, 0, NOW)
    commit_id = started[0].intent.commit_id
    records.append(Record("intent", commit_id, {}))
    for effect in first.call_done(commit_id, 0, 1, OK, NOW):
        if isinstance(effect, LogAttempt):
            records.append(Record("attempt", commit_id, effect.attempt.to_data()))
    assert wal_progress(records, commit_id) == {0: True}
    assert wal_progress(records, "0" * 64) is None
    # The process dies; a fresh core over the same WAL, still primary of view 0.
    again = submitter("agent-0", known_progress=lambda cid: wal_progress(records, cid))
    resumed = again.poll(debate.ledger, 0, NOW)
    assert kinds(resumed) == ["BeginCommit", "CallHandler"] and resumed[0].resumed
    assert isinstance(resumed[1].call, QueryApplied) and resumed[1].call.call.index == 1


def test_a_failed_step_rolls_back_the_completed_ones_in_reverse_order():
    debate = Debate()
    approved_task(debate, PLAN)
    core = submitter("agent-0")
    order(debate, "agent-0", core.poll(debate.ledger, 0, NOW)[0])

    def handler(call):
        if isinstance(call, RunStep) and call.call.index == 2:
            return StepOutcome(ok=False, error_code="permanent", detail="disk full")
        return OK
    effects = run_to_end(core, core.poll(debate.ledger, 0, NOW), handler)
    undone = [e.call.call.index for e in effects
              if isinstance(e, CallHandler) and isinstance(e.call, Compensate)]
    assert undone == [1, 0]
    result = next(e for e in effects if isinstance(e, EndCommit)).result
    assert (result.result, result.rollback.result, result.rollback.steps) == \
        ("rolled_back", "compensated", (1, 0))
    assert isinstance(effects[-1], OrderOp)
    assert isinstance(effects[0], BeginCommit)


def test_a_stalled_commit_gets_watchdog_ticks_so_a_dead_submitter_is_voted_out():
    debate = Debate()
    approved_task(debate, PLAN)
    primary = submitter("agent-0", stall_ms=1_000)
    order(debate, "agent-0", primary.poll(debate.ledger, 0, NOW)[0])
    primary.poll(debate.ledger, 0, NOW)  # executing: the primary does not watch itself
    at = debate.ledger.commits.status(debate.ledger.commits.in_doubt()[0])["intents"][0]
    watcher = submitter("agent-2", stall_ms=1_000)
    assert watcher.poll(debate.ledger, 0, at["at_ms"] + 999) == []
    assert watcher.next_deadline_ms() == at["at_ms"] + 1_000
    tick = watcher.poll(debate.ledger, 0, at["at_ms"] + 1_000)
    assert [e.op for e in tick] == [Tick()] and watcher.stats["watchdog_ticks"] == 1
    watcher.op_settled(tick[0].key, ordered=True)
    # A live primary orders the ticks and nothing changes: the interval doubles.
    assert watcher.poll(debate.ledger, 0, at["at_ms"] + 2_999) == []
    assert [e.op for e in watcher.poll(debate.ledger, 0, at["at_ms"] + 3_000)] == [Tick()]


def test_an_approved_task_without_an_intent_is_watched_too():
    debate = Debate()
    task = approved_task(debate, PLAN)
    decided = debate.status(task)["closed_ms"]
    # The primary (agent-0) died right after the approval: no intent will come.
    watcher = submitter("agent-2", stall_ms=1_000)
    assert watcher.poll(debate.ledger, 0, decided + 999) == []
    assert [e.op for e in watcher.poll(debate.ledger, 0, decided + 1_000)] == [Tick()]
    # The primary of the view itself does not watch what it owes: it orders the intent.
    primary = submitter("agent-0", stall_ms=1_000)
    assert [type(e.op) for e in primary.poll(debate.ledger, 0, decided + 1_000)] == [
        CommitIntent]
