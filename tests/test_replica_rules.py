"""Quorum and acceptance rules of one replica, driven message by message (like the paper)."""

from __future__ import annotations

from conftest import Genesis, make_genesis
from hypothesis import given, settings
from hypothesis import strategies as st

from bftdeliberate import kv
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.pbft.effects import Broadcast, Evidence, Persist, Send
from bftdeliberate.pbft.replica import batch_digest
from bftdeliberate.wire.messages import _ENVELOPE_PREFIX, Commit, Prepare, PrePrepare, Request

NOW = 100.0


def request(genesis: Genesis, client: str = "client-0", timestamp: int = 1, key: str = "k"):
    return genesis.sign(
        Request(client=client, timestamp=timestamp, operation=kv.put(key, b"v")), client
    )


def pre_prepare(genesis: Genesis, seq: int = 1, view: int = 0, requests=(), digest=None,
                primary: int = 0, timestamp: int = int(NOW * 1000)):
    batch = tuple(r.raw for r in requests)
    return genesis.sign(
        PrePrepare(view=view, seq=seq, timestamp=timestamp, origin_view=view, replica=primary,
                   batch=batch, digest=digest or batch_digest(timestamp, batch, view)),
        primary,
    )


def vote(genesis: Genesis, kind, signer: int, digest: bytes, seq: int = 1, view: int = 0):
    return genesis.sign(kind(view=view, seq=seq, digest=digest, replica=signer), signer)


def broadcasts(effects, message_type: str):
    return [e for e in effects if isinstance(e, Broadcast) and e.message.type == message_type]


def test_backup_prepares_once_and_persists_before_sending(genesis4):
    backup = genesis4.replica(1)
    proposal = pre_prepare(genesis4, requests=[request(genesis4)])
    effects = backup.receive(0, proposal.raw, NOW)
    assert [type(e) for e in effects] == [Persist, Broadcast]
    assert effects[0].message is effects[1].message
    assert effects[1].message.message.digest == proposal.message.digest
    # The same pre-prepare again is a duplicate: no second prepare, no state change.
    assert backup.receive(0, proposal.raw, NOW) == []
    assert backup.stats.dropped["duplicate"] == 1


def test_duplicate_prepares_and_commits_from_one_signer_count_once(genesis7):
    # n = 7, f = 2: prepared needs 2f = 4 matching prepares, committed 2f+1 = 5 commits.
    g = genesis7
    backup = g.replica(1)
    proposal = pre_prepare(g, requests=[request(g)])
    digest = proposal.message.digest
    backup.receive(0, proposal.raw, NOW)  # own prepare: 1
    for _ in range(5):
        assert backup.receive(2, vote(g, Prepare, 2, digest).raw, NOW) == []
    assert backup.stats.dropped["duplicate"] == 4
    assert backup.receive(3, vote(g, Prepare, 3, digest).raw, NOW) == []  # 3 distinct
    effects = backup.receive(4, vote(g, Prepare, 4, digest).raw, NOW)  # 4 distinct: prepared
    assert len(broadcasts(effects, "commit")) == 1

    for _ in range(6):
        backup.receive(0, vote(g, Commit, 0, digest).raw, NOW)
    backup.receive(2, vote(g, Commit, 2, digest).raw, NOW)
    backup.receive(3, vote(g, Commit, 3, digest).raw, NOW)
    assert backup.last_executed == 0  # own + 0 + 2 + 3 = 4 distinct < 5
    backup.receive(4, vote(g, Commit, 4, digest).raw, NOW)
    assert backup.last_executed == 1


def test_prepare_from_the_primary_never_counts(genesis4):
    g = genesis4
    backup = g.replica(1)
    proposal = pre_prepare(g, requests=[request(g)])
    digest = proposal.message.digest
    backup.receive(0, proposal.raw, NOW)
    assert backup.receive(0, vote(g, Prepare, 0, digest).raw, NOW) == []
    assert backup.stats.dropped["prepare-from-primary"] == 1
    effects = backup.receive(2, vote(g, Prepare, 2, digest).raw, NOW)
    assert len(broadcasts(effects, "commit")) == 1  # own + replica 2 = 2f


def test_pre_prepare_whose_digest_does_not_match_its_batch_is_rejected(genesis4):
    g = genesis4
    backup = g.replica(1)
    bad = pre_prepare(g, requests=[request(g)], digest=b"\x00" * 32)
    effects = backup.receive(0, bad.raw, NOW)
    assert not broadcasts(effects, "prepare")
    assert backup.stats.dropped["digest-mismatch"] == 1
    assert [e.kind for e in effects if isinstance(e, Evidence)] == ["bad-digest"]
    assert backup.log_size() == 0


def test_equivocating_primary_is_convicted_and_only_one_digest_accepted(genesis4):
    g = genesis4
    backup = g.replica(1)
    first = pre_prepare(g, requests=[request(g, key="a")])
    second = pre_prepare(g, requests=[request(g, key="b")])
    assert broadcasts(backup.receive(0, first.raw, NOW), "prepare")
    effects = backup.receive(0, second.raw, NOW)
    assert not broadcasts(effects, "prepare")
    (evidence,) = [e for e in effects if isinstance(e, Evidence)]
    assert evidence.kind == "equivocation" and evidence.culprit == 0
    assert set(evidence.proofs) == {first.raw, second.raw}


def test_message_whose_sender_differs_from_its_signer_is_rejected(genesis4):
    g = genesis4
    backup = g.replica(1)
    backup.receive(0, pre_prepare(g, requests=[request(g)]).raw, NOW)
    held = backup.log_size()
    digest = backup._log[1].digest
    # Replica 3 relays a prepare that replica 2 signed: the transport sender is not the signer.
    assert backup.receive(3, vote(g, Prepare, 2, digest).raw, NOW) == []
    assert backup.stats.dropped["sender-mismatch"] == 1
    # Replica 3 claims to be 2 in the body but signs with its own key: forged.
    forged = g.sign(Prepare(view=0, seq=1, digest=digest, replica=2), 3)
    assert backup.receive(2, forged.raw, NOW) == []
    assert backup.stats.dropped["bad-signature"] == 1
    # A client cannot speak for a member.
    assert backup.receive("client-0", vote(g, Prepare, 2, digest).raw, NOW) == []
    assert backup.stats.dropped["sender-mismatch"] == 2
    assert backup.log_size() == held


def test_flipped_signature_bit_is_dropped_without_state(genesis4):
    g = genesis4
    backup = g.replica(1)
    proposal = pre_prepare(g, requests=[request(g)])
    tampered = bytearray(proposal.raw)
    tampered[len(_ENVELOPE_PREFIX)] ^= 0x01  # the signature's first byte
    assert backup.receive(0, bytes(tampered), NOW) == []
    assert backup.stats.dropped["bad-signature"] == 1
    assert backup.log_size() == 0


def test_out_of_window_sequence_numbers_create_no_state(genesis4):
    g = genesis4
    config = ReplicaConfig(checkpoint_interval=4, log_window=8)
    backup = g.replica(1, config)
    digest = b"\x11" * 32
    for seq in (0, 9, 10_000, 2**63 - 1):
        backup.receive(2, vote(g, Prepare, 2, digest, seq=seq).raw, NOW)
        backup.receive(2, vote(g, Commit, 2, digest, seq=seq).raw, NOW)
        backup.receive(0, pre_prepare(g, seq=seq).raw, NOW)
    assert backup.stats.dropped["out-of-window"] == 12
    assert backup.log_size() == 0 and backup._log == {}
    backup.receive(2, vote(g, Prepare, 2, digest, seq=8).raw, NOW)  # h+L is inside
    assert backup.log_size() == 1


def test_batch_with_a_request_from_an_unauthorised_key_is_rejected(genesis4):
    g = genesis4
    outsider = make_genesis(4, seed=99)  # same client ids, different keys
    backup = g.replica(1)
    proposal = pre_prepare(g, requests=[request(g), request(outsider, client="client-1")])
    effects = backup.receive(0, proposal.raw, NOW)
    assert not broadcasts(effects, "prepare")
    assert backup.stats.dropped["invalid-batch"] == 1


def test_pre_prepare_from_a_backup_or_another_view_is_ignored(genesis4):
    g = genesis4
    backup = g.replica(1)
    assert backup.receive(2, pre_prepare(g, primary=2).raw, NOW) == []
    assert backup.receive(0, pre_prepare(g, view=1).raw, NOW) == []
    assert backup.stats.dropped["not-primary"] == 1
    assert backup.stats.dropped["wrong-view"] == 1
    assert backup.log_size() == 0


def test_timestamp_outside_the_skew_bound_is_rejected(genesis4):
    g = genesis4
    backup = g.replica(1, ReplicaConfig(timestamp_skew=5.0))
    late = pre_prepare(g, requests=[request(g)], timestamp=int((NOW - 60) * 1000))
    assert backup.receive(0, late.raw, NOW) == []
    assert backup.stats.dropped["timestamp-skew"] == 1


def test_request_with_a_forged_signature_is_not_queued(genesis4):
    g = genesis4
    primary = g.replica(0, ReplicaConfig(batch_delay=0.0))
    forged = g.sign(Request(client="client-0", timestamp=1, operation=b""), "client-1")
    assert primary.receive("client-0", forged.raw, NOW) == []
    assert primary.stats.dropped["bad-signature"] == 1
    assert primary.queued_requests == 0


def test_primary_batches_up_to_batch_size_then_on_the_timer(genesis4):
    g = genesis4
    primary = g.replica(0, ReplicaConfig(batch_size=3, batch_delay=0.01))
    for ts in (1, 2):
        assert primary.receive("client-0", request(g, timestamp=ts).raw, NOW) == []
    assert primary.next_deadline() == NOW + 0.01
    effects = primary.receive("client-1", request(g, client="client-1").raw, NOW)
    (proposal,) = broadcasts(effects, "pre-prepare")
    assert len(proposal.message.message.batch) == 3
    # No batch timer any more; what remains is the retransmission timer of the pending slot.
    assert primary.next_deadline() == NOW + primary.config.retransmit_interval
    primary.receive("client-0", request(g, timestamp=3).raw, NOW)
    assert primary.handle_timer(NOW + 0.005) == []
    (proposal,) = broadcasts(primary.handle_timer(NOW + 0.01), "pre-prepare")
    assert proposal.message.message.seq == 2 and len(proposal.message.message.batch) == 1


def test_per_client_queue_is_bounded(genesis4):
    g = genesis4
    primary = g.replica(0, ReplicaConfig(batch_size=100, batch_delay=1.0, max_queued_per_client=2))
    for ts in range(1, 6):
        primary.receive("client-0", request(g, timestamp=ts).raw, NOW)
    assert primary.queued_requests == 2
    assert primary.stats.dropped["client-queue-full"] == 3


def test_backup_relays_a_client_request_to_the_primary_once(genesis4):
    g = genesis4
    backup = g.replica(2)
    signed = request(g)
    (relay,) = backup.receive("client-0", signed.raw, NOW)
    assert isinstance(relay, Send) and relay.to == 0 and relay.message.raw == signed.raw
    assert backup.receive("client-0", signed.raw, NOW) == []
    assert backup.stats.dropped["duplicate-request"] == 1


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), sender=st.sampled_from([0, 2, 3, "client-0", "nobody"]))
def test_arbitrary_bytes_never_crash_a_replica(data, sender):
    g = _GENESIS
    backup = g.replica(1)
    assert backup.receive(sender, data, NOW) == []
    assert backup.log_size() == 0


_GENESIS = make_genesis(4)


VOTE = st.tuples(st.sampled_from(["prepare", "commit"]), st.integers(0, 6), st.booleans())


@settings(max_examples=150, deadline=None)
@given(n=st.sampled_from([4, 7]), votes=st.lists(VOTE, max_size=40), pre_prepare_at=st.integers(0, 40))
def test_quorums_count_distinct_matching_signers_whatever_the_order(n, votes, pre_prepare_at):
    """Deliver prepares/commits (some duplicated, some for another digest) and the
    pre-prepare in any order: the backup commits exactly when 2f distinct backups prepared
    the accepted digest, and executes exactly when 2f+1 distinct members committed it."""
    g = _GENESIS if n == 4 else _GENESIS7
    f = (n - 1) // 3
    backup = g.replica(1)
    proposal = pre_prepare(g, requests=[request(g)])
    digest, other = proposal.message.digest, b"\xee" * 32
    sent_commit = False
    first_vote: dict[tuple[str, int], bytes] = {}  # what a replica accepted first from a signer
    deliveries = [("pre-prepare", 0, True)]
    deliveries[0:0] = votes[:pre_prepare_at]
    deliveries += votes[pre_prepare_at:]
    for kind, signer, matching in deliveries:
        signer %= n
        if kind == "pre-prepare":
            effects = backup.receive(0, proposal.raw, NOW)
        elif signer == 1:
            continue  # the replica's own votes are made by itself
        else:
            message = Prepare if kind == "prepare" else Commit
            chosen = digest if matching else other
            first_vote.setdefault((kind, signer), chosen)
            effects = backup.receive(signer, vote(g, message, signer, chosen).raw, NOW)
        sent_commit |= bool(broadcasts(effects, "commit"))
    prepared_by = {s for (k, s), d in first_vote.items() if k == "prepare" and d == digest and s != 0}
    committed_by = {s for (k, s), d in first_vote.items() if k == "commit" and d == digest}
    expect_prepared = len(prepared_by | {1}) >= 2 * f
    assert sent_commit == expect_prepared
    assert backup.last_executed == (1 if expect_prepared and len(committed_by | {1}) >= 2 * f + 1 else 0)


_GENESIS7 = make_genesis(7)


def test_stalled_replica_sends_status_and_a_peer_ahead_resends_what_it_lacks(genesis4):
    """Replica 1 lost the PRE-PREPARE of seq 1 (it has nothing of its own to re-send for
    it); its STATUS tells the primary, which is ahead, to re-send its messages for seq 1."""
    g = genesis4
    primary, backup = g.replica(0, ReplicaConfig(batch_delay=0.0)), g.replica(1)
    (proposal,) = broadcasts(primary.receive("client-0", request(g).raw, NOW), "pre-prepare")
    digest = proposal.message.message.digest
    for kind in (Prepare, Commit):
        for signer in (2, 3):
            primary.receive(signer, vote(g, kind, signer, digest).raw, NOW)
    assert primary.last_executed == 1
    backup.receive(2, vote(g, Prepare, 2, digest).raw, NOW)  # pending, but no pre-prepare
    assert backup.next_deadline() == NOW + backup.config.retransmit_interval
    effects = backup.handle_timer(NOW + backup.config.retransmit_interval)
    (status,) = broadcasts(effects, "status")
    assert status.message.message.last_executed == 0
    answer = primary.receive(1, status.message.raw, NOW + 1)
    assert [(e.to, e.message.type) for e in answer] == [(1, "pre-prepare"), (1, "commit")]
    assert primary.receive(1, status.message.raw, NOW + 1.1) == []  # rate-limited
    assert primary.stats.dropped["status-rate-limited"] == 1
    # With the primary's pre-prepare the backup prepares; the stall is over.
    assert broadcasts(backup.receive(0, answer[0].message.raw, NOW + 1), "prepare")


def test_batches_are_cut_by_bytes_so_large_operations_never_make_an_unsendable_proposal():
    # 120 requests of ~60 KB from 30 clients: 100 of them would make a 6 MB PRE-PREPARE.
    from bftdeliberate.wire.limits import MAX_BATCH_BYTES, MAX_MESSAGE_SIZE

    g = make_genesis(4, clients=30)
    primary = g.replica(0, ReplicaConfig(batch_delay=1.0, max_in_flight_batches=8))
    now = 1000.0
    effects = []
    for client in range(30):
        for timestamp in range(1, 5):
            request = g.sign(Request(client=f"client-{client}", timestamp=timestamp,
                                     operation=b"x" * 60_000), f"client-{client}")
            effects += primary.receive(f"client-{client}", request.raw, now)
    effects += primary.handle_timer(now + 2)
    by_seq = {e.message.message.seq: e.message for e in effects
              if isinstance(e, Broadcast) and e.message.type == "pre-prepare"}
    proposals = list(by_seq.values())
    assert sum(len(p.message.batch) for p in proposals) == 120
    assert len(proposals) >= 3
    assert all(sum(map(len, p.message.batch)) <= MAX_BATCH_BYTES for p in proposals)
    assert all(len(p.raw) <= MAX_MESSAGE_SIZE for p in proposals)


def test_a_backup_keeps_suspecting_the_primary_for_a_newer_proposed_request_of_a_client():
    # Seen on real processes: client A's request t1 is in seq 1 and t2 in seq 2; seq 1
    # executes, seq 2 cannot commit. The backup must still wait for t2 (and change view),
    # not forget A once t1 executed.
    g = make_genesis(4, clients=1)
    backup = g.replica(1, ReplicaConfig(view_change_timeout=0.5))
    now = 1000.0
    timestamp_ms = int(now * 1000)
    digests = {}
    for seq in (1, 2):
        request = g.sign(Request(client="client-0", timestamp=seq, operation=b"op"), "client-0")
        digests[seq] = batch_digest(timestamp_ms, (request.raw,), 0)
        proposal = g.sign(PrePrepare(view=0, seq=seq, digest=digests[seq], origin_view=0,
                                     timestamp=timestamp_ms, replica=0, batch=(request.raw,)), 0)
        backup.receive(0, proposal.raw, now)
    backup.receive(2, g.sign(Prepare(view=0, seq=1, digest=digests[1], replica=2), 2).raw, now)
    for member in (0, 2):
        vote = g.sign(Commit(view=0, seq=1, digest=digests[1], replica=member), member)
        backup.receive(member, vote.raw, now + 0.1)
    assert backup.last_executed == 1
    deadline = backup.next_deadline()
    assert deadline is not None and deadline <= now + 0.1 + 0.5
    effects = backup.handle_timer(now + 0.7)
    assert "view-change" in [e.message.type for e in effects if isinstance(e, Broadcast)]
    assert backup.view == 1 and not backup.view_active
