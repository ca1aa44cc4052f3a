"""Effects: what the sans-IO core asks its driver to do, as frozen records.

The driver (trio peer or simulator) performs them **in list order**: a ``Persist`` always
precedes the ``Send``/``Broadcast`` of the message it records, so a replica never sends a
signed message it could forget after a crash (persist, then send, then apply -- etcd-raft's
``Ready`` discipline).
"""

from __future__ import annotations

from dataclasses import dataclass

from bftdeliberate.errors import DecodeError
from bftdeliberate.wire import cbor
from bftdeliberate.wire.messages import Request, SignedMessage, decode_envelope

#: The kinds of ``Persist`` records (what ``Replica.restore`` reads back).
PERSIST_KINDS = frozenset({"pre-prepare", "prepare", "commit", "checkpoint", "view-change",
                           "new-view", "state"})


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


def encode_persist(record: Persist) -> bytes:
    """One ``Persist`` as a durable record payload (canonical CBOR of the signed envelopes;
    ``storage.RecordLog`` frames, chains and fsyncs it)."""
    return cbor.encode({"kind": record.kind, "message": record.message.raw,
                        "proof": [proof.raw for proof in record.proof]})


def decode_persist(payload: bytes) -> Persist:
    """The ``Persist`` a record payload holds; ``DecodeError`` if it is not one."""
    fields = cbor.decode(payload)
    if (type(fields) is not dict or set(fields) != {"kind", "message", "proof"}
            or fields["kind"] not in PERSIST_KINDS or type(fields["message"]) is not bytes
            or type(fields["proof"]) is not list
            or any(type(raw) is not bytes for raw in fields["proof"])):
        raise DecodeError("not a persisted protocol record")
    return Persist(fields["kind"], decode_envelope(fields["message"]),
                   tuple(decode_envelope(raw) for raw in fields["proof"]))


def needed_after_checkpoint(record: Persist, stable_seq: int) -> bool:
    """Whether ``record`` is still needed for recovery once the state of stable checkpoint
    ``stable_seq`` is persisted: a ``state`` record iff it is that checkpoint's (or a newer
    one's); any other record iff it is not about a slot at or below the checkpoint (records
    without a ``seq`` -- ``view-change``, ``new-view`` -- are always kept)."""
    message = record.message.message
    if record.kind == "state":
        return message.seq >= stable_seq  # type: ignore[union-attr]
    seq = getattr(message, "seq", None)
    return seq is None or seq > stable_seq


Effect = Send | Broadcast | Reply | Persist | Execute | CheckpointStable | Evidence | Completed
