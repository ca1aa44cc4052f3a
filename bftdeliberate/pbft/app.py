"""The application interface the replica drives: a deterministic state machine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ExecutionContext:
    """What every replica agrees on when it applies one operation.

    ``timestamp_ms`` is the primary-assigned batch time that backups validated within
    a skew bound; it is the only clock an application may read.
    """

    seq: int
    view: int
    timestamp_ms: int
    client: str
    request_timestamp: int
    index: int


class StateMachine(Protocol):
    """A replicated application. Every method must be deterministic and IO-free."""

    def apply(self, operation: bytes, ctx: ExecutionContext) -> bytes:
        """Apply one ordered operation and return its result. Must not raise on bad input."""
        ...

    def snapshot(self) -> bytes:
        """Canonical bytes of the whole state (equal states give equal bytes)."""
        ...

    def restore(self, snapshot: bytes) -> None:
        """Replace the state with ``snapshot`` (from state transfer)."""
        ...

    def digest(self) -> bytes:
        """32-byte digest of the state; equal on every replica after the same log."""
        ...
