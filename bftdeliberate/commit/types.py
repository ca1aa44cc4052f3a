"""Types shared by the commit layer's sans-IO core (executor) and its effect handlers.

A plan step is the proposal's ``PlanStep`` (``deliberation/proposal.py``); the commit layer
adds what it needs to run it exactly once: the step's index, its idempotency key and its
resource. Handlers answer every call with a :class:`StepOutcome`; the executor decides what
happens next (retry, roll back, stop) from outcomes alone, so it stays IO-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

#: Error codes an outcome may carry. ``retryable`` outcomes may be tried again (with backoff);
#: the rest stop the commit and roll back what was done.
ERROR_CODES = (
    "timeout",             # the step did not finish within its timeout_ms (retryable)
    "transient",           # a handler-reported temporary failure (retryable)
    "permanent",           # a handler-reported failure that retrying cannot fix
    "permission_denied",   # outside the handler's allow-list or sandbox: nothing ran
    "conflict",            # the resource is held by another commit beyond its limit
    "invalid_step",        # the step does not validate (unknown kind, missing field)
    "test_failed",         # a test/command step ran and reported failure
)
RETRYABLE_CODES = frozenset({"timeout", "transient"})


@dataclass(frozen=True, slots=True)
class StepCall:
    """One step as the executor hands it to a handler."""

    commit_id: str
    index: int
    #: hash(committee digest, proposal_id, step index, step content): never depends on the
    #: attempt, the time or the submitter (see ``commit.model.idempotency_key``).
    idempotency_key: str
    #: ``file:src/foo.ts``, ``kv:table``, ``command:npm`` -- what the concurrency limit is on.
    resource: str
    #: The proposal's plan step as plain data (``PlanStep.model_dump(exclude_none=True)``).
    step: dict[str, Any]
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What a handler reports for one call (apply, compensate or was_applied)."""

    ok: bool
    error_code: str | None = None
    detail: str = ""
    #: sha256 hex of the step's output (command stdout+stderr, written bytes), if any.
    output_digest: str | None = None
    #: True when the idempotency key had already been applied (nothing was done again).
    already_applied: bool = False

    @property
    def retryable(self) -> bool:
        return not self.ok and self.error_code in RETRYABLE_CODES


AppliedState = Literal["applied", "not_applied", "compensated"]
