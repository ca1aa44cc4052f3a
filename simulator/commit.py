"""The commit layer in the simulated world: every member's single submitter (the production
sans-IO ``commit.submitter.Submitter``) executing the debate's approved plan on simulated
shared resources with injected faults (DESIGN.md sections 6 and 8).

With a scenario's ``commit`` section (``simulator/spec.py``; it needs a ``debate``) the run
goes on after the debate: the primary of the current view with the ``submit`` role orders
a ``commit_intent``, executes the granted commit step by step against the resources, and
orders the ``commit_result``. Pieces:

* :class:`ResourceStore` -- ONE store per world: the resources all submitters act on (like a
  shared sandbox directory), each effect recorded per idempotency key like the real handlers
  (``commit/handlers/base.py``): ``apply`` is idempotent by key (a second apply answers
  ``already_applied`` and does nothing), ``query`` is ``was_applied``, ``compensate`` restores
  the prior value and fences a key that was never applied (a later apply of it fails
  ``permanent``). A ``patch`` sets the resource's value to the step's ``patch_id``; ``read``
  and ``test``/``command`` steps change nothing but still count as applied once. Calls take a
  latency drawn from the world's seeded rng, and faults are drawn per call: ``transient``
  (no effect), ``timeout`` (the call is answered after its step timeout: LATE_EFFECT_SHARE
  of them take effect late too, the others take effect on time and their answer is lost),
  ``permanent_at`` steps, and submitter crashes right after an effect (or a compensation)
  before its answer arrives. The store is also a **gate**: an ``apply`` or ``compensate`` not
  backed by an ordered, granted intent naming the caller -- as f+1 honest replicas' ledgers
  show it, which models the resource checking an f+1 reply certificate -- waits up to
  GATE_WAIT_MS for that backing and is then refused (``permission_denied``) and counted.
* :class:`CommitDriver` -- one per member, next to its ``AgentDriver``: it calls
  ``Submitter.poll`` with its own replica's ledger and view after every execution there, on
  the core's deadlines, after answers and every COMMIT_IDLE_POLL_MS while commits are
  unsettled, and performs the effects: ``OrderOp`` through the member's own signed client
  (queued behind the agent's requests: one request outstanding per client id),
  ``CallHandler`` to the store, ``BeginCommit``/``LogAttempt``/``EndCommit`` to the member's
  in-memory WAL (:class:`SimWal`: begin and end are commit points; attempts are synced at the
  next one, so a crash may lose them). A crash drops the core and whatever it was waiting
  for; the restarted member gets a fresh ``Submitter`` over its surviving WAL (none after a
  lost disk). The core's own watchdog (``commit.stall_ms``) orders a ``tick`` for a granted
  commit stalled without result: harmless when the primary is alive, and when it is not,
  the unexecuted request makes the backups change view -- so the next primary takes over
  naturally.
* Byzantine submitters (``commit.byzantine_submitter``; the member counts against f):
  ``execute-twice`` sends every apply twice with the same key and orders a second, different
  result once its result is in; ``unapproved-plan`` orders a ``commit_intent`` for every task
  it sees undecided and calls the store for the steps of a plan no ordered intent contains.
  Both otherwise do their duty (the approved commit still completes).

:class:`CommitOracles` (checked during the run and at the end; a Byzantine member's replica
is not judged, nor a result a Byzantine submitter ordered -- it can report anything -- but
every effect anybody makes is):

* ``commit-exactly-once`` -- no idempotency key takes effect twice; a committed commit's keys
  each took effect exactly once and are in place; a ``permission_denied`` commit has none;
* ``commit-authorised`` -- every effect (an apply, or a compensation that restores) belongs to
  an intent an honest replica holds granted, for an approved, commit-ready task's decided
  proposal, with the key at that step, from a caller that sent one of its intents and has
  the ``submit`` role;
* ``commit-rollback`` -- when a ``rolled_back`` result appears, no key of the commit is in
  place and every resource it changed holds its value from before the commit;
* ``commit-concurrency`` -- at the store, commits taking effect on a resource before their
  result is known never outnumber its limit; honest ledgers' ``grant_violations()`` is empty;
* ``commit-agreement`` -- honest replicas at the same sequence number hold the same commits
  (intents, grant, result); results agree across progress.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bftdeliberate.commit.executor import RetryPolicy
from bftdeliberate.commit.model import StepAttempt, commit_id, idempotency_key
from bftdeliberate.commit.submitter import (
    BeginCommit,
    CallHandler,
    EndCommit,
    LogAttempt,
    OrderOp,
    Submitter,
    SubmitterEffect,
    wal_progress,
)
from bftdeliberate.commit.types import StepCall, StepOutcome
from bftdeliberate.deliberation.ledger import Ledger
from bftdeliberate.deliberation.ops import CommitDone, CommitIntent, Tick, encode_op
from bftdeliberate.pbft.effects import Execute
from simulator.debate import MS, AgentDriver, DebateHarness, agent_name
from simulator.world import Alarm

if TYPE_CHECKING:
    from simulator.spec import CommitSpec, Scenario
    from simulator.world import World

#: A call not yet backed by an ordered, granted intent at f+1 honest replicas waits this long
#: for the backing (replicas execute the intent a little after each other) before it is
#: refused.
GATE_WAIT_MS = 1_000.0
#: While commit work is unsettled, a driver also looks at its ledger this often (a view change
#: executes nothing it could be told about).
COMMIT_IDLE_POLL_MS = 500.0
#: Shortest time between two wake-ups of a driver (clock conversions can land a hair early).
MIN_WAKE_MS = 1.0
#: Poll rounds in one wake-up (the core's effects can make more work visible at once).
MAX_POLL_ROUNDS = 8
#: Sequence numbers whose checked commit-state digest the oracle keeps for comparison.
MAX_STATUS_SEQS_KEPT = 100_000
#: Share of timed-out calls that take effect late (the rest take effect and lose the answer).
LATE_EFFECT_SHARE = 0.5
#: Patch id the ``unapproved-plan`` submitter writes (no approved plan holds it).
UNAPPROVED_PATCH = "patch-unapproved"
#: Resource it targets when the scenario names none, and the timeout its calls claim.
UNAPPROVED_TARGET = "file:unapproved.txt"
UNAPPROVED_TIMEOUT_MS = 1_000
#: Members' WAL records kept (an in-memory WAL; a run writes a few dozen).
MAX_WAL_RECORDS = 100_000
#: Request kinds the drivers queue behind their agents (the core's operations, watchdog ticks
#: included, and a Byzantine submitter's extra ones); settling waits until none is left.
COMMIT_REQUEST_KINDS = frozenset({"commit", "byzantine-commit"})

ORACLE_EXACTLY_ONCE = "commit-exactly-once"
ORACLE_AUTHORISED = "commit-authorised"
ORACLE_ROLLBACK = "commit-rollback"
ORACLE_CONCURRENCY = "commit-concurrency"
ORACLE_AGREEMENT = "commit-agreement"


# ----------------------------------------------------------------------------------- WAL


@dataclass(frozen=True, slots=True)
class WalEntry:
    """One WAL record as ``wal_progress`` reads it (``commit.wal.WalRecord``'s shape)."""

    type: str
    commit_id: str
    fields: dict[str, Any]


@dataclass(slots=True)
class SimWal:
    """A member's write-ahead log: intent and result records are commit points (synced with
    everything before them); attempts wait for the next one, so a crash may lose them."""

    synced: list[WalEntry] = field(default_factory=list)
    unsynced: list[WalEntry] = field(default_factory=list)
    dropped: int = 0

    def append(self, kind: str, commit: str, fields: dict[str, Any], *, durable: bool) -> None:
        if len(self.synced) + len(self.unsynced) >= MAX_WAL_RECORDS:
            self.dropped += 1
            return
        self.unsynced.append(WalEntry(kind, commit, fields))
        if durable:
            self.synced.extend(self.unsynced)
            self.unsynced.clear()

    def crash(self, lose_unsynced: bool) -> int:
        lost = len(self.unsynced) if lose_unsynced else 0
        if not lose_unsynced:
            self.synced.extend(self.unsynced)
        self.unsynced.clear()
        return lost

    def records(self) -> list[WalEntry]:
        return self.synced + self.unsynced


# ------------------------------------------------------------------------------- helpers


def commit_statuses(ledger: Ledger) -> dict[str, Any]:
    """Every commit's status in ``ledger`` (intents, grant, result), by commit id."""
    book = ledger.commits
    return {cid: book.status(cid) for cid in book.commit_ids}


def _digest(data: Any) -> bytes:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"))
                          .encode()).digest()


def backs(ledger: Ledger, call: StepCall, caller: str) -> bool:
    """``ledger`` holds an ordered, granted intent of ``call.commit_id`` sent by ``caller``
    whose step ``call.index`` is exactly this call (key, resource, content)."""
    book = ledger.commits
    try:
        status = book.status(call.commit_id)
    except KeyError:
        return False
    if status["grant"] != "granted" or all(i["submitter"] != caller
                                           for i in status["intents"]):
        return False
    steps = status["intent"]["steps"]
    if not 0 <= call.index < len(steps):
        return False
    step = steps[call.index]
    return (step["idempotency_key"] == call.idempotency_key and step["resource"] == call.resource
            and step["step"] == call.step)


def _ok(**fields: Any) -> StepOutcome:
    return StepOutcome(ok=True, **fields)


def _failed(code: str, detail: str) -> StepOutcome:
    return StepOutcome(ok=False, error_code=code, detail=detail)


# ------------------------------------------------------------------------------ the store


@dataclass(slots=True)
class KeyRecord:
    """What the store knows of one idempotency key (the real handlers' per-key record)."""

    commit_id: str
    index: int
    resource: str
    kind: str
    #: The effect is in place (applied and not compensated).
    applied: bool = False
    #: Rolled back -- or fenced before it was ever applied: no apply of it may take effect.
    compensated: bool = False
    #: Times the effect took place (the exactly-once oracle: at most 1).
    effects: int = 0
    prior: str | None = None


@dataclass(slots=True)
class _Call:
    caller: int
    action: str  # apply, compensate or query
    call: StepCall
    answer: Callable[[StepOutcome], None] | None
    fault: str | None  # None, transient, slow (late effect), lost (answer lost)
    waiting_since: float | None = None


class ResourceStore:
    """The world's shared simulated resources (module docstring)."""

    def __init__(self, harness: CommitHarness) -> None:
        self.harness = harness
        self.world = harness.world
        spec = harness.spec
        self.faults = spec.faults
        self.allow = spec.allow
        self.values: dict[str, str | None] = {name: resource.initial
                                              for name, resource in spec.resources.items()}
        self.initial = dict(self.values)
        self.keys: dict[str, KeyRecord] = {}
        self.rng = self.world.rng("commit/resources")
        self.stats: Counter[str] = Counter()
        #: Calls scheduled or waiting at the gate, not yet processed.
        self.in_flight = 0
        self._waiting: list[_Call] = []
        #: resource -> commits that took effect on it and whose result is not known yet.
        self.holders: dict[str, set[str]] = {}
        #: (commit, resource) -> the resource's value before the commit first changed it.
        self.before: dict[tuple[str, str], str | None] = {}
        self._crashes = {"crash_submitter_after_effect": 0, "crash_mid_rollback": 0}

    # -- checks without effect ---------------------------------------------------------------

    def check(self, call: StepCall) -> StepOutcome | None:
        """The allow-list check (``EffectHandler.check``): None = allowed."""
        step = call.step
        kind = step.get("step")
        if kind in ("test", "command"):
            program = str(step.get("cmd") or "").split()
            if not program or not any(fnmatch.fnmatchcase(program[0], allowed)
                                      for allowed in self.allow.commands):
                return _failed("permission_denied", f"program {program[:1]} is not in the "
                                                    "allow-list")
            return None
        target = step.get("target")
        if not isinstance(target, str) or not any(fnmatch.fnmatchcase(target, pattern)
                                                  for pattern in self.allow.targets):
            return _failed("permission_denied", f"target {target!r} is outside the allow-list")
        if kind == "patch" and not step.get("patch_id"):
            return _failed("invalid_step", "a patch step needs a patch_id")
        return None

    def limit(self, resource: str) -> int:
        return self.harness.spec.resource_limits.get(resource, 1)

    def backed(self, call: StepCall, caller: int) -> bool:
        """The gate: f+1 honest replicas hold an ordered, granted intent for this call from
        this caller (the resource verifying an f+1 reply certificate)."""
        world = self.world
        name = agent_name(caller)
        needed = world.committee.f + 1
        found = 0
        for member in world.honest:
            if backs(world.replicas[member].app, call, name):  # type: ignore[arg-type]
                found += 1
                if found >= needed:
                    return True
        return False

    # -- calls -------------------------------------------------------------------------------

    def call(self, caller: int, action: str, call: StepCall,
             answer: Callable[[StepOutcome], None] | None) -> None:
        """A handler call from ``caller``: it arrives after a latency (and a fault), takes
        effect if the gate lets it, and ``answer`` hears the outcome (unless it is lost)."""
        low, high = self.faults.latency_ms
        latency = low if high <= low else self.rng.uniform(low, high)
        fault = None
        draw = self.rng.random()
        if draw < self.faults.timeout_p:
            fault = "slow" if self.rng.random() < LATE_EFFECT_SHARE else "lost"
        elif draw < self.faults.timeout_p + self.faults.transient_p:
            fault = "transient"
        if fault is not None:
            self.stats[f"fault-{fault}"] += 1
        pending = _Call(caller, action, call, answer, fault)
        if fault == "slow":  # it arrives (and takes effect) after its timeout
            latency += call.timeout_ms
        self.in_flight += 1
        self.stats[f"calls-{action}"] += 1
        self.world.at(self.world.now + latency / MS, lambda: self._arrive(pending),
                      f"commit store: {action}")

    def _arrive(self, pending: _Call) -> None:
        if pending.action != "query":
            refusal = self.check(pending.call)
            if refusal is not None:
                self.stats["denied"] += 1
                self._finish(pending, refusal)
                return
            if not self.backed(pending.call, pending.caller):
                pending.waiting_since = self.world.now
                self._waiting.append(pending)
                self.world.at(self.world.now + GATE_WAIT_MS / MS,
                              lambda: self._gate_expired(pending), "commit store: gate")
                return
        self._run(pending)

    def recheck_waiting(self) -> None:
        """An honest replica executed something: calls waiting at the gate may be backed."""
        if not self._waiting:
            return
        for pending in list(self._waiting):
            if self.backed(pending.call, pending.caller):
                self._waiting.remove(pending)
                self._run(pending)

    def _gate_expired(self, pending: _Call) -> None:
        if pending not in self._waiting:
            return
        self._waiting.remove(pending)
        self.stats["refusals"] += 1
        self._finish(pending, _failed("permission_denied", "no ordered, granted intent backs "
                                                           "this call"))

    def _run(self, pending: _Call) -> None:
        call = pending.call
        if pending.fault == "transient":
            self._finish(pending, _failed("transient", "simulated transient failure"))
            return
        if pending.action == "query":
            record = self.keys.get(call.idempotency_key)
            self._finish(pending, _ok(already_applied=record is not None
                                      and self._was_applied(record)))
            return
        record = self.keys.get(call.idempotency_key)
        if record is None:
            record = self.keys[call.idempotency_key] = KeyRecord(
                call.commit_id, call.index, call.resource, str(call.step.get("step")))
        if pending.action == "apply":
            if call.index in self.faults.permanent_at and not self._was_applied(record):
                self._finish(pending, _failed("permanent", "simulated permanent failure"))
                return
            outcome, effect = self._apply(record, call, pending.caller)
            crash = "crash_submitter_after_effect" if effect else None
        else:
            outcome, effect = self._compensate(record, call, pending.caller)
            crash = "crash_mid_rollback" if effect else None
        if crash is not None:
            self._maybe_crash(crash, pending)
        self._finish(pending, outcome)

    def _finish(self, pending: _Call, outcome: StepOutcome) -> None:
        self.in_flight -= 1
        if pending.fault == "lost":
            self.stats["answers-lost"] += 1
            return
        if pending.answer is not None:
            pending.answer(outcome)

    # -- effects (one key record each, like the real handlers) ---------------------------------

    @staticmethod
    def _was_applied(record: KeyRecord) -> bool:
        return record.applied

    def _apply(self, record: KeyRecord, call: StepCall,
               caller: int) -> tuple[StepOutcome, bool]:
        if record.compensated:
            self.stats["fenced"] += 1
            return _failed("permanent", "the key was compensated (fenced)"), False
        if self._was_applied(record):
            self.stats["already-applied"] += 1
            return _ok(already_applied=True), False
        self._hold(call)
        if record.kind == "patch":
            self.before.setdefault((call.commit_id, call.resource),
                                   self.values.get(call.resource))
            record.prior = self.values.get(call.resource)
            self.values[call.resource] = str(call.step["patch_id"])
        record.applied = True
        record.effects += 1
        self.stats["effects"] += 1
        self.harness.oracles.on_effect(caller, call, record, "apply")
        return _ok(), True

    def _compensate(self, record: KeyRecord, call: StepCall,
                    caller: int) -> tuple[StepOutcome, bool]:
        if record.compensated:
            return _ok(), False
        effect = False
        if record.applied:
            self._hold(call)
            self._restore(record)
            record.applied = False
            self.stats["compensations"] += 1
            self.harness.oracles.on_effect(caller, call, record, "compensate")
            effect = True
        else:
            self.stats["fences"] += 1
        record.compensated = True
        return _ok(), effect

    def _restore(self, record: KeyRecord) -> None:
        if record.kind == "patch":
            self.values[record.resource] = record.prior

    def _hold(self, call: StepCall) -> None:
        """The concurrency oracle's view: ``call.commit_id`` takes effect on its resource."""
        finished = self.harness.results_seen
        if call.commit_id in finished:
            return  # a late call of a finished commit (deduplicated or fenced anyway)
        holders = self.holders.setdefault(call.resource, set())
        holders.difference_update([c for c in holders if c in finished])
        holders.add(call.commit_id)
        if len(holders) > self.limit(call.resource):
            self.harness.oracles.violate(
                ORACLE_CONCURRENCY, f"{call.resource}: commits "
                f"{sorted(c[:12] for c in holders)} take effect at once (limit "
                f"{self.limit(call.resource)})", (), None)

    def _maybe_crash(self, fault: str, pending: _Call) -> None:
        crash = getattr(self.faults, fault)
        harness = self.harness
        if (crash is None or crash.step != pending.call.index
                or self._crashes[fault] >= crash.times
                or pending.caller in harness.world.byzantine
                or pending.caller in harness.world.down):
            return
        self._crashes[fault] += 1
        harness.crash_for_fault(pending.caller, crash.lose_unsynced, crash.restart_after_ms)

    # -- reports -------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return self.in_flight == 0

    def summary(self) -> dict[str, Any]:
        records = self.keys.values()
        return {
            "effects_applied": sum(r.effects > 0 for r in records),
            "effects_in_place": sum(r.applied for r in records),
            "duplicate_effects": sum(max(0, r.effects - 1) for r in records),
            "compensations": self.stats["compensations"],
            "fenced": self.stats["fenced"],
            "refusals": self.stats["refusals"],
            "denied": self.stats["denied"],
            "calls": {action: self.stats[f"calls-{action}"]
                      for action in ("apply", "compensate", "query")},
            "faults": {kind: self.stats[f"fault-{kind}"]
                       for kind in ("transient", "slow", "lost")},
            "answers_lost": self.stats["answers-lost"],
            "crashes": dict(self._crashes),
            "resources": dict(sorted(self.values.items())),
        }


# ---------------------------------------------------------------------------- the driver


class CommitDriver:
    """One member's submitter: the production core, its timers, its WAL and its calls."""

    def __init__(self, harness: CommitHarness, member: int, agent: AgentDriver) -> None:
        self.harness = harness
        self.world = harness.world
        self.member = member
        self.name = agent_name(member)
        self.agent = agent
        submitter = harness.spec.byzantine_submitter
        self.behaviours: frozenset[str] = frozenset(
            submitter.behaviours if submitter is not None and harness.byzantine_member == member
            else ())
        self.incarnation = 0
        self.core: Submitter | None = self._new_core()
        self.stats: Counter[str] = Counter()
        self._poll_pending = False
        self._alarm = Alarm(self.world, f"commit {member}: timer", self.poll)
        # Byzantine bookkeeping.
        self._second_results: set[str] = set()
        self._unapproved_intents: set[str] = set()
        self._forged_calls = False

    def _new_core(self) -> Submitter:
        harness, member = self.harness, self.member
        return Submitter(
            self.name, rng=self.world.rng(f"commit/submitter/{member}/{self.incarnation}"),
            policy=harness.policy, check=harness.store.check,
            known_progress=lambda cid: wal_progress(harness.wals[member].records(), cid),
            stall_ms=harness.spec.stall_ms)

    # -- reading -------------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.member not in self.world.down

    def now_ms(self) -> int:
        return math.floor(self.world.local_time(self.member) * MS)

    def _at_local(self, local_ms: float) -> float:
        """The global time at which this member's clock reads ``local_ms``."""
        return self.world.global_time(self.member, local_ms / MS)

    # -- life cycle ----------------------------------------------------------------------------

    def crashed(self) -> None:
        """The member went down: the core and everything it waited for are gone."""
        self.incarnation += 1
        self.core = None
        self._alarm.cancel()
        self._poll_pending = False
        self.stats["dropped-queued"] += self.agent.drop_queued("commit")

    def restarted(self) -> None:
        """A new process: a fresh core over the surviving WAL."""
        self.core = self._new_core()
        self.request_poll()

    # -- polling -------------------------------------------------------------------------------

    def request_poll(self) -> None:
        if not self._poll_pending and self.up:
            self._poll_pending = True
            self.world.at(self.world.now, self.poll, f"commit {self.member}: poll")

    def poll(self) -> None:
        self._poll_pending = False
        core = self.core
        if not self.up or core is None:
            return
        replica = self.world.replicas[self.member]
        ledger: Ledger = replica.app  # type: ignore[assignment]
        for _ in range(MAX_POLL_ROUNDS):
            now = self.now_ms()
            effects: list[SubmitterEffect] = []
            deadline = core.next_deadline_ms()
            if deadline is not None and now >= deadline:
                effects += core.handle_timer(now)
            effects += core.poll(ledger, replica.view, now)
            if not effects:
                break
            self.perform(effects)
            if core is not self.core:
                return  # the member crashed on one of these effects
        if "unapproved-plan" in self.behaviours:
            self._unapproved_plan(ledger)
        self._arm_next()

    def perform(self, effects: list[SubmitterEffect]) -> None:
        wal = self.harness.wals[self.member]
        incarnation = self.incarnation
        for effect in effects:
            if incarnation != self.incarnation:
                return  # crashed while performing (a call answered at once cannot, but be sure)
            if isinstance(effect, OrderOp):
                self._order(effect.key, effect.op)
            elif isinstance(effect, CallHandler):
                self._call(effect)
            elif isinstance(effect, BeginCommit):
                wal.append("intent", effect.intent.commit_id, effect.intent.to_data(),
                           durable=True)
                self.stats["resumed" if effect.resumed else "started"] += 1
            elif isinstance(effect, LogAttempt):
                wal.append("attempt", effect.intent.commit_id, effect.attempt.to_data(),
                           durable=False)
                self.harness.note_attempt(self.member, effect.attempt)
            elif isinstance(effect, EndCommit):
                wal.append("result", effect.intent.commit_id, effect.result.to_data(),
                           durable=True)
                self.stats["finished"] += 1

    def _order(self, key: tuple[str, str], op: CommitIntent | CommitDone | Tick) -> None:
        incarnation = self.incarnation
        if key[0] == "watch":
            self.stats["watch-ticks"] += 1

        def done(ordered: bool, answer: dict[str, Any] | None) -> None:
            if incarnation != self.incarnation or self.core is None:
                return  # the process that asked is gone
            self.core.op_settled(key, ordered)
            if (ordered and key[0] == "result" and "execute-twice" in self.behaviours
                    and isinstance(op, CommitDone)):
                self._second_result(op)
            self.request_poll()

        if not self.agent.enqueue(encode_op(op), "commit", on_done=done):
            assert self.core is not None
            self.core.op_settled(key, False)

    def _call(self, effect: CallHandler) -> None:
        incarnation = self.incarnation
        work = effect.call
        call = work.call

        def answer(outcome: StepOutcome) -> None:
            core = self.core
            if incarnation != self.incarnation or core is None or not self.up:
                self.stats["answers-dropped"] += 1  # the asking process crashed
                return
            self.perform(core.call_done(effect.commit_id, call.index, work.attempt, outcome,
                                        self.now_ms(), call_id=work.call_id))
            self.request_poll()

        store = self.harness.store
        store.call(self.member, effect.action, call, answer)
        if effect.action == "apply" and "execute-twice" in self.behaviours:
            self.stats["applied-twice"] += 1
            store.call(self.member, "apply", call, answer)

    # -- timers ------------------------------------------------------------------------------------

    def _arm_next(self) -> None:
        world = self.world
        wakes: list[float] = []
        core = self.core
        deadline = None if core is None else core.next_deadline_ms()
        if deadline is not None:  # a call's timeout or retry, or a watchdog tick
            wakes.append(self._at_local(deadline + 0.5))  # floor(now) reaches the deadline
        if not self.harness.settled:
            wakes.append(world.now + COMMIT_IDLE_POLL_MS / MS)
        if wakes:
            wake = min(wakes)
            self._alarm.arm(wake if wake > world.now else world.now + MIN_WAKE_MS / MS)

    # -- Byzantine submitters ----------------------------------------------------------------------

    def _second_result(self, first: CommitDone) -> None:
        """``execute-twice``: once its result is in, order another, different one."""
        if first.commit_id in self._second_results:
            return
        self._second_results.add(first.commit_id)
        other = "rolled_back" if first.result.result == "committed" else "committed"
        second = CommitDone(commit_id=first.commit_id,
                            result=first.result.model_copy(update={"result": other}))
        self.stats["second-results"] += 1
        self.agent.enqueue(encode_op(second), "byzantine-commit")

    def _unapproved_plan(self, ledger: Ledger) -> None:
        """``unapproved-plan``: intents for undecided tasks, and calls for a plan nobody
        ordered."""
        for task_id in ledger.task_ids:
            if task_id in self._unapproved_intents or ledger.decision(task_id) is not None:
                continue
            self._unapproved_intents.add(task_id)
            self.stats["unapproved-intents"] += 1
            self.agent.enqueue(encode_op(CommitIntent(task_id=task_id)), "byzantine-commit")
        if self._forged_calls or not ledger.task_ids:
            return
        self._forged_calls = True
        digest = self.world.committee.digest
        proposal = f"{ledger.task_ids[0]}.unapproved-{self.name}"
        forged_commit = commit_id(digest, proposal)
        targets = list(self.harness.spec.resources) or [UNAPPROVED_TARGET]
        for index, target in enumerate(targets):
            step = {"step": "patch", "target": target, "patch_id": UNAPPROVED_PATCH}
            call = StepCall(commit_id=forged_commit, index=index,
                            idempotency_key=idempotency_key(digest, proposal, index, step),
                            resource=target, step=step, timeout_ms=UNAPPROVED_TIMEOUT_MS)
            self.stats["unapproved-calls"] += 1
            self.harness.store.call(self.member, "apply", call, None)


# ---------------------------------------------------------------------------- the oracles


class CommitOracles:
    """The commit oracles of the module docstring."""

    def __init__(self, harness: CommitHarness) -> None:
        self.harness = harness
        self.world = harness.world
        self.roles = {m.name: frozenset(m.roles) for m in self.world.committee.members}
        # last executed seq -> (digest of every commit's status, the first member seen there)
        self._seen: dict[int, tuple[bytes, int]] = {}

    def violate(self, oracle: str, detail: str, members: tuple[int, ...],
                seq: int | None) -> None:
        self.world.oracles.violate(oracle, detail, members, seq)

    def on_execute(self, member: int, seq: int, ledger: Ledger) -> None:
        statuses = commit_statuses(ledger)
        for problem in ledger.commits.grant_violations():
            self.violate(ORACLE_CONCURRENCY, f"ledger grants: {problem}", (member,), seq)
        digest = _digest(statuses)
        seen = self._seen.get(seq)
        if seen is None:
            if len(self._seen) < MAX_STATUS_SEQS_KEPT:
                self._seen[seq] = (digest, member)
        elif seen[0] != digest:
            self.violate(ORACLE_AGREEMENT, f"members {seen[1]} and {member} hold different "
                                           f"commits after seq {seq}", (seen[1], member), seq)

    def on_effect(self, caller: int, call: StepCall, record: KeyRecord, action: str) -> None:
        """An apply or a restoring compensation just took effect at the store."""
        where = (caller,)
        if record.effects > 1:
            self.violate(ORACLE_EXACTLY_ONCE, f"key {call.idempotency_key[:12]} (commit "
                                              f"{call.commit_id[:12]} step {call.index}) took "
                                              f"effect {record.effects} times", where, None)
        name = agent_name(caller)
        if "submit" not in self.roles.get(name, frozenset()):
            self.violate(ORACLE_AUTHORISED, f"{name} without the 'submit' role made an "
                                            f"effect ({action})", where, None)
            return
        world = self.world
        for member in world.honest:
            ledger: Ledger = world.replicas[member].app  # type: ignore[assignment]
            if backs(ledger, call, name) and self._approved(ledger, call.commit_id):
                return
        self.violate(ORACLE_AUTHORISED, f"{name}'s {action} of commit {call.commit_id[:12]} "
                                        f"step {call.index} has no approved proposal with a "
                                        "granted intent at any honest replica", where, None)

    @staticmethod
    def _approved(ledger: Ledger, commit: str) -> bool:
        status = ledger.commits.status(commit)
        task_id = status["task_id"]
        if not ledger.commit_ready(task_id):
            return False
        return ledger.task_status(task_id)["decided_proposal"] == status["intent"][
            "proposal_id"]

    def on_result(self, commit: str, status: dict[str, Any]) -> None:
        """The first honest replica showed ``commit``'s result. Only an honest submitter's
        result is judged: a Byzantine one with a granted intent can report anything (its
        effects are still judged one by one, in :meth:`on_effect`)."""
        submitter = self.world.committee.member_named(status["intents"][-1]["submitter"])
        if submitter is None or submitter.id in self.world.byzantine:
            return
        store = self.harness.store
        result = status["result"]["result"]
        keys = [step["idempotency_key"] for step in status["intent"]["steps"]]
        records = [store.keys.get(key) for key in keys]
        if result == "committed":
            wrong = [index for index, record in enumerate(records)
                     if record is None or record.effects != 1 or not record.applied]
            if wrong:
                self.violate(ORACLE_EXACTLY_ONCE, f"commit {commit[:12]} committed but steps "
                                                  f"{wrong} are not applied exactly once", (),
                             None)
        elif result == "permission_denied":
            ran = [index for index, record in enumerate(records)
                   if record is not None and record.effects]
            if ran:
                self.violate(ORACLE_EXACTLY_ONCE, f"commit {commit[:12]} was denied but steps "
                                                  f"{ran} took effect", (), None)
        elif result == "rolled_back":
            in_place = [index for index, record in enumerate(records)
                        if record is not None and record.applied]
            changed = {resource: (before, store.values.get(resource))
                       for (cid, resource), before in store.before.items()
                       if cid == commit and store.values.get(resource) != before}
            if in_place or changed:
                self.violate(ORACLE_ROLLBACK, f"commit {commit[:12]} rolled back but steps "
                                              f"{in_place} are in place and resources "
                                              f"{changed} (before, now) are not restored", (),
                             None)

    def final(self) -> None:
        """End of run: honest replicas that are up at the same seq hold the same commits, and
        every result agrees wherever it is known."""
        world = self.world
        by_seq: dict[int, tuple[bytes, int]] = {}
        results: dict[str, tuple[Any, int]] = {}
        for member in self.harness.debate.honest_up():
            replica = world.replicas[member]
            ledger: Ledger = replica.app  # type: ignore[assignment]
            statuses = commit_statuses(ledger)
            for problem in ledger.commits.grant_violations():
                self.violate(ORACLE_CONCURRENCY, f"ledger grants: {problem}", (member,),
                             replica.last_executed)
            first = by_seq.setdefault(replica.last_executed, (_digest(statuses), member))
            if first[0] != _digest(statuses):
                self.violate(ORACLE_AGREEMENT, f"members {first[1]} and {member} hold "
                                               f"different commits at seq "
                                               f"{replica.last_executed}", (first[1], member),
                             replica.last_executed)
            for cid, status in statuses.items():
                if status["result"] is None:
                    continue
                known = results.setdefault(cid, (status["result"], member))
                if known[0] != status["result"]:
                    self.violate(ORACLE_AGREEMENT, f"commit {cid[:12]}: members {known[1]} "
                                                   f"and {member} hold different results",
                                 (known[1], member), replica.last_executed)
        for key, record in self.harness.store.keys.items():
            if record.effects > 1:
                self.violate(ORACLE_EXACTLY_ONCE, f"key {key[:12]} took effect "
                                                  f"{record.effects} times", (), None)


# --------------------------------------------------------------------------- the harness


class CommitHarness:
    """A scenario's commit layer in one world: store, WALs, drivers, oracles, result."""

    def __init__(self, world: World, scenario: Scenario, debate: DebateHarness) -> None:
        assert scenario.commit is not None
        self.world = world
        self.debate = debate
        self.spec: CommitSpec = scenario.commit
        spec = self.spec
        n = world.committee.n
        retry = spec.retry
        self.policy = RetryPolicy(max_attempts=retry.max_attempts,
                                  base_backoff_ms=retry.base_backoff_ms,
                                  max_backoff_ms=retry.max_backoff_ms, jitter=retry.jitter)
        submitter = spec.byzantine_submitter
        self.byzantine_member = None if submitter is None else submitter.member % n
        if self.byzantine_member is not None:
            world.byzantine.add(self.byzantine_member)
        #: The tasks' questions (the first is the debate's own task).
        self.questions = spec.questions(debate.spec.task.question)
        #: Commit id -> its result, from the first honest replica that showed it.
        self.results_seen: dict[str, dict[str, Any]] = {}
        self.attempts: Counter[str] = Counter()
        self.max_attempt = 0
        self.pending_restarts = 0
        self.fault_crashes = 0
        self._ledgers_settled = False
        self._settled = False
        self.store = ResourceStore(self)
        self.wals = {member: SimWal() for member in range(n)}
        self.oracles = CommitOracles(self)
        self.drivers = {member: CommitDriver(self, member, debate.drivers[member])
                        for member in range(n)}
        world.execution_observers.append(self._on_execute)
        self._wrap_lifecycle()

    def start(self) -> None:
        """Open the further tasks right behind the debate's own (call after its start)."""
        opener = self.debate.drivers[self.debate.opener]
        for question in self.questions[1:]:
            self.world.at(self.debate.spec.open_at_ms / MS,
                          lambda q=question: opener.open_task(question=q), "commit: open task")

    # -- crashes ---------------------------------------------------------------------------------

    def _wrap_lifecycle(self) -> None:
        """World has no crash/restart observers: wrap this world's crash and restart, so that
        every crash -- a scenario event, a fault of this module, a test's -- reaches the
        member's WAL and driver."""
        world = self.world
        crash, restart = world.crash, world.restart

        def crashed(member: int, lose_unsynced: bool = True, lose_disk: bool = False) -> None:
            was_up = member not in world.down
            crash(member, lose_unsynced, lose_disk)
            if was_up:
                if lose_disk:
                    self.wals[member] = SimWal()
                else:
                    self.wals[member].crash(lose_unsynced)
                self.drivers[member].crashed()

        def restarted(member: int) -> None:
            was_down = member in world.down
            restart(member)
            if was_down:
                self.drivers[member].restarted()

        world.crash = crashed  # type: ignore[method-assign]
        world.restart = restarted  # type: ignore[method-assign]

    def crash_for_fault(self, member: int, lose_unsynced: bool,
                        restart_after_ms: float | None) -> None:
        """A commit fault crashes ``member`` (and schedules its restart)."""
        self.fault_crashes += 1
        self.world.crash(member, lose_unsynced)
        if restart_after_ms is None:
            return
        self.pending_restarts += 1

        def restart() -> None:
            self.pending_restarts -= 1
            if member in self.world.down:
                self.world.restart(member)
        self.world.at(self.world.now + restart_after_ms / MS, restart, "commit: restart")

    # -- observers ---------------------------------------------------------------------------------

    def _on_execute(self, member: int, effect: Execute) -> None:
        world = self.world
        if member not in world.byzantine:
            replica = world.replicas[member]
            ledger: Ledger = replica.app  # type: ignore[assignment]
            if effect.seq == replica.last_executed:
                self.oracles.on_execute(member, effect.seq, ledger)
                self._note_results(ledger)
                self.store.recheck_waiting()
                if not self._ledgers_settled and self._settled_everywhere():
                    self._ledgers_settled = True
        self.drivers[member].request_poll()

    def _note_results(self, ledger: Ledger) -> None:
        book = ledger.commits
        for cid in book.commit_ids:
            if cid in self.results_seen:
                continue
            status = book.status(cid)
            if status["result"] is not None:
                self.results_seen[cid] = status["result"]
                self.oracles.on_result(cid, status)

    def note_attempt(self, member: int, attempt: StepAttempt) -> None:
        if member in self.world.byzantine:
            return
        self.attempts["attempts"] += 1
        if attempt.retry_reason is not None:
            self.attempts["retries"] += 1
        if attempt.error_code == "timeout":
            self.attempts["timeouts"] += 1
        self.max_attempt = max(self.max_attempt, attempt.attempt)

    # -- settling ----------------------------------------------------------------------------------

    def tasks(self, ledger: Ledger) -> list[str]:
        """The scenario's tasks in ``ledger`` (opened by the opener with its questions)."""
        opener = agent_name(self.debate.opener)
        wanted = set(self.questions)
        found = []
        for task_id in ledger.task_ids:
            status = ledger.task_status(task_id)
            if status["opener"] == opener and status["question"] in wanted:
                found.append(task_id)
        return found

    def settled_at(self, member: int) -> bool:
        """Every task reached its end at ``member`` and each commit-ready one has its commit's
        result."""
        ledger: Ledger = self.world.replicas[member].app  # type: ignore[assignment]
        tasks = self.tasks(ledger)
        if len(tasks) < len(self.questions):
            return False
        book = ledger.commits
        for task_id in tasks:
            if not self.debate.task_settled(ledger, task_id):
                return False
            if ledger.commit_ready(task_id):
                cid = book.commit_of(task_id)
                if cid is None or book.status(cid)["result"] is None:
                    return False
        return True

    def _settled_everywhere(self) -> bool:
        members = self.debate.honest_up()
        return bool(members) and all(self.settled_at(m) for m in members)

    @property
    def settled(self) -> bool:
        """Once true, stays true (later work -- a restarted member resuming on a stale ledger
        during the convergence phase -- is the oracles' business): every honest replica that
        is up holds every commit's result, the store has no call left, no member that is up
        has a commit request left, and every member a commit fault crashed has restarted."""
        if not self._settled:
            self._settled = (
                self._ledgers_settled and self.store.idle and not self.pending_restarts
                and not any(driver.up and driver.agent.pending(COMMIT_REQUEST_KINDS)
                            for driver in self.drivers.values()))
        return self._settled

    def is_settled(self) -> bool:
        return self.settled

    # -- result ------------------------------------------------------------------------------------

    def result(self) -> dict[str, Any]:
        """The commits' outcome at the debate's reference replica, expectation checked."""
        world = self.world
        reference = self.debate.reference_member()
        ledger: Ledger | None = (None if reference is None
                                 else world.replicas[reference].app)  # type: ignore[assignment]
        commits = []
        if ledger is not None:
            for cid, status in commit_statuses(ledger).items():
                result = status["result"]
                commits.append({
                    "commit_id": cid, "task_id": status["task_id"],
                    "proposal_id": status["intent"]["proposal_id"], "grant": status["grant"],
                    "intents": [[i["submitter"], i["view"]] for i in status["intents"]],
                    "result": None if result is None else result["result"],
                    "error_code": None if result is None else result.get("error_code"),
                    "failed_step": None if result is None else result.get("failed_step"),
                    "rollback": None if result is None else result["rollback"]["result"]})
        store = self.store.summary()
        drivers = Counter()
        for driver in self.drivers.values():
            drivers.update(driver.stats)
        outcome: dict[str, Any] = {
            "reference_member": reference,
            "commits": commits,
            "results": dict(sorted(Counter(c["result"] for c in commits
                                           if c["result"] is not None).items())),
            **{key: store[key] for key in ("effects_applied", "effects_in_place",
                                           "duplicate_effects", "compensations", "fenced",
                                           "refusals", "denied")},
            "conflicts": 0 if ledger is None else ledger.commits.conflicts,
            "duplicate_results": 0 if ledger is None else ledger.commits.duplicate_results,
            "takeovers": sum(len(c["intents"]) > 1 for c in commits),
            "retries": self.attempts["retries"],
            "timeouts": self.attempts["timeouts"],
            "attempts": self.attempts["attempts"],
            "max_attempt": self.max_attempt,
            "crashes": self.fault_crashes,
            "watch_ticks": drivers["watch-ticks"],
            "byzantine_submitter": self.byzantine_member,
            "calls": store["calls"],
            "faults": store["faults"],
            "answers_lost": store["answers_lost"],
            "resources": store["resources"],
            "rejection_counts": {} if ledger is None else dict(
                sorted(ledger.rejection_counts.items())),
            "settled": self.settled,
        }
        failures = self.expectation_failures(outcome)
        outcome["expect"] = self.spec.expect.model_dump()
        outcome["expect_met"] = not failures
        outcome["expect_failures"] = failures
        return outcome

    def expectation_failures(self, outcome: dict[str, Any]) -> list[str]:
        expect = self.spec.expect
        failures: list[str] = []
        finished = [c for c in outcome["commits"] if c["result"] is not None]
        if expect.commits is not None and len(finished) != expect.commits:
            failures.append(f"{len(finished)} commits have a result, expected {expect.commits}")
        if expect.result is not None:
            wrong = sorted({str(c["result"]) for c in outcome["commits"]
                            if c["result"] != expect.result})
            if wrong or not outcome["commits"]:
                failures.append(f"results {wrong or 'none'}, expected {expect.result!r}")
        for name in ("effects_applied", "effects_in_place"):
            wanted = getattr(expect, name)
            if wanted is not None and outcome[name] != wanted:
                failures.append(f"{name} is {outcome[name]}, expected {wanted}")
        if outcome["duplicate_effects"]:
            failures.append(f"duplicate_effects is {outcome['duplicate_effects']}, must be 0")
        for name, key in (("min_conflicts", "conflicts"), ("min_refusals", "refusals"),
                          ("min_retries", "retries")):
            wanted = getattr(expect, name)
            if outcome[key] < wanted:
                failures.append(f"{key} is {outcome[key]}, expected at least {wanted}")
        if expect.takeover is not None and bool(outcome["takeovers"]) != expect.takeover:
            failures.append(f"takeovers is {outcome['takeovers']}, expected "
                            f"{'some' if expect.takeover else 'none'}")
        missing = [r for r in expect.rejected if not outcome["rejection_counts"].get(r)]
        if missing:
            failures.append(f"no {', '.join(missing)} rejection (counts: "
                            f"{outcome['rejection_counts']})")
        for resource, value in expect.resources.items():
            if outcome["resources"].get(resource) != value:
                failures.append(f"resource {resource} is "
                                f"{outcome['resources'].get(resource)!r}, expected {value!r}")
        return failures


__all__ = [
    "CommitDriver", "CommitHarness", "CommitOracles", "KeyRecord", "ResourceStore", "SimWal",
    "backs", "commit_statuses",
]
