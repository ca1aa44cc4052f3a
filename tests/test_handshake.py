"""The mutual handshake (net/handshake.py), sans-IO: both messages, every refusal reason,
replay and reflection, and the promise that arbitrary peer bytes only ever raise
``HandshakeRefused``. The last tests drive ``Transport._handshake`` over memory streams."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from conftest import make_genesis
from hypothesis import given
from hypothesis import strategies as st

from bftdeliberate.committee import make_committee
from bftdeliberate.crypto import PrivateKey, Verifier
from bftdeliberate.net.handshake import (
    HANDSHAKE_PROTOCOL,
    MAX_HANDSHAKE_FRAME,
    NONCE_SIZE,
    HandshakeRefused,
    Hello,
    check_auth,
    make_auth,
    make_hello,
    parse_hello,
)
from bftdeliberate.net.transport import Transport
from bftdeliberate.wire import cbor

GENESIS = make_genesis(4, clients=2)
COMMITTEE = GENESIS.committee
#: Same keys, same members, another committee id: only the digest differs.
OTHER_COMMITTEE = make_committee(4, clients=2, rng=random.Random(1), committee_id="other")[0]
VERIFIER = Verifier()


def key_of(identity: int | str) -> PrivateKey:
    return GENESIS.member_keys[identity] if type(identity) is int \
        else GENESIS.client_keys[identity]


def nonce(seed: int) -> bytes:
    return random.Random(seed).randbytes(NONCE_SIZE)


def exchange(initiator: int | str, responder: int | str, seed: int = 0):
    """One complete exchange; returns what each side sent and what each side parsed."""
    hello_i = make_hello(COMMITTEE, initiator, nonce(2 * seed))
    hello_r = make_hello(COMMITTEE, responder, nonce(2 * seed + 1))
    # Each side parses the other's HELLO off the wire.
    seen_by_r = parse_hello(hello_i.raw, COMMITTEE)
    seen_by_i = parse_hello(hello_r.raw, COMMITTEE)
    auth_i = make_auth(key_of(initiator), COMMITTEE, hello_i, seen_by_i, initiator)
    auth_r = make_auth(key_of(responder), COMMITTEE, seen_by_r, hello_r, responder)
    return hello_i, hello_r, seen_by_r, seen_by_i, auth_i, auth_r


def refused(reason: str):
    return pytest.raises(HandshakeRefused, match=f"^{reason}:")


# ---------------------------------------------------------------------- happy path


@pytest.mark.parametrize(("initiator", "responder"), [(0, 1), (3, 2), ("client-0", 0),
                                                      ("client-1", 3)])
def test_correct_exchange_authenticates_both_sides(initiator, responder):
    hello_i, hello_r, seen_by_r, seen_by_i, auth_i, auth_r = exchange(initiator, responder)
    assert seen_by_r.identity == initiator and seen_by_r.nonce == hello_i.nonce
    assert seen_by_i.identity == responder and seen_by_i.nonce == hello_r.nonce
    # The responder checks the initiator's AUTH, and the initiator the responder's.
    check_auth(auth_i, COMMITTEE, VERIFIER, seen_by_r, hello_r, initiator)
    check_auth(auth_r, COMMITTEE, VERIFIER, hello_i, seen_by_i, responder)


def test_hello_is_canonical_cbor_with_the_documented_fields():
    hello = make_hello(COMMITTEE, "client-0", nonce(1))
    assert cbor.decode(hello.raw) == {"proto": HANDSHAKE_PROTOCOL, "committee": COMMITTEE.digest,
                                      "identity": "client-0", "nonce": nonce(1)}
    assert len(hello.raw) <= MAX_HANDSHAKE_FRAME
    with pytest.raises(ValueError):
        make_hello(COMMITTEE, 0, b"short")


# ----------------------------------------------------------------------- refusals


def test_wrong_committee_digest_is_refused():
    assert OTHER_COMMITTEE.digest != COMMITTEE.digest
    foreign = make_hello(OTHER_COMMITTEE, 1, nonce(1))
    with refused("wrong-committee"):
        parse_hello(foreign.raw, COMMITTEE)
    # Not bytes at all in the committee field: the same reason, and no crash on showing it.
    raw = cbor.encode({"proto": HANDSHAKE_PROTOCOL, "committee": ["x"] * 300, "identity": 1,
                       "nonce": nonce(1)})
    with refused("wrong-committee"):
        parse_hello(raw, COMMITTEE)


def test_wrong_protocol_is_refused():
    raw = cbor.encode({"proto": "bftd-handshake/2", "committee": COMMITTEE.digest,
                       "identity": 1, "nonce": nonce(1)})
    with refused("wrong-protocol"):
        parse_hello(raw, COMMITTEE)


@pytest.mark.parametrize("identity", [4, -1, 2**64 - 1, "mallory", "", "0", True, False, None,
                                      b"client-0", ["client-0"], {"id": 0}])
def test_unknown_identity_is_refused(identity):
    raw = cbor.encode({"proto": HANDSHAKE_PROTOCOL, "committee": COMMITTEE.digest,
                       "identity": identity, "nonce": nonce(1)})
    with refused("unknown-identity"):
        parse_hello(raw, COMMITTEE)


@pytest.mark.parametrize("fields", [
    {"proto": HANDSHAKE_PROTOCOL, "committee": COMMITTEE.digest, "identity": 1},
    {"proto": HANDSHAKE_PROTOCOL, "committee": COMMITTEE.digest, "identity": 1,
     "nonce": nonce(1), "extra": 0},
    {"proto": HANDSHAKE_PROTOCOL, "committee": COMMITTEE.digest, "identity": 1,
     "nonce": nonce(1)[:-1]},
    {"proto": HANDSHAKE_PROTOCOL, "committee": COMMITTEE.digest, "identity": 1,
     "nonce": "x" * NONCE_SIZE},
    [HANDSHAKE_PROTOCOL, COMMITTEE.digest, 1, nonce(1)],
])
def test_malformed_hello_is_refused(fields):
    with refused("malformed"):
        parse_hello(cbor.encode(fields), COMMITTEE)


def test_oversized_hello_is_refused_before_parsing():
    raw = cbor.encode({"proto": HANDSHAKE_PROTOCOL, "committee": COMMITTEE.digest,
                       "identity": "x" * MAX_HANDSHAKE_FRAME, "nonce": nonce(1)})
    with refused("malformed"):
        parse_hello(raw, COMMITTEE)


def test_auth_signed_by_another_key_than_the_claimed_identity_is_refused():
    hello_i, hello_r, seen_by_r, seen_by_i, _, _ = exchange(1, 0)
    # Member 1 claims to be member 1 but signs with member 2's key, or with a fresh key.
    for key in (GENESIS.member_keys[2], PrivateKey.generate(random.Random(7)),
                GENESIS.client_keys["client-0"]):
        forged = make_auth(key, COMMITTEE, hello_i, seen_by_i, 1)
        with refused("bad-signature"):
            check_auth(forged, COMMITTEE, VERIFIER, seen_by_r, hello_r, 1)


def test_auth_signed_for_another_committee_is_refused():
    hello_i, hello_r, seen_by_r, seen_by_i, _, _ = exchange(1, 0)
    # The right key, the right transcript, but the signature's domain is another committee.
    other = make_auth(GENESIS.member_keys[1], OTHER_COMMITTEE, hello_i, seen_by_i, 1)
    with refused("bad-signature"):
        check_auth(other, COMMITTEE, VERIFIER, seen_by_r, hello_r, 1)


def test_auth_replayed_from_another_connection_is_refused():
    # Connection A: client-0 -> member 0, recorded by an eavesdropper.
    _, _, _, _, auth_a, auth_a_reply = exchange("client-0", 0, seed=1)
    # Connection B, same identities, fresh nonces: replaying A's AUTH in either direction.
    hello_i, hello_r, seen_by_r, seen_by_i, _, _ = exchange("client-0", 0, seed=2)
    with refused("bad-signature"):
        check_auth(auth_a, COMMITTEE, VERIFIER, seen_by_r, hello_r, "client-0")
    with refused("bad-signature"):
        check_auth(auth_a_reply, COMMITTEE, VERIFIER, hello_i, seen_by_i, 0)


def test_auth_replayed_with_one_nonce_reused_is_refused():
    # The attacker reuses the victim's initiator nonce (it chooses its own HELLO), but the
    # responder's fresh nonce differs, so the old signature does not cover this connection.
    _, _, _, _, auth_a, _ = exchange(1, 0, seed=1)
    hello_i = make_hello(COMMITTEE, 1, nonce(2))  # same nonce as seed=1's initiator
    hello_r = make_hello(COMMITTEE, 0, nonce(99))
    with refused("bad-signature"):
        check_auth(auth_a, COMMITTEE, VERIFIER, hello_i, hello_r, 1)


def test_reflected_auth_is_refused():
    # Member 0 dials member 1; the attacker in the middle sends member 0's own AUTH back as if
    # it were member 1's.
    hello_i, _, _, seen_by_i, auth_i, _ = exchange(0, 1)
    with refused("bad-signature"):
        check_auth(auth_i, COMMITTEE, VERIFIER, hello_i, seen_by_i, 1)
    # Nor does it pass with the roles swapped (the transcript names who initiated).
    with refused("bad-signature"):
        check_auth(auth_i, COMMITTEE, VERIFIER, seen_by_i, hello_i, 0)


def test_signer_field_binds_the_side():
    # Member 0 signs the transcript naming itself as signer; a check expecting member 1 fails
    # even though 0 and 1 sign the same nonces and identities.
    hello_i, _, _, seen_by_i, _, _ = exchange(0, 1)
    mislabelled = make_auth(GENESIS.member_keys[0], COMMITTEE, hello_i, seen_by_i, 1)
    with refused("bad-signature"):
        check_auth(mislabelled, COMMITTEE, VERIFIER, hello_i, seen_by_i, 1)


@pytest.mark.parametrize("fields", [{"sig": b"\0" * 63}, {"sig": b"\0" * 65}, {"sig": "x" * 64},
                                    {"sig": b"\0" * 64, "more": 1}, {}, [b"\0" * 64]])
def test_malformed_auth_is_refused(fields):
    hello_i, hello_r, _, _, _, _ = exchange(1, 0)
    with refused("malformed"):
        check_auth(cbor.encode(fields), COMMITTEE, VERIFIER, hello_i, hello_r, 1)


def test_auth_for_an_unknown_signer_is_refused():
    hello_i, hello_r, _, _, auth_i, _ = exchange(1, 0)
    with refused("bad-signature"):
        check_auth(auth_i, COMMITTEE, VERIFIER, hello_i, hello_r, "mallory")


# ------------------------------------------------------------------ property tests

_HELLO_I = make_hello(COMMITTEE, "client-0", nonce(1))
_HELLO_R = make_hello(COMMITTEE, 0, nonce(2))
_AUTH = make_auth(GENESIS.client_keys["client-0"], COMMITTEE, _HELLO_I, _HELLO_R, "client-0")

_scalars = (st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1)
            | st.binary(max_size=40) | st.text(max_size=20))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)
_near_hello = st.fixed_dictionaries({
    "proto": st.just(HANDSHAKE_PROTOCOL) | _values,
    "committee": st.just(COMMITTEE.digest) | _values,
    "identity": st.sampled_from([0, 3, "client-0"]) | _values,
    "nonce": st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE) | _values,
})


def _mutations(base: bytes):
    """``base`` with a few bytes overwritten, truncated or extended."""
    return st.tuples(st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)),
                              max_size=4),
                     st.integers(0, len(base)), st.binary(max_size=8)).map(
        lambda t: _apply(base, *t))


def _apply(base: bytes, edits, cut: int, tail: bytes) -> bytes:
    data = bytearray(base)
    for index, value in edits:
        data[index] = value
    return bytes(data[:cut]) + tail


_peer_bytes = (st.binary(max_size=2 * MAX_HANDSHAKE_FRAME)
               | _near_hello.map(cbor.encode)
               | _mutations(_HELLO_I.raw)
               | _mutations(_AUTH)
               | st.dictionaries(st.text(max_size=4), _values, max_size=3).map(cbor.encode))


def _only_refusals(call) -> None:
    try:
        call()
    except HandshakeRefused as error:
        assert error.reason in {"malformed", "wrong-protocol", "wrong-committee",
                                "unknown-identity", "bad-signature"}


@given(_peer_bytes)
def test_parse_hello_only_ever_raises_handshake_refused(data):
    def call() -> None:
        hello = parse_hello(data, COMMITTEE)
        assert type(hello) is Hello and hello.raw == data
        assert type(hello.identity) in (int, str) and len(hello.nonce) == NONCE_SIZE
    _only_refusals(call)


@given(_peer_bytes, st.sampled_from([0, 1, "client-0", "client-1", "mallory", 9]))
def test_check_auth_only_ever_raises_handshake_refused(data, signer):
    def call() -> None:
        check_auth(data, COMMITTEE, VERIFIER, _HELLO_I, _HELLO_R, signer)
        assert (data, signer) == (_AUTH, "client-0")  # nothing else is accepted
    _only_refusals(call)


# ------------------------------------------------- the handshake over a live stream


def _transport(identity: int | str, key: PrivateKey | None = None,
               committee=COMMITTEE) -> Transport:
    return Transport(committee, identity, key or key_of(identity), verifier=VERIFIER)


async def _both(initiator: Transport, responder: Transport):
    """Run the two ends of ``Transport._handshake`` on a memory stream pair; returns each
    side's result or its HandshakeRefused."""
    left, right = trio.testing.memory_stream_pair()
    results: dict[str, object] = {}

    async def side(name, transport, stream, outbound, expected):
        try:
            results[name] = await transport._handshake(stream, outbound=outbound,
                                                       expected=expected)
        except (HandshakeRefused, trio.BrokenResourceError) as error:
            results[name] = error
        await trio.aclose_forcefully(stream)  # the transport closes a refused connection

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "initiator", initiator, left, True,
                           responder.identity if type(responder.identity) is int else None)
        nursery.start_soon(side, "responder", responder, right, False, None)
    return results["initiator"], results["responder"]


async def test_transport_handshake_over_memory_streams():
    with trio.fail_after(5):
        initiator, responder = await _both(_transport("client-0"), _transport(2))
    assert initiator == (2, b"") and responder == ("client-0", b"")


@pytest.mark.parametrize(("dialler", "reason"), [
    (lambda: _transport(1, GENESIS.member_keys[3]), "bad-signature"),
    (lambda: _transport("mallory", GENESIS.client_keys["client-0"]), "unknown-identity"),
    (lambda: _transport(1, committee=OTHER_COMMITTEE), "wrong-committee"),
])
async def test_transport_handshake_refusals_over_memory_streams(dialler, reason):
    with trio.fail_after(5):
        _, responder = await _both(dialler(), _transport(0))
    assert isinstance(responder, HandshakeRefused) and responder.reason == reason


@pytest.mark.parametrize(("expected", "reason"), [(None, "self"), (1, "unexpected-identity")])
async def test_echoing_peer_is_refused(expected, reason):
    """A reflector sends every byte back: the dialler sees its own HELLO and refuses."""
    dialler = _transport(0)
    left, right = trio.testing.memory_stream_pair()

    async def echo() -> None:
        try:
            while data := await right.receive_some():
                await right.send_all(data)
        except trio.BrokenResourceError:
            pass

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            with pytest.raises(HandshakeRefused) as caught:
                await dialler._handshake(left, outbound=True, expected=expected)
            await left.aclose()
    assert caught.value.reason == reason
