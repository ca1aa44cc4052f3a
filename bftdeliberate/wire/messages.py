"""Message schemas and the signed envelope.

Every protocol message is a canonical CBOR map (see ``cbor.py``) validated by a strict,
frozen pydantic model; the ``type`` field discriminates. A message travels inside an
envelope ``{"body": <the exact canonical bytes>, "sig": <64 bytes>}``: the signature covers
the body bytes *as received* under the domain (protocol tag, committee digest, type).

Who signed a message is a field of its body (``replica`` or ``client``); the receiver verifies
with *that* principal's key from the genesis manifest, and the transport-level sender must
match it (except for client requests, which replicas may relay). A header field alone never
identifies a sender.

Decoding here is structural only (schema, sizes, canonical bytes). Whether a signature
verifies, and whether a message is acceptable now, are protocol rules and live in ``pbft/``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal, Self

import cbor2
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from bftdeliberate.errors import DecodeError, LocalError
from bftdeliberate.wire import cbor
from bftdeliberate.wire.limits import (
    MAX_BATCH_SIZE,
    MAX_ID_LENGTH,
    MAX_LOG_WINDOW,
    MAX_MESSAGE_SIZE,
    MAX_OPERATION_SIZE,
    MAX_RESULT_SIZE,
    MAX_STATE_SIZE,
)

if TYPE_CHECKING:
    from bftdeliberate.crypto import PrivateKey

#: Sequence numbers, views and timestamps are non-negative signed 64-bit integers.
MAX_COUNTER = 2**63 - 1
#: Largest member index a message may name (far above any practical committee).
MAX_REPLICA_ID = 1023
DIGEST_SIZE = 32
SIGNATURE_SIZE = 64
#: Decoded envelopes memoised (at most entries x max message bytes: 1024 x 64 KiB).
DECODE_CACHE_ENTRIES = 1024
DECODE_CACHE_MAX_MESSAGE = 64 * 1024
#: Longest Merkle audit path of a batch-signed REPLY (a tree over at most MAX_BATCH_SIZE leaves).
MAX_REPLY_PATH_LENGTH = (MAX_BATCH_SIZE - 1).bit_length()

Counter = Annotated[int, Field(ge=0, le=MAX_COUNTER)]
ReplicaId = Annotated[int, Field(ge=0, le=MAX_REPLICA_ID)]
ClientId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
Digest = Annotated[bytes, Field(min_length=DIGEST_SIZE, max_length=DIGEST_SIZE)]
# Lists arrive from CBOR; the tuple is lax only about list-vs-tuple, each item stays strict.
RequestBatch = Annotated[
    tuple[Annotated[bytes, Strict()], ...], Field(strict=False, max_length=MAX_BATCH_SIZE)
]
#: Signed envelopes carried inside another message, one per member at most (proofs).
MemberEnvelopes = Annotated[
    tuple[Annotated[bytes, Strict()], ...], Field(strict=False, max_length=MAX_REPLICA_ID + 1)
]
#: A prepared certificate: the PRE-PREPARE envelope, then the PREPARE envelopes.
PreparedCertificate = Annotated[
    tuple[Annotated[bytes, Strict()], ...],
    Field(strict=False, min_length=1, max_length=MAX_REPLICA_ID + 2),
]


class _Message(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    def signer(self) -> int | str:
        """The principal whose key must verify this message: the ``replica`` field for
        every member's message (requests override it with their client)."""
        return self.replica  # type: ignore[attr-defined]


class Request(_Message):
    """A client operation. ``timestamp`` is monotonic per client: exactly-once key."""

    type: Literal["request"] = "request"
    client: ClientId
    timestamp: Counter
    operation: Annotated[bytes, Field(max_length=MAX_OPERATION_SIZE)]

    def signer(self) -> str:
        return self.client


class PrePrepare(_Message):
    """The primary's proposal of ``batch`` (signed request envelopes) at (view, seq).

    ``timestamp`` (milliseconds) is the primary-assigned agreed time of the batch, bound by
    ``digest`` so that every replica executes with the same clock reading. ``origin_view``
    is the view the batch was first proposed in (``view`` itself in the normal case; the
    certified pre-prepare's in a NEW-VIEW's re-proposal), also bound by ``digest``: it is the
    view every replica passes to the application, whether it learned the batch in the
    first view or from the NEW-VIEW.
    """

    type: Literal["pre-prepare"] = "pre-prepare"
    view: Counter
    seq: Counter
    digest: Digest
    timestamp: Counter
    origin_view: Counter
    replica: ReplicaId
    batch: RequestBatch

    @model_validator(mode="after")
    def _origin_not_after_view(self) -> Self:
        if self.origin_view > self.view:
            raise ValueError("origin_view is after the pre-prepare's view")
        return self



class _Vote(_Message):
    """A member's PREPARE or COMMIT for (view, seq, digest)."""

    view: Counter
    seq: Counter
    digest: Digest
    replica: ReplicaId


class Prepare(_Vote):
    type: Literal["prepare"] = "prepare"


class Commit(_Vote):
    type: Literal["commit"] = "commit"


class Reply(_Message):
    """The result of one request, batch-signed: the envelope's signature covers the Merkle
    root of all replies of batch ``seq`` (see ``pbft/replies.py``); ``index``, ``size`` and
    ``path`` prove this reply's place in it."""

    type: Literal["reply"] = "reply"
    view: Counter
    seq: Counter
    timestamp: Counter
    client: ClientId
    replica: ReplicaId
    result: Annotated[bytes, Field(max_length=MAX_RESULT_SIZE)]
    index: Annotated[int, Field(ge=0, lt=MAX_BATCH_SIZE)]
    size: Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)]
    path: Annotated[
        tuple[Annotated[bytes, Strict(), Field(min_length=DIGEST_SIZE, max_length=DIGEST_SIZE)], ...],
        Field(strict=False, max_length=MAX_REPLY_PATH_LENGTH),
    ]



class Checkpoint(_Message):
    """``state_digest`` covers the application state and the client reply table at ``seq``."""

    type: Literal["checkpoint"] = "checkpoint"
    seq: Counter
    state_digest: Digest
    replica: ReplicaId



class Status(_Message):
    """A stalled replica's progress: peers that are ahead re-send what it lacks (the
    status-based retransmission of Castro's thesis). ``active`` is False while the replica
    is changing to ``view`` (it lacks that view's NEW-VIEW)."""

    type: Literal["status"] = "status"
    view: Counter
    active: bool
    last_executed: Counter
    low_watermark: Counter
    #: Sent by a member that lost its disk: peers answer with their own STATUS.
    recovering: bool
    replica: ReplicaId



class State(_Message):
    """State transfer, one chunk: bytes ``offset`` .. ``offset + len(data)`` of the state at
    stable checkpoint ``seq``, a blob of ``total`` bytes -- the canonical CBOR of
    ``[app_snapshot, reply_table]`` with the reply table ``[[client, timestamp, result],
    ...]`` (sorted by client) that the state digest covers. Every chunk carries the proof,
    the 2f+1 matching CHECKPOINT envelopes, so each is attributable on its own; the whole is
    checked against the certified digest once assembled."""

    type: Literal["state"] = "state"
    seq: Counter
    proof: MemberEnvelopes
    total: Annotated[int, Field(ge=1, le=MAX_STATE_SIZE)]
    offset: Annotated[int, Field(ge=0, lt=MAX_STATE_SIZE)]
    data: Annotated[bytes, Field(min_length=1)]
    replica: ReplicaId


class ViewChange(_Message):
    """VIEW-CHANGE to ``view``: the sender's stable checkpoint ``checkpoint`` with its proof
    (2f+1 matching CHECKPOINT envelopes; empty for the genesis checkpoint 0) and, for every
    sequence number above it that it prepared, the certificate from the highest view in
    which it prepared (Castro & Liskov's P set)."""

    type: Literal["view-change"] = "view-change"
    view: Counter
    checkpoint: Counter
    proof: MemberEnvelopes
    prepared: Annotated[tuple[PreparedCertificate, ...], Field(strict=False, max_length=MAX_LOG_WINDOW)]
    replica: ReplicaId


class NewView(_Message):
    """NEW-VIEW for ``view`` from its primary: the 2f+1 VIEW-CHANGE envelopes it was built
    from and the O set, one PRE-PREPARE of the new view per sequence number from the highest
    stable checkpoint in them to the highest prepared one (null requests fill the gaps).
    Every backup recomputes O from the VIEW-CHANGEs and rejects any difference."""

    type: Literal["new-view"] = "new-view"
    view: Counter
    view_changes: MemberEnvelopes
    pre_prepares: Annotated[tuple[Annotated[bytes, Strict()], ...], Field(strict=False, max_length=MAX_LOG_WINDOW)]
    replica: ReplicaId


Message = Annotated[
    Request | PrePrepare | Prepare | Commit | Reply | Checkpoint | Status | State | ViewChange | NewView,
    Field(discriminator="type"),
]
MESSAGE_TYPES: tuple[type[_Message], ...] = (
    Request, PrePrepare, Prepare, Commit, Reply, Checkpoint, Status, State, ViewChange, NewView,
)
_MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)
# The envelope is a fixed-shape canonical map, on the path of every message, so it is built
# and parsed by hand; the general codec yields the very same bytes (tests check both ways).
# Canonical key order is length-first: "sig" before "body".
_ENVELOPE_PREFIX = b"\xa2\x63sig\x58\x40"  # map(2), text "sig", bytes(64)
_BODY_KEY = b"\x64body"  # text "body"
_BODY_HEADER_AT = len(_ENVELOPE_PREFIX) + SIGNATURE_SIZE + len(_BODY_KEY)


@dataclass(frozen=True, slots=True)
class SignedMessage:
    """A decoded message with the exact bytes that were signed and the full envelope bytes."""

    body: bytes
    signature: bytes
    message: Message
    raw: bytes = field(repr=False)

    @property
    def type(self) -> str:
        return self.message.type


def _canonical_order(model: type[_Message]) -> tuple[str, ...]:
    # cbor2's canonical map order for text keys: shorter UTF-8 first, then bytewise.
    return tuple(sorted(model.model_fields, key=lambda name: (len(name.encode()), name.encode())))


_FIELD_ORDER: dict[type, tuple[str, ...]] = {model: _canonical_order(model) for model in MESSAGE_TYPES}


def encode_body(message: _Message) -> bytes:
    """Canonical CBOR bytes of a message body (what is signed).

    Hot path (every signed message): a validated model holds only codec-safe values (strict
    schema: bounded ints, bytes, text, tuples of bytes), so its fields are written in the
    precomputed canonical key order by plain ``cbor2.dumps`` -- the same bytes as
    ``cbor.encode(message.model_dump())`` (tested) at a third of the cost.
    """
    fields = message.__dict__
    return cbor2.dumps({name: fields[name] for name in _FIELD_ORDER[type(message)]})


def sign_message(message: _Message, key: PrivateKey, committee_digest: bytes) -> SignedMessage:
    """Sign ``message`` with ``key`` under the committee's domain."""
    body = encode_body(message)
    if len(body) + SIGNATURE_SIZE + 32 > MAX_MESSAGE_SIZE:
        raise LocalError(f"{message.type} message of {len(body)} bytes exceeds MAX_MESSAGE_SIZE")
    signature = key.sign(committee_digest, message.type, body)
    raw = encode_envelope(body, signature)
    return SignedMessage(body=body, signature=signature, message=message, raw=raw)  # type: ignore[arg-type]


def encode_envelope(body: bytes, signature: bytes) -> bytes:
    """Canonical CBOR of ``{"body": body, "sig": signature}``."""
    if len(signature) != SIGNATURE_SIZE:
        raise LocalError("a signature is 64 bytes")
    size = len(body)
    if size < 24:
        header = bytes((0x40 + size,))
    elif size < 0x100:
        header = bytes((0x58, size))
    elif size < 0x10000:
        header = b"\x59" + size.to_bytes(2, "big")
    else:
        header = b"\x5a" + size.to_bytes(4, "big")
    return b"".join((_ENVELOPE_PREFIX, signature, _BODY_KEY, header, body))


def _split_envelope(data: bytes) -> tuple[bytes, bytes]:
    if type(data) is not bytes:
        raise LocalError(f"envelope must be bytes, not {type(data).__name__}")
    if len(data) > MAX_MESSAGE_SIZE:
        raise DecodeError(f"message of {len(data)} bytes exceeds the limit of {MAX_MESSAGE_SIZE}")
    at = _BODY_HEADER_AT
    if (
        len(data) <= at
        or not data.startswith(_ENVELOPE_PREFIX)
        or data[at - len(_BODY_KEY):at] != _BODY_KEY
    ):
        raise DecodeError("envelope must be the canonical map {'body': bytes, 'sig': 64 bytes}")
    initial = data[at]
    # Definite-length byte string with the shortest length form (canonical).
    if 0x40 <= initial < 0x58:
        size, start, smallest = initial - 0x40, at + 1, 0
    elif initial == 0x58:
        size, start, smallest = int.from_bytes(data[at + 1:at + 2], "big"), at + 2, 24
    elif initial == 0x59:
        size, start, smallest = int.from_bytes(data[at + 1:at + 3], "big"), at + 3, 0x100
    elif initial == 0x5A:
        size, start, smallest = int.from_bytes(data[at + 1:at + 5], "big"), at + 5, 0x10000
    else:
        raise DecodeError("envelope 'body' must be a definite-length byte string")
    if size < smallest:
        raise DecodeError("envelope body length is not minimally encoded")
    if start + size != len(data):
        raise DecodeError("envelope body length does not match the message size")
    signature_at = len(_ENVELOPE_PREFIX)
    return data[start:], data[signature_at:signature_at + SIGNATURE_SIZE]


def decode_envelope(data: bytes) -> SignedMessage:
    """Parse envelope bytes into a ``SignedMessage``; structure only, signature unchecked.

    Raises ``DecodeError`` (and nothing else) for anything that is not a canonical,
    schema-valid envelope of this protocol.
    """
    if type(data) is bytes and len(data) <= DECODE_CACHE_MAX_MESSAGE:
        return _decode_envelope_cached(data)
    return _decode_envelope(data)


def _decode_envelope(data: bytes) -> SignedMessage:
    body, signature = _split_envelope(data)
    return SignedMessage(body=body, signature=signature, message=decode_body(body), raw=data)


# Decoding is a pure function of the bytes and its result is immutable, so it is memoised:
# a broadcast decoded by every replica of one process (the simulator) or a retransmitted
# duplicate costs one dictionary lookup. Failures are not cached. Bounded: entries x size.
_decode_envelope_cached = functools.lru_cache(maxsize=DECODE_CACHE_ENTRIES)(_decode_envelope)


def decode_body(body: bytes) -> Message:
    """Validate canonical body bytes against the message schemas."""
    fields = cbor.decode(body)
    if type(fields) is not dict:
        raise DecodeError("message body must be a map")
    try:
        return _MESSAGE_ADAPTER.validate_python(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise DecodeError(f"invalid message: {where}: {first['msg']}") from None


def message_json_schema() -> dict:
    """JSON Schema of the message union (for ``bftd schema``)."""
    return _MESSAGE_ADAPTER.json_schema()
