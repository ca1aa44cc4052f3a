"""View change in the paper's terms: certificate verification, the NEW-VIEW O set, and a
replica's handling of VIEW-CHANGE / NEW-VIEW messages (good, forged and malformed)."""

from __future__ import annotations

import pytest
from conftest import Genesis, make_genesis
from hypothesis import given, settings
from hypothesis import strategies as st

from bftdeliberate import kv
from bftdeliberate.pbft.batch import batch_digest
from bftdeliberate.pbft.config import ReplicaConfig
from bftdeliberate.pbft.effects import Broadcast, Evidence
from bftdeliberate.pbft.viewchange import (
    InvalidCertificate,
    check_checkpoint_proof,
    check_new_view,
    check_prepared,
    check_view_change,
    plan_new_view,
)
from bftdeliberate.wire.messages import (
    Checkpoint,
    NewView,
    Prepare,
    PrePrepare,
    Request,
    ViewChange,
    decode_envelope,
    encode_envelope,
    sign_message,
)

K, L = 8, 16  # checkpoint interval and log window of these tests
CONFIG = ReplicaConfig(checkpoint_interval=K, log_window=L)
NOW = 100.0
GENESIS7 = make_genesis(7)
STATE_DIGEST = b"\x11" * 32


def request(g: Genesis, timestamp: int, client: str = "client-0"):
    return g.sign(Request(client=client, timestamp=timestamp,
                          operation=kv.put(f"k{timestamp}", b"v")), client)


def proposal(g: Genesis, view: int, seq: int, timestamp: int = 5):
    batch = (request(g, timestamp).raw,)
    n = g.committee.n
    return g.sign(PrePrepare(view=view, seq=seq, timestamp=timestamp, origin_view=view,
                             replica=view % n, batch=batch,
                             digest=batch_digest(timestamp, batch, view)), view % n)


def certificate(g: Genesis, view: int, seq: int, timestamp: int = 5, prepares: int | None = None):
    """(pre-prepare, 2f prepares from the backups after the primary) as envelopes."""
    n, f = g.committee.n, g.committee.f
    pre_prepare = proposal(g, view, seq, timestamp)
    digest = pre_prepare.message.digest
    backups = [m for m in range(n) if m != view % n][: 2 * f if prepares is None else prepares]
    votes = [g.sign(Prepare(view=view, seq=seq, digest=digest, replica=m), m) for m in backups]
    return (pre_prepare.raw, *(v.raw for v in votes))


def checkpoint_proof(g: Genesis, seq: int, digest: bytes = STATE_DIGEST, signers=None):
    signers = range(2 * g.committee.f + 1) if signers is None else signers
    return tuple(g.sign(Checkpoint(seq=seq, state_digest=digest, replica=m), m).raw
                 for m in signers)


def view_change(g: Genesis, signer: int, view: int, checkpoint: int = 0, prepared=(),
                proof=None):
    if proof is None:
        proof = checkpoint_proof(g, checkpoint) if checkpoint else ()
    return g.sign(ViewChange(view=view, checkpoint=checkpoint, proof=proof,
                             prepared=tuple(prepared), replica=signer), signer)


def verifier(g: Genesis):
    replica = g.replica(0, CONFIG)
    return replica._verify


def check(g: Genesis, signed):
    return check_view_change(signed, n=g.committee.n, f=g.committee.f, window=L,
                             checkpoint_interval=K, verify=verifier(g),
                             genesis_digest=b"\x00" * 32)


def forge(signed):
    """The same body under a signature with one flipped bit."""
    signature = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    return encode_envelope(signed.body, signature)


# ---------------------------------------------------------------- certificates


def test_prepared_certificate_needs_the_primary_and_2f_distinct_backups():
    g = GENESIS7  # f = 2
    verify = verifier(g)
    args = dict(new_view=3, low=0, window=L, n=7, f=2, verify=verify)
    proof = check_prepared(certificate(g, 1, 4), **args)
    assert (proof.view, proof.seq, len(proof.prepares)) == (1, 4, 4)
    with pytest.raises(InvalidCertificate, match="3 prepares < 2f = 4"):
        check_prepared(certificate(g, 1, 4, prepares=3), **args)
    pre_prepare, *prepares = certificate(g, 1, 4)
    with pytest.raises(InvalidCertificate, match="not a distinct backup"):
        check_prepared((pre_prepare, *prepares[:3], prepares[0]), **args)  # one signer twice
    digest = proposal(g, 1, 4).message.digest
    from_primary = g.sign(Prepare(view=1, seq=4, digest=digest, replica=1), 1).raw
    with pytest.raises(InvalidCertificate, match="not a distinct backup"):
        check_prepared((pre_prepare, *prepares[:3], from_primary), **args)
    other = g.sign(Prepare(view=1, seq=4, digest=b"\x22" * 32, replica=6), 6).raw
    with pytest.raises(InvalidCertificate, match="another slot or digest"):
        check_prepared((pre_prepare, *prepares, other), **args)
    with pytest.raises(InvalidCertificate, match="bad prepare signature"):
        check_prepared((pre_prepare, *prepares[:3], forge(g.sign(
            Prepare(view=1, seq=4, digest=digest, replica=6), 6))), **args)


def test_prepared_certificate_rejects_wrong_primary_view_range_and_batch():
    g = GENESIS7
    args = dict(low=0, window=L, n=7, f=2, verify=verifier(g))
    with pytest.raises(InvalidCertificate, match="not from a view below 1"):
        check_prepared(certificate(g, 1, 4), new_view=1, **args)
    with pytest.raises(InvalidCertificate, match="seq outside"):
        check_prepared(certificate(g, 1, L + 1), new_view=2, **args)
    # A pre-prepare signed by a member that is not the primary of its view.
    batch = (request(g, 5).raw,)
    impostor = g.sign(PrePrepare(view=1, seq=4, timestamp=5, origin_view=1, replica=3,
                                 batch=batch, digest=batch_digest(5, batch, 1)), 3)
    with pytest.raises(InvalidCertificate, match="not from the primary 1"):
        check_prepared((impostor.raw,), new_view=2, **args)
    lying = g.sign(PrePrepare(view=1, seq=4, timestamp=5, origin_view=1, replica=1,
                              batch=batch, digest=b"\x33" * 32), 1)
    with pytest.raises(InvalidCertificate, match="does not hash"):
        check_prepared((lying.raw,), new_view=2, **args)
    with pytest.raises(InvalidCertificate, match="bad pre-prepare signature"):
        check_prepared((forge(proposal(g, 1, 4)),), new_view=2, **args)
    with pytest.raises(InvalidCertificate, match="not a PrePrepare"):
        check_prepared((checkpoint_proof(g, 8)[0],), new_view=2, **args)
    with pytest.raises(InvalidCertificate, match="prepared certificate"):
        check_prepared((b"\xa0junk",), new_view=2, **args)


def test_checkpoint_proof_needs_2f_plus_1_matching_distinct_signatures():
    g = GENESIS7
    args = dict(n=7, f=2, verify=verifier(g), genesis_digest=b"\x00" * 32)
    digest, votes = check_checkpoint_proof(8, checkpoint_proof(g, 8), **args)
    assert digest == STATE_DIGEST and len(votes) == 5
    assert check_checkpoint_proof(0, (), **args) == (b"\x00" * 32, ())
    with pytest.raises(InvalidCertificate, match="genesis checkpoint carries no proof"):
        check_checkpoint_proof(0, checkpoint_proof(g, 8), **args)
    with pytest.raises(InvalidCertificate, match="not 2f\\+1 matching of 4"):
        check_checkpoint_proof(8, checkpoint_proof(g, 8, signers=range(4)), **args)
    mixed = checkpoint_proof(g, 8, signers=range(4)) + checkpoint_proof(
        g, 8, digest=b"\x44" * 32, signers=[4])
    with pytest.raises(InvalidCertificate, match="not 2f\\+1 matching"):
        check_checkpoint_proof(8, mixed, **args)
    with pytest.raises(InvalidCertificate, match="twice"):
        check_checkpoint_proof(8, checkpoint_proof(g, 8, signers=[0, 1, 2, 3, 3]), **args)
    with pytest.raises(InvalidCertificate, match="seq 16 != 8"):
        check_checkpoint_proof(8, checkpoint_proof(g, 16), **args)


def test_a_view_change_is_rejected_as_a_whole_for_one_bad_part():
    g = GENESIS7
    good = view_change(g, 2, view=3, checkpoint=8, prepared=[certificate(g, 1, 9)])
    checked = check(g, good)
    assert checked.checkpoint == 8 and set(checked.prepared) == {9}
    bad_parts = {
        "prepares < 2f": [certificate(g, 1, 9), certificate(g, 1, 10, prepares=1)],
        "two prepared certificates for seq 9": [certificate(g, 1, 9), certificate(g, 2, 9)],
        "seq outside": [certificate(g, 1, 8)],  # at the checkpoint: garbage-collected
    }
    for why, prepared in bad_parts.items():
        with pytest.raises(InvalidCertificate, match=why):
            check(g, view_change(g, 2, view=3, checkpoint=8, prepared=prepared))
    with pytest.raises(InvalidCertificate, match="not a multiple of K"):
        check(g, view_change(g, 2, view=3, checkpoint=5, proof=checkpoint_proof(g, 5)))
    with pytest.raises(InvalidCertificate, match="not 2f\\+1"):
        check(g, view_change(g, 2, view=3, checkpoint=8, proof=checkpoint_proof(g, 8)[:2]))


# -------------------------------------------------------------------- O set


def checked_set(g: Genesis, specs):
    """specs: (signer, checkpoint, [(view, seq, timestamp), ...]) -> checked VIEW-CHANGEs."""
    return [check(g, view_change(g, signer, view=5, checkpoint=h, prepared=[
        certificate(g, v, s, ts) for v, s, ts in certs])) for signer, h, certs in specs]


def test_o_set_starts_at_the_highest_checkpoint_of_the_whole_set():
    # The Hyperledger Fabric PR #1111 class: min-s must come from every VIEW-CHANGE, not
    # from the new primary's own (here member 0's, at checkpoint 0).
    g = GENESIS7
    changes = checked_set(g, [(0, 0, [(1, 3, 5), (1, 7, 5)]),
                              (1, 8, [(1, 9, 6)]),
                              (2, 0, [(0, 2, 5)]),
                              (3, 8, []),
                              (4, 0, [])])
    plan = plan_new_view(5, changes)
    assert plan.min_s == 8 and plan.checkpoint_digest == STATE_DIGEST
    assert len(plan.checkpoint_proof) == 5
    assert list(plan.entries) == [9]  # seqs 2, 3, 7 are below the stable checkpoint
    assert plan.entries[9].view == 1


def test_o_set_takes_the_highest_view_and_fills_gaps_with_null_requests():
    g = GENESIS7
    changes = checked_set(g, [(0, 0, [(1, 1, 5), (1, 4, 7)]),
                              (1, 0, [(3, 1, 9)]),
                              (2, 0, []), (3, 0, []), (4, 0, [])])
    plan = plan_new_view(5, changes)
    assert plan.min_s == 0 and list(plan.entries) == [1, 2, 3, 4]
    assert plan.entries[1].view == 3  # the certificate from the higher view wins
    assert plan.entries[2] is None and plan.entries[3] is None
    null = plan.pre_prepare(2, primary=5)
    assert null.batch == () and null.digest == batch_digest(0, (), 5)
    assert null.origin_view == 5
    # Re-proposed at the same seq with the same batch and agreed timestamp.
    again = plan.pre_prepare(4, primary=5)
    old = plan.entries[4].pre_prepare.message
    assert (again.view, again.seq, again.batch, again.timestamp, again.digest) == (
        5, 4, old.batch, old.timestamp, old.digest)
    assert again.origin_view == old.origin_view == old.view < 5  # the view it was agreed in


def test_o_set_without_certificates_is_empty():
    g = GENESIS7
    plan = plan_new_view(5, checked_set(g, [(m, 8, []) for m in range(5)]))
    assert plan.min_s == plan.max_s == 8 and plan.entries == {}


@settings(max_examples=60)
@given(st.lists(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 6)), max_size=4,
                         unique_by=lambda c: c[1]), min_size=5, max_size=5))
def test_o_set_properties(certs_per_member):
    # Contiguous from min_s+1 to the highest prepared seq; each entry is the certificate
    # from the highest view reported for that seq; seqs nobody prepared are null.
    g = GENESIS7
    changes = checked_set(g, [(m, 0, [(v, s, 5) for v, s in certs])
                              for m, certs in enumerate(certs_per_member)])
    plan = plan_new_view(5, changes)
    reported: dict[int, int] = {}
    for certs in certs_per_member:
        for view, seq in certs:
            reported[seq] = max(view, reported.get(seq, -1))
    assert list(plan.entries) == list(range(1, max(reported, default=0) + 1))
    for seq, proof in plan.entries.items():
        assert (proof.view if proof else None) == reported.get(seq)


def new_view(g: Genesis, view: int, changes, pre_prepares=None):
    plan = plan_new_view(view, [check(g, c) for c in changes])
    primary = view % g.committee.n
    if pre_prepares is None:
        pre_prepares = [g.sign(plan.pre_prepare(s, primary), primary).raw for s in plan.entries]
    return g.sign(NewView(view=view, view_changes=tuple(c.raw for c in changes),
                          pre_prepares=tuple(pre_prepares), replica=primary), primary)


def check_nv(g: Genesis, signed):
    return check_new_view(signed, n=7, f=2, window=L, checkpoint_interval=K,
                          verify=verifier(g), genesis_digest=b"\x00" * 32)


def test_backups_recompute_the_o_set_and_reject_any_difference():
    g = GENESIS7
    changes = [view_change(g, m, view=5, prepared=[certificate(g, 1, 2)]) for m in range(5)]
    plan, pre_prepares = check_nv(g, new_view(g, 5, changes))
    assert list(plan.entries) == [1, 2] and len(pre_prepares) == 2
    honest = [g.sign(plan.pre_prepare(s, 5), 5).raw for s in plan.entries]
    substituted = g.sign(PrePrepare(view=5, seq=2, timestamp=5, origin_view=5, replica=5,
                                    batch=(), digest=batch_digest(5, (), 5)), 5).raw
    tampered = {
        "O set has 1 entries": [honest[1]],  # an entry omitted
        "differs from the recomputed": [honest[0], substituted],  # a batch replaced
    }
    for why, o_set in tampered.items():
        with pytest.raises(InvalidCertificate, match=why):
            check_nv(g, new_view(g, 5, changes, o_set))
    with pytest.raises(InvalidCertificate, match="4 view-changes < 2f\\+1 = 5"):
        check_nv(g, new_view(g, 5, changes[:4]))
    with pytest.raises(InvalidCertificate, match="two view-changes from member 0"):
        check_nv(g, new_view(g, 5, [*changes[:4], changes[0]]))
    stale = view_change(g, 4, view=4)
    with pytest.raises(InvalidCertificate, match="for view 4 in new-view 5"):
        check_nv(g, new_view(g, 5, [*changes[:4], stale]))
    with pytest.raises(InvalidCertificate, match="not the primary 5"):
        check_nv(g, g.sign(NewView(view=5, view_changes=tuple(c.raw for c in changes),
                                   pre_prepares=tuple(honest), replica=4), 4))


# ------------------------------------------------------- a replica receiving them


def test_replica_rejects_a_forged_view_change_and_keeps_evidence_of_a_lying_one():
    g = GENESIS7
    replica = g.replica(0, CONFIG)
    assert replica.receive(2, forge(view_change(g, 2, view=1)), NOW) == []
    assert replica.stats.dropped["bad-signature"] == 1
    lying = view_change(g, 2, view=1, prepared=[certificate(g, 0, 3, prepares=1)])
    effects = replica.receive(2, lying.raw, NOW)
    assert [e.kind for e in effects if isinstance(e, Evidence)] == ["bad-view-change"]
    assert replica.stats.dropped["bad-view-change"] == 1
    assert replica.view == 0 and replica.view_active  # nothing changed
    junk = g.sign(ViewChange(view=1, checkpoint=0, proof=(), prepared=((b"\xff",),),
                             replica=3), 3)
    replica.receive(3, junk.raw, NOW)
    assert replica.stats.dropped["bad-view-change"] == 2


def test_f_plus_1_view_changes_make_a_replica_join_and_2f_plus_1_a_new_view():
    g = GENESIS7  # f = 2; member 1 is the primary of view 1
    backup, primary = g.replica(3, CONFIG), g.replica(1, CONFIG)
    changes = [view_change(g, m, view=1) for m in (0, 2, 4, 5, 6)]
    for change in changes[:2]:
        assert backup.receive(change.message.replica, change.raw, NOW) == []
    assert backup.view == 0  # f members could be faulty: no churn
    effects = backup.receive(4, changes[2].raw, NOW)  # f+1 = 3 members above its view: join
    assert backup.view == 1 and not backup.view_active
    assert [e.message.type for e in effects if isinstance(e, Broadcast)] == ["view-change"]
    sent = []
    for change in changes:
        sent += primary.receive(change.message.replica, change.raw, NOW)
    new_views = [e.message for e in sent if isinstance(e, Broadcast) and e.message.type == "new-view"]
    assert len(new_views) == 1 and primary.view == 1 and primary.view_active
    effects = backup.receive(1, new_views[0].raw, NOW)
    assert backup.view == 1 and backup.view_active


def test_a_bad_new_view_convicts_its_primary_and_moves_on_to_the_next_view():
    g = GENESIS7
    backup = g.replica(3, CONFIG)
    changes = [view_change(g, m, view=1, prepared=[certificate(g, 0, 2)]) for m in (0, 2, 4, 5, 6)]
    for change in changes:
        backup.receive(change.message.replica, change.raw, NOW)
    assert backup.view == 1 and not backup.view_active
    omitted = new_view(g, 1, changes, pre_prepares=[])  # drops the committed request
    effects = backup.receive(1, omitted.raw, NOW)
    assert [e.kind for e in effects if isinstance(e, Evidence)] == ["bad-new-view"]
    assert backup.view == 2 and not backup.view_active
    sent = [e.message.message for e in effects if isinstance(e, Broadcast)]
    assert [(m.type, m.view) for m in sent] == [("view-change", 2)]


# ------------------------------------------------------------ in the simulated world


def world_run(world, requests: int = 30) -> bool:
    operations = (kv.put(f"key-{i % 5}", bytes([i])) for i in range(requests))
    return world.run_workload(operations, max_time=120.0)


def test_timeouts_double_per_consecutive_view_change_and_reset_after_progress():
    from simulator.byzantine import BehaviourSpec, make_byzantine
    from simulator.world import World

    world = World(10, seed=2, clients=2)  # f = 3: the primaries of views 0, 1, 2 are silent
    for member in (0, 1, 2):
        make_byzantine(world, member, [BehaviourSpec("silent", {}, 0.0)])
    sent: dict[int, float] = {}

    def note(sender, to, data, kind):
        if sender == 5 and kind == "view-change":
            sent.setdefault(decode_envelope(data).message.view, world.now)
        return data

    world.link_filters.append(note)
    assert world_run(world)
    timeout = world.config.view_change_timeout
    assert sorted(sent) == [1, 2, 3]
    # View 1's NEW-VIEW never comes: T later view 2; its primary is silent too: 2T later.
    assert sent[2] - sent[1] == pytest.approx(timeout, abs=0.1)
    assert sent[3] - sent[2] == pytest.approx(2 * timeout, abs=0.1)
    honest = [world.replicas[m] for m in world.honest]
    assert {r.view for r in honest} == {3} and all(r.view_active for r in honest)
    assert all(r._view_timeout == timeout for r in honest)  # progress reset it
    world.oracles.final_checks()
    assert world.violations == []


@pytest.mark.parametrize("direction", ["cannot-receive", "cannot-send"])
def test_a_half_connected_member_drags_nobody_into_a_view_change(direction):
    from simulator.world import World

    world = World(4, seed=4, clients=2)
    everyone = [0, 1, 2, "client-0", "client-1"]
    if direction == "cannot-receive":
        world.network.one_way(everyone, [3])
    else:
        world.network.one_way([3], everyone)
    assert world_run(world, 40)
    cut_off = world.replicas[3]
    assert (cut_off.last_executed == 0) == (direction == "cannot-receive")
    assert [world.replicas[m].view for m in (0, 1, 2)] == [0, 0, 0]
    assert all(world.replicas[m].stats.view_changes == 0 for m in (0, 1, 2))
    world.oracles.final_checks()
    assert world.violations == []


def test_a_client_flooding_backups_cannot_force_a_view_change():
    # More requests than the primary queues per client, sent to the backups only: they
    # relay them, the primary drops the excess (client-queue-full). The backups wait for
    # the client's oldest request, which does execute -- no request timer fires.
    from simulator.world import World

    config = ReplicaConfig(batch_delay=0.05, max_queued_per_client=1)
    world = World(4, seed=6, clients=2, config=config)
    key = world.client_keys["client-0"]
    for timestamp in range(1, 11):
        signed = sign_message(Request(client="client-0", timestamp=timestamp,
                                      operation=kv.put("flood", bytes([timestamp]))),
                              key, world.committee.digest)
        for backup in (1, 2, 3):
            world.inject(backup, "client-0", signed.raw)
    operations = (kv.put(f"key-{i}", b"v") for i in range(20))
    world.start_workload([])
    world.submit("client-1", next(operations))
    assert world.run(until=lambda: not world.clients["client-1"].busy, max_time=30.0)
    world.run(max_time=world.now + 10.0)
    assert world.replicas[0].stats.dropped["client-queue-full"] > 0
    assert [r.view for r in world.replicas] == [0, 0, 0, 0]
    world.oracles.final_checks()
    assert world.violations == []


def test_a_primary_never_prepares_its_own_proposal_relayed_back_to_it():
    # Members relay PRE-PREPAREs (STATUS answers forward committed proposals). A primary
    # that gets its own back -- e.g. after a restart emptied the slot -- must not vote on it:
    # a PREPARE from the primary invalidates every certificate it appears in.
    g = make_genesis(4)
    primary = g.replica(0, CONFIG)
    proposal = g.sign(PrePrepare(view=0, seq=1, timestamp=int(NOW * 1000), origin_view=0,
                                 replica=0, batch=(request(g, 1).raw,),
                                 digest=batch_digest(int(NOW * 1000), (request(g, 1).raw,), 0)),
                      0)
    assert primary.receive(2, proposal.raw, NOW) == []
    assert primary.stats.dropped["from-self"] == 1
