"""The single submitter of one member, sans-IO (DESIGN.md sections 2 and 6).

The peer (``agents/submitter.py``) and the simulator (``simulator/commit.py``) drive the same
core: they call :meth:`Submitter.poll` with the member's *local* ledger and view whenever
either changed, :meth:`Submitter.call_done` when a handler answered, :meth:`handle_timer`
when :meth:`next_deadline_ms` passed, and :meth:`op_settled` when an ordered operation came
back -- and perform the effects they get, in order:

* :class:`OrderOp` -- order a ``commit_intent`` or ``commit_result`` through PBFT under the
  member's name; report with ``op_settled(effect.key, ordered)``.
* :class:`BeginCommit` -- write the intent to the WAL and make it durable *before* any
  effect (a commit point).
* :class:`CallHandler` -- run ``apply``/``compensate``/``was_applied`` of the step's handler;
  answer with ``call_done``. The core owns the timeout (``timeout_ms``): a late answer is
  ignored.
* :class:`LogAttempt` -- one finished handler call, for the WAL and the audit log.
* :class:`EndCommit` -- the result, to the WAL (durable: a commit point) before the
  :class:`OrderOp` carrying it, which follows in the same list.

Rules:

* The member acts only on what the ledger says it owes (``Ledger.commit_duties``): as the
  primary of the current view with the ``submit`` role it orders an intent for each
  commit-ready task, once per view; once the ledger shows its intent granted, it executes.
* Before the first call of a commit every step is checked against the handlers'
  allow-lists (``check``); a refused step ends the commit ``permission_denied`` with nothing
  executed.
* A commit that is a takeover (an earlier submitter's intent has no result) or that this
  member's WAL already knows (it crashed) is *resumed*: steps the WAL shows applied are
  skipped, the others are first asked about (``was_applied``) -- at-least-once attempts plus
  idempotent handlers give exactly-once effects.
* A commit whose latest intent is no longer this member's (a later primary took it over) is
  abandoned: no further call is issued for it (its result would be refused anyway).
* The result is ordered until the ledger holds a result for the commit (sent again after a
  call that was not ordered).
* Watchdog: every member watches granted commits without a result, and commit-ready tasks
  without an intent. When one has waited ``stall_ms`` (agreed intent or decision time
  against this member's clock) and it is not this member's to act on, it orders a
  ``tick``, then again after a doubling interval (at most ``MAX_WATCH_BACKOFF`` times
  ``stall_ms``). A crashed primary leaves no request behind to time out; the tick is one,
  so a dead primary is voted out by the view change and the next primary takes over. (A
  live primary orders the ticks and nothing else happens: hence the backoff.)
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bftdeliberate.commit.executor import (
    AttemptRecord,
    CommitExecutor,
    Compensate,
    Finished,
    QueryApplied,
    RetryPolicy,
    RunStep,
)
from bftdeliberate.commit.model import CommitResult, ExecutionIntent, StepAttempt
from bftdeliberate.commit.types import StepCall, StepOutcome
from bftdeliberate.deliberation.ops import CommitDone, CommitIntent, Tick

if TYPE_CHECKING:
    from bftdeliberate.deliberation.ledger import Ledger

__all__ = [
    "BeginCommit", "CallHandler", "EndCommit", "LogAttempt", "OrderOp", "Submitter",
    "SubmitterEffect", "step_calls",
]

#: Commits one submitter executes at once (the ledger grants resources; this bounds memory
#: and worker threads whatever a ledger holds).
MAX_RUNNING_COMMITS = 16
#: Finished commits whose result the submitter keeps until the ledger holds it.
MAX_PENDING_RESULTS = 1024
#: A granted commit without a result for this long gets a watchdog tick (see above).
DEFAULT_STALL_MS = 10_000
#: The watchdog's interval doubles per tick up to this multiple of ``stall_ms``.
MAX_WATCH_BACKOFF = 16


@dataclass(frozen=True, slots=True)
class OrderOp:
    """Order ``op`` through PBFT; report with ``op_settled(key, ordered)``."""

    key: tuple[str, str]
    op: CommitIntent | CommitDone | Tick


@dataclass(frozen=True, slots=True)
class BeginCommit:
    """Write ``intent`` to the WAL, durably, before any of its effects."""

    intent: ExecutionIntent
    resumed: bool


@dataclass(frozen=True, slots=True)
class CallHandler:
    """Run one handler call; answer with ``call_done(commit_id, index, attempt, outcome)``."""

    commit_id: str
    call: RunStep | Compensate | QueryApplied

    @property
    def action(self) -> str:
        return {RunStep: "apply", Compensate: "compensate", QueryApplied: "query"}[
            type(self.call)]


@dataclass(frozen=True, slots=True)
class LogAttempt:
    """One finished handler call (or a refused permission check), for the WAL and audit."""

    intent: ExecutionIntent
    attempt: StepAttempt


@dataclass(frozen=True, slots=True)
class EndCommit:
    """The commit's result: to the WAL, durably, before it is ordered."""

    intent: ExecutionIntent
    result: CommitResult


SubmitterEffect = OrderOp | BeginCommit | CallHandler | LogAttempt | EndCommit


def step_calls(intent: ExecutionIntent) -> list[StepCall]:
    """The handler calls of ``intent``'s steps, in order (for the permission check)."""
    return [StepCall(commit_id=intent.commit_id, index=step.index,
                     idempotency_key=step.idempotency_key, resource=step.resource,
                     step=step.step.model_dump(exclude_none=True), timeout_ms=step.timeout_ms)
            for step in intent.steps]


class Submitter:
    """One member's single-submitter duty (module docstring).

    ``check(call)``: the handlers' allow-list check (None = allowed; no effect).
    ``known_progress(commit_id)``: what this member's WAL shows for a commit -- ``None`` if
    it holds no intent of it, else ``{step index: applied?}`` for the steps it knows."""

    def __init__(self, member: str, *, rng: random.Random, policy: RetryPolicy | None = None,
                 check: Callable[[StepCall], StepOutcome | None] | None = None,
                 known_progress: Callable[[str], dict[int, bool] | None] | None = None,
                 max_running: int = MAX_RUNNING_COMMITS,
                 stall_ms: int = DEFAULT_STALL_MS) -> None:
        if stall_ms < 1:
            raise ValueError("stall_ms must be >= 1")
        self.member = member
        self.stall_ms = stall_ms
        #: Watched commits and tasks: (local time of the next watchdog tick, ticks so far).
        self._watch: dict[tuple[str, str], tuple[int, int]] = {}
        self.policy = policy or RetryPolicy()
        self._rng = rng
        self._check = check
        self._known_progress = known_progress
        self._max_running = max_running
        self._running: dict[str, CommitExecutor] = {}
        #: Finished here, result not yet held by the ledger: commit id -> (intent, result).
        self._results: dict[str, tuple[ExecutionIntent, CommitResult]] = {}
        self._pending_ops: set[tuple[str, str]] = set()
        #: Intents asked for, by (task id, view): never twice in one view.
        self._intents_sent: set[tuple[str, int]] = set()
        #: Counters: intents, results, resumed, denied, abandoned, late_answers ...
        self.stats: Counter[str] = Counter()

    # -- inputs --------------------------------------------------------------------------------

    def poll(self, ledger: Ledger, view: int, now_ms: int) -> list[SubmitterEffect]:
        """Look at the local ledger in ``view``: order intents owed, start granted commits,
        order results not yet held, abandon commits taken over."""
        effects: list[SubmitterEffect] = []
        book = ledger.commits
        for commit_id in list(self._running):
            status = book.status(commit_id)
            if status["result"] is not None or status["intents"][-1]["submitter"] != self.member:
                del self._running[commit_id]
                self.stats["abandoned"] += 1
        for commit_id, (_, result) in list(self._results.items()):
            status = book.status(commit_id)
            if status["result"] is not None or status["intents"][-1]["submitter"] != self.member:
                del self._results[commit_id]
                continue
            key = ("result", commit_id)
            if key not in self._pending_ops:
                effects.append(self._order(key, CommitDone(commit_id=commit_id, result=result)))
        duties = ledger.commit_duties(self.member, view)
        for kind, subject in duties:
            if kind == "intent":
                if (subject, view) in self._intents_sent:
                    continue
                self._intents_sent.add((subject, view))
                self.stats["intents"] += 1
                effects.append(self._order(("intent", f"{subject}@{view}"),
                                           CommitIntent(task_id=subject)))
            elif (subject not in self._running and subject not in self._results
                  and len(self._running) < self._max_running):
                effects += self._begin(book.status(subject), view, now_ms)
        owed = {subject for kind, subject in duties if kind == "intent"}
        effects += self._watchdog(ledger, owed, now_ms)
        return effects

    def _watchdog(self, ledger: Ledger, owed: set[str], now_ms: int) -> list[SubmitterEffect]:
        """Watchdog ticks (module docstring); ``owed``: tasks this member itself owes an
        intent for (it orders those, it does not watch them)."""
        book = ledger.commits
        waiting: list[tuple[tuple[str, str], int]] = []
        for commit_id in book.in_doubt():
            status = book.status(commit_id)
            if status["grant"] == "granted" and commit_id not in self._running \
                    and commit_id not in self._results:
                waiting.append((("commit", commit_id), status["intents"][-1]["at_ms"]))
        waiting += [(("task", task_id), ready_ms)
                    for task_id, ready_ms in ledger.ready_without_commit()
                    if task_id not in owed]
        watched: dict[tuple[str, str], tuple[int, int]] = {}
        effects: list[SubmitterEffect] = []
        for subject, since_ms in waiting:
            due, ticks = self._watch.get(subject, (since_ms + self.stall_ms, 0))
            key = ("watch", ":".join(subject))
            if now_ms >= due and key not in self._pending_ops:
                self.stats["watchdog_ticks"] += 1
                effects.append(self._order(key, Tick()))
                ticks += 1
                due = now_ms + self.stall_ms * min(2 ** ticks, MAX_WATCH_BACKOFF)
            watched[subject] = (due, ticks)
        self._watch = watched
        return effects

    def op_settled(self, key: tuple[str, str], ordered: bool) -> None:
        """An :class:`OrderOp` came back: ``ordered`` (whatever the ledger answered) or not
        (timed out: an intent may be asked again in the same view)."""
        self._pending_ops.discard(key)
        if not ordered and key[0] == "intent":
            task_id, _, view = key[1].rpartition("@")
            self._intents_sent.discard((task_id, int(view)))

    def call_done(self, commit_id: str, index: int, attempt: int, outcome: StepOutcome,
                  now_ms: int, *, call_id: int | None = None) -> list[SubmitterEffect]:
        """A handler answered a :class:`CallHandler` (pass its ``call.call_id``: the answer
        of a timed-out apply must not be taken for the compensation that followed it)."""
        executor = self._running.get(commit_id)
        if executor is None:
            self.stats["late_answers"] += 1
            return []
        return self._translate(executor, executor.step_done(index, outcome, now_ms,
                                                            attempt=attempt, call_id=call_id))

    def handle_timer(self, now_ms: int) -> list[SubmitterEffect]:
        effects: list[SubmitterEffect] = []
        for executor in list(self._running.values()):
            deadline = executor.next_deadline_ms()
            if deadline is not None and now_ms >= deadline:
                effects += self._translate(executor, executor.handle_timer(now_ms))
        return effects

    def next_deadline_ms(self) -> int | None:
        """When :meth:`handle_timer` (a handler call's timeout or retry) or :meth:`poll` (a
        watchdog tick) next has something to do, or ``None``."""
        deadlines = [d for e in self._running.values()
                     if (d := e.next_deadline_ms()) is not None]
        return min([*deadlines, *(due for due, _ in self._watch.values())], default=None)

    def settled(self, ledger: Ledger) -> bool:
        """Nothing executing or being ordered, and every result this member produced is held
        by ``ledger``."""
        return not self._running and not self._pending_ops and all(
            ledger.commits.status(cid)["result"] is not None for cid in self._results)

    @property
    def running(self) -> list[str]:
        return list(self._running)

    # -- internals -----------------------------------------------------------------------------

    def _order(self, key: tuple[str, str], op: CommitIntent | CommitDone) -> OrderOp:
        self._pending_ops.add(key)
        return OrderOp(key, op)

    def _begin(self, status: dict[str, Any], view: int, now_ms: int) -> list[SubmitterEffect]:
        latest = status["intents"][-1]
        intent = ExecutionIntent.model_validate(status["intent"], strict=False).model_copy(
            update={"submitter": self.member, "view": latest["view"]})
        known = self._known_progress(intent.commit_id) if self._known_progress else None
        resumed = len(status["intents"]) > 1 or known is not None
        executor = CommitExecutor(intent, rng=self._rng, policy=self.policy)
        self._running[intent.commit_id] = executor
        effects: list[SubmitterEffect] = [BeginCommit(intent, resumed)]
        refusal = self._first_refusal(intent)
        if refusal is not None:
            self.stats["denied"] += 1
            return effects + self._translate(executor, executor.deny(*refusal, now_ms))
        if resumed:
            self.stats["resumed"] += 1
            return effects + self._translate(executor, executor.resume(known or {}, now_ms))
        return effects + self._translate(executor, executor.start(now_ms))

    def _first_refusal(self, intent: ExecutionIntent) -> tuple[int, StepOutcome] | None:
        if self._check is None:
            return None
        for call in step_calls(intent):
            refusal = self._check(call)
            if refusal is not None:
                if refusal.ok or refusal.error_code not in ("permission_denied",
                                                            "invalid_step"):
                    refusal = StepOutcome(ok=False, error_code="invalid_step",
                                          detail=refusal.detail)
                return call.index, refusal
        return None

    def _translate(self, executor: CommitExecutor, effects: list[Any]) -> list[SubmitterEffect]:
        out: list[SubmitterEffect] = []
        intent = executor.intent
        for effect in effects:
            if isinstance(effect, AttemptRecord):
                out.append(LogAttempt(intent, effect.attempt))
            elif isinstance(effect, Finished):
                del self._running[intent.commit_id]
                if len(self._results) >= MAX_PENDING_RESULTS:
                    self._results.pop(next(iter(self._results)))
                self._results[intent.commit_id] = (intent, effect.result)
                self.stats["results"] += 1
                out.append(EndCommit(intent, effect.result))
                out.append(self._order(("result", intent.commit_id), CommitDone(
                    commit_id=intent.commit_id, result=effect.result)))
            else:
                out.append(CallHandler(intent.commit_id, effect))
        return out


def wal_progress(records: list[Any], commit_id: str) -> dict[int, bool] | None:
    """``known_progress`` from WAL records (``commit.wal.WalRecord``): None without an intent
    of ``commit_id``; else the steps whose last apply/query succeeded (applied or not), with
    compensated steps as not applied."""
    mine = [r for r in records if r.commit_id == commit_id]
    if not any(r.type == "intent" for r in mine):
        return None
    known: dict[int, bool] = {}
    for record in mine:
        if record.type != "attempt" or record.fields.get("result") != "ok":
            continue
        index, action = record.fields.get("index"), record.fields.get("action", "apply")
        if type(index) is not int:
            continue
        if action == "apply":
            known[index] = True
        elif action == "query":
            known[index] = bool(record.fields.get("already_applied"))
        elif action == "compensate":
            known.pop(index, None)  # in doubt: ask the handler (it fences compensated keys)
    return known
