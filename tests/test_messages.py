"""Message schemas and the signed envelope: round trips and structural rejection."""

from __future__ import annotations

import pytest
from conftest import make_genesis
from hypothesis import given, settings
from hypothesis import strategies as st

from bftdeliberate.errors import DecodeError
from bftdeliberate.wire import cbor
from bftdeliberate.wire.limits import MAX_BATCH_SIZE, MAX_ID_LENGTH, MAX_STATE_SIZE
from bftdeliberate.wire.messages import (
    MAX_COUNTER,
    MAX_REPLICA_ID,
    MAX_REPLY_PATH_LENGTH,
    Checkpoint,
    Commit,
    NewView,
    Prepare,
    PrePrepare,
    Reply,
    Request,
    State,
    Status,
    ViewChange,
    decode_body,
    decode_envelope,
    encode_body,
    message_json_schema,
    sign_message,
)

GENESIS = make_genesis(4)
counters = st.integers(min_value=0, max_value=MAX_COUNTER)
replica_ids = st.integers(min_value=0, max_value=MAX_REPLICA_ID)
digests = st.binary(min_size=32, max_size=32)
client_ids = st.text(min_size=1, max_size=MAX_ID_LENGTH)

MESSAGES = st.one_of(
    st.builds(Request, client=client_ids, timestamp=counters, operation=st.binary(max_size=256)),
    st.tuples(counters, counters).map(sorted).flatmap(lambda views: st.builds(
        PrePrepare, view=st.just(views[1]), origin_view=st.just(views[0]), seq=counters,
        digest=digests, timestamp=counters, replica=replica_ids,
        batch=st.lists(st.binary(max_size=64), max_size=8).map(tuple))),
    st.builds(Prepare, view=counters, seq=counters, digest=digests, replica=replica_ids),
    st.builds(Commit, view=counters, seq=counters, digest=digests, replica=replica_ids),
    st.builds(Reply, view=counters, seq=counters, timestamp=counters, client=client_ids,
              replica=replica_ids, result=st.binary(max_size=256),
              index=st.integers(0, MAX_BATCH_SIZE - 1), size=st.integers(1, MAX_BATCH_SIZE),
              path=st.lists(digests, max_size=MAX_REPLY_PATH_LENGTH).map(tuple)),
    st.builds(Checkpoint, seq=counters, state_digest=digests, replica=replica_ids),
    st.builds(Status, view=counters, active=st.booleans(), recovering=st.booleans(),
              last_executed=counters,
              low_watermark=counters, replica=replica_ids),
    st.builds(State, seq=counters, proof=st.lists(st.binary(max_size=64), max_size=4).map(tuple),
              total=st.integers(1, MAX_STATE_SIZE), offset=st.integers(0, MAX_STATE_SIZE - 1),
              data=st.binary(min_size=1, max_size=128), replica=replica_ids),
    st.builds(ViewChange, view=counters, checkpoint=counters,
              proof=st.lists(st.binary(max_size=64), max_size=4).map(tuple),
              prepared=st.lists(st.lists(st.binary(max_size=64), min_size=1, max_size=4)
                                .map(tuple), max_size=3).map(tuple),
              replica=replica_ids),
    st.builds(NewView, view=counters,
              view_changes=st.lists(st.binary(max_size=64), max_size=4).map(tuple),
              pre_prepares=st.lists(st.binary(max_size=64), max_size=4).map(tuple),
              replica=replica_ids),
)


@settings(max_examples=600, deadline=None)
@given(message=MESSAGES)
def test_every_message_type_round_trips_through_body_and_envelope(message):
    body = encode_body(message)
    assert body == cbor.encode(message.model_dump())  # the fast path is the canonical codec
    assert decode_body(body) == message
    signed = sign_message(message, GENESIS.member_keys[0], GENESIS.committee.digest)
    decoded = decode_envelope(signed.raw)
    assert decoded.message == message
    assert decoded.body == body and decoded.signature == signed.signature
    assert cbor.encode({"body": decoded.body, "sig": decoded.signature}) == signed.raw


@pytest.mark.parametrize("fields, reason", [
    ({"type": "prepare", "view": 0, "seq": 1, "digest": b"x" * 31, "replica": 0}, "digest"),
    ({"type": "prepare", "view": -1, "seq": 1, "digest": b"x" * 32, "replica": 0}, "view"),
    ({"type": "prepare", "view": 0, "seq": 2**63, "digest": b"x" * 32, "replica": 0}, "seq"),
    ({"type": "prepare", "view": 0, "seq": 1, "digest": b"x" * 32, "replica": True}, "replica"),
    ({"type": "prepare", "view": 0, "seq": 1, "digest": b"x" * 32, "replica": 0, "x": 1}, "x"),
    ({"type": "prepare", "view": 0, "seq": 1, "digest": b"x" * 32}, "replica"),
    ({"type": "vote", "view": 0}, "type"),
    ({"type": "request", "client": "c", "timestamp": 1, "operation": "text"}, "operation"),
    ({"type": "request", "client": "", "timestamp": 1, "operation": b""}, "client"),
    ({"type": "pre-prepare", "view": 0, "seq": 1, "digest": b"x" * 32, "timestamp": 0,
      "origin_view": 0, "replica": 0, "batch": [b""] * (MAX_BATCH_SIZE + 1)}, "batch"),
    ({"type": "pre-prepare", "view": 0, "seq": 1, "digest": b"x" * 32, "timestamp": 0,
      "origin_view": 0, "replica": 0, "batch": ["not bytes"]}, "batch"),
    ({"type": "pre-prepare", "view": 2, "seq": 1, "digest": b"x" * 32, "timestamp": 0,
      "origin_view": 3, "replica": 0, "batch": []}, "origin_view is after"),
])
def test_schema_violations_are_decode_errors(fields, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_body(cbor.encode(fields))


def test_envelope_structure_is_strict():
    signed = sign_message(Prepare(view=0, seq=1, digest=b"d" * 32, replica=1),
                          GENESIS.member_keys[1], GENESIS.committee.digest)
    for envelope in (
        {"body": signed.body},
        {"body": signed.body, "sig": signed.signature, "from": 1},
        {"body": signed.body, "sig": signed.signature[:63]},
        {"body": "text", "sig": signed.signature},
        [signed.body, signed.signature],
    ):
        with pytest.raises(DecodeError):
            decode_envelope(cbor.encode(envelope))
    with pytest.raises(DecodeError):  # the body must itself be canonical: an integer padded
        decode_envelope(cbor.encode({"body": signed.body + b"\x00", "sig": signed.signature}))


def test_json_schema_names_every_message_type():
    schema = message_json_schema()
    assert {"Request", "PrePrepare", "Prepare", "Commit", "Reply", "Checkpoint", "Status"} <= set(
        schema["$defs"]
    )


@settings(max_examples=300, deadline=None)
@given(body=st.one_of(st.binary(max_size=300),
                     st.integers(65530, 65560).map(lambda size: b"\x07" * size)),
       signature=st.binary(min_size=64, max_size=64))
def test_hand_built_envelope_equals_the_general_codec(body, signature):
    from bftdeliberate.wire.messages import _split_envelope, encode_envelope

    raw = encode_envelope(body, signature)
    assert raw == cbor.encode({"body": body, "sig": signature})
    assert _split_envelope(raw) == (body, signature)


@settings(max_examples=1500, deadline=None)
@given(data=st.binary(max_size=400))
def test_random_bytes_never_raise_anything_but_decode_error_from_the_envelope(data):
    try:
        decode_envelope(data)
    except DecodeError:
        pass


@settings(max_examples=500, deadline=None)
@given(message=MESSAGES, position=st.integers(min_value=0), flip=st.integers(1, 255),
       cut=st.integers(min_value=0))
def test_mutated_envelopes_are_rejected_or_parse_to_a_consistent_message(message, position,
                                                                         flip, cut):
    raw = bytearray(sign_message(message, GENESIS.member_keys[0], GENESIS.committee.digest).raw)
    raw[position % len(raw)] ^= flip
    for candidate in (bytes(raw), bytes(raw[: cut % len(raw)])):
        try:
            decoded = decode_envelope(candidate)
        except DecodeError:
            continue
        # Whatever parses is canonical: re-encoding it gives the same bytes.
        assert cbor.encode({"body": decoded.body, "sig": decoded.signature}) == candidate
        assert encode_body(decoded.message) == decoded.body
