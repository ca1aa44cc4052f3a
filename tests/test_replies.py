"""Batch-signed replies: Merkle inclusion proofs (RFC 9162 hashing) under one signature."""

from __future__ import annotations

import hashlib

import pytest
from conftest import make_genesis
from hypothesis import given, settings
from hypothesis import strategies as st

from bftdeliberate.crypto import Verifier
from bftdeliberate.pbft.replies import (
    merkle_tree,
    reply_leaf,
    root_from_path,
    sign_replies,
    verify_reply,
)
from bftdeliberate.wire.messages import decode_envelope

GENESIS = make_genesis(4)


def leaves(count: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(count)]


def reference_root(items: list[bytes]) -> bytes:
    """RFC 9162 MTH, written independently of the production recursion."""
    if len(items) == 1:
        return items[0]
    k = 1
    while k * 2 < len(items):
        k *= 2
    return hashlib.sha256(b"\x01" + reference_root(items[:k]) + reference_root(items[k:])).digest()


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 31, 100, 1024])
def test_every_leaf_proves_inclusion_and_only_at_its_own_place(size):
    items = leaves(size)
    root, paths = merkle_tree(items)
    assert root == reference_root(items)
    for index, (leaf, path) in enumerate(zip(items, paths)):
        assert root_from_path(leaf, index, size, tuple(path)) == root
        assert len(path) <= (size - 1).bit_length()
        if size > 1:
            assert root_from_path(leaf, (index + 1) % size, size, tuple(path)) != root
            assert root_from_path(items[(index + 1) % size], index, size, tuple(path)) != root
    assert root_from_path(items[0], size, size, tuple(paths[0])) is None  # index out of range


@settings(max_examples=200)
@given(size=st.integers(1, 200), data=st.data())
def test_tampered_paths_never_prove_inclusion(size, data):
    items = leaves(size)
    root, paths = merkle_tree(items)
    index = data.draw(st.integers(0, size - 1))
    path = list(paths[index])
    if path:
        which = data.draw(st.integers(0, len(path) - 1))
        path[which] = bytes(32)
        assert root_from_path(items[index], index, size, tuple(path)) != root
    assert root_from_path(items[index], index, size, tuple(path + [bytes(32)])) != root


def test_batch_signed_replies_verify_once_signed_and_reject_tampering():
    executed = [(f"client-{i % 2}", 10 + i, f"result {i}".encode()) for i in range(5)]
    key = GENESIS.member_keys[2]
    replies = sign_replies(key, GENESIS.committee.digest, view=0, seq=7, replica=2,
                           executed=executed)
    assert len({r.signature for r in replies}) == 1
    verifier = Verifier()
    for reply in replies:
        decoded = decode_envelope(reply.raw)
        assert verify_reply(decoded, key.public_key, GENESIS.committee.digest, verifier)
    # Another replica's key, another committee, or an altered result: rejected.
    first = decode_envelope(replies[0].raw)
    other = GENESIS.member_keys[1].public_key
    assert not verify_reply(first, other, GENESIS.committee.digest, verifier)
    assert not verify_reply(first, key.public_key, b"\x00" * 32, verifier)
    altered = first.message.model_copy(update={"result": b"forged"})
    assert not verify_reply(type(first)(first.body, first.signature, altered, first.raw),
                            key.public_key, GENESIS.committee.digest, verifier)
    assert reply_leaf("a", 1, b"x") != reply_leaf("a", 2, b"x")
