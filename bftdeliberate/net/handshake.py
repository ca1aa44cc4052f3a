"""The mutual authentication handshake, sans-IO: build and check its two messages.

Both sides speak at once (no round trip is wasted on who goes first):

1. ``HELLO`` = canonical CBOR ``{"proto", "committee", "identity", "nonce"}``: the protocol
   version, the committee digest, who the sender claims to be (a member id or a client id)
   and a fresh 32-byte random nonce.
2. ``AUTH`` = canonical CBOR ``{"sig"}``: the sender's signature, under the committee's
   domain (``crypto.signing_payload`` binds the committee digest) and the type
   ``handshake``, of the transcript ``{"initiator", "responder", "initiator_nonce",
   "responder_nonce", "signer"}``.

A signature over both fresh nonces and both identities cannot be replayed on another
connection or reflected back (``signer`` says which side signed). A wrong protocol or
committee, an identity the committee does not know, or a bad signature refuses the
connection with a reason (``HandshakeRefused.reason``) that the transport counts and logs.
Members may be dialled by members and clients; a client never accepts connections.
"""

from __future__ import annotations

from dataclasses import dataclass

from bftdeliberate.committee import Committee
from bftdeliberate.crypto import PrivateKey, Verifier
from bftdeliberate.errors import DecodeError, RemoteError
from bftdeliberate.wire import cbor

#: Version tag of this handshake; a peer speaking another refuses (``wrong-protocol``).
HANDSHAKE_PROTOCOL = "bftd-handshake/1"
#: Fresh random bytes per side per connection.
NONCE_SIZE = 32
#: Largest HELLO or AUTH frame: a connection that has not authenticated yet may make us
#: buffer no more than this (not the 4 MiB of an authenticated frame).
MAX_HANDSHAKE_FRAME = 1024
#: Domain-separation type of the handshake signature.
HANDSHAKE_SIGNATURE_TYPE = "handshake"
SIGNATURE_SIZE = 64

Identity = int | str
"""A member id (int) or a client id (str) from the committee manifest."""


class HandshakeRefused(RemoteError):
    """The other side failed the handshake; ``reason`` is a short counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Hello:
    identity: Identity
    nonce: bytes
    raw: bytes


def describe(identity: Identity) -> str:
    """How logs name a peer: ``member 2`` or ``client 'client-0'``."""
    return f"member {identity}" if type(identity) is int else f"client {identity!r}"


def public_key_of(committee: Committee, identity: Identity) -> bytes | None:
    if type(identity) is int:
        return committee.member_public_key(identity)
    if type(identity) is str:
        return committee.client_public_key(identity)
    return None


def make_hello(committee: Committee, identity: Identity, nonce: bytes) -> Hello:
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"a handshake nonce is {NONCE_SIZE} bytes")
    raw = cbor.encode({"proto": HANDSHAKE_PROTOCOL, "committee": committee.digest,
                       "identity": identity, "nonce": nonce})
    return Hello(identity, nonce, raw)


def parse_hello(data: bytes, committee: Committee) -> Hello:
    """The peer's HELLO, or ``HandshakeRefused`` naming why it is not acceptable."""
    try:
        fields = cbor.decode(data, max_size=MAX_HANDSHAKE_FRAME)
    except DecodeError as error:
        raise HandshakeRefused("malformed", f"HELLO is not canonical CBOR ({error})") from None
    if type(fields) is not dict or set(fields) != {"proto", "committee", "identity", "nonce"}:
        raise HandshakeRefused("malformed", "HELLO does not have the expected fields")
    if fields["proto"] != HANDSHAKE_PROTOCOL:
        raise HandshakeRefused("wrong-protocol", f"peer speaks {fields['proto']!r}")
    if fields["committee"] != committee.digest:
        digest = fields["committee"]
        shown = digest.hex()[:16] if type(digest) is bytes else repr(digest)[:32]
        raise HandshakeRefused("wrong-committee", f"peer's committee digest {shown}… is not "
                                                  f"ours ({committee.digest.hex()[:16]}…)")
    identity, nonce = fields["identity"], fields["nonce"]
    if type(nonce) is not bytes or len(nonce) != NONCE_SIZE:
        raise HandshakeRefused("malformed", "HELLO nonce is not 32 bytes")
    if type(identity) not in (int, str) or public_key_of(committee, identity) is None:
        raise HandshakeRefused("unknown-identity",
                               f"{identity!r} is neither a member nor an authorised client")
    return Hello(identity, nonce, data)


def _transcript(initiator: Hello, responder: Hello, signer: Identity) -> bytes:
    return cbor.encode({"initiator": initiator.identity, "responder": responder.identity,
                        "initiator_nonce": initiator.nonce, "responder_nonce": responder.nonce,
                        "signer": signer})


def make_auth(key: PrivateKey, committee: Committee, initiator: Hello, responder: Hello,
              signer: Identity) -> bytes:
    signature = key.sign(committee.digest, HANDSHAKE_SIGNATURE_TYPE,
                         _transcript(initiator, responder, signer))
    return cbor.encode({"sig": signature})


def check_auth(data: bytes, committee: Committee, verifier: Verifier, initiator: Hello,
               responder: Hello, signer: Identity) -> None:
    """Raise ``HandshakeRefused`` unless ``data`` is ``signer``'s AUTH for this transcript."""
    try:
        fields = cbor.decode(data, max_size=MAX_HANDSHAKE_FRAME)
    except DecodeError as error:
        raise HandshakeRefused("malformed", f"AUTH is not canonical CBOR ({error})") from None
    if type(fields) is not dict or set(fields) != {"sig"} or type(fields["sig"]) is not bytes \
            or len(fields["sig"]) != SIGNATURE_SIZE:
        raise HandshakeRefused("malformed", "AUTH does not carry a 64-byte signature")
    public_key = public_key_of(committee, signer)
    if public_key is None or not verifier.verify(
            public_key, committee.digest, HANDSHAKE_SIGNATURE_TYPE,
            _transcript(initiator, responder, signer), fields["sig"]):
        raise HandshakeRefused("bad-signature",
                               f"{describe(signer)} did not sign this handshake with its key")
