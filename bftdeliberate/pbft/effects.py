"""Effects: what the sans-IO core asks its driver to do, as frozen records.

The driver (trio peer or simulator) performs them **in list order**: a ``Persist`` always
precedes the ``Send``/``Broadcast`` of the message it records, so a replica never sends a
signed message it could forget after a crash (persist, then send, then apply -- etcd-raft's
``Ready`` discipline).
"""

from __future__ import annotations

from dataclasses import dataclass

from bftdeliberate.wire.messages import Request, SignedMessage


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to member ``to``."""

    to: int
    message: SignedMessage


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send ``message`` to every member except the sender itself."""

    message: SignedMessage


@dataclass(frozen=True, slots=True)
class Reply:
    """Send a signed REPLY to client ``client``."""

    client: str
    message: SignedMessage


@dataclass(frozen=True, slots=True)
class Persist:
    """Durably record a message this replica signed (or, for ``new-view``, the NEW-VIEW it
    accepted), before it leaves the process. ``proof`` carries what recovery needs with it:
    the prepared certificate with a ``commit``.

    Kinds: ``pre-prepare``, ``prepare``, ``commit``, ``checkpoint``, ``view-change``,
    ``new-view``, ``state`` (the stable checkpoint's state, to restart from).
    """

    kind: str
    message: SignedMessage
    proof: tuple[SignedMessage, ...] = ()


@dataclass(frozen=True, slots=True)
class Execute:
    """Batch ``seq`` was committed and applied; ``results`` align with ``requests``.

    ``executed`` marks which requests ran now (False: an earlier seq already executed that
    client timestamp, so the cached reply was used -- exactly-once).
    """

    view: int
    seq: int
    digest: bytes
    timestamp: int
    requests: tuple[Request, ...]
    results: tuple[bytes, ...]
    executed: tuple[bool, ...]
    #: The PRE-PREPARE and the 2f+1 matching COMMITs that justified execution, so that an
    #: auditor (the simulator's oracles, an audit log) can re-verify every signature.
    proposal: SignedMessage
    certificate: tuple[SignedMessage, ...]


@dataclass(frozen=True, slots=True)
class CheckpointStable:
    """A checkpoint at ``seq`` gathered 2f+1 matching signatures; the log below is gone."""

    seq: int
    state_digest: bytes


@dataclass(frozen=True, slots=True)
class Evidence:
    """Proof of misbehaviour: the signed envelopes (raw bytes) that convict ``culprit``."""

    kind: str
    culprit: int | str
    proofs: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Completed:
    """Client side: ``reply_quorum`` matching replies accepted ``result`` for ``timestamp``."""

    timestamp: int
    result: bytes
    view: int


Effect = Send | Broadcast | Reply | Persist | Execute | CheckpointStable | Evidence | Completed
