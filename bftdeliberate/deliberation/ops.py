"""Ledger operations: what an agent may ask the deliberation ledger to order.

Every operation is the ``operation`` bytes of a signed PBFT client request: a canonical CBOR
map with an ``"op"`` key. The author is never a field of the operation — it is the request's
verified signer (``ExecutionContext.client``), so no operation can claim to come from someone
else (impersonation), and nothing in an operation can grant a role (roles come only from the
genesis committee).

The models are strict, frozen pydantic v2 models that forbid unknown fields. Clients (the CLI,
the agent loop) validate an operation with the same models before sending it, so bad user
input is refused locally with a one-line error naming the field, and nothing is ordered.
Numbers are integers only (canonical CBOR has no floats): ``confidence`` is a percentage.

Results are CBOR maps ``{"ok": True, ...}`` or ``{"ok": False, "error": REASON, "detail":
TEXT}`` where REASON is one of :data:`REJECTION_REASONS`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from bftdeliberate.commit.book import COMMIT_REFUSALS
from bftdeliberate.commit.model import CommitResult
from bftdeliberate.committee import _plain
from bftdeliberate.deliberation.proposal import (
    ID_PATTERN,
    MAX_NOTES_LENGTH,
    MAX_PLAN_STEPS,
    MAX_RISKS,
    MAX_STOP_CONDITIONS,
    Id,
    PlanStep,
    Tag,
    _unique,
    describe,
)
from bftdeliberate.errors import ConfigError, DecodeError
from bftdeliberate.wire import cbor
from bftdeliberate.wire.limits import MAX_OPERATION_SIZE

OPS_SCHEMA_ID = "https://bftdeliberate.dev/schemas/ledger-operation-v1.json"

#: Text bounds: a debate is evidence, not a document store; every field is bounded so one
#: agent cannot grow the replicated state without limit.
MAX_QUESTION_LENGTH = 4000
MAX_CONTEXT_LENGTH = 16000
MAX_POSITION_LENGTH = 128
MAX_ARGUMENT_LENGTH = 4000
MAX_EVIDENCE_REFS = 32
MAX_EVIDENCE_REF_LENGTH = 512
#: Rounds of one debate (more rounds before voting hurt accuracy: Kaesberg et al. 2025).
MAX_ROUNDS = 16
DEFAULT_MAX_ROUNDS = 3
#: Time a round stays open before it closes without the missing contributions.
DEFAULT_ROUND_MS = 30_000
MIN_ROUND_MS = 10
#: Time votes stay open after the debate ended before the task escalates.
DEFAULT_VOTE_MS = 30_000
#: Whole task lifetime from opening: past it, an undecided task escalates.
DEFAULT_DEADLINE_MS = 10 * 60_000
MAX_DURATION_MS = 7 * 24 * 60 * 60_000
DEFAULT_TOKEN_BUDGET = 20_000
MAX_TOKEN_BUDGET = 10**12
#: Largest token count one contribution may declare.
MAX_DECLARED_TOKENS = 10**9

Evidence = Annotated[str, Field(min_length=1, max_length=MAX_EVIDENCE_REF_LENGTH,
                                pattern=r"^[^\x00-\x1f\x7f]+$")]
EvidenceList = Annotated[tuple[Evidence, ...], Field(max_length=MAX_EVIDENCE_REFS)]
Confidence = Annotated[int, Field(ge=0, le=100, description="percent")]
DurationMs = Annotated[int, Field(ge=MIN_ROUND_MS, le=MAX_DURATION_MS)]
MemberName = Annotated[str, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]

#: Every reason a ledger operation can be refused (the ``error`` of a failed result).
REJECTION_REASONS = (
    "malformed",          # not an operation this ledger knows (field named in ``detail``)
    "unknown_agent",      # the signer is not a committee member
    "missing_role",       # the signer's genesis roles do not include the one needed
    "unknown_task",
    "task_closed",        # the task is no longer accepting this operation
    "wrong_round",        # not the open round (late, early or out of round)
    "duplicate_contribution",
    "duplicate_vote",
    "unknown_proposal",
    "proposal_not_revealed",  # voting on a proposal whose round has not closed (blindness)
    "proposal_closed",    # the proposal was already approved or rejected
    "budget_exceeded",    # the declared tokens exceed the task's or the agent's remaining budget
    "bad_threshold",      # below 2f+1 or above the number of voters
    "unknown_judge",
    "not_escalated",      # resolve on a task that is not waiting for a judge or a human
    "not_resolver",       # resolve from someone who is neither the judge nor a human
    "ledger_full",        # too many tasks, or the ledger's stored bytes at their limit
    "no_audit_pending",   # an audit of a task that is not approved, flagged and unaudited
    "own_proposal",       # an auditor reviewing its own proposal
    "result_too_large",   # a status read over the reply limit: ask for less (a round, an agent)
    *COMMIT_REFUSALS,     # the commit book's (commit/book.py)
)


class _Op(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class ProposalDraft(_Op):
    """A structured proposal inside a contribution (the seed format's plan part). The ledger
    assigns the proposal id (``TASK.AGENT.rROUND``), so no agent can squat another's id."""

    plan: tuple[PlanStep, ...] = Field(min_length=1, max_length=MAX_PLAN_STEPS)
    risks: tuple[Tag, ...] = Field((), max_length=MAX_RISKS,
                                   json_schema_extra={"uniqueItems": True})
    stop_conditions: tuple[Tag, ...] = Field((), max_length=MAX_STOP_CONDITIONS,
                                             json_schema_extra={"uniqueItems": True})

    # proposal.json refuses a risk or stop condition listed twice; so does the draft, or the
    # ledger would accept a proposal it cannot turn into its proposal.json.
    @field_validator("risks")
    @classmethod
    def _risks_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(value, "risk")

    @field_validator("stop_conditions")
    @classmethod
    def _stop_conditions_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(value, "stop condition")


class OpenTask(_Op):
    """Open a debate (needs the ``propose`` role)."""

    op: Literal["open_task"] = "open_task"
    question: str = Field(min_length=1, max_length=MAX_QUESTION_LENGTH)
    context: str = Field("", max_length=MAX_CONTEXT_LENGTH)
    evidence: EvidenceList = ()
    max_rounds: int = Field(DEFAULT_MAX_ROUNDS, ge=1, le=MAX_ROUNDS)
    round_ms: DurationMs = DEFAULT_ROUND_MS
    vote_ms: DurationMs = DEFAULT_VOTE_MS
    deadline_ms: DurationMs = DEFAULT_DEADLINE_MS
    token_budget: int = Field(DEFAULT_TOKEN_BUDGET, ge=1, le=MAX_TOKEN_BUDGET)
    #: Per-agent cap; default: the task budget split evenly over the contributors.
    agent_token_budget: int | None = Field(None, ge=1, le=MAX_TOKEN_BUDGET)
    #: Approvals needed; default 2f+1 and never below it.
    threshold: int | None = Field(None, ge=1)
    judge: MemberName | None = None
    #: A task flagged for groupthink needs an ``audit`` member's approval before commit.
    require_audit: bool = True


class Contribute(_Op):
    """One agent's signed evidence message for one round (needs the ``propose`` role)."""

    op: Literal["contribute"] = "contribute"
    task_id: Id
    round: int = Field(ge=0, le=MAX_ROUNDS)
    position: str = Field(min_length=1, max_length=MAX_POSITION_LENGTH,
                          pattern=r"^[^\x00-\x1f\x7f]+$")
    argument: str = Field("", max_length=MAX_ARGUMENT_LENGTH)
    evidence: EvidenceList = ()
    confidence: Confidence = 50
    tokens: int = Field(0, ge=0, le=MAX_DECLARED_TOKENS)
    proposal: ProposalDraft | None = None
    #: A stop condition this agent raises; f+1 distinct agents raising one in a round stop it.
    stop: Tag | None = None


class Abstain(_Op):
    """Take part in a round without a position (a debater that failed or ran out of budget):
    the round can then close without waiting for its time-out."""

    op: Literal["abstain"] = "abstain"
    task_id: Id
    round: int = Field(ge=0, le=MAX_ROUNDS)
    reason: str = Field("", max_length=MAX_NOTES_LENGTH)
    tokens: int = Field(0, ge=0, le=MAX_DECLARED_TOKENS)


class CastVote(_Op):
    """One vote per agent per proposal (needs the ``vote`` role)."""

    op: Literal["vote"] = "vote"
    task_id: Id
    proposal_id: Id
    decision: Literal["approve", "reject"]
    notes: str = Field("", max_length=MAX_NOTES_LENGTH)
    #: Tokens the vote cost (a model call); charged up to the remaining budget, like an
    #: abstention: a spent call is accounted, and a vote is never lost to the budget.
    tokens: int = Field(0, ge=0, le=MAX_DECLARED_TOKENS)
    #: An auditor's review of an approved task flagged for groupthink (needs the ``audit``
    #: role): a separate, later look with the flags in view, not the auditor's debate vote.
    audit: bool = False


class Resolve(_Op):
    """Decide an escalated task: by its judge, or by any member with the ``human`` role."""

    op: Literal["resolve"] = "resolve"
    task_id: Id
    decision: Literal["approve", "reject"]
    #: The proposal approved (required with ``approve``).
    proposal_id: Id | None = None
    notes: str = Field("", max_length=MAX_NOTES_LENGTH)


class CommitIntent(_Op):
    """The single submitter (``submit`` role, primary of the current view) announces it will
    execute the task's approved plan; the ledger derives the intent itself (commit/book.py)."""

    op: Literal["commit_intent"] = "commit_intent"
    task_id: Id


class CommitDone(_Op):
    """The submitter records how the commit ended (once; the steps' keys are checked against
    the intent)."""

    op: Literal["commit_result"] = "commit_result"
    commit_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    result: CommitResult


class Tick(_Op):
    """Let agreed time act: close rounds whose time is up, escalate past deadlines. Carries
    nothing; anyone authorised may send it, and it is harmless to repeat."""

    op: Literal["tick"] = "tick"


class Status(_Op):
    """An ordered read of one task: its summary, one round's contributions, or (with
    ``agent``) one agent's contribution to that round — replies are bounded, so a large round
    is read agent by agent."""

    op: Literal["status"] = "status"
    task_id: Id
    round: int | None = Field(None, ge=0, le=MAX_ROUNDS)
    agent: MemberName | None = None


Operation = Annotated[OpenTask | Contribute | Abstain | CastVote | Resolve | CommitIntent
                      | CommitDone | Tick | Status, Field(discriminator="op")]
_OPERATION = TypeAdapter(Operation)


def _tuples(value: Any) -> Any:
    # CBOR decodes arrays as lists; the strict models take tuples (immutable, hashable).
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def encode_op(operation: BaseModel) -> bytes:
    """Canonical CBOR of an operation (defaults left out: the encoding stays short)."""
    fields = operation.model_dump(mode="python", exclude_defaults=True)
    fields["op"] = operation.op  # type: ignore[attr-defined]
    data = cbor.encode(_plain(fields))
    if len(data) > MAX_OPERATION_SIZE:
        raise ConfigError(f"operation is {len(data)} bytes; the limit is {MAX_OPERATION_SIZE}")
    return data


class MalformedOperation(ValueError):
    """An operation that does not parse; ``str()`` names the field."""


def _unknown_op(fields: dict[Any, Any]) -> str:
    known = ", ".join(_OP_NAMES)
    if "op" not in fields:
        return f"op: required (known: {known})"
    return f"op: unknown operation {str(fields['op'])[:40]!r} (known: {known})"


def _describe_op_error(error: ValidationError) -> str:
    """The first error as ``field.path: message`` relative to the operation: pydantic puts
    the union's tag (the ``op``) first in the location; the user's field path has no such
    part ("round: ...", not "contribute.round: ...")."""
    location = error.errors(include_url=False)[0]["loc"]
    text = describe(error)
    if location and location[0] in _OP_NAMES:
        return text.removeprefix(f"{location[0]}.")
    return text


def validate_op(fields: Any) -> BaseModel:
    """A decoded value as an operation model, or MalformedOperation naming the field."""
    if type(fields) is not dict:
        raise MalformedOperation("an operation is a map")
    if fields.get("op") not in _OP_NAMES:
        raise MalformedOperation(_unknown_op(fields))
    try:
        return _OPERATION.validate_python(_tuples(fields))
    except ValidationError as error:
        raise MalformedOperation(_describe_op_error(error)) from None


def decode_op(data: bytes) -> BaseModel:
    """Parse operation bytes (from an ordered request); MalformedOperation on any problem."""
    try:
        fields = cbor.decode(data, max_size=MAX_OPERATION_SIZE)
    except DecodeError as error:
        raise MalformedOperation(f"not canonical CBOR ({error})") from None
    return validate_op(fields)


def parse_op_json(text: str | bytes) -> BaseModel:
    """An operation from JSON text (CLI input); ConfigError naming the field."""
    try:
        model = _OPERATION.validate_json(text)
    except ValidationError as error:
        # The same wording as validate_op (the ledger's "malformed" detail) for the same
        # mistake; pydantic's own texts for these name no field.
        first = error.errors(include_url=False)[0]
        if first["type"] == "dict_type" and not first["loc"]:
            raise ConfigError("an operation is a JSON object") from None
        if first["type"] in ("union_tag_not_found", "union_tag_invalid"):
            raise ConfigError(_unknown_op(first["input"])) from None
        raise ConfigError(_describe_op_error(error)) from None
    return model


_OP_NAMES = ("open_task", "contribute", "abstain", "vote", "resolve", "commit_intent",
             "commit_result", "tick", "status")


def ops_schema() -> dict[str, Any]:
    """The JSON Schema of a ledger operation (one of the models, by ``op``)."""
    schema = _OPERATION.json_schema()
    # ``op`` has a default in the models (``Tick()`` needs no argument) so pydantic leaves it
    # out of "required"; on the wire it is the tag and always required (without this, ``{}``
    # validated as a tick and ``{"question": "q"}`` as an open_task, both refused by the ledger).
    for name in schema["$defs"]:
        variant = schema["$defs"][name]
        if "op" in variant.get("properties", {}):
            variant["required"] = ["op", *variant.get("required", [])]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": OPS_SCHEMA_ID,
            "title": "ledger operation", **schema}
