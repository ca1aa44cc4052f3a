"""The sans-IO commit core: keys, records, the executor's rules and the resource limiter.

A tiny in-test driver plays the handlers: per (action, step) scripted outcomes and an
idempotent fake resource that counts effects per idempotency key."""

from __future__ import annotations

import json
import random
import re
from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bftdeliberate.commit.executor import (
    AttemptRecord,
    CommitExecutor,
    Compensate,
    Finished,
    QueryApplied,
    ResourceGrants,
    RetryPolicy,
    RunStep,
)
from bftdeliberate.commit.model import (
    DEFAULT_STEP_TIMEOUT_MS,
    AuditEvent,
    CommitRecord,
    CommitResult,
    ExecutionIntent,
    RecordSignature,
    StepAttempt,
    commit_id,
    commit_schemas,
    idempotency_key,
    resource_of,
)
from bftdeliberate.commit.types import StepOutcome
from bftdeliberate.deliberation.proposal import PlanStep, parse_proposal
from bftdeliberate.wire import cbor

ROOT = Path(__file__).resolve().parent.parent
SEED = parse_proposal((ROOT / "tests/fixtures/proposal-seed.json").read_text())
DIGEST = bytes(range(32))
OK = StepOutcome(ok=True)
#: Scripted: the handler applies the effect but its answer is lost (the call times out).
APPLIED_THEN_LOST = "applied-then-lost"
#: Scripted: no answer at all, nothing applied.
LOST = "lost"
DESIGN_COMMIT_RECORD = ["commit_id", "proposal_id", "task_id", "idempotency_key", "submitter",
                        "view", "resource_targets", "attempts", "result", "rollback",
                        "signatures"]
DESIGN_RECORD_ATTEMPT = ["attempt", "started", "latency_ms", "result", "error_code",
                         "retry_reason"]
DESIGN_AUDIT = ["task_id", "proposal_id", "commit_id", "agent_id", "role", "idempotency_key",
                "attempt", "retry_reason", "timeout_ms", "latency_ms", "resource_targets",
                "result", "error_code", "layer", "ts"]


def fail(code: str) -> StepOutcome:
    return StepOutcome(ok=False, error_code=code, detail=f"scripted {code}")


def intent(submitter: str = "A", view: int = 0, proposal=SEED) -> ExecutionIntent:
    return ExecutionIntent.from_proposal(proposal, committee_digest=DIGEST, submitter=submitter,
                                         view=view)


@dataclass
class FakeHandlers:
    """Idempotent fake resource: ``effects`` counts real effects per key; ``applied`` is the
    set of keys currently applied (compensation removes a key)."""

    script: dict[tuple[str, int], list] = field(default_factory=dict)
    applied: set[str] = field(default_factory=set)
    effects: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)

    def call(self, action: str, call) -> StepOutcome | None:
        self.calls.append((action, call.index))
        queue = self.script.get((action, call.index))
        scripted = queue.pop(0) if queue else OK
        key = call.idempotency_key
        if scripted == LOST:
            return None
        if isinstance(scripted, StepOutcome) and not scripted.ok:
            return scripted
        if action == "query":
            return StepOutcome(ok=True, already_applied=key in self.applied)
        if action == "compensate":
            self.applied.discard(key)
            return None if scripted == APPLIED_THEN_LOST else OK
        if key in self.applied:
            return StepOutcome(ok=True, already_applied=True)
        self.applied.add(key)
        self.effects[key] = self.effects.get(key, 0) + 1
        return None if scripted == APPLIED_THEN_LOST else OK


@dataclass
class Run:
    trace: list = field(default_factory=list)
    records: list[StepAttempt] = field(default_factory=list)
    result: CommitResult | None = None
    now: int = 0

    def calls(self, kind=(RunStep, Compensate, QueryApplied)):
        return [(type(e).__name__, e.call.index, e.attempt) for e in self.trace
                if isinstance(e, kind)]


def drive(executor: CommitExecutor, handlers: FakeHandlers, *, resume: dict | None = None,
          now: int = 0, crash_after_effect: tuple[str, int] | None = None) -> Run:
    """Perform the executor's effects until it finishes. ``crash_after_effect`` stops the
    run right after the handler performed that call (the submitter dies before hearing)."""
    run = Run(now=now)
    pending = deque(executor.start(now) if resume is None else executor.resume(resume, now))
    for _ in range(10_000):
        while pending:
            effect = pending.popleft()
            run.trace.append(effect)
            if isinstance(effect, (RunStep, Compensate, QueryApplied)):
                action = {RunStep: "apply", Compensate: "compensate",
                          QueryApplied: "query"}[type(effect)]
                outcome = handlers.call(action, effect.call)
                if crash_after_effect == (action, effect.call.index):
                    return run
                if outcome is not None:
                    run.now += 1
                    pending.extend(executor.step_done(effect.call.index, outcome, run.now,
                                                      attempt=effect.attempt))
            elif isinstance(effect, AttemptRecord):
                run.records.append(effect.attempt)
            elif isinstance(effect, Finished):
                run.result = effect.result
        if executor.done:
            assert executor.next_deadline_ms() is None
            return run
        deadline = executor.next_deadline_ms()
        assert deadline is not None, "stuck: nothing in flight and no timer"
        run.now = max(run.now, deadline)
        pending.extend(executor.handle_timer(run.now))
    raise AssertionError("the executor did not finish")


def executor(policy: RetryPolicy | None = None, seed: int = 1, **intent_args) -> CommitExecutor:
    return CommitExecutor(intent(**intent_args), rng=random.Random(seed),
                          policy=policy or RetryPolicy())


# -- the executor ---------------------------------------------------------------------------------

def test_happy_path_runs_the_steps_in_order_once_and_commits():
    handlers = FakeHandlers()
    run = drive(executor(), handlers)
    assert run.calls() == [("RunStep", 0, 1), ("RunStep", 1, 1), ("RunStep", 2, 1)]
    assert run.result.result == "committed"
    assert [s.status for s in run.result.steps] == ["applied"] * 3
    assert run.result.rollback.result == "not_needed" and run.result.failed_step is None
    assert isinstance(run.trace[-1], Finished)
    assert sorted(handlers.effects.values()) == [1, 1, 1]
    assert [(r.index, r.result, r.attempt) for r in run.records] == [(0, "ok", 1), (1, "ok", 1),
                                                                     (2, "ok", 1)]
    # The step's own timeout; the default when the plan gives none.
    calls = [e.call for e in run.trace if isinstance(e, RunStep)]
    assert [c.timeout_ms for c in calls] == [DEFAULT_STEP_TIMEOUT_MS] * 2 + [600000]
    assert calls[2].resource == "command:npm" and calls[1].resource == "file:src/foo.ts"
    assert calls[1].step == {"step": "patch", "target": "file:src/foo.ts", "patch_id": "patch-abc"}


@pytest.mark.parametrize("jitter", ["full", "equal"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_retry_storm_is_bounded_with_growing_jittered_backoff(jitter, seed):
    policy = RetryPolicy(max_attempts=6, base_backoff_ms=100, max_backoff_ms=1_000, jitter=jitter)
    handlers = FakeHandlers(script={("apply", 1): [fail("transient")] * 100})
    ex = executor(policy, seed)
    run = drive(ex, handlers)
    assert [c for c in run.calls() if c[1] == 1] == [("RunStep", 1, k) for k in range(1, 7)]
    step1 = [r for r in run.records if r.index == 1 and r.action == "apply"]
    assert [r.retry_reason for r in step1] == ["transient"] * 5 + [None]
    backoffs = [b.started_ms - (a.started_ms + a.latency_ms) for a, b in pairwise(step1)]
    for retry, backoff in enumerate(backoffs, start=1):
        low, high = policy.backoff_bounds(retry)
        assert low <= backoff <= high
    caps = [policy.backoff_bounds(k)[1] for k in range(1, 6)]
    assert caps == [100, 200, 400, 800, 1000]  # exponential, capped
    if jitter == "equal":
        assert backoffs == sorted(backoffs)  # each draw is at least half its growing cap
    assert ex.retries == 5
    assert run.result.result == "rolled_back" and run.result.error_code == "transient"
    assert run.result.steps[1].attempts == 6 and run.result.steps[1].status == "failed"
    assert run.calls(Compensate) == [("Compensate", 0, 1)]
    assert handlers.applied == set()


def test_the_same_seed_gives_the_same_run():
    script = {("apply", 1): [fail("transient")] * 2, ("apply", 2): [LOST]}
    runs = [drive(executor(seed=7), FakeHandlers(script={k: list(v) for k, v in script.items()}))
            for _ in range(2)]
    assert runs[0].records == runs[1].records and runs[0].now == runs[1].now


def test_a_permanent_error_rolls_back_completed_steps_in_reverse_order():
    handlers = FakeHandlers(script={("apply", 2): [fail("test_failed")]})
    run = drive(executor(), handlers)
    assert run.calls() == [("RunStep", 0, 1), ("RunStep", 1, 1), ("RunStep", 2, 1),
                           ("Compensate", 1, 1), ("Compensate", 0, 1)]
    result = run.result
    assert result.result == "rolled_back"
    assert result.failed_step == 2 and result.error_code == "test_failed"
    assert result.rollback.steps == (1, 0) and result.rollback.result == "compensated"
    assert [s.status for s in result.steps] == ["applied", "applied", "failed"]
    assert handlers.applied == set()  # back in the prior state


def test_a_failed_compensation_ends_failed_and_names_the_step():
    handlers = FakeHandlers(script={("apply", 2): [fail("permanent")],
                                    ("compensate", 1): [fail("permanent")]})
    run = drive(executor(), handlers)
    assert run.result.result == "failed"
    assert run.result.rollback.result == "failed" and run.result.rollback.failed_step == 1
    assert run.result.rollback.error_code == "permanent"
    assert run.calls(Compensate) == [("Compensate", 1, 1)]


def test_a_compensation_is_retried_on_a_retryable_error():
    handlers = FakeHandlers(script={("apply", 1): [fail("permanent")],
                                    ("compensate", 0): [fail("transient")]})
    run = drive(executor(), handlers)
    assert run.calls(Compensate) == [("Compensate", 0, 1), ("Compensate", 0, 2)]
    assert run.result.result == "rolled_back" and run.result.rollback.steps == (0,)


def test_a_timeout_is_retried_and_the_effect_happens_once():
    handlers = FakeHandlers(script={("apply", 1): [APPLIED_THEN_LOST]})
    ex = executor()
    run = drive(ex, handlers)
    assert run.result.result == "committed"
    assert ex.timeouts == 1
    timed_out = run.records[1]
    assert (timed_out.index, timed_out.error_code, timed_out.retry_reason) == (1, "timeout",
                                                                               "timeout")
    assert timed_out.latency_ms == timed_out.timeout_ms == DEFAULT_STEP_TIMEOUT_MS
    assert run.records[2].already_applied and run.result.steps[1].status == "already_applied"
    assert set(handlers.effects.values()) == {1}


def test_an_in_doubt_step_is_compensated_when_its_retries_time_out():
    handlers = FakeHandlers(script={("apply", 1): [APPLIED_THEN_LOST, LOST, LOST]})
    run = drive(executor(), handlers)
    assert run.result.result == "rolled_back" and run.result.error_code == "timeout"
    assert run.calls(Compensate) == [("Compensate", 1, 1), ("Compensate", 0, 1)]
    assert handlers.applied == set()


def test_a_late_answer_after_a_timeout_is_ignored_and_counted():
    ex = executor()
    [first] = ex.start(0)
    assert first == RunStep(first.call, 1, call_id=1)
    assert ex.next_deadline_ms() == DEFAULT_STEP_TIMEOUT_MS
    assert ex.handle_timer(DEFAULT_STEP_TIMEOUT_MS - 1) == []
    [record] = ex.handle_timer(DEFAULT_STEP_TIMEOUT_MS)
    assert record.attempt.error_code == "timeout"
    # The answer of the timed-out attempt arrives during the backoff, then after the retry.
    assert ex.step_done(0, OK, DEFAULT_STEP_TIMEOUT_MS + 1) == []
    [retry] = ex.handle_timer(ex.next_deadline_ms())
    assert retry == RunStep(first.call, 2, call_id=2)
    assert ex.step_done(0, OK, ex.next_deadline_ms() - 1, attempt=1) == []
    assert ex.step_done(1, OK, ex.next_deadline_ms() - 1) == []  # not the step in flight
    assert ex.step_done(0, OK, ex.next_deadline_ms() - 1, call_id=1) == []  # an old call
    assert ex.late_results == 4
    effects = ex.step_done(0, OK, ex.next_deadline_ms() - 1, attempt=2, call_id=2)
    assert [type(e) for e in effects] == [AttemptRecord, RunStep]


def test_a_late_apply_answer_is_not_taken_for_the_compensation_that_followed():
    # Step 1's apply times out for good (one attempt), so step 1 (in doubt) and step 0 are
    # compensated; the timed-out apply's answer arrives while step 1's compensation -- also
    # attempt 1 of its call -- is in flight: only the call id tells them apart.
    ex = executor(policy=RetryPolicy(max_attempts=1))
    [run0] = ex.start(0)
    [_, run1] = ex.step_done(0, OK, 1, call_id=run0.call_id)
    [_, compensate1] = ex.handle_timer(ex.next_deadline_ms())
    assert isinstance(compensate1, Compensate) and compensate1.call.index == 1
    assert compensate1.attempt == run1.attempt == 1 and compensate1.call_id != run1.call_id
    assert ex.step_done(1, OK, 10, attempt=1, call_id=run1.call_id) == []
    [_, compensate0] = ex.step_done(1, OK, 11, call_id=compensate1.call_id)
    assert compensate0.call.index == 0


def test_a_step_whose_earlier_apply_timed_out_is_compensated_when_its_retry_fails():
    # The first apply of step 0 timed out (it may have taken effect), the retry fails for
    # good: step 0 is in doubt and is compensated although its last attempt did not time out.
    ex = executor(policy=RetryPolicy(max_attempts=2, base_backoff_ms=0, max_backoff_ms=0))
    ex.start(0)
    ex.handle_timer(ex.next_deadline_ms())            # attempt 1: timeout
    [retry] = ex.handle_timer(ex.next_deadline_ms())  # attempt 2 issued
    effects = ex.step_done(0, fail("permanent"), 5, call_id=retry.call_id)
    assert isinstance(effects[-1], Compensate) and effects[-1].call.index == 0


def test_a_takeover_that_fails_compensates_every_step_not_known_unapplied():
    # Resumed with nothing known: step 0 is found applied, the query of step 1 fails for
    # good. The crashed submitter may have applied 1 and 2 as well: 2, 1 and 0 are
    # compensated, last first.
    ex = executor(policy=RetryPolicy(max_attempts=1))
    [query0] = ex.resume({}, 0)
    [_, query1] = ex.step_done(0, StepOutcome(ok=True, already_applied=True), 1,
                               call_id=query0.call_id)
    effects = ex.step_done(1, fail("permanent"), 2, call_id=query1.call_id)
    undone = [effects[-1].call.index]
    while not ex.done:
        last = effects[-1]
        effects = ex.step_done(last.call.index, OK, 3, call_id=last.call_id)
        undone += [e.call.index for e in effects if isinstance(e, Compensate)]
    assert undone == [2, 1, 0] and ex.result.result == "rolled_back"


@pytest.mark.parametrize("code", ["permission_denied", "invalid_step"])
def test_a_denied_first_step_executes_nothing(code):
    handlers = FakeHandlers(script={("apply", 0): [fail(code)]})
    run = drive(executor(), handlers)
    assert run.result.result == "permission_denied" and run.result.error_code == code
    assert run.calls() == [("RunStep", 0, 1)]  # refused, not retried, nothing to undo
    assert handlers.effects == {}
    assert [s.status for s in run.result.steps] == ["failed", "not_run", "not_run"]


def test_a_conflict_before_anything_ran_is_a_conflict_result():
    run = drive(executor(), FakeHandlers(script={("apply", 0): [fail("conflict")]}))
    assert run.result.result == "conflict"


def test_a_denied_later_step_rolls_back_what_ran():
    handlers = FakeHandlers(script={("apply", 1): [fail("permission_denied")]})
    run = drive(executor(), handlers)
    assert run.result.result == "rolled_back" and run.result.error_code == "permission_denied"
    assert handlers.applied == set()


def test_a_new_submitter_resumes_without_repeating_an_applied_step():
    handlers = FakeHandlers()
    crashed = drive(executor(submitter="A"), handlers, crash_after_effect=("apply", 1))
    assert crashed.result is None and len(handlers.effects) == 2
    # The WAL shows step 0 applied; step 1 was in flight: in doubt.
    new = CommitExecutor(intent(submitter="B", view=1), rng=random.Random(2))
    run = drive(new, handlers, resume={0: True}, now=crashed.now + 5)
    # Step 1 was applied, so step 2 might have been started too: asked, then run.
    assert run.calls() == [("QueryApplied", 1, 1), ("QueryApplied", 2, 1), ("RunStep", 2, 1)]
    assert run.result.result == "committed"
    assert [s.status for s in run.result.steps] == ["already_applied", "already_applied",
                                                    "applied"]
    assert sorted(handlers.effects.values()) == [1, 1, 1]  # exactly once per key


def test_resume_with_nothing_known_asks_about_every_step_before_running_it():
    handlers = FakeHandlers()
    drive(executor(), handlers, crash_after_effect=("apply", 0))
    run = drive(executor(seed=3), handlers, resume={})
    # Step 1 was not applied; step 2 is still asked about: a step that leaves no key behind
    # (a read) may look not applied although the earlier submitter went past it.
    assert run.calls() == [("QueryApplied", 0, 1), ("QueryApplied", 1, 1), ("RunStep", 1, 1),
                           ("QueryApplied", 2, 1), ("RunStep", 2, 1)]
    assert sorted(handlers.effects.values()) == [1, 1, 1]


def test_resume_runs_a_step_known_not_applied_without_asking():
    run = drive(executor(), FakeHandlers(), resume={0: True, 1: True, 2: False})
    assert run.calls() == [("RunStep", 2, 1)]


def test_the_executor_refuses_misuse():
    ex = executor()
    ex.start(0)
    with pytest.raises(RuntimeError):
        ex.start(0)
    with pytest.raises(ValueError):
        executor().resume({9: True}, 0)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_backoff_ms=10, max_backoff_ms=5)


def test_an_unknown_error_code_is_treated_as_permanent():
    handlers = FakeHandlers(script={("apply", 0): [StepOutcome(ok=False, error_code="weird")]})
    run = drive(executor(), handlers)
    assert run.records[0].error_code == "permanent" and run.result.result == "rolled_back"


# -- keys and resources --------------------------------------------------------------------------

steps = st.builds(
    lambda kind, target, cmd, timeout: PlanStep.model_validate(
        {"step": kind, **({"target": target} if kind in ("read", "patch") else {"cmd": cmd}),
         **({"patch_id": "patch-1"} if kind == "patch" else {}),
         **({"timeout_ms": timeout} if timeout else {})}),
    st.sampled_from(["read", "patch", "test", "command"]),
    st.from_regex(r"file:[a-z]{1,8}(/[a-z]{1,8})?", fullmatch=True),
    st.from_regex(r"[a-z]{1,6}( [a-z]{1,6}){0,2}", fullmatch=True),
    st.one_of(st.none(), st.integers(1, 10**6)))


@settings(max_examples=150, deadline=None)
@given(step=steps, other=steps, digest=st.binary(min_size=32, max_size=32),
       proposal=st.from_regex(r"p-[a-z0-9]{1,10}", fullmatch=True), index=st.integers(0, 63))
def test_idempotency_keys_are_stable_and_bind_every_input(step, other, digest, proposal, index):
    data = step.model_dump(exclude_none=True)
    key = idempotency_key(digest, proposal, index, data)
    # Same inputs -> same key: another field order, the model itself, any later call.
    assert idempotency_key(digest, proposal, index, dict(reversed(data.items()))) == key
    assert idempotency_key(digest, proposal, index, step) == key
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    # Any input changed -> another key.
    assert idempotency_key(bytes(32) if digest != bytes(32) else b"\1" * 32, proposal, index,
                           data) != key
    assert idempotency_key(digest, proposal + "x", index, data) != key
    assert idempotency_key(digest, proposal, index + 1, data) != key
    if other != step:
        assert idempotency_key(digest, proposal, index, other) != key
    assert commit_id(digest, proposal) not in (key, commit_id(digest, proposal + "x"))


def test_keys_do_not_depend_on_the_submitter_view_or_attempt():
    a, b = intent(submitter="A", view=0), intent(submitter="B", view=7)
    assert a.commit_id == b.commit_id
    assert [s.idempotency_key for s in a.steps] == [s.idempotency_key for s in b.steps]
    a.check_keys(DIGEST)
    with pytest.raises(ValueError):
        a.check_keys(bytes(32))
    ex = executor()
    first = ex.start(0)[0]
    ex.handle_timer(ex.next_deadline_ms())
    retry = ex.handle_timer(ex.next_deadline_ms())[0]
    assert first.call.idempotency_key == retry.call.idempotency_key == a.steps[0].idempotency_key


def test_resource_of():
    assert resource_of({"step": "read", "target": "file:a"}) == "file:a"
    assert resource_of({"step": "patch", "target": "file:a", "patch_id": "p"}) == "file:a"
    assert resource_of({"step": "test", "cmd": "npm test"}) == "command:npm"
    assert resource_of({"step": "command", "cmd": "make", "target": "kv:t"}) == "kv:t"
    assert intent().resource_targets == ("file:src/foo.ts", "command:npm")
    with pytest.raises(ValueError):
        resource_of({"step": "test"})


# -- records -------------------------------------------------------------------------------------

def finished_run():
    handlers = FakeHandlers(script={("apply", 1): [fail("transient")], ("apply", 2): [LOST] * 3})
    return drive(executor(), handlers)


def test_records_round_trip_through_json_and_cbor_data():
    run = finished_run()
    record = CommitRecord.build(intent(), run.records, run.result, signatures=(
        RecordSignature(signer="A", record="intent", signature="ab" * 64),))
    event = AuditEvent.from_attempt(run.records[0], intent(), agent_id="A")
    for model in (intent(), run.result, record, event, *run.records):
        cls = type(model)
        assert cls.model_validate_json(model.to_json()) == model
        assert cls.model_validate(cbor.decode(cbor.encode(model.to_data())),
                                  strict=False) == model
    schemas = commit_schemas()
    jsonschema.validate(json.loads(record.to_json()), schemas["commit-record"])
    jsonschema.validate(json.loads(event.to_json()), schemas["audit-event"])
    jsonschema.validate(json.loads(intent().to_json()), schemas["execution-intent"])
    jsonschema.validate(json.loads(run.result.to_json()), schemas["commit-result"])


def test_the_commit_record_has_every_field_of_design_section_7():
    run = finished_run()
    record = json.loads(CommitRecord.build(intent(), run.records, run.result).to_json())
    assert set(DESIGN_COMMIT_RECORD) <= set(record)
    assert set(DESIGN_RECORD_ATTEMPT) <= set(record["attempts"][0])
    assert set(record["rollback"]) >= {"steps", "result"}
    assert record["idempotency_key"] == [s.idempotency_key for s in intent().steps]
    # Step 2 timed out every time: in doubt, so it is compensated too.
    assert record["result"] == "rolled_back" and record["rollback"]["steps"] == [2, 1, 0]
    assert next(a["retry_reason"] for a in record["attempts"] if a["index"] == 1) == "transient"
    pending = CommitRecord.build(intent(), [], None)
    assert pending.result == "pending"


def test_audit_events_carry_every_field_of_design_section_7():
    event = AuditEvent(result="approved", layer="discussion", ts=5, agent_id="B", role="voter")
    line = json.loads(event.to_json())
    assert list(line) == DESIGN_AUDIT
    assert line["commit_id"] is None and line["layer"] == "discussion"
    run = finished_run()
    full = json.loads(AuditEvent.from_attempt(run.records[1], intent(), agent_id="A").to_json())
    assert all(full[name] is not None for name in DESIGN_AUDIT if name != "error_code")
    with pytest.raises(ValueError):
        AuditEvent(result="ok", layer="elsewhere", ts=0)


def test_models_are_strict_and_frozen():
    good = intent().to_data()
    with pytest.raises(ValueError):
        ExecutionIntent.model_validate({**good, "extra": 1}, strict=False)
    with pytest.raises(ValueError):  # resource_targets must match the steps
        ExecutionIntent.model_validate({**good, "resource_targets": ["file:x"]}, strict=False)
    with pytest.raises(ValueError):
        intent().view = 3


# -- per-resource concurrency limit --------------------------------------------------------------

def test_grants_refuse_or_queue_in_log_order():
    grants = ResourceGrants({"file:a": 2}, policy="queue")
    assert grants.request("c1", ["file:a", "file:b"]) == "granted"
    assert grants.request("c2", ["file:b"]) == "waiting"
    assert grants.request("c3", ["file:a"]) == "granted"  # file:a has room for two
    assert grants.request("c4", ["file:b", "file:c"]) == "waiting"
    assert grants.request("c5", ["file:c"]) == "waiting"  # c4 is ahead on file:c
    assert grants.request("c6", ["file:d"], policy="refuse") == "granted"
    assert grants.request("c7", ["file:b"], policy="refuse") == "conflict"
    assert grants.conflicts == 1 and grants.waits == 3
    assert grants.release("c1") == ["c2"]
    assert grants.release("c2") == ["c4"]
    assert grants.release("c4") == ["c5"]
    assert grants.check() == []


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 7),
                              st.sets(st.sampled_from(["file:a", "file:b", "command:npm"]),
                                      min_size=1),
                              st.sampled_from(["refuse", "queue"])), max_size=60))
def test_grants_never_exceed_a_limit_and_count_conflicts(ops):
    grants = ResourceGrants({"file:a": 2}, default_limit=1)
    conflicts = 0
    for is_request, commit, resources, policy in ops:
        name = f"c{commit}"
        if is_request:
            status = grants.request(name, sorted(resources), policy=policy)
            conflicts += status == "conflict"
        else:
            grants.release(name)
        assert grants.check() == []
        for resource in ("file:a", "file:b", "command:npm"):
            assert grants.usage(resource) <= grants.limit(resource)
    assert grants.conflicts == conflicts
    snapshot = cbor.decode(cbor.encode(grants.snapshot()))
    assert ResourceGrants.restore(snapshot).snapshot() == grants.snapshot()


def test_grants_restore_refuses_an_inconsistent_snapshot():
    grants = ResourceGrants()
    grants.request("c1", ["file:a"])
    snapshot = grants.snapshot()
    snapshot["held"]["c2"] = ["file:a"]  # two holders, limit one
    with pytest.raises(ValueError, match="above the limit"):
        ResourceGrants.restore(snapshot)
    with pytest.raises(ValueError, match="malformed"):
        ResourceGrants.restore({"version": 1})
    with pytest.raises(ValueError):
        ResourceGrants({"file:a": 0})
