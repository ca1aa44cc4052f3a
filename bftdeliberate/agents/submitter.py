"""The submitter loop: a member's commit layer at work inside its peer (DESIGN.md section 6).

The IO shell of :class:`~bftdeliberate.commit.submitter.Submitter`. It wakes when its replica
executes a batch (``on_execute``), changes view (``on_view_change``), a handler answers, or
the core's next deadline passes, and performs the core's effects:

* ``OrderOp`` -- through ``order`` (the member's agent queue, so the member's one client id
  keeps one request in flight); the answer (or a timeout) is reported back;
* ``BeginCommit`` -- the intent to the WAL, fsynced before any effect;
* ``CallHandler`` -- the step's handler in a worker thread (handlers block). The core owns
  the timeout: a thread still running past ``timeout_ms`` is abandoned and its answer ignored
  (the handler's own lock keeps it from interleaving with a compensation, and a late apply of
  a compensated key is fenced);
* ``LogAttempt`` -- the WAL (buffered; durable at the next commit point) and the audit log;
* ``EndCommit`` -- the result to the WAL, fsynced before it is ordered.

Each member keeps its own WAL (``<data>/commit.wal``) and audit log (``<data>/audit.jsonl``);
the resources (sandbox directory, SQLite database) are shared by the members that may submit,
which is what lets a new primary find what a crashed one applied.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio
from pydantic import BaseModel

from bftdeliberate.audit.events import (
    AuditLog,
    attempt_event,
    discussion_events,
    intent_event,
    result_events,
)
from bftdeliberate.commit.executor import QueryApplied, RetryPolicy, RunStep
from bftdeliberate.commit.handlers.base import HandlerRegistry
from bftdeliberate.commit.model import AuditEvent
from bftdeliberate.commit.submitter import (
    DEFAULT_STALL_MS,
    BeginCommit,
    CallHandler,
    EndCommit,
    LogAttempt,
    OrderOp,
    Submitter,
    SubmitterEffect,
    wal_progress,
)
from bftdeliberate.commit.types import StepOutcome
from bftdeliberate.commit.wal import CommitWal
from bftdeliberate.committee import Committee
from bftdeliberate.crypto import PrivateKey
from bftdeliberate.deliberation.ledger import Ledger
from bftdeliberate.observability import log_event
from bftdeliberate.pbft.effects import Execute

logger = logging.getLogger("bftd.submitter")

#: The member's commit WAL and audit log, in its data directory.
WAL_FILE_NAME = "commit.wal"
AUDIT_FILE_NAME = "audit.jsonl"
#: Test failpoint (like etcd's gofail): ``commit.after_effect:N`` makes this process SIGKILL
#: itself right after the handler applied step N of a commit -- the effect is in place, no
#: WAL record or result says so -- the exact window the takeover protocol exists for.
FAILPOINT_ENV = "BFTD_FAILPOINT"
FAILPOINT_AFTER_EFFECT = "commit.after_effect:"
#: View changes audited per loop turn at most (a storm of them is one line each, bounded).
MAX_VIEW_EVENTS_PER_TURN = 64
#: Longest handler exception text kept in an outcome's detail.
MAX_ERROR_TEXT = 300

Order = Callable[[BaseModel], Awaitable[dict[str, Any] | None]]


def _without_id(data: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in data.items() if name != "commit_id"}


def _after_effect_failpoint() -> int | None:
    value = os.environ.get(FAILPOINT_ENV, "")
    if value.startswith(FAILPOINT_AFTER_EFFECT):
        index = value[len(FAILPOINT_AFTER_EFFECT):]
        if index.isdigit():
            return int(index)
    return None


class SubmitterLoop:
    """One member's submitter. Wire :meth:`on_execute` and :meth:`on_view_change` into the
    peer's hooks and run :meth:`run` beside it with ``order`` (e.g. ``AgentLoop.request``)."""

    def __init__(self, ledger: Ledger, name: str, *, registry: HandlerRegistry,
                 view: Callable[[], int], wal: CommitWal | None = None,
                 audit: AuditLog | None = None, policy: RetryPolicy | None = None,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 stall_ms: int | None = None) -> None:
        self.ledger = ledger
        self.name = name
        self.registry = registry
        self.wal = wal
        self.audit = audit
        self.clock = clock
        self._view = view
        known = None if wal is None else (lambda cid: wal_progress(wal.records(), cid))
        self.core = Submitter(name, rng=rng or random.Random(os.urandom(16)), policy=policy,
                              check=registry.check, known_progress=known,
                              stall_ms=stall_ms or DEFAULT_STALL_MS)
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._order: Order | None = None
        self._failpoint = _after_effect_failpoint()
        #: Views this member entered since the run loop last looked (consensus audit events).
        self._views_entered: list[int] = []
        if wal is not None and (wal.recovered_truncated_bytes or wal.in_doubt()):
            # Recovery: a torn tail was cut off; in-doubt intents are resumed by whoever is
            # the submitter (this member, if it still is: from what its WAL shows).
            log_event(logger, "warning", "commit WAL recovered", agent=name,
                      truncated_bytes=wal.recovered_truncated_bytes,
                      in_doubt=[r.commit_id[:16] for r in wal.in_doubt()])
        #: What this submitter did: commits begun/resumed, calls by action and result,
        #: retries, results by outcome (metrics).
        self.events: Counter[str] = Counter()
        #: Handler calls that raised (a handler bug or an OS error), by exception type.
        self.handler_errors: dict[str, int] = {}

    # -- hooks (called inside the peer's step: no IO) ---------------------------------------

    def on_execute(self, execute: Execute) -> None:
        self._poke()

    def bind_view(self, view: Callable[[], int]) -> None:
        """Read the replica's current view from ``view`` (set once the peer exists)."""
        self._view = view

    def on_view_change(self, view: int, active: bool) -> None:
        if active:
            self._views_entered.append(view)  # audited by the run loop (no IO here)
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    @property
    def idle(self) -> bool:
        return (self.core.settled(self.ledger)
                and not self.ledger.commit_duties(self.name, self._view()))

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    # -- run --------------------------------------------------------------------------------

    async def run(self, order: Order, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the submitter duty until cancelled."""
        self._order = order
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                while True:
                    changed = self._changed
                    now = self._now_ms()
                    deadline = self.core.next_deadline_ms()
                    effects: list[SubmitterEffect] = []
                    if deadline is not None and now >= deadline:
                        effects += self.core.handle_timer(now)
                    effects += self.core.poll(self.ledger, self._view(), now)
                    self._audit_view_changes(now)
                    self._perform(effects)
                    if effects:
                        continue
                    deadline = self.core.next_deadline_ms()
                    if deadline is None:
                        await changed.wait()
                    else:
                        with trio.move_on_after(max(0.0, (deadline - self._now_ms()) / 1000)):
                            await changed.wait()
            finally:
                self._nursery = None

    def _perform(self, effects: list[SubmitterEffect]) -> None:
        assert self._nursery is not None
        for effect in effects:
            if isinstance(effect, OrderOp):
                self._nursery.start_soon(self._order_op, effect)
            elif isinstance(effect, CallHandler):
                self._nursery.start_soon(self._call, effect)
            elif isinstance(effect, BeginCommit):
                intent = effect.intent
                self.events["commit_begun"] += 1
                if self.wal is not None:
                    self.wal.intent(intent.commit_id, **_without_id(intent.to_data()))
                if not effect.resumed:
                    # The attribution chain (opener, proposer, signed votes, auditors) goes
                    # into the first submitter's log with its intent; a takeover adds none.
                    for event in discussion_events(self.ledger.task_status(intent.task_id)):
                        self._audit(event)
                self._audit(intent_event(intent, agent_id=self.name, ts=self._now_ms()))
                log_event(logger, "info", "commit started", agent=self.name,
                          commit=intent.commit_id[:16], task=intent.task_id,
                          resumed=effect.resumed, steps=len(intent.steps))
            elif isinstance(effect, LogAttempt):
                attempt = effect.attempt
                self.events[f"{attempt.action}_{attempt.result}"] += 1
                if attempt.retry_reason is not None:
                    self.events[f"retry_{attempt.retry_reason}"] += 1
                if self.wal is not None:
                    self.wal.attempt(effect.intent.commit_id,
                                     **_without_id(effect.attempt.to_data()))
                self._audit(attempt_event(effect.attempt, effect.intent, agent_id=self.name))
            elif isinstance(effect, EndCommit):
                intent, result = effect.intent, effect.result
                self.events[f"result_{result.result}"] += 1
                if self.wal is not None:
                    self.wal.result(intent.commit_id, **_without_id(result.to_data()))
                for event in result_events(intent, result, agent_id=self.name,
                                           ts=self._now_ms()):
                    self._audit(event)
                if self.audit is not None:
                    self.audit.sync()
                log_event(logger, "info" if result.result == "committed" else "warning",
                          "commit finished", agent=self.name, commit=intent.commit_id[:16],
                          result=result.result, error_code=result.error_code)

    def _audit_view_changes(self, now_ms: int) -> None:
        entered, self._views_entered = self._views_entered, []
        for view in entered[-MAX_VIEW_EVENTS_PER_TURN:]:
            if view > 0:
                self._audit(AuditEvent(agent_id=self.name, role="member", result="view_change",
                                       layer="consensus", ts=now_ms))

    def metrics(self) -> dict[str, dict[str, int]]:
        """``{"commit_events": {event: count}}`` for the peer's metrics snapshot."""
        return {"commit_events": {**self.core.stats, **self.events,
                                  **{f"handler_error_{name}": count
                                     for name, count in self.handler_errors.items()}}}

    def _audit(self, event: AuditEvent) -> None:
        if self.audit is not None:
            self.audit.append(event)

    async def _order_op(self, effect: OrderOp) -> None:
        assert self._order is not None
        answer = await self._order(effect.op)
        if answer is not None and not answer.get("ok"):
            log_event(logger, "info", "commit operation refused", agent=self.name,
                      op=effect.key[0], reason=answer.get("error"), detail=answer.get("detail"))
        self.core.op_settled(effect.key, answer is not None)
        self._poke()

    async def _call(self, effect: CallHandler) -> None:
        call = effect.call
        handler = self.registry.handler_for(call.call.step)
        if isinstance(handler, StepOutcome):
            outcome = handler
        else:
            def work() -> StepOutcome:
                try:
                    if isinstance(call, QueryApplied):
                        return StepOutcome(ok=True, already_applied=handler.was_applied(
                            call.call.idempotency_key))
                    if isinstance(call, RunStep):
                        return handler.apply(call.call)
                    return handler.compensate(call.call)
                except OSError as error:  # disk full, a vanished directory: may pass
                    return StepOutcome(ok=False, error_code="transient",
                                       detail=f"{type(error).__name__}: {error}"[:MAX_ERROR_TEXT])
                except Exception as error:  # noqa: BLE001 (a handler bug must not kill us)
                    self.handler_errors[type(error).__name__] = \
                        self.handler_errors.get(type(error).__name__, 0) + 1
                    return StepOutcome(ok=False, error_code="permanent",
                                       detail=f"{type(error).__name__}: {error}"[:MAX_ERROR_TEXT])

            outcome = await trio.to_thread.run_sync(work, abandon_on_cancel=True)
            if isinstance(call, RunStep) and outcome.ok and self._failpoint == call.call.index:
                log_event(logger, "warning", "failpoint: SIGKILL after the effect",
                          agent=self.name, step=call.call.index)
                os.kill(os.getpid(), signal.SIGKILL)
        self._perform(self.core.call_done(effect.commit_id, call.call.index, call.attempt,
                                          outcome, self._now_ms(), call_id=call.call_id))
        self._poke()


@contextmanager
def open_submitter(committee: Committee, member: int, key: PrivateKey, ledger: Ledger,
                   registry: HandlerRegistry, data_dir: Path, *,
                   policy: RetryPolicy | None = None, stall_ms: int | None = None
                   ) -> Iterator[SubmitterLoop]:
    """Member ``member``'s submitter with its WAL and audit log in ``data_dir`` (opened and
    recovered here, closed on exit); bind the view and run it beside the peer."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with CommitWal.open(data_dir / WAL_FILE_NAME, committee_digest=committee.digest,
                        signer=member, key=key) as wal, \
            AuditLog(data_dir / AUDIT_FILE_NAME) as audit:
        yield SubmitterLoop(ledger, committee.member(member).name, registry=registry,
                            view=lambda: 0, wal=wal, audit=audit, policy=policy,
                            stall_ms=stall_ms)


__all__ = ["AUDIT_FILE_NAME", "WAL_FILE_NAME", "SubmitterLoop", "open_submitter"]
