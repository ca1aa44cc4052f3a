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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter, ValidationError

from bftdeliberate.errors import DecodeError, LocalError
from bftdeliberate.wire import cbor
from bftdeliberate.wire.limits import (
    MAX_BATCH_SIZE,
    MAX_ID_LENGTH,
    MAX_MESSAGE_SIZE,
    MAX_OPERATION_SIZE,
    MAX_RESULT_SIZE,
)

if TYPE_CHECKING:
    from bftdeliberate.crypto import PrivateKey

#: Sequence numbers, views and timestamps are non-negative signed 64-bit integers.
MAX_COUNTER = 2**63 - 1
#: Largest member index a message may name (far above any practical committee).
MAX_REPLICA_ID = 1023
DIGEST_SIZE = 32
SIGNATURE_SIZE = 64

Counter = Annotated[int, Field(ge=0, le=MAX_COUNTER)]
ReplicaId = Annotated[int, Field(ge=0, le=MAX_REPLICA_ID)]
ClientId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
Digest = Annotated[bytes, Field(min_length=DIGEST_SIZE, max_length=DIGEST_SIZE)]
# Lists arrive from CBOR; the tuple is lax only about list-vs-tuple, each item stays strict.
RequestBatch = Annotated[
    tuple[Annotated[bytes, Strict()], ...], Field(strict=False, max_length=MAX_BATCH_SIZE)
]


class _Message(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    def signer(self) -> int | str:
        """The principal whose key must verify this message."""
        raise NotImplementedError


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
    ``digest`` so that every replica executes with the same clock reading.
    """

    type: Literal["pre-prepare"] = "pre-prepare"
    view: Counter
    seq: Counter
    digest: Digest
    timestamp: Counter
    replica: ReplicaId
    batch: RequestBatch

    def signer(self) -> int:
        return self.replica


class Prepare(_Message):
    type: Literal["prepare"] = "prepare"
    view: Counter
    seq: Counter
    digest: Digest
    replica: ReplicaId

    def signer(self) -> int:
        return self.replica


class Commit(_Message):
    type: Literal["commit"] = "commit"
    view: Counter
    seq: Counter
    digest: Digest
    replica: ReplicaId

    def signer(self) -> int:
        return self.replica


class Reply(_Message):
    type: Literal["reply"] = "reply"
    view: Counter
    timestamp: Counter
    client: ClientId
    replica: ReplicaId
    result: Annotated[bytes, Field(max_length=MAX_RESULT_SIZE)]

    def signer(self) -> int:
        return self.replica


class Checkpoint(_Message):
    """``state_digest`` covers the application state and the client reply table at ``seq``."""

    type: Literal["checkpoint"] = "checkpoint"
    seq: Counter
    state_digest: Digest
    replica: ReplicaId

    def signer(self) -> int:
        return self.replica


Message = Annotated[
    Union[Request, PrePrepare, Prepare, Commit, Reply, Checkpoint], Field(discriminator="type")
]
MESSAGE_TYPES: tuple[type[_Message], ...] = (Request, PrePrepare, Prepare, Commit, Reply, Checkpoint)
_MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)
_ENVELOPE_KEYS = frozenset({"body", "sig"})


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


def encode_body(message: _Message) -> bytes:
    """Canonical CBOR bytes of a message body (what is signed)."""
    return cbor.encode(message.model_dump())


def sign_message(message: _Message, key: PrivateKey, committee_digest: bytes) -> SignedMessage:
    """Sign ``message`` with ``key`` under the committee's domain."""
    body = encode_body(message)
    if len(body) + SIGNATURE_SIZE + 32 > MAX_MESSAGE_SIZE:
        raise LocalError(f"{message.type} message of {len(body)} bytes exceeds MAX_MESSAGE_SIZE")
    signature = key.sign(committee_digest, message.type, body)
    raw = cbor.encode({"body": body, "sig": signature})
    return SignedMessage(body=body, signature=signature, message=message, raw=raw)  # type: ignore[arg-type]


def decode_envelope(data: bytes) -> SignedMessage:
    """Parse envelope bytes into a ``SignedMessage``; structure only, signature unchecked.

    Raises ``DecodeError`` (and nothing else) for anything that is not a canonical,
    schema-valid envelope of this protocol.
    """
    outer = cbor.decode(data)
    if type(outer) is not dict or outer.keys() != _ENVELOPE_KEYS:
        raise DecodeError("envelope must be a map with exactly 'body' and 'sig'")
    body, signature = outer["body"], outer["sig"]
    if type(body) is not bytes or type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
        raise DecodeError("envelope 'body' must be bytes and 'sig' 64 bytes")
    return SignedMessage(body=body, signature=signature, message=decode_body(body), raw=data)


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
