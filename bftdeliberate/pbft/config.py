"""Replica and client tunables, each a named default with its reason."""

from __future__ import annotations

from dataclasses import dataclass

from bftdeliberate.errors import LocalError
from bftdeliberate.wire.limits import MAX_BATCH_SIZE, MAX_LOG_WINDOW, MAX_STATE_CHUNK

#: Requests per PRE-PREPARE when the queue is long (throughput vs. latency).
DEFAULT_BATCH_SIZE = 100
#: How long the primary waits for a batch to fill before proposing it anyway (seconds).
DEFAULT_BATCH_DELAY = 0.001
#: K: a checkpoint every K sequence numbers.
DEFAULT_CHECKPOINT_INTERVAL = 64
#: L: sequence numbers accepted above the low watermark h (a multiple of K, at least 2K so
#: the pipeline keeps flowing while the next checkpoint becomes stable).
DEFAULT_LOG_WINDOW = 256
#: Batches the primary keeps proposed and not yet committed; while that many are in flight
#: requests wait in the queue, so under load batches grow instead of the pipeline filling
#: with small ones (BFT-SMaRt runs one at a time). Idle latency is unchanged.
DEFAULT_MAX_IN_FLIGHT_BATCHES = 2
#: Requests the primary holds before it stops accepting new ones (memory bound).
DEFAULT_MAX_QUEUED_REQUESTS = 50_000
#: Requests one client may have queued at the primary (one noisy client cannot fill the queue).
DEFAULT_MAX_QUEUED_PER_CLIENT = 4
#: Backups reject a batch whose primary-assigned timestamp is further than this from their
#: own clock (seconds); the agreed timestamp is the only clock the application sees.
DEFAULT_TIMESTAMP_SKEW = 30.0
#: A replica with pending work and no progress for this long re-sends its own messages for
#: the pending slots (seconds); doubles while nothing moves, up to the maximum. Loss and
#: window races otherwise stall the normal case until a view change.
DEFAULT_RETRANSMIT_INTERVAL = 0.5
DEFAULT_MAX_RETRANSMIT_INTERVAL = 4.0
#: Slots re-sent per retransmission round (lowest first).
DEFAULT_MAX_RETRANSMIT_SLOTS = 32
#: Base view-change timeout T (seconds): a backup waiting this long for a request it knows
#: of to execute suspects the primary; a view change that has not produced a NEW-VIEW and a
#: first new execution within the timeout moves on to the next view with twice the timeout
#: (Castro & Liskov 4.4), capped at the maximum; progress resets it to T.
DEFAULT_VIEW_CHANGE_TIMEOUT = 1.0
DEFAULT_MAX_VIEW_CHANGE_TIMEOUT = 64.0
#: Bytes of checkpoint state per STATE message (state transfer sends the state in chunks).
DEFAULT_STATE_CHUNK_SIZE = MAX_STATE_CHUNK
#: Equivocation and other proofs kept in memory (the rest are only emitted as effects).
DEFAULT_MAX_EVIDENCE_KEPT = 1024
#: Client: first retransmission timeout (seconds); doubles per retry up to the maximum.
DEFAULT_CLIENT_RETRANSMIT = 0.5
DEFAULT_CLIENT_MAX_RETRANSMIT = 8.0


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_delay: float = DEFAULT_BATCH_DELAY
    checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL
    max_in_flight_batches: int = DEFAULT_MAX_IN_FLIGHT_BATCHES
    log_window: int = DEFAULT_LOG_WINDOW
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS
    max_queued_per_client: int = DEFAULT_MAX_QUEUED_PER_CLIENT
    timestamp_skew: float = DEFAULT_TIMESTAMP_SKEW
    max_evidence_kept: int = DEFAULT_MAX_EVIDENCE_KEPT
    retransmit_interval: float = DEFAULT_RETRANSMIT_INTERVAL
    max_retransmit_interval: float = DEFAULT_MAX_RETRANSMIT_INTERVAL
    max_retransmit_slots: int = DEFAULT_MAX_RETRANSMIT_SLOTS
    view_change_timeout: float = DEFAULT_VIEW_CHANGE_TIMEOUT
    max_view_change_timeout: float = DEFAULT_MAX_VIEW_CHANGE_TIMEOUT
    state_chunk_size: int = DEFAULT_STATE_CHUNK_SIZE

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise LocalError(f"batch_size must be in 1..{MAX_BATCH_SIZE}")
        if self.batch_delay < 0:
            raise LocalError("batch_delay must be >= 0")
        if self.max_in_flight_batches < 1:
            raise LocalError("max_in_flight_batches must be >= 1")
        if self.checkpoint_interval < 1:
            raise LocalError("checkpoint_interval must be >= 1")
        k, window = self.checkpoint_interval, self.log_window
        if window < 2 * k or window % k:
            raise LocalError("log_window must be a multiple of checkpoint_interval and >= 2x it")
        if not 1 <= self.state_chunk_size <= MAX_STATE_CHUNK:
            raise LocalError(f"state_chunk_size must be in 1..{MAX_STATE_CHUNK}")
        if window > MAX_LOG_WINDOW:
            raise LocalError(f"log_window must be <= {MAX_LOG_WINDOW}")
        if not 0 < self.view_change_timeout <= self.max_view_change_timeout:
            raise LocalError("need 0 < view_change_timeout <= max_view_change_timeout")
        if not 0 < self.retransmit_interval <= self.max_retransmit_interval:
            raise LocalError("need 0 < retransmit_interval <= max_retransmit_interval")
        if self.max_queued_per_client < 1 or self.max_queued_requests < 1:
            raise LocalError("request queue bounds must be >= 1")
