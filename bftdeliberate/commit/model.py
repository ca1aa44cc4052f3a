"""Commit-layer records: keys, resources and the WAL/ledger/audit models (DESIGN.md 6 and 7).

* :func:`idempotency_key` and :func:`commit_id` are sha256 hex digests of a canonical CBOR
  encoding (``wire.cbor.encode``) of a domain tag, the committee digest, the proposal id and
  (for a key) the step index and the step's content. Nothing else goes in: not the attempt,
  the time, the view or the submitter, so a retry, a later submitter or a replayed WAL
  derives the same key and an idempotent handler applies the effect once.
* :func:`resource_of` names the resource a step touches, on which the per-resource
  concurrency limit is kept (``commit.executor.ResourceGrants``).
* The models are strict, frozen pydantic v2 models that forbid unknown fields:
  :class:`ExecutionIntent` (ordered before executing), :class:`StepAttempt` (one handler
  call), :class:`CommitResult` (ordered after executing), :class:`CommitRecord` (the
  ``commit_record.json`` view of them) and :class:`AuditEvent` (one audit JSON line).
  :func:`commit_schemas` gives their JSON Schemas.

Sans-IO: nothing here reads a clock, a file or the global ``random``.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from bftdeliberate.commit.types import ERROR_CODES
from bftdeliberate.deliberation.proposal import (
    MAX_PLAN_STEPS,
    MAX_STEP_TIMEOUT_MS,
    MAX_TARGET_LENGTH,
    TARGET_PATTERN,
    Id,
    PlanStep,
    Proposal,
)
from bftdeliberate.wire.cbor import encode
from bftdeliberate.wire.limits import MAX_UINT

__all__ = [
    "DEFAULT_STEP_TIMEOUT_MS", "MAX_ATTEMPTS_LIMIT", "AuditEvent", "CommitRecord",
    "CommitResult", "ExecutionIntent", "IntentStep",
    "RecordAttempt", "RecordSignature", "Rollback", "StepAttempt", "StepResult",
    "commit_id", "commit_schemas", "idempotency_key", "resource_of", "step_timeout_ms",
]

COMMIT_RECORD_VERSION = 1
#: Domain tags: a key can never collide with a commit id or with another protocol's hash.
KEY_DOMAIN = "bftdeliberate/commit/idempotency-key/v1"
COMMIT_ID_DOMAIN = "bftdeliberate/commit/commit-id/v1"
#: Timeout of a step whose plan gives none: one minute.
DEFAULT_STEP_TIMEOUT_MS = 60_000
#: Most attempts one handler call may take (the retry policy is bounded below this).
MAX_ATTEMPTS_LIMIT = 16
#: Most attempt records a commit record carries (steps x attempts x apply/compensate/query).
MAX_RECORD_ATTEMPTS = MAX_PLAN_STEPS * MAX_ATTEMPTS_LIMIT * 3
#: Longest free-text detail (handler message) copied into a record.
MAX_DETAIL_LENGTH = 512
#: Most signatures on a commit record (one per committee member and record kind is plenty).
MAX_SIGNATURES = 1024
#: Longest hex signature (Ed25519 signatures are 128 hex digits).
MAX_SIGNATURE_HEX = 256
#: Longest audit ``role`` and ``retry_reason`` tags.
MAX_ROLE_LENGTH = 32
MAX_REASON_LENGTH = 64
#: Largest millisecond value (timestamps, latencies): CBOR unsigned range.
MAX_MS = MAX_UINT
#: ``command:`` resources are named after the program; longest program name kept.
MAX_PROGRAM_LENGTH = 256

HEX_DIGEST_PATTERN = r"^[0-9a-f]{64}$"
SIGNATURE_PATTERN = r"^[0-9a-f]+$"
TAG_PATTERN = r"^[a-z][a-z0-9_]*$"

ErrorCode = Literal[
    "timeout", "transient", "permanent", "permission_denied", "conflict", "invalid_step",
    "test_failed",
]
if set(ErrorCode.__args__) != set(ERROR_CODES):  # pragma: no cover - a drift guard
    raise ImportError("commit.model.ErrorCode must list commit.types.ERROR_CODES")

HexDigest = Annotated[str, Field(min_length=64, max_length=64, pattern=HEX_DIGEST_PATTERN)]
Resource = Annotated[str, Field(min_length=1, max_length=MAX_TARGET_LENGTH,
                                pattern=TARGET_PATTERN)]
Ms = Annotated[int, Field(ge=0, le=MAX_MS)]
Index = Annotated[int, Field(ge=0, lt=MAX_PLAN_STEPS)]
Attempt = Annotated[int, Field(ge=1, le=MAX_ATTEMPTS_LIMIT)]
TimeoutMs = Annotated[int, Field(ge=1, le=MAX_STEP_TIMEOUT_MS)]
View = Annotated[int, Field(ge=0, le=MAX_UINT)]
Tag = Annotated[str, Field(min_length=1, max_length=MAX_REASON_LENGTH, pattern=TAG_PATTERN)]
CommitOutcome = Literal["committed", "rolled_back", "failed", "permission_denied", "conflict"]
#: What a handler call was: run the step, undo it, or ask whether its key was applied; or the
#: permission check of every step before any runs (``check``: no effect, refused steps only).
Action = Literal["apply", "compensate", "query", "check"]


# -- keys and resources ------------------------------------------------------------------------

def _hash(*parts: Any) -> str:
    return hashlib.sha256(encode(list(parts))).hexdigest()


def _step_data(step: dict[str, Any] | PlanStep) -> dict[str, Any]:
    return step.model_dump(exclude_none=True) if isinstance(step, PlanStep) else dict(step)


def idempotency_key(committee_digest: bytes, proposal_id: str, index: int,
                    step: dict[str, Any] | PlanStep) -> str:
    """The step's idempotency key: sha256 hex of CBOR ``[KEY_DOMAIN, committee_digest,
    proposal_id, index, step]``. ``step`` is the plan step as plain data (absent optional fields
    left out, as ``PlanStep.model_dump(exclude_none=True)``); a :class:`PlanStep` is accepted
    and dumped that way. Canonical CBOR sorts map keys, so field order does not matter."""
    if type(committee_digest) is not bytes:
        raise TypeError("committee_digest must be bytes")
    return _hash(KEY_DOMAIN, committee_digest, proposal_id, index, _step_data(step))


def commit_id(committee_digest: bytes, proposal_id: str) -> str:
    """The commit's id: sha256 hex of CBOR ``[COMMIT_ID_DOMAIN, committee_digest, proposal_id]``.
    One approved proposal is one commit, whoever submits it and however often."""
    if type(committee_digest) is not bytes:
        raise TypeError("committee_digest must be bytes")
    return _hash(COMMIT_ID_DOMAIN, committee_digest, proposal_id)


def resource_of(step: dict[str, Any] | PlanStep) -> str:
    """The resource a step touches, on which the per-resource concurrency limit is kept.

    * A step with a ``target`` touches that target (``file:src/foo.ts``, ``kv:table``): a
      ``read`` and a ``patch`` of the same file share one resource, so a read never sees a
      half-applied patch of another commit.
    * A ``test``/``command`` step without a target touches ``command:<program>``, the first
      word of its ``cmd`` (``npm test`` -> ``command:npm``): two commits do not run the same
      tool concurrently (shared caches, ports, lock files).
    """
    data = _step_data(step)
    target = data.get("target")
    if target is not None:
        return str(target)
    cmd = str(data.get("cmd") or "").split()
    if data.get("step") in ("test", "command") and cmd:
        return "command:" + cmd[0][:MAX_PROGRAM_LENGTH]
    raise ValueError(f"step {data.get('step')!r} has neither a target nor a command")


def step_timeout_ms(step: dict[str, Any] | PlanStep) -> int:
    """The step's ``timeout_ms``, or :data:`DEFAULT_STEP_TIMEOUT_MS`."""
    return int(_step_data(step).get("timeout_ms") or DEFAULT_STEP_TIMEOUT_MS)


# -- models --------------------------------------------------------------------------------------

class _Model(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    def to_json(self, *, indent: int | None = None) -> str:
        """JSON text that validates again (absent optional fields left out)."""
        return self.model_dump_json(indent=indent, exclude_none=True)

    def to_data(self) -> dict[str, Any]:
        """Plain, CBOR-encodable data (for the WAL and the ledger); ``model_validate`` reads
        it back (tuples come back as lists, which strict mode accepts for JSON only, so read
        with ``model_validate(data, strict=False)``)."""
        return self.model_dump(mode="json", exclude_none=True)


class IntentStep(_Model):
    """One step of an intent: the plan step with what the commit layer derived from it."""

    index: Index
    idempotency_key: HexDigest
    resource: Resource
    timeout_ms: TimeoutMs
    step: PlanStep


class ExecutionIntent(_Model):
    """Ordered through PBFT before anything executes: which commit, whose plan, which steps
    with which keys on which resources, submitted by whom in which view."""

    model_config = ConfigDict(title="execution intent")

    commit_id: HexDigest
    task_id: Id
    proposal_id: Id
    submitter: Id
    view: View
    steps: tuple[IntentStep, ...] = Field(min_length=1, max_length=MAX_PLAN_STEPS)
    #: Every resource of the steps, once each, in order of first use.
    resource_targets: tuple[Resource, ...] = Field(min_length=1, max_length=MAX_PLAN_STEPS)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for position, step in enumerate(self.steps):
            if step.index != position:
                raise ValueError(f"steps.{position}.index must be {position}")
            if step.resource != resource_of(step.step):
                raise ValueError(f"steps.{position}.resource must be "
                                 f"{resource_of(step.step)!r}")
        if self.resource_targets != _targets(self.steps):
            raise ValueError("resource_targets must list each step resource once, in order")
        return self

    @classmethod
    def from_proposal(cls, proposal: Proposal, *, committee_digest: bytes, submitter: str,
                      view: int) -> ExecutionIntent:
        """The intent for an approved proposal (the caller checked ``commit_ready``)."""
        steps = tuple(
            IntentStep(index=index,
                       idempotency_key=idempotency_key(committee_digest, proposal.proposal_id,
                                                       index, step),
                       resource=resource_of(step), timeout_ms=step_timeout_ms(step), step=step)
            for index, step in enumerate(proposal.plan))
        return cls(commit_id=commit_id(committee_digest, proposal.proposal_id),
                   task_id=proposal.task_id, proposal_id=proposal.proposal_id,
                   submitter=submitter, view=view, steps=steps,
                   resource_targets=_targets(steps))

    def check_keys(self, committee_digest: bytes) -> None:
        """Raise ``ValueError`` unless the commit id and every key derive from the committee
        digest and the plan (a backup re-derives them before ordering the intent)."""
        if self.commit_id != commit_id(committee_digest, self.proposal_id):
            raise ValueError("commit_id does not derive from the committee and proposal")
        for step in self.steps:
            if step.idempotency_key != idempotency_key(committee_digest, self.proposal_id,
                                                       step.index, step.step):
                raise ValueError(f"step {step.index}: idempotency_key does not derive from it")


def _targets(steps: tuple[IntentStep, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(step.resource for step in steps))


class StepAttempt(_Model):
    """One handler call and its outcome (a WAL record and the source of audit events).

    ``retry_reason`` is set when this attempt's failure is retried: the error code that caused
    the retry (``timeout``/``transient``); ``None`` when it succeeded or was not retried."""

    model_config = ConfigDict(title="step attempt")

    commit_id: HexDigest
    index: Index
    idempotency_key: HexDigest
    action: Action = "apply"
    attempt: Attempt
    started_ms: Ms
    latency_ms: Ms
    result: Literal["ok", "error"]
    error_code: ErrorCode | None = None
    retry_reason: Tag | None = None
    timeout_ms: TimeoutMs
    #: For ``query``: whether the key had been applied. For ``apply``: the handler reported
    #: the key as already applied (nothing was done again).
    already_applied: bool = False
    output_digest: HexDigest | None = None
    detail: str = Field("", max_length=MAX_DETAIL_LENGTH)

    @model_validator(mode="after")
    def _error_iff_code(self) -> Self:
        if (self.result == "error") != (self.error_code is not None):
            raise ValueError("error_code is set exactly when result is 'error'")
        if self.retry_reason is not None and self.result != "error":
            raise ValueError("only a failed attempt has a retry_reason")
        return self


StepStatus = Literal["applied", "already_applied", "failed", "not_run"]


class StepResult(_Model):
    """How one step ended."""

    index: Index
    idempotency_key: HexDigest
    status: StepStatus
    attempts: int = Field(ge=0, le=MAX_ATTEMPTS_LIMIT)
    error_code: ErrorCode | None = None
    output_digest: HexDigest | None = None


class Rollback(_Model):
    """The compensation of completed steps: ``steps`` in the order they were compensated
    (reverse of execution); ``failed_step`` is the step whose compensation failed, if any."""

    steps: tuple[Index, ...] = Field(default=(), max_length=MAX_PLAN_STEPS)
    result: Literal["not_needed", "compensated", "failed"] = "not_needed"
    failed_step: Index | None = None
    error_code: ErrorCode | None = None

    @model_validator(mode="after")
    def _failed_names_step(self) -> Self:
        if (self.result == "failed") != (self.failed_step is not None):
            raise ValueError("failed_step is set exactly when the rollback failed")
        return self


class CommitResult(_Model):
    """Ordered through PBFT after executing: how the commit ended."""

    model_config = ConfigDict(title="commit result")

    commit_id: HexDigest
    result: CommitOutcome
    steps: tuple[StepResult, ...] = Field(max_length=MAX_PLAN_STEPS)
    rollback: Rollback = Rollback()
    #: The step that stopped the commit and why (``None`` when committed).
    failed_step: Index | None = None
    error_code: ErrorCode | None = None


class RecordAttempt(_Model):
    """One attempt as ``commit_record.json`` lists it."""

    index: Index
    action: Action = "apply"
    attempt: Attempt
    started: Ms
    latency_ms: Ms
    result: Literal["ok", "error"]
    error_code: ErrorCode | None = None
    retry_reason: Tag | None = None


class RecordSignature(_Model):
    """A signature over one WAL record of the commit (``intent`` or ``result``)."""

    signer: Id
    record: Literal["intent", "attempt", "result"]
    signature: str = Field(min_length=2, max_length=MAX_SIGNATURE_HEX,
                           pattern=SIGNATURE_PATTERN)


class CommitRecord(_Model):
    """``commit_record.json`` (DESIGN.md section 7): one commit as a view of its WAL records.

    ``idempotency_key`` lists the key of every step, in step order; ``result`` is ``pending``
    while the intent has no result yet."""

    model_config = ConfigDict(title="commit_record.json", json_schema_extra={
        "description": "One commit of the bftdeliberate commit layer (DESIGN.md section 7)."})

    version: Literal[1] = COMMIT_RECORD_VERSION
    commit_id: HexDigest
    proposal_id: Id
    task_id: Id
    idempotency_key: tuple[HexDigest, ...] = Field(min_length=1, max_length=MAX_PLAN_STEPS)
    submitter: Id
    view: View
    resource_targets: tuple[Resource, ...] = Field(min_length=1, max_length=MAX_PLAN_STEPS)
    attempts: tuple[RecordAttempt, ...] = Field(max_length=MAX_RECORD_ATTEMPTS)
    result: CommitOutcome | Literal["pending"]
    rollback: Rollback
    signatures: tuple[RecordSignature, ...] = Field(max_length=MAX_SIGNATURES)

    @classmethod
    def build(cls, intent: ExecutionIntent, attempts: tuple[StepAttempt, ...] | list[StepAttempt],
              result: CommitResult | None,
              signatures: tuple[RecordSignature, ...] = ()) -> CommitRecord:
        """The record of ``intent`` with its attempts and (if known) its result."""
        if result is not None and result.commit_id != intent.commit_id:
            raise ValueError("the result belongs to another commit")
        return cls(
            commit_id=intent.commit_id, proposal_id=intent.proposal_id, task_id=intent.task_id,
            idempotency_key=tuple(step.idempotency_key for step in intent.steps),
            submitter=intent.submitter, view=intent.view,
            resource_targets=intent.resource_targets,
            attempts=tuple(RecordAttempt(index=a.index, action=a.action, attempt=a.attempt,
                                         started=a.started_ms, latency_ms=a.latency_ms,
                                         result=a.result, error_code=a.error_code,
                                         retry_reason=a.retry_reason)
                           for a in attempts if a.commit_id == intent.commit_id),
            result="pending" if result is None else result.result,
            rollback=Rollback() if result is None else result.rollback,
            signatures=signatures)

    def to_json(self, *, indent: int | None = 2) -> str:
        """``commit_record.json`` text: every field present (``null`` where not set)."""
        return self.model_dump_json(indent=indent)


class AuditEvent(_Model):
    """One audit JSON line (DESIGN.md section 7). Every field is always written; fields that do
    not apply to an event are ``null``."""

    model_config = ConfigDict(title="audit event")

    task_id: Id | None = None
    proposal_id: Id | None = None
    commit_id: HexDigest | None = None
    agent_id: Id | None = None
    #: ``proposer``, ``voter``, ``auditor``, ``submitter``, ``human`` ...
    role: Annotated[str, Field(min_length=1, max_length=MAX_ROLE_LENGTH,
                               pattern=TAG_PATTERN)] | None = None
    idempotency_key: HexDigest | None = None
    attempt: Attempt | None = None
    retry_reason: Tag | None = None
    timeout_ms: TimeoutMs | None = None
    latency_ms: Ms | None = None
    resource_targets: tuple[Resource, ...] | None = Field(None, max_length=MAX_PLAN_STEPS)
    result: Tag
    error_code: ErrorCode | None = None
    layer: Literal["discussion", "commit", "consensus"]
    ts: Ms

    def to_json(self, *, indent: int | None = None) -> str:
        """One JSON line, every field present."""
        return self.model_dump_json(indent=indent)

    @classmethod
    def from_attempt(cls, attempt: StepAttempt, intent: ExecutionIntent, *, agent_id: str,
                     role: str = "submitter") -> AuditEvent:
        """The audit event of one handler call of ``intent``."""
        return cls(task_id=intent.task_id, proposal_id=intent.proposal_id,
                   commit_id=intent.commit_id, agent_id=agent_id, role=role,
                   idempotency_key=attempt.idempotency_key, attempt=attempt.attempt,
                   retry_reason=attempt.retry_reason, timeout_ms=attempt.timeout_ms,
                   latency_ms=attempt.latency_ms,
                   resource_targets=(intent.steps[attempt.index].resource,),
                   result=attempt.result, error_code=attempt.error_code, layer="commit",
                   ts=attempt.started_ms + attempt.latency_ms)


#: Schema ids for ``bftd schema``.
SCHEMA_IDS = {
    "execution-intent": "https://bftdeliberate.dev/schemas/execution-intent-v1.json",
    "step-attempt": "https://bftdeliberate.dev/schemas/step-attempt-v1.json",
    "commit-result": "https://bftdeliberate.dev/schemas/commit-result-v1.json",
    "commit-record": "https://bftdeliberate.dev/schemas/commit-record-v1.json",
    "audit-event": "https://bftdeliberate.dev/schemas/audit-event-v1.json",
}
_SCHEMA_MODELS: dict[str, type[_Model]] = {
    "execution-intent": ExecutionIntent, "step-attempt": StepAttempt,
    "commit-result": CommitResult, "commit-record": CommitRecord, "audit-event": AuditEvent,
}


def commit_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schemas (draft 2020-12) of the commit-layer records, by name."""
    return {name: {"$schema": "https://json-schema.org/draft/2020-12/schema",
                   "$id": SCHEMA_IDS[name], **TypeAdapter(model).json_schema()}
            for name, model in _SCHEMA_MODELS.items()}

