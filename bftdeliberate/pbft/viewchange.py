"""View change certificates and the NEW-VIEW O set (Castro & Liskov, OSDI'99 section 4.4).

Pure functions of signed messages, shared by the primary that builds a NEW-VIEW and every
backup that checks one -- so "recompute O" runs the very code that produced it. A
signature check is passed in (``verify``); nothing here does IO or reads a clock.

Validation is all-or-nothing: a VIEW-CHANGE with one malformed, duplicated, forged or
out-of-range part is rejected as a whole (the caller records it as evidence). The rules:

* checkpoint proof: 2f+1 CHECKPOINT envelopes for ``checkpoint`` from distinct members,
  each signature valid, one state digest; the genesis checkpoint 0 needs no proof (every
  replica starts in the same state) and must carry none;
* prepared certificate: a PRE-PREPARE from the primary of its view (view below the new
  view), a batch that hashes to its digest, a sequence number in (checkpoint,
  checkpoint + L], and at least 2f PREPAREs for the same (view, seq, digest) from distinct
  backups (never the primary: its vote is the pre-prepare); at most one certificate per
  sequence number.

O set: ``min_s`` is the highest stable checkpoint among the VIEW-CHANGEs -- the whole set's,
not the new primary's own (the Hyperledger Fabric PR #1111 class: taking it from one message
re-proposes slots others garbage-collected). For every s in (min_s, max_s], the certificate
from the highest view wins and its batch is re-proposed at the same s in the new view; no
certificate means a null request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bftdeliberate.errors import DecodeError
from bftdeliberate.pbft.batch import batch_digest
from bftdeliberate.wire.messages import (
    Checkpoint,
    NewView,
    Prepare,
    PrePrepare,
    SignedMessage,
    ViewChange,
    decode_envelope,
    encode_body,
)

#: ``verify(signed) -> bool``: the member's signature under the committee's domain.
Verify = Callable[[SignedMessage], bool]
#: Timestamp of null requests: they execute nothing, so no clock reading is agreed.
NULL_TIMESTAMP = 0


class InvalidCertificate(Exception):
    """A VIEW-CHANGE or NEW-VIEW part that does not hold; the message names the part."""


@dataclass(frozen=True, slots=True)
class PreparedProof:
    """A verified prepared certificate: ``pre_prepare`` plus 2f+ matching ``prepares``."""

    view: int
    seq: int
    digest: bytes
    pre_prepare: SignedMessage
    prepares: tuple[SignedMessage, ...]

    def envelopes(self) -> tuple[bytes, ...]:
        return (self.pre_prepare.raw, *(p.raw for p in self.prepares))

    def envelopes_signed(self) -> tuple[SignedMessage, ...]:
        return (self.pre_prepare, *self.prepares)


@dataclass(frozen=True, slots=True)
class CheckedViewChange:
    """A VIEW-CHANGE whose every part verified."""

    signed: SignedMessage
    view: int
    replica: int
    checkpoint: int
    checkpoint_digest: bytes
    checkpoint_proof: tuple[SignedMessage, ...]
    prepared: dict[int, PreparedProof]


@dataclass(frozen=True, slots=True)
class NewViewPlan:
    """What a NEW-VIEW for ``view`` must contain, computed from its VIEW-CHANGEs."""

    view: int
    min_s: int
    checkpoint_digest: bytes
    checkpoint_proof: tuple[SignedMessage, ...]
    #: seq -> the certificate re-proposed there, or None for a null request; keys are
    #: exactly min_s+1 .. max_s.
    entries: dict[int, PreparedProof | None]

    @property
    def max_s(self) -> int:
        return max(self.entries, default=self.min_s)

    def pre_prepare(self, seq: int, primary: int) -> PrePrepare:
        """The new view's PRE-PREPARE at ``seq`` (same batch and timestamp as certified)."""
        proof = self.entries[seq]
        if proof is None:
            return PrePrepare(view=self.view, seq=seq, timestamp=NULL_TIMESTAMP,
                              origin_view=self.view, replica=primary, batch=(),
                              digest=batch_digest(NULL_TIMESTAMP, (), self.view))
        old: PrePrepare = proof.pre_prepare.message  # type: ignore[assignment]
        return PrePrepare(view=self.view, seq=seq, timestamp=old.timestamp,
                          origin_view=old.origin_view, replica=primary, batch=old.batch,
                          digest=old.digest)


def _decode(raw: bytes, kind: type, what: str) -> SignedMessage:
    try:
        signed = decode_envelope(raw)
    except DecodeError as exc:
        raise InvalidCertificate(f"{what}: {exc}") from None
    if not isinstance(signed.message, kind):
        raise InvalidCertificate(f"{what}: a {signed.type}, not a {kind.__name__}")
    return signed


def check_checkpoint_proof(seq: int, proof: Iterable[bytes], *, n: int, f: int, verify: Verify,
                           genesis_digest: bytes) -> tuple[bytes, tuple[SignedMessage, ...]]:
    """The state digest 2f+1 distinct members certified at ``seq`` and their CHECKPOINTs."""
    proof = tuple(proof)
    if seq == 0:
        if proof:
            raise InvalidCertificate("the genesis checkpoint carries no proof")
        return genesis_digest, ()
    votes: dict[int, SignedMessage] = {}
    for raw in proof:
        vote = _decode(raw, Checkpoint, "checkpoint proof")
        message: Checkpoint = vote.message  # type: ignore[assignment]
        if message.seq != seq:
            raise InvalidCertificate(f"checkpoint proof: seq {message.seq} != {seq}")
        if message.replica >= n or message.replica in votes:
            raise InvalidCertificate(f"checkpoint proof: member {message.replica} twice or unknown")
        if not verify(vote):
            raise InvalidCertificate(f"checkpoint proof: bad signature of {message.replica}")
        votes[message.replica] = vote
    digests = Counter(v.message.state_digest for v in votes.values())  # type: ignore[union-attr]
    if len(digests) != 1 or len(votes) < 2 * f + 1:
        raise InvalidCertificate(f"checkpoint proof: not 2f+1 matching of {len(votes)}")
    (digest,) = digests
    return digest, tuple(votes.values())


def check_prepared(envelopes: tuple[bytes, ...], *, new_view: int, low: int, window: int,
                   n: int, f: int, verify: Verify) -> PreparedProof:
    """A prepared certificate for a sequence number in (low, low + window]."""
    pre_prepare = _decode(envelopes[0], PrePrepare, "prepared certificate")
    proposal: PrePrepare = pre_prepare.message  # type: ignore[assignment]
    view, seq, digest = proposal.view, proposal.seq, proposal.digest
    where = f"prepared certificate (view {view}, seq {seq})"
    if view >= new_view:
        raise InvalidCertificate(f"{where}: not from a view below {new_view}")
    if not low < seq <= low + window:
        raise InvalidCertificate(f"{where}: seq outside ({low}, {low + window}]")
    primary = view % n
    if proposal.replica != primary:
        raise InvalidCertificate(f"{where}: pre-prepare not from the primary {primary}")
    if batch_digest(proposal.timestamp, proposal.batch, proposal.origin_view) != digest:
        raise InvalidCertificate(f"{where}: batch does not hash to the digest")
    if not verify(pre_prepare):
        raise InvalidCertificate(f"{where}: bad pre-prepare signature")
    prepares: dict[int, SignedMessage] = {}
    for raw in envelopes[1:]:
        prepare = _decode(raw, Prepare, where)
        vote: Prepare = prepare.message  # type: ignore[assignment]
        if (vote.view, vote.seq, vote.digest) != (view, seq, digest):
            raise InvalidCertificate(f"{where}: a prepare for another slot or digest")
        if vote.replica == primary or vote.replica >= n or vote.replica in prepares:
            raise InvalidCertificate(f"{where}: prepare of member {vote.replica} not a distinct backup")
        if not verify(prepare):
            raise InvalidCertificate(f"{where}: bad prepare signature of {vote.replica}")
        prepares[vote.replica] = prepare
    if len(prepares) < 2 * f:
        raise InvalidCertificate(f"{where}: {len(prepares)} prepares < 2f = {2 * f}")
    return PreparedProof(view, seq, digest, pre_prepare, tuple(prepares.values()))


def check_view_change(signed: SignedMessage, *, n: int, f: int, window: int,
                      checkpoint_interval: int, verify: Verify,
                      genesis_digest: bytes) -> CheckedViewChange:
    """Every part of a VIEW-CHANGE, or ``InvalidCertificate`` naming the first bad one."""
    message = signed.message
    if not isinstance(message, ViewChange):
        raise InvalidCertificate(f"a {signed.type}, not a view-change")
    if message.replica >= n:
        raise InvalidCertificate(f"view-change from unknown member {message.replica}")
    if message.checkpoint % checkpoint_interval:
        raise InvalidCertificate(f"checkpoint {message.checkpoint} is not a multiple of K")
    if not verify(signed):
        raise InvalidCertificate(f"bad view-change signature of {message.replica}")
    digest, proof = check_checkpoint_proof(message.checkpoint, message.proof, n=n, f=f,
                                           verify=verify, genesis_digest=genesis_digest)
    prepared: dict[int, PreparedProof] = {}
    for envelopes in message.prepared:
        certificate = check_prepared(envelopes, new_view=message.view, low=message.checkpoint,
                                     window=window, n=n, f=f, verify=verify)
        if certificate.seq in prepared:
            raise InvalidCertificate(f"two prepared certificates for seq {certificate.seq}")
        prepared[certificate.seq] = certificate
    return CheckedViewChange(signed, message.view, message.replica, message.checkpoint, digest,
                             proof, prepared)


def plan_new_view(view: int, view_changes: Iterable[CheckedViewChange]) -> NewViewPlan:
    """The O set for ``view`` from verified VIEW-CHANGEs (the caller checked there are 2f+1
    from distinct members, all for ``view``)."""
    changes = list(view_changes)
    # The highest stable checkpoint in the whole set (ties: same seq, same certified digest).
    base = max(changes, key=lambda vc: vc.checkpoint)
    min_s = base.checkpoint
    chosen: dict[int, PreparedProof] = {}
    for change in changes:
        for seq, proof in change.prepared.items():
            if seq <= min_s:
                continue
            best = chosen.get(seq)
            # Highest view wins; equal views with different digests need more than f faulty
            # members, and the smaller digest keeps every replica's choice the same.
            if best is None or (proof.view, best.digest) > (best.view, proof.digest):
                chosen[seq] = proof
    max_s = max(chosen, default=min_s)
    entries = {seq: chosen.get(seq) for seq in range(min_s + 1, max_s + 1)}
    return NewViewPlan(view, min_s, base.checkpoint_digest, base.checkpoint_proof, entries)


def check_new_view(signed: SignedMessage, *, n: int, f: int, window: int,
                   checkpoint_interval: int, verify: Verify, genesis_digest: bytes,
                   checked: Callable[[bytes], CheckedViewChange | None] | None = None,
                   ) -> tuple[NewViewPlan, tuple[SignedMessage, ...]]:
    """Recompute the O set of a NEW-VIEW and compare; returns the plan and the new view's
    PRE-PREPAREs in seq order. ``checked`` may return an already verified VIEW-CHANGE by
    its envelope bytes (the receiver's cache)."""
    message = signed.message
    if not isinstance(message, NewView):
        raise InvalidCertificate(f"a {signed.type}, not a new-view")
    primary = message.view % n
    if message.replica != primary:
        raise InvalidCertificate(f"new-view from {message.replica}, not the primary {primary}")
    if not verify(signed):
        raise InvalidCertificate("bad new-view signature")
    changes: dict[int, CheckedViewChange] = {}
    for raw in message.view_changes:
        change = checked(raw) if checked is not None else None
        if change is None:
            change = check_view_change(_decode(raw, ViewChange, "new-view"), n=n, f=f,
                                       window=window, checkpoint_interval=checkpoint_interval,
                                       verify=verify, genesis_digest=genesis_digest)
        if change.view != message.view:
            raise InvalidCertificate(f"a view-change for view {change.view} in new-view {message.view}")
        if change.replica in changes:
            raise InvalidCertificate(f"two view-changes from member {change.replica}")
        changes[change.replica] = change
    if len(changes) < 2 * f + 1:
        raise InvalidCertificate(f"{len(changes)} view-changes < 2f+1 = {2 * f + 1}")
    plan = plan_new_view(message.view, changes.values())
    if len(message.pre_prepares) != len(plan.entries):
        raise InvalidCertificate(f"O set has {len(message.pre_prepares)} entries, "
                                 f"recomputed {len(plan.entries)}")
    pre_prepares: list[SignedMessage] = []
    for raw, seq in zip(message.pre_prepares, plan.entries):
        proposal = _decode(raw, PrePrepare, "new-view O set")
        if proposal.body != encode_body(plan.pre_prepare(seq, primary)):
            raise InvalidCertificate(f"O set entry at seq {seq} differs from the recomputed one")
        if not verify(proposal):
            raise InvalidCertificate(f"bad O set pre-prepare signature at seq {seq}")
        pre_prepares.append(proposal)
    return plan, tuple(pre_prepares)
