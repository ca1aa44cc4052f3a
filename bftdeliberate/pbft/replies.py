"""Batch-signed replies: one signature per executed batch instead of one per request.

After executing a batch a replica builds a Merkle tree (RFC 9162 hashing: leaves prefixed
0x00, interior nodes 0x01, split at the largest power of two) over one leaf per executed
request (``reply_leaf``), and signs a *reply-batch*
statement ``(view, seq, replica, size, root)`` once. Each REPLY carries its leaf's index
and audit path; the envelope's signature is the batch signature. A client recomputes the
root from the exact reply bytes it received and verifies that signature -- so every reply
remains a transferable, non-repudiable statement by its replica, at 1/batch of the signing
cost (signing was the largest cost after verification in ``bftd bench core``).
"""

from __future__ import annotations

import hashlib

from bftdeliberate.crypto import PrivateKey, Verifier
from bftdeliberate.wire.messages import Reply, SignedMessage, encode_body, encode_envelope

#: Domain-separation type of the signed statement behind every REPLY.
REPLY_BATCH_TYPE = "reply-batch"
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def reply_leaf(client: str, timestamp: int, result: bytes) -> bytes:
    """H(0x00 || len(client) || client || timestamp || result): unambiguous, every field
    fixed-size or length-prefixed (the result runs to the end)."""
    client_bytes = client.encode()
    return hashlib.sha256(b"".join((
        _LEAF_PREFIX, len(client_bytes).to_bytes(2, "big"), client_bytes,
        timestamp.to_bytes(8, "big"), result,
    ))).digest()


def merkle_tree(leaves: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """Root and, per leaf, its audit path (siblings from the leaf upwards)."""
    if len(leaves) == 1:
        return leaves[0], [[]]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)  # largest power of two < len
    left_root, left_paths = merkle_tree(leaves[:split])
    right_root, right_paths = merkle_tree(leaves[split:])
    paths = [path + [right_root] for path in left_paths]
    paths += [path + [left_root] for path in right_paths]
    return _node(left_root, right_root), paths


def root_from_path(leaf: bytes, index: int, size: int, path: tuple[bytes, ...]) -> bytes | None:
    """RFC 9162 section 2.1.3.2 inclusion check; None if the path cannot fit (index, size)."""
    if not 0 <= index < size:
        return None
    position, last = index, size - 1
    root = leaf
    for sibling in path:
        if last == 0:
            return None
        if position & 1 or position == last:
            root = _node(sibling, root)
            while not position & 1 and position != 0:
                position >>= 1
                last >>= 1
        else:
            root = _node(root, sibling)
        position >>= 1
        last >>= 1
    return root if last == 0 else None


def batch_statement(view: int, seq: int, replica: int, size: int, root: bytes) -> bytes:
    """The bytes a replica signs once per executed batch: a fixed layout (never decoded,
    domain-separated by the signing type ``reply-batch``)."""
    return b"".join((view.to_bytes(8, "big"), seq.to_bytes(8, "big"),
                     replica.to_bytes(2, "big"), size.to_bytes(2, "big"), root))


def sign_replies(
    key: PrivateKey,
    committee_digest: bytes,
    *,
    view: int,
    seq: int,
    replica: int,
    executed: list[tuple[str, int, bytes]],
) -> list[SignedMessage]:
    """One signed REPLY per executed (client, timestamp, result), all under one signature."""
    leaves = [reply_leaf(client, timestamp, result) for client, timestamp, result in executed]
    root, paths = merkle_tree(leaves)
    size = len(leaves)
    signature = key.sign(committee_digest, REPLY_BATCH_TYPE,
                         batch_statement(view, seq, replica, size, root))
    replies = []
    for index, ((client, timestamp, result), path) in enumerate(zip(executed, paths)):
        message = Reply(
            view=view, seq=seq, timestamp=timestamp, client=client, replica=replica,
            result=result, index=index, size=size, path=tuple(path),
        )
        body = encode_body(message)
        replies.append(SignedMessage(body=body, signature=signature, message=message,
                                     raw=encode_envelope(body, signature)))
    return replies


def verify_reply(signed: SignedMessage, public_key: bytes, committee_digest: bytes,
                 verifier: Verifier) -> bool:
    """True iff ``signed`` (a REPLY) is included in a batch its replica signed."""
    reply: Reply = signed.message  # type: ignore[assignment]
    leaf = reply_leaf(reply.client, reply.timestamp, reply.result)
    root = root_from_path(leaf, reply.index, reply.size, reply.path)
    if root is None:
        return False
    statement = batch_statement(reply.view, reply.seq, reply.replica, reply.size, root)
    return verifier.verify(public_key, committee_digest, REPLY_BATCH_TYPE, statement,
                           signed.signature)
