"""Safety oracles, checked as the world runs (after every event that could break them).

* agreement -- no two honest replicas execute different batches at one sequence number;
* validity -- every operation an honest replica executes carries a valid signature of an
  authorised client (re-verified here, independently of the replica);
* integrity -- an honest replica executes a client request (client, timestamp) at most once;
* certificate -- every honest execution is justified by 2f+1 COMMITs from distinct members
  for the same (view, seq, digest), each re-verified here, and by the primary's PRE-PREPARE
  whose batch hashes to that digest;
* monotonic-views -- an honest replica's view never decreases;
* state -- honest replicas that executed the same number of batches have equal state
  digests (checked at the end of a run: ``final_checks``).

A ``Violation`` names the oracle, the members, the sequence number and the event index.
Byzantine members are not judged (their inner replicas may legitimately look wrong).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bftdeliberate.crypto import Verifier
from bftdeliberate.errors import DecodeError
from bftdeliberate.pbft.effects import Execute
from bftdeliberate.pbft.replica import batch_digest
from bftdeliberate.wire.messages import Commit, PrePrepare, Request, decode_envelope

if TYPE_CHECKING:
    from simulator.world import World

#: Violations kept per run (a diverging run can produce many; the first ones matter).
MAX_VIOLATIONS_KEPT = 100


@dataclass(frozen=True, slots=True)
class Violation:
    oracle: str
    detail: str
    members: tuple[int, ...]
    seq: int | None
    event: int
    time_ms: float

    def as_dict(self) -> dict:
        return {"oracle": self.oracle, "detail": self.detail, "members": list(self.members),
                "seq": self.seq, "event": self.event, "time_ms": round(self.time_ms, 3)}


class Oracles:
    def __init__(self, world: World) -> None:
        self.world = world
        self.violations: list[Violation] = []
        self._verifier = Verifier(world.backend)
        # seq -> (digest, first honest member that executed it)
        self._agreed: dict[int, tuple[bytes, int]] = {}
        # member -> request -> seq it executed at (this incarnation's memory and below)
        self._executed: dict[int, dict[tuple[str, int], int]] = defaultdict(dict)
        self._views: dict[int, int] = {}
        self._committee_digest = world.committee.digest
        # Envelopes already found valid: honest replicas' certificates share most commits.
        self._valid_raw: set[bytes] = set()
        self._digest_checked: set[bytes] = set()  # proposals whose batch hashes to their digest

    @property
    def safe(self) -> bool:
        return not self.violations

    def violate(self, oracle: str, detail: str, members: tuple[int, ...],
                seq: int | None = None) -> None:
        if len(self.violations) < MAX_VIOLATIONS_KEPT:
            self.violations.append(Violation(oracle, detail, members, seq,
                                             self.world.events_processed, self.world.now * 1000))

    # ------------------------------------------------------------ per event

    def after_step(self, member: int) -> None:
        if member in self.world.byzantine:
            return
        view = self.world.replicas[member].view
        previous = self._views.get(member, 0)
        if view < previous:
            self.violate("monotonic-views", f"view went from {previous} to {view}", (member,))
        self._views[member] = view

    def on_execute(self, member: int, effect: Execute) -> None:
        if member in self.world.byzantine:
            return
        seq = effect.seq
        agreed = self._agreed.get(seq)
        if agreed is None:
            self._agreed[seq] = (effect.digest, member)
        elif agreed[0] != effect.digest:
            self.violate("agreement",
                         f"members {agreed[1]} and {member} executed different batches at seq {seq}",
                         (agreed[1], member), seq)
        self._check_certificate(member, effect)
        executed = self._executed[member]
        for request, ran in zip(effect.requests, effect.executed):
            if not ran:
                continue
            key = (request.client, request.timestamp)
            if key in executed:
                self.violate("integrity",
                             f"request {key} executed twice (at seq {executed[key]} and {seq})",
                             (member,), seq)
            executed[key] = seq

    def on_restart(self, member: int, restored_seq: int, *, disk_lost: bool) -> None:
        """A restarted member starts from its checkpoint at ``restored_seq`` and executes the
        batches above it again (a new process; the application state was restored): only
        executions up to the checkpoint still count against it. Its view must not go back
        (its disk holds it) -- unless the disk was lost, when it starts again from 0."""
        executed = self._executed[member]
        for key in [key for key, seq in executed.items() if seq > restored_seq]:
            del executed[key]
        if disk_lost:
            self._views.pop(member, None)

    def _check_certificate(self, member: int, effect: Execute) -> None:
        world, seq = self.world, effect.seq
        committee = world.committee
        proposal = effect.proposal.message
        if not isinstance(proposal, PrePrepare) or (proposal.view, proposal.seq, proposal.digest) != (
            effect.view, seq, effect.digest
        ):
            self.violate("certificate", "execution without a matching pre-prepare", (member,), seq)
            return
        if proposal.replica != committee.primary(proposal.view) or not self._valid(effect.proposal):
            self.violate("certificate", "pre-prepare not signed by the view's primary",
                         (member,), seq)
        if effect.proposal.raw not in self._digest_checked:
            if batch_digest(proposal.timestamp, proposal.batch,
                            proposal.origin_view) != effect.digest:
                self.violate("certificate", "batch does not hash to the agreed digest",
                             (member,), seq)
            else:
                self._digest_checked.add(effect.proposal.raw)
        signers = set()
        for vote in effect.certificate:
            message = vote.message
            if (isinstance(message, Commit) and (message.view, message.seq, message.digest)
                    == (effect.view, seq, effect.digest) and self._valid(vote)):
                signers.add(message.replica)
        if len(signers) < committee.quorum:
            self.violate("certificate",
                         f"{len(signers)} valid distinct commits < quorum {committee.quorum}",
                         (member,), seq)
        # Validity: every executed operation is signed by an authorised client.
        for raw, ran in zip(proposal.batch, effect.executed):
            if not ran:
                continue
            try:
                request = decode_envelope(raw)
            except DecodeError:
                self.violate("validity", "executed an undecodable request", (member,), seq)
                continue
            if not isinstance(request.message, Request) or not self._valid(request):
                self.violate("validity", "executed an operation no client signed", (member,), seq)

    def _valid(self, signed) -> bool:
        if signed.raw in self._valid_raw:
            return True
        committee = self.world.committee
        signer = signed.message.signer()
        key = (committee.member_public_key(signer) if type(signer) is int
               else committee.client_public_key(signer))
        valid = key is not None and self._verifier.verify(
            key, self._committee_digest, signed.type, signed.body, signed.signature)
        if valid:
            self._valid_raw.add(signed.raw)
        return valid

    # ---------------------------------------------------------- end of run

    def final_checks(self) -> None:
        by_progress: dict[int, dict[bytes, list[int]]] = defaultdict(lambda: defaultdict(list))
        for member in self.world.honest:
            replica = self.world.replicas[member]
            by_progress[replica.last_executed][replica.state_digest()].append(member)
        for seq, digests in sorted(by_progress.items()):
            if len(digests) > 1:
                members = tuple(sorted(m for group in digests.values() for m in group))
                self.violate("state", f"different state digests after seq {seq}", members, seq)
