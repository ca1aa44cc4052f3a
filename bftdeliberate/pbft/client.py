"""The sans-IO PBFT client: sign a request, send it to the primary, retransmit to every member
on timeout, accept a result once f+1 distinct members sent matching signed replies.

One request is outstanding at a time (PBFT's per-client timestamp order makes a second one
pointless: the replicas would execute them strictly by timestamp anyway). Effects use the
replica's records: ``Send(to)`` targets one member; ``Broadcast`` from a client means *every*
member; ``Completed`` hands the accepted result to the caller.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from bftdeliberate.committee import Committee
from bftdeliberate.crypto import PrivateKey, Verifier
from bftdeliberate.errors import DecodeError, LocalError
from bftdeliberate.pbft.config import DEFAULT_CLIENT_MAX_RETRANSMIT, DEFAULT_CLIENT_RETRANSMIT
from bftdeliberate.pbft.effects import Broadcast, Completed, Effect, Send
from bftdeliberate.pbft.replies import verify_reply
from bftdeliberate.wire.messages import Reply, Request, SignedMessage, decode_envelope, sign_message


@dataclass(slots=True)
class _Outstanding:
    request: SignedMessage
    timestamp: int
    deadline: float
    timeout: float
    # member -> (result, view) of its verified reply; keyed by member: distinct signers only.
    replies: dict[int, tuple[bytes, int]] = field(default_factory=dict)


@dataclass(slots=True)
class ClientStats:
    requests: int = 0
    retransmissions: int = 0
    completed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


class Client:
    """A committee client identified by ``client_id`` in the genesis manifest."""

    def __init__(
        self,
        client_id: str,
        key: PrivateKey,
        committee: Committee,
        *,
        verifier: Verifier | None = None,
        retransmit_timeout: float = DEFAULT_CLIENT_RETRANSMIT,
        max_retransmit_timeout: float = DEFAULT_CLIENT_MAX_RETRANSMIT,
    ) -> None:
        if committee.client_public_key(client_id) != key.public_key:
            raise LocalError(f"key does not belong to client {client_id!r} of the committee")
        self.id = client_id
        self.committee = committee
        self.verifier = verifier if verifier is not None else Verifier(key.backend)
        self.view = 0  # best guess of the current view, learnt from accepted replies
        self.stats = ClientStats()
        self._key = key
        self._committee_digest = committee.digest
        self._member_keys = {m.id: m.public_key_bytes for m in committee.members}
        self._retransmit_timeout = retransmit_timeout
        self._max_retransmit_timeout = max_retransmit_timeout
        self._last_timestamp = 0
        self._outstanding: _Outstanding | None = None

    @property
    def last_timestamp(self) -> int:
        """Timestamp of the newest request this client signed."""
        return self._last_timestamp

    @property
    def busy(self) -> bool:
        return self._outstanding is not None

    def request(self, operation: bytes, now: float) -> list[Effect]:
        """Sign ``operation`` and send it to the primary this client believes in."""
        if self._outstanding is not None:
            raise LocalError("a request is already outstanding; wait for Completed")
        # Microseconds since the driver's epoch, strictly increasing even if the clock is not.
        timestamp = max(self._last_timestamp + 1, int(now * 1_000_000))
        self._last_timestamp = timestamp
        signed = sign_message(
            Request(client=self.id, timestamp=timestamp, operation=operation),
            self._key,
            self._committee_digest,
        )
        self._outstanding = _Outstanding(
            signed, timestamp, now + self._retransmit_timeout, self._retransmit_timeout
        )
        self.stats.requests += 1
        return [Send(self.committee.primary(self.view), signed)]

    def receive(self, sender: int, data: bytes, now: float) -> list[Effect]:
        """Handle a reply from member ``sender`` (transport-authenticated)."""
        try:
            signed = decode_envelope(data)
        except DecodeError:
            return self._drop("malformed")
        reply = signed.message
        if not isinstance(reply, Reply):
            return self._drop("unexpected-type")
        if reply.replica != sender:
            return self._drop("sender-mismatch")
        pending = self._outstanding
        if reply.client != self.id or pending is None or reply.timestamp != pending.timestamp:
            return self._drop("stale-reply")  # late replies after completion land here unverified
        if sender in pending.replies:
            return self._drop("duplicate")
        public_key = self._member_keys.get(sender)
        if public_key is None or not verify_reply(
            signed, public_key, self._committee_digest, self.verifier
        ):
            return self._drop("bad-signature")
        pending.replies[sender] = (reply.result, reply.view)
        matching = [view for result, view in pending.replies.values() if result == reply.result]
        if len(matching) < self.committee.reply_quorum:
            return []
        self._outstanding = None
        self.view = max(self.view, max(matching))
        self.stats.completed += 1
        return [Completed(pending.timestamp, reply.result, self.view)]

    def abandon(self) -> None:
        """Give up on the outstanding request (the caller timed out); late replies to it
        are dropped as stale, and the next request gets a newer timestamp."""
        self._outstanding = None

    def handle_timer(self, now: float) -> list[Effect]:
        pending = self._outstanding
        if pending is None or now < pending.deadline:
            return []
        # No quorum in time: maybe the primary is faulty. Ask everyone; back off.
        pending.timeout = min(pending.timeout * 2, self._max_retransmit_timeout)
        pending.deadline = now + pending.timeout
        self.stats.retransmissions += 1
        return [Broadcast(pending.request)]

    def next_deadline(self) -> float | None:
        return None if self._outstanding is None else self._outstanding.deadline

    def _drop(self, reason: str) -> list[Effect]:
        self.stats.dropped[reason] += 1
        return []
