"""The sans-IO commit executor and the per-resource concurrency limiter (DESIGN.md 2 and 6).

:class:`CommitExecutor` runs ONE commit (an ordered :class:`ExecutionIntent`) in the
aioquic/h11 style: the driver feeds it inputs with an explicit ``now_ms`` --
:meth:`~CommitExecutor.start` (or :meth:`~CommitExecutor.resume` after a crash or a
takeover), :meth:`~CommitExecutor.step_done` with a handler's :class:`StepOutcome`,
:meth:`~CommitExecutor.handle_timer` when :meth:`~CommitExecutor.next_deadline_ms` has
passed -- and performs the effect records it gets back:

* :class:`RunStep` -- call the handler's apply for the step (at-least-once; the handler
  dedupes by idempotency key, so a repeated call has no second effect),
* :class:`Compensate` -- undo a completed step (rollback, in reverse order),
* :class:`QueryApplied` -- ask the handler whether the step's key was already applied (before
  re-running a step after recovery/takeover),
* :class:`AttemptRecord` -- one finished handler call, for the WAL and the audit log,
* :class:`Finished` -- the :class:`CommitResult`, to order through PBFT.

Rules: steps run in order, one call in flight at a time; every call has its step's
``timeout_ms`` (a timer past it is a ``timeout`` outcome; an answer for that call arriving
later is ignored and counted in ``late_results``); only ``RETRYABLE_CODES`` are retried, at most
``policy.max_attempts`` attempts per call, after an exponential backoff with full or equal
jitter drawn from the injected ``random.Random``. A step that fails for good stops the commit:

* nothing completed and the code is ``permission_denied``/``invalid_step`` -> result
  ``permission_denied`` (``conflict`` -> ``conflict``); nothing was executed;
* otherwise the completed steps are compensated in reverse order -> ``rolled_back``, or
  ``failed`` if a compensation fails for good (the rollback names that step). A step whose
  last apply timed out is *in doubt* (the handler may have applied it) and is compensated
  first; compensating a key that was never applied is a no-op for an idempotent handler.
  A failure with nothing to compensate is ``rolled_back`` with rollback ``not_needed``: every
  resource is in its prior state.

:class:`ResourceGrants` is the per-resource concurrency limit, granted in log order; it is
pure data (snapshot/restore to CBOR-able dicts) so the replicated ledger can own it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Literal

from bftdeliberate.commit.model import (
    MAX_ATTEMPTS_LIMIT,
    MAX_DETAIL_LENGTH,
    CommitResult,
    ExecutionIntent,
    Rollback,
    StepAttempt,
    StepResult,
)
from bftdeliberate.commit.types import ERROR_CODES, RETRYABLE_CODES, StepCall, StepOutcome
from bftdeliberate.deliberation.proposal import MAX_PLAN_STEPS
from bftdeliberate.wire.limits import MAX_ID_LENGTH

__all__ = [
    "AttemptRecord", "CommitExecutor", "Compensate", "Effect", "Finished", "QueryApplied",
    "ResourceGrants", "RetryPolicy", "RunStep",
]

#: Largest backoff a policy may configure: ten minutes.
MAX_BACKOFF_MS = 10 * 60 * 1000
#: Code given to a failed outcome whose code is missing or unknown (a handler bug).
FALLBACK_ERROR_CODE = "permanent"
#: Most commits ResourceGrants tracks at once (holding or waiting), and limit per resource.
MAX_TRACKED_COMMITS = 65_536
MAX_RESOURCE_LIMIT = 1024
MAX_RESOURCE_LIMITS = 4096
GRANTS_SNAPSHOT_VERSION = 1

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries: attempt ``k+1`` (the ``k``-th retry) waits a jittered backoff below
    ``min(max_backoff_ms, base_backoff_ms * 2**(k-1))``. ``full`` jitter draws uniformly from
    ``[0, cap]``; ``equal`` jitter from ``[cap//2, cap]`` (AWS architecture blog naming)."""

    max_attempts: int = 3
    base_backoff_ms: int = 100
    max_backoff_ms: int = 10_000
    jitter: Literal["full", "equal"] = "full"

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(f"max_attempts must be in 1..{MAX_ATTEMPTS_LIMIT}")
        if not 0 <= self.base_backoff_ms <= self.max_backoff_ms <= MAX_BACKOFF_MS:
            raise ValueError(f"need 0 <= base_backoff_ms <= max_backoff_ms <= {MAX_BACKOFF_MS}")
        if self.jitter not in ("full", "equal"):
            raise ValueError("jitter must be 'full' or 'equal'")

    def backoff_bounds(self, retry: int) -> tuple[int, int]:
        """The inclusive range the backoff before the ``retry``-th retry (1-based) is drawn
        from."""
        if retry < 1:
            raise ValueError("retry is 1-based")
        cap = min(self.max_backoff_ms, self.base_backoff_ms << min(retry - 1, 32))
        return (0 if self.jitter == "full" else cap // 2), cap

    def backoff_ms(self, retry: int, rng: random.Random) -> int:
        low, high = self.backoff_bounds(retry)
        return rng.randint(low, high)


# -- effects -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RunStep:
    """Apply the step (``attempt`` 1-based). Pass ``call_id`` back to ``step_done``: it
    names this very call (attempts restart for each call of a step, call ids never)."""

    call: StepCall
    attempt: int
    call_id: int = 0


@dataclass(frozen=True, slots=True)
class Compensate:
    """Undo a completed step (rollback)."""

    call: StepCall
    attempt: int = 1
    call_id: int = 0


@dataclass(frozen=True, slots=True)
class QueryApplied:
    """Ask the handler whether ``call.idempotency_key`` was applied: answer with
    ``StepOutcome(ok=True, already_applied=<was it>)``."""

    call: StepCall
    attempt: int = 1
    call_id: int = 0


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """A finished handler call, for the WAL and the audit log."""

    attempt: StepAttempt


@dataclass(frozen=True, slots=True)
class Finished:
    """The commit's result, to order through PBFT."""

    result: CommitResult


Effect = RunStep | Compensate | QueryApplied | AttemptRecord | Finished
_CALL_EFFECTS = {"apply": RunStep, "compensate": Compensate, "query": QueryApplied}


# -- the executor --------------------------------------------------------------------------------

class CommitExecutor:
    """Runs one commit; see the module docstring for the rules."""

    def __init__(self, intent: ExecutionIntent, *, rng: random.Random,
                 policy: RetryPolicy | None = None) -> None:
        self.intent = intent
        self.policy = policy or RetryPolicy()
        self._rng = rng
        self._phase: Literal["new", "forward", "rollback", "done"] = "new"
        self._resumed = False
        self._known: dict[int, bool] = {}
        #: Steps known not applied (the WAL or a query said so) and not applied by us since.
        self._not_applied: set[int] = set()
        #: Steps an apply of which timed out: it may have taken effect (in doubt).
        self._timed_out: set[int] = set()
        #: Id of the current call; answers carrying another id are late.
        self._call_id = 0
        # The current call: which step, what for, which attempt, and its timers.
        self._index = 0
        self._action: Literal["apply", "compensate", "query", "check"] = "apply"
        self._attempt = 0
        self._in_flight = False
        self._started_ms = 0
        self._deadline_ms: int | None = None
        self._retry_at_ms: int | None = None
        # What happened so far.
        self._completed: list[int] = []
        self._status: dict[int, str] = {}
        self._apply_attempts: dict[int, int] = {}
        self._errors: dict[int, str] = {}
        self._digests: dict[int, str] = {}
        self._to_compensate: list[int] = []
        self._compensated: list[int] = []
        self._failed_step: int | None = None
        self._error_code: str | None = None
        self.result: CommitResult | None = None
        #: Answers ignored because no call was waiting for them (after a timeout, or twice).
        self.late_results = 0
        self.timeouts = 0
        self.retries = 0

    # -- inputs --------------------------------------------------------------------------------

    def start(self, now_ms: int) -> list[Effect]:
        """Begin a fresh commit (the intent has just been ordered)."""
        self._begin()
        return self._step(0, now_ms)

    def deny(self, index: int, refusal: StepOutcome, now_ms: int) -> list[Effect]:
        """The permission check of every step, made before any runs, refused step ``index``
        (``permission_denied`` or ``invalid_step``): the commit ends ``permission_denied`` and
        nothing executes. The refusal is recorded as a ``check`` attempt."""
        if refusal.ok or refusal.error_code not in ("permission_denied", "invalid_step"):
            raise ValueError("a denial is a permission_denied or invalid_step outcome")
        if not 0 <= index < len(self.intent.steps):
            raise ValueError(f"no step {index} in this commit")
        self._begin()
        self._index, self._action, self._attempt = index, "check", 1
        self._started_ms = now_ms
        self._status[index] = "failed"
        self._errors[index] = refusal.error_code
        self._failed_step, self._error_code = index, refusal.error_code
        record = self._record(refusal, refusal.error_code, False, now_ms)
        return [record, *self._finish("permission_denied")]

    def resume(self, applied: dict[int, bool], now_ms: int) -> list[Effect]:
        """Continue a commit whose intent has no result (a new submitter after a crash or a
        view change). ``applied`` holds what the WAL shows per step index: ``True`` applied
        (skipped), ``False`` known not applied (run). Any other step is in doubt and is first
        asked about with :class:`QueryApplied` before it runs; an applied step is never run
        again."""
        for index in applied:
            if not 0 <= index < len(self.intent.steps):
                raise ValueError(f"no step {index} in this commit")
        self._begin()
        self._resumed = True
        self._known = dict(applied)
        self._not_applied = {index for index, was in applied.items() if not was}
        return self._step(0, now_ms)

    def step_done(self, index: int, outcome: StepOutcome, now_ms: int, *,
                  attempt: int | None = None, call_id: int | None = None) -> list[Effect]:
        """A handler answered the call for step ``index`` (of attempt ``attempt`` and call
        ``call_id``, if the driver tracks them -- drivers should pass ``call_id``: only it
        tells an apply's late answer from the answer of the compensation that followed). An
        answer nobody waits for -- its call timed out, or the commit is over -- is ignored and
        counted in :attr:`late_results`."""
        if (not self._in_flight or index != self._index
                or (attempt is not None and attempt != self._attempt)
                or (call_id is not None and call_id != self._call_id)):
            self.late_results += 1
            return []
        return self._answered(outcome, now_ms)

    def handle_timer(self, now_ms: int) -> list[Effect]:
        """Fire what is due: a call past its timeout becomes a ``timeout`` outcome; a retry
        whose backoff has passed is issued."""
        if self._in_flight and self._deadline_ms is not None and now_ms >= self._deadline_ms:
            self.timeouts += 1
            return self._answered(StepOutcome(ok=False, error_code="timeout",
                                              detail="no answer within timeout_ms"), now_ms)
        if self._retry_at_ms is not None and now_ms >= self._retry_at_ms:
            self._retry_at_ms = None
            return self._issue(self._action, now_ms)
        return []

    def next_deadline_ms(self) -> int | None:
        """When :meth:`handle_timer` next has something to do, or ``None``."""
        if self._in_flight:
            return self._deadline_ms
        return self._retry_at_ms

    @property
    def done(self) -> bool:
        return self._phase == "done"

    # -- internals -----------------------------------------------------------------------------

    def _begin(self) -> None:
        if self._phase != "new":
            raise RuntimeError("the executor was already started")
        self._phase = "forward"

    def _call(self, index: int) -> StepCall:
        step = self.intent.steps[index]
        return StepCall(commit_id=self.intent.commit_id, index=index,
                        idempotency_key=step.idempotency_key, resource=step.resource,
                        step=step.step.model_dump(exclude_none=True), timeout_ms=step.timeout_ms)

    def _issue(self, action: Literal["apply", "compensate", "query"],
               now_ms: int) -> list[Effect]:
        self._action = action
        self._attempt += 1
        self._call_id += 1
        if action == "apply":
            self._apply_attempts[self._index] = self._attempt
        self._in_flight = True
        self._started_ms = now_ms
        self._deadline_ms = now_ms + self.intent.steps[self._index].timeout_ms
        return [_CALL_EFFECTS[action](self._call(self._index), self._attempt, self._call_id)]

    def _new_call(self, index: int, action: Literal["apply", "compensate", "query"],
                  now_ms: int) -> list[Effect]:
        self._index = index
        self._attempt = 0
        return self._issue(action, now_ms)

    def _step(self, index: int, now_ms: int) -> list[Effect]:
        """Move on to step ``index`` of the forward pass."""
        while index < len(self.intent.steps) and self._known.get(index) is True:
            self._complete(index, "already_applied")
            index += 1
        if index == len(self.intent.steps):
            return self._finish("committed")
        if self._resumed and index not in self._known:
            return self._new_call(index, "query", now_ms)
        return self._new_call(index, "apply", now_ms)

    def _complete(self, index: int, status: str) -> None:
        self._status[index] = status
        self._completed.append(index)

    def _record(self, outcome: StepOutcome, code: str | None, retry: bool,
                now_ms: int) -> AttemptRecord:
        step = self.intent.steps[self._index]
        digest = outcome.output_digest
        return AttemptRecord(StepAttempt(
            commit_id=self.intent.commit_id, index=self._index,
            idempotency_key=step.idempotency_key, action=self._action, attempt=self._attempt,
            started_ms=self._started_ms, latency_ms=max(0, now_ms - self._started_ms),
            result="ok" if outcome.ok else "error", error_code=code,
            retry_reason=code if retry else None, timeout_ms=step.timeout_ms,
            already_applied=outcome.already_applied,
            output_digest=digest if digest and _HEX_DIGEST.fullmatch(digest) else None,
            detail=outcome.detail[:MAX_DETAIL_LENGTH]))

    def _answered(self, outcome: StepOutcome, now_ms: int) -> list[Effect]:
        self._in_flight = False
        self._deadline_ms = None
        code = None
        if not outcome.ok:
            code = outcome.error_code if outcome.error_code in ERROR_CODES else FALLBACK_ERROR_CODE
        if self._action == "apply" and code == "timeout":
            self._timed_out.add(self._index)
        retry = code in RETRYABLE_CODES and self._attempt < self.policy.max_attempts
        effects: list[Effect] = [self._record(outcome, code, retry, now_ms)]
        if retry:
            self.retries += 1
            self._retry_at_ms = now_ms + self.policy.backoff_ms(self._attempt, self._rng)
            return effects
        index = self._index
        if self._action == "compensate":
            if code is None:
                self._compensated.append(index)
                return effects + self._next_compensation(now_ms)
            return effects + self._finish("failed", rollback=Rollback(
                steps=tuple(self._compensated), result="failed", failed_step=index,
                error_code=code))
        if code is None:
            if self._action == "apply":
                self._not_applied.discard(index)
            if self._action == "query" and not outcome.already_applied:
                self._not_applied.add(index)
                # Later steps are still asked about: a step that leaves no key behind (a
                # read) may look "not applied" although the earlier submitter went past it.
                return effects + self._new_call(index, "apply", now_ms)
            applied_before = self._action == "query" or outcome.already_applied
            self._complete(index, "already_applied" if applied_before else "applied")
            if outcome.output_digest and _HEX_DIGEST.fullmatch(outcome.output_digest):
                self._digests[index] = outcome.output_digest
            return effects + self._step(index + 1, now_ms)
        return effects + self._fail(index, code, now_ms)

    def _fail(self, index: int, code: str, now_ms: int) -> list[Effect]:
        """Step ``index`` failed for good with ``code``: stop, and roll back."""
        self._status[index] = "failed"
        self._errors[index] = code
        self._failed_step, self._error_code = index, code
        self._phase = "rollback"
        if self._resumed:
            # A takeover: the crashed submitter may have applied any step not known to be
            # unapplied -- compensate all of them, last first (a never-applied key is fenced).
            self._to_compensate = [i for i in reversed(range(len(self.intent.steps)))
                                   if i in self._completed or i not in self._not_applied
                                   or i in self._timed_out]
        else:
            in_doubt = [index] if code == "timeout" or index in self._timed_out else []
            self._to_compensate = in_doubt + list(reversed(self._completed))
        if not self._to_compensate:
            if code in ("permission_denied", "invalid_step"):
                return self._finish("permission_denied")
            if code == "conflict":
                return self._finish("conflict")
        return self._next_compensation(now_ms)

    def _next_compensation(self, now_ms: int) -> list[Effect]:
        if self._to_compensate:
            return self._new_call(self._to_compensate.pop(0), "compensate", now_ms)
        if not self._compensated:
            return self._finish("rolled_back", rollback=Rollback())
        return self._finish("rolled_back", rollback=Rollback(
            steps=tuple(self._compensated), result="compensated"))

    def _finish(self, outcome: Literal["committed", "rolled_back", "failed", "permission_denied",
                                       "conflict"],
                rollback: Rollback | None = None) -> list[Effect]:
        self._phase = "done"
        self._retry_at_ms = None
        steps = tuple(
            StepResult(index=step.index, idempotency_key=step.idempotency_key,
                       status=self._status.get(step.index, "not_run"),
                       attempts=self._apply_attempts.get(step.index, 0),
                       error_code=self._errors.get(step.index),
                       output_digest=self._digests.get(step.index))
            for step in self.intent.steps)
        self.result = CommitResult(commit_id=self.intent.commit_id, result=outcome, steps=steps,
                                   rollback=rollback or Rollback(),
                                   failed_step=self._failed_step, error_code=self._error_code)
        return [Finished(self.result)]


# -- per-resource concurrency limit --------------------------------------------------------------

GrantStatus = Literal["granted", "conflict", "waiting"]


class ResourceGrants:
    """Per-resource concurrency limits granted in log order (call it from ordered operations
    only, so every replica holds the same grants).

    A commit asks for all its resources at once (no hold-and-wait, so no deadlock). It is
    granted when every resource is below its limit and no earlier waiting commit wants one of
    them (log order: nobody overtakes). Otherwise, by ``policy``: ``refuse`` answers
    ``conflict`` (counted in :attr:`conflicts`), ``queue`` answers ``waiting`` (counted in
    :attr:`waits`) and the commit is granted by a later :meth:`release`."""

    def __init__(self, limits: dict[str, int] | None = None, default_limit: int = 1, *,
                 policy: Literal["refuse", "queue"] = "refuse") -> None:
        limits = dict(limits or {})
        if len(limits) > MAX_RESOURCE_LIMITS:
            raise ValueError(f"at most {MAX_RESOURCE_LIMITS} resource limits")
        for value in (default_limit, *limits.values()):
            if type(value) is not int or not 1 <= value <= MAX_RESOURCE_LIMIT:
                raise ValueError(f"a resource limit is an int in 1..{MAX_RESOURCE_LIMIT}")
        if policy not in ("refuse", "queue"):
            raise ValueError("policy must be 'refuse' or 'queue'")
        self.limits = limits
        self.default_limit = default_limit
        self.policy = policy
        self._held: dict[str, tuple[str, ...]] = {}
        self._queue: list[tuple[str, tuple[str, ...]]] = []
        self._usage: dict[str, int] = {}
        self.conflicts = 0
        self.waits = 0
        self.grants = 0

    def limit(self, resource: str) -> int:
        return self.limits.get(resource, self.default_limit)

    def usage(self, resource: str) -> int:
        return self._usage.get(resource, 0)

    @property
    def held(self) -> dict[str, tuple[str, ...]]:
        return dict(self._held)

    @property
    def waiting(self) -> list[str]:
        return [commit for commit, _ in self._queue]

    def request(self, commit_id: str, resources: list[str] | tuple[str, ...], *,
                policy: Literal["refuse", "queue"] | None = None) -> GrantStatus:
        """Ask for ``resources`` for ``commit_id``; asking again is answered with the current
        status and changes nothing."""
        if commit_id in self._held:
            return "granted"
        if any(commit == commit_id for commit, _ in self._queue):
            return "waiting"
        wanted = _resource_set(commit_id, resources)
        policy = policy or self.policy
        if policy not in ("refuse", "queue"):
            raise ValueError("policy must be 'refuse' or 'queue'")
        if self._grantable(wanted, self._queue):
            self._grant(commit_id, wanted)
            return "granted"
        if policy == "refuse":
            self.conflicts += 1
            return "conflict"
        if len(self._held) + len(self._queue) >= MAX_TRACKED_COMMITS:
            raise ValueError(f"more than {MAX_TRACKED_COMMITS} commits tracked")
        self._queue.append((commit_id, wanted))
        self.waits += 1
        return "waiting"

    def release(self, commit_id: str) -> list[str]:
        """``commit_id`` finished (or gave up waiting): free its resources. Returns the waiting
        commits granted as a result, in log order."""
        if commit_id in self._held:
            for resource in self._held.pop(commit_id):
                self._usage[resource] -= 1
                if not self._usage[resource]:
                    del self._usage[resource]
        else:
            self._queue = [entry for entry in self._queue if entry[0] != commit_id]
        granted: list[str] = []
        still: list[tuple[str, tuple[str, ...]]] = []
        for waiting_id, wanted in self._queue:
            if self._grantable(wanted, still):
                self._grant(waiting_id, wanted)
                granted.append(waiting_id)
            else:
                still.append((waiting_id, wanted))
        self._queue = still
        return granted

    def _grantable(self, wanted: tuple[str, ...],
                   ahead: list[tuple[str, tuple[str, ...]]]) -> bool:
        blocked = {resource for _, resources in ahead for resource in resources}
        return all(self.usage(r) < self.limit(r) and r not in blocked for r in wanted)

    def _grant(self, commit_id: str, wanted: tuple[str, ...]) -> None:
        if len(self._held) + len(self._queue) >= MAX_TRACKED_COMMITS:
            raise ValueError(f"more than {MAX_TRACKED_COMMITS} commits tracked")
        self._held[commit_id] = wanted
        for resource in wanted:
            self._usage[resource] = self.usage(resource) + 1
        self.grants += 1

    def check(self) -> list[str]:
        """Invariant violations (empty when sound): usage above a limit, usage not matching
        the holders, a waiting commit that could be granted."""
        found = []
        counted: dict[str, int] = {}
        for resources in self._held.values():
            for resource in resources:
                counted[resource] = counted.get(resource, 0) + 1
        if counted != self._usage:
            found.append("usage does not match the holders")
        for resource, used in counted.items():
            if used > self.limit(resource):
                found.append(f"{resource}: {used} holders above the limit {self.limit(resource)}")
        for position, (commit, wanted) in enumerate(self._queue):
            if self._grantable(wanted, self._queue[:position]):
                found.append(f"{commit} waits although it could be granted")
        return found

    def snapshot(self) -> dict[str, Any]:
        """Plain CBOR-able data (``wire.cbor.encode`` accepts it); :meth:`restore` reads it."""
        return {"version": GRANTS_SNAPSHOT_VERSION, "limits": dict(sorted(self.limits.items())),
                "default_limit": self.default_limit, "policy": self.policy,
                "held": {commit: list(res) for commit, res in sorted(self._held.items())},
                "queue": [[commit, list(res)] for commit, res in self._queue],
                "conflicts": self.conflicts, "waits": self.waits, "grants": self.grants}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> ResourceGrants:
        """The grants of a :meth:`snapshot`; malformed data raises ``ValueError``."""
        try:
            if data["version"] != GRANTS_SNAPSHOT_VERSION:
                raise ValueError(f"grants snapshot version {data['version']!r} not supported")
            grants = cls(data["limits"], data["default_limit"], policy=data["policy"])
            for commit, resources in data["held"].items():
                grants._grant(commit, _resource_set(commit, resources))
            grants._queue = [(commit, _resource_set(commit, resources))
                             for commit, resources in data["queue"]]
            for name in ("conflicts", "waits", "grants"):
                if type(data[name]) is not int or data[name] < 0:
                    raise ValueError(f"{name} must be a non-negative int")
                setattr(grants, name, data[name])
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"malformed grants snapshot: {error!r}") from None
        problems = grants.check()
        if problems:
            raise ValueError(f"inconsistent grants snapshot: {problems[0]}")
        return grants


def _resource_set(commit_id: Any, resources: Any) -> tuple[str, ...]:
    if type(commit_id) is not str or not 1 <= len(commit_id) <= MAX_ID_LENGTH:
        raise ValueError("a commit id is a non-empty str")
    if not isinstance(resources, (list, tuple)) or not 1 <= len(resources) <= MAX_PLAN_STEPS:
        raise ValueError(f"a commit asks for 1..{MAX_PLAN_STEPS} resources")
    if any(type(resource) is not str or not resource for resource in resources):
        raise ValueError("a resource is a non-empty str")
    return tuple(dict.fromkeys(resources))
