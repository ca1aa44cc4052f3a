"""Scenario spec v1: a simulated run described as data (DESIGN.md section 8, issue 3).

A scenario is one JSON object, validated by the pydantic models below (unknown fields are an
error everywhere; the models are frozen). ``scenario_json_schema()`` publishes the same rules
as a JSON Schema. Example::

    {"spec": 1, "name": "my-scenario", "n": 4, "seed": 7,
     "workload": {"clients": 2, "requests": 50},
     "network": {"delay_ms": [1, 20], "loss": 0.0, "duplicate": 0.0, "reorder": true},
     "byzantine": [{"member": 0, "behaviour": "equivocate", "params": {"mode": "digest"}}],
     "events": [{"at_ms": 1000, "partition": [[0, 1], [2, 3]]},
                {"at_ms": 5000, "heal": true}],
     "clock": {"skew_ms": 50, "drift": 0.01},
     "gst_ms": 30000, "max_time_ms": 300000,
     "expect": {"safety": true, "liveness": true}}

Semantics worth knowing:

* ``byzantine``: one entry per behaviour; entries for the same member compose. Behaviour
  ``twin`` (``params.groups``: two lists of members, one per instance) runs two honest
  instances under the member's key. A Byzantine *client* is an entry with ``"client":
  "client-0"`` instead of ``"member"`` and behaviour ``bad-client``.
* ``events``: each has ``at_ms`` and exactly one action; times never decrease. In a
  ``partition``, members listed in no group form one more group together (``[[3]]`` cuts
  member 3 off from everyone else). Network faults (partition, one_way, clog) happen before
  ``gst_ms``: at GST loss and duplication stop and every partition and clog heals.
* ``expect.liveness``: true -- every request completes by ``max_time_ms``; false -- it must
  not; null or absent -- reported, not checked. ``expect.safety`` true is only promised with
  at most f Byzantine members (f+1 makes a negative control with ``"safety": false``).
* ``generator``: built-in scenarios whose faults depend on n or on the seed (``chaos``,
  ``over-threshold``) name a generator here; ``resolve()`` turns them into an ordinary spec,
  which is what a run reports.
* ``replica`` (an addition to the issue's format, optional): the replicas' checkpoint
  interval, log window and batch size, so 50-request runs can cross checkpoints.
* ``debate`` (optional; absent: the key-value workload): the replicated application is the
  deliberation ledger and one task is debated instead (``simulator/debate.py`` runs it)::

    "debate": {
      "task": {"question": "Roll out the fix?", "max_rounds": 3, "round_ms": 2000,
               "vote_ms": 2000, "deadline_ms": 30000, "token_budget": 4000,
               "agent_token_budget": 500, "threshold": null, "judge": null,
               "require_audit": true},
      "opener": 0, "open_at_ms": 100,
      "default_agent": {"behaviour": "honest", "position": "roll out with a canary",
                        "evidence": ["log:incident-{member}"], "think_ms": [200, 800]},
      "agents": [{"member": 0, "plan": [{"step": "test", "cmd": "make test"}]},
                 {"member": 1, "behaviour": "vote-flip", "think_ms": [0, 0]}],
      "default_roles": ["audit", "human", "propose", "submit", "vote"],
      "roles": [{"member": -1, "roles": ["audit"]}],
      "resolve": {"member": -1, "decision": "approve", "proposal_of": 0},
      "audit": {"member": -1, "decision": "approve"},
      "expect": {"decision": "approved", "exit_reason": "threshold_reached",
                 "flagged": false, "commit_ready": true, "rejected": ["duplicate_vote"]}}

  Every member runs an agent: its ``agents`` entry over ``default_agent`` (the fields of a
  ``deliberation.scripts.Script``, plan steps in the proposal format, and ``think_ms``: the
  model's latency per answer); ``{member}`` in its texts becomes the member's index. Member
  references may be negative, counted from the end (-1 is member n-1), so one file scales to
  any n. ``roles`` override the genesis roles (roles come only from genesis: this changes the
  generated committee). ``resolve``: that member (``human`` role, or the judge) decides an
  escalated task; ``audit``: that member audits a flagged approval. A member whose debater
  behaviour is Byzantine counts against f like a Byzantine member. ``debate.expect`` is
  checked against an honest replica's ledger; ``expect.liveness`` then means the task reached
  its end (decided or escalated; resolved and audited when the spec says who does it).
* ``commit`` (optional, only with ``debate``): the commit layer executes the approved plan
  on simulated shared resources (``simulator/commit.py`` runs it)::

    "commit": {
      "tasks": 1, "submitters": "all",
      "resources": {"file:src/retry.py": {"initial": "v0"}},
      "resource_limits": {"file:src/retry.py": 1},
      "faults": {"timeout_p": 0.1, "transient_p": 0.2, "permanent_at": [2],
                 "latency_ms": [1, 10],
                 "crash_submitter_after_effect": {"step": 1, "times": 1,
                                                  "restart_after_ms": null},
                 "crash_mid_rollback": null},
      "allow": {"targets": ["file:src/*"], "commands": ["make"]},
      "retry": {"max_attempts": 3, "base_backoff_ms": 100, "max_backoff_ms": 2000},
      "stall_ms": 10000,
      "byzantine_submitter": {"member": 0, "behaviours": ["execute-twice"]},
      "expect": {"commits": 1, "result": "committed", "effects_applied": 3,
                 "effects_in_place": 3, "takeover": false, "min_conflicts": 0,
                 "min_refusals": 0, "min_retries": 0, "rejected": ["already_committed"],
                 "resources": {"file:src/retry.py": "patch-retry"}}}

  ``tasks``: the opener opens that many tasks (the question numbered), each one commit.
  ``submitters``: the members with the genesis ``submit`` role (member 0, the first primary,
  must be one). A resource's value is a string (a ``patch`` step sets it to its
  ``patch_id``); ``resource_limits`` go to the ledger's grants (default 1). ``faults`` are
  drawn per handler call from the seed; a crash fault crashes the submitting member right
  after that step took effect (or, mid-rollback, was compensated) before the answer reaches
  it, and restarts it ``restart_after_ms`` later (null: never). ``allow``: ``fnmatch``
  patterns for targets and programs; a step outside is ``permission_denied`` before anything
  runs. ``byzantine_submitter``: that member's submitter is Byzantine and counts against f
  (``execute-twice``: every apply twice, then a second result; ``unapproved-plan``: intents
  for undecided tasks, calls for a plan no intent holds). ``commit.expect`` is checked at
  the end (null: not checked; duplicate effects are always an error) and
  ``expect.liveness`` then also means every commit-ready task's commit has its result.

Errors are one line naming the file and the field (``ConfigError``), e.g.
``my.json: events.2.at_ms: times out of order (2000 after 4000)``.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bftdeliberate.commit.executor import MAX_BACKOFF_MS, MAX_RESOURCE_LIMIT
from bftdeliberate.commit.model import MAX_ATTEMPTS_LIMIT, CommitOutcome
from bftdeliberate.commit.submitter import DEFAULT_STALL_MS
from bftdeliberate.committee import ROLES
from bftdeliberate.deliberation.ledger import EXIT_REASONS
from bftdeliberate.deliberation.ops import (
    DEFAULT_DEADLINE_MS,
    DEFAULT_MAX_ROUNDS,
    DEFAULT_ROUND_MS,
    DEFAULT_TOKEN_BUDGET,
    DEFAULT_VOTE_MS,
    MAX_ARGUMENT_LENGTH,
    MAX_CONTEXT_LENGTH,
    MAX_DECLARED_TOKENS,
    MAX_DURATION_MS,
    MAX_EVIDENCE_REF_LENGTH,
    MAX_EVIDENCE_REFS,
    MAX_POSITION_LENGTH,
    MAX_QUESTION_LENGTH,
    MAX_ROUNDS,
    MAX_TOKEN_BUDGET,
    MIN_ROUND_MS,
    REJECTION_REASONS,
)
from bftdeliberate.deliberation.proposal import (
    MAX_NOTES_LENGTH,
    MAX_PLAN_STEPS,
    MAX_RISKS,
    MAX_STOP_CONDITIONS,
    MAX_TARGET_LENGTH,
    TARGET_PATTERN,
    PlanStep,
    Tag,
)
from bftdeliberate.deliberation.scripts import (
    BEHAVIOURS as DEBATER_BEHAVIOURS,
)
from bftdeliberate.deliberation.scripts import (
    BYZANTINE_BEHAVIOURS as BYZANTINE_DEBATERS,
)
from bftdeliberate.deliberation.scripts import (
    DEFAULT_SCRIPTED_TOKENS,
)
from bftdeliberate.errors import ConfigError
from bftdeliberate.pbft.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_LOG_WINDOW,
    DEFAULT_TIMESTAMP_SKEW,
)
from bftdeliberate.wire.limits import MAX_BATCH_SIZE

SPEC_VERSION = 1
#: n = 3f+1 with f >= 1.
MIN_MEMBERS = 4
#: Simulated committees beyond this are too slow to be useful in Python (and to sweep).
MAX_MEMBERS = 64
MAX_CLIENTS = 64
MAX_REQUESTS = 100_000
#: One simulated hour: a longer run is a mistake, not a scenario.
MAX_TIME_MS = 3_600_000.0
MAX_DELAY_MS = 60_000.0
#: Clock offsets beyond the replicas' timestamp tolerance only make backups reject every
#: batch; allow up to that tolerance.
MAX_SKEW_MS = DEFAULT_TIMESTAMP_SKEW * 1000
#: Rate error of a local clock (10 % is already absurd for a quartz clock).
MAX_DRIFT = 0.1
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
#: Behaviours this module handles itself (the rest are ``simulator.byzantine.BEHAVIOURS``).
TWIN = "twin"
BAD_CLIENT = "bad-client"
#: Fields a generator fills in; a generator scenario's file must leave them out.
GENERATED_FIELDS = ("network", "byzantine", "events", "clock")

SCENARIO_DIR = "scenarios"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Workload(_Model):
    """Closed loop: each client has one request outstanding and sends the next on completion."""

    clients: int = Field(2, ge=1, le=MAX_CLIENTS, description="authorised clients")
    requests: int = Field(50, ge=1, le=MAX_REQUESTS, description="requests in total")


class NetworkSpec(_Model):
    delay_ms: tuple[float, float] = Field(
        (1.0, 20.0), description="uniform one-way delay range [low, high] in ms")
    loss: float = Field(0.0, ge=0.0, le=1.0, description="probability a message is lost")
    duplicate: float = Field(0.0, ge=0.0, le=1.0,
                             description="probability a message is delivered twice")
    reorder: bool = Field(True, description="false: each link is FIFO")

    @model_validator(mode="after")
    def _delay_range(self) -> NetworkSpec:
        low, high = self.delay_ms
        if not 0.0 <= low <= high <= MAX_DELAY_MS:
            raise _field_error("delay_ms", f"need 0 <= low <= high <= {MAX_DELAY_MS:g}, "
                                           f"got [{low:g}, {high:g}]")
        return self


class ClockSpec(_Model):
    skew_ms: float = Field(0.0, ge=0.0, le=MAX_SKEW_MS,
                           description="each member's clock offset is uniform in +-skew_ms")
    drift: float = Field(0.0, ge=0.0, le=MAX_DRIFT,
                         description="each member's clock rate error is uniform in +-drift")


class ReplicaSpec(_Model):
    checkpoint_interval: int = Field(DEFAULT_CHECKPOINT_INTERVAL, ge=1)
    log_window: int = Field(DEFAULT_LOG_WINDOW, ge=2)
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE)

    @model_validator(mode="after")
    def _window(self) -> ReplicaSpec:
        k, window = self.checkpoint_interval, self.log_window
        if window < 2 * k or window % k:
            raise _field_error("log_window", f"must be a multiple of checkpoint_interval ({k}) "
                                             f"and at least twice it, got {window}")
        return self


class ByzantineEntry(_Model):
    member: int | None = Field(None, ge=0, description="the Byzantine member (or use client)")
    client: str | None = Field(None, description="a Byzantine client (behaviour bad-client)")
    behaviour: str = Field(description="a behaviour name (see bftd sim list)")
    params: dict[str, Any] = Field(default_factory=dict)
    from_ms: float = Field(0.0, ge=0.0, le=MAX_TIME_MS,
                           description="simulated time the behaviour starts")

    @model_validator(mode="after")
    def _one_subject(self) -> ByzantineEntry:
        if (self.member is None) == (self.client is None):
            raise _field_error("member", "give exactly one of member and client")
        if self.client is not None and self.behaviour != BAD_CLIENT:
            raise _field_error("behaviour", f"a client can only be {BAD_CLIENT!r}, "
                                            f"got {self.behaviour!r}")
        if self.member is not None and self.behaviour == BAD_CLIENT:
            raise _field_error("behaviour", f"{BAD_CLIENT!r} needs client, not member")
        return self


class OneWay(_Model):
    senders: list[int] = Field(alias="from", min_length=1,
                               description="members whose messages are dropped ...")
    receivers: list[int] = Field(alias="to", min_length=1, description="... to these members")


class Clog(_Model):
    members: list[int] = Field(min_length=1)
    for_ms: float = Field(gt=0.0, le=MAX_TIME_MS, description="how long their links stall")


#: The action fields of an event (exactly one per event).
EVENT_ACTIONS = ("partition", "one_way", "clog", "crash", "restart", "heal")


class Event(_Model):
    at_ms: float = Field(ge=0.0, le=MAX_TIME_MS)
    partition: list[list[int]] | None = Field(
        None, description="groups that can talk only inside; unlisted members form one more")
    one_way: OneWay | None = None
    clog: Clog | None = None
    crash: int | None = Field(None, ge=0)
    lose_unsynced: bool | None = Field(None, description="with crash: drop unsynced writes "
                                                         "(default true)")
    lose_disk: bool | None = Field(None, description="with crash: the whole disk is lost; the "
                                                     "member restarts knowing nothing (amnesia)")
    restart: int | None = Field(None, ge=0)
    heal: Literal[True] | None = Field(None, description="end partitions, one-way blocks, clogs")

    @model_validator(mode="after")
    def _one_action(self) -> Event:
        actions = [name for name in EVENT_ACTIONS if getattr(self, name) is not None]
        if len(actions) != 1:
            raise _field_error("at_ms", "an event needs exactly one of "
                                        f"{', '.join(EVENT_ACTIONS)}; got "
                                        f"{', '.join(actions) or 'none'}")
        if self.lose_unsynced is not None and self.crash is None:
            raise _field_error("lose_unsynced", "only goes with crash")
        if self.lose_disk is not None and self.crash is None:
            raise _field_error("lose_disk", "only goes with crash")
        return self

    @property
    def action(self) -> str:
        return next(name for name in EVENT_ACTIONS if getattr(self, name) is not None)


class Expect(_Model):
    safety: bool = Field(True, description="false: a negative control that must be violated")
    liveness: bool | None = Field(None, description="null: reported, not checked")
    converge: bool | None = Field(
        None, description="with liveness: every honest member that is up ends at the same "
                          "seq (null: same as liveness; false where a victim of a faulty "
                          "primary catches up only at the next checkpoint)")

    @property
    def convergence(self) -> bool:
        return bool(self.liveness) if self.converge is None else self.converge


# ------------------------------------------------------------------- debate section

#: A debater's "thinking" (model latency) is drawn per answer from ``think_ms``; at most this.
MAX_THINK_MS = 60_000.0
#: Members a debate section may name: a non-negative index, or a negative one counted from
#: the end (-1 is member n-1), so one scenario file scales to every n.
MemberRef = int
#: Text an agent script may carry (``{member}`` in it becomes the member's index).
Position = Annotated[str, Field(min_length=1, max_length=MAX_POSITION_LENGTH,
                               pattern=r"^[^\x00-\x1f\x7f]+$")]
EvidenceRef = Annotated[str, Field(min_length=1, max_length=MAX_EVIDENCE_REF_LENGTH,
                                   pattern=r"^[^\x00-\x1f\x7f]+$")]
DEFAULT_POSITION = "approve the plan"


class DebateTask(_Model):
    """The task the opener puts to the committee (the ledger's ``open_task``)."""

    question: str = Field("Should the committee apply the proposed change?", min_length=1,
                          max_length=MAX_QUESTION_LENGTH)
    context: str = Field("", max_length=MAX_CONTEXT_LENGTH)
    evidence: list[EvidenceRef] = Field(default_factory=list, max_length=MAX_EVIDENCE_REFS)
    max_rounds: int = Field(DEFAULT_MAX_ROUNDS, ge=1, le=MAX_ROUNDS)
    round_ms: int = Field(DEFAULT_ROUND_MS, ge=MIN_ROUND_MS, le=MAX_DURATION_MS,
                          description="a round closes after this long without every "
                                      "contributor")
    vote_ms: int = Field(DEFAULT_VOTE_MS, ge=MIN_ROUND_MS, le=MAX_DURATION_MS,
                         description="votes stay open this long after the debate ended")
    deadline_ms: int = Field(DEFAULT_DEADLINE_MS, ge=MIN_ROUND_MS, le=MAX_DURATION_MS,
                             description="the whole task's lifetime from opening")
    token_budget: int = Field(DEFAULT_TOKEN_BUDGET, ge=1, le=MAX_TOKEN_BUDGET)
    agent_token_budget: int | None = Field(None, ge=1, le=MAX_TOKEN_BUDGET,
                                           description="null: the task budget split evenly")
    threshold: int | None = Field(None, ge=1, description="approvals needed (null: 2f+1)")
    judge: MemberRef | None = Field(None, description="member whose agent judges an "
                                                      "escalated task (null: a human)")
    require_audit: bool = Field(True, description="a groupthink-flagged approval needs an "
                                                  "'audit' member's approval before commit")


class AgentScript(_Model):
    """A scripted debater (``deliberation.scripts.Script``); ``{member}`` in its texts becomes
    the member's index (distinct evidence per member from one default)."""

    behaviour: str = Field("honest", description="a debater behaviour (honest, conformist, "
                                                 "garbage, or a Byzantine one)")
    position: Position = DEFAULT_POSITION
    argument: str = Field("", max_length=MAX_ARGUMENT_LENGTH)
    evidence: list[EvidenceRef] = Field(default_factory=list, max_length=MAX_EVIDENCE_REFS)
    confidence: int = Field(70, ge=0, le=100, description="percent")
    tokens: int = Field(DEFAULT_SCRIPTED_TOKENS, ge=0, le=MAX_DECLARED_TOKENS,
                        description="tokens each answer declares")
    plan: list[PlanStep] | None = Field(None, min_length=1, max_length=MAX_PLAN_STEPS,
                                        description="proposal plan steps it proposes in "
                                                    "round 0")
    risks: list[Tag] = Field(default_factory=list, max_length=MAX_RISKS)
    stop_conditions: list[Tag] = Field(default_factory=list, max_length=MAX_STOP_CONDITIONS)
    stop: Tag | None = Field(None, description="a stop condition raised every round")
    later_positions: list[Position] = Field(
        default_factory=list, max_length=MAX_ROUNDS,
        description="round r >= 1 takes later_positions[r-1] (the last one repeats)")
    victim: MemberRef | None = Field(None, description="impersonate: whose name it forges")
    think_ms: tuple[float, float] = Field(
        (0.0, 0.0), description="uniform delay [low, high] before each answer is sent")

    @model_validator(mode="after")
    def _think_range(self) -> AgentScript:
        low, high = self.think_ms
        if not 0.0 <= low <= high <= MAX_THINK_MS:
            raise _field_error("think_ms", f"need 0 <= low <= high <= {MAX_THINK_MS:g}, "
                                           f"got [{low:g}, {high:g}]")
        return self


class AgentEntry(AgentScript):
    """One member's agent; fields left out come from ``default_agent``."""

    member: MemberRef


class RoleEntry(_Model):
    member: MemberRef
    roles: list[str] = Field(description=f"genesis roles ({', '.join(sorted(ROLES))})")


class ResolveSpec(_Model):
    """A person (``human`` role) or the judge at ``member`` decides an escalated task."""

    member: MemberRef
    decision: Literal["approve", "reject"] = "approve"
    proposal_of: MemberRef | None = Field(
        None, description="approve this member's proposal (null: the most approved one)")
    notes: str = Field("", max_length=MAX_NOTES_LENGTH)


class AuditSpec(_Model):
    """The member (``audit`` role) who reviews the approved proposal of a groupthink-flagged
    task, which is not commit-ready before an auditor approves; other members with the role
    leave audits to it."""

    member: MemberRef
    decision: Literal["approve", "reject"] = "approve"


class DebateExpect(_Model):
    """Checked against an honest replica's ledger at the end (null: not checked)."""

    decision: Literal["approved", "rejected", "escalated"] | None = None
    exit_reason: str | None = Field(None, description=f"one of {', '.join(EXIT_REASONS)}")
    flagged: bool | None = Field(None, description="groupthink signals were recorded")
    commit_ready: bool | None = None
    audit_gated: bool | None = Field(
        None, description="the approved task waited for an auditor before it was "
                          "commit-ready")
    resolved: bool | None = Field(None, description="a human or the judge decided it")
    rejected: list[str] = Field(
        default_factory=list, description="rejection reasons that must each occur at least "
                                          "once")


class DebateSpec(_Model):
    """One deliberation task on the replicated ledger instead of the key-value workload."""

    task: DebateTask = DebateTask()
    opener: MemberRef = Field(0, description="member whose agent opens the task "
                                             "(needs 'propose')")
    open_at_ms: float = Field(100.0, ge=0.0, le=MAX_TIME_MS)
    default_agent: AgentScript = AgentScript()
    agents: list[AgentEntry] = Field(default_factory=list)
    default_roles: list[str] = Field(default_factory=lambda: sorted(ROLES),
                                     description="roles of members no roles entry names")
    roles: list[RoleEntry] = Field(default_factory=list)
    resolve: ResolveSpec | None = None
    audit: AuditSpec | None = None
    expect: DebateExpect = DebateExpect()

    def member_roles(self, n: int) -> dict[int, tuple[str, ...]]:
        """Every member's genesis roles at committee size n."""
        roles = {member: tuple(sorted(set(self.default_roles))) for member in range(n)}
        for entry in self.roles:
            roles[entry.member % n] = tuple(sorted(set(entry.roles)))
        return roles

    def agent_scripts(self, n: int) -> dict[int, AgentScript]:
        """Every member's agent script at size n (entries over ``default_agent``), with
        ``{member}`` filled in and member references made non-negative."""
        base = _script_fields(self.default_agent, unset=False)
        explicit = {entry.member % n: entry for entry in self.agents}
        scripts: dict[int, AgentScript] = {}
        for member in range(n):
            fields = dict(base)
            entry = explicit.get(member)
            if entry is not None:
                fields.update(_script_fields(entry, unset=True))
                fields.pop("member")
            fields = _fill_member(fields, member)
            if fields.get("victim") is not None:
                fields["victim"] = fields["victim"] % n
            scripts[member] = AgentScript.model_validate(fields)
        return scripts

    def byzantine_members(self, n: int) -> list[int]:
        return sorted(member for member, script in self.agent_scripts(n).items()
                      if script.behaviour in BYZANTINE_DEBATERS)


def _script_fields(script: AgentScript, *, unset: bool) -> dict[str, Any]:
    """A script's fields as plain data (``unset``: only those the file set); plan steps leave
    their absent fields out (a step refuses an explicit null)."""
    fields = script.model_dump(exclude_unset=unset)
    if fields.get("plan") is not None:
        fields["plan"] = [step.model_dump(exclude_none=True) for step in script.plan or ()]
    return fields


def _fill_member(value: Any, member: int) -> Any:
    if isinstance(value, str):
        return value.replace("{member}", str(member))
    if isinstance(value, list):
        return [_fill_member(item, member) for item in value]
    if isinstance(value, tuple):
        return tuple(_fill_member(item, member) for item in value)
    if isinstance(value, dict):
        return {key: _fill_member(item, member) for key, item in value.items()}
    return value


# ------------------------------------------------------------------- commit section

#: Tasks the opener may put to the committee in a commit scenario (each one commit).
MAX_COMMIT_TASKS = 8
#: Simulated shared resources a scenario may name (initial values, limits, expectations).
MAX_COMMIT_RESOURCES = 64
#: Longest simulated resource value (a patch id, or an initial value).
MAX_RESOURCE_VALUE_LENGTH = 256
#: Highest failure probability of one handler call (timeout + transient together): at 1.0
#: no call could ever succeed and every commit would end in a rollback.
MAX_FAULT_PROBABILITY = 0.9
#: Largest simulated handler latency of one call.
MAX_HANDLER_LATENCY_MS = 60_000.0
DEFAULT_HANDLER_LATENCY_MS = (1.0, 10.0)
#: Injected submitter crashes one fault entry may cause.
MAX_COMMIT_CRASHES = 8
#: A member crashed by a commit fault restarts this long after the crash (default).
DEFAULT_COMMIT_RESTART_AFTER_MS = 10_000.0
#: A granted commit without a result this long gets a watchdog tick from each member (the
#: submitter core's ``stall_ms``); at most one simulated hour.
MAX_STALL_MS = 3_600_000
#: Allow-list entries (target patterns, programs) and the length of each.
MAX_ALLOW_ENTRIES = 64
MAX_ALLOW_ENTRY_LENGTH = 256
#: Byzantine submitter behaviours (simulator/commit.py implements them).
ByzantineSubmitterBehaviour = Literal["execute-twice", "unapproved-plan"]
BYZANTINE_SUBMITTERS: tuple[str, ...] = get_args(ByzantineSubmitterBehaviour)

ResourceName = Annotated[str, Field(min_length=1, max_length=MAX_TARGET_LENGTH,
                                    pattern=TARGET_PATTERN)]
ResourceValue = Annotated[str, Field(min_length=1, max_length=MAX_RESOURCE_VALUE_LENGTH)]
AllowEntry = Annotated[str, Field(min_length=1, max_length=MAX_ALLOW_ENTRY_LENGTH,
                                  pattern=r"^[^\x00-\x1f\x7f]+$")]
StepIndex = Annotated[int, Field(ge=0, lt=MAX_PLAN_STEPS)]


class CommitResource(_Model):
    """One simulated shared resource (a file, a table) all submitters act on."""

    initial: ResourceValue | None = Field(None, description="its value before any commit "
                                                            "(null: absent)")


class CommitCrash(_Model):
    """Crash the submitting member right after the handler took effect for ``step`` (applied
    it, or for ``crash_mid_rollback`` compensated it) and before the answer reaches the
    member; it restarts ``restart_after_ms`` later (null: it stays down)."""

    step: StepIndex
    times: int = Field(1, ge=1, le=MAX_COMMIT_CRASHES,
                       description="crashes at most (each at a fresh effect of the step)")
    restart_after_ms: float | None = Field(DEFAULT_COMMIT_RESTART_AFTER_MS, gt=0.0,
                                           le=MAX_TIME_MS)
    lose_unsynced: bool = Field(True, description="WAL records not yet synced at a commit "
                                                  "point (attempts) are lost")


class CommitFaults(_Model):
    """Faults of the simulated handlers, drawn from the run's seed per call."""

    timeout_p: float = Field(0.0, ge=0.0, le=MAX_FAULT_PROBABILITY,
                             description="a call is answered after its step timeout (half "
                                         "of them: it also takes effect late; the other "
                                         "half: it takes effect and the answer is lost)")
    transient_p: float = Field(0.0, ge=0.0, le=MAX_FAULT_PROBABILITY,
                               description="a call fails 'transient' without effect")
    permanent_at: list[StepIndex] = Field(
        default_factory=list, max_length=MAX_PLAN_STEPS,
        description="steps whose apply always fails 'permanent' (no effect)")
    latency_ms: tuple[float, float] = Field(
        DEFAULT_HANDLER_LATENCY_MS, description="uniform handler latency [low, high] per call")
    crash_submitter_after_effect: CommitCrash | None = None
    crash_mid_rollback: CommitCrash | None = None

    @model_validator(mode="after")
    def _consistent(self) -> CommitFaults:
        low, high = self.latency_ms
        if not 0.0 <= low <= high <= MAX_HANDLER_LATENCY_MS:
            raise _field_error("latency_ms", f"need 0 <= low <= high <= "
                                             f"{MAX_HANDLER_LATENCY_MS:g}, got [{low:g}, "
                                             f"{high:g}]")
        if self.timeout_p + self.transient_p > MAX_FAULT_PROBABILITY:
            raise _field_error("transient_p", f"timeout_p + transient_p must be at most "
                                              f"{MAX_FAULT_PROBABILITY:g} (a call must be able "
                                              "to succeed)")
        if len(set(self.permanent_at)) != len(self.permanent_at):
            raise _field_error("permanent_at", "a step is listed twice")
        return self


class CommitAllow(_Model):
    """The simulated handlers' allow-list: a step outside it is ``permission_denied`` before
    anything runs. Targets are ``fnmatch`` patterns (``file:src/*``); a ``test``/``command``
    step's program (the first word of ``cmd``) must match one of ``commands``."""

    targets: list[AllowEntry] = Field(default_factory=lambda: ["*"],
                                      max_length=MAX_ALLOW_ENTRIES)
    commands: list[AllowEntry] = Field(default_factory=lambda: ["*"],
                                       max_length=MAX_ALLOW_ENTRIES)


class CommitRetry(_Model):
    """The submitters' retry policy (``commit.executor.RetryPolicy``)."""

    max_attempts: int = Field(3, ge=1, le=MAX_ATTEMPTS_LIMIT)
    base_backoff_ms: int = Field(100, ge=0, le=MAX_BACKOFF_MS)
    max_backoff_ms: int = Field(2_000, ge=0, le=MAX_BACKOFF_MS)
    jitter: Literal["full", "equal"] = "full"

    @model_validator(mode="after")
    def _bounds(self) -> CommitRetry:
        if self.base_backoff_ms > self.max_backoff_ms:
            raise _field_error("base_backoff_ms", f"above max_backoff_ms "
                                                  f"({self.max_backoff_ms})")
        return self


class ByzantineSubmitter(_Model):
    """A member whose submitter is Byzantine (it counts against f). ``execute-twice``: it
    applies every step twice under the same key and orders a second, different result;
    ``unapproved-plan``: it orders a commit intent for a task that is not approved and calls
    the resources for a plan no ordered intent contains. Otherwise it does its duty."""

    member: MemberRef = 0
    behaviours: list[ByzantineSubmitterBehaviour] = Field(
        min_length=1, max_length=len(BYZANTINE_SUBMITTERS))


class CommitExpect(_Model):
    """Checked at the end against an honest replica's ledger and the resources (null: not
    checked). Duplicate effects are always checked (the commit oracles: none, ever)."""

    commits: int | None = Field(None, ge=0, le=MAX_COMMIT_TASKS,
                                description="commits that have their result")
    result: CommitOutcome | None = Field(None, description="how every commit ended")
    effects_applied: int | None = Field(
        None, ge=0, description="idempotency keys whose effect took place (read/test steps "
                                "count once)")
    effects_in_place: int | None = Field(None, ge=0,
                                         description="... and are not compensated at the end")
    takeover: bool | None = Field(None, description="a later primary took over a commit")
    min_conflicts: int = Field(0, ge=0, description="commits that waited for a resource")
    min_refusals: int = Field(0, ge=0, description="calls the resources refused for want of "
                                                   "an ordered, granted intent")
    min_retries: int = Field(0, ge=0)
    rejected: list[str] = Field(default_factory=list,
                                description="ledger rejection reasons that must each occur")
    resources: dict[ResourceName, ResourceValue | None] = Field(
        default_factory=dict, max_length=MAX_COMMIT_RESOURCES,
        description="final values of these resources (null: absent)")


class CommitSpec(_Model):
    """The commit layer executes the debate's approved plan (simulator/commit.py)."""

    tasks: int = Field(1, ge=1, le=MAX_COMMIT_TASKS,
                       description="tasks the opener opens (the same question numbered); "
                                   "each approved one is one commit")
    submitters: Literal["all"] | list[MemberRef] = Field(
        "all", description="members with the genesis 'submit' role (others lose it)")
    resources: dict[ResourceName, CommitResource] = Field(
        default_factory=dict, max_length=MAX_COMMIT_RESOURCES)
    resource_limits: dict[ResourceName, int] = Field(
        default_factory=dict, max_length=MAX_COMMIT_RESOURCES,
        description="commits one resource may serve at once (default 1)")
    faults: CommitFaults = CommitFaults()
    allow: CommitAllow = CommitAllow()
    retry: CommitRetry = CommitRetry()
    stall_ms: int = Field(DEFAULT_STALL_MS, ge=1, le=MAX_STALL_MS,
                          description="the submitters' watchdog: a granted commit without "
                                      "result this long (agreed intent time) gets a tick, so "
                                      "a dead primary is voted out")
    byzantine_submitter: ByzantineSubmitter | None = None
    expect: CommitExpect = CommitExpect()

    def questions(self, question: str) -> list[str]:
        """The tasks' questions: the debate's own, then the same one numbered."""
        return [question] + [f"{question} (task {number})"
                             for number in range(2, self.tasks + 1)]

    def submitter_members(self, n: int) -> list[int]:
        if self.submitters == "all":
            return list(range(n))
        return sorted({member % n for member in self.submitters})


class Scenario(_Model):
    """Scenario spec v1."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              title="bftdeliberate scenario spec v1")

    spec: Literal[1] = Field(description="spec format version")
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    generator: Literal["chaos", "over-threshold"] | None = Field(
        None, description="built-in: faults generated from n and the seed")
    n: int = Field(4, ge=MIN_MEMBERS, le=MAX_MEMBERS, description="members (3f+1)")
    seed: int = Field(0, ge=0, le=2**63 - 1)
    workload: Workload = Workload()
    network: NetworkSpec = NetworkSpec()
    byzantine: list[ByzantineEntry] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    clock: ClockSpec = ClockSpec()
    replica: ReplicaSpec = ReplicaSpec()
    gst_ms: float = Field(30_000.0, ge=0.0, le=MAX_TIME_MS,
                          description="global stabilisation time: network faults stop")
    max_time_ms: float = Field(300_000.0, gt=0.0, le=MAX_TIME_MS,
                               description="simulated time budget of the whole run")
    expect: Expect = Expect()
    debate: DebateSpec | None = Field(
        None, description="a deliberation task on the ledger instead of the key-value "
                          "workload (absent: the workload)")
    commit: CommitSpec | None = Field(
        None, description="with a debate: the commit layer executes the approved plan on "
                          "simulated resources (absent: no commits)")

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        _check_scenario(self)
        return self

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def byzantine_members(self) -> list[int]:
        return sorted({entry.member for entry in self.byzantine if entry.member is not None})

    @property
    def faulty_members(self) -> list[int]:
        """Members that count against f: Byzantine members and members whose debater is
        Byzantine."""
        debaters = self.debate.byzantine_members(self.n) if self.debate is not None else []
        submitter = self.commit.byzantine_submitter if self.commit is not None else None
        extra = [submitter.member % self.n] if submitter is not None and (
            -self.n <= submitter.member < self.n) else []
        return sorted(set(self.byzantine_members) | set(debaters) | set(extra))

    def genesis_roles(self) -> dict[int, tuple[str, ...]] | None:
        """Every member's genesis roles with a debate (its roles, and the commit section's
        submitters holding 'submit'); None without a debate (the default committee)."""
        if self.debate is None:
            return None
        roles = self.debate.member_roles(self.n)
        if self.commit is not None:
            submitters = set(self.commit.submitter_members(self.n))
            roles = {member: tuple(sorted((set(have) - {"submit"})
                                          | ({"submit"} if member in submitters else set())))
                     for member, have in roles.items()}
        return roles

    def with_overrides(self, *, n: int | None = None, seed: int | None = None,
                       requests: int | None = None) -> Scenario:
        """The same scenario with command-line overrides, validated again."""
        # Only what the file set: a generator still knows which fields it may draw.
        data = self.model_dump(by_alias=True, exclude_unset=True)
        if n is not None:
            data["n"] = n
        if seed is not None:
            data["seed"] = seed
        if requests is not None:
            data["workload"] = {**data.get("workload", {}), "requests": requests}
        flags = " ".join(f"--{name} {value}" for name, value in
                         (("n", n), ("seed", seed), ("requests", requests)) if value is not None)
        return _validate(data, f"{_origin(self)} (with {flags})", self.source)

    @property
    def source(self) -> str | None:
        """Where this scenario came from: ``builtin:NAME`` or a file path (for repro lines)."""
        return self._source

    #: Set by the loaders; not part of the spec.
    _source: str | None = PrivateAttr(default=None)


# ------------------------------------------------------------------ validation


def _field_error(where: str, why: str) -> PydanticCustomError:
    """An error at a named field of the model being validated (pydantic then has no location,
    so the field path is part of the message; ``_one_line`` prints it as such)."""
    return PydanticCustomError("scenario", "{where}: {why}", {"where": where, "why": why})


def _members_in_range(where: str, members: list[int], n: int) -> None:
    for index, member in enumerate(members):
        if not 0 <= member < n:
            raise _field_error(f"{where}.{index}", f"member {member} does not exist (n={n}, "
                                                   f"members are 0..{n - 1})")


def _origin(scenario: Scenario) -> str:
    """How error messages name a scenario: its file, or the built-in's name."""
    source = scenario.source
    if source is None:
        return f"scenario {scenario.name}"
    return f"built-in scenario {source[len('builtin:'):]}" if source.startswith(
        "builtin:") else source


def _byzantine_api():
    try:
        from simulator import byzantine
    except ModuleNotFoundError as missing:
        if missing.name != "simulator.byzantine":
            raise  # a broken import inside byzantine.py is a bug, not an absence
        return None
    return byzantine


def known_behaviours() -> list[str]:
    api = _byzantine_api()
    names = set(api.BEHAVIOURS) if api is not None else set()
    return sorted(names | {TWIN, BAD_CLIENT})


def _check_byzantine(scenario: Scenario) -> None:
    n = scenario.n
    clients = [f"client-{j}" for j in range(scenario.workload.clients)]
    api = _byzantine_api()
    twins: set[int] = set()
    others: set[int] = set()
    for index, entry in enumerate(scenario.byzantine):
        where = f"byzantine.{index}"
        if entry.member is not None and entry.member >= n:
            raise _field_error(f"{where}.member", f"member {entry.member} does not exist "
                                                  f"(n={n}, members are 0..{n - 1})")
        if entry.client is not None and entry.client not in clients:
            raise _field_error(f"{where}.client", f"no client {entry.client!r} (the workload "
                                                  f"has client-0..client-{len(clients) - 1})")
        if entry.from_ms > scenario.max_time_ms:
            raise _field_error(f"{where}.from_ms", "after max_time_ms")
        if api is None:
            raise _field_error(f"{where}.behaviour", "Byzantine behaviours are not available "
                                                     "(simulator.byzantine is missing)")
        if entry.behaviour == TWIN:
            _check_twin(f"{where}.params", entry.params, n, clients)
            if entry.member in twins:
                raise _field_error(f"{where}.member", f"member {entry.member} is a twin twice")
            twins.add(entry.member)  # type: ignore[arg-type]
            continue
        params = dict(entry.params)
        if entry.behaviour != BAD_CLIENT and entry.behaviour not in api.BEHAVIOURS:
            raise _field_error(f"{where}.behaviour",
                               f"unknown behaviour {entry.behaviour!r} (known: "
                               f"{', '.join(known_behaviours())})")
        try:
            if entry.behaviour == BAD_CLIENT:
                api.validate_bad_client(params)
                table = api.BAD_CLIENT_PARAMS
            else:
                others.add(entry.member)  # type: ignore[arg-type]
                api.validate_behaviour(entry.behaviour, params)
                table = api.BEHAVIOURS[entry.behaviour].PARAMS
        except ValueError as exc:
            raise _field_error(f"{where}.params", _first_line(exc)) from None
        # Member ids inside parameters must exist at this n (checked again after --n).
        for name, param in table.items():
            if param.kind in ("members", "nodes") and params.get(name) is not None:
                members = [m for m in params[name] if type(m) is int]
                _members_in_range(f"{where}.params.{name}", members, n)
    both = twins & others
    if both:
        raise _field_error("byzantine", f"member {min(both)} is a twin and has other "
                                        "behaviours; a twin is two honest instances")
    if scenario.expect.safety and len(scenario.byzantine_members) > scenario.f:
        raise _field_error("expect.safety", f"true is not promised with "
                                            f"{len(scenario.byzantine_members)} Byzantine "
                                            f"members at n={n} (f={scenario.f}); "
                                            "a negative control says false")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "invalid parameters"


def _check_twin(where: str, params: dict[str, Any], n: int, clients: list[str]) -> None:
    """``groups``: two lists of members (and client ids: a client's requests then reach only
    that side's instance); optional ``isolate`` (default true: each instance sends only to
    its side)."""
    unknown = set(params) - {"groups", "isolate"}
    if unknown or "groups" not in params:
        raise _field_error(where, "twin takes groups (required) and isolate; got "
                                  f"{', '.join(sorted(params)) or 'nothing'}")
    if "isolate" in params and type(params["isolate"]) is not bool:
        raise _field_error(f"{where}.isolate", "true or false")
    groups = params["groups"]
    if not isinstance(groups, list) or len(groups) != 2 or not all(
            isinstance(group, list) for group in groups):
        raise _field_error(f"{where}.groups", "need two lists of members (or client ids)")
    for side, group in enumerate(groups):
        for index, node in enumerate(group):
            if isinstance(node, str):
                if node not in clients:
                    raise _field_error(f"{where}.groups.{side}.{index}",
                                       f"no client {node!r} (the workload has "
                                       f"client-0..client-{len(clients) - 1})")
            elif type(node) is not int:
                raise _field_error(f"{where}.groups.{side}.{index}",
                                   "a member id or a client id")
            elif not 0 <= node < n:
                raise _field_error(f"{where}.groups.{side}.{index}",
                                   f"member {node} does not exist (n={n}, members are "
                                   f"0..{n - 1})")


def _check_events(scenario: Scenario) -> None:
    n = scenario.n
    previous = 0.0
    down: set[int] = set()
    for index, event in enumerate(scenario.events):
        where = f"events.{index}"
        if event.at_ms < previous:
            raise _field_error(f"{where}.at_ms", f"times out of order ({event.at_ms:g} after "
                                                 f"{previous:g})")
        previous = event.at_ms
        if event.at_ms > scenario.max_time_ms:
            raise _field_error(f"{where}.at_ms", f"after max_time_ms ({event.at_ms:g} > "
                                                 f"{scenario.max_time_ms:g})")
        action = event.action
        if action in ("partition", "one_way", "clog") and event.at_ms >= scenario.gst_ms:
            raise _field_error(f"{where}.at_ms", f"a network fault at or after gst_ms "
                                                 f"({scenario.gst_ms:g}): faults stop at GST")
        if event.partition is not None:
            seen: set[int] = set()
            for group_index, group in enumerate(event.partition):
                if not group:
                    raise _field_error(f"{where}.partition.{group_index}", "an empty group")
                _members_in_range(f"{where}.partition.{group_index}", group, n)
                twice = seen & set(group)
                if twice:
                    raise _field_error(f"{where}.partition.{group_index}",
                                       f"member {min(twice)} is in two groups")
                seen |= set(group)
        elif event.one_way is not None:
            _members_in_range(f"{where}.one_way.from", event.one_way.senders, n)
            _members_in_range(f"{where}.one_way.to", event.one_way.receivers, n)
        elif event.clog is not None:
            _members_in_range(f"{where}.clog.members", event.clog.members, n)
        elif event.crash is not None:
            if event.crash >= n:
                raise _field_error(f"{where}.crash", f"member {event.crash} does not exist "
                                                     f"(n={n}, members are 0..{n - 1})")
            if event.crash in down:
                raise _field_error(f"{where}.crash", f"member {event.crash} is already down")
            down.add(event.crash)
        elif event.restart is not None:
            if event.restart >= n:
                raise _field_error(f"{where}.restart", f"member {event.restart} does not exist "
                                                       f"(n={n}, members are 0..{n - 1})")
            if event.restart not in down:
                raise _field_error(f"{where}.restart", f"member {event.restart} is not down "
                                                       f"at {event.at_ms:g} ms")
            down.discard(event.restart)


def _member_ref(where: str, member: int, n: int) -> int:
    """A debate member reference at size n (negative: from the end), or a field error."""
    if not -n <= member < n:
        raise _field_error(where, f"member {member} does not exist (n={n}, members are "
                                  f"0..{n - 1}, or -1..-{n} from the end)")
    return member % n


def _check_debate(scenario: Scenario) -> None:
    debate = scenario.debate
    assert debate is not None
    n, f = scenario.n, scenario.f
    roles_seen: set[int] = set()
    for index, entry in enumerate(debate.roles):
        member = _member_ref(f"debate.roles.{index}.member", entry.member, n)
        if member in roles_seen:
            raise _field_error(f"debate.roles.{index}.member", f"member {member} has two "
                                                                "roles entries")
        roles_seen.add(member)
        for role_index, role in enumerate(entry.roles):
            if role not in ROLES:
                raise _field_error(f"debate.roles.{index}.roles.{role_index}",
                                   f"unknown role {role!r} (known: {', '.join(sorted(ROLES))})")
    for role_index, role in enumerate(debate.default_roles):
        if role not in ROLES:
            raise _field_error(f"debate.default_roles.{role_index}",
                               f"unknown role {role!r} (known: {', '.join(sorted(ROLES))})")
    roles = debate.member_roles(n)
    for where, script in [("debate.default_agent", debate.default_agent),
                          *((f"debate.agents.{i}", e) for i, e in enumerate(debate.agents))]:
        if script.behaviour not in DEBATER_BEHAVIOURS:
            raise _field_error(f"{where}.behaviour",
                               f"unknown debater behaviour {script.behaviour!r} (known: "
                               f"{', '.join(DEBATER_BEHAVIOURS)})")
    agents_seen: set[int] = set()
    for index, entry in enumerate(debate.agents):
        member = _member_ref(f"debate.agents.{index}.member", entry.member, n)
        if member in agents_seen:
            raise _field_error(f"debate.agents.{index}.member", f"member {member} has two "
                                                                 "agents")
        agents_seen.add(member)
    try:
        scripts = debate.agent_scripts(n)
    except ValidationError as error:  # e.g. a text too long once {member} is filled in
        raise _field_error("debate.agents", _one_line(error)) from None
    for index, entry in enumerate(debate.agents):
        script = scripts[entry.member % n]
        if script.behaviour == "impersonate" and script.victim is None:
            raise _field_error(f"debate.agents.{index}.victim", "impersonate needs a victim")
        if entry.victim is not None:
            victim = _member_ref(f"debate.agents.{index}.victim", entry.victim, n)
            if victim == entry.member % n:
                raise _field_error(f"debate.agents.{index}.victim", "an agent cannot "
                                                                     "impersonate itself")
    if debate.default_agent.victim is not None:
        _member_ref("debate.default_agent.victim", debate.default_agent.victim, n)
        if debate.default_agent.behaviour == "impersonate":
            raise _field_error("debate.default_agent.behaviour", "impersonate names one "
                                                                 "victim: use an agents entry")
    if debate.open_at_ms > scenario.max_time_ms:
        raise _field_error("debate.open_at_ms", f"after max_time_ms ({debate.open_at_ms:g} > "
                                                f"{scenario.max_time_ms:g})")
    opener = _member_ref("debate.opener", debate.opener, n)
    if "propose" not in roles[opener]:
        raise _field_error("debate.opener", f"member {opener} lacks the 'propose' role")
    task = debate.task
    judge = None
    if task.judge is not None:
        judge = _member_ref("debate.task.judge", task.judge, n)
    voters = sum("vote" in member_roles for member_roles in roles.values())
    contributors = sum("propose" in member_roles for member_roles in roles.values())
    if contributors == 0:
        raise _field_error("debate.roles", "no member has the 'propose' role")
    quorum = 2 * f + 1
    if task.threshold is not None and not quorum <= task.threshold <= voters:
        raise _field_error("debate.task.threshold", f"{task.threshold} is not in {quorum}.."
                                                    f"{voters} (2f+1 .. members with 'vote')")
    if task.threshold is None and voters < quorum:
        raise _field_error("debate.roles", f"{voters} members have the 'vote' role; the "
                                           f"default threshold 2f+1 = {quorum} needs as many")
    if debate.resolve is not None:
        resolver = _member_ref("debate.resolve.member", debate.resolve.member, n)
        if "human" not in roles[resolver] and resolver != judge:
            raise _field_error("debate.resolve.member", f"member {resolver} has no 'human' role "
                                                        "and is not the judge")
        if debate.resolve.proposal_of is not None:
            _member_ref("debate.resolve.proposal_of", debate.resolve.proposal_of, n)
    if debate.audit is not None:
        auditor = _member_ref("debate.audit.member", debate.audit.member, n)
        if "audit" not in roles[auditor]:
            raise _field_error("debate.audit.member", f"member {auditor} lacks the 'audit' "
                                                      "role")
    expect = debate.expect
    if expect.exit_reason is not None and expect.exit_reason not in EXIT_REASONS:
        raise _field_error("debate.expect.exit_reason",
                           f"unknown exit reason {expect.exit_reason!r} (known: "
                           f"{', '.join(EXIT_REASONS)})")
    for index, reason in enumerate(expect.rejected):
        if reason not in REJECTION_REASONS:
            raise _field_error(f"debate.expect.rejected.{index}",
                               f"unknown rejection reason {reason!r} (known: "
                               f"{', '.join(REJECTION_REASONS)})")
    faulty = scenario.faulty_members
    if scenario.expect.safety and len(faulty) > f:
        raise _field_error("expect.safety", f"true is not promised with {len(faulty)} faulty "
                                            f"members (Byzantine, or with a Byzantine debater "
                                            f"or submitter: {', '.join(map(str, faulty))}) at "
                                            f"n={n} (f={f}); a negative control says false")


def _check_commit(scenario: Scenario) -> None:
    commit = scenario.commit
    assert commit is not None
    if scenario.debate is None:
        raise _field_error("commit", "needs a debate section: the commit layer executes the "
                                     "debate's approved plan")
    n = scenario.n
    longest = max(commit.questions(scenario.debate.task.question), key=len)
    if len(longest) > MAX_QUESTION_LENGTH:
        raise _field_error("commit.tasks", f"the numbered question {longest[-24:]!r} is longer "
                                           f"than {MAX_QUESTION_LENGTH} characters: shorten "
                                           "debate.task.question")
    if commit.submitters != "all":
        if not commit.submitters:
            raise _field_error("commit.submitters", "name at least one member (or \"all\")")
        seen: set[int] = set()
        for index, ref in enumerate(commit.submitters):
            member = _member_ref(f"commit.submitters.{index}", ref, n)
            if member in seen:
                raise _field_error(f"commit.submitters.{index}", f"member {member} is listed "
                                                                 "twice")
            seen.add(member)
    submitters = commit.submitter_members(n)
    # The single submitter is the primary of the current view: without member 0 (primary of
    # view 0) no commit would start until some view change.
    if 0 not in submitters:
        raise _field_error("commit.submitters", "must include member 0, the primary of view 0 "
                                                "(the single submitter is the primary)")
    for resource, limit in commit.resource_limits.items():
        if not 1 <= limit <= MAX_RESOURCE_LIMIT:
            raise _field_error(f"commit.resource_limits.{resource}",
                               f"a limit is in 1..{MAX_RESOURCE_LIMIT}, got {limit}")
    faults = commit.faults
    for name in ("crash_submitter_after_effect", "crash_mid_rollback"):
        crash = getattr(faults, name)
        if crash is not None and crash.restart_after_ms is not None and (
                crash.restart_after_ms > scenario.max_time_ms):
            raise _field_error(f"commit.faults.{name}.restart_after_ms",
                               f"after max_time_ms ({crash.restart_after_ms:g} > "
                               f"{scenario.max_time_ms:g})")
    byzantine = commit.byzantine_submitter
    if byzantine is not None:
        member = _member_ref("commit.byzantine_submitter.member", byzantine.member, n)
        if member not in submitters:
            raise _field_error("commit.byzantine_submitter.member",
                               f"member {member} is not a submitter")
        if len(set(byzantine.behaviours)) != len(byzantine.behaviours):
            raise _field_error("commit.byzantine_submitter.behaviours", "a behaviour is "
                                                                        "listed twice")
    expect = commit.expect
    for index, reason in enumerate(expect.rejected):
        if reason not in REJECTION_REASONS:
            raise _field_error(f"commit.expect.rejected.{index}",
                               f"unknown rejection reason {reason!r} (known: "
                               f"{', '.join(REJECTION_REASONS)})")
    if expect.commits is not None and expect.commits > commit.tasks:
        raise _field_error("commit.expect.commits", f"{expect.commits} commits from "
                                                    f"{commit.tasks} tasks")
    # The faulty-member count (with a Byzantine submitter) is checked with the debate.

def _check_scenario(scenario: Scenario) -> None:
    if scenario.gst_ms > scenario.max_time_ms:
        raise _field_error("gst_ms", f"after max_time_ms ({scenario.gst_ms:g} > "
                                     f"{scenario.max_time_ms:g})")
    if scenario.generator is not None and scenario.debate is not None:
        raise _field_error("debate", f"generator {scenario.generator!r} does not combine with "
                                     "a debate")
    if scenario.generator is not None:
        filled = [name for name in GENERATED_FIELDS if name in scenario.model_fields_set]
        if filled:
            raise _field_error(filled[0], f"generator {scenario.generator!r} fills this in; "
                                          "leave it out")
        return
    _check_byzantine(scenario)
    _check_events(scenario)
    if scenario.debate is not None:
        _check_debate(scenario)
    if scenario.commit is not None:
        _check_commit(scenario)


def _one_line(error: ValidationError) -> str:
    """The first error of a validation failure, as ``field.path: what is wrong``."""
    errors = error.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    kind, message = first["type"], first["msg"]
    if kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "missing":
        message = "required field missing"
    elif first["loc"] == ("n",) and kind == "greater_than_equal":
        message = (f"a committee needs n >= {MIN_MEMBERS} (n = 3f+1, f >= 1); "
                   f"got {first['input']!r}")
    elif kind == "literal_error" and first["loc"] == ("spec",):
        message = (f"unsupported spec version {first['input']!r} (this bftd reads spec "
                   f"{SPEC_VERSION})")
    elif kind in ("scenario", "proposal_field"):
        # Our own errors (and a plan step's) carry their field path; prefix the model's
        # location if nested.
        inner = first["ctx"]["where"]
        where = f"{where}.{inner}" if where else inner
        message = first["ctx"]["why"]
    elif not isinstance(first.get("input"), (dict, list)):
        message = f"{message} (got {first['input']!r})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}" if where else f"{message}{more}"


def _validate(data: Any, origin: str, source: str | None) -> Scenario:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a scenario is a JSON object, got {type(data).__name__}")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_one_line(exc)}") from None
    scenario._source = source
    return scenario


# --------------------------------------------------------------------- loading


def builtin_names() -> list[str]:
    folder = resources.files("simulator").joinpath(SCENARIO_DIR)
    return sorted(entry.name[: -len(".json")] for entry in folder.iterdir()
                  if entry.name.endswith(".json"))


def load_builtin(name: str) -> Scenario:
    names = builtin_names()
    if name not in names:
        raise ConfigError(f"--scenario: no built-in scenario {name!r} (known: {', '.join(names)})")
    text = resources.files("simulator").joinpath(SCENARIO_DIR, f"{name}.json").read_text()
    return _validate(_parse_json(text, f"built-in scenario {name}"), f"built-in scenario {name}",
                     f"builtin:{name}")


def load_file(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return _validate(_parse_json(text, str(path)), str(path), str(path))


def load_scenario(name: str | None = None, path: str | Path | None = None) -> Scenario:
    """A built-in scenario by name, or a user's spec file."""
    if (name is None) == (path is None):
        raise ConfigError("give exactly one of a scenario name and a spec file")
    return load_builtin(name) if name is not None else load_file(path)  # type: ignore[arg-type]


def _parse_json(text: str, origin: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{origin}: not valid JSON: {exc.msg} (line {exc.lineno} "
                          f"column {exc.colno})") from None


def scenario_json_schema() -> dict[str, Any]:
    """The published JSON Schema of scenario spec v1."""
    schema = Scenario.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://bftdeliberate.dev/schemas/scenario-v1.json"
    schema["description"] = (
        "A simulated run as data. Byzantine entries: 'member' + behaviour, or 'client' + "
        "'bad-client'; behaviour 'twin' takes params.groups (two member lists). Each event "
        "has at_ms and exactly one action; times never decrease; network faults come before "
        "gst_ms. Members listed in no partition group form one more group. A 'debate' "
        "section replaces the key-value workload by one deliberation task; its member "
        "references may be negative (from the end), '{member}' in agent texts becomes the "
        "member's index. A 'commit' section (only with 'debate') executes the approved plan "
        "on simulated resources with injected faults.")
    return schema


# ------------------------------------------------------------------- generators


def resolve(scenario: Scenario) -> Scenario:
    """A concrete scenario: generator scenarios expanded for their n and seed."""
    if scenario.generator is None:
        return scenario
    data = scenario.model_dump(by_alias=True, exclude_unset=True)
    data.pop("generator")
    explicit_n = "n" in scenario.model_fields_set
    if scenario.generator == "chaos":
        data.update(generate_chaos(scenario.seed, scenario.n if explicit_n else None,
                                   scenario.workload.clients))
    else:
        data.update(generate_over_threshold(scenario.n, scenario.workload.clients))
    return _validate(data, f"{_origin(scenario)} (generated)", scenario.source)


def generate_over_threshold(n: int, clients: int) -> dict[str, Any]:
    """f+1 twins (members 0..f, the primary among them) and two sides of f honest members
    each: each side is twins + f honest = 2f+1, a quorum, so both sides can commit. Each side
    also gets its own clients (client-0 on side A, client-1 on side B, ...), so the twin
    primary's two instances order different requests at the same sequence numbers: two
    honest members execute different batches, which the negative control must report."""
    f = (n - 1) // 3
    twins = list(range(f + 1))
    honest = list(range(f + 1, n))
    sides: list[list[int | str]] = [[*twins, *honest[:f]], [*twins, *honest[f:]]]
    for j in range(clients):
        sides[j % 2].append(f"client-{j}")
    return {"byzantine": [{"member": m, "behaviour": TWIN, "params": {"groups": sides}}
                          for m in twins]}


#: Committee sizes the chaos generator draws from (the sizes the issue names).
CHAOS_SIZES = (4, 7, 10, 13, 16)
CHAOS_MAX_LOSS = 0.30
CHAOS_MAX_DUPLICATE = 0.50
CHAOS_MAX_LOW_DELAY_MS = 5.0
CHAOS_MAX_DELAY_SPREAD_MS = 50.0
CHAOS_MAX_SKEW_MS = 200.0
CHAOS_MAX_DRIFT = 0.01
#: Faults happen before GST, which falls in this range; then the liveness budget follows.
CHAOS_GST_MS = (2_000.0, 10_000.0)
CHAOS_LIVENESS_BUDGET_MS = 30_000.0
CHAOS_MAX_PARTITIONS = 2
CHAOS_MAX_CLOGS = 2
CHAOS_MAX_CLOG_MS = 5_000.0
#: Probability that a crash loses the member's whole disk (only drawn when fewer than f
#: members are Byzantine: an amnesiac member counts as faulty until it has caught up).
CHAOS_LOSE_DISK_CHANCE = 0.3
#: Probability that the run has a Byzantine client, a one-way block, a crash-restart.
CHAOS_BAD_CLIENT_CHANCE = 0.2
CHAOS_ONE_WAY_CHANCE = 0.3
CHAOS_CRASH_CHANCE = 0.3
#: Probability of a small checkpoint interval (checkpoints and watermarks then really move).
CHAOS_SMALL_LOG_CHANCE = 0.5
CHAOS_SMALL_CHECKPOINT_INTERVAL = 8
CHAOS_SMALL_LOG_WINDOW = 16
#: Behaviours per Byzantine member (drawn from every behaviour; the generated spec is
#: validated like any other, so parameter drift in byzantine.py fails loudly).
CHAOS_MAX_BEHAVIOURS_PER_MEMBER = 2
#: Probability that a Byzantine member is a twin rather than a set of behaviours.
CHAOS_TWIN_CHANCE = 0.25
CHAOS_SEQ_TARGETS = ["above-window", "max-seq", "at-low-watermark", "below-low-watermark",
                     "gap-votes", "gap-proposal"]
#: Flood stays a multiplier of a few: a 100x flood is a benchmark of its own, not a seed-run.
CHAOS_MAX_FLOOD_RATE = 5
#: Largest junk frames chaos draws (the ``flood`` scenario sends oversized ones; random
#: megabytes per step would make chaos a benchmark of the random generator).
CHAOS_JUNK_BYTES = (256, 4096, 65_536)
CHAOS_MAX_SLOW_MS = 500.0


def _chaos_params(behaviour: str, rng: random.Random, n: int) -> dict[str, Any]:
    """Parameters for one behaviour (names from each class's PARAMS in simulator/byzantine.py;
    whatever is not drawn keeps its default)."""
    samplers: dict[str, Any] = {
        "equivocate": lambda: {"mode": rng.choice(["digest", "seq"]),
                               "reveal": rng.random() < 0.5},
        "seq-abuse": lambda: {"targets": sorted(rng.sample(CHAOS_SEQ_TARGETS,
                                                           rng.randint(1, 3))),
                              "gap": rng.randint(1, 5)},
        "flood": lambda: {"rate": rng.randint(2, CHAOS_MAX_FLOOD_RATE),
                          "junk_frames": rng.randint(0, 2),
                          "max_bytes": rng.choice(CHAOS_JUNK_BYTES),
                          "oversized": rng.random() < 0.5},
        "selective": lambda: {"drop_to": sorted(rng.sample(range(n), rng.randint(1, n - 1)))},
        "slow": lambda: {"delay_ms": round(rng.uniform(1.0, CHAOS_MAX_SLOW_MS), 3),
                         "jitter_ms": round(rng.uniform(0.0, CHAOS_MAX_SLOW_MS / 2), 3)},
        "duplicate-votes": lambda: {"copies": rng.randint(1, 5),
                                    "conflicting": rng.random() < 0.5},
        "replay": lambda: {"every_ms": round(rng.uniform(20.0, 500.0), 3),
                           "count": rng.randint(1, 5)},
        "wrong-digest": lambda: {"keep_honest": rng.random() < 0.5},
        "fake-checkpoint": lambda: {"keep_honest": rng.random() < 0.5},
    }
    sampler = samplers.get(behaviour)
    return sampler() if sampler is not None else {}


def generate_chaos(seed: int, n: int | None, clients: int) -> dict[str, Any]:
    """A seeded swarm of faults: everything below is a function of ``seed`` (and of ``n`` when
    the command line fixes it). n is always drawn first, so ``--n`` with the n the seed would
    have drawn gives exactly the seed's own run (repro lines always name --n)."""
    rng = random.Random(f"chaos/{seed}")
    drawn_n = rng.choice(CHAOS_SIZES)
    n = drawn_n if n is None else n
    f = (n - 1) // 3
    gst = round(rng.uniform(*CHAOS_GST_MS))
    low = round(rng.uniform(0.0, CHAOS_MAX_LOW_DELAY_MS), 3)
    high = round(low + rng.uniform(1.0, CHAOS_MAX_DELAY_SPREAD_MS), 3)
    data: dict[str, Any] = {
        "n": n,
        "network": {"delay_ms": [low, high],
                    "loss": round(rng.uniform(0.0, CHAOS_MAX_LOSS), 4),
                    "duplicate": round(rng.uniform(0.0, CHAOS_MAX_DUPLICATE), 4),
                    "reorder": rng.random() < 0.8},
        "clock": {"skew_ms": round(rng.uniform(0.0, CHAOS_MAX_SKEW_MS), 3),
                  "drift": round(rng.uniform(0.0, CHAOS_MAX_DRIFT), 5)},
        "gst_ms": gst,
        "max_time_ms": gst + CHAOS_LIVENESS_BUDGET_MS,
    }
    if rng.random() < CHAOS_SMALL_LOG_CHANCE:
        data["replica"] = {"checkpoint_interval": CHAOS_SMALL_CHECKPOINT_INTERVAL,
                           "log_window": CHAOS_SMALL_LOG_WINDOW,
                           "batch_size": rng.choice([1, 10, DEFAULT_BATCH_SIZE])}

    api = _byzantine_api()
    members = list(range(n))
    byzantine_members = sorted(rng.sample(members, rng.randint(0, f)))
    entries: list[dict[str, Any]] = []
    names = sorted(api.BEHAVIOURS) if api is not None else []
    for member in byzantine_members:
        if not names or rng.random() < CHAOS_TWIN_CHANCE:
            # Each instance talks to a different half of the others.
            others = [m for m in members if m != member]
            half = set(rng.sample(others, len(others) // 2))
            groups = [sorted(half | {member}), sorted(set(others) - half | {member})]
            entries.append({"member": member, "behaviour": TWIN, "params": {"groups": groups}})
            continue
        for behaviour in rng.sample(names, rng.randint(1, CHAOS_MAX_BEHAVIOURS_PER_MEMBER)):
            params = _chaos_params(behaviour, rng, n)  # validated with the generated spec
            entries.append({"member": member, "behaviour": behaviour, "params": params,
                            "from_ms": rng.choice([0, round(rng.uniform(0, gst))])})
    if api is not None and rng.random() < CHAOS_BAD_CLIENT_CHANCE:
        entries.append({"client": f"client-{rng.randrange(clients)}", "behaviour": BAD_CLIENT,
                        "params": {"corrupt_for": sorted(rng.sample(members, rng.randint(0, f))),
                                   "conflicting": rng.random() < 0.5}})
    data["byzantine"] = entries

    events: list[dict[str, Any]] = []
    for _ in range(rng.randint(0, CHAOS_MAX_PARTITIONS)):
        start = rng.uniform(0, gst)
        cut = rng.sample(members, rng.randint(1, n - 1))
        events.append({"at_ms": start, "partition": [sorted(cut)]})
        events.append({"at_ms": rng.uniform(start, gst), "heal": True})
    for _ in range(rng.randint(0, CHAOS_MAX_CLOGS)):
        events.append({"at_ms": rng.uniform(0, gst),
                       "clog": {"members": sorted(rng.sample(members, rng.randint(1, f))),
                                "for_ms": round(rng.uniform(1.0, CHAOS_MAX_CLOG_MS), 3)}})
    if rng.random() < CHAOS_ONE_WAY_CHANCE:
        sender = rng.randrange(n)
        events.append({"at_ms": rng.uniform(0, gst),
                       "one_way": {"from": [sender],
                                   "to": [m for m in members if m != sender]}})
    if rng.random() < CHAOS_CRASH_CHANCE:
        honest = [m for m in members if m not in byzantine_members]
        member = rng.choice(honest)
        crash_at = rng.uniform(0, gst)
        crash = {"at_ms": crash_at, "crash": member, "lose_unsynced": rng.random() < 0.5}
        if len(byzantine_members) < f and rng.random() < CHAOS_LOSE_DISK_CHANCE:
            crash["lose_disk"] = True
        events.append(crash)
        events.append({"at_ms": rng.uniform(crash_at, gst + CHAOS_LIVENESS_BUDGET_MS / 2),
                       "restart": member})
    # Stable sort by time (a heal drawn before its partition's start is impossible by
    # construction; equal times keep their drawing order).
    for event in events:
        event["at_ms"] = round(event["at_ms"], 3)
    data["events"] = sorted(events, key=lambda event: event["at_ms"])
    return data
