"""Debates in the simulated world: one deliberation task on the replicated ``Ledger``, argued by
scripted agents, one per member (DESIGN.md sections 5 and 8).

With a scenario's ``debate`` section (``simulator/spec.py``) the replicated application is the
deliberation ledger, and every member runs an :class:`AgentDriver` next to its replica:

* the driver reads its *own* replica's ledger (what that member knows), asks its
  ``ScriptedDebater`` once for each duty (``ledger.duties``; votes on what was just revealed
  before the next round's contribution), thinks about one answer at a time (``think_ms``: a
  model's latency) and sends the answers through its own PBFT client -- client id = the
  member's name, signed with the member's key -- one request outstanding at a time, the rest
  waiting in a bounded queue (MAX_AGENT_QUEUE), so its requests are ordered as it sent them
  (the member's commit driver, ``simulator/commit.py``, queues its operations there too and
  hears how each ended through ``on_done``);
* it polls after every execution at its replica and whenever one of its requests completes
  (and, while the debate is unsettled, every IDLE_POLL_MS);
* time: ledger rules read the agreed batch time, so a round's or vote window's end only takes
  effect when an operation is ordered after it. When the agent's local clock passes the
  ledger's ``next_deadline_ms()`` it sends a ``tick`` -- staggered by member index
  (TICK_STAGGER_MS) so that normally one agent ticks, and repeated no faster than
  TICK_RETRY_MS while the primary's clock lags behind the deadline;
* a Byzantine script's raw actions go out as they are: under the agent's own client id through
  its client, under a foreign id as a request the agent signs with its *own* key, relayed to
  every member (the replicas must drop it: bad signature);
* ``resolve``: that member decides an escalated task (a person with the ``human`` role, or the
  judge); ``audit``: that member reviews (``vote`` with ``audit: true``) the approved proposal
  of a groupthink-flagged task once the ledger asks for it; other members with the ``audit``
  role leave audits to it.

A member whose debater is Byzantine counts as a Byzantine member (``world.byzantine``): the
oracles judge neither its replica nor its agent, and a spec promising safety allows at most f
of them together with the protocol-level Byzantine members.

:class:`DebateOracles` -- checked after each execution at an honest replica (once per sequence
number: the first honest replica to reach it is checked, later ones are compared with it) and
again at the end:

* ``debate-agreement`` -- honest replicas at the same sequence number hold the same tasks
  (transcript, votes, decision, exit reason, tokens, flags); decided tasks agree across
  progress;
* ``debate-rounds`` -- rounds used <= max_rounds;
* ``debate-budget`` -- tokens used <= the task budget, each agent's <= its budget, and the
  accounts add up to the declared tokens of the transcript;
* ``debate-duplicates`` -- one contribution per agent per round, one counted vote per agent per
  proposal;
* ``debate-roles`` -- contributions and the opening from ``propose`` members, votes from
  ``vote`` members, audits from ``audit`` members, resolutions from ``human`` members or the
  judge; the ledger's contributors and voters are the genesis ones (no role gained);
* ``debate-attribution`` -- every contribution, vote and audit attributed to an honest agent
  is one its own driver sent (impersonation);
* ``debate-threshold`` -- ``approved`` without a human or judge resolution needs >= threshold
  distinct approvals of ``vote`` members, threshold >= 2f+1;
* ``debate-forgery`` -- no honest replica executes a request an agent forged under another
  agent's name;
* ``debate-audit-gate`` -- an approved, flagged task with ``require_audit`` is commit-ready only
  once an ``audit`` member approved it (or a ``human`` member resolved it).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bftdeliberate.deliberation.ledger import Ledger
from bftdeliberate.deliberation.ops import (
    Abstain,
    CastVote,
    Contribute,
    MalformedOperation,
    OpenTask,
    Resolve,
    Tick,
    decode_op,
    encode_op,
)
from bftdeliberate.deliberation.scripts import BYZANTINE_BEHAVIOURS, Script, ScriptedDebater
from bftdeliberate.errors import DecodeError, LocalError
from bftdeliberate.pbft.effects import Execute
from bftdeliberate.wire import cbor
from bftdeliberate.wire.messages import MAX_COUNTER, Request, sign_message
from simulator.world import Alarm

if TYPE_CHECKING:
    from simulator.spec import AgentScript, DebateSpec, Scenario
    from simulator.world import CompletedRequest, World

MS = 1000.0
#: Requests an agent keeps waiting behind its outstanding one; more are dropped and counted
#: (a debater cannot make its own member queue without bound).
MAX_AGENT_QUEUE = 64
#: An agent ticks this long after the deadline passed on its own clock ...
TICK_MARGIN_MS = 5.0
#: ... plus this much per member index, so that normally the first agent's tick does it.
TICK_STAGGER_MS = 50.0
#: Shortest time between two ticks of one agent (the primary's clock may lag the agent's).
TICK_RETRY_MS = 200.0
#: Shortest time between two wake-ups of an agent that found nothing to do (also the
#: tolerance for clock conversions landing a hair before a deadline).
MIN_WAKE_MS = 1.0
#: While the debate is unsettled an agent also looks at its ledger this often (a replica that
#: caught up by state transfer executes nothing it could be told about).
IDLE_POLL_MS = 1000.0
#: Operations a driver remembers having signed (for the attribution oracle) and forged
#: requests it remembers; beyond that it stops recording (and says so in its stats).
MAX_SUBMITTED_KEPT = 4096
#: Sequence numbers whose checked ledger digest the oracle keeps for comparison.
MAX_STATUS_SEQS_KEPT = 100_000

ORACLE_AGREEMENT = "debate-agreement"
ORACLE_ROUNDS = "debate-rounds"
ORACLE_BUDGET = "debate-budget"
ORACLE_DUPLICATES = "debate-duplicates"
ORACLE_ROLES = "debate-roles"
ORACLE_ATTRIBUTION = "debate-attribution"
ORACLE_THRESHOLD = "debate-threshold"
ORACLE_AUDIT_GATE = "debate-audit-gate"
ORACLE_FORGERY = "debate-forgery"


def agent_name(member: int) -> str:
    """The name a member's agent signs requests under (``make_committee``'s member names)."""
    return f"agent-{member}"


def make_script(script: AgentScript, n: int) -> Script:
    """The ledger-side ``Script`` of a spec's agent script (member references resolved)."""
    return Script(
        behaviour=script.behaviour, position=script.position, argument=script.argument,
        evidence=tuple(script.evidence), confidence=script.confidence, tokens=script.tokens,
        plan=None if script.plan is None else tuple(
            step.model_dump(exclude_none=True) for step in script.plan),
        risks=tuple(script.risks), stop_conditions=tuple(script.stop_conditions),
        stop=script.stop, later_positions=tuple(script.later_positions),
        victim=None if script.victim is None else agent_name(script.victim % n))


def _attribution(operation: Any) -> tuple[Any, ...] | None:
    """What the ledger records of an operation, as the attribution oracle compares it."""
    if isinstance(operation, Contribute):
        return ("contribute", operation.task_id, operation.round, operation.position,
                operation.argument)
    if isinstance(operation, Abstain):
        return ("contribute", operation.task_id, operation.round, None, operation.reason)
    if isinstance(operation, CastVote):
        return ("audit" if operation.audit else "vote", operation.task_id,
                operation.proposal_id, operation.decision, operation.notes)
    return None


#: Told how a queued request ended: (ordered, the ledger's decoded answer or None). A request
#: that could not be sent at all reports (False, None).
OnDone = Callable[[bool, dict[str, Any] | None], None]


@dataclass(slots=True)
class _Queued:
    operation: bytes
    kind: str
    on_done: OnDone | None = None


class AgentDriver:
    """One member's agent: its debater, its PBFT client, its queue and its timers."""

    def __init__(self, harness: DebateHarness, member: int, script: AgentScript) -> None:
        world = harness.world
        self.harness = harness
        self.world = world
        self.member = member
        self.name = agent_name(member)
        self.script = script
        self.debater = ScriptedDebater(self.name, make_script(script, world.committee.n))
        self.byzantine = script.behaviour in BYZANTINE_BEHAVIOURS
        #: A silent agent sends nothing at all, not even ticks.
        self.ticks = script.behaviour != "silent"
        self.client = world.add_client(self.name, world.member_keys[member], clock_of=member)
        self.rng = world.rng(f"debate/agent/{member}")
        #: Answers the debater is still thinking about (head first), then the client's queue.
        self.thinking: deque[tuple[Any, str]] = deque()
        self.queue: deque[_Queued] = deque()
        self.outstanding: _Queued | None = None
        #: Duties already answered (each is asked once).
        self.asked: set[tuple[Any, ...]] = set()
        #: Escalated tasks this agent resolved.
        self.acted: set[tuple[str, str]] = set()
        #: What this driver signed under its own name (``_attribution`` keys).
        self.submitted: set[tuple[Any, ...]] = set()
        self.stats: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.forged: list[tuple[str, int]] = []
        self._poll_pending = False
        self._alarm = Alarm(harness.world, f"agent {member}: timer", self._on_timer)
        self._last_tick_at = -1.0e9

    # -------------------------------------------------------------- reading

    @property
    def ledger(self) -> Ledger:
        return self.world.replicas[self.member].app  # type: ignore[return-value]

    @property
    def up(self) -> bool:
        return self.member not in self.world.down

    def local_ms(self) -> float:
        return self.world.local_time(self.member) * MS

    # -------------------------------------------------------------- polling

    def request_poll(self) -> None:
        if not self._poll_pending:
            self._poll_pending = True
            self.world.at(self.world.now, self.poll, f"agent {self.member}: poll")

    def poll(self) -> None:
        self._poll_pending = False
        if not self.up:
            self._alarm.arm(self.world.now + IDLE_POLL_MS / MS)
            return
        self.pump()  # answers may have waited while the member was down
        ledger = self.ledger
        harness = self.harness
        for task_id in ledger.task_ids:
            decision = ledger.decision(task_id)
            if decision is None and self.byzantine:
                self._raw(self.debater.raw_actions(ledger.view_for(task_id, self.name)))
            if decision == "escalated" and self.member == harness.resolver:
                self._resolve(ledger, task_id)
        # Votes on what was just revealed first, then the next round's contribution.
        duties = sorted(ledger.duties(self.name), key=lambda duty: duty[0] != "vote")
        for kind, task_id, what in duties:
            key = (kind, task_id, what)
            if key in self.asked:
                continue
            if kind == "audit":
                # Audits are a person's review, scripted by the scenario's ``audit`` entry;
                # other members with the role leave it to the auditor.
                if self.member == harness.auditor:
                    self.asked.add(key)
                    assert harness.spec.audit is not None
                    self._answer(CastVote(task_id=task_id, proposal_id=what,
                                          decision=harness.spec.audit.decision,
                                          notes=f"{self.name}: audit", audit=True), "audit")
                continue
            self.asked.add(key)
            view = ledger.view_for(task_id, self.name)
            if kind == "contribute":
                answer: Any = self.debater.decide_contribution(view)
            else:
                proposal = next((p for p in view.proposals if p.proposal_id == what), None)
                answer = None if proposal is None else self.debater.decide_vote(view, proposal)
            if answer is not None:
                self._answer(answer, kind)
        self._arm_tick(ledger)

    def _resolve(self, ledger: Ledger, task_id: str) -> None:
        if ("resolve", task_id) in self.acted:
            return
        status = ledger.task_status(task_id)
        self.acted.add(("resolve", task_id))
        spec = self.harness.spec.resolve
        assert spec is not None
        proposals = status["proposals"]
        if spec.proposal_of is not None:
            author = agent_name(spec.proposal_of % self.world.committee.n)
            proposals = [p for p in proposals if p["author"] == author]
        chosen = min(proposals, key=lambda p: (-len(p["approvals"]), p["proposal_id"]),
                     default=None)
        decision = spec.decision if chosen is not None else "reject"
        self._answer(Resolve(task_id=task_id, decision=decision,
                             proposal_id=None if decision == "reject" else chosen["proposal_id"],
                             notes=spec.notes or f"{self.name}: resolved"), "resolve")

    # ------------------------------------------------------------- sending

    def open_task(self, question: str | None = None) -> None:
        """Open the scenario's task (``question``: the same task under another question, for
        scenarios with several tasks)."""
        task = self.harness.spec.task
        n = self.world.committee.n
        self.harness.note_open()
        self.enqueue(encode_op(OpenTask(
            question=question or task.question, context=task.context,
            evidence=tuple(task.evidence),
            max_rounds=task.max_rounds, round_ms=task.round_ms, vote_ms=task.vote_ms,
            deadline_ms=task.deadline_ms, token_budget=task.token_budget,
            agent_token_budget=task.agent_token_budget, threshold=task.threshold,
            judge=None if task.judge is None else agent_name(task.judge % n),
            require_audit=task.require_audit)), "open_task")

    def _answer(self, operation: Any, kind: str) -> None:
        """Send an answer once the debater thought about it. An agent thinks about one answer
        at a time, in the order asked (its model is one process), each for a time drawn from
        its ``think_ms``."""
        if len(self.thinking) >= MAX_AGENT_QUEUE:
            self.stats["queue-full"] += 1
            return
        self.thinking.append((operation, kind))
        if len(self.thinking) == 1:
            self._think()

    def _think(self) -> None:
        low, high = self.script.think_ms
        delay = low if high <= low else self.rng.uniform(low, high)
        if delay <= 0:
            self._thought()
        else:
            self.world.at(self.world.now + delay / MS, self._thought,
                          f"agent {self.member}: {self.thinking[0][1]}")

    def _thought(self) -> None:
        operation, kind = self.thinking.popleft()
        key = _attribution(operation)
        if key is not None and len(self.submitted) < MAX_SUBMITTED_KEPT:
            self.submitted.add(key)
        elif key is not None:
            self.stats["unrecorded"] += 1
        self.enqueue(encode_op(operation), kind)
        if self.thinking:
            self._think()

    def _raw(self, actions: list[tuple[str, bytes]]) -> None:
        for client_id, operation in actions:
            if client_id == self.name:
                try:
                    key = _attribution(decode_op(operation))
                except MalformedOperation:
                    key = None
                if key is not None and len(self.submitted) < MAX_SUBMITTED_KEPT:
                    self.submitted.add(key)
                self.enqueue(operation, "raw")
            else:
                self._forge(client_id, operation)

    def _forge(self, client_id: str, operation: bytes) -> None:
        """A request under someone else's client id, signed with this agent's own key (the
        only key it has), relayed by its member to every member."""
        world = self.world
        timestamp = min(MAX_COUNTER, max(int(world.local_time(self.member) * 1_000_000),
                                         self.client.last_timestamp + len(self.forged) + 1))
        try:
            signed = sign_message(Request(client=client_id, timestamp=timestamp,
                                          operation=operation),
                                  world.member_keys[self.member], world.committee.digest)
        except (LocalError, ValueError):
            self.stats["unsendable"] += 1
            return
        if len(self.forged) < MAX_SUBMITTED_KEPT:
            self.forged.append((client_id, timestamp))
            self.harness.forged[(client_id, timestamp, hashlib.sha256(operation).digest())] = (
                self.name)
        self.stats["forged"] += 1
        for member in range(world.committee.n):
            if member == self.member:
                world.inject(member, member, signed.raw)
            else:
                world.transmit(self.member, member, signed.raw, "request")

    def enqueue(self, operation: bytes, kind: str, on_done: OnDone | None = None) -> bool:
        """Queue a request behind the outstanding one (False: the queue is full, dropped).
        ``on_done`` hears how it ended (the commit driver's operations use it)."""
        if len(self.queue) >= MAX_AGENT_QUEUE:
            self.stats["queue-full"] += 1
            return False
        self.queue.append(_Queued(operation, kind, on_done))
        self.pump()
        return True

    def drop_queued(self, kind: str) -> int:
        """Forget the queued (not yet sent) requests of ``kind``: their sender died with its
        member. Returns how many."""
        kept = deque(queued for queued in self.queue if queued.kind != kind)
        dropped = len(self.queue) - len(kept)
        self.queue = kept
        return dropped

    def pending(self, kinds: frozenset[str]) -> bool:
        """A request of one of ``kinds`` is outstanding or queued."""
        return (self.outstanding is not None and self.outstanding.kind in kinds) or any(
            queued.kind in kinds for queued in self.queue)

    def pump(self) -> None:
        if self.outstanding is not None or not self.queue:
            return
        if not self.up:  # the agent is down with its member: look again later
            self._alarm.arm(self.world.now + IDLE_POLL_MS / MS)
            return
        queued = self.queue.popleft()
        try:
            self.world.submit(self.name, queued.operation)
        except (LocalError, ValueError):
            self.stats["unsendable"] += 1
            if queued.on_done is not None:
                queued.on_done(False, None)
            self.pump()
            return
        self.outstanding = queued
        self.stats["sent"] += 1
        self.harness.requests += 1

    def on_completed(self, record: CompletedRequest) -> None:
        done, self.outstanding = self.outstanding, None
        self.stats["completed"] += 1
        try:
            result = cbor.decode(record.result, max_size=len(record.result))
        except DecodeError:
            result = None
        if type(result) is dict and result.get("ok") is True:
            self.stats["ok"] += 1
        else:
            reason = result.get("error") if type(result) is dict else None
            self.rejected[str(reason)] += 1
        if done is not None and done.kind == "tick":
            self._last_tick_at = self.world.now
        if done is not None and done.on_done is not None:
            done.on_done(True, result if type(result) is dict else None)
        self.pump()
        self.request_poll()

    # -------------------------------------------------------------- timers

    def _ticking(self) -> bool:
        """A tick of this agent is queued or outstanding (its completion polls again)."""
        return (self.outstanding is not None and self.outstanding.kind == "tick") or any(
            queued.kind == "tick" for queued in self.queue)

    def _arm_tick(self, ledger: Ledger) -> None:
        world = self.world
        deadline = ledger.next_deadline_ms()
        wake: float | None = None
        if deadline is not None and self.ticks and not self._ticking():
            local = (deadline + self._tick_delay_ms()) / MS
            wake = max(world.global_time(self.member, local),
                       self._last_tick_at + TICK_RETRY_MS / MS)
        if not self.harness.settled:
            idle = world.now + IDLE_POLL_MS / MS
            wake = idle if wake is None else min(wake, idle)
        if wake is not None:
            # Never at this very instant again: a wake-up that finds nothing to do must not
            # spin (clock conversions can land a hair before a deadline).
            self._alarm.arm(wake if wake > world.now else world.now + MIN_WAKE_MS / MS)

    def _tick_delay_ms(self) -> float:
        return TICK_MARGIN_MS + TICK_STAGGER_MS * self.member

    def _on_timer(self) -> None:
        if self.up:
            deadline = self.ledger.next_deadline_ms()
            if (deadline is not None and self.ticks and not self._ticking()
                    and self.local_ms() >= deadline + self._tick_delay_ms() - MIN_WAKE_MS
                    and self.world.now >= self._last_tick_at + (TICK_RETRY_MS - MIN_WAKE_MS)
                    / MS):
                self._last_tick_at = self.world.now
                self.stats["ticks"] += 1
                self.enqueue(encode_op(Tick()), "tick")
        self.poll()

    def summary(self) -> dict[str, Any]:
        return {"behaviour": self.script.behaviour, "byzantine": self.byzantine,
                **{key: self.stats[key] for key in ("sent", "completed", "ok", "ticks",
                                                    "forged", "queue-full", "unsendable")},
                "rejected": dict(sorted(self.rejected.items()))}


class DebateHarness:
    """A scenario's debate in one world: the drivers, the opening, the oracles, the result."""

    def __init__(self, world: World, scenario: Scenario) -> None:
        assert scenario.debate is not None
        self.world = world
        self.spec: DebateSpec = scenario.debate
        n = world.committee.n
        self.n = n
        spec = self.spec
        self.opener = spec.opener % n
        self.resolver = None if spec.resolve is None else spec.resolve.member % n
        self.auditor = None if spec.audit is None else spec.audit.member % n
        self.task_id: str | None = None
        self.requests = 0
        #: (client id, timestamp, operation digest) of every request an agent forged under a
        #: foreign name -> the forger's name (bounded by the drivers' MAX_SUBMITTED_KEPT).
        self.forged: dict[tuple[str, int, bytes], str] = {}
        self.settled = False
        scripts = spec.agent_scripts(n)
        self.byzantine_debaters = sorted(m for m, s in scripts.items()
                                         if s.behaviour in BYZANTINE_BEHAVIOURS)
        world.byzantine.update(self.byzantine_debaters)
        self.drivers = {member: AgentDriver(self, member, scripts[member]) for member in range(n)}
        self._by_name = {driver.name: driver for driver in self.drivers.values()}
        self.oracles = DebateOracles(self)
        self.traffic_at_open: tuple[Counter[str], Counter[str], int] | None = None
        self.traffic_at_settle: tuple[Counter[str], Counter[str], int] | None = None
        world.execution_observers.append(self._on_execute)
        world.completion_observers.append(self._on_completed)

    def start(self) -> None:
        self.world.at(self.spec.open_at_ms / MS, self.drivers[self.opener].open_task,
                      "debate: open task")

    # ---------------------------------------------------------- observers

    def _on_execute(self, member: int, effect: Execute) -> None:
        if self.forged and member not in self.world.byzantine:
            for request, ran in zip(effect.requests, effect.executed):
                key = (request.client, request.timestamp,
                       hashlib.sha256(request.operation).digest())
                if ran and key in self.forged:
                    self.oracles.violate(ORACLE_FORGERY, f"executed a request under "
                                                         f"{request.client}'s name that "
                                                         f"{self.forged[key]} forged",
                                         (member,), effect.seq)
        replica = self.world.replicas[member]
        if effect.seq != replica.last_executed:
            return  # an earlier batch of this step: the ledger already moved on
        self.oracles.on_execute(member, effect.seq)
        if not self.settled and self._settled_everywhere():
            self.settled = True
            self.traffic_at_settle = self._traffic()
        self.drivers[member].request_poll()

    def _on_completed(self, record: CompletedRequest) -> None:
        driver = self._by_name.get(record.client)
        if driver is not None:
            driver.on_completed(record)

    def note_open(self) -> None:
        if self.traffic_at_open is None:
            self.traffic_at_open = self._traffic()

    def _traffic(self) -> tuple[Counter[str], Counter[str], int]:
        reference = self.reference_member()
        executed = 0 if reference is None else (
            self.world.replicas[reference].stats.executed_requests)
        traffic = self.world.traffic
        return Counter(traffic.messages), Counter(traffic.bytes), executed

    # ------------------------------------------------------------ reading

    def is_settled(self) -> bool:
        """The task reached its end at every honest replica that is up (see settled_at)."""
        return self.settled

    def driver_named(self, agent: str) -> AgentDriver | None:
        return self._by_name.get(agent)

    def honest_up(self) -> list[int]:
        return [m for m in self.world.honest if m not in self.world.down]

    def reference_member(self) -> int | None:
        """The honest member that is up and furthest ahead (lowest id on a tie)."""
        members = self.honest_up()
        if not members:
            return None
        return max(members, key=lambda m: (self.world.replicas[m].last_executed, -m))

    def find_task(self, ledger: Ledger) -> str | None:
        """The scenario's task in ``ledger`` (opened by the opener's agent with the question)."""
        if self.task_id is not None:
            return self.task_id if self.task_id in ledger.task_ids else None
        opener = agent_name(self.opener)
        for task_id in ledger.task_ids:
            status = ledger.task_status(task_id)
            if status["opener"] == opener and status["question"] == self.spec.task.question:
                self.task_id = task_id
                return task_id
        return None

    def settled_at(self, member: int) -> bool:
        """The task reached its end at ``member``'s ledger (see :meth:`task_settled`)."""
        ledger: Ledger = self.world.replicas[member].app  # type: ignore[assignment]
        task_id = self.find_task(ledger)
        return task_id is not None and self.task_settled(ledger, task_id)

    def task_settled(self, ledger: Ledger, task_id: str) -> bool:
        """``task_id`` reached its end in ``ledger``: decided or escalated; resolved if the
        scenario has a resolver; audited if it has an auditor and needs one."""
        decision = ledger.decision(task_id)
        if decision is None or (decision == "escalated" and self.resolver is not None):
            return False
        if decision == "approved" and self.auditor is not None:
            status = ledger.task_status(task_id)
            groupthink = status["groupthink"]
            if groupthink["flagged"] and groupthink["require_audit"] and not (
                    groupthink["commit_ready"]):
                auditor = agent_name(self.auditor)
                return any(a["agent"] == auditor for a in groupthink["audits"])
        return True

    def _settled_everywhere(self) -> bool:
        members = self.honest_up()
        return bool(members) and all(self.settled_at(m) for m in members)

    # ------------------------------------------------------------- result

    def result(self) -> dict[str, Any]:
        """The debate's outcome at the reference replica, with the expectation checked."""
        world = self.world
        reference = self.reference_member()
        ledger: Ledger | None = (None if reference is None
                                 else world.replicas[reference].app)  # type: ignore[assignment]
        task_id = None if ledger is None else self.find_task(ledger)
        status = None if task_id is None else ledger.task_status(task_id)  # type: ignore[union-attr]
        decided = None
        if status is not None:
            decided = next((p for p in status["proposals"]
                            if p["proposal_id"] == status["decided_proposal"]), None)
        honest_drops = Counter()
        for member in world.honest:
            honest_drops.update(world.replicas[member].stats.dropped)
        outcome: dict[str, Any] = {
            "task_id": task_id,
            "reference_member": reference,
            "decision": None if status is None else status["decision"],
            "state": None if status is None else status["state"],
            "exit_reason": None if status is None else status["exit_reason"],
            "escalated_to": None if status is None else status["escalated_to"],
            "resolved_by": None if status is None else status["resolved_by"],
            "decided_proposal": None if status is None else status["decided_proposal"],
            "approvals": [] if decided is None else decided["approvals"],
            "rejections": [] if decided is None else decided["rejections"],
            "proposals": 0 if status is None else len(status["proposals"]),
            "rounds": None if status is None else status["rounds_used"],
            "max_rounds": None if status is None else status["max_rounds"],
            "threshold": None if status is None else status["threshold"],
            "tokens": None if status is None else status["tokens"],
            "flagged": None if status is None else status["groupthink"]["flagged"],
            "signals": [] if status is None else sorted(
                {s["kind"] for s in status["groupthink"]["signals"]}),
            "commit_ready": None if status is None else status["groupthink"]["commit_ready"],
            "audit_approvals": [] if status is None else status["groupthink"]["audit_approvals"],
            "audit_gated": task_id is not None and task_id in self.oracles.audit_waited,
            "rejection_counts": {} if ledger is None else dict(
                sorted(ledger.rejection_counts.items())),
            "forged_requests": sum(d.stats["forged"] for d in self.drivers.values()),
            "dropped_bad_signature": honest_drops["bad-signature"],
            "byzantine_debaters": self.byzantine_debaters,
            "settled": self.settled,
            "traffic": self.traffic_during_task(),
            "agents": {d.name: d.summary() for d in self.drivers.values()},
        }
        failures = self.expectation_failures(outcome)
        outcome["expect"] = self.spec.expect.model_dump()
        outcome["expect_met"] = not failures
        outcome["expect_failures"] = failures
        return outcome

    def traffic_during_task(self) -> dict[str, Any] | None:
        """Messages and bytes by type from the opening to the settlement (or now), and the
        requests executed meanwhile at the reference replica."""
        if self.traffic_at_open is None:
            return None
        end = self.traffic_at_settle or self._traffic()
        messages = end[0] - self.traffic_at_open[0]
        sizes = end[1] - self.traffic_at_open[1]
        return {"messages": sum(messages.values()), "bytes": sum(sizes.values()),
                "ops": end[2] - self.traffic_at_open[2],
                "messages_by_type": dict(sorted(messages.items())),
                "bytes_by_type": dict(sorted(sizes.items()))}

    def expectation_failures(self, outcome: dict[str, Any]) -> list[str]:
        expect = self.spec.expect
        failures: list[str] = []
        for field_name in ("decision", "exit_reason", "flagged", "commit_ready", "audit_gated"):
            wanted = getattr(expect, field_name)
            if wanted is not None and outcome[field_name] != wanted:
                failures.append(f"{field_name} is {outcome[field_name]!r}, expected {wanted!r}")
        if expect.resolved is not None and (outcome["resolved_by"] is not None) != expect.resolved:
            failures.append(f"resolved_by is {outcome['resolved_by']!r}, expected "
                            f"{'a resolver' if expect.resolved else 'none'}")
        missing = [r for r in expect.rejected if not outcome["rejection_counts"].get(r)]
        if missing:
            failures.append(f"no {', '.join(missing)} rejection (counts: "
                            f"{outcome['rejection_counts']})")
        return failures


def _status_digest(statuses: dict[str, Any]) -> bytes:
    return hashlib.sha256(json.dumps(statuses, sort_keys=True, separators=(",", ":"))
                          .encode()).digest()


class DebateOracles:
    """The debate oracles of the module docstring."""

    def __init__(self, harness: DebateHarness) -> None:
        self.harness = harness
        self.world = harness.world
        committee = self.world.committee
        self.roles = {m.name: frozenset(m.roles) for m in committee.members}
        self.contributors = tuple(sorted(m.name for m in committee.members
                                         if "propose" in m.roles))
        self.voters = tuple(sorted(m.name for m in committee.members if "vote" in m.roles))
        self.quorum = committee.quorum
        # last executed seq -> (digest of every task's status, the first member seen there)
        self._seen: dict[int, tuple[bytes, int]] = {}
        #: Tasks seen approved, flagged and waiting for an auditor (the gate held).
        self.audit_waited: set[str] = set()

    def violate(self, oracle: str, detail: str, members: tuple[int, ...],
                seq: int | None) -> None:
        self.world.oracles.violate(oracle, detail, members, seq)

    @staticmethod
    def statuses(ledger: Ledger) -> dict[str, Any]:
        return {task_id: ledger.task_status(task_id, reveal_open_round=True)
                for task_id in ledger.task_ids}

    def on_execute(self, member: int, seq: int) -> None:
        world = self.world
        if member in world.byzantine or member in world.down:
            return
        ledger: Ledger = world.replicas[member].app  # type: ignore[assignment]
        statuses = self.statuses(ledger)
        digest = _status_digest(statuses)
        seen = self._seen.get(seq)
        if seen is None:
            if len(self._seen) < MAX_STATUS_SEQS_KEPT:
                self._seen[seq] = (digest, member)
            self.check(member, ledger, statuses, seq)
        elif seen[0] != digest:
            self.violate(ORACLE_AGREEMENT, f"members {seen[1]} and {member} hold different "
                                           f"debate states after seq {seq}", (seen[1], member),
                         seq)

    def check(self, member: int, ledger: Ledger, statuses: dict[str, Any],
              seq: int | None) -> None:
        """Every invariant on one honest replica's tasks."""
        where = (member,)
        if ledger.contributors != self.contributors or ledger.voters != self.voters:
            self.violate(ORACLE_ROLES, f"ledger contributors {ledger.contributors} / voters "
                                       f"{ledger.voters} differ from the genesis committee's",
                         where, seq)
        for task_id, status in statuses.items():
            self._check_task(member, task_id, status, seq)

    def _honest_driver(self, agent: str) -> AgentDriver | None:
        """The driver of an honest member's agent that recorded everything it signed."""
        driver = self.harness.driver_named(agent)
        if driver is None or driver.member in self.world.byzantine or driver.stats[
                "unrecorded"]:
            return None
        return driver

    def _check_task(self, member: int, task_id: str, status: dict[str, Any],
                    seq: int | None) -> None:
        where = (member,)
        roles = self.roles

        def has(agent: str | None, role: str) -> bool:
            return agent is not None and role in roles.get(agent, frozenset())

        if status["rounds_used"] > status["max_rounds"] or len(status["rounds"]) > status[
                "max_rounds"]:
            self.violate(ORACLE_ROUNDS, f"{task_id}: {len(status['rounds'])} rounds "
                                        f"({status['rounds_used']} closed) > max_rounds "
                                        f"{status['max_rounds']}", where, seq)
        tokens = status["tokens"]
        declared = sum(c["tokens"] for r in status["rounds"] for c in r["contributions"] or ())
        over = {a: t for a, t in tokens["by_agent"].items() if t > tokens["agent_budget"]}
        if (tokens["used"] > tokens["budget"] or over
                or sum(tokens["by_agent"].values()) != tokens["used"]
                or declared != tokens["used"]):
            self.violate(ORACLE_BUDGET, f"{task_id}: used {tokens['used']} of {tokens['budget']}"
                                        f", per agent {tokens['by_agent']} (cap "
                                        f"{tokens['agent_budget']}), transcript declares "
                                        f"{declared}", where, seq)
        if not has(status["opener"], "propose"):
            self.violate(ORACLE_ROLES, f"{task_id}: opened by {status['opener']} without "
                                       "'propose'", where, seq)
        for round_ in status["rounds"]:
            contributions = round_["contributions"] or []
            agents = [c["agent"] for c in contributions]
            if len(set(agents)) != len(agents):
                self.violate(ORACLE_DUPLICATES, f"{task_id} round {round_['round']}: "
                                                f"contributions {agents}", where, seq)
            for c in contributions:
                agent = c["agent"]
                if not has(agent, "propose"):
                    self.violate(ORACLE_ROLES, f"{task_id} round {round_['round']}: "
                                               f"contribution of {agent} without 'propose'",
                                 where, seq)
                driver = self._honest_driver(agent)
                key = ("contribute", task_id, round_["round"], c["position"], c["argument"])
                if driver is not None and key not in driver.submitted:
                    self.violate(ORACLE_ATTRIBUTION, f"{task_id} round {round_['round']}: "
                                                     f"{agent} never sent the contribution "
                                                     f"{c['position']!r} attributed to it",
                                 where, seq)
        for proposal in status["proposals"]:
            voters = [v["agent"] for v in proposal["votes"]]
            if len(set(voters)) != len(voters):
                self.violate(ORACLE_DUPLICATES, f"{proposal['proposal_id']}: votes of "
                                                f"{voters} (one agent counted twice)",
                             where, seq)
            for vote in proposal["votes"]:
                agent = vote["agent"]
                if not has(agent, "vote"):
                    self.violate(ORACLE_ROLES, f"{proposal['proposal_id']}: vote of {agent} "
                                               "without 'vote'", where, seq)
                driver = self._honest_driver(agent)
                key = ("vote", task_id, proposal["proposal_id"], vote["decision"],
                       vote["notes"])
                if driver is not None and key not in driver.submitted:
                    self.violate(ORACLE_ATTRIBUTION, f"{proposal['proposal_id']}: {agent} "
                                                     f"never sent the {vote['decision']} vote "
                                                     "attributed to it", where, seq)
        resolved_by = status["resolved_by"]
        if resolved_by is not None and not (has(resolved_by, "human")
                                            or resolved_by == status["escalated_to"]):
            self.violate(ORACLE_ROLES, f"{task_id}: resolved by {resolved_by}, neither "
                                       "'human' nor the judge", where, seq)
        if status["decision"] == "approved" and resolved_by is None:
            decided = next((p for p in status["proposals"]
                            if p["proposal_id"] == status["decided_proposal"]), None)
            approvals = set() if decided is None else {
                a for a in decided["approvals"] if has(a, "vote")}
            if status["threshold"] < self.quorum or len(approvals) < status["threshold"]:
                self.violate(ORACLE_THRESHOLD, f"{task_id}: approved with {len(approvals)} "
                                               f"distinct approvals of voters, threshold "
                                               f"{status['threshold']} (2f+1 = {self.quorum})",
                             where, seq)
        groupthink = status["groupthink"]
        for audit in groupthink["audits"]:
            agent = audit["agent"]
            if not has(agent, "audit"):
                self.violate(ORACLE_ROLES, f"{task_id}: audit by {agent} without 'audit'",
                             where, seq)
            driver = self._honest_driver(agent)
            key = ("audit", task_id, status["decided_proposal"], audit["decision"],
                   audit["notes"])
            if driver is not None and key not in driver.submitted:
                self.violate(ORACLE_ATTRIBUTION, f"{task_id}: {agent} never sent the "
                                                 f"{audit['decision']} audit attributed to it",
                             where, seq)
        # A human's resolution is itself the human check; a judge's is not (it is an agent).
        if (status["decision"] == "approved" and groupthink["flagged"]
                and groupthink["require_audit"] and not has(resolved_by, "human")):
            if not groupthink["commit_ready"]:
                self.audit_waited.add(task_id)
            elif not groupthink["audit_approvals"]:
                self.violate(ORACLE_AUDIT_GATE, f"{task_id}: flagged and commit-ready without "
                                                "an auditor's approval", where, seq)

    def final(self) -> None:
        """End of run: every honest replica that is up checked again; replicas at the same
        sequence number hold the same tasks; decided tasks agree everywhere."""
        world = self.world
        members = self.harness.honest_up()
        by_seq: dict[int, tuple[bytes, int]] = {}
        final: dict[str, tuple[Any, int]] = {}
        for member in members:
            ledger: Ledger = world.replicas[member].app  # type: ignore[assignment]
            seq = world.replicas[member].last_executed
            statuses = self.statuses(ledger)
            self.check(member, ledger, statuses, seq)
            digest = _status_digest(statuses)
            first = by_seq.setdefault(seq, (digest, member))
            if first[0] != digest:
                self.violate(ORACLE_AGREEMENT, f"members {first[1]} and {member} hold "
                                               f"different debate states at seq {seq}",
                             (first[1], member), seq)
            for task_id, status in statuses.items():
                if status["state"] not in ("approved", "rejected"):
                    continue
                outcome = (status["state"], status["exit_reason"], status["decided_proposal"],
                           status["resolved_by"],
                           [[(c["agent"], c["position"]) for c in r["contributions"] or ()]
                            for r in status["rounds"]])
                known = final.setdefault(task_id, (outcome, member))
                if known[0] != outcome:
                    self.violate(ORACLE_AGREEMENT, f"{task_id}: members {known[1]} and "
                                                   f"{member} disagree on the decided outcome",
                                 (known[1], member), seq)
