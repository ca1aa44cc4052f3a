"""The sans-IO PBFT replica (Castro & Liskov, OSDI'99): normal case, batching, checkpoints.

Inputs carry an explicit ``now`` (seconds on the driver's clock); outputs are effect lists
(``effects.py``) that the driver performs in order. No IO, no clock, no global randomness:
the simulator and the trio peer drive this exact code.

Rules, in the paper's terms (f = (n-1)//3, quorum 2f+1):

* The primary of view v is member ``v mod n``. It batches requests and sends
  PRE-PREPARE(v, s, d, batch) for sequence numbers s in the window (h, h+L].
* A backup accepts one digest per (v, s), recomputes d from the batch, verifies every client
  signature in it, and broadcasts PREPARE. The primary never sends PREPARE.
* *prepared*: the pre-prepare plus 2f matching PREPAREs from distinct backups -> COMMIT.
* *committed-local*: prepared plus 2f+1 matching COMMITs from distinct members -> execute,
  strictly in sequence order; each request at most once per (client, timestamp).
* Every K sequence numbers a CHECKPOINT; 2f+1 matching ones make it stable, move h and
  discard the log below.

Byzantine input is normal input: anything malformed, forged, out of window, from the wrong
sender or conflicting is counted in ``stats.dropped`` and dropped without allocating state;
two conflicting signed messages from one signer become an ``Evidence`` effect.

Retransmission (the status messages of Castro's thesis, normal case only): a replica with
pending work and no progress re-sends its own messages for its lowest uncommitted slots and
broadcasts a signed STATUS; a peer that is ahead answers with its own messages for the slots the stalled replica
lacks, once per peer per interval. Lost messages and checkpoint/window races therefore
delay the normal case instead of stopping it.

Seams for the next issues (view change, state transfer, recovery): the view is a field and
every slot records it; stable checkpoint proofs and own snapshots are kept; ``Persist``
precedes every ``Send``/``Broadcast`` of a message this replica signed.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from bftdeliberate.committee import Committee
from bftdeliberate.crypto import PrivateKey, Verifier
from bftdeliberate.errors import DecodeError, LocalError
from bftdeliberate.pbft.app import ExecutionContext, StateMachine
from bftdeliberate.pbft.batch import BATCH_DIGEST_TAG, batch_digest  # noqa: F401 - re-exported
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.pbft.effects import (
    Broadcast,
    CheckpointStable,
    Effect,
    Evidence,
    Execute,
    Persist,
    Reply,
    Send,
)
from bftdeliberate.pbft.replies import sign_replies
from bftdeliberate.pbft.viewchange import (
    CheckedViewChange,
    InvalidCertificate,
    NewViewPlan,
    PreparedProof,
    check_checkpoint_proof,
    check_new_view,
    check_view_change,
    plan_new_view,
)
from bftdeliberate.wire import cbor
from bftdeliberate.wire.limits import MAX_BATCH_BYTES
from bftdeliberate.wire.messages import (
    Checkpoint,
    Commit,
    NewView,
    Prepare,
    PrePrepare,
    Request,
    SignedMessage,
    State,
    Status,
    ViewChange,
    decode_envelope,
    sign_message,
)
from bftdeliberate.wire.messages import Reply as ReplyMessage

#: Most recent drop records kept for inspection (the counters keep the totals).
RECENT_DROPS_KEPT = 256
#: Verified VIEW-CHANGEs remembered by envelope bytes (a NEW-VIEW repeats the ones this
#: replica already checked on arrival).
CHECKED_VIEW_CHANGES_KEPT = 64
#: Messages of the view being entered that arrive before its NEW-VIEW, held and replayed
#: once it is accepted (reordering would otherwise cost a retransmission round). Oldest
#: dropped first; verified only when replayed.
MAX_EARLY_MESSAGES = 1024
#: Proposed-but-unexecuted requests a backup remembers per client for its request timer
#: (the lowest timestamps; bounded because a faulty primary may propose many).
MAX_AWAITED_PER_CLIENT = 16
#: Result returned when the application raised: deterministic, so replicas still agree.
APPLICATION_EXCEPTION_RESULT = cbor.encode({"ok": False, "error": "application-exception"})


@dataclass(slots=True)
class _Slot:
    """Everything known about one sequence number in the current view."""

    view: int
    pre_prepare: SignedMessage | None = None
    digest: bytes = b""
    requests: tuple[SignedMessage, ...] = ()
    prepares: dict[int, SignedMessage] = field(default_factory=dict)
    commits: dict[int, SignedMessage] = field(default_factory=dict)
    prepared: bool = False
    committed: bool = False


@dataclass(slots=True)
class _ClientRecord:
    """Last executed request of one client and its signed reply (the reply cache)."""

    timestamp: int
    result: bytes
    reply: SignedMessage | None  # None only while its batch is being signed


@dataclass(slots=True)
class _Assembly:
    """Chunks of one sender's STATE for checkpoint ``seq`` (out of order is fine)."""

    seq: int
    total: int
    proof: bytes  # the proof envelopes every chunk must repeat, concatenated
    digest: bytes
    votes: tuple[SignedMessage, ...]
    first: SignedMessage  # a signed chunk: the evidence if the whole does not hash
    parts: dict[int, bytes] = field(default_factory=dict)
    received: int = 0


@dataclass(frozen=True, slots=True)
class DropRecord:
    reason: str
    sender: int | str
    detail: str
    now: float


@dataclass(slots=True)
class ReplicaStats:
    received: int = 0
    signatures: int = 0
    retransmissions: int = 0
    state_transfers: int = 0
    view_changes: int = 0
    caught_up: int = 0
    #: NEW-VIEWs this replica sent (as the new primary) and views it entered (any role).
    new_views: int = 0
    views_entered: int = 0
    executed_requests: int = 0
    executed_batches: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


class Replica:
    """One PBFT member. ``receive``/``submit``/``handle_timer`` in, effects out."""

    def __init__(
        self,
        replica_id: int,
        committee: Committee,
        key: PrivateKey,
        app: StateMachine,
        config: ReplicaConfig | None = None,
        *,
        verifier: Verifier | None = None,
    ) -> None:
        if committee.member_public_key(replica_id) != key.public_key:
            raise LocalError(f"key does not belong to member {replica_id} of the committee")
        self.id = replica_id
        self.committee = committee
        self.config = config or ReplicaConfig()
        self.app = app
        self._key = key
        self._committee_digest = committee.digest
        self.verifier = verifier if verifier is not None else Verifier(key.backend)
        self._f = committee.f
        self._n = committee.n
        # Key lookups on every verification: plain dicts, built once from the manifest.
        self._member_keys = {m.id: m.public_key_bytes for m in committee.members}
        self._client_keys = committee.requester_keys()

        self.view = 0
        # False between sending VIEW-CHANGE for ``view`` and accepting its NEW-VIEW.
        self.view_active = True
        self.low_watermark = 0  # h: seq of the last stable checkpoint
        self.last_executed = 0
        self._log: dict[int, _Slot] = {}
        self._clients: dict[str, _ClientRecord] = {}
        # Requests accepted into some slot and not yet executed (both roles).
        self._in_flight: set[tuple[str, int]] = set()

        # Primary state: the request queue and the next sequence number to assign.
        self._queue: deque[SignedMessage] = deque()
        self._queued: set[tuple[str, int]] = set()
        self._queued_per_client: Counter[str] = Counter()
        self._next_seq = 1
        # Seqs this primary proposed in this view that may not have committed yet (pruned
        # lazily, when the pipeline looks full).
        self._awaiting_commit: set[int] = set()
        self._last_batch_timestamp = 0
        self._batch_deadline: float | None = None
        # Backup state: the newest request timestamp relayed to the primary, per client.
        self._relayed: dict[str, int] = {}
        # Retransmission: when to re-send own messages for pending slots, the current
        # backoff, and when each peer's STATUS was last answered (one entry per member).
        self._retransmit_at: float | None = None
        self._retransmit_backoff = self.config.retransmit_interval
        self._answered: dict[int, float] = {}
        self._answered_recovery: dict[int, float] = {}
        self._highest_slot = 0

        # Checkpoints: votes per seq in the window, own digests and snapshots, stable proof.
        self._checkpoint_votes: dict[int, dict[int, SignedMessage]] = {}
        # seq -> (state digest, application snapshot, encoded reply table) at that checkpoint.
        self._own_checkpoints: dict[int, tuple[bytes, bytes, bytes]] = {}
        # The signed State chunks of the stable checkpoint (signed once per checkpoint).
        self._state_chunks: tuple[SignedMessage, ...] = ()
        # Incoming state transfers being assembled, one per sender (at most f+1 at once).
        self._assemblies: dict[int, _Assembly] = {}
        # Highest seq each member was seen working on above our window, and the seq that
        # f+1 of them (so at least one honest) have passed: evidence that we are behind.
        self._ahead: dict[int, int] = {}
        self._ahead_certain = 0
        self.stable_proof: tuple[SignedMessage, ...] = ()
        self.stable_digest = self._state_digest()
        # Every replica starts from this state: the genesis checkpoint 0 needs no proof.
        self._genesis_digest = self.stable_digest

        # View change. Prepared certificates survive view changes (the P set): seq -> the
        # certificate from the highest view in which this replica prepared it.
        self._prepared_certs: dict[int, PreparedProof] = {}
        # Request timer: client -> timestamp -> request this backup knows is pending (at most
        # MAX_AWAITED_PER_CLIENT per authorised client). The timer waits for the oldest per
        # client, and a view change hands those to the next primary (_oldest_awaited).
        self._awaited_known: dict[str, dict[int, SignedMessage]] = {}
        # The request timer while the view is active, the new-view timer while changing.
        self._view_timer_at: float | None = None
        self._view_timeout = self.config.view_change_timeout
        # True from a view change until the next execution: the next one doubles the timeout.
        self._changed_without_progress = False
        # Each member's highest verified VIEW-CHANGE for a view >= ours (join rule, NEW-VIEW).
        self._view_changes: dict[int, CheckedViewChange] = {}
        self._checked: dict[bytes, CheckedViewChange] = {}
        self._own_view_change: SignedMessage | None = None
        # The NEW-VIEW that started the current view (re-sent to members still changing).
        self._new_view: SignedMessage | None = None
        self._early: deque[tuple[int, bytes]] = deque(maxlen=MAX_EARLY_MESSAGES)
        # O-set slots at seqs this replica had executed before the view change: they must
        # still commit in the new view (laggards need that certificate), so they stay
        # pending for retransmission until they do.
        self._recommitting: set[int] = set()
        # The view this replica was active in before its current view change (catch-up).
        self._left_view = 0
        # Highest view each member was seen in above ours; f+1 of them: we are behind.
        self._views_ahead: dict[int, int] = {}
        # Crash recovery: a replica that lost its disk signs no protocol message until its
        # stable checkpoint reaches this seq (None: not known yet; see ``lose_disk``), learned
        # from the signed STATUS reports (member -> last executed) of n-f members.
        self._signing_resumes_after: int | None = None
        self._recovery_reports: dict[int, int] = {}
        self.amnesiac = False

        self.stats = ReplicaStats()
        self.recent_drops: deque[DropRecord] = deque(maxlen=RECENT_DROPS_KEPT)
        self.evidence: deque[Evidence] = deque(maxlen=self.config.max_evidence_kept)

    # ------------------------------------------------------------------ recovery

    def restore(self, records: Iterable[Persist], now: float) -> None:
        """Rebuild after a restart from what this replica persisted (its disk), before any
        input: the last stable checkpoint's state, its view, and every vote it signed above
        that checkpoint -- so it never signs a conflicting one. What it executed above the
        checkpoint is executed again as peers re-send the certificates (STATUS, at once)."""
        state: Persist | None = None
        new_view: SignedMessage | None = None
        view_change: SignedMessage | None = None
        votes: list[Persist] = []
        for record in records:
            message = record.message.message
            if record.kind == "state":
                if state is None or message.seq > state.message.message.seq:  # type: ignore[union-attr]
                    state = record
            elif record.kind == "new-view":
                if new_view is None or message.view >= new_view.message.view:  # type: ignore[union-attr]
                    new_view = record.message
            elif record.kind == "view-change":
                if view_change is None or message.view >= view_change.message.view:  # type: ignore[union-attr]
                    view_change = record.message
            elif record.kind in ("pre-prepare", "prepare", "commit"):
                votes.append(record)
        if state is not None:  # its first chunk, the others ride along as its proof
            for chunk in (state.message, *state.proof):
                self._on_state(chunk, chunk.message, now)  # type: ignore[arg-type]
        views = [r.message.message.view for r in votes]  # type: ignore[union-attr]
        active_view = max([*views, new_view.message.view if new_view else 0])  # type: ignore[union-attr]
        self.view = active_view
        if view_change is not None and view_change.message.view > active_view:  # type: ignore[union-attr]
            # It crashed while changing views: it is still changing (and re-sends its
            # VIEW-CHANGE on the retransmission timer).
            checked = self._check_view_change(view_change)
            self.view, self.view_active = checked.view, False
            self._own_view_change = view_change
            self._view_changes[self.id] = checked
            self._changed_without_progress = True
        elif new_view is not None and new_view.message.view == active_view:  # type: ignore[union-attr]
            self._new_view = new_view
        for record in votes:
            self._restore_vote(record)
        if self.is_primary and self.view_active:
            proposed = [r.message.message for r in votes if r.kind == "pre-prepare"
                        and r.message.message.view == self.view]  # type: ignore[union-attr]
            self._next_seq = max([self._next_seq, self.low_watermark + 1,
                                  *(p.seq + 1 for p in proposed)])  # type: ignore[union-attr]
            self._last_batch_timestamp = max([0, *(p.timestamp for p in proposed)])  # type: ignore[union-attr]
        self.stats.state_transfers = 0
        # Ask the others where they are right away (STATUS on the first timer).
        self._retransmit_at = now

    def _restore_vote(self, record: Persist) -> None:
        message = record.message.message
        seq = message.seq  # type: ignore[union-attr]
        if seq <= self.low_watermark or not self._in_window(seq):
            return
        if record.kind == "commit" and record.proof:
            proof = PreparedProof(message.view, seq, message.digest, record.proof[0],  # type: ignore[union-attr]
                                  tuple(record.proof[1:]))
            known = self._prepared_certs.get(seq)
            if known is None or known.view < proof.view:
                self._prepared_certs[seq] = proof
        if message.view != self.view:  # type: ignore[union-attr]
            return
        slot = self._slot(seq)
        slot.digest = message.digest  # type: ignore[union-attr]
        if record.kind == "pre-prepare":
            slot.pre_prepare = record.message
            slot.requests = self._batch_requests(record.message)
        elif record.kind == "prepare":
            slot.prepares[self.id] = record.message
        else:
            slot.commits[self.id] = record.message
            if record.proof:
                # Prepared before the crash: the certificate is the slot's proposal and votes.
                slot.pre_prepare = record.proof[0]
                slot.requests = self._batch_requests(record.proof[0])
                for vote in record.proof[1:]:
                    slot.prepares[vote.message.replica] = vote  # type: ignore[union-attr]
                slot.prepared = True
        if slot.requests and seq > self.last_executed:
            self._in_flight.update((r.message.client, r.message.timestamp)  # type: ignore[union-attr]
                                   for r in slot.requests)

    def lose_disk(self) -> None:
        """Start as a replica whose disk was lost: it cannot know what it signed before.

        Everything it signed lay at most a window L above a checkpoint certified by 2f+1
        members (its own stable one, or a NEW-VIEW's) -- so executed by f+1 honest members,
        at least one of any n-f. It asks (STATUS with ``recovering``) until n-f members have
        reported their last executed seq, fixes R = the highest report + L (a Byzantine
        report can only raise it), and signs nothing but STATUS and CHECKPOINT until its
        stable checkpoint reaches R. State transfer and execution go on meanwhile."""
        self.amnesiac = True
        self._signing_resumes_after = None
        self._recovery_reports = {}
        self._retransmit_at = 0.0

    # ------------------------------------------------------------------ inputs

    @property
    def primary(self) -> int:
        return self.view % self._n  # the committee's rule, without a model lookup per message

    @property
    def is_primary(self) -> bool:
        return self.primary == self.id

    def receive(self, sender: int | str, data: bytes, now: float) -> list[Effect]:
        """Handle envelope bytes from ``sender``, the transport-authenticated peer."""
        self.stats.received += 1
        effects = self._receive(sender, data, now)
        self._arm_retransmit(now)
        return effects

    def _receive(self, sender: int | str, data: bytes, now: float) -> list[Effect]:
        try:
            signed = decode_envelope(data)
        except DecodeError as exc:
            return self._drop("malformed", sender, str(exc), now)
        message = signed.message
        if isinstance(message, Request):
            # Clients send their own requests; members may relay them (retransmissions).
            if sender != message.client and not self._is_member(sender):
                return self._drop("sender-mismatch", sender, "request relayed by a non-member", now)
            return self._on_request(signed, relayed=sender != message.client, now=now)
        if sender != message.signer() and not (
                isinstance(message, PrePrepare) and self._is_member(sender)):
            # Only the primary's proposals may be relayed (STATUS answers forward them): the
            # signature, not the link, says who proposed.
            return self._drop("sender-mismatch", sender, f"{message.type} signed as {message.signer()}", now)
        if sender == self.id or message.signer() == self.id:
            # Also our own proposal relayed back by a peer: a primary never prepares it.
            return self._drop("from-self", sender, message.type, now)
        if isinstance(message, PrePrepare):
            return self._on_pre_prepare(signed, message, now)
        if isinstance(message, Prepare):
            return self._on_prepare(signed, message, now)
        if isinstance(message, Commit):
            return self._on_commit(signed, message, now)
        if isinstance(message, Checkpoint):
            return self._on_checkpoint(signed, message, now)
        if isinstance(message, Status):
            return self._on_status(signed, message, now)
        if isinstance(message, State):
            return self._on_state(signed, message, now)
        if isinstance(message, ViewChange):
            return self._on_view_change(signed, message, now)
        if isinstance(message, NewView):
            return self._on_new_view(signed, message, now)
        return self._drop("unexpected-type", sender, message.type, now)

    def reconnected(self, now: float) -> list[Effect]:
        """The driver (re)established links to peers (a healed partition, a reconnect):
        tell them where this replica is, so whoever is behind -- them or us -- catches up
        without waiting for new traffic."""
        return [Broadcast(self._status())]

    def submit(self, request: SignedMessage | bytes, now: float) -> list[Effect]:
        """A signed request handed over by the local shell (an embedded client)."""
        data = request.raw if isinstance(request, SignedMessage) else request
        try:
            signed = decode_envelope(data)
        except DecodeError as exc:
            raise LocalError(f"submit: not a request envelope: {exc}") from None
        if not isinstance(signed.message, Request):
            raise LocalError(f"submit: expected a request, got {signed.type}")
        effects = self._on_request(signed, relayed=False, now=now)
        self._arm_retransmit(now)
        return effects

    def handle_timer(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        if self._view_timer_at is not None and now >= self._view_timer_at:
            self._view_timer_at = None
            effects += self._on_view_timer(now)
        if self._batch_deadline is not None and now >= self._batch_deadline:
            self._batch_deadline = None
            effects += self._propose_ready(now, flush=True)
        if self._retransmit_at is not None and now >= self._retransmit_at:
            effects += self._retransmit()
            self._retransmit_backoff = min(2 * self._retransmit_backoff,
                                           self.config.max_retransmit_interval)
            self._retransmit_at = now + self._retransmit_backoff if self._pending() else None
        self._arm_retransmit(now)
        return effects

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self._batch_deadline, self._retransmit_at, self._view_timer_at)
                     if d is not None]
        return min(deadlines) if deadlines else None

    # --------------------------------------------------------------- requests

    def _on_request(self, signed: SignedMessage, *, relayed: bool, now: float) -> list[Effect]:
        request: Request = signed.message  # type: ignore[assignment]
        if not self._verify(signed):
            return self._drop("bad-signature", request.client, "request", now)
        record = self._clients.get(request.client)
        if record is not None and request.timestamp <= record.timestamp:
            if request.timestamp == record.timestamp and not relayed and record.reply:
                # A retransmission of an executed request: answer from the reply cache.
                return [Reply(request.client, record.reply)]
            return self._drop("stale-request", request.client, str(request.timestamp), now)
        if not relayed and not self.is_primary:
            # The client is still waiting: so is this backup's request timer.
            self._await(signed, now, proposed=False)
        key = (request.client, request.timestamp)
        if key in self._in_flight or key in self._queued:
            return self._drop("duplicate-request", request.client, str(request.timestamp), now)
        if not self.is_primary:
            return self._relay(signed, request, relayed, now)
        if self._queued_per_client[request.client] >= self.config.max_queued_per_client:
            return self._drop("client-queue-full", request.client, str(request.timestamp), now)
        if len(self._queue) >= self.config.max_queued_requests:
            return self._drop("queue-full", request.client, str(request.timestamp), now)
        self._queue.append(signed)
        self._queued.add(key)
        self._queued_per_client[request.client] += 1
        return self._propose_ready(now, flush=False)

    def _relay(self, signed: SignedMessage, request: Request, relayed: bool, now: float) -> list[Effect]:
        if relayed:
            return self._drop("not-primary", request.client, "relayed request", now)
        if self._relayed.get(request.client, -1) >= request.timestamp:
            return self._drop("duplicate-request", request.client, "already relayed", now)
        # The client timed out on the primary: hand it over once; the request timer started
        # by ``_await`` suspects the primary if the request does not execute in time.
        self._relayed[request.client] = request.timestamp
        return [Send(self.primary, signed)]

    def _propose_ready(self, now: float, *, flush: bool) -> list[Effect]:
        """Primary: cut batches from the queue while the window has room."""
        effects: list[Effect] = []
        if not self.view_active or not self._may_sign():
            return effects
        batch_size = self.config.batch_size
        while self._queue and self._next_seq <= self.low_watermark + self.config.log_window:
            if self._pipeline_full():
                return effects  # the next commit proposes what queued up meanwhile
            if len(self._queue) < batch_size and not flush and self.config.batch_delay > 0:
                if self._batch_deadline is None:
                    self._batch_deadline = now + self.config.batch_delay
                return effects
            count = size = 0
            for request in self._queue:  # cut by count and by bytes (MAX_BATCH_BYTES)
                if count == batch_size or (count and size + len(request.raw) > MAX_BATCH_BYTES):
                    break
                size += len(request.raw)
                count += 1
            batch = tuple(self._queue.popleft() for _ in range(count))
            effects.extend(self._propose(batch, now))
        if not self._queue:
            self._batch_deadline = None
        return effects

    def _pipeline_full(self) -> bool:
        limit = self.config.max_in_flight_batches
        awaiting = self._awaiting_commit
        if len(awaiting) < limit:
            return False
        log, low = self._log, self.low_watermark
        awaiting.intersection_update([seq for seq in awaiting if seq > low and (
            (slot := log.get(seq)) is not None and not slot.committed)])
        return len(awaiting) >= limit

    def _propose(self, batch: tuple[SignedMessage, ...], now: float) -> list[Effect]:
        seq = self._next_seq
        self._next_seq += 1
        self._awaiting_commit.add(seq)
        # Agreed time never goes backwards, whatever the primary's clock does.
        timestamp = max(int(now * 1000), self._last_batch_timestamp)
        self._last_batch_timestamp = timestamp
        raws = tuple(request.raw for request in batch)
        digest = batch_digest(timestamp, raws, self.view)
        proposal = self._sign(
            PrePrepare(view=self.view, seq=seq, digest=digest, timestamp=timestamp,
                       origin_view=self.view, replica=self.id, batch=raws)
        )
        for request in batch:
            key = (request.message.client, request.message.timestamp)  # type: ignore[union-attr]
            self._queued.discard(key)
            self._queued_per_client[key[0]] -= 1
            if not self._queued_per_client[key[0]]:
                del self._queued_per_client[key[0]]
            self._in_flight.add(key)
        slot = self._slot(seq)
        slot.pre_prepare, slot.digest, slot.requests = proposal, digest, batch
        return [Persist("pre-prepare", proposal), Broadcast(proposal), *self._advance(seq, now)]

    # ---------------------------------------------------------- three phases

    def _on_pre_prepare(self, signed: SignedMessage, message: PrePrepare, now: float) -> list[Effect]:
        sender = message.replica
        if message.view != self.view or not self.view_active:
            return self._wrong_view(signed, message.view, now)
        if sender != self.primary:
            return self._drop("not-primary", sender, f"pre-prepare seq {message.seq}", now)
        if not self._in_window(message.seq):
            self._note_ahead(signed, message.seq)
            return self._drop("out-of-window", sender, f"pre-prepare seq {message.seq}", now)
        if not self._verify(signed):
            return self._drop("bad-signature", sender, "pre-prepare", now)
        slot = self._log.get(message.seq)
        if slot is not None and slot.pre_prepare is not None:
            if slot.pre_prepare.body == signed.body:
                return self._drop("duplicate", sender, f"pre-prepare seq {message.seq}", now)
            effects = self._convict("equivocation", sender, slot.pre_prepare, signed)
            return effects + self._drop("conflicting-pre-prepare", sender, str(message.seq), now)
        if (message.origin_view != message.view  # a fresh proposal is of its own view
                or batch_digest(message.timestamp, message.batch, message.origin_view)
                != message.digest):
            effects = self._convict("bad-digest", sender, signed)
            return effects + self._drop("digest-mismatch", sender, str(message.seq), now)
        if abs(message.timestamp - now * 1000) > self.config.timestamp_skew * 1000:
            return self._drop("timestamp-skew", sender, str(message.timestamp), now)
        requests = self._valid_batch(message.batch)
        if requests is None:
            effects = self._convict("invalid-batch", sender, signed)
            return effects + self._drop("invalid-batch", sender, str(message.seq), now)

        slot = self._slot(message.seq)
        own = slot.prepares.get(self.id)
        if own is not None and own.message.digest != message.digest:  # type: ignore[union-attr]
            # Recovered from disk: this replica already prepared another digest here.
            return self._drop("conflicts-own-vote", sender, str(message.seq), now)
        slot.pre_prepare, slot.digest, slot.requests = signed, message.digest, requests
        for request in requests:
            self._in_flight.add((request.message.client, request.message.timestamp))  # type: ignore[union-attr]
            self._await(request, now, proposed=True)
        return self._send_prepare(slot, message.seq, now)

    def _send_prepare(self, slot: _Slot, seq: int, now: float) -> list[Effect]:
        effects: list[Effect] = []
        own = slot.prepares.get(self.id)
        if slot.view % self._n == self.id:
            pass  # the primary's vote is its PRE-PREPARE: it never signs a PREPARE
        elif own is not None:
            effects.append(Broadcast(own))  # already signed and persisted (recovery)
        elif self._may_sign(seq):
            prepare = self._sign(Prepare(view=self.view, seq=seq, digest=slot.digest, replica=self.id))
            slot.prepares[self.id] = prepare
            effects += [Persist("prepare", prepare), Broadcast(prepare)]
        return effects + self._advance(seq, now)

    def _valid_batch(self, batch: tuple[bytes, ...]) -> tuple[SignedMessage, ...] | None:
        """Every entry a client-signed request, each (client, timestamp) once; else None."""
        requests: list[SignedMessage] = []
        seen: set[tuple[str, int]] = set()
        for raw in batch:
            try:
                request = decode_envelope(raw)
            except DecodeError:
                return None
            message = request.message
            if not isinstance(message, Request) or not self._verify(request):
                return None
            key = (message.client, message.timestamp)
            if key in seen:
                return None
            seen.add(key)
            requests.append(request)
        return tuple(requests)

    def _on_prepare(self, signed: SignedMessage, message: Prepare, now: float) -> list[Effect]:
        sender = message.replica
        if message.view != self.view or not self.view_active:
            return self._wrong_view(signed, message.view, now)
        if sender == self.primary:
            # The primary's vote is its PRE-PREPARE (counting both is the Sawtooth PR #111 bug).
            return self._drop("prepare-from-primary", sender, str(message.seq), now)
        return self._record_vote(signed, message, "prepares", now)

    def _on_commit(self, signed: SignedMessage, message: Commit, now: float) -> list[Effect]:
        if message.view != self.view or not self.view_active:
            return self._wrong_view(signed, message.view, now)
        return self._record_vote(signed, message, "commits", now)

    def _record_vote(
        self, signed: SignedMessage, message: Prepare | Commit, votes_name: str, now: float
    ) -> list[Effect]:
        sender = message.replica
        if not self._in_window(message.seq):
            self._note_ahead(signed, message.seq)
            return self._drop("out-of-window", sender, f"{message.type} seq {message.seq}", now)
        if not self._verify(signed):
            return self._drop("bad-signature", sender, message.type, now)
        slot = self._slot(message.seq)
        votes: dict[int, SignedMessage] = getattr(slot, votes_name)
        earlier = votes.get(sender)
        if earlier is not None:
            if earlier.body == signed.body:
                return self._drop("duplicate", sender, f"{message.type} seq {message.seq}", now)
            effects = self._convict(f"conflicting-{message.type}", sender, earlier, signed)
            return effects + self._drop(f"conflicting-{message.type}", sender, str(message.seq), now)
        votes[sender] = signed
        return self._advance(message.seq, now)

    def _advance(self, seq: int, now: float) -> list[Effect]:
        slot = self._log[seq]
        effects: list[Effect] = []
        if (slot.pre_prepare is not None and not slot.prepared
                and self._matching(slot.prepares, slot.digest) >= 2 * self._f):
            slot.prepared = True
            proof = PreparedProof(slot.view, seq, slot.digest, slot.pre_prepare, tuple(
                vote for vote in slot.prepares.values()
                if vote.message.digest == slot.digest))  # type: ignore[union-attr]
            self._prepared_certs[seq] = proof
            own = slot.commits.get(self.id)
            if own is not None:
                effects.append(Broadcast(own))  # signed before a restart
            elif self._may_sign(seq):
                commit = self._sign(
                    Commit(view=self.view, seq=seq, digest=slot.digest, replica=self.id)
                )
                slot.commits[self.id] = commit
                # The certificate goes to disk with the commit: a restarted replica
                # still reports what it prepared in its next VIEW-CHANGE.
                effects += [Persist("commit", commit, proof.envelopes_signed()),
                            Broadcast(commit)]
        if (slot.prepared and not slot.committed
                and self._matching(slot.commits, slot.digest) >= 2 * self._f + 1):
            slot.committed = True
            self._recommitting.discard(seq)
            effects += self._execute_ready(now)
            if seq in self._awaiting_commit:
                self._awaiting_commit.discard(seq)
                if self._queue and self.is_primary:
                    effects += self._propose_ready(now, flush=True)
        return effects

    @staticmethod
    def _matching(votes: dict[int, SignedMessage], digest: bytes) -> int:
        # Votes are keyed by signer, so this counts distinct members.
        return sum(1 for vote in votes.values() if vote.message.digest == digest)  # type: ignore[union-attr]

    # -------------------------------------------------------------- execution

    def _execute_ready(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        while (slot := self._log.get(self.last_executed + 1)) is not None and slot.committed:
            effects += self._execute(self.last_executed + 1, slot, now)
        if effects and self._queue and self.is_primary:
            effects += self._propose_ready(now, flush=True)  # the pipeline may have room
        return effects

    def _execute(self, seq: int, slot: _Slot, now: float) -> list[Effect]:
        proposal: PrePrepare = slot.pre_prepare.message  # type: ignore[union-attr,assignment]
        requests: list[Request] = []
        results: list[bytes] = []
        executed: list[bool] = []
        fresh: list[tuple[str, int, bytes]] = []
        for index, signed in enumerate(slot.requests):
            request: Request = signed.message  # type: ignore[assignment]
            requests.append(request)
            self._in_flight.discard((request.client, request.timestamp))
            record = self._clients.get(request.client)
            if record is not None and request.timestamp <= record.timestamp:
                # Ordered twice (or older than the last executed): never execute again.
                results.append(record.result if request.timestamp == record.timestamp else b"")
                executed.append(False)
                continue
            # The batch's origin view is agreed (bound by the digest); the slot's view is not
            # (a replica that learned the batch from a NEW-VIEW holds the later view).
            ctx = ExecutionContext(seq=seq, view=proposal.origin_view,
                                   timestamp_ms=proposal.timestamp,
                                   client=request.client, request_timestamp=request.timestamp,
                                   index=index)
            try:
                result = self.app.apply(request.operation, ctx)
            except Exception:  # noqa: BLE001 - a buggy application must not split the replicas
                self.stats.dropped["application-exception"] += 1
                result = APPLICATION_EXCEPTION_RESULT
            # Provisional record (reply filled in below) so a later request of the same
            # client in this very batch sees this one as executed.
            self._clients[request.client] = _ClientRecord(request.timestamp, result, None)
            fresh.append((request.client, request.timestamp, result))
            results.append(result)
            executed.append(True)
            self.stats.executed_requests += 1
        self.last_executed = seq
        self.stats.executed_batches += 1
        if fresh:
            self._executed_requests(now)
        self._progressed(now)
        effects: list[Effect] = [
            Execute(view=slot.view, seq=seq, digest=slot.digest, timestamp=proposal.timestamp,
                    requests=tuple(requests), results=tuple(results), executed=tuple(executed),
                    proposal=slot.pre_prepare,  # type: ignore[arg-type]
                    certificate=tuple(vote for vote in slot.commits.values()
                                      if vote.message.digest == slot.digest)),  # type: ignore[union-attr]
        ]
        if fresh:
            self.stats.signatures += 1
            for reply in sign_replies(self._key, self._committee_digest, view=self.view, seq=seq,
                                      replica=self.id, executed=fresh):
                message: ReplyMessage = reply.message  # type: ignore[assignment]
                record = self._clients[message.client]
                if record.timestamp == message.timestamp:
                    record.reply = reply
                effects.append(Reply(message.client, reply))
        if seq % self.config.checkpoint_interval == 0:
            effects += self._take_checkpoint(seq, now)
        return effects

    def _client_table(self) -> list[list]:
        return [[client, record.timestamp, record.result]
                for client, record in sorted(self._clients.items())]

    @staticmethod
    def _digest_of(app_digest: bytes, client_table: list) -> bytes:
        """Checkpoint digest: the application state plus the reply table (exactly-once state)."""
        return hashlib.sha256(cbor.encode({"app": app_digest, "clients": client_table})).digest()

    def _state_digest(self) -> bytes:
        return self._digest_of(self.app.digest(), self._client_table())

    # ------------------------------------------------------------ checkpoints

    def _take_checkpoint(self, seq: int, now: float) -> list[Effect]:
        client_table = self._client_table()
        state_digest = self._digest_of(self.app.digest(), client_table)
        # Kept for state transfer until a later checkpoint becomes stable.
        self._own_checkpoints[seq] = (state_digest, self.app.snapshot(),
                                      cbor.encode(client_table, max_depth=3))
        checkpoint = self._sign(Checkpoint(seq=seq, state_digest=state_digest, replica=self.id))
        self._checkpoint_votes.setdefault(seq, {})[self.id] = checkpoint
        return [Persist("checkpoint", checkpoint), Broadcast(checkpoint),
                *self._check_stable(seq, now)]

    def _on_checkpoint(self, signed: SignedMessage, message: Checkpoint, now: float) -> list[Effect]:
        sender = message.replica
        if not self._in_window(message.seq) or message.seq % self.config.checkpoint_interval:
            self._note_ahead(signed, message.seq)
            return self._drop("out-of-window", sender, f"checkpoint seq {message.seq}", now)
        if not self._verify(signed):
            return self._drop("bad-signature", sender, "checkpoint", now)
        votes = self._checkpoint_votes.setdefault(message.seq, {})
        earlier = votes.get(sender)
        if earlier is not None:
            if earlier.body == signed.body:
                return self._drop("duplicate", sender, f"checkpoint seq {message.seq}", now)
            effects = self._convict("conflicting-checkpoint", sender, earlier, signed)
            return effects + self._drop("conflicting-checkpoint", sender, str(message.seq), now)
        votes[sender] = signed
        return self._check_stable(message.seq, now)

    def _check_stable(self, seq: int, now: float) -> list[Effect]:
        votes = self._checkpoint_votes.get(seq, {})
        tally = Counter(vote.message.state_digest for vote in votes.values())  # type: ignore[union-attr]
        certified = next((d for d, count in tally.items() if count >= 2 * self._f + 1), None)
        if certified is None or seq <= self.low_watermark:
            return []
        if self.last_executed < seq:
            # Certified ahead of us: becomes stable here once we execute up to seq (or,
            # when we cannot, by state transfer -- next issue).
            return []
        own = self._own_checkpoints.get(seq)
        if own is None or own[0] != certified:
            self.stats.dropped["checkpoint-divergence"] += 1
            return []
        return self._make_stable(seq, certified, tuple(
            vote for vote in votes.values() if vote.message.state_digest == certified  # type: ignore[union-attr]
        ), now)

    def _make_stable(self, seq: int, digest: bytes, proof: tuple[SignedMessage, ...],
                     now: float) -> list[Effect]:
        """Checkpoint ``seq`` (executed here, digest certified by ``proof``) becomes stable."""
        self.low_watermark = seq
        self.stable_digest = digest
        self.stable_proof = proof
        self._collect_garbage(seq)
        for old in [s for s in self._own_checkpoints if s < seq]:
            del self._own_checkpoints[old]
        self._progressed(now)
        effects: list[Effect] = [CheckpointStable(seq, digest)]
        chunks = self._signed_state()
        if chunks:
            # What a restart starts from (the first chunk; the others ride along).
            effects.insert(0, Persist("state", chunks[0], chunks[1:]))
        if self.is_primary:
            effects += self._propose_ready(now, flush=False)
        return effects

    def _collect_garbage(self, seq: int) -> None:
        """Forget everything at or below the stable checkpoint ``seq``."""
        for old in [s for s in self._log if s <= seq]:
            del self._log[old]
        for old in [s for s in self._checkpoint_votes if s <= seq]:
            del self._checkpoint_votes[old]
        for old in [s for s in self._prepared_certs if s <= seq]:
            del self._prepared_certs[old]
        self._recommitting = {s for s in self._recommitting if s > seq}

    # ------------------------------------------------------------ view change

    def _await(self, request: SignedMessage, now: float, *, proposed: bool) -> None:
        """A backup learned of a request: start the request timer unless it runs.

        It waits for each client's *oldest* unexecuted request. Every request a primary
        proposed is remembered (it must execute; once an older one of the same client
        executes, the next becomes the awaited one -- otherwise a backup that executed the
        older stops suspecting a primary that stalls the newer). A request a client sent
        directly counts only if none of that client is pending: a client that sends backups
        more requests than the primary queues (``max_queued_per_client``) must not make them
        wait for one the primary rightly dropped -- that would let one client force view
        changes."""
        client, timestamp = request.message.client, request.message.timestamp  # type: ignore[union-attr]
        record = self._clients.get(client)
        if record is not None and record.timestamp >= timestamp:
            return
        known = self._awaited_known.get(client)
        if known is None:
            self._awaited_known[client] = {timestamp: request}
        elif proposed:
            known[timestamp] = request
            if len(known) > MAX_AWAITED_PER_CLIENT:
                del known[max(known)]
        if self._view_timer_at is None and self.view_active and not self.is_primary:
            self._view_timer_at = now + self._view_timeout

    def _prune_awaited(self) -> None:
        """Forget awaited requests that executed (or that a newer one of the client did)."""
        clients = self._clients
        pruned: dict[str, dict[int, SignedMessage]] = {}
        for client, known in self._awaited_known.items():
            record = clients.get(client)
            if record is not None:
                known = {ts: r for ts, r in known.items() if ts > record.timestamp}
            if known:
                pruned[client] = known
        self._awaited_known = pruned

    def _oldest_awaited(self) -> dict[str, SignedMessage]:
        """Each client's oldest pending request this backup knows of."""
        return {client: known[min(known)] for client, known in self._awaited_known.items()}

    def _executed_requests(self, now: float) -> None:
        """Progress: the timeout is back to T; the timer restarts if requests still wait."""
        self._changed_without_progress = False
        self._view_timeout = self.config.view_change_timeout
        if self._awaited_known:
            self._prune_awaited()
        waiting = self._awaited_known and self.view_active and not self.is_primary
        self._view_timer_at = now + self._view_timeout if waiting else None

    def _on_view_timer(self, now: float) -> list[Effect]:
        if not self.view_active:
            # No NEW-VIEW (or no new execution) in time: on to the next view.
            return self._start_view_change(self.view + 1, now)
        if self.is_primary or not self._awaited_known:
            return []
        if self._ahead_certain > self.last_executed:
            # We are behind (f+1 members are past us): our lag, not the primary's fault.
            self._view_timer_at = now + self._view_timeout
            return []
        return self._start_view_change(self.view + 1, now)

    def _start_view_change(self, new_view: int, now: float) -> list[Effect]:
        """Stop taking part in the current view and send VIEW-CHANGE for ``new_view``."""
        if new_view < self.view or (new_view == self.view and not self.view_active):
            return []
        if self._changed_without_progress:
            self._view_timeout = min(2 * self._view_timeout, self.config.max_view_change_timeout)
        self._changed_without_progress = True
        if self.view_active:
            self._left_view = self.view
        self.view, self.view_active = new_view, False
        self.stats.view_changes += 1
        self._view_timer_at = None  # the new-view timer starts with 2f+1 VIEW-CHANGEs
        self._batch_deadline = None
        self._relayed.clear()  # relay retransmitted requests to the next primary
        self._new_view = None
        self._early.clear()
        for member in [m for m, c in self._view_changes.items() if c.view < new_view]:
            del self._view_changes[member]
        if not self._may_sign():
            return []
        certificates = tuple(self._prepared_certs[seq] for seq in sorted(self._prepared_certs)
                             if seq > self.low_watermark)
        message = ViewChange(view=new_view, checkpoint=self.low_watermark,
                             proof=tuple(vote.raw for vote in self.stable_proof),
                             prepared=tuple(c.envelopes() for c in certificates), replica=self.id)
        try:
            signed = self._sign(message)
        except LocalError as exc:  # larger than one message: the others must do without it
            return self._drop("view-change-too-large", self.id, str(exc), now)
        self._own_view_change = signed
        self._view_changes[self.id] = CheckedViewChange(
            signed, new_view, self.id, self.low_watermark, self.stable_digest, self.stable_proof,
            {c.seq: c for c in certificates})
        return [Persist("view-change", signed), Broadcast(signed), *self._view_change_progress(now)]

    def _check_view_change(self, signed: SignedMessage) -> CheckedViewChange:
        checked = self._checked.get(signed.raw)
        if checked is None:
            checked = check_view_change(
                signed, n=self._n, f=self._f, window=self.config.log_window,
                checkpoint_interval=self.config.checkpoint_interval, verify=self._verify,
                genesis_digest=self._genesis_digest)
            if len(self._checked) >= CHECKED_VIEW_CHANGES_KEPT:
                del self._checked[next(iter(self._checked))]
            self._checked[signed.raw] = checked
        return checked

    def _on_view_change(self, signed: SignedMessage, message: ViewChange, now: float) -> list[Effect]:
        sender = message.replica
        if message.view < self.view or (message.view == self.view and self.view_active):
            if message.view == self.view and self._new_view is not None:
                # The sender missed the NEW-VIEW of our view: re-send it (rate-limited).
                return self._answer_once(sender, [Send(sender, self._new_view)], now)
            return self._drop("stale-view-change", sender, str(message.view), now)
        earlier = self._view_changes.get(sender)
        if earlier is not None and earlier.view >= message.view:
            if earlier.signed.body == signed.body:
                return self._drop("duplicate", sender, f"view-change {message.view}", now)
            if earlier.view == message.view and self._verify(signed):
                effects = self._convict("conflicting-view-change", sender, earlier.signed, signed)
                return effects + self._drop("conflicting-view-change", sender, str(message.view), now)
            return self._drop("stale-view-change", sender, str(message.view), now)
        try:
            checked = self._check_view_change(signed)
        except InvalidCertificate as exc:
            if not self._verify(signed):
                return self._drop("bad-signature", sender, "view-change", now)
            effects = self._convict("bad-view-change", sender, signed)
            return effects + self._drop("bad-view-change", sender, str(exc), now)
        self._view_changes[sender] = checked
        return self._view_change_progress(now)

    def _view_change_progress(self, now: float) -> list[Effect]:
        """After a VIEW-CHANGE: join a higher view on f+1, start the new-view timer and (as
        the new primary) send NEW-VIEW on 2f+1."""
        effects: list[Effect] = []
        higher = sorted((c.view for c in self._view_changes.values() if c.view > self.view),
                        reverse=True)
        if len(higher) > self._f:
            # f+1 members (one honest) want a view above ours: join the smallest such view
            # among them, even before our own timer fires.
            effects += self._start_view_change(higher[self._f], now)
        if self.view_active:
            return effects
        # A VIEW-CHANGE for a higher view abandons ours too: it counts toward starting the
        # new-view timer (else members that moved past a view whose VIEW-CHANGEs were lost
        # leave the rest waiting forever), but only ones for this view build its NEW-VIEW.
        if self._view_timer_at is None and len(self._view_changes) > 2 * self._f:
            self._view_timer_at = now + self._view_timeout
        supporting = [c for c in self._view_changes.values() if c.view == self.view]
        if len(supporting) < 2 * self._f + 1:
            return effects
        if self.is_primary and self._own_view_change is not None and self._may_sign():
            effects += self._send_new_view(supporting, now)
        return effects

    def _send_new_view(self, supporting: list[CheckedViewChange], now: float) -> list[Effect]:
        # Our own VIEW-CHANGE and the lowest other members': any 2f+1 are correct.
        chosen = sorted(supporting, key=lambda c: (c.replica != self.id, c.replica))
        chosen = chosen[: 2 * self._f + 1]
        plan = plan_new_view(self.view, chosen)
        try:
            pre_prepares = tuple(self._sign(plan.pre_prepare(seq, self.id)) for seq in plan.entries)
            new_view = self._sign(NewView(view=self.view,
                                          view_changes=tuple(c.signed.raw for c in chosen),
                                          pre_prepares=tuple(p.raw for p in pre_prepares),
                                          replica=self.id))
        except LocalError as exc:
            return self._drop("new-view-too-large", self.id, str(exc), now)
        self.stats.new_views += 1
        effects: list[Effect] = [Persist("new-view", new_view), Broadcast(new_view)]
        return effects + self._enter_view(plan, pre_prepares, new_view, now)

    def _on_new_view(self, signed: SignedMessage, message: NewView, now: float) -> list[Effect]:
        sender = message.replica
        if message.view < self.view or (message.view == self.view and self.view_active):
            return self._drop("stale-new-view", sender, str(message.view), now)
        if not self._verify(signed):
            return self._drop("bad-signature", sender, "new-view", now)
        try:
            plan, pre_prepares = check_new_view(
                signed, n=self._n, f=self._f, window=self.config.log_window,
                checkpoint_interval=self.config.checkpoint_interval, verify=self._verify,
                genesis_digest=self._genesis_digest, checked=self._checked_view_change)
            requests = [self._batch_requests(p) for p in pre_prepares]
        except InvalidCertificate as exc:
            # A signed NEW-VIEW that does not hold convicts its primary: on to the next view.
            effects = self._convict("bad-new-view", sender, signed)
            effects += self._drop("bad-new-view", sender, str(exc), now)
            if message.view == self.view:
                # Only the view we are changing to: a bad NEW-VIEW for some far view must
                # not drag a replica there alone (it would leave the quorum).
                effects += self._start_view_change(message.view + 1, now)
            return effects
        self.view = message.view
        effects: list[Effect] = [Persist("new-view", signed)]
        return effects + self._enter_view(plan, pre_prepares, signed, now, requests)

    def _checked_view_change(self, raw: bytes) -> CheckedViewChange | None:
        checked = self._checked.get(raw)
        if checked is not None:
            return checked
        own = self._view_changes.get(self.id)
        return own if own is not None and own.signed.raw == raw else None

    def _batch_requests(self, pre_prepare: SignedMessage) -> tuple[SignedMessage, ...]:
        """The requests of a re-proposed batch (certified: 2f+1 members prepared it, so one
        honest member checked every client signature; here they are only decoded)."""
        requests = []
        for raw in pre_prepare.message.batch:  # type: ignore[union-attr]
            try:
                request = decode_envelope(raw)
            except DecodeError as exc:
                raise InvalidCertificate(f"re-proposed batch: {exc}") from None
            if not isinstance(request.message, Request):
                raise InvalidCertificate("re-proposed batch holds a non-request")
            requests.append(request)
        return tuple(requests)

    def _enter_view(self, plan: NewViewPlan, pre_prepares: tuple[SignedMessage, ...],
                    new_view: SignedMessage, now: float,
                    requests: list[tuple[SignedMessage, ...]] | None = None) -> list[Effect]:
        """Start view ``plan.view`` with its O set: the same batches at the same seqs."""
        if requests is None:
            requests = [self._batch_requests(p) for p in pre_prepares]
        self.view_active = True
        self.stats.views_entered += 1
        self._new_view = new_view
        self._own_view_change = None
        self._view_changes = {m: c for m, c in self._view_changes.items() if c.view > self.view}
        self._views_ahead = {m: v for m, v in self._views_ahead.items() if v > self.view}
        self._checked.clear()
        effects: list[Effect] = []
        if plan.min_s > self.low_watermark:
            own = self._own_checkpoints.get(plan.min_s)
            if own is not None and own[0] == plan.checkpoint_digest:
                effects += self._make_stable(plan.min_s, plan.checkpoint_digest,
                                             plan.checkpoint_proof, now)
            elif self.last_executed < plan.min_s:
                # Behind the new view's checkpoint: the state comes by state transfer.
                self._ahead_certain = max(self._ahead_certain, plan.min_s)
        old_log, old_queue = self._log, list(self._queue)
        self._log, self._in_flight = {}, set()
        self._awaiting_commit = set()
        self._recommitting = set()
        self._queue.clear()
        self._queued.clear()
        self._queued_per_client.clear()
        for (seq, _), pre_prepare, batch in zip(plan.entries.items(), pre_prepares, requests):
            if not self._in_window(seq):
                continue
            slot = self._slot(seq)
            slot.pre_prepare, slot.digest, slot.requests = pre_prepare, pre_prepare.message.digest, batch  # type: ignore[union-attr]
            if seq <= self.last_executed:
                self._recommitting.add(seq)
            else:
                for request in batch:
                    self._in_flight.add((request.message.client, request.message.timestamp))  # type: ignore[union-attr]
                    self._await(request, now, proposed=True)
            if not self.is_primary:
                effects += self._send_prepare(slot, seq, now)
        if self.is_primary:
            self._next_seq = max(plan.max_s, self.low_watermark) + 1
            self._last_batch_timestamp = max([self._last_batch_timestamp] + [
                p.message.timestamp for p in pre_prepares])  # type: ignore[union-attr]
            # Requests this replica knew of that the new view did not re-propose.
            leftovers = [r for slot in old_log.values() for r in slot.requests] + old_queue
            for request in leftovers + list(self._oldest_awaited().values()):
                effects += self._requeue(request, now)
            effects += self._propose_ready(now, flush=False)
        else:
            # Hand what we still wait for to the new primary now, not at the clients' next
            # retransmission (which may come after our request timer: another view change).
            for client, request in self._oldest_awaited().items():
                key = (client, request.message.timestamp)  # type: ignore[union-attr]
                if key not in self._in_flight:
                    self._relayed[client] = key[1]
                    effects.append(Send(self.primary, request))
        waiting = self._awaited_known and not self.is_primary
        self._view_timer_at = now + self._view_timeout if waiting else None
        self._progressed(now)
        early, self._early = self._early, deque(maxlen=MAX_EARLY_MESSAGES)
        for sender, raw in early:
            effects += self._receive(sender, raw, now)
        return effects

    def _requeue(self, signed: SignedMessage, now: float) -> list[Effect]:
        request: Request = signed.message  # type: ignore[assignment]
        key = (request.client, request.timestamp)
        record = self._clients.get(request.client)
        if (record is not None and record.timestamp >= request.timestamp) or key in self._in_flight \
                or key in self._queued or len(self._queue) >= self.config.max_queued_requests:
            return []
        self._queue.append(signed)
        self._queued.add(key)
        self._queued_per_client[request.client] += 1
        return []

    def _wrong_view(self, signed: SignedMessage, view: int, now: float) -> list[Effect]:
        sender = signed.message.signer()
        if not self.view_active and self._left_view <= view < self.view:
            caught_up = self._catch_up(signed, now)
            if caught_up is not None:
                return caught_up
        if view == self.view and not self.view_active:
            self._early.append((sender, signed.raw))  # type: ignore[arg-type]
            return self._drop("early-for-view", sender, f"{signed.type} view {view}", now)
        self._note_view(signed, view)
        return self._drop("wrong-view", sender, f"{signed.type} view {view}", now)

    def _catch_up(self, signed: SignedMessage, now: float) -> list[Effect] | None:
        """While changing views: execute what the views we left committed, from their commit
        certificates (the primary's PRE-PREPARE and 2f+1 matching COMMITs prove the batch
        committed, whatever view we are in now). Nothing is signed: a member that went into
        a view change alone (clogged, or fed a twin's proposals) keeps up with the others
        instead of diverging until they change views too. None: not applicable."""
        message = signed.message
        seq = message.seq  # type: ignore[union-attr]
        if isinstance(message, Prepare) or seq <= self.last_executed or not self._in_window(seq):
            return None
        slot = self._log.get(seq)
        view = message.view  # type: ignore[union-attr]
        if slot is not None and (slot.committed or slot.view > view):
            return None
        if slot is None or slot.view < view:
            # The others may have moved on to a view we never entered (we are changing to a
            # higher one): the highest view below ours that commits wins the slot.
            if not self._verify(signed):
                return None
            slot = self._log[seq] = _Slot(view=view)
            self._highest_slot = max(self._highest_slot, seq)
        # (Votes stored before the view change count too: check after any message.)
        if isinstance(message, Commit):
            if message.replica not in slot.commits and self._verify(signed):
                slot.commits[message.replica] = signed
        elif slot.pre_prepare is None or slot.digest != message.digest:  # type: ignore[union-attr]
            proposal: PrePrepare = message  # type: ignore[assignment]
            # Replace a proposal only with one that f+1 commits (one honest) vouch for.
            replaceable = slot.pre_prepare is None or self._matching(
                slot.commits, proposal.digest) > self._f
            if (replaceable and proposal.replica == proposal.view % self._n
                    and batch_digest(proposal.timestamp, proposal.batch,
                                     proposal.origin_view) == proposal.digest
                    and self._verify(signed)):
                requests = self._valid_batch(proposal.batch)
                if requests is not None:
                    slot.pre_prepare, slot.digest, slot.requests = signed, proposal.digest, requests
        if slot.pre_prepare is None or self._matching(slot.commits, slot.digest) < 2 * self._f + 1:
            return []
        slot.committed = True
        self.stats.caught_up += 1
        return self._execute_ready(now)

    def _note_view(self, signed: SignedMessage, view: int) -> None:
        """A signed message from a view above ours: f+1 such members mean we missed a view
        change, and the retransmission timer asks them (STATUS) for its NEW-VIEW."""
        member = signed.message.signer()
        if view <= self.view or type(member) is not int or view <= self._views_ahead.get(member, -1):
            return
        if self._verify(signed):
            self._views_ahead[member] = view

    def _behind_in_view(self) -> bool:
        ahead = self._views_ahead
        return len(ahead) > self._f and sum(1 for v in ahead.values() if v > self.view) > self._f

    def _may_sign(self, seq: int | None = None) -> bool:
        """False while a replica that lost its disk could contradict what it signed before
        (see ``lose_disk``)."""
        if not self.amnesiac:
            return True
        resume = self._signing_resumes_after
        if resume is None or self.low_watermark < resume:
            return False
        self.amnesiac = False
        return True

    def _note_recovery_report(self, signed: SignedMessage, message: Status) -> None:
        """An amnesiac collects members' signed progress until n-f have reported."""
        if message.replica in self._recovery_reports or not self._verify(signed):
            return
        self._recovery_reports[message.replica] = message.last_executed
        if len(self._recovery_reports) >= self._n - self._f:
            self._signing_resumes_after = (max(self._recovery_reports.values())
                                           + self.config.log_window)
            self._recovery_reports = {}

    def _answer_once(self, peer: int, answer: list[Effect], now: float) -> list[Effect]:
        last = self._answered.get(peer)
        if last is not None and now - last < self.config.retransmit_interval:
            return self._drop("status-rate-limited", peer, "answer", now)
        self._answered[peer] = now
        return answer

    # ---------------------------------------------------------- retransmission

    def _note_ahead(self, signed: SignedMessage, seq: int, *, status: bool = False) -> None:
        """A signed message above our window (or a STATUS reporting more executed than
        here): its signer is ahead of us."""
        member = signed.message.signer()
        if type(member) is not int or (
                not status and seq <= self.low_watermark + self.config.log_window):
            return
        if seq <= self._ahead.get(member, 0) or not self._verify(signed):
            return
        self._ahead[member] = seq
        if len(self._ahead) > self._f:
            self._ahead_certain = sorted(self._ahead.values(), reverse=True)[self._f]

    def _pending(self) -> bool:
        """Work that cannot finish without messages from others (O(1) but for checkpoints,
        of which there are at most L/K in the window)."""
        return (
            bool(self._queue)
            or not self.view_active
            or self._highest_slot > self.last_executed
            or bool(self._recommitting)
            or self._ahead_certain > self.last_executed
            or any(seq > self.low_watermark for seq in self._own_checkpoints)
            or (bool(self._views_ahead) and self._behind_in_view())
        )

    def _arm_retransmit(self, now: float) -> None:
        if self._retransmit_at is None and self._pending():
            self._retransmit_at = now + self._retransmit_backoff

    def _progressed(self, now: float) -> None:
        self._retransmit_backoff = self.config.retransmit_interval
        self._retransmit_at = now + self._retransmit_backoff if self._pending() else None

    def _retransmit(self) -> list[Effect]:
        """Stalled: re-send what this replica signed for its lowest pending *uncommitted*
        slots (already persisted: no new ``Persist``) and its unstable checkpoints, and
        broadcast a STATUS so that peers which are ahead re-send what it lacks."""
        effects: list[Effect] = []
        if not self.view_active and self._own_view_change is not None:
            effects.append(Broadcast(self._own_view_change))
        pending = sorted(seq for seq, slot in self._log.items()
                         if (seq > self.last_executed or seq in self._recommitting)
                         and not slot.committed)
        for seq in pending[: self.config.max_retransmit_slots]:
            effects += [Broadcast(message) for message in self._own_messages(self._log[seq])]
        for seq, votes in sorted(self._checkpoint_votes.items()):
            if seq > self.low_watermark and self.id in votes:
                effects.append(Broadcast(votes[self.id]))
        self.stats.retransmissions += len(effects)
        return effects + [Broadcast(self._status())]

    def _status(self) -> SignedMessage:
        recovering = self.amnesiac and self._signing_resumes_after is None
        return self._sign(Status(view=self.view, active=self.view_active,
                                 last_executed=self.last_executed,
                                 low_watermark=self.low_watermark, recovering=recovering,
                                 replica=self.id))

    def _own_messages(self, slot: _Slot) -> list[SignedMessage]:
        own = []
        if slot.pre_prepare is not None and slot.pre_prepare.message.replica == self.id:  # type: ignore[union-attr]
            own.append(slot.pre_prepare)
        own += [votes[self.id] for votes in (slot.prepares, slot.commits) if self.id in votes]
        return own

    def _on_status(self, signed: SignedMessage, message: Status, now: float) -> list[Effect]:
        """A stalled peer: send it this replica's own messages for the slots above what it
        executed -- also slots this replica has not executed itself: its PREPARE may be the
        one the peer lacks (at most one answer per peer per interval)."""
        peer = message.replica
        if self.amnesiac and self._signing_resumes_after is None:
            self._note_recovery_report(signed, message)
        if message.recovering and self._answered_recovery.get(peer, -1.0) + \
                self.config.retransmit_interval <= now and self._verify(signed):
            # A member that lost its disk asks where we are (once per interval each).
            self._answered_recovery[peer] = now
            return [Send(peer, self._status()), *self._on_status_progress(signed, message, now)]
        return self._on_status_progress(signed, message, now)

    def _on_status_progress(self, signed: SignedMessage, message: Status, now: float) -> list[Effect]:
        peer = message.replica
        view_behind = self.view_active and self._new_view is not None and (
            message.view < self.view or (message.view == self.view and not message.active))
        if message.last_executed >= max(self.last_executed, self._highest_slot) and not view_behind:
            if message.last_executed > self.last_executed:
                self._note_ahead(signed, message.last_executed, status=True)
            return self._drop("status-not-behind", peer, str(message.last_executed), now)
        last = self._answered.get(peer)
        if last is not None and now - last < self.config.retransmit_interval:
            return self._drop("status-rate-limited", peer, str(message.last_executed), now)
        if not self._verify(signed):
            return self._drop("bad-signature", peer, "status", now)
        self._answered[peer] = now
        answer: list[Effect] = []
        if view_behind:
            # It missed the view change that started our view: the NEW-VIEW proves it.
            answer.append(Send(peer, self._new_view))  # type: ignore[arg-type]
        if message.last_executed < self.low_watermark:
            # Behind our stable checkpoint: the slots it lacks are gone; send the state.
            # Only the f+1 members after the peer (in id order) do, so at least one honest
            # member sends it but not all n-1 ship a whole snapshot.
            if 1 <= (self.id - peer) % self._n <= self._f + 1:
                answer += [Send(peer, chunk) for chunk in self._signed_state()]
        elif message.low_watermark < self.low_watermark:
            # Help it make our stable checkpoint stable too (it executed that far).
            answer += [Send(peer, vote) for vote in self.stable_proof
                       if vote.message.replica == self.id]  # type: ignore[union-attr]
        first = max(message.last_executed, self.low_watermark) + 1
        last_seq = min(self._highest_slot, first + self.config.max_retransmit_slots - 1)
        forwards = 1 <= (self.id - peer) % self._n <= self._f + 1
        for seq in range(first, last_seq + 1):
            slot = self._log.get(seq)
            if slot is not None:
                own = self._own_messages(slot)
                if forwards and slot.committed and slot.pre_prepare is not None \
                        and slot.pre_prepare not in own:
                    # The primary's signed proposal of a committed slot: the peer may hold
                    # another version (an equivocating primary) or none.
                    own.append(slot.pre_prepare)
                answer += [Send(peer, message) for message in own]
        self.stats.retransmissions += len(answer)
        return answer

    # ---------------------------------------------------------- state transfer

    def _signed_state(self) -> tuple[SignedMessage, ...]:
        """The stable checkpoint's state as signed STATE chunks (signed once per checkpoint)."""
        seq = self.low_watermark
        own = self._own_checkpoints.get(seq)
        if own is None or not self.stable_proof:
            return ()
        cached = self._state_chunks
        if not cached or cached[0].message.seq != seq:  # type: ignore[union-attr]
            # Canonical CBOR of [snapshot, reply table] from the table's stored encoding:
            # a definite 2-array header, then the two encoded items.
            blob = b"\x82" + cbor.encode(own[1]) + own[2]
            proof = tuple(v.raw for v in self.stable_proof)
            size = self.config.state_chunk_size
            cached = tuple(
                self._sign(State(seq=seq, proof=proof, total=len(blob), offset=offset,
                                 data=blob[offset:offset + size], replica=self.id))
                for offset in range(0, len(blob), size))
            self._state_chunks = cached
        return cached

    def _certified_digest(self, seq: int, proof: tuple[bytes, ...]) -> tuple[bytes, tuple[SignedMessage, ...]] | None:
        """The state digest 2f+1 distinct members signed CHECKPOINTs for at ``seq``."""
        if seq == 0:
            return None  # never transferred: every replica starts there
        try:
            return check_checkpoint_proof(seq, proof, n=self._n, f=self._f, verify=self._verify,
                                          genesis_digest=self._genesis_digest)
        except InvalidCertificate:
            return None

    def _on_state(self, signed: SignedMessage, message: State, now: float) -> list[Effect]:
        """Assemble a peer's checkpoint state chunk by chunk and adopt it if 2f+1 members
        certified its digest and the assembled bytes hash to it. The sender need not be
        trusted: the proof and the hash are."""
        sender = message.replica
        if message.seq <= self.last_executed or message.seq % self.config.checkpoint_interval:
            return self._drop("stale-state", sender, str(message.seq), now)
        if message.offset + len(message.data) > message.total:
            return self._drop("bad-state", sender, "chunk beyond the state's size", now)
        assembly = self._assemblies.get(sender)
        proof_bytes = b"".join(message.proof)
        if assembly is not None and (assembly.seq, assembly.total, assembly.proof) != (
                message.seq, message.total, proof_bytes):
            if assembly.seq >= message.seq:
                return self._drop("stale-state", sender, str(message.seq), now)
            assembly = None  # a newer checkpoint from this sender replaces the old one
        if assembly is None:
            for old in [m for m, a in self._assemblies.items() if a.seq <= self.last_executed]:
                del self._assemblies[old]
            if sender not in self._assemblies and len(self._assemblies) > self._f:
                # f+1 transfers at once include an honest sender; more only cost memory.
                return self._drop("state-busy", sender, str(message.seq), now)
            if not self._verify(signed):
                return self._drop("bad-signature", sender, "state", now)
            certified = self._certified_digest(message.seq, message.proof)
            if certified is None:
                return self._drop("bad-state-proof", sender, str(message.seq), now)
            assembly = self._assemblies[sender] = _Assembly(
                message.seq, message.total, proof_bytes, certified[0], certified[1], signed)
        elif message.offset in assembly.parts:
            return self._drop("duplicate", sender, f"state chunk {message.offset}", now)
        elif not self._verify(signed):
            return self._drop("bad-signature", sender, "state", now)
        if assembly.received + len(message.data) > assembly.total:
            del self._assemblies[sender]
            return self._drop("bad-state", sender, "chunks overlap", now)
        assembly.parts[message.offset] = message.data
        assembly.received += len(message.data)
        if assembly.received < assembly.total:
            return []
        del self._assemblies[sender]
        return self._adopt_state(sender, assembly, now)

    def _adopt_state(self, sender: int, assembly: _Assembly, now: float) -> list[Effect]:
        blob = b"".join(assembly.parts[offset] for offset in sorted(assembly.parts))
        digest, proof = assembly.digest, assembly.votes
        try:
            snapshot, table = cbor.decode(blob, max_size=len(blob), max_depth=4)
            clients = {entry[0]: _ClientRecord(entry[1], entry[2], None) for entry in table}
            well_formed = type(snapshot) is bytes and len(blob) == assembly.total and all(
                type(e) is list and len(e) == 3 and type(e[0]) is str and type(e[1]) is int
                and type(e[2]) is bytes for e in table)
        except (DecodeError, TypeError, IndexError, KeyError, ValueError):
            well_formed = False
        if not well_formed:
            effects = self._convict("bad-state", sender, assembly.first)
            return effects + self._drop("bad-state", sender, "not a state", now)
        previous = self.app.snapshot()
        try:
            self.app.restore(snapshot)
            matches = self._digest_of(self.app.digest(), table) == digest
        except Exception:  # noqa: BLE001 - a peer's bytes must never crash the replica
            matches = False
        if not matches:
            self.app.restore(previous)
            effects = self._convict("bad-state", sender, assembly.first)
            return effects + self._drop("bad-state", sender, str(assembly.seq), now)
        encoded_table = cbor.encode(table, max_depth=3)
        seq = assembly.seq
        self._clients = clients
        self.last_executed = seq
        self._own_checkpoints = {seq: (digest, snapshot, encoded_table)}
        self._in_flight = {(client, ts) for client, ts in self._in_flight
                           if client not in clients or ts > clients[client].timestamp}
        self._prune_awaited()
        self._next_seq = max(self._next_seq, seq + 1)
        self.stats.state_transfers += 1
        effects = self._make_stable(seq, digest, proof, now)
        if self.id not in {vote.message.replica for vote in proof}:  # type: ignore[union-attr]
            # Our own vote for the state we now hold: members that executed this far but
            # miss votes (f members may sign wrong digests) can make it stable too.
            vote = self._sign(Checkpoint(seq=seq, state_digest=digest, replica=self.id))
            effects += [Persist("checkpoint", vote), Broadcast(vote)]
        return effects + self._execute_ready(now)

    # ---------------------------------------------------------------- helpers

    def _in_window(self, seq: int) -> bool:
        return self.low_watermark < seq <= self.low_watermark + self.config.log_window

    def _is_member(self, sender: int | str) -> bool:
        return type(sender) is int and 0 <= sender < self._n

    def _slot(self, seq: int) -> _Slot:
        slot = self._log.get(seq)
        if slot is None:
            slot = self._log[seq] = _Slot(view=self.view)
            self._highest_slot = max(self._highest_slot, seq)
        return slot

    def _sign(self, message) -> SignedMessage:
        self.stats.signatures += 1
        return sign_message(message, self._key, self._committee_digest)

    def _verify(self, signed: SignedMessage) -> bool:
        signer = signed.message.signer()
        if type(signer) is int:
            public_key = self._member_keys.get(signer)
        else:
            public_key = self._client_keys.get(signer)
        if public_key is None:
            return False
        return self.verifier.verify(
            public_key, self._committee_digest, signed.type, signed.body, signed.signature
        )

    def _convict(self, kind: str, culprit: int | str, *proofs: SignedMessage) -> list[Effect]:
        evidence = Evidence(kind, culprit, tuple(proof.raw for proof in proofs))
        self.evidence.append(evidence)
        return [evidence]

    def _drop(self, reason: str, sender: int | str, detail: str, now: float) -> list[Effect]:
        self.stats.dropped[reason] += 1
        self.recent_drops.append(DropRecord(reason, sender, detail, now))
        return []

    # ------------------------------------------------------------- inspection

    def log_size(self) -> int:
        """Messages held for the window: slots' votes plus checkpoint votes (bounded)."""
        held = sum(len(s.prepares) + len(s.commits) + (s.pre_prepare is not None)
                   for s in self._log.values())
        return held + sum(len(votes) for votes in self._checkpoint_votes.values())

    def state_digest(self) -> bytes:
        return self._state_digest()

    @property
    def queued_requests(self) -> int:
        return len(self._queue)
