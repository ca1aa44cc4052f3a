"""The agent loop: a member's debater at work inside its peer (DESIGN.md section 5).

The loop never polls. Its replica reports every execution (``PeerConfig.on_execute`` ->
:meth:`AgentLoop.on_execute`); the loop then reads its *local* ledger: the duties this member
owes (``Ledger.duties``) and the next agreed-time deadline (``Ledger.next_deadline_ms``).

* **Duties.** It serves one duty at a time, in the ledger's order with contributions first (a
  round waits for every contributor; a vote holds up no one but the decision, and is then cast
  with the fuller transcript), asking the debater at most ``debater_timeout`` seconds per
  call. A contribution that raises, times out or answers something that is not a valid
  ``Contribute``/``Abstain`` for that task and round becomes an ``Abstain`` naming the
  failure, so the round still closes; a failed vote is no vote. An ``audit`` duty (an approved
  task flagged for groupthink) asks the debater's ``audit`` if it has one, else its ``vote``,
  and is sent as an audit vote.
* **Submission.** Answers go into one bounded queue and out through one
  :class:`~bftdeliberate.peer.CommitteeClient` signing under the member's name, one call at a
  time (PBFT orders a client's requests by timestamp anyway). A duty is in flight from the
  moment it is asked until its operation is ordered; it is never asked twice -- after a call
  timeout the same answer is sent again, and the ledger refuses duplicates deterministically
  if the first attempt was ordered after all. A call completes on the first of f+1 matching
  replies or the execution of the request by this member's own replica
  (``CommitteeClient.accept_executed``).
* **Time.** Rounds, vote windows and deadlines close on agreed time (the primary's batch
  timestamp, in ms since the epoch), which moves only when something is ordered. When this
  member's clock passes ``next_deadline_ms()`` plus a margin (plus a stagger by member rank,
  so usually one member ticks, not all), the loop submits a ``Tick``; if the same deadline is
  still pending afterwards (the primary's clock lags ours) it ticks again with exponential
  back-off.
* **Byzantine scripts.** A debater offering ``raw_actions(view)`` (the scripted Byzantine
  behaviours) has those ``(client_id, operation)`` pairs sent as they are, once it answered
  every duty it owes (so a ``vote-flip`` votes first, then flips): under its own name through
  the client, under another name signed with the member's own key (impersonation; every
  replica refuses the signature).

A loop without a debater only ticks (an ordering-only member still lets agreed time act).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import trio
from pydantic import BaseModel

from bftdeliberate.crypto import PrivateKey
from bftdeliberate.deliberation.debater import Debater, ProposalView, TaskView
from bftdeliberate.deliberation.ledger import Ledger
from bftdeliberate.deliberation.ops import (
    Abstain,
    CastVote,
    Contribute,
    MalformedOperation,
    Tick,
    decode_op,
    encode_op,
)
from bftdeliberate.errors import DecodeError, LocalError
from bftdeliberate.observability import log_event
from bftdeliberate.pbft.effects import Execute
from bftdeliberate.peer import ClientTimeout, CommitteeClient
from bftdeliberate.wire import cbor
from bftdeliberate.wire.messages import Request, sign_message

logger = logging.getLogger("bftd.agent")

#: Longest failure text kept in an abstention's reason.
MAX_FAILURE_TEXT = 200
#: Rejections that are ordinary races (a round or task closed while the answer was on its
#: way), logged at info level; any other rejection of the agent's own answer is a warning.
RACE_REJECTIONS = frozenset({"task_closed", "wrong_round", "proposal_closed",
                             "duplicate_contribution", "duplicate_vote"})
#: Times an operation is sent again when the committee reports it was not executed because a
#: newer request under the same name overtook it (another process signing as this member).
MAX_SUPERSEDED_RESENDS = 3

Duty = tuple[str, str, Any]


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Tunables of one agent loop (seconds unless named ``_ms``)."""

    #: Most time one debater call may take before the agent abstains (or skips the vote).
    debater_timeout: float = 120.0
    #: Most time one ordered call may take before it is given up (and sent again later).
    call_timeout: float = 30.0
    #: Operations waiting for the client at most (answers, raw actions, ticks).
    max_queued: int = 64
    #: Submit ticks at all (False: the loop only answers duties).
    ticks: bool = True
    #: Agreed time is past a deadline only once the primary's clock is: wait this much longer.
    tick_margin_ms: int = 50
    #: ... plus this much per member rank (ranks modulo 8), so members do not all tick at once.
    tick_stagger_ms: int = 100
    #: Back-off between ticks for one deadline that is still pending, doubling up to the max.
    tick_retry: float = 0.25
    tick_retry_max: float = 4.0

    def __post_init__(self) -> None:
        if not (self.debater_timeout > 0 and self.call_timeout > 0):
            raise LocalError("debater_timeout and call_timeout must be > 0")
        if self.max_queued < 1:
            raise LocalError("max_queued must be >= 1")
        if self.tick_margin_ms < 0 or self.tick_stagger_ms < 0:
            raise LocalError("tick margins must be >= 0")
        if not 0 < self.tick_retry <= self.tick_retry_max:
            raise LocalError("need 0 < tick_retry <= tick_retry_max")


@dataclass(slots=True)
class AgentStats:
    """What the loop did (for logs, the demo and tests)."""

    asked: int = 0
    contributions: int = 0
    abstentions: int = 0
    #: Debater failures by kind: raised, timeout, invalid.
    debater_failures: Counter[str] = field(default_factory=Counter)
    votes: int = 0
    votes_skipped: int = 0
    ticks: int = 0
    raw_actions: int = 0
    forged_sent: int = 0
    submitted: int = 0
    ordered: int = 0
    #: Ledger rejections of this agent's operations, by reason.
    rejections: Counter[str] = field(default_factory=Counter)
    call_timeouts: int = 0
    superseded: int = 0
    queue_full: int = 0
    #: Calls completed by this member's own replica before f+1 replies arrived.
    completed_locally: int = 0


@dataclass(slots=True)
class _Submission:
    operation: bytes
    label: str
    #: The validated operation (None for raw Byzantine bytes).
    op: BaseModel | None = None
    duty: Duty | None = None
    done: trio.Event = field(default_factory=trio.Event)
    #: The decoded ledger result, or None on a timeout.
    result: dict[str, Any] | None = None
    raw_result: bytes | None = None


class InvalidAnswer(ValueError):
    """A debater answered something that is not a valid operation for the duty asked."""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_FAILURE_TEXT else text[:MAX_FAILURE_TEXT - 1] + "…"


def _decoded(raw: bytes) -> dict[str, Any]:
    try:
        value = cbor.decode(raw)
    except DecodeError:
        return {"ok": False, "error": "undecodable", "detail": raw[:64].hex()}
    if type(value) is not dict:
        return {"ok": False, "error": "undecodable", "detail": repr(value)[:64]}
    return value


class AgentLoop:
    """One member's agent. Wire :meth:`on_execute` into the peer's ``on_execute`` and run
    :meth:`run` beside the peer with a client signing under ``name``::

        ledger = Ledger(committee)
        agent = AgentLoop(ledger, "agent-0", debater, rank=0)
        config = PeerConfig(committee, 0, key, app=ledger, on_execute=agent.on_execute)
        async with open_peer(config), open_client(committee, "agent-0", key) as client:
            await agent.run(client)
    """

    def __init__(self, ledger: Ledger, name: str, debater: Debater | None = None, *,
                 config: AgentConfig | None = None, rank: int = 0,
                 clock: Callable[[], float] = time.time, key: PrivateKey | None = None,
                 on_submit: Callable[[BaseModel], None] | None = None) -> None:
        if name not in {m.name for m in ledger.committee.members}:
            raise LocalError(f"{name!r} is not a member of committee "
                             f"{ledger.committee.committee_id}")
        self.ledger = ledger
        self.name = name
        self.debater = debater
        self.config = config if config is not None else AgentConfig()
        self.rank = rank
        self.clock = clock
        self.stats = AgentStats()
        #: Called with each validated operation just before it is handed to the client.
        self.on_submit = on_submit
        self._key = key  # signs raw actions under other names (impersonation scripts)
        self._client: CommitteeClient | None = None
        self._changed = trio.Event()
        self._in_flight: set[Duty] = set()
        self._done: set[Duty] = set()
        #: Answers given but not yet ordered (sent again after a call timeout).
        self._answers: dict[Duty, _Submission] = {}
        self._send: trio.MemorySendChannel[_Submission] | None = None
        self._touched: set[str] = set()  # tasks answered on since raw actions were sent
        self._serving = False
        #: Submissions queued or being ordered.
        self._unsettled = 0
        self._tick_pending = False
        self._ticked_deadline: int | None = None
        self._ticked_at = 0.0
        self._tick_backoff = self.config.tick_retry
        self._running = False

    # ------------------------------------------------------------------ hooks

    def on_execute(self, execute: Execute) -> None:
        """The replica executed a batch (called inside the peer's step: no IO here)."""
        client = self._client
        if client is not None and client.accept_executed(execute):
            self.stats.completed_locally += 1
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @property
    def idle(self) -> bool:
        """Nothing asked, queued or being ordered, and every owed duty answered (a moment
        to read the ledger in a test or the demo: :meth:`wait_until` re-checks it)."""
        if self._serving or self._unsettled:
            return False
        if self.debater is None:
            return True
        return all(duty in self._done for duty in self.ledger.duties(self.name))

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` (evaluated after each execution of this member's
        replica, e.g. over its ledger) is true -- without polling."""
        while not predicate():
            await self._changed.wait()

    # -------------------------------------------------------------------- run

    async def run(self, client: CommitteeClient, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve duties and ticks through ``client`` until cancelled."""
        if client.id != self.name:
            raise LocalError(f"the client signs as {client.id!r}, not as {self.name!r}")
        if self._running:
            raise LocalError("this agent loop is already running")
        self._running = True
        self._client = client
        send, receive = trio.open_memory_channel[_Submission](self.config.max_queued)
        self._send = send
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._submitter, client, receive)
                if self.config.ticks:
                    nursery.start_soon(self._ticker)
                nursery.start_soon(self._planner)
                task_status.started()
        finally:
            self._client = None
            self._send = None
            self._running = False

    async def request(self, op: BaseModel) -> dict[str, Any] | None:
        """Order ``op`` through this agent's queue (after what is already queued); the
        decoded ledger result, or None if the call timed out. For operations the debater
        does not produce, such as ``open_task``."""
        if self._send is None:
            raise LocalError("the agent loop is not running")
        operation = encode_op(op)
        decode_op(operation)  # validated like any input
        submission = _Submission(operation, op.op, op)  # type: ignore[attr-defined]
        self._unsettled += 1
        try:
            await self._send.send(submission)
        except BaseException:
            self._unsettled -= 1
            raise
        await submission.done.wait()
        return submission.result

    # ----------------------------------------------------------------- duties

    async def _planner(self) -> None:
        # One duty at a time, in the ledger's order with contributions first: a round waits
        # for every contributor, a vote holds up no one but the decision. When every owed
        # duty is answered, a Byzantine script's raw actions follow (after its answers).
        while True:
            duty = self._next_duty() if self.debater is not None else None
            if duty is None:
                self._flush_raw_actions()
                await self._changed.wait()
                continue
            await self._serve_duty(duty)

    def _next_duty(self) -> Duty | None:
        duties = self.ledger.duties(self.name)
        owed = set(duties)
        # A duty that left the ledger's list is settled for good: forget it.
        self._done &= owed
        for duty in list(self._answers):
            if duty not in owed:
                del self._answers[duty]
        for duty in sorted(duties, key=lambda d: d[0] != "contribute"):  # stable
            if duty in self._in_flight or duty in self._done:
                continue
            answered = self._answers.get(duty)
            if answered is None:
                return duty
            # Answered, but the call timed out: send the same answer again.
            if self._enqueue(answered):
                self._in_flight.add(duty)
        return None

    async def _serve_duty(self, duty: Duty) -> None:
        self._in_flight.add(duty)
        self._serving = True
        try:
            submission = await self._answer(duty)
        except BaseException:
            self._in_flight.discard(duty)
            raise
        finally:
            self._serving = False
        self._touched.add(duty[1])
        if submission is None:
            self._in_flight.discard(duty)
            self._done.add(duty)
            return
        self._answers[duty] = submission
        if not self._enqueue(submission):
            self._in_flight.discard(duty)  # queued again on a later change

    async def _answer(self, duty: Duty) -> _Submission | None:
        kind, task_id, what = duty
        try:
            view = self.ledger.view_for(task_id, self.name)
        except KeyError:
            return None
        if kind == "contribute":
            if view.round != what:
                return None  # the round closed meanwhile
            self.stats.asked += 1
            op: BaseModel | None = await self._contribution(view)
        elif kind == "vote":
            proposal = next((p for p in view.proposals if p.proposal_id == what), None)
            if proposal is None or what in view.voted:
                return None
            self.stats.asked += 1
            op = await self._vote(view, proposal)
        elif kind == "audit":
            proposal = next((p for p in view.proposals if p.proposal_id == what), None)
            if proposal is None:
                return None
            self.stats.asked += 1
            op = await self._vote(view, proposal, audit=True)
        else:
            return None  # a duty this loop does not know
        if op is None:
            return None
        return _Submission(encode_op(op), op.op, op, duty)  # type: ignore[attr-defined]

    async def _ask(self, call: Any, *args: Any) -> tuple[Any, str | None]:
        """The debater's answer, or (None, why it failed)."""
        timeout = self.config.debater_timeout
        try:
            with trio.move_on_after(timeout):
                return await call(*args), None
        except Exception as error:  # noqa: BLE001 (a debater is untrusted code)
            self.stats.debater_failures["raised"] += 1
            return None, _short(f"debater raised {type(error).__name__}: {error}")
        self.stats.debater_failures["timeout"] += 1
        return None, f"debater timed out after {timeout:g} s"

    async def _contribution(self, view: TaskView) -> Contribute | Abstain:
        assert self.debater is not None and view.round is not None
        answer, failure = await self._ask(self.debater.contribute, view)
        if failure is None:
            try:
                op = self._checked(answer, (Contribute, Abstain), view.task_id,
                                   round=view.round)
                if isinstance(op, Contribute):
                    self.stats.contributions += 1
                else:
                    self.stats.abstentions += 1
                return op
            except InvalidAnswer as error:
                self.stats.debater_failures["invalid"] += 1
                failure = _short(f"invalid debater answer: {error}")
        log_event(logger, "warning", "debater failed", agent=self.name, task=view.task_id,
                  round=view.round, reason=failure)
        self.stats.abstentions += 1
        return Abstain(task_id=view.task_id, round=view.round, reason=failure)

    async def _vote(self, view: TaskView, proposal: ProposalView, *,
                    audit: bool = False) -> CastVote | None:
        """The debater's vote on ``proposal``; with ``audit``, its review of an approved
        proposal flagged for groupthink (the debater's ``audit`` if it has one, else its
        ``vote`` -- shown the proposal as not yet voted on by it -- marked as an audit)."""
        assert self.debater is not None
        ask = self.debater.vote
        if audit:
            ask = getattr(self.debater, "audit", None) or ask
            view = replace(view, voted=view.voted - {proposal.proposal_id})
        answer, failure = await self._ask(ask, view, proposal)
        if failure is None and answer is not None:
            try:
                if audit and isinstance(answer, CastVote) and not answer.audit:
                    answer = answer.model_copy(update={"audit": True})
                op = self._checked(answer, (CastVote,), view.task_id,
                                   proposal_id=proposal.proposal_id, audit=audit)
                self.stats.votes += 1
                return op  # type: ignore[return-value]
            except InvalidAnswer as error:
                self.stats.debater_failures["invalid"] += 1
                failure = _short(f"invalid debater answer: {error}")
        if failure is not None:
            log_event(logger, "warning", "debater failed", agent=self.name,
                      task=view.task_id, proposal=proposal.proposal_id, reason=failure)
        self.stats.votes_skipped += 1
        return None

    @staticmethod
    def _checked(answer: Any, kinds: tuple[type, ...], task_id: str, **expected: Any) -> Any:
        if not isinstance(answer, kinds):
            raise InvalidAnswer(f"{type(answer).__name__} is not "
                                f"{' or '.join(k.__name__ for k in kinds)}")
        for name, value in {"task_id": task_id, **expected}.items():
            if getattr(answer, name) != value:
                raise InvalidAnswer(f"{name} {getattr(answer, name)!r} is not {value!r}")
        try:
            # Re-validated from its bytes: a model built without validation is caught here.
            return decode_op(encode_op(answer))
        except (MalformedOperation, LocalError) as error:
            raise InvalidAnswer(str(error)) from None

    def _flush_raw_actions(self) -> None:
        """Send the raw actions of a Byzantine script for the tasks it just answered on, from
        a fresh view (the script plays each trick once per round and proposal count)."""
        raw_actions = getattr(self.debater, "raw_actions", None)
        touched, self._touched = self._touched, set()
        if raw_actions is None:
            return
        for task_id in sorted(touched):
            try:
                view = self.ledger.view_for(task_id, self.name)
                actions = list(raw_actions(view))
            except Exception as error:  # noqa: BLE001 (a debater is untrusted code)
                log_event(logger, "warning", "raw actions failed", agent=self.name,
                          error=_short(repr(error)))
                continue
            for client_id, operation in actions:
                self.stats.raw_actions += 1
                if client_id == self.name:
                    if not self._enqueue(_Submission(operation, "raw")):
                        log_event(logger, "warning", "raw action dropped", agent=self.name)
                else:
                    self._forge(client_id, operation)

    def _forge(self, client_id: str, operation: bytes) -> None:
        client = self._client
        if client is None or self._key is None:
            return
        timestamp = int(self.clock() * 1_000_000)
        try:
            signed = sign_message(Request(client=client_id, timestamp=timestamp,
                                          operation=operation),
                                  self._key, self.ledger.committee.digest)
        except (LocalError, ValueError) as error:
            log_event(logger, "warning", "raw action unsendable", agent=self.name,
                      error=_short(str(error)))
            return
        client.send_signed(signed)
        self.stats.forged_sent += 1

    # ------------------------------------------------------------- submitting

    def _enqueue(self, submission: _Submission) -> bool:
        if self._send is None:
            return False
        try:
            self._send.send_nowait(submission)
        except trio.WouldBlock:
            self.stats.queue_full += 1
            return False
        self._unsettled += 1
        return True

    async def _submitter(self, client: CommitteeClient,
                         receive: trio.MemoryReceiveChannel[_Submission]) -> None:
        async for submission in receive:
            try:
                await self._submit(client, submission)
            finally:
                self._unsettled -= 1
            self._poke()  # wait_until(idle) and the planner look again

    async def _submit(self, client: CommitteeClient, submission: _Submission) -> None:
        self.stats.submitted += 1
        if submission.op is not None and self.on_submit is not None:
            self.on_submit(submission.op)
        raw: bytes | None = None
        try:
            for _ in range(MAX_SUPERSEDED_RESENDS + 1):
                raw = await client.call(submission.operation, timeout=self.config.call_timeout)
                if raw != b"":
                    break
                # Not executed: a newer request under this name (the CLI?) overtook it.
                self.stats.superseded += 1
        except ClientTimeout:
            raw = None
            self.stats.call_timeouts += 1
        except LocalError as error:  # e.g. a raw operation too large to sign
            raw = cbor.encode({"ok": False, "error": "unsendable", "detail": str(error)})
        duty = submission.duty
        if raw is None or raw == b"":
            log_event(logger, "warning", "call gave up", agent=self.name,
                      op=submission.label, duty=duty)
            if duty is not None:
                self._in_flight.discard(duty)  # the same answer goes again (see _next_duty)
        else:
            result = _decoded(raw)
            submission.raw_result = raw
            submission.result = result
            self._settle(submission, result)
        if submission.label == "tick":
            self._tick_pending = False
        submission.done.set()

    def _settle(self, submission: _Submission, result: dict[str, Any]) -> None:
        self.stats.ordered += 1
        duty = submission.duty
        if duty is not None:
            self._in_flight.discard(duty)
            self._done.add(duty)
            self._answers.pop(duty, None)
        if not result.get("ok"):
            reason = str(result.get("error"))
            self.stats.rejections[reason] += 1
            level = ("info" if submission.label in ("raw", "tick") or reason in RACE_REJECTIONS
                     else "warning")
            log_event(logger, level, "operation rejected", agent=self.name,
                      op=submission.label, reason=reason, detail=result.get("detail"))

    # ------------------------------------------------------------------ ticks

    def _tick_due_at(self) -> float | None:
        """This member's clock time (seconds) at which to tick next, or None."""
        deadline_ms = self.ledger.next_deadline_ms()
        if deadline_ms is None or self._tick_pending:
            return None
        config = self.config
        due = (deadline_ms + config.tick_margin_ms
               + config.tick_stagger_ms * (self.rank % 8)) / 1000
        if deadline_ms == self._ticked_deadline:
            # Ticked for this deadline and it is still pending: the primary's clock lags.
            due = max(due, self._ticked_at + self._tick_backoff)
        else:
            self._tick_backoff = config.tick_retry
        return due

    async def _ticker(self) -> None:
        while True:
            due = self._tick_due_at()
            changed = self._changed
            if due is None:
                await changed.wait()
                continue
            delay = due - self.clock()
            if delay > 0:
                with trio.move_on_after(delay):
                    await changed.wait()
                    continue
            deadline_ms = self.ledger.next_deadline_ms()
            if deadline_ms is None:
                continue
            if deadline_ms == self._ticked_deadline:
                self._tick_backoff = min(self._tick_backoff * 2, self.config.tick_retry_max)
            self._ticked_deadline = deadline_ms
            self._ticked_at = self.clock()
            if self._enqueue(_Submission(encode_op(Tick()), "tick", Tick())):
                self._tick_pending = True
                self.stats.ticks += 1
            else:
                await changed.wait()


__all__ = ["AgentConfig", "AgentLoop", "AgentStats", "InvalidAnswer"]
