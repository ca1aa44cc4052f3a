"""The digest a PRE-PREPARE binds (shared by the replica, view change and auditors)."""

from __future__ import annotations

import hashlib

#: Domain tag of batch digests (never confused with any other hashed structure).
BATCH_DIGEST_TAG = b"bftdeliberate/batch/v2\x00"


def batch_digest(timestamp: int, batch: tuple[bytes, ...], origin_view: int) -> bytes:
    """The digest a PRE-PREPARE binds: the agreed timestamp, the view the batch was first
    proposed in (the agreed view applications execute with) and the exact request envelopes.

    A fixed, unambiguous layout (tag, 8-byte timestamp, then each envelope length-prefixed)
    rather than CBOR: it is hashed by every replica for every batch and never decoded.
    """
    digest = hashlib.sha256(BATCH_DIGEST_TAG)
    digest.update(timestamp.to_bytes(8, "big"))
    digest.update(origin_view.to_bytes(8, "big"))
    for request in batch:
        digest.update(len(request).to_bytes(4, "big"))
        digest.update(request)
    return digest.digest()
